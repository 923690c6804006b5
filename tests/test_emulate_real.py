"""Real emulation (root): namespaces, HTB/netem shaping and CPU cgroups are created, shape for real, follow the
schedule once, and leave nothing behind."""
import random
import string
import subprocess
import sys
import time

import psutil
import pytest

from dlion import config
from dlion.emulate import EmulationError, real

OK, WHY = real.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"real emulation is not available here: {WHY}")
NETEM = OK and real.kernel_support()[1]
needs_netem = pytest.mark.skipif(not NETEM, reason="this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")
PY = sys.executable


THREE = {
    "peers": [{"id": 0, "port": 47000, "cores": 0.5, "uplink": "20mbit", "latency": "10ms"},
              {"id": 1, "port": 47001, "cores": 0.25, "downlink": "100mbit", "latency": "10ms"},
              {"id": 2, "port": 47002, "cores": 1.0, "uplink": "50mbit", "downlink": "30mbit", "latency": "5ms"}],
    "training": {"max_seconds": 60},
    "emulation": {"method": "real"},
    "schedule": [{"at": "10s", "src": 0, "dst": 2, "bandwidth": "5mbit", "latency": "50ms"},
                 {"at": "20s", "peer": 1, "cores": 0.75}],
}


@pytest.fixture
def emulate():
    """emulate(cfg) -> a RealEmulation under a fresh short tag; every one is taken down after the test."""
    made = []

    def make(cfg):
        tag = "dt" + "".join(random.choices(string.ascii_lowercase + string.digits, k=2))
        made.append(real.RealEmulation(cfg, tag=tag))
        return made[-1]

    yield make
    for emulation in made:
        emulation.down()


def run_in(emulation, peer_id, argv, **kw):
    return subprocess.run(emulation.wrap(peer_id, argv), capture_output=True, text=True, check=True, timeout=20,
                          **kw).stdout


def ours(tag):
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in namespaces.splitlines() if line.startswith(f"{tag}-")]


def quota_us(emulation, peer_id):
    return emulation.status()["peers"][peer_id]["cgroup"]["quota_us"]


def test_up_creates_namespaces_shaping_and_cgroups_and_down_removes_them(emulate):
    cfg = config.parse(THREE)
    emulation = emulate(cfg)
    assert emulation.up() == {0: "10.77.0.1", 1: "10.77.0.2", 2: "10.77.0.3"}
    assert sorted(ours(emulation.tag)) == sorted(f"{emulation.tag}-{n}" for n in ("hub", "p0", "p1", "p2"))
    classes = run_in(emulation, 0, ["tc", "class", "show", "dev", "eth0"])
    assert "class htb 1:3 root leaf 103: prio 0 rate 20Mbit ceil 20Mbit" in classes  # 0 -> 1
    assert "class htb 1:4 root leaf 104: prio 0 rate 20Mbit ceil 20Mbit" in classes  # 0 -> 2
    assert "rate 30Mbit ceil 30Mbit" in run_in(emulation, 1, ["tc", "class", "show", "dev", "eth0"])  # 1 -> 2
    qdiscs = run_in(emulation, 0, ["tc", "qdisc", "show", "dev", "eth0"])
    if NETEM:
        assert "netem 103: parent 1:3" in qdiscs and "delay 20ms" in qdiscs
    else:
        assert "pfifo 103: parent 1:3" in qdiscs
    assert "inet 10.77.0.2/24" in run_in(emulation, 1, ["ip", "addr", "show", "dev", "eth0"])
    base = real.CGROUP_V1_CPU if (real.CGROUP_V1_CPU / "cpu.cfs_quota_us").exists() else real.CGROUP_V2
    period = 1000000  # one second: the pacer's bursts of back-to-back steps fit in it
    for pid, quota in ((0, 1000000), (1, 500000), (2, 2000000)):  # 2 x cores: a ceiling, the pacer holds the cores
        directory = base / emulation.tag / f"p{pid}"
        if base == real.CGROUP_V1_CPU:
            assert (directory / "cpu.cfs_quota_us").read_text().strip() == str(quota)
            assert (directory / "cpu.cfs_period_us").read_text().strip() == str(period)
        else:
            assert (directory / "cpu.max").read_text().split() == [str(quota), str(period)]
    status = emulation.status()
    assert status["peers"][0]["classes"]["1:3"]["rate_bps"] == 20e6 and status["peers"][0]["classes"]["1:3"]["dst"] == 1

    emulation.up()  # again: starts from scratch
    assert len(ours(emulation.tag)) == 4
    emulation.down()
    assert ours(emulation.tag) == [] and not (base / emulation.tag).exists()
    emulation.down()  # nothing left: still fine


