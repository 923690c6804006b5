"""Start every peer of a config as its own OS process on this host, show live progress, and clean up.

The launcher never trains: it writes the resolved config next to the results, starts `python -m dlion peer` once per
peer (the same command a container or another host runs), tails the peers' JSONL files for a progress line, and at the
end writes `summary.json`. `dlion run` forks its peers from one process that has imported TensorFlow already
(`dlion.forkserver`), so that their start-up skips the import. Peers stop themselves at the run's stop condition; the
launcher only enforces a hard time limit and Ctrl-C (SIGTERM counts as Ctrl-C: both stop the peers and take the
emulation down). Each child gets SIGTERM if the launcher dies (PR_SET_PDEATHSIG), so no peer outlives it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


from dlion import checkpoint, hooks
from dlion import data as datamod
from dlion import security, yamlio
from dlion.config import Config, Emulation, Restart, to_dict
from dlion.emulate import EmulationError, turns
from dlion.emulate.real import TRAINED_SUFFIX
from dlion.forkserver import ForkServer, die_with_parent
from dlion.analysis import summarize
from dlion.metrics import peer_log_path, read_events

PROGRESS_EVERY_S = 2.0
FORK_SERVER_LOG = "forkserver.log"
TERM_GRACE_S = 20.0
HARD_LIMIT_SLACK_S = 120.0
DLION = [sys.executable, "-m", "dlion"]  # a command the fork server runs (its arguments follow)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class LaunchError(Exception):
    """An output directory that holds an earlier run, or a resume with nothing to resume from."""


def earlier_results(out_dir: Path) -> list[Path]:
    """What an earlier run left in `out_dir`: event logs, its summary, checkpoints."""
    found = [*out_dir.glob("peer-*.jsonl"), out_dir / "summary.json", checkpoint.directory(out_dir)]
    return [p for p in found if p.exists()]


def prepare_out_dir(cfg: Config, out_dir: Path, resume: bool = False) -> Path:
    """Create the output directory, write the resolved config; for a fresh run, drop results of an earlier one
    there (the caller asked: `--overwrite`), while a resumed run appends to them. CPU turn locks go either way."""
    out_dir.mkdir(parents=True, exist_ok=True)
    turns.remove_locks(out_dir)
    stale = [*out_dir.glob(".peer-*.ready"), *out_dir.glob(f".peer-*{TRAINED_SUFFIX}")]
    if not resume:
        stale += [*out_dir.glob("peer-*.jsonl"), *out_dir.glob("peer-*.log"), *out_dir.glob("peer-*.keras"),
                  out_dir / "summary.json"]
        shutil.rmtree(checkpoint.directory(out_dir), ignore_errors=True)
    for old in stale:
        old.unlink(missing_ok=True)
    resolved = out_dir / "config.yaml"
    resolved.write_text(yamlio.dump(to_dict(cfg)))  # quoted where a string would read back as a number
    return resolved


def resolve_emulation(cfg: Config):
    """The config with `auto` resolved, and the real emulation to set up around the peers (None if in-process)."""
    method = cfg.emulation.method
    if method in ("real", "auto"):
        from dlion.emulate import real
        ok, why = real.available()
        if ok:
            return dataclasses.replace(cfg, emulation=Emulation("real")), real.RealEmulation(cfg)
        if method == "real":
            raise EmulationError(f"emulation.method real is not available on this machine: {why}; "
                                 f"use fallback or auto")
        method = "fallback"
    return dataclasses.replace(cfg, emulation=Emulation(method)), None


def bring_up(cfg: Config, emulation) -> Config:
    """Set up the real emulation; returns the config the peers run with: each peer at its address inside its
    namespace, and told to add link latency in its transport where the kernel has no netem."""
    addresses = emulation.up()
    cfg = dataclasses.replace(cfg, peers=tuple(dataclasses.replace(p, address=addresses[p.id]) for p in cfg.peers))
    if not emulation.kernel_latency:
        cfg = dataclasses.replace(cfg, emulation=Emulation("real", transport_latency=True))
    return cfg


def peer_argv(config_path: Path, out_dir: Path, resume_at: int | None = None) -> Callable[[int], list[str]]:
    """The command line of each peer: `dlion peer` with the resolved config (continuing from the checkpoint of
    iteration `resume_at`, if given)."""
    resume = [] if resume_at is None else ["--resume-at", str(resume_at)]
    return lambda peer_id: [*DLION, "peer", "--config", str(config_path), "--id", str(peer_id), "--out",
                            str(out_dir), *resume]


def start_peers(cfg: Config, argv_for: Callable[[int], list[str]], out_dir: Path, procs: dict[int, subprocess.Popen],
                emulation=None, forks: ForkServer | None = None) -> None:
    """Start one process per peer, `argv_for(peer_id)`, into `procs` (filled as they start, so that a failure midway
    still leaves the caller every started process to stop)."""
    for peer in cfg.peers:
        procs[peer.id] = start_peer(peer.id, argv_for(peer.id), out_dir, emulation, forks)


def peer_environment() -> dict[str, str]:
    """The environment every peer process starts with (TensorFlow's start-up chatter off unless asked for)."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), PYTHONUNBUFFERED="1")


def start_peer(peer_id: int, argv: list[str], out_dir: Path, emulation=None, forks: ForkServer | None = None):
    """Start one peer's process (a `dlion` command forked by `forks` if given, else a process of its own); under
    real emulation, inside the peer's namespace, told which CPU cgroup to join once it is ready to train. Its console
    goes to `out_dir/peer-<id>.log`, appended to (a resumed or restarted peer continues it)."""
    console = out_dir / f"peer-{peer_id}.log"
    env = emulation.peer_env(peer_id, ready_file(out_dir, peer_id)) if emulation else {}
    if forks is not None and argv[:len(DLION)] == DLION:
        return forks.start(argv[len(DLION):], console, env, emulation.namespace(peer_id) if emulation else None)
    with open(console, "a") as stream:
        return subprocess.Popen(emulation.wrap(peer_id, argv) if emulation else argv, stdout=stream,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                                env={**peer_environment(), **env})


class Restarts:
    """`restart.policy: on-failure`: a peer that ended with an error or was killed, while another still trains, is
    started again (`relaunch(peer_id)`) after `backoff_s`, doubled at each further restart of it, at most
    `max_restarts` times. A peer that wrote its final event, or whose run is over for everyone, is left alone."""

    def __init__(self, policy: Restart, relaunch: Callable[[int], subprocess.Popen], out_dir: Path,
                 stream=sys.stdout):
        self.policy, self.relaunch, self.out_dir, self.stream = policy, relaunch, out_dir, stream
        self.counts: dict[int, int] = {}
        self._due: dict[int, float] = {}

    @property
    def pending(self) -> bool:
        return bool(self._due)

    def tick(self, procs: dict[int, subprocess.Popen], now: float) -> None:
        """Schedule restarts for peers that just failed, and start those that are due (into `procs`)."""
        if self.policy.policy != "on-failure":
            return
        for peer_id, proc in procs.items():
            others_alive = any(p.poll() is None for i, p in procs.items() if i != peer_id)
            if peer_id in self._due:
                if now >= self._due[peer_id]:
                    del self._due[peer_id]
                    if others_alive:
                        procs[peer_id] = self.relaunch(peer_id)
                        self.counts[peer_id] = self.counts.get(peer_id, 0) + 1
            elif proc.poll() not in (None, 0) and others_alive and self._may_restart(peer_id):
                n = self.counts.get(peer_id, 0)
                delay = self.policy.backoff_s * 2 ** n
                self._due[peer_id] = now + delay
                print(f"peer {peer_id} exited with {proc.returncode}; restarting it in {delay:g} s "
                      f"(restart {n + 1} of at most {self.policy.max_restarts})", file=self.stream, flush=True)

    def _may_restart(self, peer_id: int) -> bool:
        done = any(e["ev"] == "final" for e in read_events(peer_log_path(self.out_dir, peer_id)))
        return not done and self.counts.get(peer_id, 0) < self.policy.max_restarts


def stop_peers(procs: dict[int, subprocess.Popen], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM every live peer, wait up to the grace period, then SIGKILL what is left."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Progress:
    """Tails the peers' JSONL files and prints one line per peer set: iteration, batch, accuracy, samples/s."""

    def __init__(self, out_dir: Path, peer_ids, stream=sys.stdout):
        self.out_dir = out_dir
        self.peer_ids = sorted(peer_ids)
        self.offsets = {pid: 0 for pid in self.peer_ids}
        self.state = {pid: {} for pid in self.peer_ids}
        self.stream = stream
        self.train_start: float | None = None  # Unix time the first peer started training
        self._shown = 0.0  # when the line was last shown (seconds since the start)

    def poll(self) -> None:
        for pid in self.peer_ids:
            path = peer_log_path(self.out_dir, pid)
            if not path.exists():
                continue
            with open(path) as f:
                f.seek(self.offsets[pid])
                for line in f:
                    if not line.endswith("\n"):
                        break
                    self.offsets[pid] += len(line.encode())
                    event = json.loads(line)
                    self.state[pid][event["ev"]] = event
                    if event["ev"] == "start":
                        self.train_start = min(self.train_start or event["t"], event["t"])

    def line(self, elapsed: float) -> str:
        parts = []
        for pid in self.peer_ids:
            s = self.state[pid]
            if "final" in s:
                parts.append(f"p{pid} done acc {s['final']['acc']:.3f}")
            elif "iter" in s:
                it = s["iter"]
                acc = f"{s['eval']['acc']:.3f}" if "eval" in s else "  -  "
                parts.append(f"p{pid} it {it['it']:5d} b {it['batch']:4d} acc {acc} {it['samples_per_s']:7.0f}/s")
            else:
                parts.append(f"p{pid} starting")
        return f"[{elapsed:6.1f}s] " + " | ".join(parts)

    def show(self, elapsed: float) -> None:
        print(self.line(elapsed), file=self.stream, flush=True)

    def tick(self, elapsed: float) -> None:
        """Read the new events, and show the line every PROGRESS_EVERY_S (`supervise`'s tick)."""
        self.poll()
        if elapsed >= self._shown + PROGRESS_EVERY_S:
            self.show(elapsed)
            self._shown = elapsed


def hard_limit_s(cfg: Config) -> float | None:
    """Wall time after which the launcher stops the peers itself (they should have stopped on their own)."""
    if cfg.training.max_seconds is None:
        return None
    return cfg.training.max_seconds + cfg.transport.startup_timeout_s + HARD_LIMIT_SLACK_S


def ready_file(out_dir: Path, peer_id: int) -> Path:
    """Where a peer under the real method says it is ready to train and to be moved into its CPU cgroup."""
    return Path(out_dir) / f".peer-{peer_id}.ready"


@dataclasses.dataclass
class Launched:
    """Peer processes running under the config's emulation: the config they run with, their processes by peer id,
    the real emulation around them (None if in-process), when the launch began (monotonic), and where."""

    cfg: Config
    procs: dict[int, subprocess.Popen]
    emulation: object
    started: float
    out_dir: Path
    forks: ForkServer | None = None

    def restart(self, peer_id: int, argv: list[str]) -> subprocess.Popen:
        """Start a peer's process again, as it was started (namespace, CPU cgroup, console)."""
        return start_peer(peer_id, argv, self.out_dir, self.emulation, self.forks)

    def attach_ready(self) -> None:
        """Move every peer that said it is ready into its CPU cgroup, and every peer that said its training is over
        out of it (real method: `real.enter_cgroup`, `real.leave_cap`)."""
        for peer_id, proc in self.procs.items():
            ready = ready_file(self.out_dir, peer_id)
            for path, move in ((ready, lambda pid: self.emulation.attach(peer_id, pid)),
                               (ready.with_suffix(TRAINED_SUFFIX), lambda pid: self.emulation.release(pid))):
                if self.emulation and path.exists():
                    path.unlink()
                    if proc.poll() is None:
                        move(proc.pid)  # `ip netns exec` execs the peer: same pid


@contextlib.contextmanager
def launched(cfg: Config, out_dir: Path, write_config: Callable[[Config], Path],
             argv_for: Callable[[Path], Callable[[int], list[str]]] = None, fork: bool = False):
    """Set up the config's emulation, start one process per peer, and on leaving stop them all and take everything
    down again. `write_config(cfg)` writes the config the peers run with (addresses resolved) and returns its path;
    `argv_for(config_path)` gives each peer's command (default: `dlion peer`); with `fork`, `dlion` commands are
    forked from a fork server, which imports while the emulation comes up."""
    cfg, emulation = resolve_emulation(cfg)
    procs: dict[int, subprocess.Popen] = {}
    forks = None
    started = time.monotonic()  # wall time counts the emulation's set-up and the fork server's imports
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if fork:
            forks = ForkServer(out_dir / FORK_SERVER_LOG, env=peer_environment())
        if emulation:
            cfg = bring_up(cfg, emulation)
        config_path = write_config(cfg)
        start_peers(cfg, (argv_for or (lambda path: peer_argv(path, out_dir)))(config_path), out_dir, procs,
                    emulation, forks)
        yield Launched(cfg, procs, emulation, started, out_dir, forks)
    finally:
        if forks:
            forks.close()
        stop_peers(procs)
        turns.remove_locks(out_dir)
        if emulation:
            emulation.down()


def supervise(run_: Launched, schedule_origin: Callable[[], float | None], limit_s: float | None,
              tick: Callable[[float], None] = lambda elapsed: None, poll_s: float = 0.2, stream=sys.stdout,
              restarts: Restarts | None = None) -> bool:
    """Wait for the peers to end: `tick(elapsed)` every `poll_s`, crashed peers restarted by `restarts`, the real
    emulation's schedule applied from `schedule_origin()` (the Unix time training started; None before), the peers
    stopped after `limit_s`. True if interrupted (Ctrl-C or SIGTERM)."""
    try:
        while any(p.poll() is None for p in run_.procs.values()) or (restarts and restarts.pending):
            time.sleep(poll_s)
            if restarts:
                restarts.tick(run_.procs, time.monotonic())
            run_.attach_ready()
            elapsed = time.monotonic() - run_.started
            tick(elapsed)
            if run_.emulation and (origin := schedule_origin()) is not None:
                run_.emulation.apply(time.time() - origin)
            if limit_s is not None and elapsed > limit_s:
                print(f"time limit of {limit_s:.0f} s reached; stopping peers", file=stream, flush=True)
                return False
    except KeyboardInterrupt:
        print("interrupted; stopping peers", file=stream, flush=True)
        return True
    return False


def with_keys(cfg: Config, out_dir: Path) -> Config:
    """The config with every peer's CURVE key pair in place (security.mode curve): `dlion run` starts every peer
    itself, so it makes the pairs missing from security.keys_dir, or fresh ones for the run in <out_dir>/keys when the
    config names no keys directory. Raises security.KeysError if a key still cannot be loaded."""
    if cfg.security.mode != "curve":
        return cfg
    if cfg.security.keys_dir is None:
        cfg = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, keys_dir=str((out_dir / "keys").resolve())))
    security.generate(cfg.security.keys_dir, [p.id for p in cfg.peers if p.public_key is None])
    for p in cfg.peers:
        security.load(cfg, p.id)
    return cfg


