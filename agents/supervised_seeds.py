"""K seeds of one supervised configuration in one process: `train.py supervised --seeds 1 2 3`.

At batch size 1 a step of a small network is per-operation overhead, not arithmetic, so K
networks stacked along a seed axis take one batched step for little more than one network's
cost (docs/benchmarks.md: 2.2x the examples of one seed alone at K = 3 on one CPU core, ~200x
at K = 256 on a GPU).

Each seed is still an ordinary run. It has its own stream, regularizer, diagnostics and Run,
and writes the run directory that `--seed S` alone writes (config.json with its seed, metrics,
events, checkpoints, diagnostics). Its network is an ordinary MLP whose parameters are views
into the stacked tensors, so the step updates every seed in place at once, and whatever acts on
one seed's network (a regularizer's shift or reset, the diagnostics, a checkpoint) does so
through the same code as a single run. Its checkpoints are single-run checkpoints: a stopped
seed resumes on its own with `train.py supervised --resume RUN_DIR`.

Two steps, as a single run has (--update): the fused SGD step on the stacked weights (plain
SGD, relu / leaky-relu / tanh, no penalty term), and otherwise the autograd step: one forward
and backward through the stacks (agents.networks.stacked_mlp), then per seed, on its own slice
of the gradient, the single run's own calls: its regularizer's penalty on its own features,
before_step, its optimizer's step (Adam, momentum, LayerNorm, every regularizer). After either
step each seed's regularizer acts as in a single run; ER's ascent step is one for all seeds
(one batched SVD per layer) while no seed has diverged.

A seed that diverges stops alone: its run records `diverged` and ends, the others go on, and
the command ends with one error line naming it. Stopped, the K runs resume together
(`train.py supervised --resume DIR1 DIR2 ...`, agents/cli.py: parse_resume_together) from
their checkpoints at the newest step all of them have, inside a task where the stop left them;
or each alone (`--resume DIR`). PPO's seeds in one process: agents/ppo_seeds.py.
"""

from __future__ import annotations

import functools
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.checkpoints import Resumed, set_rng_state
from agents.networks import MLP, stack_parameters, stacked_mlp, take_seed_gradient
from agents.progress import progress_bar
from agents.run import (
    Diverged,
    Interrupted,
    Run,
    check_no_seed_diverged,
    end_diverged,
    resumed_seed_configs,
    seed_configs,
    seed_everything,
    seeds_training,
    start_seed_runs,
)
from agents.supervised import (
    ACTIVATION_DERIVATIVES,
    Args,
    TaskRecords,
    build_model,
    build_stream,
    check_args,
    checkpoint_state,
    finished_task_probe,
    fused_update_blocker,
    live_outputs,
    restore_checkpoint,
    start_run,
    task_end_metrics,
    task_probe,
    window_features,
)
from diagnostics import Diagnostics, TaskBoundaries
from regularizers import build_regularizer
from regularizers.base import SeedStacks, after_update_seeds
from validation import ConfigError

# The activations the fused step knows, as the MLP applies them (agents.networks.ACTIVATIONS).
FORWARD = {"relu": F.relu, "leaky-relu": F.leaky_relu, "tanh": torch.tanh}


