"""One YAML file describes a run: peers, links, topology, training, the strategy of each stage, evaluation, output.

`load(path, overrides)` returns a validated, frozen `Config` or raises one `ConfigError` that names the key path and
the expected form; nothing starts on an invalid config. `overrides` are `a.b.c=value` strings (`--set` on the command
line); list items are addressed by index (`peers.1.cores=0.5`) and values are parsed as YAML, by the same loader as
the file (`dlion/yamlio.py`: YAML 1.2 numbers such as 1e-3, no duplicate keys).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from dlion import batching, exchange, gossip, knowledge, messages, security, topology, yamlio
from dlion import optimizers
from dlion.data import DEFAULT_DATA_DIR
from dlion.presets import PRESETS, with_preset
from dlion.simulate import population
from dlion.schema import (BANDWIDTH, DURATION, ConfigError, above, at_least, between, build, join, non_negative,
                          option, parse_bandwidth, parse_duration, positive, reference, written)

SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # a node label's value that a placement constraint can name
STAGE_REGISTRIES = {"batching": batching.STRATEGIES, "exchange": exchange.STRATEGIES,
                    "gossip": gossip.STRATEGIES, "knowledge": knowledge.STRATEGIES}


@dataclass(frozen=True)
class PeerSpec:
    id: int = option(check=non_negative, expect="a non-negative integer")
    port: int = option(check=between(1, 65535), expect="an integer in 1..65535")
    address: str = "127.0.0.1"
    cores: float = option(1.0, check=positive, expect="a positive number of CPU cores, e.g. 0.5")
    threads: Optional[int] = option(None, check=at_least(1), expect="a positive integer or null (from cores)")
    uplink: Optional[float] = option(None, parse=parse_bandwidth, expect=BANDWIDTH + ", or null")
    downlink: Optional[float] = option(None, parse=parse_bandwidth, expect=BANDWIDTH + ", or null")
    latency: Optional[float] = option(None, parse=parse_duration, expect=DURATION + " (one-way, access link), "
                                                                                    "or null")
    data: Optional[str] = option(None, expect="this peer's own data source (a .npz file, a directory of IDX files or "
                                              "of images in class folders, or a hook package.module:fn; "
                                              "dlion/sources.py), read by this peer only and not partitioned; or "
                                              "null: its part of training.data or training.dataset")
    public_key: Optional[str] = option(None, check=security.is_z85_key,
                                       expect="the peer's CURVE public key in Z85 (40 characters, the key line of "
                                              "its peer-<id>.key), or null: read from security.keys_dir")
    site: Optional[str] = option(None, check=lambda name: SITE.fullmatch(name) is not None,
                                 expect="the micro-cloud this peer runs at, a site name of up to 63 letters, digits, "
                                        "'.', '_' or '-' starting with a letter or digit, e.g. cloud-a (`dlion compose "
                                        "--swarm` places the peer on swarm nodes labelled dlion.site=<site>), or "
                                        "null: peer-<id>")

    @property
    def site_name(self) -> str:
        """The peer's site: as configured, or its own, peer-<id>."""
        return self.site or f"peer-{self.id}"

    @property
    def tf_threads(self) -> int:
        """TensorFlow intra-op threads: explicit, or the cores rounded up (TF does not see CPU quotas)."""
        return self.threads or max(1, math.ceil(self.cores - 1e-9))


@dataclass(frozen=True)
class LinkSpec:
    bandwidth: float = option(1e9, parse=parse_bandwidth, expect=BANDWIDTH)
    latency: float = option(0.0, parse=parse_duration, expect=DURATION)


@dataclass(frozen=True)
class LinkOverride:
    src: int = option(check=non_negative, expect="a peer id")
    dst: int = option(check=non_negative, expect="a peer id")
    bandwidth: Optional[float] = option(None, parse=parse_bandwidth, expect=BANDWIDTH)
    latency: Optional[float] = option(None, parse=parse_duration, expect=DURATION)


@dataclass(frozen=True)
class Links:
    default: LinkSpec = LinkSpec()
    overrides: tuple[LinkOverride, ...] = ()


def _overridden(spec: LinkSpec, change) -> LinkSpec:
    """`spec` with the bandwidth and latency that `change` (an override or a scheduled change) sets."""
    return LinkSpec(change.bandwidth if change.bandwidth is not None else spec.bandwidth,
                    change.latency if change.latency is not None else spec.latency)