def run(cfg: Config, out_dir: str | Path, stream=sys.stdout, resume: bool = False, overwrite: bool = False) -> dict:
    """Run all peers of `cfg` as local processes; returns (and writes) the summary. An output directory holding an
    earlier run is refused (LaunchError) unless `overwrite` (its results are dropped) or `resume` (its peers continue
    from their latest common checkpoint)."""
    if cfg.training.dataset == "fashion-mnist" and cfg.training.data is None:
        datamod.require_fashion_mnist(cfg.training.data_dir)  # fail before any peer starts
    for key, spec in [("training.data", cfg.training.data),
                      *((f"peers[{i}].data", p.data) for i, p in enumerate(cfg.peers))]:
        if spec is not None and not hooks.is_hook(spec) and not Path(spec).exists():
            raise datamod.DataError(f"{key}: {spec} does not exist (every peer runs on this host)")
    out_dir = Path(out_dir)
    resume_at = None
    if resume:
        resume_at = checkpoint.common_iteration(out_dir, cfg.peer_ids)
        if resume_at is None:
            raise LaunchError(f"{out_dir}: no checkpoint that every peer has ({checkpoint.directory(out_dir)}); "
                              f"nothing to resume")
        print(f"resuming {out_dir} at iteration {resume_at}", file=stream, flush=True)
    elif (earlier := earlier_results(out_dir)) and not overwrite:
        raise LaunchError(f"{out_dir} holds an earlier run ({', '.join(p.name for p in earlier)}): use --overwrite to "
                          f"replace it, --resume to continue it, or another --out")
    cfg = with_keys(cfg, out_dir)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with launched(cfg, out_dir, lambda resolved: prepare_out_dir(resolved, out_dir, resume),
                      lambda path: peer_argv(path, out_dir, resume_at), fork=True) as run_:
            progress = Progress(out_dir, cfg.peer_ids, stream)
            restarts = Restarts(cfg.restart, lambda peer_id: run_.restart(peer_id, peer_argv(
                out_dir / "config.yaml", out_dir, checkpoint.latest(out_dir, peer_id))(peer_id)), out_dir, stream)
            interrupted = supervise(run_, lambda: progress.train_start, hard_limit_s(cfg), progress.tick, stream=stream,
                                    restarts=restarts)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    wall_s = time.monotonic() - run_.started
    progress.poll()
    progress.show(wall_s)
    summary = summarize(out_dir, cfg.peer_ids, cfg.training.target_accuracy, wall_s)
    summary["interrupted"] = interrupted
    summary["exit_codes"] = {str(pid): p.returncode for pid, p in run_.procs.items()}
    summary["restarts"] = {str(pid): n for pid, n in sorted(restarts.counts.items())}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for pid, p in run_.procs.items():
        if p.returncode not in (0, -signal.SIGTERM) and not any(e["ev"] == "final"
                                                               for e in read_events(peer_log_path(out_dir, pid))):
            print(f"peer {pid} exited with {p.returncode}; see {out_dir / f'peer-{pid}.log'}", file=stream)
    return summary
