"""CPU turns: which peers share a CPU, and one exclusive turn per shared CPU, kept through a burst only."""
import subprocess
import sys
import threading
import time

from dlion import config
from dlion.emulate.turns import CpuTurn, lock_path, pinned_cpus, shared_cpus

HETERO = config.parse({
    "peers": [{"id": i, "port": 47100 + i, "cores": c} for i, c in enumerate((1.0, 0.5, 0.3, 0.2))],
    "training": {"max_seconds": 60},
    "schedule": [{"at": "30s", "peer": 0, "cores": 0.2}, {"at": "30s", "peer": 3, "cores": 1.0}],
})


def test_peers_below_a_core_share_the_cpus_that_whole_core_peers_leave():
    assert shared_cpus(HETERO, cpus=2) == {1: 0, 2: 0, 3: 0}
    assert shared_cpus(HETERO, at=30, cpus=2) == {1: 0, 2: 0, 0: 0}  # peer 3 now has a CPU of its own


def test_with_spare_cpus_each_peer_goes_where_the_least_is_booked():
    assert shared_cpus(HETERO, cpus=4) == {1: 0, 2: 1, 3: 2}
    halves = config.parse({"peers": [{"id": i, "port": 47100 + i, "cores": 0.5} for i in range(5)],
                           "training": {"max_seconds": 60}})
    placed = shared_cpus(halves, cpus=2)  # overbooked: still spread as evenly as the shares allow
    assert sorted(list(placed.values()).count(cpu) for cpu in (0, 1)) == [2, 3]
    assert shared_cpus(halves, cpus=1) == {i: 0 for i in range(5)}


def test_whole_core_peers_are_pinned_to_cpus_of_their_own_and_the_others_to_the_cpu_they_share():
    assert pinned_cpus(HETERO, cpus=[0, 1]) == {0: {0}, 1: {1}, 2: {1}, 3: {1}}
    assert pinned_cpus(HETERO, at=30, cpus=[0, 1]) == {3: {0}, 0: {1}, 1: {1}, 2: {1}}
    assert pinned_cpus(HETERO, cpus=[7, 5, 6, 4]) == {0: {4}, 1: {5}, 2: {6}, 3: {7}}
    wide = config.parse({"peers": [{"id": 0, "port": 47100, "cores": 2.5}, {"id": 1, "port": 47101, "cores": 0.4}],
                         "training": {"max_seconds": 60}})
    assert pinned_cpus(wide, cpus=[0, 1, 2, 3]) == {0: {0, 1, 2}, 1: {3}}
    assert pinned_cpus(wide, cpus=[0, 1, 2]) == {}  # nothing left to share: the kernel places everyone


def _taken_within(turn: CpuTurn, seconds: float) -> bool:
    """Whether `turn.take()` returns within `seconds` (it goes on waiting in a daemon thread if not)."""
    got = threading.Event()
    threading.Thread(target=lambda: (turn.take(), got.set()), daemon=True).start()
    return got.wait(seconds)


def test_one_peer_at_a_time_and_giving_up_passes_the_turn(tmp_path):
    a, b = CpuTurn(lock_path(tmp_path, 0)), CpuTurn(lock_path(tmp_path, 0))
    other_cpu = CpuTurn(lock_path(tmp_path, 1))
    try:
        a.take()
        assert _taken_within(other_cpu, 1.0)  # another shared CPU: its own turns
        assert not _taken_within(b, 0.2)
        a.give_up()
        assert b.held or _taken_within(b, 1.0)
    finally:
        for turn in (a, b, other_cpu):
            turn.close()


def test_a_held_turn_lasts_through_back_to_back_steps_and_ends_when_none_follows(tmp_path):
    a, b = CpuTurn(lock_path(tmp_path, 0), hold_s=0.3), CpuTurn(lock_path(tmp_path, 0))
    try:
        a.take()
        a.hold()
        waiting = threading.Event()
        threading.Thread(target=lambda: (b.take(), waiting.set()), daemon=True).start()
        for _ in range(3):  # steps that follow each other within hold_s keep the turn
            time.sleep(0.1)
            a.take()
            assert a.held and not waiting.is_set()
            a.hold()
        assert waiting.wait(2.0)  # no step within hold_s: the turn passes on by itself
        assert not a.held
    finally:
        a.close()
        b.close()


def test_a_dead_peers_turn_is_free(tmp_path):
    path = lock_path(tmp_path, 0)
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, os, sys, time\n"
                               f"fd = os.open({str(path)!r}, os.O_CREAT | os.O_RDWR)\n"
                               f"fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    turn = CpuTurn(path)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not _taken_within(turn, 0.2)
        holder.kill()
        holder.wait()
        assert turn.held or _taken_within(turn, 2.0)
    finally:
        holder.kill()
        turn.close()
