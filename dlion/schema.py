"""Declarative validation of nested YAML mappings into frozen dataclasses.

A config section is a frozen dataclass whose fields say their type, default and, through `option()`, an extra check
and the human form of what is expected. `build(cls, raw, path)` turns a parsed YAML mapping into that dataclass or
raises one `ConfigError` naming the key path (``peers[1].port``) and the expected form. Strategy parameter classes use
the same helpers, so their defaults live next to the strategy and are validated the same way.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from typing import Any, Callable, Literal, Union

Check = Callable[[Any], bool]


class ConfigError(ValueError):
    """A config mistake: names the key path and what is expected there."""

    def __init__(self, path: str, expected: str, got: Any = dataclasses.MISSING):
        self.path = path or "<config>"
        message = f"{self.path}: {expected}"
        if got is not dataclasses.MISSING:
            message += f", got {_show(got)}"
        super().__init__(message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def option(default: Any = dataclasses.MISSING, *, check: Check | None = None, expect: str = "",
           parse: Callable[[Any], Any] | None = None, build_with: Callable[[Any, str], Any] | None = None):
    """A dataclass field with an optional value check, its expected form for messages, and a custom parser.

    `parse(value)` turns the raw YAML value into the field value and raises ValueError if it cannot (the message then
    gives `expect`); `build_with(value, path)` is for nested values that raise their own `ConfigError`.
    """
    metadata = {"check": check, "expect": expect, "parse": parse, "build_with": build_with}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def build(cls: type, raw: Any, path: str = ""):
    """Validate `raw` (a parsed YAML mapping, or None for all defaults) into dataclass `cls`."""
    names = [f.name for f in dataclasses.fields(cls)]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping with keys from: {', '.join(names)}", raw)
    for key in raw:
        if key not in names:
            raise ConfigError(join(path, key), f"unknown key; expected one of: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key_path = join(path, f.name)
        if f.name in raw:
            values[f.name] = convert(hints[f.name], raw[f.name], key_path, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key_path, f"required key is missing; expected {describe(hints[f.name], f.metadata)}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def convert(tp: Any, value: Any, path: str, meta: Mapping | None = None):
    """Convert one YAML value to type `tp`, applying the field's parser and check."""
    meta = meta or {}
    expect = describe(tp, meta)
    if meta.get("build_with") is not None:
        return meta["build_with"](value, path)
    if meta.get("parse") is not None:
        if value is None and _is_optional(tp):
            return None
        try:
            result = meta["parse"](value)
        except Refused as exc:
            raise ConfigError(path, exc.expected) from None
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected {expect}", value) from None
    else:
        result = _convert_type(tp, value, path, expect)
    check = meta.get("check")
    if check is not None and result is not None and not check(result):
        raise ConfigError(path, f"expected {expect}", value)
    return result


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)


def _convert_type(tp: Any, value: Any, path: str, expect: str):
    origin = typing.get_origin(tp)
    if _is_optional(tp):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert_type(inner, value, path, expect)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    elif origin is tuple:
        item_type = typing.get_args(tp)[0]
        if isinstance(value, list):
            return tuple(_convert_type(item_type, v, join(path, i), describe(item_type)) for i, v in enumerate(value))
    elif tp is Any:
        return value
    raise ConfigError(path, f"expected {expect}", value)


