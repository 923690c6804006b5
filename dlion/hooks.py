"""User code named in a config: `package.module:fn` (importable from the working directory or the installed
packages) or `path/to/file.py:fn` (a file, relative to the working directory). Models and data sources are hooks."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable


class HookError(ValueError):
    """A hook that cannot be imported or called; the message names it and says why."""


def is_hook(spec) -> bool:
    """Whether `spec` names a hook (`module:fn` or `file.py:fn`) rather than a path or a built-in name."""
    if not isinstance(spec, str):
        return False
    head, sep, tail = spec.rpartition(":")
    return bool(sep) and tail.isidentifier() and len(head) > 1 and not Path(spec).exists()


def import_hook(spec: str) -> Callable:
    """The callable a hook names; raises HookError."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            unit = importlib.util.spec_from_file_location(file.stem, file) if file.is_file() else None
            if unit is None:
                raise ImportError(f"no file {file.resolve()}")
            module = importlib.util.module_from_spec(unit)
            sys.modules.setdefault(file.stem, module)
            unit.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: whatever it raises on import is theirs to see
        raise HookError(f"{spec}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise HookError(f"{spec}: {module_name} has no callable {attr!r}")
    return fn
