"""dlion.trainer: flat gradients/params, optimizer apply, no retracing, evaluation, thread configuration (the training
options, optimizers by name, schedules and the loss from probabilities: tests/test_training_options.py)."""
import subprocess

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from conftest import PYTHON, python_env  # noqa: E402
from dlion import data  # noqa: E402
from dlion.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def ds():
    return data.synthetic(1000, 300, seed=0)


@pytest.fixture(scope="module")
def cnn():
    return Trainer("cnn", "adam", seed=0)


@pytest.fixture(scope="module")
def cnn_bn():
    return Trainer("cnn-bn", "adam", seed=0)


def test_sizes(cnn, cnn_bn):
    assert cnn.num_params == cnn.num_state == 225034
    assert cnn_bn.num_state - cnn_bn.num_params == 2 * (32 + 64)


def test_gradients_shape_dtype_and_no_weight_change(cnn, ds):
    before = cnn.get_params()
    loss, grads = cnn.gradients(ds.x_train[:16], ds.y_train[:16])
    assert isinstance(loss, float) and loss > 0
    assert grads.shape == (cnn.num_params,) and grads.dtype == np.float32
    assert np.isfinite(grads).all() and np.abs(grads).sum() > 0
    grads *= 2  # callers own the array
    np.testing.assert_array_equal(cnn.get_params(), before)


def test_apply_lowers_loss():
    rng = np.random.default_rng(0)
    tr = Trainer("mlp", "sgd", learning_rate=0.05, momentum=0.0)
    x, y = rng.random((32, 28, 28, 1), np.float32), rng.integers(0, 10, 32)
    first, grads = tr.gradients(x, y)
    before = tr.get_params()
    tr.apply(grads)
    # Plain SGD: exactly params - lr * grads.
    np.testing.assert_allclose(tr.get_params(), before - 0.05 * grads, atol=1e-6)
    for _ in range(10):
        tr.apply(tr.gradients(x, y)[1])
    assert tr.gradients(x, y)[0] < first * 0.8


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "adamw", "lion"])
@pytest.mark.parametrize("xla_update", [False, True])
def test_gradients_apply_matches_a_fused_step(optimizer, xla_update, ds):
    """The flat split/concat order is right: the pipeline does what either fused step does."""
    a, b = Trainer("mlp", optimizer, seed=4), Trainer("mlp", optimizer, seed=4)
    fused = b.fused_step(xla_update)
    for i in range(3):
        x, y = ds.x_train[i * 20:(i + 1) * 20], ds.y_train[i * 20:(i + 1) * 20]
        loss_a, grads = a.gradients(x, y)
        a.apply(grads)
        assert loss_a == pytest.approx(fused(x, y), rel=1e-5)
    np.testing.assert_allclose(a.get_params(), b.get_params(), atol=1e-5)


def test_get_set_roundtrip_includes_batchnorm_stats(cnn_bn, ds):
    tr = cnn_bn
    moving = tr.model.non_trainable_variables
    before = [v.numpy().copy() for v in moving]
    tr.gradients(ds.x_train[:32], ds.y_train[:32])  # a training-mode pass moves the statistics
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, moving))

    new = np.random.default_rng(1).random(tr.num_state, dtype=np.float32) + 0.5
    tr.set_params(new)
    np.testing.assert_array_equal(tr.get_params(), new)
    # Trainable variables first, then the non-trainable ones, in model order.
    tail = np.concatenate([v.numpy().ravel() for v in moving])
    np.testing.assert_array_equal(tail, new[tr.num_params:])
    assert tr.get_params() is not tr.get_params()  # fresh arrays


def test_set_params_makes_trainers_agree(cnn_bn, ds):
    other = Trainer("cnn-bn", "adam", seed=9)
    other.set_params(cnn_bn.get_params())
    x, y = ds.x_test[:50], ds.y_test[:50]
    assert other.evaluate(x, y) == pytest.approx(cnn_bn.evaluate(x, y), rel=1e-5)


def test_same_seed_same_start():
    a, b, c = Trainer("cnn", seed=3), Trainer("cnn", seed=3), Trainer("cnn", seed=4)
    np.testing.assert_array_equal(a.get_params(), b.get_params())
    assert not np.array_equal(a.get_params(), c.get_params())