@dataclass(frozen=True)
class Change:
    """One scheduled change: at `at` seconds into training, a peer's cores, or a directed link's bandwidth/latency."""
    at: float = option(parse=parse_duration, expect="a time from the start of training such as 30s")
    peer: Optional[int] = option(None, check=non_negative, expect="a peer id (with cores)")
    cores: Optional[float] = option(None, check=positive, expect="a positive number of CPU cores")
    src: Optional[int] = option(None, check=non_negative, expect="a peer id (with dst)")
    dst: Optional[int] = option(None, check=non_negative, expect="a peer id (with src)")
    bandwidth: Optional[float] = option(None, parse=parse_bandwidth, expect=BANDWIDTH)
    latency: Optional[float] = option(None, parse=parse_duration, expect=DURATION)

    @property
    def is_link(self) -> bool:
        return self.src is not None

    def validate(self, path: str) -> None:
        peer_change = self.peer is not None and self.cores is not None
        link_change = (self.src is not None and self.dst is not None
                       and (self.bandwidth is not None or self.latency is not None))
        mixed = (self.peer is not None or self.cores is not None) and (
            self.src is not None or self.dst is not None or self.bandwidth is not None or self.latency is not None)
        if mixed or peer_change == link_change:
            raise ConfigError(path, "expected either {at, peer, cores} or {at, src, dst, bandwidth and/or latency}")


@dataclass(frozen=True)
class Emulation:
    method: Literal["none", "fallback", "real", "auto"] = option(
        "none", expect="one of: none (run as the host allows), fallback (in-process link shaping and compute "
                       "pacing), real (network namespaces, tc and cgroups, compute paced in the peer; needs root), "
                       "auto (real where available, else fallback)")
    transport_latency: bool = option(
        False, expect="true or false: under the real method, add link latency in the transport (the launcher sets "
                      "it where the kernel has no netem)")

    @property
    def in_process_method(self) -> str:
        """The method as one peer process sees it: the launcher resolves `auto` before it starts peers, so a peer
        still told `auto` was started on its own and emulates what it can itself, the fallback."""
        return "fallback" if self.method == "auto" else self.method


@dataclass(frozen=True)
class Topology:
    """Who sends to whom each round (`dlion/topology.py`): the gradient exchange and the gossip both follow it."""
    kind: Literal[topology.KINDS] = option(
        "full", expect="a static graph, one of: " + ", ".join(topology.STATIC_KINDS) + "; or a time-varying "
                       "directed one, one of: " + ", ".join(topology.TIME_VARYING_KINDS) + " (dlion/topology.py)")
    edges: tuple[tuple[int, ...], ...] = option(
        (), expect="a list of [src, dst] peer-id pairs (for kind: edges; directed)")
    k: int = option(1, expect="an integer: out-neighbours per round (for kind: random-k-out)")
    seed: int = option(0, expect="a non-negative integer: the seed every peer draws the random graphs from "
                                 "(for kind: random-k-out)")
    sequence: tuple[tuple[tuple[int, ...], ...], ...] = option(
        (), expect="a list of edge lists, one per round, repeating (for kind: sequence)")

    @property
    def spec(self) -> topology.TopologySpec:
        return topology.TopologySpec(self.kind, tuple(map(tuple, self.edges)), self.k, self.seed,
                                     tuple(tuple(map(tuple, edges)) for edges in self.sequence))


@dataclass(frozen=True)
class Partition:
    kind: Literal["iid", "dirichlet", "label-sorted"] = "iid"
    alpha: float = option(0.5, check=positive, expect="a positive Dirichlet concentration")
    fraction: float = option(0.8, check=between(0.0, 1.0), expect="a fraction in [0, 1] of each class label-sorted")