def describe(tp: Any, meta: Mapping | None = None) -> str:
    """The human form of what a field accepts, for error messages."""
    if meta and meta.get("expect"):
        return meta["expect"]
    origin = typing.get_origin(tp)
    if _is_optional(tp):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(inner) + " or null"
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + describe(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys from: " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


# ---- value parsers with units ---------------------------------------------------------------------------------------

class Refused(ValueError):
    """A parser's own account of what is wrong with a value; it replaces the field's generic expected form."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class Quantity:
    """A number with a unit, such as a duration or a bandwidth: called, it parses '25ms' into 0.025; `format` writes
    a value back with its unit, so that a resolved config reloads to the same values.

    A bare number is refused (0 aside, the same in every unit): `latency: 10` used to mean 10 seconds and
    `bandwidth: 100` 100 bit/s, never what was meant.
    """

    def __init__(self, what: str, units: Mapping[str, tuple[int, int]], examples: str, positive: bool):
        self.what = what
        self.units = units  # unit -> (multiplier, divisor) to the base unit, exact integers: one rounding per parse
        self.examples = examples
        self.positive = positive

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, (int, float)):
            number, unit = float(value), ""
        else:
            match = _NUMBER_UNIT.match(str(value))
            if not match:
                raise ValueError(value)
            number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "" and number != 0:
            shown = value if isinstance(value, str) else f"{value:g}"
            raise Refused(f"expected a {self.what} with a unit such as {self.examples}; a bare number is ambiguous "
                          f"({shown.strip()} what?)")
        if unit and unit not in self.units:
            raise ValueError(value)
        multiplier, divisor = self.units.get(unit, (1, 1))
        result = number * multiplier / divisor
        if not math.isfinite(result) or result < 0 or (self.positive and result == 0):
            raise ValueError(value)
        return result

    def format(self, value: float) -> str:
        """The shortest text in the largest unit that reads back as exactly `value` ('50mbit', '25ms')."""
        if value == 0:
            return "0" + self.base
        by_size = sorted(self.units.items(), key=lambda u: u[1][0] / u[1][1], reverse=True)
        for i, (unit, (multiplier, divisor)) in enumerate(by_size):
            number = value * divisor / multiplier
            if abs(number) < 1 and i < len(by_size) - 1:
                continue
            for text in (f"{number:g}", repr(number)):
                try:
                    if self(text + unit) == value:
                        return text + unit
                except ValueError:
                    pass
        return repr(value) + self.base

    @property
    def base(self) -> str:
        return next(unit for unit, scale in self.units.items() if scale == (1, 1))


parse_bandwidth = Quantity("bandwidth", {"bit": (1, 1), "kbit": (10**3, 1), "mbit": (10**6, 1), "gbit": (10**9, 1)},
                           "50mbit, 1gbit or 100kbit", positive=True)
parse_duration = Quantity("duration", {"s": (1, 1), "ms": (1, 10**3), "us": (1, 10**6)}, "10ms, 1.5s or 200us",
                          positive=False)

BANDWIDTH = "a positive bandwidth such as 50mbit, 1gbit or 100kbit (bit/s)"
DURATION = "a non-negative duration such as 25ms, 1.5s or 500us"


def written(meta: Mapping, value: Any) -> Any:
    """A field's value as a config file writes it: with its unit where the field takes one."""
    parser = meta.get("parse")
    if isinstance(parser, Quantity) and value is not None:
        return parser.format(value)
    return value


def _finite(x) -> bool:
    """Infinity is no rate, size or deadline (`.inf` would mean a hang or a NaN); an integer is finite, however large."""
    return not isinstance(x, float) or math.isfinite(x)


def positive(x) -> bool:
    return _finite(x) and x > 0


def non_negative(x) -> bool:
    return _finite(x) and x >= 0


def at_least(lo) -> Check:
    return lambda x: _finite(x) and x >= lo


def above(lo) -> Check:
    return lambda x: _finite(x) and x > lo


def between(lo, hi) -> Check:
    return lambda x: lo <= x <= hi


def reference(cls: type, path: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, expected form) for every key of `cls`, nested sections expanded, for the docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key_path = join(path, f.name)
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        if f.metadata.get("build_with"):
            continue  # documented by its builder (strategy stages list their own parameters)
        if dataclasses.is_dataclass(tp):
            rows += reference(tp, key_path)
        elif item is not None and dataclasses.is_dataclass(item):
            rows += reference(item, key_path + "[]")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            rows.append((key_path, "(required)", describe(tp, f.metadata)))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = written(f.metadata, default)  # a unit's text as written ('1gbit'), else the Python value
            rows.append((key_path, f"`{shown if shown is not default else _show(default)}`", describe(tp, f.metadata)))
    return rows