def test_no_retrace_across_batch_sizes(cnn, ds):
    fused = cnn.fused_step()
    traced = cnn.tracing_count()
    for n in (7, 32, 64, 100):
        loss, grads = cnn.gradients(ds.x_train[:n], ds.y_train[:n])
        cnn.apply(grads)
        fused(ds.x_train[:n], ds.y_train[:n])
        cnn.evaluate(ds.x_test[:n], ds.y_test[:n], batch=max(1, n // 3))
        cnn.set_params(cnn.get_params())
    assert cnn.tracing_count() == traced


def test_bad_inputs(cnn, ds):
    with pytest.raises(ValueError, match="flat_grads"):
        cnn.apply(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="flat_params"):
        cnn.set_params(np.zeros(cnn.num_state + 1, np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        cnn.gradients(ds.x_train[:4, :, :, 0], ds.y_train[:4])
    with pytest.raises(ValueError, match="labels"):
        cnn.gradients(ds.x_train[:4], ds.y_train[:3])


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'adagradx': use one of .*adagrad, adam, adamax, adamw"):
        Trainer("mlp", "adagradx")


def test_training_beats_chance(ds):
    tr = Trainer("cnn", "adam", learning_rate=2e-3, seed=0)
    loss0, acc0 = tr.evaluate(ds.x_test, ds.y_test, batch=128)
    assert 0.0 <= acc0 <= 1.0 and loss0 > 0
    sampler = data.BatchSampler(np.arange(len(ds.y_train)), seed=0)
    for _ in range(25):
        idx = sampler.next(32)
        tr.apply(tr.gradients(ds.x_train[idx], ds.y_train[idx])[1])
    loss, acc = tr.evaluate(ds.x_test, ds.y_test, batch=128)
    assert acc > 0.5 and loss < loss0


def test_configure_threads_fresh_process():
    code = """
import tensorflow as tf
from dlion.trainer import configure_threads
configure_threads(1)
configure_threads(1)
tf.constant(1.0) + 1.0  # initialises the runtime
configure_threads(1)  # same values: accepted
assert tf.config.threading.get_intra_op_parallelism_threads() == 1
assert tf.config.threading.get_inter_op_parallelism_threads() == 1
try:
    configure_threads(2)
except RuntimeError:
    pass
else:
    raise AssertionError("changing threads after initialisation must raise")
"""
    subprocess.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=120)


def test_replica_step_under_a_strategy_steps_on_the_mean_of_the_replicas_gradients():
    """Two replicas (MirroredStrategy on two logical CPUs, as MWMS's workers): one plain SGD step with the halves of a
    batch moves the parameters by the mean of the halves' gradients, as scripts/anchor_mwms.py relies on."""
    code = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from dlion import data
from dlion.trainer import Trainer
ds = data.synthetic(64, 10, seed=0)
x, y = ds.x_train[:32], ds.y_train[:32]
plain = Trainer("mlp", "sgd", learning_rate=0.1, momentum=0.0, seed=3)
before = plain.get_params()
halves = [(x[:16], y[:16]), (x[16:], y[16:])]
mean = sum(plain.gradients(*half)[1] for half in halves) / 2
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    tr = Trainer("mlp", "sgd", learning_rate=0.1, momentum=0.0, seed=4, trace_at_init=False)
tr.set_params(before)  # under the strategy too
gradients, apply = tr.replica_step(strategy.num_replicas_in_sync)
xs, ys = (strategy.experimental_distribute_values_from_function(
    lambda ctx, k=k: tf.constant(halves[ctx.replica_id_in_sync_group][k])) for k in (0, 1))

def replica(x, y):
    apply(gradients(x, y)[1])

tf.function(lambda xs, ys: strategy.run(replica, args=(xs, ys)))(xs, ys)
np.testing.assert_allclose(tr.get_params(), before - 0.1 * mean, atol=1e-6)
"""
    subprocess.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=120)


def test_label_prior_trains_on_logits_shifted_by_the_log_prior(ds):
    prior = np.array([40, 30, 10, 5, 5, 4, 3, 1, 1, 1], np.float64)
    adjusted, plain = Trainer("mlp", "adam", seed=3, label_prior=prior), Trainer("mlp", "adam", seed=3)
    x, y = ds.x_train[:64], ds.y_train[:64]
    logits = plain.model(x, training=True).numpy().astype(np.float64) + np.log(prior / prior.sum())
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(64), y])
    assert adjusted.gradients(x, y)[0] == pytest.approx(expected, rel=1e-5)
    assert plain.gradients(x, y)[0] != pytest.approx(expected, rel=1e-3)
    # evaluation scores the raw logits: the same model evaluates the same, whatever the prior it trains with
    assert adjusted.evaluate(x, y) == pytest.approx(plain.evaluate(x, y))
    with pytest.raises(ValueError, match="label_prior"):
        Trainer("mlp", "adam", label_prior=np.zeros(10))
    adjusted.set_label_prior(None)  # and back to the plain loss
    assert adjusted.gradients(x, y)[0] == pytest.approx(plain.gradients(x, y)[0], rel=1e-6)


def test_uint8_images_are_scaled_as_float_images_in_0_1(cnn, ds):
    images = (ds.x_train[:16] * 255).round().astype(np.uint8)
    as_float = images.astype(np.float32) / np.float32(255)
    loss_u8, grads_u8 = cnn.gradients(images, ds.y_train[:16])
    loss_f, grads_f = cnn.gradients(as_float, ds.y_train[:16])
    assert loss_u8 == loss_f
    np.testing.assert_array_equal(grads_u8, grads_f)
    assert cnn.evaluate(images, ds.y_train[:16]) == cnn.evaluate(as_float, ds.y_train[:16])


@pytest.mark.parametrize("as_vector", [False, True], ids=["arrays (checkpoint)", "flat vector (rejoin answer)"])
def test_optimizer_state_carries_over_to_a_fresh_trainer(cnn, ds, as_vector):
    x, y = ds.x_train[:32], ds.y_train[:32]
    for _ in range(3):
        cnn.apply(cnn.gradients(x, y)[1])
    other = Trainer("cnn", "adam", seed=0)
    other.set_params(cnn.get_params())
    if as_vector:
        other.set_optimizer_vector(cnn.optimizer_vector())
    else:
        other.set_optimizer_state(cnn.optimizer_state())
    grads = cnn.gradients(x, y)[1]
    cnn.apply(grads)
    other.apply(grads)  # the same step from the same moments: the same parameters
    np.testing.assert_allclose(other.get_params(), cnn.get_params(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="does not fit"):
        Trainer("mlp", "adam", seed=0).set_optimizer_state(cnn.optimizer_state())
    with pytest.raises(ValueError, match="does not fit"):
        Trainer("mlp", "adam", seed=0).set_optimizer_vector(cnn.optimizer_vector())
    with pytest.raises(ValueError, match="does not fit"):
        other.set_optimizer_vector(cnn.optimizer_vector()[:-1])


def test_the_optimizers_scalars_are_its_step_count_and_learning_rate(cnn, ds):
    """What a rejoin answer sends exactly while it rounds the moments."""
    cnn.apply(cnn.gradients(ds.x_train[:32], ds.y_train[:32])[1])
    vector = cnn.optimizer_vector()
    at = cnn.optimizer_scalars()
    steps, learning_rate = cnn.optimizer.iterations.numpy(), cnn.optimizer.learning_rate.numpy()
    assert vector[at].tolist() == [float(steps), pytest.approx(learning_rate)] and steps >= 1
    assert at.size == 2 and vector.size > 2 * cnn.get_params().size  # the rest: Adam's two moments per parameter


def test_features_and_the_classifier_give_the_models_logits_and_a_set_layer_is_the_models(cnn_bn, ds):
    x = ds.x_train[:64]
    features = cnn_bn.features(x, batch=25)
    kernel, bias = cnn_bn.classifier()
    assert features.shape == (64, 128) and kernel.shape == (128, 10) and bias.shape == (10,)
    np.testing.assert_allclose(features @ kernel + bias, cnn_bn.model(x, training=False).numpy(), atol=1e-4)
    before = cnn_bn.get_params()
    cnn_bn.set_classifier(kernel + 1.0, bias - 1.0)
    changed = cnn_bn.get_params() != before
    assert changed.sum() == kernel.size + bias.size  # the last layer, nothing else
    cnn_bn.set_classifier(kernel, bias)
    np.testing.assert_array_equal(cnn_bn.get_params(), before)


def test_a_model_whose_last_layer_cannot_be_refitted_is_refused_with_the_reason():
    import keras
    from dlion.trainer import classifier_parts

    def sequential(*layers):
        return keras.Sequential([keras.Input((4,)), *layers])

    last, body = classifier_parts(sequential(keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)))
    assert last.units == 3 and body.output_shape == (None, 8)
    for model, says in ((sequential(keras.layers.Dense(3), keras.layers.Softmax()), "ends in Softmax"),
                        (sequential(keras.layers.Dense(3, use_bias=False)), "Dense layer with a bias"),
                        (sequential(keras.layers.Dense(3, activation="sigmoid")), "no activation")):
        with pytest.raises(ValueError, match=says):
            classifier_parts(model)
