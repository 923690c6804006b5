"""What every transport shares: sending through `wire`, the validated inbound path, link stats, link bandwidth
estimates and the hello barrier. Subclasses only move frames (`_send_frames`) and call `_deliver` with what arrives.

Bandwidth: each inbound link is estimated at its receiving end from every message that crosses it (`estimate`), and
every message a peer sends carries its estimate of the reverse link, so each peer learns the rate of its outgoing
links as their receivers measure them (`link_bandwidth`).

Every inbound message is decoded and checked by `wire`, then against its kind's declaration (`dlion.messages`:
types, ranges, batch weights, finite tensors) and its kind's rate limit, before the mailbox files it within its
window: stages see only well-formed messages of known peers. When a stage takes a gradient or a model, the norm guard
(`guard`) judges its size against this peer's own. Every message dropped anywhere on this path, or rejected by a
stage (`reject`), is counted by kind and reason (`rejections`). When a message may leave is the `link_policy`'s say
(`LinkPolicy`: at once by default; an emulation attaches one that holds messages as a slower link would). While the
peer's loop holds its round's messages (`hold`), they leave together, one message per link (`outbox`)."""
from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import time
from collections import defaultdict
from typing import Any, Iterable, Mapping, Protocol, Sequence

from dlion import messages
from dlion.messages import KINDS

from . import wire
from .estimate import LinkEstimator
from .guard import NormGuard
from .mailbox import Mailbox
from .outbox import BUNDLE_HEADER_BYTES, Outbox
from .stats import LinkStats

log = logging.getLogger("dlion.transport")

UNKNOWN = "unknown"
HELLO_INTERVAL_S = 0.1
LATE_GRACE_S = 1.0  # how long a peer that finds the run in progress waits for the peers that do not answer
_LOG_FIRST_DROPS = 5
_LOG_EVERY_DROPS = 100


class _Bucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _heard(msg: wire.Message) -> frozenset[int]:
    """The peers a hello says its sender has heard from (meta `heard`: comma-separated ids, as declared)."""
    return frozenset(int(p) for p in msg.meta["heard"].split(",") if p)


class LinkPolicy(Protocol):
    """When a message handed over to the link to `dst` may go on the wire (None: at once). Called from the
    transport's sending thread; an implementation that changes over time must be thread-safe."""

    def release_at(self, dst: int, nbytes: int, handed_over: float) -> float | None: ...


class Unshaped:
    """The null link policy: every message leaves at once."""

    def release_at(self, dst: int, nbytes: int, handed_over: float) -> None:
        return None


