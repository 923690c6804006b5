"""Shared test helpers: free loopback ports, the repo root, and the real-data guard."""
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def free_ports(n):
    """n distinct TCP ports that are free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ports():
    return free_ports


requires_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def python_env():
    """Environment for child processes: this checkout importable, TF quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


def in_threads(fn, keys):
    """Run fn(key) for every key, each in its own thread, and return {key: result} (for peers that must act at once)."""
    import threading
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, fn(k))) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def inproc():
    """make(peer_ids) -> {id: started in-process transport} on one hub; all are closed after the test."""
    from dlion.transport import InprocHub, InprocTransport, WireLimits
    made = []

    def make(peer_ids, max_message_bytes=1 << 22):
        hub = InprocHub()
        limits = WireLimits(frozenset(peer_ids), max_message_bytes)
        transports = {p: InprocTransport(p, hub, limits) for p in peer_ids}
        for t in transports.values():
            t.start()
        made.extend(transports.values())
        return transports

    yield make
    for t in made:
        t.close()


def stage_context(transports, peer, topology=None, global_batch=96, cores=None, link_bandwidths=None, model=None,
                  inbound_bandwidths=None):
    """The `StageContext` of `peer` among `transports` (default graph: the full mesh, all peers of one core)."""
    from dlion.stages import StageContext
    from dlion.topology import Topology, TopologySpec
    ids = tuple(sorted(transports))
    return StageContext(peer, ids, transports[peer], topology or Topology(TopologySpec("full"), ids), global_batch,
                        cores or dict.fromkeys(ids, 1.0), link_bandwidths or {}, model, inbound_bandwidths or {})


def curve_dealer(ctx, identity, public, secret, server_public, endpoint, linger_ms=0):
    """A raw DEALER that connects to `endpoint` (host, port) over CURVE with the given key pair and routing id: a
    peer's key in the wrong hands, or a stranger's."""
    import zmq
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    sock.connect("tcp://%s:%d" % endpoint)
    return sock
