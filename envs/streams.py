"""Task streams for the supervised-stream mode: a task boundary is a shift, as in the RL wrappers.

A learner asks a `Stream` for `task(t)` and trains on `train_x`/`train_y` in that order; the
`Task` also carries a held-out set drawn from the same task and a JSON-able `params` dict for
the shift event log. Every task's parameters (a permutation, labels, a flipped bit, the order
of the examples) are a pure function of (seed, task) through `task_rng`, so a resumed run
rebuilds exactly the tasks it had.

    stream = make_stream("permuted-mnist", num_tasks=800, examples_per_task=0, seed=1)
    for t in range(stream.num_tasks):
        task = stream.task(t)

Streams (`make_stream` options in brackets):

- permuted-mnist [dataset]: a fixed random pixel permutation per task, task 0 included
  (Dohare et al. 2024; the paper's main supervised benchmark).
- permuted-fashion-mnist: the same on Fashion-MNIST.
- random-label-mnist [dataset, subset]: one fixed subset, fresh random labels every task.
- class-incremental [dataset, classes_per_task]: task t adds `classes_per_task` classes.
- slowly-changing-regression: 20 input bits, one of 15 slow bits flips per task; the target is
  a fixed random LTU network (Dohare et al. 2021, 2024).

A new stream is one `Stream` subclass and one line in `STREAMS`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from envs.datasets import Dataset, load_dataset
from envs.schedule import task_rng
from validation import ConfigError

StreamName = Literal[
    "permuted-mnist",
    "permuted-fashion-mnist",
    "random-label-mnist",
    "class-incremental",
    "slowly-changing-regression",
]


@dataclass
class Task:
    """One task of a stream: what the learner trains on, and a held-out set of the same task."""

    index: int
    train_x: Tensor
    """(examples_per_task, input_dim) float32, in the order the learner sees them."""
    train_y: Tensor
    """int64 class labels (n,), or float32 regression targets (n, 1)."""
    heldout_x: Tensor
    heldout_y: Tensor
    active_classes: int | None
    """class-incremental: how many classes (in stream order) are live, labels 0..active-1;
    the learner masks the logits of the others. None for every other stream."""
    params: dict[str, Any]
    """JSON-able description of what this task changed, for the shift event log."""


class Stream:
    """A sequence of `num_tasks` tasks; subclasses set the class attributes and `_build`."""

    name: str
    loss: ClassVar[Literal["cross-entropy", "mse"]] = "cross-entropy"
    input_dim: int
    output_dim: int
    source: str
    """Where the data come from, for logs and reports."""

    def __init__(self, num_tasks: int, examples_per_task: int, seed: int):
        self.num_tasks = num_tasks
        self.examples_per_task = examples_per_task
        """0 means one pass over the task's pool of training examples."""
        self.seed = seed

    def task(self, index: int) -> Task:
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"{self.name} has tasks 0..{self.num_tasks - 1}, asked for {index}")
        return self._build(index, task_rng(self.seed, index, self.name))

    def _build(self, index: int, rng: np.random.Generator) -> Task:
        raise NotImplementedError


