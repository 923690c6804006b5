"""Users' own data: a source named by one string, loaded into a `data.Dataset`, its shape and classes checked.

A source (`training.data` for a dataset the peers share and partition, `peers[i].data` for one peer's own) is:
- a `.npz` file with arrays x_train, y_train and, optionally, x_test, y_test (read without pickle);
- a directory of IDX files with the standard MNIST names (train-images-idx3-ubyte, train-labels-idx1-ubyte,
  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz);
- a directory of images in class subfolders: `train/<class>/*.png|jpg` and optionally `test/<class>/...`, or the
  class folders directly (training only); classes are the sorted folder names, the same on every peer that has them;
- a callable `package.module:fn` or `path/to/file.py:fn` returning ((x_train, y_train), (x_test, y_test)) as
  `keras.datasets` do, a mapping with the four keys, or `tf.data.Dataset`s of (x, y) (one for training, or a
  mapping {"train": ..., "test": ...}).

Images are [N, ...] numeric arrays (uint8 stays uint8: the trainer scales it batch by batch); [N, H, W] gets a
channel axis. Labels must be integers in [0, classes). A problem with any of it is a `DataError` that names the
source and what to change. numpy only at import: a callable that builds a tf.data pipeline imports TensorFlow itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlion import hooks
from dlion.data import _FILES, DataError, Dataset, load_idx

SPLITS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load(spec: str) -> Dataset:
    """The dataset of a source (module docstring); raises DataError."""
    if hooks.is_hook(spec):
        return _checked(_from_callable(spec), spec)
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        return _checked(_from_npz(path), spec)
    if path.is_dir():
        if any((path / base).exists() or (path / (base + ".gz")).exists() for base in _FILES.values()):
            return _checked(_from_idx_dir(path), spec)
        return _checked(_from_image_dir(path), spec)
    raise DataError(f"data source {spec}: no such .npz file or directory; expected a .npz file, a directory of IDX "
                    f"files or of images in class folders, or a callable package.module:fn")


def shape_and_classes(dataset: Dataset) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a checked dataset: the largest label seen, plus one."""
    labels = [dataset.y_train] + ([dataset.y_test] if len(dataset.y_test) else [])
    return tuple(dataset.x_train.shape[1:]), int(max(int(y.max()) for y in labels)) + 1


def _from_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train") if k not in npz.files]
            if missing:
                raise DataError(f"data source {path}: missing arrays {missing}; expected x_train, y_train and "
                                f"optionally x_test, y_test (found {sorted(npz.files)})")
            return {k: npz[k] for k in SPLITS if k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"data source {path}: cannot read it as .npz ({exc})") from None


def _from_idx_dir(path: Path) -> dict:
    arrays = {}
    for key, base in _FILES.items():
        found = next((p for p in (path / (base + ".gz"), path / base) if p.is_file()), None)
        if found is None:
            if key.endswith("_test"):
                continue
            raise DataError(f"data source {path}: missing {base}[.gz]")
        arrays[key] = load_idx(found)
    return arrays


