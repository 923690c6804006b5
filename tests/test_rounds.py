"""A round's own work (dlion/rounds.py): one step on the exchanged gradient, or H local steps whose change of
parameters is exchanged and applied from the round's start by the outer step. TF-free: a linear model stands in for
the trainer, with one non-trainable variable that each forward pass moves (as BatchNorm statistics do)."""
import numpy as np
import pytest

from dlion.rounds import OuterStep, RoundWork, update_weight


class LinearTrainer:
    """Least squares on fixed data, plain SGD; state = [weights..., one running statistic]."""

    def __init__(self, n=5, lr=0.1, seed=0):
        rng = np.random.default_rng(seed)
        self.num_params = n
        self.state = np.concatenate([rng.normal(size=n), [0.0]]).astype(np.float32)
        self.x, self.y = rng.normal(size=(32, n)).astype(np.float32), rng.normal(size=32).astype(np.float32)
        self.lr, self.applied = lr, []

    def gradients(self, batch):
        w = self.state[:self.num_params]
        err = self.x[:batch] @ w - self.y[:batch]
        self.state[-1] += 1.0  # a forward pass moves the statistic
        return float(np.mean(err ** 2)), (2 * self.x[:batch].T @ err / batch).astype(np.float32), 0.01

    def apply(self, grads):
        self.applied.append(grads.copy())
        self.state[:self.num_params] -= self.lr * grads

    def get_params(self):
        return self.state.copy()

    def set_params(self, flat):
        self.state = np.asarray(flat, np.float32).copy()


def test_one_local_step_exchanges_the_gradient_and_applies_the_combination_through_the_optimizer():
    trainer = LinearTrainer()
    work = RoundWork(trainer, trainer.gradients)
    _, grads, compute_s = work.compute(8)
    expected = trainer.gradients(8)[1]
    assert np.allclose(grads, expected) and compute_s == 0.01 and trainer.applied == []
    combined = grads * 0.5
    work.apply(combined)
    assert len(trainer.applied) == 1 and np.array_equal(trainer.applied[0], combined)


def test_local_steps_exchange_the_change_over_the_round_and_apply_the_combination_from_its_start():
    trainer = LinearTrainer()
    start = trainer.get_params()
    work = RoundWork(trainer, trainer.gradients, local_steps=3)
    loss, change, compute_s = work.compute(8)
    after = trainer.get_params()
    assert len(trainer.applied) == 3 and compute_s == pytest.approx(0.03)
    assert np.allclose(change, start[:5] - after[:5]) and loss > 0
    assert after[-1] == 3.0  # three forward passes
    work.apply(change)  # alone (nobody else's change arrived): the model stays where its own steps took it
    assert np.allclose(trainer.get_params(), after)
    other = np.full(5, 0.25, np.float32)
    _, change, _ = work.compute(8)
    round_start = after
    work.apply(other)
    state = trainer.get_params()
    assert np.allclose(state[:5], round_start[:5] - other)  # from the round's start, not from where it got to
    assert state[-1] == 6.0  # the non-trainable statistic stays this peer's own


def test_the_outer_step_is_sgd_with_nesterov_momentum():
    changes = [np.array([1.0, -2.0], np.float32), np.array([0.5, 0.5], np.float32), np.array([0.0, 1.0], np.float32)]
    step = OuterStep(learning_rate=0.7, momentum=0.9)
    velocity = np.zeros(2)
    for change in changes:
        velocity = 0.9 * velocity + change
        assert np.allclose(step(change), 0.7 * (change + 0.9 * velocity))
    plain = OuterStep()
    assert plain(changes[0]) is changes[0]  # rate 1, no momentum: the change as it is
    assert np.allclose(OuterStep(learning_rate=0.5)(changes[0]), 0.5 * changes[0])


def test_local_sgd_on_two_peers_with_plain_averaging_keeps_them_equal():
    """Two peers that average their changes every round (rate 1, no momentum) stay at the same parameters: the
    combination is the same on both and is applied from the same start."""
    a, b = LinearTrainer(seed=1), LinearTrainer(seed=1)
    a.x, a.y = a.x[:16], a.y[:16]
    b.x, b.y = b.x[16:], b.y[16:]  # each its own data
    work_a, work_b = RoundWork(a, a.gradients, 4), RoundWork(b, b.gradients, 4)
    first = a.get_params()
    for _ in range(5):
        (_, ca, _), (_, cb, _) = work_a.compute(16), work_b.compute(16)
        mean = (ca + cb) / 2
        work_a.apply(mean)
        work_b.apply(mean)
        assert np.allclose(a.get_params()[:5], b.get_params()[:5])
    assert not np.allclose(a.get_params()[:5], first[:5])