def test_down_after_a_killed_launcher_ends_leftover_processes_and_removes_everything(emulate):
    cfg = config.parse(THREE)
    emulation = emulate(cfg)
    emulation.up()
    orphan = subprocess.Popen(emulation.wrap(2, ["sleep", "60"]))
    emulation.attach(2, orphan.pid)
    try:
        real.RealEmulation(cfg, tag=emulation.tag).down()  # a new launcher knows only the tag
        assert orphan.wait(timeout=5) == -9
        assert ours(emulation.tag) == [] and emulation.status()["peers"][2]["cgroup"] is None
    finally:
        orphan.kill()
        orphan.wait()


ECHO_SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while (b := c.recv(65536)):
    c.sendall(b)
"""

ECHO_CLIENT = """
import socket, statistics, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(12):
    t = time.perf_counter()
    c.sendall(b"x")
    c.recv(1)
    rtts.append(time.perf_counter() - t)
print(statistics.median(rtts[2:]))
"""

SINK_SERVER = """
import socket, sys, time
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
warmup, total, t0 = 500_000, 0, None
while (b := c.recv(1 << 16)):
    total += len(b)
    if t0 is None and total >= warmup:
        t0, at0 = time.perf_counter(), total
t1 = time.perf_counter()
print((total - at0) * 8 / (t1 - t0))
"""

SOURCE_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"x" * int(sys.argv[3]))
c.close()
"""


