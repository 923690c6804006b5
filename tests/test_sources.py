"""Users' own data (dlion/sources.py) and how a peer reads it (wiring): every source form loads with its shape and
classes, every problem is a DataError naming the source, and a peer with its own file reads that file only."""
import gzip

import numpy as np
import pytest

from dlion import config, sources, wiring
from dlion.data import DataError
from dlion.stages import Requirements


def write_npz(path, n=40, shape=(8, 8, 3), classes=4, test=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 255, (n, *shape), dtype=np.uint8), "y_train": rng.integers(0, classes, n)}
    if test:
        arrays.update(x_test=rng.integers(0, 255, (10, *shape), dtype=np.uint8), y_test=np.arange(10) % classes)
    np.savez(path, **arrays)
    return path


def test_an_npz_file_gives_its_shape_and_classes(tmp_path):
    ds = sources.load(str(write_npz(tmp_path / "d.npz")))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert sources.shape_and_classes(ds) == ((8, 8, 3), 4)


def test_grey_images_get_a_channel_and_floats_stay_floats(tmp_path):
    np.savez(tmp_path / "g.npz", x_train=np.random.rand(20, 5, 5), y_train=np.arange(20) % 2)
    ds = sources.load(str(tmp_path / "g.npz"))
    assert ds.x_train.shape == (20, 5, 5, 1) and ds.x_train.dtype == np.float32 and len(ds.y_test) == 0


@pytest.mark.parametrize("arrays, problem", [
    ({"x_train": np.zeros((4, 3))}, "missing arrays"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.zeros((4, 2))}, "one-hot"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.array([0.5, 1, 2, 3])}, "integer class indices"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.array([0, -1, 2, 3])}, ">= 0"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.arange(3)}, "one label per sample"),
    ({"x_train": np.full((4, 3), np.nan), "y_train": np.arange(4)}, "non-finite"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.arange(4), "x_test": np.zeros((2, 5)), "y_test": np.arange(2)},
     "differ"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.arange(4), "x_test": np.zeros((2, 3))}, "come together"),
])
def test_bad_arrays_are_named(tmp_path, arrays, problem):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=problem) as err:
        sources.load(str(tmp_path / "bad.npz"))
    assert "bad.npz" in str(err.value)


def test_a_missing_source_says_what_a_source_is(tmp_path):
    with pytest.raises(DataError, match="expected a .npz file, a directory"):
        sources.load(str(tmp_path / "nothing.npz"))


def idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_a_directory_of_idx_files(tmp_path):
    idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 4, 4)))
    idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6) % 3)
    ds = sources.load(str(tmp_path))
    assert ds.x_train.shape == (6, 4, 4, 1) and sources.shape_and_classes(ds) == ((4, 4, 1), 3)


def test_a_directory_of_images_in_class_folders(tmp_path):
    from PIL import Image
    for split, n in (("train", 3), ("test", 1)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 6, 3), i * 40, np.uint8)).save(tmp_path / split / name / f"{i}.png")
    ds = sources.load(str(tmp_path))
    assert ds.x_train.shape == (6, 6, 6, 3) and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.x_test.shape == (2, 6, 6, 3) and ds.y_test.tolist() == [0, 1]


def test_a_hook_returning_keras_style_arrays(tmp_path):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.zeros((12, 7), np.float32)\n"
        "    return (x, np.arange(12) % 5), (x[:4], np.arange(4))\n"
        "def nothing():\n"
        "    return 42\n")
    ds = sources.load(f"{tmp_path / 'mydata.py'}:load")
    assert sources.shape_and_classes(ds) == ((7,), 5)
    with pytest.raises(DataError, match="returned int"):
        sources.load(f"{tmp_path / 'mydata.py'}:nothing")
    with pytest.raises(DataError, match="cannot import"):
        sources.load("no_such_module_here:load")


def own_data_config(tmp_path, **training):
    peers = [{"id": i, "port": 47600 + i, "data": str(tmp_path / f"peer-{i}.npz")} for i in range(3)]
    return config.parse({"peers": peers, "training": {"max_seconds": 10, "num_classes": 4, **training}})


def test_a_peer_with_its_own_file_reads_that_file_only(tmp_path):
    cfg = own_data_config(tmp_path)
    write_npz(tmp_path / "peer-1.npz", n=30, seed=1)  # peers 0 and 2 have no file on this host
    local = wiring._make_data(cfg, 1, None, Requirements(holdout=0.1))
    assert len(local.train_idx) + len(local.holdout_idx) + len(local.eval_idx) == 30, "its whole file, not a third"
    assert not set(local.eval_idx) & set(local.train_idx), "the stop rule's samples are never trained on"
    assert (local.input_shape, local.num_classes) == ((8, 8, 3), 4)
    with pytest.raises(DataError, match="peer-0.npz"):
        wiring._make_data(cfg, 0, None, Requirements())


def test_a_source_without_a_test_split_is_evaluated_on_held_out_samples(tmp_path):
    cfg = own_data_config(tmp_path)
    write_npz(tmp_path / "peer-0.npz", n=50, test=False)
    local = wiring._make_data(cfg, 0, None, Requirements())
    assert len(local.dataset.y_test) == 5 and len(local.dataset.y_train) == 45


def test_own_data_needs_the_number_of_classes_and_labels_within_it(tmp_path):
    peers = [{"id": 0, "port": 47600, "data": str(tmp_path / "peer-0.npz")}, {"id": 1, "port": 47601}]
    with pytest.raises(config.ConfigError, match="training.num_classes"):
        config.parse({"peers": peers, "training": {"max_seconds": 10}})
    write_npz(tmp_path / "peer-0.npz", classes=4)
    cfg = own_data_config(tmp_path, num_classes=3)
    with pytest.raises(DataError, match="beyond training.num_classes 3"):
        wiring._make_data(cfg, 0, None, Requirements())


def test_the_stop_rules_samples_are_held_out_of_training_and_shared_by_the_peers(tmp_path):
    write_npz(tmp_path / "shared.npz", n=300)
    peers = [{"id": i, "port": 47600 + i} for i in range(3)]
    cfg = config.parse({"peers": peers, "training": {"max_seconds": 10, "data": str(tmp_path / "shared.npz")},
                        "evaluation": {"subset": 20}})
    locals_ = [wiring._make_data(cfg, p, None, Requirements()) for p in range(3)]
    trained = set().union(*(set(local.train_idx) for local in locals_))
    assert len(trained) == 280 and not trained & set(locals_[0].eval_idx)
    assert all(np.array_equal(local.eval_idx, locals_[0].eval_idx) for local in locals_)
    x, y = locals_[0].evaluation()
    assert len(x) == 20 and np.array_equal(y, locals_[0].dataset.y_train[locals_[0].eval_idx])
    on_test = config.parse({"peers": peers, "training": {"max_seconds": 10, "data": str(tmp_path / "shared.npz")},
                            "evaluation": {"subset": 5, "on": "test"}})
    local = wiring._make_data(on_test, 0, None, Requirements())
    assert np.array_equal(local.evaluation()[1], local.dataset.y_test[local.eval_idx]) and len(local.eval_idx) == 5