@torch.no_grad()
def stacked_sgd_step(
    layers: list[tuple[Tensor, Tensor]],
    activation: str,
    x: Tensor,
    y: Tensor,
    loss: str,
    active_classes: int | None,
    lr: float,
    decay: float,
) -> tuple[Tensor, Tensor]:
    """`fused_sgd_step` for K networks at once: layers[i] = (weight (K, out, in), bias (K, out)),
    x (K, batch, in), y (K, batch) (or (K, batch, out) for MSE); seed k takes its own step on
    (x[k], y[k]). Returns the outputs before the step (K, batch, out) and each seed's loss (K,)."""
    forward, derivative = FORWARD[activation], ACTIVATION_DERIVATIVES[activation]
    inputs = [x]
    for weight, bias in layers[:-1]:
        inputs.append(forward(torch.baddbmm(bias[:, None, :], inputs[-1], weight.transpose(1, 2))))
    weight, bias = layers[-1]
    outputs = torch.baddbmm(bias[:, None, :], inputs[-1], weight.transpose(1, 2))
    seeds, batch = x.shape[0], x.shape[1]
    if loss == "mse":
        values = ((outputs - y) ** 2).mean(dim=(1, 2))
        delta = (outputs - y) * (2.0 / (batch * outputs.shape[2]))
    else:
        live = live_outputs(outputs, active_classes)
        log_probabilities = torch.log_softmax(live, dim=-1)
        values = -log_probabilities.gather(-1, y[..., None]).squeeze(-1).mean(dim=1)
        probabilities = log_probabilities.exp()
        rows = torch.arange(seeds, device=x.device)[:, None]
        probabilities[rows, torch.arange(batch, device=x.device)[None, :], y] -= 1.0
        delta = torch.zeros_like(outputs)
        delta[..., : live.shape[-1]] = probabilities / batch
    keep = 1.0 - lr * decay
    for index in range(len(layers) - 1, -1, -1):
        (weight, bias), below = layers[index], inputs[index]
        next_delta = torch.bmm(delta, weight) * derivative(below) if index > 0 else None
        weight.baddbmm_(delta.transpose(1, 2), below, beta=keep, alpha=-lr)
        if keep != 1.0:
            bias.mul_(keep)
        bias.add_(delta.sum(1), alpha=-lr)
        delta = next_delta
    return outputs, values


def layer_pairs(stacks: dict[str, Tensor], model: MLP) -> list[tuple[Tensor, Tensor]]:
    """The stacks (agents.networks.stack_parameters) as (weight, bias) per layer, the hidden
    layers then the output layer: what `stacked_sgd_step` takes."""
    names = [*(f"hidden.{i}" for i in range(len(model.hidden))), "out"]
    return [(stacks[f"{name}.weight"], stacks[f"{name}.bias"]) for name in names]


def stacked_autograd_step(
    seeds: list[Seed],
    stacks: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss: str,
    active_classes: int | None,
) -> tuple[Tensor, Tensor]:
    """`autograd_step` for K networks at once: x (K, batch, in), y (K, batch) (or (K, batch,
    out) for MSE). One forward and backward through the stacks; then per seed, on its own slice
    of the gradient (take_seed_gradient), the single run's calls: before_step, its optimizer's
    step. A
    diverged seed is neither penalised nor stepped. Returns the outputs before the step
    (K, batch, out) and each seed's loss (K,), detached."""
    outputs, features = stacked_mlp(seeds[0].model, stacks, "", x)
    if loss == "mse":
        values = ((outputs - y) ** 2).mean(dim=(1, 2))
    else:
        live = live_outputs(outputs, active_classes)
        per_example = F.cross_entropy(live.flatten(0, 1), y.flatten(), reduction="none")
        values = per_example.view(y.shape).mean(1)
    total = values.sum()
    for k, seed in enumerate(seeds):
        if not seed.diverged:
            total = total + seed.regularizer.penalty({"model": [h[k] for h in features]})
    for stack in stacks.values():
        stack.grad = None
    for seed in seeds:
        seed.optimizer.zero_grad(set_to_none=True)
    total.backward()
    for k, seed in enumerate(seeds):
        if seed.diverged:
            continue
        take_seed_gradient(seed.model, stacks, k)
        seed.regularizer.before_step()
        seed.optimizer.step()
    return outputs.detach(), values.detach()


def check_seeds(args: Args) -> list[Args]:
    """One clear line for what --seeds cannot run, else each seed's config."""
    per_seed = seed_configs(args, "supervised")
    blocker = fused_update_blocker(args, build_regularizer(args))
    if args.update == "fused" and blocker is not None:
        raise ConfigError(f"--update fused cannot run here: {blocker}")
    return per_seed


