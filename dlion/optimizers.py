"""The training options that reach the Keras optimizer: its name and parameters, and the learning-rate schedule.

Pure Python, no TensorFlow: a config is checked against these tables when it loads, so an unknown optimizer or a bad
parameter is a config error naming the key, not a traceback in a peer; `dlion.trainer` turns the options into Keras
objects (`keras.optimizers.get`'s names, `keras.optimizers.schedules`). The tables follow the optimizers' constructor
signatures in Keras 3 (tests/test_training_options.py checks them against the installed Keras), and `dlion validate`
also builds the optimizer itself, which applies Keras's own checks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

from dlion.schema import ConfigError, Refused, between, join, non_negative, option, positive

# Keyword arguments every Keras optimizer takes (keras.optimizers.Optimizer), besides learning_rate and name.
COMMON = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
          "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")

# Each optimizer of keras.optimizers by its class name in lower case (keras.optimizers.get's names, and Lamb), with
# its own keyword arguments (besides COMMON).
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "adadelta": ("rho", "epsilon"),
    "adagrad": ("initial_accumulator_value", "epsilon"),
    "adam": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "adamax": ("beta_1", "beta_2", "epsilon"),
    "adamw": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "ftrl": ("learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
             "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta"),
    "lamb": ("beta_1", "beta_2", "epsilon"),
    "lion": ("beta_1", "beta_2"),
    "muon": ("adam_beta_1", "adam_beta_2", "adam_weight_decay", "epsilon", "exclude_layers", "exclude_embeddings",
             "muon_a", "muon_b", "muon_c", "adam_lr_ratio", "momentum", "ns_steps", "nesterov", "rms_rate"),
    "nadam": ("beta_1", "beta_2", "epsilon"),
    "rmsprop": ("rho", "momentum", "epsilon", "centered"),
    "schedulefreeadamw": ("beta_1", "beta_2", "epsilon", "warmup_steps"),
    "sgd": ("momentum", "nesterov"),
}

# Keras optimizers left out, and why.
EXCLUDED = {
    "adafactor": "Keras 3's Adafactor turns a whole variable to NaN when its gradient has an all-zero row and an "
                 "all-zero column (its factored second moment underflows to 0, and 0/0), as dead ReLU units give",
    "lossscaleoptimizer": "a wrapper around another optimizer, for mixed precision; dlion trains in float32",
    "multioptimizer": "a wrapper mapping variables to other optimizers",
}

# Keyword arguments the config sets elsewhere, and where.
_SET_ELSEWHERE = {"learning_rate": "set training.learning_rate (and training.lr_schedule) instead",
                  "name": "not settable: training.optimizer names the optimizer"}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_FRACTION = (lambda x: _number(x) and 0 <= x < 1, "a number in [0, 1)")
_NON_NEGATIVE = (lambda x: _number(x) and x >= 0, "a non-negative number")
_NUMBER = (_number, "a number")
_BOOL = (lambda x: isinstance(x, bool), "true or false")
_POSITIVE_OR_NULL = (lambda x: x is None or (_number(x) and x > 0), "a positive number or null")

# What each keyword argument takes (the same name means the same thing in every optimizer).
PARAMETERS: dict[str, tuple[Any, str]] = {
    "beta_1": _FRACTION, "beta_2": _FRACTION, "rho": _FRACTION, "momentum": _FRACTION,
    "adam_beta_1": _FRACTION, "adam_beta_2": _FRACTION,
    "epsilon": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE, "l1_regularization_strength": _NON_NEGATIVE,
    "l2_regularization_strength": _NON_NEGATIVE, "l2_shrinkage_regularization_strength": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE, "adam_weight_decay": _NON_NEGATIVE,
    "learning_rate_power": (lambda x: _number(x) and x <= 0, "a number <= 0"),
    "muon_a": _NUMBER, "muon_b": _NUMBER, "muon_c": _NUMBER, "rms_rate": _NUMBER,
    "adam_lr_ratio": (lambda x: _number(x) and x > 0, "a positive number"),
    "amsgrad": _BOOL, "nesterov": _BOOL, "centered": _BOOL, "use_ema": _BOOL, "exclude_embeddings": _BOOL,
    "weight_decay": (lambda x: x is None or (_number(x) and x >= 0), "a non-negative number or null"),
    "clipnorm": _POSITIVE_OR_NULL, "clipvalue": _POSITIVE_OR_NULL, "global_clipnorm": _POSITIVE_OR_NULL,
    "loss_scale_factor": _POSITIVE_OR_NULL,
    "ema_momentum": (lambda x: _number(x) and 0 <= x <= 1, "a number in [0, 1]"),
    "ema_overwrite_frequency": (lambda x: x is None or (_integer(x) and x >= 1), "a positive integer (steps) or null"),
    "gradient_accumulation_steps": (lambda x: x is None or (_integer(x) and x >= 2), "an integer >= 2 or null"),
    "ns_steps": (lambda x: _integer(x) and x >= 1, "a positive integer"),
    "warmup_steps": (lambda x: _integer(x) and x >= 0, "a non-negative integer"),
    "exclude_layers": (lambda x: x is None or (isinstance(x, list) and all(isinstance(s, str) for s in x)),
                       "a list of layer-name patterns or null"),
}

_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")


def parse_name(value: Any) -> str:
    """`training.optimizer`: a Keras optimizer name, in any case ('adamw', 'AdamW'), as its lower-case name."""
    if isinstance(value, str) and value.lower() in EXCLUDED:
        raise Refused(f"expected a Keras optimizer name other than {value.lower()}: {EXCLUDED[value.lower()]}; one "
                      f"of: {', '.join(OPTIMIZERS)}")
    if not isinstance(value, str) or value.lower() not in OPTIMIZERS:
        raise ValueError(value)
    return value.lower()


def parse_params(value: Any) -> dict:
    """`training.optimizer_params`: a mapping of keyword names to values (checked against the optimizer by
    `check_params`, which needs the optimizer's name)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(value)
    return dict(value)


NAME_EXPECT = "a Keras optimizer name, one of: " + ", ".join(OPTIMIZERS)
PARAMS_EXPECT = ("a mapping of the optimizer's keyword arguments, such as {beta_1: 0.9, weight_decay: 0.01} "
                 "(Keras's names and meanings; learning_rate is training.learning_rate)")


def accepted(name: str) -> tuple[str, ...]:
    """The keyword arguments optimizer `name` takes in optimizer_params (sgd's momentum is training.momentum)."""
    own = tuple(k for k in OPTIMIZERS[name] if not (name == "sgd" and k == "momentum"))
    return own + COMMON


def check_params(name: str, params: Mapping, path: str = "training") -> None:
    """Raise a ConfigError naming `<path>.optimizer_params.<key>` for a keyword that optimizer `name` does not take
    or a value of the wrong form."""
    where = join(path, "optimizer_params")
    for key, value in params.items():
        key_path = join(where, key)
        if key in _SET_ELSEWHERE:
            raise ConfigError(key_path, _SET_ELSEWHERE[key])
        if name == "sgd" and key == "momentum":
            raise ConfigError(key_path, "for sgd, set training.momentum instead")
        if key not in accepted(name):
            raise ConfigError(key_path, f"unknown keyword argument of optimizer {name}; expected one of: "
                                        f"{', '.join(accepted(name))}")
        test, expect = PARAMETERS[key]
        if not test(value):
            raise ConfigError(key_path, f"expected {expect}", value)
    clips = [k for k in _CLIPS if params.get(k) is not None]
    if len(clips) > 1:
        raise ConfigError(join(where, clips[1]), f"expected at most one of {', '.join(_CLIPS)}; {clips[0]} is "
                                                 f"already set")


def keyword_arguments(name: str, params: Mapping, momentum: float) -> dict:
    """The Keras constructor's keyword arguments besides learning_rate: the params, and for sgd training.momentum."""
    kwargs = dict(params)
    if name == "sgd":
        kwargs["momentum"] = float(momentum)
    return kwargs


# ---- learning-rate schedule ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LRSchedule:
    """`training.lr_schedule`: the learning rate over the peer's optimizer steps (its iterations), starting at 0."""
    kind: Literal["constant", "cosine", "step"] = option(
        "constant", expect="one of: constant (training.learning_rate throughout), cosine (cosine decay to "
                           "final_fraction x the rate over decay_steps), step (the rate times factor every `every` "
                           "steps); each after warmup_steps of linear warmup. Steps are the peer's optimizer steps")
    warmup_steps: int = option(0, check=non_negative,
                               expect="a non-negative integer: optimizer steps of linear warmup from 0 to "
                                      "training.learning_rate, before the schedule's kind takes over")
    decay_steps: Optional[int] = option(None, check=positive,
                                        expect="a positive integer: optimizer steps of cosine decay after the "
                                               "warmup (kind cosine, required; the rate then stays at its end)")
    final_fraction: float = option(0.0, check=between(0.0, 1.0),
                                   expect="a fraction in [0, 1]: the cosine's end rate, as a fraction of "
                                          "training.learning_rate (kind cosine)")
    every: Optional[int] = option(None, check=positive,
                                  expect="a positive integer: optimizer steps between multiplications by factor, "
                                         "counted after the warmup (kind step, required)")
    factor: float = option(0.1, check=lambda x: 0 < x <= 1,
                           expect="a number in (0, 1]: what the rate is multiplied by every `every` steps (kind step)")

    def validate(self, path: str) -> None:
        required = {"cosine": "decay_steps", "step": "every"}
        for kind, key in required.items():
            value = getattr(self, key)
            if self.kind == kind and value is None:
                raise ConfigError(join(path, key), f"required for kind {kind}; expected a positive integer "
                                                   f"(optimizer steps)")
            if self.kind != kind and value is not None:
                raise ConfigError(join(path, key), f"applies to kind {kind} only; this schedule's kind is "
                                                   f"{self.kind}")

    def rate(self, learning_rate: float, step: int) -> float:
        """The learning rate at optimizer step `step` (0 first), in plain Python: what the Keras schedule computes
        (docs, tests)."""
        if step < self.warmup_steps:
            return learning_rate * step / self.warmup_steps
        after = step - self.warmup_steps
        if self.kind == "cosine":
            done = min(after, self.decay_steps) / self.decay_steps
            cosine = 0.5 * (1 + math.cos(math.pi * done))
            return learning_rate * (self.final_fraction + (1 - self.final_fraction) * cosine)
        if self.kind == "step":
            return learning_rate * self.factor ** (after // self.every)
        return learning_rate


def training_options(training) -> dict:
    """The `dlion.trainer.Trainer` keyword arguments that `training` (config.Training) sets besides the model: the
    optimizer, its parameters and learning-rate schedule, and the loss."""
    return {"optimizer": training.optimizer, "learning_rate": training.learning_rate, "momentum": training.momentum,
            "optimizer_params": dict(training.optimizer_params), "lr_schedule": training.lr_schedule,
            "loss_from_logits": training.loss_from_logits}