@dataclass(frozen=True)
class Training:
    dataset: Literal["fashion-mnist", "synthetic"] = "fashion-mnist"
    data_dir: str = DEFAULT_DATA_DIR
    data: Optional[str] = option(None, expect="a data source shared by the peers and partitioned among them (a .npz "
                                              "file, a directory of IDX files or of images in class folders, or a "
                                              "hook package.module:fn; dlion/sources.py), or null: training.dataset")
    num_classes: Optional[int] = option(None, check=positive,
                                        expect="a positive integer, or null: from the data (required when peers "
                                               "bring their own data, which may not hold every class)")
    partition: Partition = Partition()
    model: str = option("cnn", expect="a model name (mlp, cnn, cnn-bn) or an import path package.module:callable")
    global_batch: int = option(96, check=positive, expect="a positive integer")
    optimizer: str = option("adam", parse=optimizers.parse_name, expect=optimizers.NAME_EXPECT)
    optimizer_params: dict = option({}, parse=optimizers.parse_params, expect=optimizers.PARAMS_EXPECT)
    learning_rate: float = option(1e-3, check=positive, expect="a positive number (the peak rate of "
                                                               "training.lr_schedule)")
    lr_schedule: optimizers.LRSchedule = optimizers.LRSchedule()
    momentum: float = option(0.9, check=between(0.0, 0.999), expect="a number in [0, 0.999] (sgd's momentum)")
    loss_from_logits: bool = option(True, expect="true: the model outputs logits (no final softmax); false: it "
                                                 "outputs probabilities (ends in a softmax), kept 1e-7 away from 0 "
                                                 "and 1 in the loss")
    max_iterations: Optional[int] = option(None, check=positive,
                                           expect="a positive integer (optimizer steps: a round of "
                                                  "rounds.local_steps counts as that many) or null")
    max_seconds: Optional[float] = option(None, check=positive,
                                          expect="a positive number of seconds since training began, evaluations "
                                                 "included (time to target counts training time only), or null")
    target_accuracy: Optional[float] = option(None, check=between(0.0, 1.0), expect="an accuracy in [0, 1] or null")
    stop_at_target: bool = True

    def validate(self, path: str) -> None:
        optimizers.check_params(self.optimizer, self.optimizer_params, path or "training")
        stops_at_target = self.target_accuracy is not None and self.stop_at_target
        if self.max_iterations is None and self.max_seconds is None and not stops_at_target:
            raise ConfigError(path or "training",
                              "no stop condition; set max_iterations, max_seconds or target_accuracy")


@dataclass(frozen=True)
class Stage:
    """A stage's strategy: its kind and that strategy's own validated parameters."""
    kind: str
    params: Any


def _stage_field(stage: str, default_kind: str):
    registry = STAGE_REGISTRIES[stage]

    def build_stage(raw: Any, path: str) -> Stage:
        raw = {"kind": default_kind} if raw is None else raw
        if isinstance(raw, str):
            raw = {"kind": raw}
        if not isinstance(raw, dict) or raw.get("kind", default_kind) not in registry:
            kind = raw.get("kind") if isinstance(raw, dict) else raw
            hint = " (YAML reads unquoted off/on/no/yes as booleans)" if isinstance(kind, bool) else ""
            raise ConfigError(join(path, "kind") if isinstance(raw, dict) else path,
                              f"expected a strategy kind, one of: {', '.join(registry)}{hint}", kind)
        kind = raw.get("kind", default_kind)
        params = build(registry[kind].Params, {k: v for k, v in raw.items() if k != "kind"}, path)
        return Stage(kind, params)

    return option(Stage(default_kind, registry[default_kind].Params()), build_with=build_stage)


@dataclass(frozen=True)
class Strategies:
    batching: Stage = _stage_field("batching", "fixed")
    exchange: Stage = _stage_field("exchange", "dense")
    gossip: Stage = _stage_field("gossip", "none")
    knowledge: Stage = _stage_field("knowledge", "none")


