"""A user's own Keras model for dlion: `build(input_shape, num_classes)` returns a model whose output is one logit per
class (no final softmax: dlion's loss applies it). Named in a config as `training.model: examples/custom_model.py:build`
(or `examples.custom_model:build` when run from the repository's root)."""
import keras
from keras import layers


def build(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(64, activation="relu"),
        layers.Dense(num_classes),
    ], name="own-cnn")