def test_a_small_share_takes_fewer_larger_local_steps_for_as_many_samples():
    trainer = LinearTrainer()
    work = RoundWork(trainer, trainer.gradients, local_steps=16, min_step_batch=8)
    assert work.steps(32) == [32] * 16 and work.steps(8) == [8] * 16
    assert work.steps(2) == [8] * 4 and work.steps(3) == [8, 8, 8, 8, 8, 8]
    assert work.steps(5) == [8] * 10
    assert RoundWork(trainer, trainer.gradients, local_steps=3, min_step_batch=8).steps(7) == [11, 10]
    assert RoundWork(trainer, trainer.gradients, local_steps=2, min_step_batch=8).steps(1) == [2]
    work.compute(2)
    assert len(trainer.applied) == 4


def _two_peers_on_their_own_halves(drift_correction: bool, rounds: int = 300):
    """Peers a and b, each with its own half of the data, averaging their changes every round of 8 local steps;
    returns their parameters, their RoundWorks and the least-squares solution of all the data."""
    a, b = LinearTrainer(seed=2, lr=0.05), LinearTrainer(seed=2, lr=0.05)
    x, y = a.x, a.y
    a.x, a.y, b.x, b.y = x[:16], y[:16] + 2.0, x[16:], y[16:] - 2.0  # unevenly spread: their optima lie apart
    works = [RoundWork(t, t.gradients, 8, drift_correction=drift_correction) for t in (a, b)]
    for _ in range(rounds):
        changes = [work.compute(16)[1] for work in works]
        mean = (changes[0] + changes[1]) / 2
        for work in works:
            work.apply(mean)
    best = np.linalg.lstsq(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), rcond=None)[0]
    return a.get_params()[:5], b.get_params()[:5], works, best


def test_drift_correction_takes_local_sgd_to_the_optimum_of_all_the_data():
    """Plain local SGD on unevenly spread data stops short of the optimum of all the data (each peer's local steps
    drift towards its own); with the correction the peers' paths follow the common direction and get there."""
    a, b, works, best = _two_peers_on_their_own_halves(drift_correction=True)
    assert np.allclose(a, b) and np.linalg.norm(a - best) < 1e-3
    np.testing.assert_allclose(works[0].correction, -works[1].correction, atol=1e-6)  # they sum to zero
    plain, _, _, _ = _two_peers_on_their_own_halves(drift_correction=False)
    assert np.linalg.norm(plain - best) > 100 * np.linalg.norm(a - best)


def test_drift_correction_moves_each_local_step_by_its_share_of_the_last_rounds_difference():
    trainer = LinearTrainer()
    work = RoundWork(trainer, trainer.gradients, local_steps=4, drift_correction=True)
    _, own, _ = work.compute(8)
    assert work.correction is None  # nothing to correct by in the first round
    work.apply(own + 1.0)  # the others' changes pulled the combination 1.0 away from this peer's own
    np.testing.assert_allclose(work.correction, 1.0)
    start = trainer.get_params()
    _, change, _ = work.compute(8)
    assert len(trainer.applied) == 8  # still one optimizer step per local step
    plain = LinearTrainer()
    plain.state = start.copy()
    for _ in range(4):
        plain.apply(plain.gradients(8)[1])
        plain.state[:5] -= 0.25  # a quarter of the correction after each step
    np.testing.assert_allclose(change, start[:5] - plain.state[:5], rtol=1e-5)


@pytest.mark.parametrize("weights, optimum", [("batch", 0.6), ("uniform", 0.0)])
def test_uniform_update_weights_find_the_mean_of_the_peers_objectives_whatever_their_batches(weights, optimum):
    """A fast peer (batch 8) whose data pull x to 1 and a slow one (batch 2) whose data pull it to -1: batch weights
    settle where the fast peer's data weigh four times the slow one's, uniform ones in the middle."""
    targets, batches = (1.0, -1.0), (8, 2)
    w = [update_weight(weights, b, global_batch=10, peers=2) for b in batches]
    assert w == ([8.0, 2.0] if weights == "batch" else [5.0, 5.0])
    x = 0.3
    for _ in range(200):  # the exchange's weighted mean of the peers' gradients of (x - target)^2
        x -= 0.1 * sum(wi * 2 * (x - t) for wi, t in zip(w, targets)) / sum(w)
    assert x == pytest.approx(optimum, abs=1e-6)