@dataclass(frozen=True)
class Rounds:
    """What one round of a peer's loop is: how many optimizer steps it takes on its own batches before the round's
    exchange and gossip, and the outer step that applies the combined change of parameters (dlion/rounds.py)."""
    local_steps: int = option(1, check=positive,
                              expect="a positive integer: optimizer steps per round on the peer's own batches (1: "
                                     "the round's gradient is exchanged and applied through the optimizer; more: "
                                     "the round's change of parameters is exchanged, local SGD)")
    outer_learning_rate: float = option(1.0, check=positive,
                                        expect="a positive number: the outer step's rate on the combined change "
                                               "(1 with momentum 0: the peers' weighted mean change)")
    outer_momentum: float = option(0.0, check=lambda x: 0 <= x < 1,
                                   expect="a number in [0, 1): the outer step's Nesterov momentum (DiLoCo: 0.9)")
    min_step_batch: int = option(8, check=positive,
                                 expect="a positive integer: with local steps, a peer whose share of the global "
                                        "batch is smaller takes fewer local steps of at least this many samples, "
                                        "as many samples per round")
    one_message: bool = option(False, expect="true or false: a round's messages to a peer (gradient part, gossip "
                                             "part, replica slice, reports, figures) leave together at the round's "
                                             "end, or when the peer waits, one message per link; for overlapped "
                                             "rounds (in lockstep a peer's gradient would wait for its round's end)")
    update_weights: Literal["batch", "uniform"] = option(
        "batch", expect="batch (a peer's update counts in the combination by its batch: the least noisy mean where "
                        "the peers' data are alike) or uniform (every peer's update alike: the mean of the peers' "
                        "own objectives, as gossip averages models; for data spread unevenly, where batch weights "
                        "tilt the model to the fastest peers' classes)")
    drift_correction: bool = option(False, expect="true or false: with local steps, each step also moves the "
                                                  "parameters by its share of the last round's combined change minus "
                                                  "the peer's own (SCAFFOLD's correction, for data spread unevenly; "
                                                  "dlion/rounds.py)")
    final_average: bool = option(False, expect="true or false: once training is over, every peer sends its model to "
                                               "every other (float16 where it fits) and each ends with their "
                                               "average, weighted by push-sum weight (dlion/consensus.py)")
    final_average_timeout_s: float = option(10.0, check=positive,
                                            expect="a positive number of seconds: the longest a peer waits for the "
                                                   "others' models of the final average, and for their class "
                                                   "statistics of the classifier refit (one that has not come is "
                                                   "left out)")
    classifier_refit: Literal["none", "always", "when-skewed"] = option(
        "none", expect="none, always or when-skewed: once training is over (after the final average), every peer "
                       "shares its label counts and the count, mean and covariance of its features per class, and "
                       "each refits the model's last layer on features drawn from them, every class alike (CCVR, "
                       "against label skew; needs a model ending in a Dense layer); when-skewed refits only where a "
                       "peer's labels are spread unlike the union's (dlion/classifier.py)")
    learning_rate_scale: float = option(1.0, check=positive,
                                        expect="a positive number: the peer's optimizer runs at "
                                               "training.learning_rate times this (with local steps the peers' "
                                               "averaged change is shorter than one model's, their batches' noise "
                                               "cancelling; a larger rate makes up for it)")


@dataclass(frozen=True)
class Evaluation:
    every_iterations: int = option(50, check=positive,
                                   expect="a positive integer: optimizer steps between evaluations (with "
                                          "rounds.local_steps H, every max(1, every_iterations // H) rounds)")
    on: Literal["validation", "test"] = option(
        "validation", expect="validation (the stop rule's evaluations use samples held out of the training data, "
                             "never trained on and never the test set) or test (a subset of the test set, as runs "
                             "before 2026-12-02 did)")
    subset: int = option(2000, check=between(1, 10000),
                         expect="an integer in 1..10000: samples per evaluation (at most a tenth of the training "
                                "data with evaluation.on validation)")
    deadline_s: float = option(2.0, check=positive,
                               expect="a positive number of seconds: the longest a peer waits for the others' "
                                      "figures of an evaluation round, once it is as many rounds past it as the "
                                      "stages' staleness bound lets it be")


@dataclass(frozen=True)
class Output:
    dir: str = "runs/latest"
    log_every: int = option(10, check=positive, expect="a positive integer (iterations between progress events)")
    tensorboard: bool = option(True, expect="true or false: each peer also writes its progress, evaluation and final "
                                            "figures as TensorBoard scalars in <output>/tensorboard/peer-<id>")
    checkpoint_every: Optional[int] = option(
        500, check=positive, expect="a positive number of iterations between checkpoints (parameters, optimizer "
                                    "state, iteration; `dlion run --resume DIR` continues from them), or null: none")


