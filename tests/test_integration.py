"""Real peer processes on loopback: training on Fashion-MNIST, a peer killed mid-run, garbage sent to a live peer."""
import contextlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
import zmq

from conftest import PYTHON, ROOT, curve_dealer, free_ports, python_env, requires_fashion
from dlion import config, security
from dlion.metrics import read_events
from dlion.transport import Sparse, WireLimits, ZmqTransport, encode
from dlion.transport.zmq import routing_id

pytestmark = [pytest.mark.integration, requires_fashion]

DEADLINE_S = 2.0


def write_config(tmp_path, n_peers, security_block=None, **training):
    ports = free_ports(n_peers)
    cfg = {
        "name": "it",
        "seed": 3,
        "peers": [{"id": i, "port": ports[i], "cores": 0.66} for i in range(n_peers)],
        "training": {"model": "mlp", "global_batch": 96, "optimizer": "adam", "learning_rate": 0.002,
                     "max_seconds": 60, **training},
        "strategies": {"exchange": {"kind": "dense", "deadline_s": DEADLINE_S}},
        "evaluation": {"every_iterations": 40},
        "output": {"dir": str(tmp_path / "out")},
        "transport": {"startup_timeout_s": 40},
        **({"security": security_block} if security_block else {}),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def dlion_cmd(*args):
    return [PYTHON, "-m", "dlion", *args]


@contextlib.contextmanager
def peers_0_and_1(path):
    """`dlion peer` processes for peers 0 and 1 of the config at `path` (the test plays peer 2); waits for both to
    end on leaving, killing what is still alive after 240 s or on an error."""
    procs = [subprocess.Popen(dlion_cmd("peer", "--config", str(path), "--id", str(i)), cwd=ROOT, env=python_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (0, 1)]
    try:
        yield procs
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def wait_for_event(path, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(path):
            if predicate(event):
                return event
        time.sleep(0.2)
    raise AssertionError(f"no matching event in {path} within {timeout} s")


def test_three_peers_train_to_useful_accuracy(tmp_path):
    path, cfg = write_config(tmp_path, 3, max_iterations=1500, target_accuracy=0.84)
    out = tmp_path / "out"
    result = subprocess.run(dlion_cmd("run", str(path)), cwd=ROOT, env=python_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peers_finished"] == 3
    assert summary["final_accuracy"] >= 0.82, summary
    assert summary["time_to_target_s"] is not None and summary["time_to_target_s"] > 0
    assert summary["bytes_sent_total"] > 0
    for pid, peer in summary["peers"].items():
        assert peer["iterations"] > 0 and peer["samples_per_s"] > 0 and peer["messages_dropped"] == 0
        assert peer["bytes_sent"] > 0 and peer["bytes_received"] > 0
    # BSP keeps the peers in lockstep: they stop together at the target, after the same iterations
    assert len({p["iterations"] for p in summary["peers"].values()}) == 1
    assert {p["stop_reason"] for p in summary["peers"].values()} == {"target"}
    assert "p0 done acc" in result.stdout  # live progress was shown to the end
    assert not _live_peer_processes(out)


def _live_peer_processes(out):
    """PIDs of this run's peers that are still alive (the launcher must leave none behind)."""
    alive = []
    for log in out.glob("peer-*.jsonl"):
        start = next((e for e in read_events(log) if e["ev"] == "start"), None)
        if start:
            try:
                os.kill(start["pid"], 0)
                alive.append(start["pid"])
            except ProcessLookupError:
                pass
    return alive


def run_and_kill_peer_2(path, out) -> str:
    """`dlion run` the config, SIGKILL peer 2 once it is past iteration 40, and return the launcher's output."""
    run = subprocess.Popen(dlion_cmd("run", str(path)), cwd=ROOT, env=python_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        victim = wait_for_event(out / "peer-2.jsonl", lambda e: e["ev"] == "start", 90)
        wait_for_event(out / "peer-2.jsonl", lambda e: e["ev"] == "iter" and e["it"] >= 40, 90)
        os.kill(victim["pid"], signal.SIGKILL)
        return run.communicate(timeout=180)[0]
    finally:
        if run.poll() is None:
            run.kill()


def test_sigkilled_peer_costs_the_others_at_most_a_deadline_per_round(tmp_path):
    path, cfg = write_config(tmp_path, 3, max_iterations=160)
    out = tmp_path / "out"
    output = run_and_kill_peer_2(path, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["peers"]["2"]["finished"] is False and summary["peers"]["2"]["stop_reason"] == "died"
    for pid in ("0", "1"):
        peer = summary["peers"][pid]
        assert peer["finished"] and peer["iterations"] == 160 and peer["stop_reason"] == "max_iterations", output
        waits = [e["max_wait_s"] for e in read_events(out / f"peer-{pid}.jsonl") if e["ev"] == "iter"]
        assert max(waits) <= DEADLINE_S + 0.5, waits
    assert summary["final_accuracy"] > 0.7
    assert not _live_peer_processes(out)


def test_live_peer_drops_and_counts_bad_messages_and_keeps_training(tmp_path):
    """Peers 0 and 1 run as processes with CURVE keys; the test plays peer 2, with its key: it joins, leaves, then
    sends garbage as peer 2, and a stranger with a key no peer knows tries to connect. Every bad message is dropped
    and counted by kind and reason, the stranger is refused, and both peers train to the end."""
    keys_dir = tmp_path / "keys"
    path, cfg = write_config(tmp_path, 3, max_iterations=400, security_block={"keys_dir": str(keys_dir)})
    security.generate(keys_dir, range(3))
    out = tmp_path / "out"
    endpoints = {p["id"]: ("127.0.0.1", p["port"]) for p in cfg["peers"]}
    keys = security.load(config.load(path), 2)
    me = ZmqTransport(2, endpoints, WireLimits(frozenset(endpoints), 1 << 20), keys=keys)
    with peers_0_and_1(path) as procs:
        me.start()
        assert me.wait_for_peers(90) == {0, 1}
        me.close()  # says bye: the peers stop waiting for peer 2
        wait_for_event(out / "peer-0.jsonl", lambda e: e["ev"] == "iter" and e["it"] >= 20, 60)
        ctx = zmq.Context.instance()
        stranger_public, stranger_secret = zmq.curve_keypair()
        bad = [curve_dealer(ctx, routing_id(2, 1), keys.public, keys.secret, keys.peers[0], endpoints[0], 5000),
               curve_dealer(ctx, routing_id(1, 1), stranger_public, stranger_secret, keys.peers[0], endpoints[0],
                            5000)]  # linger: deliver before close, then give up
        good_header = encode("grad", 2, 5, {"g": np.zeros(4, "float32")})
        messages = [
            [b"\xc1not msgpack"],                                    # malformed header
            [good_header[0], b"\x00" * 7],                           # frame size does not match the header
            _sparse_index_out_of_range(),                            # index out of range
            [good_header[0], b"\x00" * 16, b"extra frame"],          # frame count does not match the header
            encode("grad", 1, 5, {"g": np.zeros(4, "float32")}, {"w": 1.0}),  # peer 2 speaking as peer 1
        ]
        for frames in messages:
            bad[0].send_multipart(frames)
        bad[1].send_multipart(encode("grad", 1, 5, {"g": np.zeros(4, "float32")}, {"w": 1.0}))  # never connects
        for sock in bad:
            sock.close()
    assert [p.returncode for p in procs] == [0, 0]
    final = next(e for e in read_events(out / "peer-0.jsonl") if e["ev"] == "final")
    assert final["messages_dropped"] >= len(messages), final
    assert final["rejected"]["?"]["malformed"] == 4 and final["rejected"]["grad"]["sender mismatch"] == 1, final
    assert final["links"]["unknown"]["refused"] >= 1 and final["links"]["unknown"]["msgs_received"] == 0
    assert final["it"] == 400 and final["acc"] > 0.7


def _sparse_index_out_of_range():
    """A well-formed sparse message whose index frame is swapped for one pointing past the vector's end."""
    header, _, values = encode("grad", 2, 5, {"g": Sparse(np.array([1, 2], np.uint32), np.ones(2, np.float32), 4)})
    return [header, np.array([1, 400], np.uint32).tobytes(), values]


def test_a_flood_of_hostile_messages_at_a_live_peer_is_dropped_counted_and_harmless(tmp_path):
    """Peers 0 and 1 train without authentication (security.mode none: the harshest case, a stranger can claim any
    id); scripts/attack.py sends 2,500 malformed and hostile messages at peer 0 as peer 2, which never started.
    Neither peer crashes, every malformed one is dropped and counted, and training ends where a clean run does."""
    path, cfg = write_config(tmp_path, 3, max_iterations=300, security_block={"mode": "none"})
    out = tmp_path / "out"
    with peers_0_and_1(path) as procs:
        start = wait_for_event(out / "peer-0.jsonl", lambda e: e["ev"] == "iter" and e["it"] >= 10, 120)
        num_params = next(e for e in read_events(out / "peer-0.jsonl") if e["ev"] == "start")["num_params"]
        attack = subprocess.run([PYTHON, "scripts/attack.py", "--config", str(path), "--target", "0", "--as-peer", "2",
                                 "--count", "2500", "--num-params", str(num_params), "--max-seconds", "60"],
                                cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)
        assert attack.returncode == 0, attack.stderr[-2000:]
    sent = json.loads(attack.stdout.strip().splitlines()[-1])["sent"]
    assert sum(sent.values()) >= 2000 and start
    assert [p.returncode for p in procs] == [0, 0]
    finals = [next(e for e in read_events(out / f"peer-{i}.jsonl") if e["ev"] == "final") for i in (0, 1)]
    assert all(f["it"] == 300 and f["acc"] > 0.7 for f in finals), finals
    malformed = sum(sent[c] for c in ("garbage", "bad_header", "wrong_size", "non_finite", "far_future"))
    counted = sum(n for reasons in finals[0]["rejected"].values() for n in reasons.values())
    assert counted >= 0.9 * malformed, (finals[0]["rejected"], sent)


def test_a_stopped_run_resumes_from_its_checkpoint_and_reaches_the_target(tmp_path):
    """SIGTERM halfway: every peer stops cleanly, with checkpoints every 50 iterations; `dlion run --resume` continues
    all peers from their latest common checkpoint, the iterations and the training time going on from there."""
    path, cfg = write_config(tmp_path, 3, max_iterations=1500, target_accuracy=0.84)
    out = tmp_path / "out"
    first = subprocess.Popen(dlion_cmd("run", str(path), "--set", "output.checkpoint_every=50"), cwd=ROOT,
                             env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_event(out / "peer-0.jsonl", lambda e: e["ev"] == "iter" and e["it"] >= 130, 120)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert all(e["stop_reason"] == "signal" for i in range(3) for e in read_events(out / f"peer-{i}.jsonl")
               if e["ev"] == "final")
    refused = subprocess.run(dlion_cmd("run", str(path)), cwd=ROOT, env=python_env(), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr, "an earlier run is never wiped unasked"
    resumed = subprocess.run(dlion_cmd("run", "--resume", str(out)), cwd=ROOT, env=python_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_to_target_s"] is not None and summary["final_accuracy"] > 0.8, summary
    for i in range(3):
        events = read_events(out / f"peer-{i}.jsonl")
        starts = [e for e in events if e["ev"] == "start"]
        resumed_from = starts[-1]["resumed_from"]
        assert len(starts) == 2 and resumed_from >= 100 and resumed_from % 50 == 0
        later = [e for e in events[events.index(starts[-1]):] if e["ev"] == "iter"]
        assert later and min(e["it"] for e in later) > resumed_from
        assert summary["peers"][str(i)]["stop_reason"] == "target"


def run_and_hit(path, out, hit):
    """`dlion run` of the config at `path`; once peer 2 is at iteration 150, `hit(its pid)`; then waits for the run
    to end. Returns what `hit` returned."""
    run = subprocess.Popen(dlion_cmd("run", str(path)), cwd=ROOT, env=python_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        victim = wait_for_event(out / "peer-2.jsonl", lambda e: e["ev"] == "start", 90)
        wait_for_event(out / "peer-2.jsonl", lambda e: e["ev"] == "iter" and e["it"] >= 150, 90)
        hit_result = hit(victim["pid"])
        run.wait(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    return hit_result


def test_a_killed_peer_is_restarted_by_the_launcher_and_rejoins_at_the_current_round(tmp_path):
    """restart: on-failure; SIGKILL peer 2 mid-run: `dlion run` starts it again 3 s later, and it re-enters at the
    others' round with the parameters of a peer that kept training, so its next evaluation is close to theirs, and
    nobody waits for it longer than the deadline a round."""
    path, cfg = write_config(tmp_path, 3, max_iterations=5000)  # long enough to restart within: ~40 s
    cfg["restart"] = {"policy": "on-failure", "backoff_s": 3}
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    run_and_hit(path, out, lambda pid: os.kill(pid, signal.SIGKILL))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == {"2": 1} and summary["exit_codes"]["2"] == 0, summary
    events = read_events(out / "peer-2.jsonl")
    rejoin = next(e for e in events if e["ev"] == "rejoin")
    assert rejoin["at"] >= 150 and rejoin["asked"] in (0, 1) and rejoin["taken"] and rejoin["wait_s"] < 5.0, rejoin
    after = events[events.index(rejoin):]
    first_iter = next(e for e in after if e["ev"] == "iter")
    assert first_iter["it"] == rejoin["at"] + 1 and first_iter["t"] - rejoin["t"] < DEADLINE_S  # no deadline paid
    # it continues from a leading peer's parameters and optimizer state: its first evaluation after taking them is
    # near the others' (a fresh model scores far below), its final one with theirs
    assert rejoin["optimizer"], rejoin
    first_eval = next(e for e in after if e["ev"] == "eval")
    others = [e for i in (0, 1) for e in read_events(out / f"peer-{i}.jsonl")
              if e["ev"] == "eval" and e["it"] == first_eval["it"]]
    assert others and all(abs(first_eval["acc"] - e["acc"]) <= 0.08 for e in others), (first_eval, others)
    final = next(e for e in reversed(events) if e["ev"] == "final")
    finals = [next(e for e in reversed(read_events(out / f"peer-{i}.jsonl")) if e["ev"] == "final") for i in (0, 1)]
    assert all(abs(final["acc"] - f["acc"]) <= 0.03 for f in finals), (final, finals)
    # on the others' clock (the rejoin answer carries it): it stops when and as they do, not a budget later
    assert final["stop_reason"] in {f["stop_reason"] for f in finals}, (final, finals)
    assert all(abs(final["train_s"] - f["train_s"]) <= 5.0 for f in finals), (final, finals)
    for i in (0, 1):
        waits = [e["max_wait_s"] for e in read_events(out / f"peer-{i}.jsonl") if e["ev"] == "iter"]
        assert max(waits) <= DEADLINE_S + 0.5, waits


def test_a_frozen_peer_is_suspected_within_the_heartbeat_timeout_and_rejoins_when_woken(tmp_path):
    """SIGSTOP peer 2 (a host that vanished: its connections stay open, it answers nothing) for 8 s: the others stop
    waiting for it within the heartbeat timeout and train on; after SIGCONT it knocks, finds them again, and
    re-enters at their round with a leading peer's parameters."""
    path, cfg = write_config(tmp_path, 3, max_iterations=5000)
    out = tmp_path / "out"

    def freeze(pid):
        os.kill(pid, signal.SIGSTOP)
        at = time.time()
        time.sleep(8)
        os.kill(pid, signal.SIGCONT)
        return at

    frozen = run_and_hit(path, out, freeze)
    timeout = 5.0  # transport.heartbeat_timeout_s's default
    for i in (0, 1):
        iters = [e for e in read_events(out / f"peer-{i}.jsonl") if e["ev"] == "iter" and e["t"] > frozen]
        # training on: within the timeout (+ one deadline, + an iteration event's spacing) iterations flow again
        going_on = [e for e in iters if e["t"] < frozen + 8 and e["max_wait_s"] < DEADLINE_S]
        assert going_on and going_on[0]["t"] - frozen <= timeout + DEADLINE_S + 2.0, iters[:5]
        final = next(e for e in read_events(out / f"peer-{i}.jsonl") if e["ev"] == "final")
        assert final["links"]["2"]["disconnects"] >= 1, final["links"]  # the heartbeat told, no connection closed
    events = read_events(out / "peer-2.jsonl")
    rejoin = next(e for e in events if e["ev"] == "rejoin")
    assert rejoin["t"] > frozen + 8 and rejoin["at"] > rejoin["was_at"] + 80, rejoin
    assert rejoin["taken"] and rejoin["wait_s"] < 5.0, rejoin
    final = next(e for e in reversed(events) if e["ev"] == "final")
    finals = [next(e for e in reversed(read_events(out / f"peer-{i}.jsonl")) if e["ev"] == "final") for i in (0, 1)]
    assert all(abs(final["acc"] - f["acc"]) <= 0.03 for f in finals), (final, finals)
