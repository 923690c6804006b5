"""dlion.models: the named models, import-path models, seeding and errors."""
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from dlion.models import MODEL_NAMES, build_model  # noqa: E402


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("name, trainable, non_trainable", [
    ("mlp", 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10, 0),
    ("cnn", 225034, 0),
    # Bias-free convs (BatchNorm shifts), gamma+beta trainable, moving mean+variance not.
    ("cnn-bn", 225034 - 32 - 64 + 2 * (32 + 64), 2 * (32 + 64)),
])
def test_named_models(name, trainable, non_trainable):
    model = build_model(name)
    assert count(model.trainable_variables) == trainable
    assert count(model.non_trainable_variables) == non_trainable
    out = model(np.random.default_rng(0).random((3, 28, 28, 1), np.float32))
    assert tuple(out.shape) == (3, 10)
    assert not np.allclose(np.sum(out, axis=1), 1.0)  # logits, not probabilities


def test_names_and_num_classes():
    assert MODEL_NAMES == ("mlp", "cnn", "cnn-bn")
    model = build_model("mlp", input_shape=(8, 8, 1), num_classes=3)
    assert tuple(model.output_shape) == (None, 3)


def test_seed_fixes_initial_weights():
    a, b, c = build_model("cnn", seed=1), build_model("cnn", seed=1), build_model("cnn", seed=2)
    for va, vb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_import_path(tmp_path, monkeypatch):
    (tmp_path / "tinynets.py").write_text(
        "import keras\n"
        "def linear(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes)])\n"
        "def not_a_model(input_shape, num_classes):\n"
        "    return 42\n"
        "def wrong_output(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(3)])\n"
        "def softmax(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
        "NOT_CALLABLE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tinynets", raising=False)
    model = build_model("tinynets:linear", num_classes=4)
    assert count(model.trainable_variables) == 784 * 4 + 4
    with pytest.raises(ValueError, match="not a keras.Model"):
        build_model("tinynets:not_a_model")
    with pytest.raises(ValueError, match="no callable 'NOT_CALLABLE'"):
        build_model("tinynets:NOT_CALLABLE")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        build_model("tinynets:missing")
    with pytest.raises(ValueError, match="cannot import"):
        build_model("no_such_tinynets:linear")
    with pytest.raises(ValueError, match=r"outputs \(None, 3\), expected \(None, 4\)"):
        build_model("tinynets:wrong_output", num_classes=4)
    with pytest.raises(ValueError, match="ends in a softmax"):
        build_model("tinynets:softmax", num_classes=4)
    by_file = build_model(f"{tmp_path / 'tinynets.py'}:linear", input_shape=(32, 32, 3), num_classes=10)
    assert count(by_file.trainable_variables) == 32 * 32 * 3 * 10 + 10


@pytest.mark.parametrize("spec", ["resnet", "no_such_module_xyz:build", "dlion.models:"])
def test_bad_specs(spec):
    with pytest.raises(ValueError) as err:
        build_model(spec)
    if ":" not in spec:
        for name in MODEL_NAMES:
            assert name in str(err.value)
