"""The fork server: `dlion` commands forked from one process that imported them, re-parented to us, with their own
console, environment and exit status."""
import os
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_ports, python_env, requires_fashion
from dlion.emulate.real import CGROUP_ENV, READY_ENV
from dlion.forkserver import ForkServer, ForkServerError

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    """One server for the module: what a peer imports, TensorFlow included, is imported once."""
    server = ForkServer(tmp_path_factory.mktemp("forkserver") / "forkserver.log", env=python_env())
    yield server
    server.close()


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def test_a_forked_command_writes_its_console_and_returns_its_exit_status(forks, tmp_path):
    console = tmp_path / "validate.log"
    ok = forks.start(["validate", "--no-model", QUICKSTART], console, {})
    assert ok.wait(timeout=30) == 0
    assert "valid (3 peers)" in console.read_text()
    refused = forks.start(["validate", QUICKSTART, "--set", "peers.1.port=abc"], console, {})
    assert refused.wait(timeout=30) == 2
    assert "dlion: config error: peers[1].port" in console.read_text()


@requires_fashion
def test_a_forked_peer_is_our_child_with_its_environment_and_dies_by_our_signal(forks, tmp_path):
    ports = free_ports(2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "peers": [{"id": i, "port": ports[i]} for i in range(2)], "security": {"mode": "none"},
        "training": {"model": "mlp", "max_seconds": 30}, "output": {"dir": str(tmp_path / "out")}}))
    ready = tmp_path / ".peer-0.ready"
    # Told to say it is ready and to wait for a CPU cgroup no one moves it into: it stays alive until killed.
    peer = forks.start(["peer", "--config", str(config), "--id", "0"], tmp_path / "peer-0.log",
                       {READY_ENV: str(ready), CGROUP_ENV: "/dlion-no-such-group/p0"})
    assert _parent_of(peer.pid) == os.getpid()
    deadline = time.monotonic() + 60
    while not ready.exists():  # the peer built its model, with the server's TensorFlow, and read its environment
        assert peer.poll() is None, (tmp_path / "peer-0.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert peer.poll() is None
    peer.kill()
    assert peer.wait(timeout=10) == -9
    assert peer.poll() == -9


def test_a_server_that_cannot_import_is_reported_with_its_log(tmp_path):
    server = ForkServer(tmp_path / "forkserver.log", preload=("dlion.no_such_module",), env=python_env())
    with pytest.raises(ForkServerError, match="forkserver.log"):
        server.start(["validate", QUICKSTART], tmp_path / "console.log", {})
    server.close()
    assert "No module named 'dlion.no_such_module'" in (tmp_path / "forkserver.log").read_text()
