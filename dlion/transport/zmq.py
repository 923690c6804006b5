"""ZeroMQ transport: one ROUTER in, one DEALER out per peer, all owned by a single communication thread.

ZeroMQ sockets are not thread-safe, so other threads never touch them: `send` queues frames and writes a byte
to a wake-up pipe that the thread polls together with the ROUTER. Messages the link policy holds back (an emulated
link) wait in a holdback heap until their release time; the poll timeout shrinks to the next release.

A peer whose process dies without its bye (SIGKILL, a crash) closes its TCP connections: the thread watches each
DEALER's monitor for that disconnection and marks the peer departed, so no stage waits for it, and gossip stops
pushing weight to it (which would otherwise drain every sender's push-sum weight towards zero). A later message from
the peer re-admits it once our connection to it is up again (the monitor's handshake event): the dead process's last
messages, still draining from its kernel's socket buffers behind a slow link, do not. A host that vanishes without
closing its connections is told by ZMTP heartbeats on a connection of their own that data never queues in (`_open`),
or else suspected by the mailbox after missed rounds.

Identity. Each DEALER announces the routing id `<peer id>.<incarnation>` (`routing_id`), the incarnation being its
process's start time, so a restarted peer's connection never collides with its predecessor's lingering one. Routing
ids are not handed over: a second connection claiming an id that is connected is refused by the ROUTER, so nobody
can capture a live peer's link by reusing its id. With `keys` (`dlion.security`, CURVE) the ROUTER is a CURVE
server whose ZAP handler, run by this same thread, admits only the configured peers' public keys and names the
peer each key belongs to; every message is then attributed to that peer, whatever its routing id or header says:
a peer can speak only as itself. Without keys the routing id names the sender, unauthenticated.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from typing import NamedTuple

import zmq
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

from .base import UNKNOWN, LinkPolicy, Transport
from .shaping import Holdback
from .wire import WireLimits
from ..security import PeerKeys

log = logging.getLogger("dlion.transport")

_RECV_BATCH = 64       # inbound messages per loop turn, so queued sends are not starved
_BYE_GRACE_MS = 100    # at close: how long byes may wait for room behind a full queue, then linger to leave
_CLOSE_WAIT_S = 10     # at close: how long the caller waits for the thread to take the sockets down (see _shutdown)


_ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's authenticator (ZAP, RFC 27)
_ZAP_DOMAIN = b"dlion"


def routing_id(peer_id: int, incarnation: int) -> bytes:
    """The routing id a peer's DEALERs announce: its id and its process's incarnation."""
    return f"{peer_id}.{incarnation}".encode()


def _routing_peer(raw: bytes) -> int | None:
    """The peer id in a routing id `<id>.<incarnation>`, or None if it is not of that form."""
    try:
        peer, incarnation = raw.decode("ascii").split(".")
    except (UnicodeDecodeError, ValueError):
        return None
    canonical = peer.isdigit() and str(int(peer)) == peer and incarnation.isdigit()
    return int(peer) if canonical else None


class ZmqTransport(Transport):
    """TCP transport between the peers of `endpoints` (peer id -> (host, port)); binds its own endpoint."""

    def __init__(self, peer_id: int, endpoints: dict[int, tuple[str, int]], limits: WireLimits,
                 sndhwm: int = 16, poll_ms: int = 50, suspect_after: int = 2, link_policy: LinkPolicy | None = None,
                 keys: PeerKeys | None = None, heartbeat: tuple[float, float] | None = None, listen: str | None = None,
                 **bounds):
        """`keys`: CURVE keys (None: plain TCP, unauthenticated); `heartbeat`: (interval, timeout) in seconds of the
        liveness check on each link's own connection (None: only closed connections are noticed); `listen`: the host
        the ROUTER binds on its own port instead of its own endpoint's (0.0.0.0: every interface, where that endpoint
        is a name such as a swarm service's, which cannot be bound); `bounds`: the mailbox's and the norm guard's
        (`Transport`)."""
        if peer_id not in endpoints:
            raise ValueError(f"peer {peer_id} has no endpoint")
        super().__init__(peer_id, endpoints, limits, suspect_after, link_policy, **bounds)
        self.endpoints = dict(endpoints)
        self.keys = keys
        self.heartbeat = heartbeat
        self.listen = listen
        self.incarnation = time.time_ns() // 1000
        self.sndhwm = sndhwm
        self.poll_ms = poll_ms
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: Exception | None = None

    def _address(self, peer: int, host: str | None = None) -> str:
        configured, port = self.endpoints[peer]
        return f"tcp://{host or configured}:{port}"

    def start(self) -> None:
        """Start the communication thread; returns once the ROUTER is bound, raises if the sockets cannot open
        (port in use, bad endpoint)."""
        if self._thread is not None:
            raise RuntimeError(f"peer {self.peer_id}: transport already started")
        self._thread = threading.Thread(target=self._run, name=f"dlion-comm-{self.peer_id}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise RuntimeError(f"peer {self.peer_id}: cannot bind {self._address(self.peer_id, self.listen)} or "
                               f"connect to its peers: {self._start_error}") from self._start_error

    def _send_frames(self, dst: int, frames: list, nbytes: int) -> None:
        with self._pipe_lock:
            if not self._pipe_open:
                self._count(dst, send_failed=1)
                return
            self._queue.put((dst, frames, nbytes, time.monotonic()))  # under the lock: queue order is time order
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # pipe full: a wake-up is already pending

    def _shutdown(self, bye: list, nbytes: int) -> None:
        with self._pipe_lock:
            self._queue.put(_Stop(bye, nbytes))
            self._wake()
        if self._thread is not None:
            # libzmq can hang for good in ctx.term() when a CURVE handshake was waiting for its ZAP answer
            # (libzmq#2733); the sockets are closed by then, so the caller goes on and the daemon thread is left.
            self._thread.join(_BYE_GRACE_MS / 1000 + _CLOSE_WAIT_S)
            if self._thread.is_alive():
                log.warning("peer %s: the transport did not finish closing within %d s; leaving it", self.peer_id,
                            _CLOSE_WAIT_S)
                with self._pipe_lock:
                    self._pipe_open = False
                return
        with self._pipe_lock:
            self._pipe_open = False
            os.close(self._wake_r)
            os.close(self._wake_w)

    # ---- communication thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        ctx = zmq.Context()
        router, dealers, beats, monitors = ctx.socket(zmq.ROUTER), {}, [], {}
        zap = ctx.socket(zmq.REP) if self.keys else None
        try:
            self._open(router, dealers, beats, monitors, zap)
        except Exception as e:  # start() raises it in the caller's thread
            self._start_error = e
            _close(ctx, router, dealers, beats, monitors, zap)
            self._ready.set()
            return
        self._ready.set()
        try:
            self._farewell(dealers, self._loop(router, dealers, monitors, zap))
        finally:
            _close(ctx, router, dealers, beats, monitors, zap)

    def _open(self, router: zmq.Socket, dealers: dict[int, zmq.Socket], beats: list[zmq.Socket],
              monitors: dict[zmq.Socket, int], zap: zmq.Socket | None) -> None:
        router.setsockopt(zmq.LINGER, 0)
        # Twice the app limit: messages in between reach us and are dropped and counted; beyond, libzmq cuts.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        if self.keys:
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(_ZAP_ENDPOINT)  # before any connection can arrive
            router.curve_server = True
            router.curve_secretkey, router.curve_publickey = self.keys.secret, self.keys.public
            router.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN)
        router.bind(self._address(self.peer_id, self.listen))
        for p in sorted(self.peers):
            d = dealers[p] = self._dealer(router.context, p, routing_id(self.peer_id, self.incarnation), monitors)
            d.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer that is not connected: Again instead
            d.setsockopt(zmq.SNDHWM, self.sndhwm)
            d.connect(self._address(p))
            if self.heartbeat:
                # A host that vanished keeps its TCP connections open: ZMTP PINGs tell, on a connection of their own
                # that no data queues in on (it never carries a message), so a saturated link raises no false alarm.
                # When no PONG comes back within the timeout, libzmq drops the connection: a departure, as any other.
                beat = self._dealer(router.context, p, routing_id(self.peer_id, self.incarnation) + b".hb", monitors)
                beat.setsockopt(zmq.HEARTBEAT_IVL, int(self.heartbeat[0] * 1000))
                beat.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.heartbeat[1] * 1000))
                beat.connect(self._address(p))
                beats.append(beat)

    def _dealer(self, ctx: zmq.Context, peer: int, identity: bytes, monitors: dict[zmq.Socket, int]) -> zmq.Socket:
        """A DEALER towards `peer` (not yet connected), over CURVE when there are keys, its disconnections watched."""
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.IDENTITY, identity)
        if self.keys:
            d.curve_secretkey, d.curve_publickey = self.keys.secret, self.keys.public
            d.curve_serverkey = self.keys.peers[peer]
        d.setsockopt(zmq.LINGER, 0)
        monitors[d.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)] = peer
        return d

    def _loop(self, router: zmq.Socket, dealers: dict[int, zmq.Socket], monitors: dict[zmq.Socket, int],
              zap: zmq.Socket | None) -> _Stop:
        """Move traffic until close() asks to stop; returns its request. Held messages are then lost."""
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        for monitor in monitors:
            poller.register(monitor, zmq.POLLIN)
        held = Holdback()
        while True:
            timeout_ms = self.poll_ms
            if (release := held.next_release()) is not None:
                timeout_ms = min(timeout_ms, _poll_ms_until(release))
            events = dict(poller.poll(timeout_ms))
            if zap is not None and zap in events:
                self._authenticate(zap)
            if router in events:
                self._receive(router)
            for monitor in events.keys() & monitors.keys():
                self._connection_events(monitor, monitors[monitor])
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    for dst, _, _ in held.drain():
                        self._count(dst, send_failed=1)
                    return item
                dst, frames, nbytes, handed_over = item
                if (release := self.link_policy.release_at(dst, nbytes, handed_over)) is None:
                    self._count_send(dst, nbytes, _try_send(dealers[dst], frames))
                else:
                    held.push(release, (dst, frames, nbytes))
            for dst, frames, nbytes in held.pop_due(time.monotonic()):
                self._count_send(dst, nbytes, _try_send(dealers[dst], frames))

    def _receive(self, router: zmq.Socket) -> None:
        for _ in range(_RECV_BATCH):
            try:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._deliver([p.buffer for p in parts[1:]], self._sender(parts))
            except Exception:  # a bug in a handler must not kill the thread that carries all traffic
                log.exception("peer %s: failed to handle an inbound message", self.peer_id)

    def _sender(self, parts: list[zmq.Frame]) -> int | None:
        """The peer a message comes from: the one whose key authenticated the connection (CURVE), or, without
        keys, the one its routing id names. None (unknown) if the routing id claims another peer than the key."""
        claimed = _routing_peer(parts[0].bytes)
        if not self.keys:
            return claimed
        if len(parts) < 2:
            return None
        user = parts[1].get("User-Id")  # set by our ZAP handler: the key's peer id
        keyed = int(user) if user and user.isdigit() else None
        return keyed if claimed == keyed else None

    def _authenticate(self, zap: zmq.Socket) -> None:
        """Answer one ZAP request: admit a CURVE client whose public key is a configured peer's, as that peer."""
        try:
            request = zap.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        version, request_id, mechanism = request[0], request[1], request[5] if len(request) > 5 else b""
        peer = None
        if version == b"1.0" and mechanism == b"CURVE" and len(request) == 7:
            peer = self.keys.peer_of(zmq.utils.z85.encode(request[6]))
        if peer is None or peer == self.peer_id:
            self._count(UNKNOWN, refused=1)
            reply = [b"1.0", request_id, b"400", b"unknown key", b"", b""]
        else:
            reply = [b"1.0", request_id, b"200", b"OK", str(peer).encode(), b""]
        zap.send_multipart(reply)

    def _connection_events(self, monitor: zmq.Socket, peer: int) -> None:
        """A connection to `peer` closed under us: its process is gone (or restarting), and what still arrives from
        it is its last messages draining; or one came (back) up: a process listens there again."""
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.mailbox.reachable(peer)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._count(peer, disconnects=1)
                log.info("peer %s: lost the connection to peer %s (closed, or no heartbeat); no longer waiting for "
                         "it", self.peer_id, peer)
                self.mailbox.mark_departed(peer, unreachable=True)

    def _count_send(self, dst: int, nbytes: int, ok: bool) -> None:
        if ok:
            self._count(dst, msgs_sent=1, bytes_sent=nbytes)
        else:
            self._count(dst, send_failed=1)

    def _farewell(self, dealers: dict[int, zmq.Socket], stop: _Stop) -> None:
        """Send the byes; one behind a full queue waits for room, all together at most _BYE_GRACE_MS."""
        deadline = time.monotonic() + _BYE_GRACE_MS / 1000
        pending = dict(dealers)
        while True:
            for p, d in list(pending.items()):
                if _try_send(d, stop.bye):
                    self._count_send(p, stop.nbytes, True)
                    del pending[p]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            poller = zmq.Poller()
            for d in pending.values():
                poller.register(d, zmq.POLLOUT)
            poller.poll(remaining * 1000)
        for p in pending:
            self._count_send(p, stop.nbytes, False)