class Transport(abc.ABC):
    """A peer's endpoint: `send` to any other peer, receive into `mailbox`.

    `clock` (monotonic) and `wall` (Unix-like) are the times the transport stamps, limits rates and measures links
    on; a simulation passes its virtual clock for both, and a mailbox class that waits in virtual time."""

    def __init__(self, peer_id: int, peers: Iterable[int], limits: wire.WireLimits, suspect_after: int = 2,
                 link_policy: LinkPolicy | None = None, window_rounds: int = 256, max_held_bytes: int = 64 << 20,
                 max_norm_ratio: float = 20.0, clock=time.monotonic, wall=time.time, mailbox_type=Mailbox):
        self.peer_id = peer_id
        self.peers = frozenset(peers) - {peer_id}
        self.limits = limits
        self._clock, self._wall = clock, wall
        self.guard = NormGuard(max_norm_ratio)
        self.outbox = Outbox(self._send_bundle, limits.max_message_bytes)
        self._holding = False
        self.mailbox = mailbox_type(suspect_after=suspect_after, window=window_rounds, max_held_bytes=max_held_bytes,
                                    screen=self._screen, clock=clock, outbox=self.outbox)
        self._stats: dict[int | str, LinkStats] = {p: LinkStats() for p in self.peers}
        self._drops: dict[int | str, int] = defaultdict(int)
        self._rejections: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._buckets: dict[tuple[int, str], _Bucket] = {}
        self._stats_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closing = False
        self._bytes_by_kind: dict[str, int] = defaultdict(int)
        self._inbound = {p: LinkEstimator() for p in self.peers}
        self._outbound_bps: dict[int, float] = {}
        self.link_policy: LinkPolicy = link_policy or Unshaped()
        self.expected_rate = 0.0  # samples/s this peer expects to compute, announced in its hellos (0: unknown)

    @abc.abstractmethod
    def start(self) -> None:
        """Open the links; returns once this peer can receive."""

    @abc.abstractmethod
    def _send_frames(self, dst: int, frames: list, nbytes: int) -> None:
        """Hand frames to the link to `dst` without blocking; count sent or send_failed."""

    @abc.abstractmethod
    def _shutdown(self, bye: list, nbytes: int) -> None:
        """Send `bye` to every peer (best effort, bounded time) and release the links."""

    def send(self, dst: int, kind: str, round: int, tensors: Mapping[str, Any] | None = None,
             meta: Mapping[str, Any] | None = None) -> None:
        """Encode and hand over without blocking. A down link counts `send_failed`; only misuse raises."""
        if dst not in self.peers:
            raise ValueError(f"peer {self.peer_id}: {dst} is not another peer of this transport")
        frames = wire.encode(kind, self.peer_id, round, tensors, meta, self._wall(), self.inbound_bandwidth(dst))
        self.guard.observe(kind, tensors)
        nbytes = sum(memoryview(f).nbytes for f in frames)
        if nbytes > self.limits.max_message_bytes:
            raise ValueError(f"{kind} message of {nbytes} bytes exceeds max_message_bytes "
                             f"{self.limits.max_message_bytes}: receivers would drop it")
        with self._stats_lock:
            self._bytes_by_kind[kind] += nbytes
        if self._closing:  # read without a lock: a send racing close() may follow the bye or be lost, harmlessly
            self._count(dst, send_failed=1)
        elif (self._holding and kind in messages.BUNDLED
              and nbytes + BUNDLE_HEADER_BYTES <= self.limits.max_message_bytes):
            self.outbox.hold(dst, frames, nbytes)
        else:
            self._send_frames(dst, frames, nbytes)

    def hold(self, on: bool = True) -> None:
        """While on, messages of the kinds a round's stages send (`messages.BUNDLED`) are held and leave together, one
        message per link: at `end_round`, or when this peer is about to wait (the mailbox flushes the outbox first).
        Turning it off sends what is held."""
        self._holding = on
        if not on:
            self.outbox.flush()

    def end_round(self) -> None:
        """The round's messages are complete: send them (one bundle per link)."""
        self.outbox.flush()

    def _send_bundle(self, dst: int, parts: list) -> None:
        frames = wire.encode_bundle(parts, self._wall(), self.inbound_bandwidth(dst))
        if self._closing:
            self._count(dst, send_failed=1)
        else:
            self._count(dst, bundles_sent=1)
            self._send_frames(dst, frames, sum(memoryview(f).nbytes for f in frames))

    def close(self) -> None:
        """Say bye to every peer and release the links; idempotent, never blocks on a dead peer."""
        with self._close_lock:
            if self._closing:
                return
            self._holding = False
            self.outbox.flush()  # what the last round held leaves before the bye
            self._closing = True
        bye = wire.encode(messages.BYE, self.peer_id, 0)
        self._shutdown(bye, sum(memoryview(f).nbytes for f in bye))

    def stats(self) -> dict[int | str, LinkStats]:
        """A snapshot per link; `"unknown"` collects traffic from routing ids that are no peer."""
        with self._stats_lock:
            return {k: dataclasses.replace(v) for k, v in self._stats.items()}

    def rejections(self) -> dict[str, dict[str, int]]:
        """Messages dropped or rejected so far: {kind: {reason: count}} ("?" for a message that did not decode)."""
        with self._stats_lock:
            return {kind: dict(reasons) for kind, reasons in self._rejections.items()}

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes handed over per message kind (gradient plane, model plane, control)."""
        with self._stats_lock:
            return dict(self._bytes_by_kind)

    def link_bandwidth(self, dst: int) -> float | None:
        """The rate (bits/s) of the link to `dst` as `dst` last measured it; None until it has told us."""
        with self._stats_lock:
            return self._outbound_bps.get(dst)

    def inbound_bandwidth(self, src: int) -> float | None:
        """Our own estimate of the link from `src` (bits/s); None until a large enough message arrived."""
        with self._stats_lock:
            return self._inbound[src].bps

    def _count(self, link: int | str, **increments: int) -> None:
        with self._stats_lock:
            s = self._stats.setdefault(link, LinkStats())
            for name, n in increments.items():
                setattr(s, name, getattr(s, name) + n)

    # ---- inbound -------------------------------------------------------------------------------------------

    def _deliver(self, frames: Sequence, routing_sender: int | None) -> None:
        """Validate one inbound message from the link of `routing_sender` and file it (or drop and count)."""
        link = routing_sender if routing_sender in self.peers else UNKNOWN
        self._count(link, msgs_received=1, bytes_received=sum(memoryview(f).nbytes for f in frames))
        if link == UNKNOWN:
            self._drop(link, "?", "unknown sender", f"routing id or key of {routing_sender!r} is no peer's")
            return
        received_at = self._wall()
        try:
            received = wire.receive(frames, self.limits, received_at)
        except wire.WireError as e:
            self._drop(link, "?", "malformed", e.reason)
            return
        msgs = received.messages
        if mismatch := next((m for m in msgs if m.sender != link), None):
            self._drop(link, mismatch.kind, "sender mismatch",
                       f"header sender {mismatch.sender} != connection's peer {link}")
            return
        with self._stats_lock:
            self._inbound[link].observe(sum(m.nbytes for m in msgs), received.sent_at, received_at)
            if received.feedback_bps is not None:
                self._outbound_bps[link] = received.feedback_bps
        for msg in msgs:
            self._file(link, msg)

    def _file(self, link: int, msg: wire.Message) -> None:
        """Check one message against its kind's declaration and rate, and file it (or drop and count)."""
        if rejected := messages.problem(msg.kind, msg.meta, msg.tensors, self.limits.max_batch_weight):
            self._drop(link, msg.kind, *rejected)
            return
        if not self._within_rate(link, msg.kind):
            self._drop(link, msg.kind, "rate", f"more {msg.kind} messages than {KINDS[msg.kind].rate:g}/s")
            return
        if msg.kind == messages.BYE:
            self.mailbox.mark_departed(link, said_bye=True)
            return
        if refused := self.mailbox.put(msg):
            if refused == "late":
                self._count(link, late=1)
            else:
                self._drop(link, msg.kind, refused, f"{msg.kind} round {msg.round}: {refused}")
            return
        if msg.kind == messages.REJOIN and msg.round < self.mailbox.round:
            # A peer behind us asking for the state to rejoin from takes part in no round until its `back`: nobody
            # waits for it meanwhile, also where its last round's messages re-admitted it (a peer woken from a
            # freeze). (A request for a round still ahead is from a peer already back, for that round's state.)
            self.mailbox.mark_departed(link)
        if msg.kind == messages.BACK and msg.meta["at"] <= self.mailbox.round:
            # A peer back in rounds we have already started: what we send it begins with our next round, so it
            # must not wait for us before that one.
            self._back(link, self.mailbox.round + 1)
        if msg.kind == messages.HELLO:
            # A hello's round moves nothing here (only a rejoin's answer moves a peer: `dlion.rejoin`): a claimed
            # far-future round would open the window to anything and go on in this peer's own hellos.
            if self.peer_id not in _heard(msg) or msg.meta["at"] < self.mailbox.round:
                # Answer at once, also after our own barrier: lets a late or restarted peer finish its barrier, and
                # tells one that is behind (it knocked after a freeze: `knock`) where the others are.
                self._hello([link])

    def _within_rate(self, link: int, kind: str) -> bool:
        declared = KINDS[kind]
        if declared.rate is None:
            return True
        with self._stats_lock:
            now = self._clock()
            bucket = self._buckets.get((link, kind)) or self._buckets.setdefault(
                (link, kind), _Bucket(declared.rate, declared.burst, now))
            return bucket.take(now)

    def _screen(self, msg: wire.Message) -> bool:
        """The mailbox's last check as a stage takes `msg`: the norm guard. False (counted) if it is rejected."""
        if detail := self.guard.problem(msg):
            self._drop(msg.sender, msg.kind, "norm", f"{msg.kind} round {msg.round}: {detail}")
            return False
        return True

    def reject(self, msg: wire.Message, reason: str, detail: str = "") -> None:
        """A stage found a well-formed message unusable (e.g. a gradient of the wrong length): drop and count it
        under `reason` (short, to count by; `detail` says more in the log)."""
        self._drop(msg.sender, msg.kind, reason, f"{msg.kind} round {msg.round}: {detail or reason}")

    def _drop(self, link: int | str, kind: str, reason: str, detail: str) -> None:
        with self._stats_lock:
            self._stats.setdefault(link, LinkStats()).dropped += 1
            self._rejections[kind][reason] += 1
            self._drops[link] += 1
            n = self._drops[link]
        if n <= _LOG_FIRST_DROPS or n % _LOG_EVERY_DROPS == 0:
            log.warning("peer %s dropped message #%d from %s: %s", self.peer_id, n, link, detail)

    # ---- hello barrier -------------------------------------------------------------------------------------

    def _hello(self, dsts: Iterable[int]) -> None:
        heard = ",".join(str(p) for p in sorted(self.peers) if self.mailbox.latest(messages.HELLO, p) is not None)
        for p in dsts:
            self.send(p, messages.HELLO, 0, meta={"heard": heard, "at": self.mailbox.round, "rate": self.expected_rate})

    def _confirmed(self) -> set[int]:
        """Peers we heard from whose latest hello says they heard from us: reachable both ways."""
        return {p for p in self.peers
                if (m := self.mailbox.latest(messages.HELLO, p)) is not None and self.peer_id in _heard(m)}

    def back(self, peers: Iterable[int], round_: int) -> None:
        """Tell `peers` this peer takes part in rounds from `round_` on (a rejoin): they re-admit it and do not
        wait for it before that round; one that is already further answers with its own next round. Nor does this
        peer wait for theirs before it (`Mailbox.rejoined`)."""
        self.mailbox.rejoined(round_)
        for p in peers:
            self._back(p, round_)

    def _back(self, dst: int, round_: int) -> None:
        self.send(dst, messages.BACK, round_, meta={"at": round_})

    def knock(self, peers: Iterable[int]) -> None:
        """A hello to peers that departed without a bye, with our round: if they are still there, their answer
        re-admits them and tells us their round (a peer that was frozen finds the others again)."""
        self._hello(peers)

    def wait_for_peers(self, timeout_s: float) -> set[int]:
        """Hello barrier: returns the peers reachable both ways; the others are marked departed. Each hello also
        carries `expected_rate`, so that every peer holds the others' before the first round. A peer that finds
        the run in progress (a hello from a peer past round 0: it was restarted, or is late) waits at most
        LATE_GRACE_S more for the rest: the live ones answer at once, and a missing one is gone (the others marked
        it departed too; if it comes back, it rejoins as this peer does)."""
        deadline = time.monotonic() + timeout_s
        while (confirmed := self._confirmed()) != self.peers and time.monotonic() < deadline:
            if any(self.mailbox.latest(messages.HELLO, p).meta["at"] > 0 for p in confirmed):
                deadline = min(deadline, time.monotonic() + LATE_GRACE_S)
            self._hello(self.peers)
            time.sleep(max(0.0, min(HELLO_INTERVAL_S, deadline - time.monotonic())))
        self._hello(self.peers)  # the last one: lets peers that wait for our confirmation finish too
        for p in self.peers - confirmed:
            self.mailbox.mark_departed(p)
        return confirmed