@dataclass(frozen=True)
class TransportSettings:
    startup_timeout_s: float = option(60.0, check=positive, expect="a positive number of seconds")
    sndhwm: int = option(16, check=positive, expect="a positive integer (messages queued per link)")
    suspect_after: int = option(2, check=positive, expect="a positive integer (missed rounds before a peer is "
                                                                 "no longer waited for)")
    window_rounds: int = option(256, check=positive,
                                expect="a positive integer: a message for a round more than this far ahead of the "
                                       "peer's own is dropped (the mailbox's window)")
    max_held_mb: float = option(64.0, check=positive,
                                expect="a positive number of megabytes: the most a peer's mailbox holds from one "
                                       "sender; beyond, that sender's messages are dropped until it has room")
    heartbeat_s: Optional[float] = option(
        1.0, check=positive, expect="a positive number of seconds between liveness pings on each link's own "
                                    "connection, or null: a peer is only known gone when its connections close")
    heartbeat_timeout_s: float = option(
        5.0, check=positive, expect="a positive number of seconds without an answer to a ping after which a peer "
                                    "counts as gone (a frozen or vanished host) and is no longer waited for")
    listen: Optional[str] = option(
        None, check=lambda host: bool(host.strip()),
        expect="a host for a peer's own port to listen on instead of its peers[].address, such as 0.0.0.0 (every "
               "interface: where that address is a name, as a swarm service's, or is not this host's own), or "
               "null: its peers[].address")

    def validate(self, path: str) -> None:
        if self.heartbeat_s is not None and self.heartbeat_timeout_s <= self.heartbeat_s:
            raise ConfigError(f"{path}.heartbeat_timeout_s", f"expected more than heartbeat_s ({self.heartbeat_s} s): "
                                                             f"a peer must get the chance to answer a ping")


@dataclass(frozen=True)
class Security:
    mode: Literal["curve", "none"] = option(
        "curve", expect="curve (every link encrypted, only the configured peers' keys accepted, a message's sender "
                        "bound to its connection's key) or none (no authentication: anyone who reaches a port can "
                        "speak as any peer; the peer warns at start-up)")
    keys_dir: Optional[str] = option(None, expect="a directory with peer-<id>.key and peer-<id>.key_secret files "
                                                  "(`dlion keys CONFIG -o DIR`), or null: `dlion run` makes fresh "
                                                  "keys for the run in <output>/keys")
    max_norm_ratio: float = option(
        20.0, check=above(1),
        expect="a number > 1: a received gradient or model whose RMS exceeds this many times the median RMS of "
               "this peer's own recent messages of that kind is rejected (dlion/transport/guard.py)")


@dataclass(frozen=True)
class Restart:
    policy: Literal["never", "on-failure"] = option(
        "never", expect="never, or on-failure: `dlion run` starts a peer again that ended with an error or was killed "
                        "while others still train (it rejoins at their round), as docker-compose's restart policy")
    max_restarts: int = option(3, check=non_negative, expect="a whole number >= 0: restarts per peer at most")
    backoff_s: float = option(2.0, check=non_negative,
                              expect="a number of seconds >= 0 before a restart, doubled at each further restart of "
                                     "the same peer")


@dataclass(frozen=True)
class Replicas:
    """Replicas of each peer's state kept by other peers, from which a restarted peer recovers its own
    (dlion/replica.py)."""
    copies: int = option(1, check=non_negative,
                         expect="a whole number >= 0: peers that keep a replica of each peer's state (its next peers "
                                "in id order; 0: no replicas)")
    chunks: int = option(16, check=positive,
                         expect="a positive integer: rounds over which a whole replica is sent, one slice a round")
    refresh_every: int = option(8, check=positive,
                                expect="a positive integer: every this many times a slice is sent it goes densely in "
                                       "float32 (which repairs a difference lost on the way), in between as the "
                                       "float16 difference from what its holder has")
    optimizer: bool = option(True, expect="true or false: the replica includes the optimizer's variables (moments, "
                                          "step count), not only the parameters")


