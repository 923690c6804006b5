"""YAML as dlion reads and writes it: config files and `--set` values go through the same loader.

PyYAML follows YAML 1.1, with two traps for a config: a float needs a dot there, so `1e-3` is the string '1e-3'
(YAML 1.2 reads a number), and a key given twice silently keeps its last value. `Loader` reads numbers as YAML 1.2
does and refuses a duplicate key, naming its key path and lines; `Dumper` quotes a string that `Loader` would read as
a number, so a written config reads back the same.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dlion.schema import ConfigError, join

FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"

# YAML 1.2 floats (1e-3, 1E5, -2.5e-4, .5, 1.) and what PyYAML already read as floats (1_000.5, 1:30.5, .inf, .nan).
# An integer never matches: a float needs a dot or an exponent.
FLOAT = re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


def _resolvers() -> dict:
    """SafeLoader's implicit resolvers with its YAML 1.1 float pattern replaced by `FLOAT` (a fresh table: PyYAML's
    own loaders are left as they are)."""
    table = {first: [(tag, regexp) for tag, regexp in resolvers if tag != FLOAT_TAG]
             for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "-+0123456789.":
        table.setdefault(first, []).append((FLOAT_TAG, FLOAT))
    return {first: resolvers for first, resolvers in table.items() if resolvers}


class DuplicateKey(yaml.YAMLError):
    def __init__(self, path: str, first_line: int, line: int):
        super().__init__(f"{path}: given twice, at lines {first_line} and {line}")
        self.path, self.first_line, self.line = path, first_line, line


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers that refuses a key given twice in one mapping."""
    yaml_implicit_resolvers = _resolvers()

    def construct_document(self, node):
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


class Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what `Loader` would not read back as the same string (such as '1e-3')."""
    yaml_implicit_resolvers = Loader.yaml_implicit_resolvers


def _check_unique_keys(node: yaml.Node, path: str, visited: set) -> None:
    """Raise DuplicateKey for the first key given twice in a mapping, anywhere under `node` (before construction,
    while the nodes still know their lines and the key path is at hand)."""
    if id(node) in visited:  # an alias: checked where its anchor is
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_lines: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base`: keys given next to it override the merged ones, by design
                _check_unique_keys(value_node, path, visited)
                continue
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            key_path = join(path, name)
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in first_lines:
                    raise DuplicateKey(key_path, first_lines[key], line)
                first_lines[key] = line
            _check_unique_keys(value_node, key_path, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, join(path, i), visited)


def loads(text: str, source: str, path: str = "") -> Any:
    """Parse YAML `text` from `source` (a file name, or `--set KEY`); `path` is the key path the text sits at.

    Every mistake is a ConfigError: a duplicate key names its key path, invalid YAML names `source` and the place.
    """
    try:
        return yaml.load(text, Loader=Loader)
    except DuplicateKey as exc:
        where = (f"at lines {exc.first_line} and {exc.line} of {source}" if "\n" in text.strip()
                 else f"in {source}")
        key_path = exc.path if not path else path + exc.path if exc.path.startswith("[") else join(path, exc.path)
        raise ConfigError(key_path, f"expected each key once in a mapping; this key is given twice, {where}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, f"expected valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file; an unreadable file, one that is not UTF-8 and bad YAML are ConfigErrors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"expected a readable YAML file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(path), f"expected a UTF-8 text file; byte 0x{data[exc.start]:02x} at line {line} is "
                                     f"not UTF-8 (save the file as UTF-8)") from None
    return loads(text, str(path))


def dump(data: Any) -> str:
    """YAML text that `loads` reads back as `data` (key order kept)."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False)