def example_order(rng: np.random.Generator, pool_size: int, count: int) -> np.ndarray:
    """Indices into a pool of `pool_size` examples in the order a task presents them.

    count 0 is one shuffled pass over the pool; a larger count chains fresh shuffled passes
    (every example seen once before any is seen twice) and cuts the last one short.
    """
    if count == 0:
        return rng.permutation(pool_size)
    passes = -(-count // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(passes)])[:count]


def _crc32(array: np.ndarray) -> int:
    # A short, stable fingerprint for the event log instead of 784 integers per task.
    return zlib.crc32(np.ascontiguousarray(array, dtype=np.int64).tobytes())


class ImageStream(Stream):
    """Base of the streams built from a classification data set."""

    def __init__(self, dataset: Dataset, num_tasks: int, examples_per_task: int, seed: int):
        super().__init__(num_tasks, examples_per_task, seed)
        self.dataset = dataset
        self.train_x = torch.from_numpy(dataset.train_x)
        self.train_y = torch.from_numpy(dataset.train_y)
        self.test_x = torch.from_numpy(dataset.test_x)
        self.test_y = torch.from_numpy(dataset.test_y)
        self.input_dim = dataset.train_x.shape[1]
        self.output_dim = dataset.num_classes
        self.source = dataset.source


class PermutedStream(ImageStream):
    """Every task, task 0 included, shows the images through its own fixed pixel permutation;
    labels are unchanged (Permuted MNIST, Dohare et al. 2024)."""

    def __init__(
        self, name: str, dataset: Dataset, num_tasks: int, examples_per_task: int, seed: int
    ):
        super().__init__(dataset, num_tasks, examples_per_task, seed)
        self.name = name

    def _build(self, index: int, rng: np.random.Generator) -> Task:
        permutation = rng.permutation(self.input_dim)
        order = torch.from_numpy(example_order(rng, len(self.train_y), self.examples_per_task))
        pixels = torch.from_numpy(permutation)
        return Task(
            index=index,
            train_x=self.train_x[order][:, pixels],
            train_y=self.train_y[order],
            heldout_x=self.test_x[:, pixels],
            heldout_y=self.test_y.clone(),
            active_classes=None,
            params={"permutation_crc32": _crc32(permutation), "dataset": self.dataset.name},
        )


class RandomLabelStream(ImageStream):
    """A fixed subset of the training images with fresh uniform random labels every task.

    Nothing carries over between tasks, so the task is pure memorisation; the held-out set is
    the same subset with this task's labels (it measures how well the labels were memorised).
    """

    name = "random-label-mnist"

    def __init__(
        self, dataset: Dataset, num_tasks: int, examples_per_task: int, seed: int, subset: int
    ):
        super().__init__(dataset, num_tasks, examples_per_task, seed)
        # The subset is one draw per stream seed (task 0's stream of a separate name), the
        # same for every task.
        subset_rng = task_rng(seed, 0, f"{self.name}/subset")
        chosen = np.sort(subset_rng.choice(len(dataset.train_y), size=subset, replace=False))
        self.subset_x = self.train_x[torch.from_numpy(chosen)]
        self.subset_size = subset

    def _build(self, index: int, rng: np.random.Generator) -> Task:
        labels = rng.integers(self.output_dim, size=self.subset_size)
        order = example_order(rng, self.subset_size, self.examples_per_task)
        labels_tensor = torch.from_numpy(labels.astype(np.int64))
        order_tensor = torch.from_numpy(order)
        return Task(
            index=index,
            train_x=self.subset_x[order_tensor],
            train_y=labels_tensor[order_tensor],
            heldout_x=self.subset_x.clone(),
            heldout_y=labels_tensor,
            active_classes=None,
            params={
                "labels_crc32": _crc32(labels),
                "subset": self.subset_size,
                "dataset": self.dataset.name,
            },
        )


class ClassIncrementalStream(ImageStream):
    """Classes arrive in a seeded order; task t trains on the first classes_per_task * (t + 1)
    of them, relabelled by arrival so that the live classes are 0..active_classes-1."""

    name = "class-incremental"

    def __init__(
        self,
        dataset: Dataset,
        num_tasks: int,
        examples_per_task: int,
        seed: int,
        classes_per_task: int,
    ):
        super().__init__(dataset, num_tasks, examples_per_task, seed)
        self.classes_per_task = classes_per_task
        order_rng = task_rng(seed, 0, f"{self.name}/class-order")
        self.class_order = order_rng.permutation(dataset.num_classes)
        relabel = np.empty(dataset.num_classes, dtype=np.int64)
        relabel[self.class_order] = np.arange(dataset.num_classes)
        self.relabel = torch.from_numpy(relabel)
        """relabel[original class] = its position in the stream order."""

    def _build(self, index: int, rng: np.random.Generator) -> Task:
        active = self.classes_per_task * (index + 1)
        live = torch.from_numpy(self.class_order[:active])
        pool = torch.nonzero(torch.isin(self.train_y, live)).squeeze(1)
        heldout = torch.nonzero(torch.isin(self.test_y, live)).squeeze(1)
        order = pool[torch.from_numpy(example_order(rng, len(pool), self.examples_per_task))]
        return Task(
            index=index,
            train_x=self.train_x[order],
            train_y=self.relabel[self.train_y[order]],
            heldout_x=self.test_x[heldout],
            heldout_y=self.relabel[self.test_y[heldout]],
            active_classes=active,
            params={
                "classes": self.class_order[:active].tolist(),
                "new_classes": self.class_order[active - self.classes_per_task : active].tolist(),
                "dataset": self.dataset.name,
            },
        )


class SlowlyChangingRegression(Stream):
    """Slowly-changing regression (Dohare et al. 2021, "Continual backprop"; Nature 2024).

    Inputs are m = 20 bits: the first f = 15 are slow bits, drawn at random for task 0, of
    which exactly one (drawn per task) flips at every task boundary; the last 5 are redrawn
    uniformly for every example. The target is a fixed random network of 100 linear threshold
    units (LTUs), drawn once per stream seed and the same for all tasks:

        x1 = (x, 1)                        the input with a constant bias bit
        h_i = 1 if w_i . x1 > theta_i      w_i in {-1, +1}^(m+1)
        theta_i = (m + 1) * beta - S_i     S_i = number of negative entries of w_i, beta = 0.7
        y = v . h + v_0                    v in {-1, +1}^100, v_0 in {-1, +1}

    so unit i fires when more than 70% of the m + 1 bits agree with its weight pattern (w = +1
    on a 1, w = -1 on a 0). The constants (m = 20, f = 15, 100 LTUs, beta = 0.7, one flip per
    10,000 examples) are those of the authors' config (shibhansh/loss-of-plasticity,
    lop/slowly_changing_regression/cfg/flip_one_prob.json), and the bias bit and output bias
    follow their target network (lop/nets/fix_ltu_net.py). One difference: their code counts
    S_i as (m - sum(w_i) + b_i) / 2, which is not an integer count; here S_i is the number of
    negative weights including the bias weight, the paper's wording.
    """

    name = "slowly-changing-regression"
    loss = "mse"
    num_bits = 20
    num_slow_bits = 15
    num_hidden = 100
    beta = 0.7
    heldout_size = 1_000
    default_examples_per_task = 10_000

    def __init__(self, num_tasks: int, examples_per_task: int, seed: int):
        super().__init__(num_tasks, examples_per_task or self.default_examples_per_task, seed)
        self.input_dim = self.num_bits
        self.output_dim = 1
        self.source = f"synthetic LTU target network (seed {seed})"
        target_rng = task_rng(seed, 0, f"{self.name}/target")
        self.hidden_weights = target_rng.choice(
            [-1.0, 1.0], size=(self.num_hidden, self.num_bits + 1)
        )
        """(100, m + 1): the last column is the weight on the constant bias bit."""
        self.output_weights = target_rng.choice([-1.0, 1.0], size=self.num_hidden)
        self.output_bias = float(target_rng.choice([-1.0, 1.0]))
        negative = (self.hidden_weights < 0).sum(axis=1)
        self.thresholds = (self.num_bits + 1) * self.beta - negative
        self._flipped_bits: list[int | None] = []
        """_flipped_bits[t]: the slow bit that flipped at the start of task t (None for 0)."""
        self._initial_slow_bits = task_rng(seed, 0, f"{self.name}/flip").integers(
            2, size=self.num_slow_bits
        )

    def target(self, x: np.ndarray) -> np.ndarray:
        """The target network's output for bit inputs x of shape (n, m): shape (n,)."""
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        hidden = (x1 @ self.hidden_weights.T > self.thresholds).astype(np.float64)
        return hidden @ self.output_weights + self.output_bias

    def slow_bits(self, index: int) -> np.ndarray:
        """The slow bits in effect during task `index`: task 0's bits with every flip since."""
        while len(self._flipped_bits) <= index:
            t = len(self._flipped_bits)
            flip_rng = task_rng(self.seed, t, f"{self.name}/flip")
            self._flipped_bits.append(
                None if t == 0 else int(flip_rng.integers(self.num_slow_bits))
            )
        bits = self._initial_slow_bits.copy()
        for flipped in self._flipped_bits[1 : index + 1]:
            bits[flipped] ^= 1
        return bits

    def _examples(
        self, rng: np.random.Generator, slow: np.ndarray, count: int
    ) -> tuple[Tensor, Tensor]:
        fast = rng.integers(2, size=(count, self.num_bits - self.num_slow_bits))
        x = np.concatenate([np.broadcast_to(slow, (count, self.num_slow_bits)), fast], axis=1)
        y = self.target(x)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(
            y.astype(np.float32)[:, None]
        )

    def _build(self, index: int, rng: np.random.Generator) -> Task:
        slow = self.slow_bits(index)
        # Examples are drawn i.i.d., so drawing them in sequence is already a seeded order.
        train_x, train_y = self._examples(rng, slow, self.examples_per_task)
        heldout_x, heldout_y = self._examples(rng, slow, self.heldout_size)
        return Task(
            index=index,
            train_x=train_x,
            train_y=train_y,
            heldout_x=heldout_x,
            heldout_y=heldout_y,
            active_classes=None,
            params={"slow_bits": slow.tolist(), "flipped_bit": self._flipped_bits[index]},
        )


STREAMS: dict[str, tuple[str, ...]] = {
    # stream name: the keyword options make_stream accepts for it
    "permuted-mnist": ("dataset",),
    "permuted-fashion-mnist": (),
    "random-label-mnist": ("dataset", "subset"),
    "class-incremental": ("dataset", "classes_per_task"),
    "slowly-changing-regression": (),
}

_DATASETS_ALLOWED = {
    "permuted-mnist": ("mnist", "digits"),
    "random-label-mnist": ("mnist", "digits"),
    "class-incremental": ("mnist", "fashion-mnist", "digits"),
}


def load_data(name: str, data_dir: str | None, download: bool) -> Dataset:
    """`load_dataset`, with a missing, unreadable or malformed file as a ConfigError (one line
    naming the file and what to pass instead)."""
    try:
        return load_dataset(name, data_dir, download)
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None


def make_stream(
    name: StreamName,
    num_tasks: int,
    examples_per_task: int,
    seed: int,
    data_dir: str | None = None,
    download: bool = False,
    **stream_options: Any,
) -> Stream:
    """Build stream `name`; raises ConfigError (one line naming the flag) for bad settings.

    examples_per_task = 0 means one pass over the task's training pool (60,000 images per task
    for Permuted MNIST on the full data set; 10,000 examples for slowly-changing regression).
    Options: dataset ("mnist" default, "digits" for fast runs), subset (random-label, default
    1,000), classes_per_task (class-incremental, default 2).
    """
    if name not in STREAMS:
        raise ConfigError(f"--stream {name!r} is not a stream; choose one of {', '.join(STREAMS)}")
    if num_tasks < 1:
        raise ConfigError(f"--num-tasks must be at least 1, got {num_tasks}")
    if examples_per_task < 0:
        raise ConfigError(
            f"--examples-per-task must be >= 0 (0 = one pass over the data), got {examples_per_task}"
        )
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    unknown = sorted(set(stream_options) - set(STREAMS[name]))
    if unknown:
        accepted = ", ".join(STREAMS[name]) or "none"
        raise ConfigError(
            f"stream {name} does not take option(s) {', '.join(unknown)} (accepts: {accepted})"
        )

    if name == "slowly-changing-regression":
        return SlowlyChangingRegression(num_tasks, examples_per_task, seed)
    if name == "permuted-fashion-mnist":
        dataset = load_data("fashion-mnist", data_dir, download)
        return PermutedStream(name, dataset, num_tasks, examples_per_task, seed)

    dataset_name = stream_options.get("dataset", "mnist")
    if dataset_name not in _DATASETS_ALLOWED[name]:
        raise ConfigError(
            f"--dataset {dataset_name!r} is not available for {name}; choose one of "
            f"{', '.join(_DATASETS_ALLOWED[name])}"
        )
    dataset = load_data(dataset_name, data_dir, download)
    if name == "permuted-mnist":
        return PermutedStream(name, dataset, num_tasks, examples_per_task, seed)
    if name == "random-label-mnist":
        subset = stream_options.get("subset", 1_000)
        if not 1 <= subset <= len(dataset.train_y):
            raise ConfigError(
                f"--subset must be between 1 and the {len(dataset.train_y):,} training images of "
                f"{dataset_name}, got {subset}"
            )
        return RandomLabelStream(dataset, num_tasks, examples_per_task, seed, subset)
    classes_per_task = stream_options.get("classes_per_task", 2)
    if classes_per_task < 1:
        raise ConfigError(f"--classes-per-task must be at least 1, got {classes_per_task}")
    if num_tasks * classes_per_task > dataset.num_classes:
        raise ConfigError(
            f"--num-tasks {num_tasks} x --classes-per-task {classes_per_task} exceeds the "
            f"{dataset.num_classes} classes of {dataset_name}: at most "
            f"{dataset.num_classes // classes_per_task} tasks"
        )
    return ClassIncrementalStream(dataset, num_tasks, examples_per_task, seed, classes_per_task)