class Seed:
    """One seed's ordinary run inside the batched process."""

    def __init__(self, args: Args, stream, run: Run):
        self.args, self.stream, self.run = args, stream, run
        self.regularizer = build_regularizer(args)
        self.guard, self.stop, self.diverged = ExitStack(), None, None
        self.model = self.optimizer = self.diagnostics = self.boundaries = None
        self.records: TaskRecords | None = None
        # Where the run goes on: its next task, examples seen, and the interrupted task's
        # position (a checkpoint inside a task), as a single run resumes (agents/supervised.py).
        self.start_task, self.examples_seen, self.position = 0, 0, None

    def build(self, device) -> None:
        """The network, optimizer and diagnostics, from the random state a single run of this
        seed builds them from; on a resume, from its checkpoint."""
        seed_everything(self.args.seed)
        self.model, self.optimizer = build_model(self.args, self.stream, self.regularizer, device)
        self.diagnostics = Diagnostics(self.args, self.run.logger, self.args.seed)
        self.diagnostics.attach({"model": self.model}, [self.optimizer])
        self.boundaries = TaskBoundaries(self.diagnostics, wanted=0, min_samples=0)
        if self.run.checkpoint is not None:
            learner = (self.model, self.optimizer, self.regularizer, self.diagnostics)
            self.start_task, self.examples_seen, self.position = restore_checkpoint(
                *learner, self.run.checkpoint
            )

    def state(self, examples_seen: int, next_task: int, position: dict | None = None) -> dict:
        """A single-run checkpoint: this seed's own weights, not the stack its views point into."""
        state = checkpoint_state(self.model, self.optimizer, self.regularizer, self.diagnostics,
                                 examples_seen, next_task, position)  # fmt: skip
        state["model"] = {name: tensor.clone() for name, tensor in state["model"].items()}
        return state


def train(args: Args, resumed: list[Resumed] | None = None) -> list[Path]:
    """Train each of args.seeds as its own run, all K networks stepped together; return the K
    run directories. `resumed`: each seed's saved config and checkpoint, at one step
    (`--resume DIR1 DIR2 ...`, agents/cli.py)."""
    per_seed = check_seeds(args)
    if resumed:
        per_seed = resumed_seed_configs(args, per_seed, resumed)
    check_args(per_seed[0])
    streams = [build_stream(one) for one in per_seed]
    stream_of = dict(zip((one.seed for one in per_seed), streams, strict=True))
    seeds = start_seed_runs(
        per_seed, resumed, lambda one, own: Seed(one, stream_of[one.seed], start_run(one, own))
    )
    with seeds_training(seeds):
        device = seeds[0].run.device
        for seed in seeds:
            seed.build(device)
        if resumed:  # one global stream in the process: where every seed's checkpoint left it
            set_rng_state(seeds[0].run.checkpoint["rng"])
        first = seeds[0]
        blocker = fused_update_blocker(first.args, first.regularizer)
        fused = args.update != "autograd" and blocker is None
        stacks = stack_parameters([seed.model for seed in seeds], requires_grad=not fused)
        loss = first.stream.loss
        if fused:
            step = functools.partial(
                stacked_sgd_step, layer_pairs(stacks, first.model), args.activation, loss=loss,
                lr=args.learning_rate, decay=first.regularizer.coupled_decay(),
            )  # fmt: skip
        else:
            step = functools.partial(stacked_autograd_step, seeds, stacks, loss=loss)
        for seed in seeds:
            if seed.run.checkpoint is None:
                seed.run.event(0, "stream", source=seed.stream.source, loss=loss,
                               update="fused" if fused else "autograd",
                               why_not_fused=blocker if args.update != "autograd" else None,
                               seeds_in_process=list(args.seeds))  # fmt: skip
            else:
                seed.run.event(seed.examples_seen, "seeds_in_process", seeds=list(args.seeds))
        for seed in seeds:
            seed.run.setting_up = False
        train_together(args, seeds, stacks, step, device)
    check_no_seed_diverged({seed.args.seed: seed.diverged for seed in seeds if seed.diverged},
                           len(seeds))  # fmt: skip
    return [seed.run.dir for seed in seeds]


