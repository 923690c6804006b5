"""Keras models by name or by import path; the built-in models output logits."""
from __future__ import annotations

import keras
from keras import layers

from dlion import hooks

MODEL_NAMES = ("mlp", "cnn", "cnn-bn")


def _mlp(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes),
    ], name="mlp")


def _cnn(input_shape, num_classes, batch_norm=False):
    def conv(filters):
        if not batch_norm:
            return [layers.Conv2D(filters, 3, activation="relu")]
        # The bias is redundant before BatchNormalization's own shift.
        return [layers.Conv2D(filters, 3, use_bias=False), layers.BatchNormalization(), layers.ReLU()]

    return keras.Sequential([
        keras.Input(input_shape),
        *conv(32),
        layers.MaxPooling2D(2),
        *conv(64),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes),
    ], name="cnn-bn" if batch_norm else "cnn")


_BUILDERS = {
    "mlp": _mlp,
    "cnn": _cnn,
    "cnn-bn": lambda input_shape, num_classes: _cnn(input_shape, num_classes, batch_norm=True),
}


def build_model(spec, input_shape=(28, 28, 1), num_classes=10, seed=0, from_logits=True) -> keras.Model:
    """Build a model; the same seed gives the same initial weights on every peer.

    spec is one of MODEL_NAMES or a hook `package.module:fn` / `file.py:fn` (`dlion.hooks`), called as
    fn(input_shape=..., num_classes=...) and returning a keras.Model whose output is (batch, num_classes) logits, or
    probabilities where `from_logits` is False (`training.loss_from_logits`). Raises ValueError naming what is wrong:
    an unknown name, a hook that does not import, another output shape, a final softmax where the loss takes logits,
    a final layer without activation (logits, surely) where it takes probabilities.
    """
    if spec in _BUILDERS:
        builder = _BUILDERS[spec]
    elif hooks.is_hook(spec):
        builder = hooks.import_hook(spec)
    else:
        raise ValueError(f"unknown model {spec!r}: use one of {', '.join(MODEL_NAMES)} "
                         f"or a hook 'package.module:fn' or 'path/to/file.py:fn'")
    keras.utils.set_random_seed(seed)
    model = builder(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not a keras.Model")
    if not model.built:
        model.build((None, *input_shape))
    output = tuple(model.output_shape) if hasattr(model, "output_shape") else None
    if output is not None and output[1:] != (num_classes,):
        raise ValueError(f"model {spec!r} outputs {output}, expected (None, {num_classes}): one logit per class "
                         f"for input {tuple(input_shape)}")
    last = model.layers[-1] if model.layers else None
    softmax = getattr(last, "activation", None) is keras.activations.softmax or isinstance(last, layers.Softmax)
    if from_logits and softmax:
        raise ValueError(f"model {spec!r} ends in a softmax; return logits (drop the final activation): the "
                         f"trainer's loss applies the softmax itself (or set training.loss_from_logits: false to "
                         f"train on the probabilities)")
    if not from_logits and getattr(last, "activation", None) is keras.activations.linear:
        raise ValueError(f"model {spec!r} ends in a layer without activation, whose outputs are logits, but "
                         f"training.loss_from_logits is false: end the model in a softmax, or set it to true")
    return model
