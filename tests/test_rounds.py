"""A round's own work (dlion/rounds.py): one step on the exchanged gradient, or H local steps whose change of
parameters is exchanged and applied from the round's start by the outer step. TF-free: a linear model stands in for
the trainer, with one non-trainable variable that each forward pass moves (as BatchNorm statistics do)."""
import numpy as np
import pytest

from dlion.rounds import OuterStep, RoundWork


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
