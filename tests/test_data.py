"""dlion.data: IDX parsing, Fashion-MNIST loading, partitions, sampler. No TensorFlow here."""
import gzip
import subprocess

import numpy as np
import pytest

from conftest import FASHION_DIR, PYTHON, python_env, requires_fashion
from dlion import data


def idx_bytes(arr, dtype_code=0x08):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, dtype_code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return header + arr.tobytes()


def write_idx(path, arr, gz):
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fake_fashion(directory, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n), gz)


# --- IDX ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_gz_and_raw(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = data.load_idx(write_idx(tmp_path / "a-idx3-ubyte", arr, gz))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("content", [
    b"\x01\x00\x08\x01\x00\x00\x00\x02ab",  # bad magic
    idx_bytes(np.zeros(4), dtype_code=0x0D),  # float dtype code
    idx_bytes(np.zeros((3, 4)))[:-1],  # truncated data
    idx_bytes(np.zeros(3)) + b"x",  # trailing bytes
    b"\x00\x00\x08\x02\x00\x00",  # truncated header
    b"\x00\x00",  # too short
    b"\x1f\x8b\x08\x00garbage",  # corrupt gzip
])
def test_load_idx_malformed_names_file(tmp_path, content):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(data.DataError, match="broken-idx1-ubyte"):
        data.load_idx(path)


# --- Fashion-MNIST loader -------------------------------------------------------------------------------------------
def test_missing_directory_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError) as err:
        data.load_fashion_mnist(missing)
    msg = str(err.value)
    for needle in (str(missing), "train-images-idx3-ubyte", "dataset-fashion-mnist",
                   "apt-get install dataset-fashion-mnist", "training.data_dir"):
        assert needle in msg


def test_missing_single_file_named(tmp_path):
    write_fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte") as err:
        data.load_fashion_mnist(tmp_path)
    assert "train-images" not in str(err.value)


@pytest.mark.parametrize("gz", [True, False])
def test_load_small_directory(tmp_path, gz):
    write_fake_fashion(tmp_path, gz=gz)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32  # as stored: the trainer scales
    raw = data.load_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    np.testing.assert_array_equal(ds.x_train[..., 0], raw)


def test_images_labels_count_mismatch(tmp_path):
    write_fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11), gz=True)
    with pytest.raises(data.DataError, match="do not match"):
        data.load_fashion_mnist(tmp_path)


@requires_fashion
def test_real_fashion_mnist():
    ds = data.load_fashion_mnist(FASHION_DIR)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int32
    assert ds.x_train.min() == 0 and ds.x_train.max() == 255
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))


def test_data_module_does_not_import_tensorflow():
    code = "import sys, dlion.data; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=60)


# --- synthetic ------------------------------------------------------------------------------------------------------
def test_synthetic_shapes_and_determinism():
    a, b = data.synthetic(100, 20, seed=3), data.synthetic(100, 20, seed=3)
    assert a.x_train.shape == (100, 28, 28, 1) and a.x_test.shape == (20, 28, 28, 1)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, data.synthetic(100, 20, seed=4).x_train)


# --- partitions -----------------------------------------------------------------------------------------------------
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 600))  # 6000 samples, balanced


