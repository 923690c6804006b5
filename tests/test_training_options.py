"""Training options: Keras optimizers by name with their parameters, the learning-rate schedule, the loss from logits
or from probabilities; each checked at config load (a ConfigError naming the key) and used by the trainer."""
import copy
import inspect
import math
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, python_env
from dlion import config
from dlion.optimizers import COMMON, EXCLUDED, OPTIMIZERS, PARAMETERS, LRSchedule, training_options
from dlion.schema import ConfigError

BASE = {"peers": [{"id": 0, "port": 47000}, {"id": 1, "port": 47001}],
        "training": {"max_iterations": 10, "dataset": "synthetic"}}


def parse(overrides=(), **training):
    raw = copy.deepcopy(BASE)
    raw["training"].update(training)
    return config.parse(raw, overrides)


def error(overrides=(), **training) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(overrides, **training)
    return str(exc.value)


# ---- config: checked at load, without TensorFlow ---------------------------------------------------------------------

def test_options_parse_and_round_trip():
    cfg = parse(optimizer="AdamW", optimizer_params={"weight_decay": 0.01, "beta_1": 0.8, "amsgrad": True},
                lr_schedule={"kind": "cosine", "warmup_steps": 100, "decay_steps": 1000, "final_fraction": 0.1},
                loss_from_logits=False)
    tr = cfg.training
    assert tr.optimizer == "adamw" and tr.optimizer_params == {"weight_decay": 0.01, "beta_1": 0.8, "amsgrad": True}
    assert tr.lr_schedule == LRSchedule("cosine", 100, 1000, 0.1) and tr.loss_from_logits is False
    assert config.parse(config.to_dict(cfg)).training == tr  # the resolved config.yaml reloads to the same
    defaults = parse().training
    assert (defaults.optimizer, defaults.optimizer_params, defaults.lr_schedule.kind, defaults.loss_from_logits) == (
        "adam", {}, "constant", True)
    by_set = parse(["training.optimizer=rmsprop", "training.optimizer_params.momentum=0.5",
                    "training.lr_schedule.kind=step", "training.lr_schedule.every=100"]).training
    assert by_set.optimizer_params == {"momentum": 0.5} and by_set.lr_schedule.every == 100


@pytest.mark.parametrize("training, overrides, expected", [
    ({}, ["training.optimizer=adamx"],
     "training.optimizer: expected a Keras optimizer name, one of: adadelta, adagrad, adam, adamax, adamw, ftrl, "
     "lamb, lion, muon, nadam, rmsprop, schedulefreeadamw, sgd, got 'adamx'"),
    ({}, ["training.optimizer=3"], "training.optimizer: expected a Keras optimizer name, one of: adadelta"),
    ({}, ["training.optimizer=adafactor"],
     "training.optimizer: expected a Keras optimizer name other than adafactor: Keras 3's Adafactor turns"),
    ({"optimizer": "adamw", "optimizer_params": {"beta1": 0.9}}, [],
     "training.optimizer_params.beta1: unknown keyword argument of optimizer adamw; expected one of: beta_1, beta_2, "
     "epsilon, amsgrad, weight_decay, clipnorm"),
    ({"optimizer": "adamw", "optimizer_params": {"beta_1": "high"}}, [],
     "training.optimizer_params.beta_1: expected a number in [0, 1), got 'high'"),
    ({"optimizer": "adam"}, ["training.optimizer_params.beta_2=1.5"],
     "training.optimizer_params.beta_2: expected a number in [0, 1), got 1.5"),
    ({"optimizer": "sgd", "optimizer_params": {"nesterov": 1}}, [],
     "training.optimizer_params.nesterov: expected true or false, got 1"),
    ({"optimizer": "sgd", "optimizer_params": {"momentum": 0.5}}, [],
     "training.optimizer_params.momentum: for sgd, set training.momentum instead"),
    ({"optimizer": "adam", "optimizer_params": {"momentum": 0.5}}, [],
     "training.optimizer_params.momentum: unknown keyword argument of optimizer adam"),
    ({"optimizer_params": {"learning_rate": 0.1}}, [],
     "training.optimizer_params.learning_rate: set training.learning_rate (and training.lr_schedule) instead"),
    ({"optimizer_params": {"clipnorm": 1.0, "clipvalue": 0.5}}, [],
     "training.optimizer_params.clipvalue: expected at most one of clipnorm, clipvalue, global_clipnorm; clipnorm "
     "is already set"),
    ({"optimizer_params": {"gradient_accumulation_steps": 1}}, [],
     "training.optimizer_params.gradient_accumulation_steps: expected an integer >= 2 or null, got 1"),
    ({"optimizer_params": [0.9]}, [],
     "training.optimizer_params: expected a mapping of the optimizer's keyword arguments, such as {beta_1: 0.9, "
     "weight_decay: 0.01}"),
    ({"lr_schedule": {"kind": "linear"}}, [], "training.lr_schedule.kind: expected one of: constant"),
    ({"lr_schedule": {"kind": "cosine"}}, [],
     "training.lr_schedule.decay_steps: required for kind cosine; expected a positive integer"),
    ({"lr_schedule": {"kind": "step", "factor": 0.5}}, [], "training.lr_schedule.every: required for kind step"),
    ({"lr_schedule": {"decay_steps": 100}}, [],
     "training.lr_schedule.decay_steps: applies to kind cosine only; this schedule's kind is constant"),
    ({"lr_schedule": {"kind": "cosine", "decay_steps": 10, "final_fraction": 2}}, [],
     "training.lr_schedule.final_fraction: expected a fraction in [0, 1]"),
    ({"lr_schedule": {"kind": "step", "every": 10, "factor": 0}}, [],
     "training.lr_schedule.factor: expected a number in (0, 1]"),
    ({"lr_schedule": {"warmup_steps": -1}}, [], "training.lr_schedule.warmup_steps: expected a non-negative integer"),
    ({"lr_schedule": {"kind": "cosine", "decay_steps": 10, "steps": 5}}, [],
     "training.lr_schedule.steps: unknown key; expected one of: kind, warmup_steps, decay_steps"),
    ({}, ["training.loss_from_logits=maybe"], "training.loss_from_logits: expected true: the model outputs logits"),
])
def test_errors_name_the_key_path(training, overrides, expected):
    assert expected in error(overrides, **training)