@dataclass(frozen=True)
class Config:
    peers: tuple[PeerSpec, ...]
    name: str = "dlion"
    seed: int = 0
    links: Links = Links()
    topology: Topology = Topology()
    training: Training = Training()
    preset: Optional[str] = option(None, check=lambda name: name in PRESETS,
                                   expect=f"a preset name, one of: {', '.join(PRESETS)} (fills in strategies and, "
                                          f"for gossip, the topology)")
    strategies: Strategies = Strategies()
    rounds: Rounds = Rounds()
    evaluation: Evaluation = Evaluation()
    output: Output = Output()
    transport: TransportSettings = TransportSettings()
    security: Security = Security()
    emulation: Emulation = Emulation()
    restart: Restart = Restart()
    replicas: Replicas = Replicas()
    schedule: tuple[Change, ...] = ()

    @property
    def peer_ids(self) -> tuple[int, ...]:
        return tuple(p.id for p in self.peers)

    @functools.cached_property
    def _by_id(self) -> dict[int, PeerSpec]:
        """Peers by id, for `peer` (a simulated config has hundreds); the first of a duplicated id, as validate
        refuses."""
        by_id: dict[int, PeerSpec] = {}
        for p in self.peers:
            by_id.setdefault(p.id, p)
        return by_id

    def peer(self, peer_id: int) -> PeerSpec:
        try:
            return self._by_id[peer_id]
        except (KeyError, TypeError):
            raise KeyError(f"no peer with id {peer_id}; peers are {list(self.peer_ids)}") from None

    def link(self, src: int, dst: int, at: float | None = None) -> LinkSpec:
        """Bandwidth and one-way latency of the directed link src -> dst (at `at` s into training, if given).

        Access links first: the rate is the smaller of the sender's uplink and the receiver's downlink, the latency
        the sum of both ends' access latencies; then `links.default` for what they leave unset; then a per-link
        override; then the scheduled changes due by `at`.
        """
        s, d = self.peer(src), self.peer(dst)
        ends = [b for b in (s.uplink, d.downlink) if b is not None]
        delays = [x for x in (s.latency, d.latency) if x is not None]
        spec = LinkSpec(min(ends) if ends else self.links.default.bandwidth,
                        sum(delays) if delays else self.links.default.latency)
        for o in self.links.overrides:
            if (o.src, o.dst) == (src, dst):
                spec = _overridden(spec, o)
        for change in self.changes_until(at):
            if change.is_link and (change.src, change.dst) == (src, dst):
                spec = _overridden(spec, change)
        return spec

    def cores(self, peer_id: int, at: float | None = None) -> float:
        """A peer's compute capacity in cores (at `at` s into training, if given)."""
        cores = self.peer(peer_id).cores
        for change in self.changes_until(at):
            if change.peer == peer_id:
                cores = change.cores
        return cores

    def changes_until(self, at: float | None) -> list[Change]:
        """Scheduled changes due by `at` seconds, in time order (none if `at` is None)."""
        if at is None:
            return []
        return sorted((c for c in self.schedule if c.at <= at), key=lambda c: c.at)

    def graph(self) -> topology.Topology:
        """The graph of every round (the same on every peer)."""
        return topology.Topology(self.topology.spec, self.peer_ids)

    def destinations(self, peer_id: int) -> tuple[int, ...]:
        """The peers this one sends to in some round of the topology."""
        return self.graph().destinations(peer_id)

    def validate(self, path: str) -> None:
        if not self.peers:
            raise ConfigError("peers", "expected at least one peer")
        seen_ids: dict[int, int] = {}
        seen_endpoints: dict[tuple[str, int], int] = {}
        for i, p in enumerate(self.peers):
            if p.id in seen_ids:
                raise ConfigError(f"peers[{i}].id", f"expected a unique id; {p.id} is already used by "
                                                    f"peers[{seen_ids[p.id]}]")
            seen_ids[p.id] = i
            endpoint = (p.address, p.port)
            if endpoint in seen_endpoints:
                raise ConfigError(f"peers[{i}].port", f"expected a unique address and port; {p.address}:{p.port} "
                                                      f"is already used by peers[{seen_endpoints[endpoint]}]")
            seen_endpoints[endpoint] = i
        ids = set(seen_ids)
        for i, o in enumerate(self.links.overrides):
            for key in ("src", "dst"):
                if getattr(o, key) not in ids:
                    raise ConfigError(f"links.overrides[{i}].{key}",
                                      f"expected the id of a configured peer ({sorted(ids)})", getattr(o, key))
            if o.src == o.dst:
                raise ConfigError(f"links.overrides[{i}]", "expected a link between two different peers")
        for i, change in enumerate(self.schedule):
            for key in ("peer", "src", "dst"):
                if getattr(change, key) is not None and getattr(change, key) not in ids:
                    raise ConfigError(f"schedule[{i}].{key}",
                                      f"expected the id of a configured peer ({sorted(ids)})", getattr(change, key))
            if change.is_link and change.src == change.dst:
                raise ConfigError(f"schedule[{i}]", "expected a link between two different peers")
        try:
            self.graph().check_strongly_connected()
        except topology.TopologyError as exc:
            raise ConfigError(join("topology", exc.where) if exc.where else "topology", exc.problem) from None
        own_data = [i for i, p in enumerate(self.peers) if p.data is not None]
        if own_data and self.training.num_classes is None:
            raise ConfigError("training.num_classes", f"expected the number of classes: peers[{own_data[0]}] brings "
                                                      f"its own data, which need not hold every class")
        if self.training.global_batch < len(self.peers):
            raise ConfigError("training.global_batch", f"expected at least the number of peers ({len(self.peers)})",
                              self.training.global_batch)


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply `a.b.c=value` overrides to a parsed YAML mapping (value parsed as YAML, as in a config file).

    An empty value is refused rather than read as null: `--set training.max_seconds=` would silently lift a limit.
    """
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError("--set", "expected KEY.PATH=VALUE", item)
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        keys = dotted.split(".")
        if not all(keys):
            raise ConfigError("--set", "expected KEY.PATH=VALUE with a non-empty dotted key", item)
        if not text.strip():
            raise ConfigError("--set", f"expected a value after = in {item!r}; to clear a key write {dotted}=null")
        node: Any = raw
        path = ""
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not messages.ascii_digits(key) or int(key) >= len(node):
                    raise ConfigError(path, f"expected a list index below {len(node)}", key)
                key = int(key)
            elif not isinstance(node, dict):
                raise ConfigError(path, "expected a mapping or list to set a key in", node)
            path = join(path, key)
            if last:
                node[key] = yamlio.loads(text, f"--set {dotted}", path)
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return raw


def parse(raw: Any, overrides=(), peers: int | None = None) -> Config:
    """Validate a parsed YAML document (plus overrides) into a Config; a `population` block becomes the peers it
    generates, and `peers` (`--peers N`) sets their number (`dlion.simulate.population.expand`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", "expected a YAML mapping at the top level", raw)
    raw = population.expand(apply_overrides(raw, overrides), peers)
    preset = raw.get("preset")
    if isinstance(preset, str) and preset in PRESETS and isinstance(raw.get("strategies") or {}, dict):
        raw = with_preset(raw, preset)
    return build(Config, raw)


def load(path: str | Path, overrides=(), peers: int | None = None) -> Config:
    """Read, override and validate a YAML config file (`peers`: see `parse`)."""
    return parse(yamlio.load_file(path), overrides, peers)


def to_dict(cfg: Config) -> dict:
    """A plain mapping of the resolved config (written next to a run's results; it reloads to the same config, so
    durations and bandwidths keep their units)."""
    def plain(obj):
        if isinstance(obj, Stage):
            return {"kind": obj.kind, **plain(obj.params)}
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(written(f.metadata, getattr(obj, f.name))) for f in dataclasses.fields(obj)}
        if isinstance(obj, tuple):
            return [plain(v) for v in obj]
        return obj
    return plain(cfg)


