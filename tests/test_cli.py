"""The command line: config mistakes exit 2 with one message and start nothing."""
import json
import subprocess

from conftest import PYTHON, ROOT, python_env

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def dlion(*args, timeout=60):
    return subprocess.run([PYTHON, "-m", "dlion", *args], cwd=ROOT, env=python_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_validate_prints_resolved_config():
    result = dlion("validate", QUICKSTART, "--set", "training.max_seconds=30")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["training"]["max_seconds"] == 30.0 and len(resolved["peers"]) == 3


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