def test_config_checks_need_no_tensorflow():
    code = """
import sys
from dlion import config
from dlion.schema import ConfigError
raw = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1, "optimizer": "adamw",
       "optimizer_params": {"weight_decay": 0.01}, "lr_schedule": {"kind": "cosine", "decay_steps": 10}}}
config.parse(raw)
raw["training"]["optimizer_params"] = {"beta1": 0.9}
try:
    config.parse(raw)
except ConfigError:
    pass
else:
    raise AssertionError("beta1 passed")
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "config loading imported TensorFlow"
"""
    subprocess.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=60)


# ---- the Keras side --------------------------------------------------------------------------------------------------

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from dlion import data  # noqa: E402
from dlion.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def ds():
    return data.synthetic(1000, 300, seed=0)


def test_the_tables_follow_the_installed_keras():
    """Every optimizer class of keras.optimizers is offered or left out with a reason; each offered one takes exactly
    the keyword arguments listed, and its own defaults pass the config's checks."""
    classes = {name.lower(): cls for name, cls in vars(keras.optimizers).items()
               if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)
               and cls is not keras.optimizers.Optimizer}
    assert set(classes) == set(OPTIMIZERS) | set(EXCLUDED)
    for name, own in OPTIMIZERS.items():
        signature = inspect.signature(classes[name].__init__).parameters
        assert set(signature) - {"self", "kwargs", "learning_rate", "name"} == set(own) | set(COMMON), name
        for key in set(own) | set(COMMON):
            test, expect = PARAMETERS[key]
            assert test(signature[key].default), f"{name}.{key}: Keras's default fails '{expect}'"
    assert set(PARAMETERS) == set(COMMON).union(*OPTIMIZERS.values())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains(name, ds):
    tr = Trainer("mlp", name, learning_rate=1e-3, seed=0)
    assert type(tr.optimizer).__name__.lower() == name
    x, y = ds.x_train[:64], ds.y_train[:64]
    first = tr.gradients(x, y)[0]
    for _ in range(10):
        tr.apply(tr.gradients(x, y)[1])
    assert np.isfinite(tr.get_params()).all()
    assert tr.gradients(x, y)[0] < first
    assert int(tr.optimizer.iterations) == 10