def reference_markdown() -> str:
    """docs/config.md: every key with its default and expected form, and each strategy's parameters."""
    lines = ["# Config reference", "",
             "Generated from `dlion/config.py` by `python3 scripts/gen_config_doc.py`; a test keeps it in sync.",
             "Durations take `s`, `ms`, `us`; bandwidths take `bit`, `kbit`, `mbit`, `gbit` (decimal, as `tc`).",
             "The unit is required: a bare number (`latency: 10`) is refused as ambiguous, 0 aside. Numbers read as",
             "in YAML 1.2 (`1e-3` is a number), and a key given twice in a mapping is an error. Every number is",
             "finite: `.inf` and `.nan` are refused wherever a number, duration or bandwidth is expected.", "",
             "| key | default | expected |", "|---|---|---|"]
    lines += [f"| `{k}` | {d} | {e} |" for k, d, e in reference(Config)]
    lines += ["", "## population", "", (population.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "), "",
              "Instead of `peers`, a config may generate them (`dlion simulate --peers N` sets the count):", "",
              "| key | default | expected |", "|---|---|---|"]
    lines += [f"| `{k}` | {d} | {e} |" for k, d, e in reference(population.Population, "population")]
    for stage, registry in STAGE_REGISTRIES.items():
        lines += ["", f"## strategies.{stage}", "", f"`kind`: one of {', '.join(registry)} "
                  f"(default `{getattr(Strategies(), stage).kind}`).", ""]
        for kind, strategy in registry.items():
            params = reference(strategy.Params, f"strategies.{stage}")
            doc = (strategy.__doc__ or "").strip().splitlines()[0]
            lines += [f"### `{kind}`", "", doc, ""]
            if params:
                lines += ["| key | default | expected |", "|---|---|---|"]
                lines += [f"| `{k}` | {d} | {e} |" for k, d, e in params]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
