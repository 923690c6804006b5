"""The YAML loader of config files and `--set` values: YAML 1.2 numbers, no duplicate keys, UTF-8 or a clear error."""
import math

import pytest
import yaml

from dlion import config, yamlio
from dlion.schema import ConfigError

PEERS = "peers:\n  - {id: 0, port: 47000}\n  - {id: 1, port: 47001}\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E5", 1e5), ("-2.5e-4", -2.5e-4), (".5", 0.5), ("-.5", -0.5), ("+1e3", 1000.0),
    ("1.5e3", 1500.0), ("1.0e-3", 0.001), ("2.", 2.0), ("1_000.5", 1000.5), (".inf", math.inf),
    ("10", 10), ("0x1f", 31), ("'1e-3'", "1e-3"), ("1.2.3", "1.2.3"), ("1e", "1e"), ("e3", "e3"), ("10ms", "10ms"),
])
def test_numbers_read_as_in_yaml_1_2(text, value):
    got = yamlio.loads(f"x: {text}", "test")["x"]
    assert got == value and type(got) is type(value)


def test_pyyaml_itself_is_left_as_it_was():
    yamlio.loads("x: 1e-3", "test")
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}


def test_learning_rate_in_exponent_form_from_a_file_and_from_set(tmp_path):
    path = write(tmp_path, PEERS + "training: {max_iterations: 1, learning_rate: 1e-3}\n")
    assert config.load(path).training.learning_rate == 0.001
    assert config.load(path, ["training.learning_rate=2.5E-4"]).training.learning_rate == 2.5e-4


def test_the_dumper_quotes_strings_the_loader_would_read_as_numbers():
    data = {"name": "1e-3", "x": ".5", "y": 1e-5, "z": "10ms"}
    text = yamlio.dump(data)
    assert "'1e-3'" in text and "'.5'" in text and "z: 10ms" in text
    assert yamlio.loads(text, "test") == data


@pytest.mark.parametrize("text, expected", [
    ("name: a\nseed: 1\nname: b\n",
     "name: expected each key once in a mapping; this key is given twice, at lines 1 and 3 of SRC"),
    ("training:\n  max_seconds: 30\n  optimizer: sgd\n  max_seconds: 60\n",
     "training.max_seconds: expected each key once in a mapping; this key is given twice, at lines 2 and 4 of SRC"),
    ("peers:\n  - {id: 0, port: 1}\n  - {id: 1, port: 2,\n     port: 3}\n",
     "peers[1].port: expected each key once in a mapping; this key is given twice, at lines 3 and 4 of SRC"),
])
def test_a_duplicate_key_names_its_path_and_lines(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == expected.replace("SRC", str(path))


def test_keys_of_different_types_and_merged_keys_are_not_duplicates():
    assert yamlio.loads("a: {1: x, '1': y}\n", "test") == {"a": {1: "x", "1": "y"}}
    merged = yamlio.loads("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n", "test")
    assert merged["mine"] == {"x": 1, "y": 3}
    assert yamlio.loads("a: &a {x: 1}\nb: *a\nc: *a\n", "test")["c"] == {"x": 1}  # an alias is no duplicate


def test_a_duplicate_key_in_a_set_value_names_the_key_path(tmp_path):
    path = write(tmp_path, PEERS + "training: {max_iterations: 1}\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, ["links.default={bandwidth: 1gbit, bandwidth: 2gbit}"])
    assert str(exc.value) == ("links.default.bandwidth: expected each key once in a mapping; this key is given "
                              "twice, in --set links.default")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes((PEERS + "name: caf\u00e9\n").encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == (f"{path}: expected a UTF-8 text file; byte 0xe9 at line 4 is not UTF-8 (save the file "
                              f"as UTF-8)")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(PEERS.encode("utf-16"))
    with pytest.raises(ConfigError, match="expected a UTF-8 text file"):
        config.load(utf16)


def test_utf8_with_a_byte_order_mark_and_non_ascii_text_load(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(("\ufeff" + PEERS + "name: caf\u00e9\ntraining: {max_iterations: 1}\n").encode("utf-8"))
    assert config.load(path).name == "caf\u00e9"


def test_bad_yaml_in_a_set_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^--set links.default: expected valid YAML at line 1"):
        config.apply_overrides({}, ["links.default={bandwidth: [1gbit"])


@pytest.mark.parametrize("item", ["training.max_seconds=", "training.max_seconds=  "])
def test_an_empty_set_value_is_refused(item):
    with pytest.raises(ConfigError) as exc:
        config.apply_overrides({"training": {"max_seconds": 30}}, [item])
    assert str(exc.value) == (f"--set: expected a value after = in {item!r}; to clear a key write "
                              f"training.max_seconds=null")


def test_null_clears_a_key():
    assert config.apply_overrides({"training": {"max_seconds": 30}}, ["training.max_seconds=null"]) == \
        {"training": {"max_seconds": None}}


def test_a_written_resolved_config_loads_back_the_same(tmp_path):
    """`dlion run` writes the resolved config with `dump`, and each peer process loads it from there."""
    from conftest import ROOT
    from dlion import launch
    cfg = config.load(ROOT / "configs" / "scenarios" / "dynamic-4.yaml", ["name='1e-3'", "training.learning_rate=1e-3"])
    resolved = launch.prepare_out_dir(cfg, tmp_path / "out")
    assert "bandwidth: 10mbit" in resolved.read_text() and "name: '1e-3'" in resolved.read_text()
    assert config.load(resolved) == cfg