def client_server(emulation, server_peer, server, client_peer, client, *args):
    """Run `server` in one peer's namespace and `client` in another's; both outputs, stripped."""
    address, port = emulation.address(server_peer), "45000"
    proc = subprocess.Popen(emulation.wrap(server_peer, [PY, "-c", server, address, port]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        client_out = run_in(emulation, client_peer, [PY, "-c", client, address, port, *map(str, args)])
        server_out, _ = proc.communicate(timeout=10)
        return server_out.strip(), client_out.strip()
    finally:
        proc.kill()
        proc.wait()


TWO = {"peers": [{"id": 0, "port": 47000, "uplink": "20mbit", "latency": "10ms"},
                 {"id": 1, "port": 47001, "latency": "10ms"}],
       "training": {"max_seconds": 60}}


@needs_netem
def test_round_trip_time_follows_the_configured_latencies(emulate):
    emulation = emulate(config.parse(TWO))
    emulation.up()
    _, rtt = client_server(emulation, 1, ECHO_SERVER, 0, ECHO_CLIENT)
    print(f"measured RTT {float(rtt) * 1e3:.1f} ms (configured 40 ms)")
    assert abs(float(rtt) - 0.040) <= 0.15 * 0.040


def test_throughput_follows_the_configured_bandwidth(emulate):
    emulation = emulate(config.parse(TWO))
    emulation.up()
    rate, _ = client_server(emulation, 1, SINK_SERVER, 0, SOURCE_CLIENT, 2_500_000)
    print(f"measured goodput {float(rate) / 1e6:.2f} Mbit/s (configured 20 Mbit/s)")
    assert abs(float(rate) - 20e6) <= 0.15 * 20e6
    sent = emulation.status()["peers"][0]["classes"]["1:3"]["sent_bytes"]
    assert sent >= 2_500_000  # it went through the shaped class


def test_apply_changes_links_and_cores_when_due_and_only_once(emulate):
    cfg = config.parse(THREE)
    emulation = emulate(cfg)
    emulation.up()
    assert emulation.apply(5.0) == []
    assert emulation.apply(10.0) == [cfg.schedule[0]]
    assert "class htb 1:4 root leaf 104: prio 0 rate 5Mbit ceil 5Mbit" in run_in(
        emulation, 0, ["tc", "class", "show", "dev", "eth0"])
    if NETEM:
        assert "delay 50ms" in run_in(emulation, 0, ["tc", "qdisc", "show", "dev", "eth0"])
    assert quota_us(emulation, 1) == 500000
    assert emulation.apply(10.0) == []
    assert emulation.apply(25.0) == [cfg.schedule[1]]
    assert quota_us(emulation, 1) == 1500000
    weights = {p: emulation.status()["peers"][p]["cgroup"]["weight"] for p in cfg.peer_ids}
    # contention is shared in proportion to capacity, scheduled changes included
    assert weights[1] / weights[0] == pytest.approx(0.75 / 0.5, rel=0.01)
    assert weights[2] / weights[0] == pytest.approx(1.0 / 0.5, rel=0.01)
    assert emulation.apply(1000.0) == []


def test_apply_late_applies_everything_due_in_time_order(emulate):
    cfg = config.parse(THREE)
    emulation = emulate(cfg)
    emulation.up()
    assert emulation.apply(1000.0) == list(cfg.schedule)
    assert emulation.status()["peers"][0]["classes"]["1:4"]["rate_bps"] == 5e6 and quota_us(emulation, 1) == 1500000


def test_cpu_quota_caps_an_attached_busy_process_at_its_ceiling(emulate):
    """The quota is a ceiling of QUOTA_HEADROOM x cores (the peer paces its steps to its cores itself)."""
    emulation = emulate(config.parse(THREE))
    emulation.up()
    busy = subprocess.Popen([PY, "-c", "while True: pass"])
    try:
        emulation.attach(1, busy.pid)  # 0.25 cores: a ceiling of 0.5 per 1 s period
        assert busy.pid in emulation.status()["peers"][1]["cgroup"]["procs"]
        proc = psutil.Process(busy.pid)
        time.sleep(0.2)
        c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(4.0)  # whole periods, give or take part of one
        c1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
        share = (c1 - c0) / (t1 - t0)
        ceiling = 0.25 * real.QUOTA_HEADROOM
        print(f"measured CPU share {share:.3f} cores (ceiling {ceiling})")
        assert abs(share - ceiling) <= 0.2 * ceiling
        emulation.down()  # moves the process out before removing the cgroup
        assert busy.poll() is None and emulation.status()["peers"][1]["cgroup"] is None
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.skipif(NETEM, reason="this kernel has netem")
def test_without_netem_latency_is_left_to_the_peers_transports(emulate):
    emulation = emulate(config.parse(THREE))
    emulation.up()
    assert emulation.kernel_latency is False  # the launcher then sets emulation.transport_latency for the peers
    assert ours(emulation.tag)


def test_names_are_checked_before_anything_is_created():
    with pytest.raises(EmulationError, match="too long"):
        real.RealEmulation(config.parse(THREE), tag="muchtoolongtag")
    with pytest.raises(EmulationError, match="letters and digits"):
        real.RealEmulation(config.parse(THREE), tag="a-b")


def test_failed_commands_name_the_command():
    with pytest.raises(EmulationError, match="ip -n dt-missing link show"):
        real._ip("dt-missing", "link", "show")


def test_each_config_has_its_own_emulation_and_setting_one_up_leaves_the_others_alone():
    """A launcher's up() first removes its own leftovers; it must not take down another run's peers."""
    first = config.parse(THREE)
    second = config.parse({**THREE, "peers": [{**p, "port": p["port"] + 10} for p in THREE["peers"]]})
    a, b = real.RealEmulation(first), real.RealEmulation(second)
    assert a.tag == real.default_tag(first) != b.tag and a.tag == real.RealEmulation(config.parse(THREE)).tag
    try:
        a.up()
        b.up()
        b.up()  # again: removes and recreates only its own
        assert len(ours(a.tag)) == 4 and len(ours(b.tag)) == 4
        b.down()
        assert len(ours(a.tag)) == 4 and ours(b.tag) == []
    finally:
        a.down()
        b.down()


def test_a_peer_says_it_is_ready_and_waits_for_its_cgroup(tmp_path, monkeypatch):
    ready = tmp_path / ".peer-0.ready"
    monkeypatch.delenv(real.READY_ENV, raising=False)
    real.enter_cgroup()  # not under the real method: nothing to do
    assert not ready.exists()
    current = next(line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")
                   if "cpu" in line.split(":", 2)[1].split(",") or line.startswith("0::"))
    monkeypatch.setenv(real.READY_ENV, str(ready))
    monkeypatch.setenv(real.CGROUP_ENV, current)
    real.enter_cgroup()  # already there: returns at once, having said it is ready
    assert ready.exists()
    monkeypatch.setenv(real.CGROUP_ENV, "/nowhere")
    with pytest.raises(EmulationError, match="not moved"):
        real.enter_cgroup(timeout_s=0.1)


def test_a_peer_says_its_training_is_over_without_waiting(tmp_path, monkeypatch):
    ready = tmp_path / ".peer-2.ready"
    monkeypatch.delenv(real.READY_ENV, raising=False)
    real.leave_cap()  # not under the real method: nothing to do
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(real.READY_ENV, str(ready))
    monkeypatch.setenv(real.CGROUP_ENV, "/dlion-x/p2")
    real.leave_cap()
    assert (tmp_path / ".peer-2.trained").exists()
