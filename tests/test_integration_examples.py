"""The worked example of users' own data and model (examples/): a model defined outside dlion trains across 3 peers,
each reading only its own .npz of 32x32x3 images, to a target that shows real learning; the final models saved by the
peers load with Keras and score what the peers reported, after the classifier refit (its statistics over ZeroMQ)."""
import json
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, ROOT, python_env

pytestmark = pytest.mark.integration


def test_own_data_and_model_train_and_the_saved_models_score_what_was_reported(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    subprocess.run([PYTHON, "examples/make_data.py", "--out", str(data), "--train", "2000", "--test", "500"],
                   cwd=ROOT, check=True, capture_output=True)
    sets = [arg for i in range(3) for arg in ("--set", f"peers.{i}.data={data / f'peer-{i}.npz'}")]
    # the example's labels are spread alike: `always` makes the refit run (here with variances: the full
    # covariances of a 64-feature layer would be larger than the model)
    result = subprocess.run([PYTHON, "-m", "dlion", "run", "examples/own-data.yaml", "--out", str(out), *sets,
                             "--set", "rounds.classifier_refit=always"],
                            cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_to_target_s"] is not None and summary["final_accuracy"] > 0.7, summary
    import keras
    for peer in range(3):
        refit = next(json.loads(line) for line in (out / f"peer-{peer}.jsonl").open() if '"refit"' in line)
        assert refit["refitted"] and refit["covariance"] == "diagonal" and refit["skew"] < 0.1
        assert sorted(refit["peers"]) == [p for p in range(3) if p != peer] and refit["classes"] == list(range(10))
        final = next(json.loads(line) for line in (out / f"peer-{peer}.jsonl").open() if '"final"' in line)
        model = keras.models.load_model(final["model"])
        test = np.load(data / f"peer-{peer}.npz")
        logits = model.predict(test["x_test"].astype(np.float32) / 255.0, verbose=0)
        assert float((logits.argmax(axis=1) == test["y_test"]).mean()) == pytest.approx(final["acc"], abs=1e-4)
