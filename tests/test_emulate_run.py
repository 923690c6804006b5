"""`dlion run` under real emulation (namespaces, tc, cgroups): trains, applies the schedule, leaves nothing behind."""
import json
import subprocess

import pytest
import yaml

from conftest import PYTHON, ROOT, free_ports, python_env, requires_fashion
from dlion import config
from dlion.metrics import read_events

real = pytest.importorskip("dlion.emulate.real")
ok, why = real.available()
pytestmark = [pytest.mark.integration, requires_fashion,
              pytest.mark.skipif(not ok, reason=f"real emulation unavailable: {why}")]


def test_run_under_real_emulation_applies_schedule_and_cleans_up(tmp_path):
    ports = free_ports(2)
    cfg = {
        # a fixed amount of training (max_seconds is only a guard), so the accuracy check does not depend on speed
        "peers": [{"id": 0, "port": ports[0], "cores": 1.0, "uplink": "500mbit", "latency": "2ms"},
                  {"id": 1, "port": ports[1], "cores": 0.5, "uplink": "200mbit", "latency": "5ms"}],
        "training": {"model": "mlp", "global_batch": 64, "max_iterations": 200, "max_seconds": 90,
                     "learning_rate": 0.002},
        "emulation": {"method": "real"},
        "schedule": [{"at": "1s", "peer": 1, "cores": 0.25},
                     {"at": "1s", "src": 0, "dst": 1, "bandwidth": "100mbit", "latency": "4ms"}],
        "evaluation": {"every_iterations": 50},
        "output": {"dir": str(tmp_path / "out")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([PYTHON, "-m", "dlion", "run", str(path)], cwd=ROOT, env=python_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    logs = "\n".join((tmp_path / "out" / f"peer-{i}.log").read_text()[-1500:] for i in (0, 1))
    assert summary["emulation"] == "real" and summary["peers_finished"] == 2, (summary, result.stdout[-1500:], logs)
    assert summary["final_accuracy"] > 0.7, summary
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert [p["address"] for p in resolved["peers"]] == ["10.77.0.1", "10.77.0.2"]
    starts = [e for e in read_events(tmp_path / "out" / "peer-1.jsonl") if e["ev"] == "start"]
    assert starts and starts[0]["emulation"] == "real"
    # no netem: peer 0's transport applied the link's scheduled latency itself (the kernel took the rest)
    if not real.kernel_support()[1]:
        changes = [e for e in read_events(tmp_path / "out" / "peer-0.jsonl") if e["ev"] == "change"]
        assert [(c["src"], c["dst"], c["latency"]) for c in changes] == [(0, 1, 0.004)], changes
    # the emulation is gone: no namespace or cgroup of ours
    assert "dl-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not real.RealEmulation(config.load(path)).status().get("namespaces")


def test_sigterm_to_the_launcher_stops_the_peers_and_takes_the_emulation_down(tmp_path):
    import signal
    import time

    ports = free_ports(2)
    cfg = {
        "peers": [{"id": 0, "port": ports[0], "cores": 1.0}, {"id": 1, "port": ports[1], "cores": 0.5}],
        "training": {"model": "mlp", "global_batch": 64, "max_seconds": 120},
        "emulation": {"method": "real"},
        "output": {"dir": str(tmp_path / "out")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launcher = subprocess.Popen([PYTHON, "-m", "dlion", "run", str(path)], cwd=ROOT, env=python_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    emulation = real.RealEmulation(config.load(path))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(e["ev"] == "iter" for e in
                                                  read_events(tmp_path / "out" / "peer-1.jsonl")):
        time.sleep(0.5)
    assert emulation.status().get("namespaces"), "the run never got going"
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert not emulation.status().get("namespaces")