def test_adamw_with_params_is_the_optimizer_that_steps():
    params = {"weight_decay": 0.05, "beta_1": 0.8, "beta_2": 0.99, "amsgrad": True}
    tr = Trainer("mlp", "adamw", learning_rate=0.01, optimizer_params=params)
    opt = tr.optimizer
    assert isinstance(opt, keras.optimizers.AdamW)
    assert (opt.weight_decay, opt.beta_1, opt.beta_2, opt.amsgrad) == (0.05, 0.8, 0.99, True)
    # a zero gradient moves Adam nowhere: what the step does is the decoupled weight decay, w <- w (1 - lr wd)
    before = tr.get_params()
    tr.apply(np.zeros(tr.num_params, np.float32))
    np.testing.assert_allclose(tr.get_params(), before * (1 - 0.01 * 0.05), rtol=1e-6, atol=1e-9)


def test_sgd_keeps_training_momentum_and_rmsprop_takes_its_own():
    assert float(Trainer("mlp", "sgd", momentum=0.7).optimizer.momentum) == pytest.approx(0.7)
    rms = Trainer("mlp", "rmsprop", optimizer_params={"momentum": 0.5, "centered": True}).optimizer
    assert (rms.momentum, rms.centered) == (0.5, True)


def test_trainer_refuses_what_the_config_refuses():
    with pytest.raises(ValueError, match="unknown optimizer 'adamx': use one of .*adamw"):
        Trainer("mlp", "adamx")
    with pytest.raises(ValueError, match="optimizer 'adafactor': .*NaN"):
        Trainer("mlp", "adafactor")
    with pytest.raises(ConfigError, match="optimizer_params.beta1: unknown keyword argument of optimizer adam"):
        Trainer("mlp", "adam", optimizer_params={"beta1": 0.9})


def learning_rate_at(tr, step) -> float:
    tr.optimizer.iterations.assign(step)
    return float(tr.optimizer.learning_rate)