def train_together(args: Args, seeds: list[Seed], stacks: dict[str, Tensor], step, device) -> None:
    """The single run's loop (agents/supervised.py), each step one stacked step for all seeds
    (`step(x, y, active_classes)`: `stacked_sgd_step` or `stacked_autograd_step`).
    A seed that diverges ends its run there; its network keeps its place in the stack (its
    NaNs stay in its own slice), and nothing more is done or written for it."""
    first = seeds[0]
    loss, classification = first.stream.loss, first.stream.loss == "cross-entropy"
    window = min(2048, args.batch_size * max(1, first.regularizer.recent_updates()))
    per_task = len(first.stream.task(0).train_x)
    # 0, or where every seed's checkpoint was taken (resume_together: one step for all).
    start_task, examples_seen = first.start_task, first.examples_seen
    assert all((s.start_task, s.examples_seen) == (start_task, examples_seen) for s in seeds)
    bar = progress_bar(per_task * args.num_tasks * len(seeds), examples_seen * len(seeds),
                       f"supervised {args.stream}, {len(seeds)} seeds")  # fmt: skip
    first.run.on_close(bar.close)
    previous = [seed.stream.task(start_task - 1) if start_task > 0 else None for seed in seeds]
    for t in range(start_task, args.num_tasks):
        tasks = [seed.stream.task(t) for seed in seeds]
        if (
            len({len(task.train_x) for task in tasks}) > 1
            or len({task.active_classes for task in tasks}) > 1
        ):
            raise ConfigError("--seeds needs every seed's task to have the same size and classes")
        positions = [seed.position if t == start_task else None for seed in seeds]
        for seed, task, before, position in zip(seeds, tasks, previous, positions, strict=True):
            if seed.diverged or position is not None:  # resumed inside t: its start happened
                continue
            due = seed.diagnostics.enabled and t % args.diag_every_tasks == 0
            end = (
                finished_task_probe(args, seed.model, seed.optimizer, before, loss, device)
                if due and before
                else None
            )
            if t > 0:
                seed.run.event(examples_seen, "shift", task=t, params=task.params)
                shift_metrics = seed.regularizer.on_shift()
                if shift_metrics:
                    seed.run.log(examples_seen,
                                 {f"regularizer/{k}": v for k, v in shift_metrics.items()})  # fmt: skip
            if due:
                seed.boundaries.begin(examples_seen, t - 1 if t > 0 else None, t, end)
                seed.boundaries.measure(task_probe(args, seed.model, task, loss, True, device))

        x_all = torch.stack([task.train_x for task in tasks]).to(device)
        y_all = torch.stack([task.train_y for task in tasks]).to(device)
        n = x_all.shape[1]
        # One buffer for all seeds, each seed's TaskRecords a view of its row: one write a step
        # (a resumed task's records so far copied in).
        records = [TaskRecords.start(n, args.batch_size, device, p) for p in positions]
        assert len({record.steps for record in records}) == 1
        losses = torch.stack([record.losses for record in records])
        predictions = torch.stack([record.predictions for record in records])
        for index, seed in enumerate(seeds):
            records[index].losses, records[index].predictions = losses[index], predictions[index]
            seed.records = records[index]
        steps_start = time.perf_counter()
        for index in range(records[0].steps, len(records[0].sizes)):
            start = index * args.batch_size
            end = min(start + args.batch_size, n)
            outputs, losses[:, index] = step(
                x_all[:, start:end], y_all[:, start:end], active_classes=tasks[0].active_classes
            )
            if classification:
                predictions[:, start:end] = live_outputs(outputs, tasks[0].active_classes).argmax(
                    -1
                )
            for seed in seeds:
                seed.records.steps = index + 1
            live = [k for k, seed in enumerate(seeds) if not seed.diverged]
            recent = [functools.partial(window_features, seeds[k].model, x_all[k],
                                        max(0, end - window), end) for k in live]  # fmt: skip
            # Batched across seeds only while every seed is live: a diverged seed's NaNs stay
            # in its slice of the stacks, and an SVD of them would fail.
            on_window = None
            if len(live) == len(seeds):
                on_window = window_stacks(first.model, stacks, x_all, max(0, end - window), end)
            for k, metrics in zip(live, after_update_seeds(
                [seeds[k].regularizer for k in live], recent, on_window, end >= n
            ), strict=True):  # fmt: skip
                seeds[k].records.regularizer_metrics |= metrics
            examples_seen += end - start
            if end - records[0].logged >= args.log_every and end < n:
                for k, seed in enumerate(seeds):
                    if not seed.diverged:
                        log_running(seed, examples_seen, t, y_all[k], end, classification)
                bar.update((end - records[0].logged) * len(seeds))
                for record in records:
                    record.logged = end
            if any(seed.stop.requested for seed in seeds) and end < n:
                seconds = time.perf_counter() - steps_start
                live = [seed for seed in seeds if not seed.diverged]
                states = [seed.state(examples_seen, t, seed.records.position(end, seconds))
                          for seed in live]  # fmt: skip
                stop_all(live, examples_seen, states)
        seconds = time.perf_counter() - steps_start
        bar.update((n - records[0].logged) * len(seeds))
        for seed, task in zip(seeds, tasks, strict=True):
            if seed.diverged:
                continue
            seed.records.train_seconds += seconds  # with a resumed task's before the stop
            try:
                train_loss = seed_loss(seed, examples_seen, t)
            except Diverged as error:
                seed.diverged = end_diverged(seed.guard, error)
                continue
            metrics = task_end_metrics(seed.model, task, loss, seed.records.predictions,
                                       seed.records.logged, train_loss)  # fmt: skip
            metrics["charts/examples_per_second"] = n / max(seed.records.train_seconds, 1e-9)
            metrics["charts/learning_rate"] = seed.optimizer.param_groups[0]["lr"]
            metrics |= {f"regularizer/{k}": v for k, v in seed.records.regularizer_metrics.items()}
            seed.run.log(examples_seen, metrics)
        previous = tasks
        live = [seed for seed in seeds if not seed.diverged]
        if not live:
            return
        if any(seed.stop.requested for seed in seeds) and t + 1 < args.num_tasks:
            stop_all(live, examples_seen, [seed.state(examples_seen, t + 1) for seed in live])
        if all([seed.run.checkpoint_due(examples_seen) for seed in live]):  # one schedule
            for seed in live:
                seed.run.save(examples_seen, seed.state(examples_seen, t + 1))
    for seed, task in zip(seeds, previous, strict=True):
        if seed.diverged:
            continue
        if seed.diagnostics.enabled and task is not None:
            end = task_probe(args, seed.model, task, loss, False, device)
            seed.boundaries.finish(examples_seen, args.num_tasks - 1, end)
        seed.run.finish(examples_seen, seed.state(examples_seen, args.num_tasks))
        seed.diagnostics.finish(examples_seen)