def _close(ctx: zmq.Context, router: zmq.Socket, dealers: dict[int, zmq.Socket], beats: list[zmq.Socket],
           monitors: dict[zmq.Socket, int], zap: zmq.Socket | None) -> None:
    for sock in [*monitors, *beats]:
        sock.close(linger=0)
    for d in dealers.values():
        d.close(linger=_BYE_GRACE_MS)  # lets the byes leave; bounded, and IMMEDIATE queues nothing for a dead peer
    router.close()  # before the authenticator: no handshake may start that no one would answer
    if zap is not None:
        zap.close(linger=0)
    ctx.term()


class _Stop(NamedTuple):
    """The queue item that ends the communication thread, with the bye it still has to send."""

    bye: list
    nbytes: int


def _poll_ms_until(release: float) -> int:
    """The poll timeout for a message due at `release`. zmq_poll counts whole milliseconds: rounded up, each held
    message left up to 1 ms late; rounded down, the loop would spin through the last one. So the last part of a
    millisecond is slept here, and the poll then only looks. `scripts/bench_latency.py`: a 12 ms emulated round trip
    over loopback takes 13.2-13.5 ms with this, 14.0-14.1 ms rounded up (0.9 ms is the round trip with no latency)."""
    wait_s = release - time.monotonic()
    if 0 < wait_s < 0.001:
        time.sleep(wait_s)
        return 0
    return max(0, math.floor(wait_s * 1000))


def _try_send(sock: zmq.Socket, frames: list) -> bool:
    """Queue a message without blocking; False if the link is down or congested (zmq.Again)."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True