def test_cosine_with_warmup_rates_and_the_steps_that_use_them(ds):
    schedule = LRSchedule("cosine", warmup_steps=10, decay_steps=100, final_fraction=0.1)
    tr = Trainer("mlp", "sgd", learning_rate=0.1, momentum=0.0, lr_schedule=schedule)
    assert isinstance(tr.optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    expected = {0: 0.0, 5: 0.05, 10: 0.1, 60: 0.01 + 0.09 * 0.5, 110: 0.01, 1000: 0.01}
    for step, rate in expected.items():
        assert learning_rate_at(tr, step) == pytest.approx(rate, abs=1e-7), step
        assert schedule.rate(0.1, step) == pytest.approx(rate, abs=1e-12), step
    # the pipeline's (XLA-compiled) step uses the rate of the optimizer's own iteration count
    x, y = ds.x_train[:32], ds.y_train[:32]
    grads = tr.gradients(x, y)[1]
    for step in (0, 5, 10, 110):
        tr.optimizer.iterations.assign(step)
        before = tr.get_params()
        tr.apply(grads)
        np.testing.assert_allclose(tr.get_params(), before - expected[step] * grads, atol=1e-6)
        assert int(tr.optimizer.iterations) == step + 1


def test_step_and_constant_schedules():
    step = LRSchedule("step", warmup_steps=4, every=10, factor=0.5)
    tr = Trainer("mlp", "adam", learning_rate=0.08, lr_schedule=step)
    for at, rate in {0: 0.0, 2: 0.04, 4: 0.08, 13: 0.08, 14: 0.04, 24: 0.02, 104: 0.08 * 0.5 ** 10}.items():
        assert learning_rate_at(tr, at) == pytest.approx(rate, rel=1e-6, abs=1e-9), at
        assert step.rate(0.08, at) == pytest.approx(rate, rel=1e-12, abs=1e-15), at
    no_warmup = Trainer("mlp", "adam", learning_rate=0.08, lr_schedule=LRSchedule("step", every=3, factor=0.1))
    assert [learning_rate_at(no_warmup, s) for s in (0, 2, 3, 6)] == pytest.approx([0.08, 0.08, 0.008, 0.0008])
    warm = Trainer("mlp", "adam", learning_rate=0.08, lr_schedule=LRSchedule("constant", warmup_steps=8))
    assert [learning_rate_at(warm, s) for s in (0, 4, 8, 1000)] == pytest.approx([0.0, 0.04, 0.08, 0.08])
    plain = Trainer("mlp", "adam", learning_rate=0.08, lr_schedule=LRSchedule())
    assert isinstance(plain.optimizer._learning_rate, keras.Variable)  # no schedule: a float rate, as ever


# ---- loss from logits or from probabilities -------------------------------------------------------------------------

SOFTMAX_MODEL = """
import keras
def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(num_classes, activation="softmax")])
def logits(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
"""


@pytest.fixture(scope="module")
def softmax_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "probs.py"
    path.write_text(SOFTMAX_MODEL)
    return f"{path}:build"


def test_a_softmax_model_trains_on_probabilities_and_is_refused_on_logits(softmax_model, ds):
    with pytest.raises(ValueError, match="ends in a softmax.*training.loss_from_logits: false"):
        Trainer(softmax_model, "adam")
    with pytest.raises(ValueError, match="ends in a layer without activation.*loss_from_logits is false"):
        Trainer(softmax_model.replace(":build", ":logits"), "adam", loss_from_logits=False)
    tr = Trainer(softmax_model, "adam", learning_rate=2e-3, seed=0, loss_from_logits=False)
    x, y = ds.x_train[:64], ds.y_train[:64]
    probs = tr.model(x, training=False).numpy().astype(np.float64)
    expected = -np.mean(np.log(probs[np.arange(64), y]))
    assert tr.gradients(x, y)[0] == pytest.approx(expected, rel=1e-5)  # cross-entropy of the probabilities
    loss0, acc0 = tr.evaluate(ds.x_test, ds.y_test)
    sampler = data.BatchSampler(np.arange(len(ds.y_train)), seed=0)
    for _ in range(40):
        idx = sampler.next(32)
        tr.apply(tr.gradients(ds.x_train[idx], ds.y_train[idx])[1])
    loss, acc = tr.evaluate(ds.x_test, ds.y_test)
    assert acc > 0.5 and loss < loss0
    assert acc == np.mean(tr.model(ds.x_test, training=False).numpy().argmax(axis=1) == ds.y_test)  # argmax


def test_saturated_probabilities_keep_the_loss_finite(softmax_model, ds):
    tr = Trainer(softmax_model, "sgd", seed=1, loss_from_logits=False)
    last = tr.model.layers[-1]
    last.kernel.assign(last.kernel * 1e4)  # probabilities of exactly 0 and 1
    x, y = ds.x_train[:64], ds.y_train[:64]
    probs = tr.model(x, training=False).numpy()
    assert (probs[np.arange(64), y] == 0).any()
    loss, grads = tr.gradients(x, y)
    assert np.isfinite(loss) and loss <= -math.log(keras.config.epsilon()) + 1e-3 and np.isfinite(grads).all()
    assert np.isfinite(tr.evaluate(x, y)[0])


def test_validate_checks_the_model_against_the_loss_and_builds_the_optimizer(softmax_model):
    from dlion.wiring import check_model
    cfg = parse(model=softmax_model, loss_from_logits=False, optimizer="adamw",
                lr_schedule={"kind": "cosine", "warmup_steps": 5, "decay_steps": 50})
    lines = check_model(cfg)
    assert any(line.startswith(f"training.model: {softmax_model}: ") for line in lines)
    assert "training.optimizer: AdamW, learning rate cosine schedule peaking at 0.001" in lines
    with pytest.raises(ConfigError, match="^training.model: model .* ends in a softmax"):
        check_model(parse(model=softmax_model))


def test_training_options_are_the_trainers_arguments():
    options = training_options(parse(optimizer="nadam", optimizer_params={"epsilon": 1e-6}).training)
    assert set(options) <= set(inspect.signature(Trainer).parameters)
    tr = Trainer("mlp", **options)
    assert isinstance(tr.optimizer, keras.optimizers.Nadam) and tr.optimizer.epsilon == 1e-6


def test_the_rounds_learning_rate_scale_multiplies_the_peers_rate():
    from dlion import wiring
    from dlion.stages import Requirements
    cfg = parse(["rounds.learning_rate_scale=1.5"], learning_rate=0.002)
    trainer = wiring._make_trainer(cfg, 0, wiring._make_data(cfg, 0, None, Requirements()), Requirements(), threads=0)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.003)
    assert wiring.check_optimizer(cfg).endswith(
        "learning rate 0.003 (training.learning_rate 0.002 x rounds.learning_rate_scale 1.5)")
    assert wiring.check_optimizer(parse(learning_rate=0.002)).endswith("learning rate 0.002")
