"""The command line: config mistakes exit 2 with one message and start nothing."""
import json
import subprocess

from conftest import PYTHON, ROOT, python_env

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def dlion(*args, timeout=60):
    return subprocess.run([PYTHON, "-m", "dlion", *args], cwd=ROOT, env=python_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_validate_prints_resolved_config():
    result = dlion("validate", QUICKSTART, "--set", "training.max_seconds=30", "--set", "training.learning_rate=1e-3")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["training"]["max_seconds"] == 30.0 and len(resolved["peers"]) == 3
    assert resolved["training"]["learning_rate"] == 0.001  # YAML 1.2 numbers: 1e-3 is no string
    assert resolved["links"]["default"] == {"bandwidth": "1gbit", "latency": "0s"}  # units kept: it reloads the same


def test_validate_rejects_bad_value_with_key_path():
    result = dlion("validate", QUICKSTART, "--set", "peers.1.port=abc")
    assert result.returncode == 2
    assert result.stderr.strip() == "dlion: config error: peers[1].port: expected an integer in 1..65535, got 'abc'"


def test_run_with_bad_config_starts_nothing(tmp_path):
    out = tmp_path / "out"
    result = dlion("run", QUICKSTART, "--out", str(out), "--set", "links.default.bandwidth=-1mbit")
    assert result.returncode == 2 and "links.default.bandwidth" in result.stderr
    assert not out.exists()


def test_run_without_dataset_names_package_and_key(tmp_path):
    out = tmp_path / "out"
    result = dlion("run", QUICKSTART, "--out", str(out), "--set", f"training.data_dir={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "dataset-fashion-mnist" in result.stderr and "training.data_dir" in result.stderr
    assert not out.exists()


def test_peer_with_unknown_id_is_a_config_error():
    result = dlion("peer", "--config", QUICKSTART, "--id", "9")
    assert result.returncode == 2 and "--id" in result.stderr


def test_version_prints_the_package_version():
    import dlion as package
    result = dlion("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dlion {package.__version__}", result


def config_error(*args) -> str:
    """The one line a config mistake prints; it must exit 2."""
    result = dlion(*args)
    assert result.returncode == 2 and result.stdout == "", result
    return result.stderr.strip()


def test_a_bare_number_where_a_unit_belongs_is_refused():
    assert config_error("validate", QUICKSTART, "--set", "peers.0.latency=10") == (
        "dlion: config error: peers[0].latency: expected a duration with a unit such as 10ms, 1.5s or 200us; "
        "a bare number is ambiguous (10 what?)")
    assert config_error("validate", QUICKSTART, "--set", "links.default.bandwidth=100") == (
        "dlion: config error: links.default.bandwidth: expected a bandwidth with a unit such as 50mbit, 1gbit or "
        "100kbit; a bare number is ambiguous (100 what?)")


def test_an_empty_set_value_is_refused(tmp_path):
    out = tmp_path / "out"
    assert config_error("run", QUICKSTART, "--out", str(out), "--set", "training.max_seconds=") == (
        "dlion: config error: --set: expected a value after = in 'training.max_seconds='; to clear a key write "
        "training.max_seconds=null")
    assert not out.exists()


def test_a_duplicate_key_is_refused_with_its_path_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text((ROOT / "configs" / "quickstart.yaml").read_text() + "training: {max_seconds: 5}\n")
    line = path.read_text().count("\n")
    first = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("training:"))
    assert config_error("validate", str(path)) == (
        f"dlion: config error: training: expected each key once in a mapping; this key is given twice, at lines "
        f"{first} and {line} of {path}")


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert config_error("validate", str(path)) == (
        f"dlion: config error: {path}: expected a UTF-8 text file; byte 0xe9 at line 1 is not UTF-8 (save the file "
        f"as UTF-8)")


def test_validate_builds_the_model_on_the_data_and_names_a_bad_one(tmp_path):
    subprocess.run([PYTHON, "examples/make_data.py", "--out", str(tmp_path), "--train", "50", "--test", "10"],
                   cwd=ROOT, check=True, capture_output=True)
    data = [arg for i in range(3) for arg in ("--set", f"peers.{i}.data={tmp_path / f'peer-{i}.npz'}")]
    good = dlion("validate", "examples/own-data.yaml", *data)
    assert good.returncode == 0 and "17,098 parameters, input (32, 32, 3), 10 classes" in good.stderr, good.stderr
    (tmp_path / "wrong.py").write_text(
        "import keras\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(3)])\n")
    for model, problem in ((f"{tmp_path / 'absent.py'}:build", "cannot import"),
                           (f"{tmp_path / 'wrong.py'}:build", "outputs (None, 3), expected (None, 10)")):
        bad = dlion("validate", "examples/own-data.yaml", *data, "--set", f"training.model={model}")
        assert bad.returncode == 2 and "config error: training.model:" in bad.stderr and problem in bad.stderr, \
            bad.stderr
    (tmp_path / "sigmoid.py").write_text(
        "import keras\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes, activation='sigmoid')])\n")
    sigmoid = ("--set", f"training.model={tmp_path / 'sigmoid.py'}:build")
    bad = dlion("validate", "examples/own-data.yaml", *data, *sigmoid, "--set", "rounds.classifier_refit=always")
    assert bad.returncode == 2 and "config error: rounds.classifier_refit:" in bad.stderr, bad.stderr
    kept = dlion("validate", "examples/own-data.yaml", *data, *sigmoid)  # `full` refits when skewed: not this model
    assert kept.returncode == 0 and "when-skewed, but the trained layer stays" in kept.stderr, kept.stderr


def test_run_with_a_missing_data_file_starts_nothing(tmp_path):
    for present in (0, 2):
        (tmp_path / f"peer-{present}.npz").write_bytes(b"")
    sets = [arg for i in range(3) for arg in ("--set", f"peers.{i}.data={tmp_path / f'peer-{i}.npz'}")]
    result = dlion("run", "examples/own-data.yaml", "--out", str(tmp_path / "out"), *sets)
    assert result.returncode == 2 and "peers[1].data:" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()
