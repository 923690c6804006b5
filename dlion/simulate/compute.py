"""Simulated compute: one Keras model serves every peer, and each peer's work costs it calibrated virtual time.

One model, many parameter sets. A simulation builds one `Trainer` (one graph, traced once) and gives each peer a
`PeerModel`: a view with the trainer's interface that holds the peer's flat parameters and optimizer state while
another peer's are loaded, and swaps its own in before it computes. Memory grows with peers x parameters, not with
peers x graphs; a swap costs two flat copies each way (parameters, optimizer state: `Trainer.optimizer_vector`).

Time. A peer's gradient step of batch b costs (fixed + per_sample x b) / cores virtual seconds, an optimizer step
apply / cores, an evaluation of n samples (eval_fixed + eval_per_sample x n) / cores, a copy of n model or optimizer
values between the model and a flat vector (which the peer's stages ask for every round) copy_per_value x n / cores,
at its cores at that virtual time (scheduled changes included). The figures are measured once on this host
(`calibrate`), as CPU seconds on one TensorFlow thread (one core-equivalent, as the emulation's pacing counts CPU
time), the median over repeats, and cached per model and host (`load_or_calibrate`): the simulation's results then
depend on the config and the calibration only. The median, not the least: a run's steps cost what a step typically
costs, and the least is 15-30% below that (measured in docs/benchmarks.md). CPU time is less sensitive to other load
than wall time, not immune: on a host busy with other work (caches, shared cores) the same step measured two to three
times slower here, so calibrate on a quiet host (the calibration records the load it was measured under;
`--recalibrate` measures again). Work outside TensorFlow (the strategies' numpy, the wire encoding) costs no virtual
time, unless a `HostCpu` meter charges what it takes this host (`--cpu-overhead`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from dlion.config import Config

STEP_BATCHES = (8, 32, 128)  # batch sizes the step cost is fitted over
EVAL_SIZES = (250, 1000)     # evaluation sizes the evaluation cost is fitted over
REPEATS = 20                 # timings per size; the median counts
CACHE_ENV = "DLION_CALIBRATION"  # a calibration file to use instead of the default cache


@dataclasses.dataclass(frozen=True)
class Calibration:
    """CPU seconds on one core-equivalent of this host, for one model and optimizer (`key`)."""

    key: str
    step_fixed_s: float
    step_per_sample_s: float
    apply_s: float
    eval_fixed_s: float
    eval_per_sample_s: float
    copy_per_value_s: float  # moving model variables or optimizer state between the model and a flat vector, per value
    load_average: float  # the host's one-minute load when measured: a busy host measures slower (`--recalibrate`)

    def step_s(self, batch: int) -> float:
        return self.step_fixed_s + self.step_per_sample_s * batch

    def eval_s(self, samples: int) -> float:
        return self.eval_fixed_s + self.eval_per_sample_s * samples

    def copy_s(self, values: int) -> float:
        return self.copy_per_value_s * values


def _cpu_seconds(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """The median CPU time (all threads of the process) of `repeats` calls of `fn`."""
    spent = []
    for _ in range(repeats):
        began = time.process_time()
        fn()
        spent.append(time.process_time() - began)
    return float(np.median(spent))


def _line(xs, ys) -> tuple[float, float]:
    """(intercept >= 0, slope > 0) of the least-squares line through the points."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    slope = max(float(slope), 1e-12)
    return max(float(intercept), 0.0), slope


