"""Keras models by name or by import path; every model outputs logits."""
from __future__ import annotations

import importlib

import keras
from keras import layers

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


def _import(spec):
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"model {spec!r}: cannot import {attr!r} from {module_name!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"model {spec!r}: {attr!r} is not callable")
    return fn


def build_model(spec, input_shape=(28, 28, 1), num_classes=10, seed=0) -> keras.Model:
    """Build a model; the same seed gives the same initial weights on every peer.

    spec is one of MODEL_NAMES or "package.module:callable", called as callable(input_shape=..., num_classes=...).
    """
    if spec in _BUILDERS:
        builder = _BUILDERS[spec]
    elif isinstance(spec, str) and ":" in spec:
        builder = _import(spec)
    else:
        raise ValueError(f"unknown model {spec!r}: use one of {', '.join(MODEL_NAMES)} "
                         f"or an import path 'package.module:callable'")
    keras.utils.set_random_seed(seed)
    model = builder(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not a keras.Model")
    if not model.built:
        model.build((None, *input_shape))
    return model
