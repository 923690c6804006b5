"""dlion.wiring's warm-up: TensorFlow's first-call work done before the CPU cap binds, the model left as it was, and
the rate a peer expects from it."""
import numpy as np

from dlion import config, wiring
from dlion.rounds import step_batches
from dlion.stages import Requirements


def test_the_warm_up_leaves_the_first_round_nothing_to_trace_and_the_state_as_it_was():
    cfg = config.parse({"peers": [{"id": 0, "port": 47000}, {"id": 1, "port": 47001}],
                        "training": {"max_iterations": 10, "dataset": "synthetic"}})
    local = wiring._make_data(cfg, 0, None, Requirements())
    trainer = wiring._make_trainer(cfg, 0, local, Requirements(), threads=0)
    params, state = trainer.get_params(), trainer.optimizer_state()
    x_eval, y_eval = local.evaluation()
    batch = step_batches(13, 32, 32)[0]
    wiring._warm_up(trainer, local, batch, (x_eval, y_eval))
    np.testing.assert_array_equal(trainer.get_params(), params)
    assert all(np.array_equal(a, b) for a, b in zip(trainer.optimizer_state(), state))
    traced = trainer.tracing_count()
    x, y = local.dataset.x_train[local.train_idx[:batch]], local.dataset.y_train[local.train_idx[:batch]]
    _, grads = trainer.gradients(x, y)
    trainer.apply(grads)
    trainer.evaluate(x_eval, y_eval)
    trainer.set_optimizer_vector(trainer.optimizer_vector())  # a replica's slice, a rejoin answer
    assert trainer.tracing_count() == traced


def test_the_warm_up_times_a_step_on_the_cpu_and_a_built_peer_announces_the_rate_it_expects(tmp_path):
    cfg = config.parse({"peers": [{"id": 0, "port": 47000, "cores": 0.5}, {"id": 1, "port": 47001}],
                        "training": {"max_iterations": 10, "dataset": "synthetic", "global_batch": 64},
                        "strategies": {"batching": {"kind": "weighted"}}, "security": {"mode": "none"}})
    local = wiring._make_data(cfg, 0, None, Requirements())
    trainer = wiring._make_trainer(cfg, 0, local, Requirements(), threads=0)
    small, large = (wiring._warm_up(trainer, local, batch) for batch in (4, 512))
    assert 0 < small < large  # CPU seconds of a step: a larger batch costs more
    peer = wiring.build(cfg, 0, tmp_path, trainer=trainer)
    try:
        assert 0 < peer.transport.expected_rate < float("inf")  # samples/s at half a core, announced in the hellos
    finally:
        peer.transport.close()