def calibration_key(cfg: Config, trainer) -> str:
    """What a calibration holds for: the model, its size, the optimizer, TensorFlow's version, the host's CPU."""
    import tensorflow as tf
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
               platform.processor() or platform.machine())
    tr = cfg.training
    return f"{tr.model}|{trainer.num_state} values|{tr.optimizer}|tf {tf.__version__}|{cpu}"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def calibrate(trainer, x: np.ndarray, y: np.ndarray, key: str) -> Calibration:
    """Measure `trainer` (warmed up, on one thread) on samples `x`, `y` (at least max(STEP_BATCHES, EVAL_SIZES) of
    them); the trainer's parameters and optimizer state are left as they were."""
    params, state = trainer.get_params(), trainer.optimizer_state()
    steps = [_cpu_seconds(lambda b=b: trainer.gradients(x[:b], y[:b])) for b in STEP_BATCHES]
    zeros = np.zeros(trainer.num_params, np.float32)
    apply_s = _cpu_seconds(lambda: trainer.apply(zeros))
    evals = [_cpu_seconds(lambda n=n: trainer.evaluate(x[:n], y[:n]), REPEATS // 4) for n in EVAL_SIZES]
    optimizer_values = trainer.optimizer_vector().size
    copies_s = _cpu_seconds(lambda: (trainer.set_params(trainer.get_params()),
                                     trainer.set_optimizer_vector(trainer.optimizer_vector())))
    trainer.set_params(params)
    trainer.set_optimizer_state(state)
    step_fixed, step_per_sample = _line(STEP_BATCHES, steps)
    eval_fixed, eval_per_sample = _line(EVAL_SIZES, evals)
    copy_per_value = copies_s / (2 * (trainer.num_state + optimizer_values))
    return Calibration(key, step_fixed, step_per_sample, apply_s, eval_fixed, eval_per_sample, copy_per_value,
                       round(os.getloadavg()[0], 2))


def default_cache() -> Path:
    """Where calibrations are kept between runs: $DLION_CALIBRATION, else ~/.cache/dlion/calibration.json."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dlion" / "calibration.json"


def load_or_calibrate(cfg: Config, trainer, x, y, cache: Path | None = None, recalibrate: bool = False
                      ) -> tuple[Calibration, bool]:
    """The cached calibration of this model on this host, or a fresh one (then cached); and whether it was measured
    now. `cache`: a JSON file of calibrations by key (default `default_cache()`)."""
    cache = Path(cache) if cache is not None else default_cache()
    key = calibration_key(cfg, trainer)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not recalibrate and isinstance(known.get(key), dict):
        try:
            return Calibration(**known[key]), False
        except TypeError:
            pass  # written by another version: measure again
    calibration = calibrate(trainer, x, y, key)
    known[key] = dataclasses.asdict(calibration)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=2))
    tmp.replace(cache)
    return calibration, True


def charger(actor, cfg: Config, peer_id: int) -> Callable[[float], None]:
    """`charge(cpu_seconds)`: the peer's actor takes that work's virtual time at the peer's cores now."""
    def charge(cpu_seconds: float) -> None:
        actor.sleep(cpu_seconds / cfg.cores(peer_id, actor.scheduler.now))
    return charge


class SharedModel:
    """The one trainer every simulated peer computes on, and which peer's state it holds now."""

    def __init__(self, trainer):
        self.trainer = trainer  # built without a label prior
        self.owner: PeerModel | None = None
        self.label_prior = None  # the one on the trainer now
        self.swaps = 0

    def use_label_prior(self, label_prior) -> None:
        """Put a peer's label prior on the trainer, unless it is the one there already."""
        if label_prior is not self.label_prior:
            self.trainer.set_label_prior(label_prior)
            self.label_prior = label_prior

    def view(self, cost: Callable[[float], None], calibration: Calibration, meter: HostCpu | None = None
             ) -> PeerModel:
        """A peer's view, starting from the trainer's current parameters and optimizer state (every peer starts
        from the same model, as real peers do from the same seed); `cost(cpu_seconds)` charges the peer; what the
        view does is left out of the peer's `meter`, if it has one."""
        return PeerModel(self, cost, calibration, meter)


class PeerModel:
    """One peer's model on the shared trainer: the `Trainer` interface a peer's loop and stages use, each call on this
    peer's parameters, and the TensorFlow work charged to the peer (`cost`, in CPU seconds of one core)."""

    def __init__(self, shared: SharedModel, cost: Callable[[float], None], calibration: Calibration,
                 meter: HostCpu | None = None):
        self.shared = shared
        self.cost = cost
        self.calibration = calibration
        self._apart = meter.apart if meter is not None else contextlib.nullcontext
        trainer = shared.trainer
        self.num_params, self.num_state = trainer.num_params, trainer.num_state
        self._params: np.ndarray | None = trainer.get_params()
        self._state: np.ndarray | None = trainer.optimizer_vector()
        self.num_optimizer = self._state.size
        self._label_prior = None  # this peer's loss's (logit adjustment), set on the trainer with its state

    @property
    def _trainer(self):
        """The shared trainer, holding this peer's state."""
        shared = self.shared
        if shared.owner is not self:
            if shared.owner is not None:
                shared.owner._unload()
            shared.trainer.set_params(self._params)
            shared.trainer.set_optimizer_vector(self._state)
            shared.use_label_prior(self._label_prior)
            self._params = self._state = None
            shared.owner = self
            shared.swaps += 1
        return shared.trainer

    def _unload(self) -> None:
        trainer = self.shared.trainer
        self._params, self._state = trainer.get_params(), trainer.optimizer_vector()
        self.shared.owner = None

    @property
    def _loaded(self) -> bool:
        return self.shared.owner is self

    def set_label_prior(self, label_prior) -> None:
        self._label_prior = label_prior
        if self._loaded:
            self.shared.use_label_prior(label_prior)

    def gradients(self, x, y):
        with self._apart():
            result = self._trainer.gradients(x, y)
        self.cost(self.calibration.step_s(len(x)))
        return result

    def apply(self, flat_grads) -> None:
        with self._apart():
            self._trainer.apply(flat_grads)
        self.cost(self.calibration.apply_s)

    def evaluate(self, x, y, batch=1000):
        with self._apart():
            result = self._trainer.evaluate(x, y, batch)
        self.cost(self.calibration.eval_s(len(x)))
        return result

    def check_classifier(self) -> None:
        self.shared.trainer.check_classifier()

    def features(self, x, batch=1000) -> np.ndarray:
        with self._apart():
            result = self._trainer.features(x, batch)
        self.cost(self.calibration.eval_s(len(x)))  # a forward pass in inference mode, as an evaluation's
        return result

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        with self._apart():
            return self._trainer.classifier()

    def set_classifier(self, kernel, bias) -> None:
        with self._apart():
            self._trainer.set_classifier(kernel, bias)

    def get_params(self) -> np.ndarray:
        with self._apart():
            params = self.shared.trainer.get_params() if self._loaded else self._params.copy()
        self._copied(self.num_state)
        return params

    def set_params(self, flat) -> None:
        with self._apart():
            if self._loaded:
                self.shared.trainer.set_params(flat)
            else:
                params = np.asarray(flat, np.float32)
                if params.shape != (self.num_state,):
                    raise ValueError(f"expected {self.num_state} parameters, got shape {params.shape}")
                self._params = params.copy()
        self._copied(self.num_state)

    def optimizer_state(self) -> list[np.ndarray]:
        with self._apart():
            state = self._trainer.optimizer_state()
        self._copied(self.num_optimizer)
        return state

    def set_optimizer_state(self, arrays) -> None:
        with self._apart():
            self._trainer.set_optimizer_state(arrays)
        self._copied(self.num_optimizer)

    def optimizer_vector(self) -> np.ndarray:
        with self._apart():
            vector = self.shared.trainer.optimizer_vector() if self._loaded else self._state.copy()
        self._copied(self.num_optimizer)
        return vector

    def set_optimizer_vector(self, flat) -> None:
        with self._apart():
            self._trainer.set_optimizer_vector(flat)
        self._copied(self.num_optimizer)

    def _copied(self, values: int) -> None:
        """Charge a copy the peer asked for (a real peer pays it; the simulation's own swaps between peers are free)."""
        self.cost(self.calibration.copy_s(values))

    def save(self, path) -> None:
        with self._apart():
            self._trainer.save(path)


class HostCpu:
    """A peer's own work outside TensorFlow (stages, encoding, run control, events), as the CPU time it takes the
    peer's thread on this host, charged at the peer's cores (`--cpu-overhead`): on small peers that work bounds the
    rounds of emulated runs. Measured anew in each run, so such a run is not repeatable exactly. The actor measures
    between its resumption (`resume`) and its settling (`pause`), and charges what it measured so far whenever the peer
    reads its clock (`flush`); what the peer's model view does is left out (`apart`: the view's TensorFlow work and the
    copies it is asked for are charged by the calibration, its swaps are the simulation's own); the decoding of what
    the peer receives, on the scheduler's thread, is charged to it too (`elsewhere`)."""

    def __init__(self, charge: Callable[[float], None]):
        self._charge = charge
        self._mark: float | None = None
        self._apart_s = 0.0
        self.charged_s = 0.0  # CPU seconds charged so far

    def resume(self) -> None:
        self._mark, self._apart_s = time.thread_time(), 0.0

    def pause(self) -> None:
        if self._mark is None:
            return
        spent = time.thread_time() - self._mark - self._apart_s
        self._mark = None
        self._bill(spent)

    @contextlib.contextmanager
    def elsewhere(self):
        """Charge the peer the CPU time the block takes on another thread (the scheduler's, delivering to it)."""
        began = time.thread_time()
        try:
            yield
        finally:
            self._bill(time.thread_time() - began)

    def _bill(self, spent: float) -> None:
        if spent > 0:
            self.charged_s += spent
            self._charge(spent)

    def flush(self) -> None:
        """Charge what was spent so far and go on measuring: before the peer reads its clock, so that the time it
        reads (and stamps on what it sends) comes after the work it did, as on a real machine."""
        if self._mark is not None:
            self.pause()
            self.resume()

    @contextlib.contextmanager
    def apart(self):
        began = time.thread_time()
        try:
            yield
        finally:
            self._apart_s += time.thread_time() - began


class SimulatedClock:
    """A simulated peer's step clock (`dlion.clock.StepClock`): its compute is charged by its `PeerModel`, so a step
    needs no pacing; it reports the peer's cores and its scheduled changes as virtual time passes."""

    method = "simulated"

    def __init__(self, cfg: Config, peer_id: int, now: Callable[[], float]):
        self.cfg, self.peer_id, self.now = cfg, peer_id, now
        self._pending = sorted((c for c in cfg.schedule if c.peer == peer_id or c.src == peer_id),
                               key=lambda c: c.at)

    @property
    def cores(self) -> float:
        return self.cfg.cores(self.peer_id, self.now())

    def start(self) -> None:
        pass

    def step(self):
        return contextlib.nullcontext()

    def changes(self) -> list[dict]:
        due = [c for c in self._pending if c.at <= self.now()]
        self._pending = self._pending[len(due):]
        return [{k: v for k, v in vars(c).items() if v is not None} for c in due]

    def close(self) -> None:
        pass