def _from_image_dir(path: Path) -> dict:
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"data source {path}: reading image folders needs Pillow (pip install pillow)") from None
    splits = {"train": path / "train", "test": path / "test"} if (path / "train").is_dir() else {"train": path}
    classes = sorted({c.name for d in splits.values() if d.is_dir() for c in d.iterdir() if c.is_dir()})
    if not classes:
        raise DataError(f"data source {path}: no class folders (expected {path}/train/<class>/*.png or "
                        f"{path}/<class>/*.png)")
    arrays = {}
    for split, directory in splits.items():
        if not directory.is_dir():
            continue
        images, labels = [], []
        for label, name in enumerate(classes):
            for file in sorted((directory / name).glob("*")) if (directory / name).is_dir() else ():
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    with Image.open(file) as image:
                        images.append(np.asarray(image))
                    labels.append(label)
        if not images:
            raise DataError(f"data source {directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
        if len({i.shape for i in images}) > 1:
            raise DataError(f"data source {directory}: images of different sizes {sorted({i.shape for i in images})}"
                            f"; resize them to one size first")
        arrays["x_" + split], arrays["y_" + split] = np.stack(images), np.asarray(labels)
    return arrays


def _from_callable(spec: str) -> dict:
    try:
        fn = hooks.import_hook(spec)
    except hooks.HookError as exc:
        raise DataError(str(exc)) from None
    result = fn()
    if isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, tuple) and len(r) == 2 for r in result):
        (x_train, y_train), (x_test, y_test) = result
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if isinstance(result, dict) and {"x_train", "y_train"} <= result.keys():
        return {k: result[k] for k in SPLITS if k in result}
    if isinstance(result, dict) and "train" in result:
        arrays = dict(zip(("x_train", "y_train"), _materialize(result["train"], spec)))
        if "test" in result:
            arrays.update(zip(("x_test", "y_test"), _materialize(result["test"], spec)))
        return arrays
    if hasattr(result, "element_spec"):
        return dict(zip(("x_train", "y_train"), _materialize(result, spec)))
    raise DataError(f"{spec}: returned {type(result).__name__}; expected ((x_train, y_train), (x_test, y_test)), a "
                    f"mapping with x_train, y_train[, x_test, y_test], or tf.data.Dataset(s) of (x, y)")


def _materialize(dataset: Any, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) arrays of a finite tf.data.Dataset of (x, y) pairs, batched or not."""
    element = getattr(dataset, "element_spec", None)
    if not (isinstance(element, tuple) and len(element) == 2):
        raise DataError(f"{spec}: a tf.data.Dataset must yield (x, y) pairs, it yields {element}")
    if element[1].shape.rank == 1:  # batched: a label vector per element
        dataset = dataset.unbatch()
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"{spec}: the tf.data.Dataset is empty")
    return np.stack(xs), np.asarray(ys)


def _checked(arrays: dict, spec: str) -> Dataset:
    """Arrays as a Dataset, or a DataError saying what is wrong with which array."""
    for split in ("train", "test"):
        x, y = arrays.get("x_" + split), arrays.get("y_" + split)
        if (x is None) != (y is None):
            raise DataError(f"data source {spec}: x_{split} and y_{split} come together; one is missing")
        if x is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind not in "uif" or x.ndim < 2:
            raise DataError(f"data source {spec}: x_{split} must be a numeric array [N, ...], got {x.dtype} "
                            f"{x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"data source {spec}: x_{split} has non-finite values")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"data source {spec}: y_{split} must be one label per sample ({len(x)}), got shape "
                            f"{y.shape}{' (one-hot labels? give class indices)' if y.ndim == 2 else ''}")
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise DataError(f"data source {spec}: y_{split} must hold integer class indices")
        if y.dtype.kind not in "uif" or (len(y) and y.min() < 0):
            raise DataError(f"data source {spec}: y_{split} must hold class indices >= 0")
        if x.ndim == 3:
            x = x[..., None]  # [N, H, W]: one channel
        if x.dtype.kind == "f":
            x = x.astype(np.float32, copy=False)
        elif x.dtype != np.uint8:
            x = x.astype(np.float32)
        arrays["x_" + split], arrays["y_" + split] = x, y.astype(np.int32)
    if len(arrays["y_train"]) == 0:
        raise DataError(f"data source {spec}: x_train is empty")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
        raise DataError(f"data source {spec}: x_test's samples {arrays['x_test'].shape[1:]} differ from x_train's "
                        f"{arrays['x_train'].shape[1:]}")
    empty_x = np.zeros((0, *arrays["x_train"].shape[1:]), arrays["x_train"].dtype)
    return Dataset(arrays["x_train"], arrays["y_train"], arrays.get("x_test", empty_x),
                   arrays.get("y_test", np.zeros(0, np.int32)))
