"""Checkpoints (dlion/checkpoint.py): written whole, the last two kept, read back exactly, and the common iteration
every peer can resume at."""
import numpy as np
import pytest

from dlion import checkpoint


def save(out, peer, iteration):
    return checkpoint.save(out, peer, iteration, np.full(5, iteration, np.float32),
                           [np.array(iteration), np.ones((2, 3))], train_s=1.5 * iteration, eval_s=0.25,
                           samples=32 * iteration)


def test_a_checkpoint_reads_back_exactly_and_only_the_last_two_are_kept(tmp_path):
    for it in (50, 100, 150):
        save(tmp_path, 0, it)
    assert checkpoint.iterations(tmp_path, 0) == [100, 150]
    state = checkpoint.load(tmp_path, 0, 150)
    assert state["iteration"] == 150 and state["train_s"] == 225.0 and state["eval_s"] == 0.25
    assert state["samples"] == 4800 and state["params"].tolist() == [150.0] * 5
    assert [a.shape for a in state["optimizer"]] == [(), (2, 3)] and int(state["optimizer"][0]) == 150
    assert not list(checkpoint.directory(tmp_path).glob("*.partial*"))
    with pytest.raises(ValueError, match="has no checkpoint of iteration 50"):
        checkpoint.load(tmp_path, 0, 50)


def test_peers_resume_at_the_latest_iteration_they_all_have(tmp_path):
    for peer, its in {0: (100, 150), 1: (50, 100), 2: (100, 150)}.items():
        for it in its:
            save(tmp_path, peer, it)
    assert checkpoint.common_iteration(tmp_path, [0, 1, 2]) == 100
    assert checkpoint.common_iteration(tmp_path, [0, 2]) == 150
    assert checkpoint.common_iteration(tmp_path, [0, 3]) is None