def window_stacks(
    model: MLP, stacks: dict[str, Tensor], x: Tensor, start: int, end: int
) -> SeedStacks:
    """The stacks as a method batched across seeds sees them: every seed's hidden features on
    its examples x[:, start:end] (`window_features` for all seeds at once)."""
    return SeedStacks(
        {"model": stacks},
        lambda params: {"model": stacked_mlp(model, params["model"], "", x[:, start:end])[1]},
    )


def seed_loss(seed: Seed, examples_seen: int, task: int) -> float:
    """The seed's mean loss in the task so far; a non-finite one names the seed."""
    try:
        return seed.records.mean_loss(examples_seen, task)
    except Diverged as error:
        raise Diverged(error.step, f"seed {seed.args.seed}: {error}") from None


def log_running(
    seed: Seed, examples_seen: int, task: int, y: Tensor, end: int, classification: bool
) -> None:
    """A seed's running log line inside a task, as a single run writes it (a non-finite loss
    ends its run as diverged)."""
    records = seed.records
    try:
        train_loss = seed_loss(seed, examples_seen, task)
    except Diverged as error:
        seed.diverged = end_diverged(seed.guard, error)
        return
    metrics = {"charts/train_loss": train_loss, "charts/task": task}
    if classification:
        hits = records.predictions[records.logged : end] == y[records.logged : end]
        metrics["charts/running_accuracy"] = int(hits.sum()) / len(hits)
    metrics |= {f"regularizer/{k}": v for k, v in records.regularizer_metrics.items()}
    seed.run.log(examples_seen, metrics)


def stop_all(seeds: list[Seed], examples_seen: int, states: list[dict]) -> None:
    """On a signal: every seed records the stop and checkpoints, then the process stops."""
    for seed, state in zip(seeds, states, strict=True):
        seed.run.event(examples_seen, "interrupted", checkpoint=f"step_{examples_seen}.pt")
        seed.run.save(examples_seen, state)
    directories = " ".join(str(seed.run.dir) for seed in seeds)
    raise Interrupted(
        f"stopped at step {examples_seen} with a checkpoint in each seed's run directory; "
        f"continue them together with train.py supervised --resume {directories} (or each "
        "alone with --resume RUN_DIR)"
    )