@pytest.mark.parametrize("kind", data.PARTITION_KINDS)
@pytest.mark.parametrize("peers", [1, 3, 7])
def test_partition_disjoint_and_covering(kind, peers):
    parts = data.partition(LABELS, peers, kind, seed=1)
    assert len(parts) == peers
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(LABELS)))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("kind", data.PARTITION_KINDS)
def test_partition_deterministic(kind):
    a = data.partition(LABELS, 4, kind, seed=5)
    b = data.partition(LABELS, 4, kind, seed=5)
    c = data.partition(LABELS, 4, kind, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def majority_share(parts, k):
    """Mean over peers of the fraction of a peer's samples in its k most frequent classes."""
    shares = []
    for p in parts:
        counts = np.sort(np.bincount(LABELS[p], minlength=10))[::-1]
        shares.append(counts[:k].sum() / len(p))
    return float(np.mean(shares))


def test_dirichlet_is_skewed():
    iid = data.partition(LABELS, 5, "iid", seed=0)
    skewed = data.partition(LABELS, 5, "dirichlet", seed=0, alpha=0.1)
    assert majority_share(iid, 2) < 0.25
    assert majority_share(skewed, 2) > 0.6
    # Larger alpha is closer to IID.
    mild = data.partition(LABELS, 5, "dirichlet", seed=0, alpha=100.0)
    assert majority_share(mild, 2) < 0.3


def test_dirichlet_minimum_share():
    parts = data.partition(LABELS, 20, "dirichlet", seed=2, alpha=0.01)
    minimum = np.ceil(0.01 * len(LABELS) / 20)
    assert min(len(p) for p in parts) >= minimum


def test_label_sorted_peers_hold_few_classes():
    parts = data.partition(LABELS, 5, "label-sorted", seed=0, fraction=0.8)
    # 2 shards per peer; with 5 peers and 10 classes each shard is one class.
    for p in parts:
        counts = np.sort(np.bincount(LABELS[p], minlength=10))[::-1]
        assert counts[:2].sum() / len(p) >= 0.8
        assert counts[2] > 0  # the IID remainder still shows every class
    assert majority_share(data.partition(LABELS, 5, "label-sorted", seed=0, fraction=0.0), 2) < 0.25


def test_partition_errors():
    with pytest.raises(ValueError, match="unknown partition kind"):
        data.partition(LABELS, 2, "round-robin", seed=0)
    with pytest.raises(ValueError):
        data.partition(LABELS[:3], 4, "iid", seed=0)
    with pytest.raises(ValueError):
        data.partition(LABELS, 2, "dirichlet", seed=0, alpha=0)


# --- sampler, eval subset, holdout ----------------------------------------------------------------------------------
def test_sampler_no_repeat_within_epoch():
    indices = np.arange(100, 196)  # 96 samples
    s = data.BatchSampler(indices, seed=0)
    for _ in range(3):
        epoch = np.concatenate([s.next(32) for _ in range(3)])
        np.testing.assert_array_equal(np.sort(epoch), indices)
    assert s.epochs == 3.0


def test_sampler_epoch_crossing():
    indices = np.arange(10)
    s = data.BatchSampler(indices, seed=1)
    drawn = np.concatenate([s.next(4) for _ in range(5)])  # 20 samples = exactly 2 epochs
    np.testing.assert_array_equal(np.sort(drawn[:10]), indices)
    np.testing.assert_array_equal(np.sort(drawn[10:]), indices)
    assert not np.array_equal(drawn[:10], drawn[10:])  # reshuffled
    assert s.epochs == 2.0
    assert len(s.next(25)) == 25 and s.epochs == 4.5  # larger than the local set


def test_sampler_deterministic_and_validates():
    a, b = data.BatchSampler(np.arange(50), 7), data.BatchSampler(np.arange(50), 7)
    for size in (3, 20, 40):
        np.testing.assert_array_equal(a.next(size), b.next(size))
    with pytest.raises(ValueError):
        data.BatchSampler(np.array([], np.int64), 0)
    with pytest.raises(ValueError):
        a.next(0)


def test_eval_subset():
    a = data.eval_subset(10000, size=2000, seed=0)
    np.testing.assert_array_equal(a, data.eval_subset(10000, size=2000, seed=0))
    assert len(np.unique(a)) == 2000 and a.min() >= 0 and a.max() < 10000
    assert len(data.eval_subset(500, size=2000)) == 500


def test_holdout_split():
    indices = np.arange(1000, 2000)
    train, hold = data.holdout_split(indices, 0.1, seed=0)
    assert len(hold) == 100 and len(train) == 900
    assert not np.intersect1d(train, hold).size
    np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), indices)
    np.testing.assert_array_equal(hold, data.holdout_split(indices, 0.1, seed=0)[1])
    with pytest.raises(ValueError):
        data.holdout_split(indices, 1.0, seed=0)
