"""K seeds of one supervised configuration in one process (agents/supervised_seeds.py): the stacked
steps (fused and autograd) against each seed's own step, and a batched run against the single runs
of its seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from run_helpers import assert_records_once, read_jsonl

import train
from agents import supervised
from agents import supervised_seeds as seeds
from agents.checkpoints import load_checkpoint
from agents.networks import MLP, stack_parameters
from agents.run import seed_everything
from agents.supervised import autograd_step, build_model, build_stream, fused_sgd_step
from regularizers import (
    METHOD_FLAGS,
    METHODS,
    CBPConfig,
    ERankConfig,
    L2Config,
    L2InitConfig,
    ReDoConfig,
    SpectralConfig,
)
from validation import ConfigError


@pytest.mark.parametrize(
    ("loss", "activation", "batch", "active", "decay"),
    [
        ("cross-entropy", "relu", 1, None, 0.0),
        ("cross-entropy", "tanh", 4, 3, 1e-2),  # class-incremental: 3 classes live of 5
        ("mse", "leaky-relu", 3, None, 1e-3),
    ],
)
def test_a_stacked_step_is_each_seeds_own_fused_step(loss, activation, batch, active, decay):
    torch.manual_seed(0)
    k, width_in, width_out = 3, 7, 5
    models = [MLP(width_in, (6, 4), width_out, activation, "default") for _ in range(k)]
    alone = [MLP(width_in, (6, 4), width_out, activation, "default") for _ in range(k)]
    for model, twin in zip(models, alone, strict=True):
        twin.load_state_dict(model.state_dict())
    layers = seeds.layer_pairs(stack_parameters(models), models[0])
    for _ in range(3):
        x = torch.randn(k, batch, width_in)
        y = (
            torch.randn(k, batch, width_out)
            if loss == "mse"
            else torch.randint(0, active or width_out, (k, batch))
        )
        outputs, values = seeds.stacked_sgd_step(layers, activation, x, y, loss, active, 0.1, decay)
        for seed, twin in enumerate(alone):
            own_outputs, own_value = fused_sgd_step(
                twin, x[seed], y[seed], loss, active, 0.1, decay
            )
            torch.testing.assert_close(outputs[seed], own_outputs, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(values[seed], own_value, rtol=1e-5, atol=1e-6)
    for model, twin in zip(models, alone, strict=True):  # the networks' own views moved too
        for (name, mine), theirs in zip(
            model.state_dict().items(), twin.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("flags", "batch"),
    [
        # a penalty on the parameters themselves, with Adam (their grads reach .grad directly)
        (dict(regularizer="l2-init", optimizer="adam"), 1),
        # penalties on the weights, and SGD with momentum
        (dict(regularizer="parseval", momentum=0.9), 4),
        (dict(regularizer="spectral", optimizer="adam"), 2),
        # LayerNorm's gains and shifts in the stack, coupled decay in before_step
        (dict(regularizer="layernorm-l2", optimizer="adam"), 3),
        # an activation the fused step does not know
        (dict(regularizer="l2", activation="gelu", momentum=0.5), 2),
    ],
)
def test_a_stacked_autograd_step_is_each_seeds_own_step(tmp_path, flags, batch):
    """From the same initial networks and the same examples, three stacked steps move every seed
    exactly as three of its own `autograd_step`s (its optimizer, penalty and before_step)."""
    args = small(tmp_path, hidden_sizes=(8, 6), diagnostics=("none",), **flags)
    stream = build_stream(args)
    task = stream.task(0)

    def build(seed: int) -> seeds.Seed:
        one = seeds.Seed(dataclasses.replace(args, seed=seed), stream, run=None)
        seed_everything(seed)
        one.model, one.optimizer = build_model(one.args, stream, one.regularizer, "cpu")
        return one

    batched, alone = [build(s) for s in (1, 2, 3)], [build(s) for s in (1, 2, 3)]
    stacks = stack_parameters([one.model for one in batched], requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        rows = torch.randint(0, len(task.train_x), (3, batch), generator=generator)
        x, y = task.train_x[rows], task.train_y[rows]
        outputs, values = seeds.stacked_autograd_step(batched, stacks, x, y, stream.loss,
                                                      task.active_classes)  # fmt: skip
        for k, one in enumerate(alone):
            own_outputs, own_value = autograd_step(
                one.model, one.optimizer, one.regularizer, stream.loss, x[k], y[k], task
            )
            torch.testing.assert_close(outputs[k], own_outputs, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(values[k], own_value, rtol=1e-5, atol=1e-6)
    for k, (mine, theirs) in enumerate(zip(batched, alone, strict=True)):
        for (name, value), (_, own) in zip(
            mine.model.state_dict().items(), theirs.model.state_dict().items(), strict=True
        ):
            torch.testing.assert_close(value, own, rtol=1e-5, atol=1e-6, msg=name)
            assert torch.equal(value, stacks[name][k]), f"{name} is no longer a view of the stack"


def small(tmp_path: Path, **overrides) -> supervised.Args:
    base = dict(
        num_tasks=2, examples_per_task=200, hidden_sizes=(16,), dataset="digits", log_every=50,
        runs_dir=str(tmp_path), checkpoint_every=0, torch_threads=1, regularizer="shrink-perturb",
        diagnostics=("hessian",),
    )  # fmt: skip
    return dataclasses.replace(supervised.Args(), **(base | overrides))


def values(run_dir: Path, name: str) -> dict[tuple[int, str], float]:
    """{(step, key): value} of the metrics whose key contains `name`."""
    return {(row["step"], key): value for row in read_jsonl(run_dir / "metrics.jsonl")
            for key, value in row.items() if name in key}  # fmt: skip


def test_each_seed_of_a_batched_run_is_its_single_run(tmp_path):
    """Same config, same records (online accuracy exactly, losses and the Hessian to float
    rounding), the same events plus which seeds shared the process; and its checkpoint is a
    single run's, which resumes on its own into the single run's next task."""
    batched = seeds.train(small(tmp_path / "batched", seeds=(3, 5)))
    assert [json.loads((d / "config.json").read_text())["seed"] for d in batched] == [3, 5]
    for run_dir, seed in zip(batched, (3, 5), strict=True):
        alone = supervised.train(small(tmp_path / f"alone{seed}", seed=seed, num_tasks=3))
        assert_records_once(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        assert config == json.loads((alone / "config.json").read_text()) | {
            "runs_dir": str(tmp_path / "batched"), "num_tasks": 2,
        }  # fmt: skip
        mine, theirs = (
            values(run_dir, "charts/online_accuracy"),
            values(alone, "charts/online_accuracy"),
        )
        assert mine and mine == {key: v for key, v in theirs.items() if key[0] <= 400}
        for prefix in ("charts/train_loss", "task/heldout_loss", "lambda_max"):
            mine, theirs = values(run_dir, prefix), values(alone, prefix)
            assert mine.keys() <= theirs.keys() and mine, prefix
            for key, value in mine.items():
                assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (prefix, key)
        kinds = [e["event"] for e in read_jsonl(run_dir / "events.jsonl")]
        assert kinds == ["start", "stream", "shift", "finished"]
        (stream,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "stream"]
        assert stream["seeds_in_process"] == [3, 5]
        # Only this seed's weights in its checkpoint, and it resumes as a single run.
        state = load_checkpoint(run_dir)
        assert state["model"]["hidden.0.weight"].untyped_storage().nbytes() == 16 * 64 * 4
        train.main(["supervised", "--resume", str(run_dir), "--num-tasks", "3"])
        mine, theirs = (
            values(run_dir, "charts/online_accuracy"),
            values(alone, "charts/online_accuracy"),
        )
        assert mine == theirs and len(mine) == 3


def test_a_batched_autograd_run_is_its_seeds_single_runs(tmp_path):
    """Adam and L2 Init (a penalty, so the autograd step): each seed's records are its single
    run's, and its stream event says which step took the updates."""
    flags = dict(optimizer="adam", learning_rate=1e-3, regularizer="l2-init", diagnostics=("none",))
    batched = seeds.train(small(tmp_path / "batched", seeds=(3, 5), **flags))
    for run_dir, seed in zip(batched, (3, 5), strict=True):
        alone = supervised.train(small(tmp_path / f"alone{seed}", seed=seed, **flags))
        assert_records_once(run_dir)
        for prefix in ("charts/online_accuracy", "charts/train_loss", "task/heldout_loss"):
            mine, theirs = values(run_dir, prefix), values(alone, prefix)
            assert mine.keys() == theirs.keys() and mine, prefix
            for key, value in mine.items():
                assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (prefix, key)
        (stream,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "stream"]
        assert stream["update"] == "autograd" and "plain SGD only" in stream["why_not_fused"]


@pytest.mark.parametrize("regularizer", sorted(METHODS))
def test_every_regularizer_batched_is_its_single_runs(tmp_path, regularizer):
    """For each regularizer, each seed of a batched run records what its single run records:
    the online accuracy, the loss and the regularizer's own metrics (units CBP replaced, ReDo
    recycled, the ER step's effective rank...), at strengths that make every method act within
    two tasks of 200 examples."""
    strong = dict(
        cbp=CBPConfig(replacement_rate=0.05, maturity=5), redo=ReDoConfig(tau=0.5, every=20),
        erank=ERankConfig(lr=1e-2, every=20), spectral=SpectralConfig(strength=1.0, target=0.5),
        l2=L2Config(weight_decay=0.1), l2_init=L2InitConfig(strength=1.0),
    )  # fmt: skip
    flags = dict(regularizer=regularizer, diagnostics=("none",), log_every=20) | {
        name: config for name, config in strong.items() if name in METHOD_FLAGS[regularizer]
    }
    batched = seeds.train(small(tmp_path / "batched", seeds=(3, 5), **flags))
    for run_dir, seed in zip(batched, (3, 5), strict=True):
        alone = supervised.train(small(tmp_path / f"alone{seed}", seed=seed, **flags))
        for prefix in ("charts/online_accuracy", "charts/train_loss", "regularizer/"):
            mine, theirs = values(run_dir, prefix), values(alone, prefix)
            assert mine.keys() == theirs.keys(), prefix
            for key, value in mine.items():
                assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (prefix, key)
    # Each method acted (not a comparison of BP with itself): its losses are not BP's.
    bp_flags = dict(regularizer="none", diagnostics=("none",), log_every=20)
    bp = supervised.train(small(tmp_path / "bp", seed=5, **bp_flags))
    losses, bp_losses = values(alone, "charts/train_loss"), values(bp, "charts/train_loss")
    moved = max(abs(value - bp_losses[key]) for key, value in losses.items())
    assert (moved > 1e-3) == (regularizer != "none"), f"{regularizer}: {moved}"


@pytest.mark.slow
def test_seeds_stopped_resume_together_as_if_never_stopped(tmp_path):
    """A `--seeds 1 2` process killed by kill -9 after a task's checkpoint, resumed together
    (`--resume DIR1 DIR2`) in a process that a Ctrl-C then stops inside a task (each seed
    checkpoints where it stands), resumed together again to the end: each seed's records are
    the uninterrupted run's, every record once."""
    import random
    import signal
    import subprocess
    import time

    from run_helpers import cli_env, run_cli_in_process, train_command

    flags = ["--stream", "permuted-mnist", "--num-tasks", "3", "--examples-per-task", "1500",
             "--hidden-sizes", "16", "--regularizer", "shrink-perturb", "--diagnostics", "none",
             "--log-every", "250", "--checkpoint-every", "1500"]  # fmt: skip
    seeds = ["--seeds", "1", "2"]
    reference = run_cli_in_process("supervised", *flags, *seeds, "--runs-dir",
                                   str(tmp_path / "reference"))  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-2000:]
    stopped = tmp_path / "stopped"

    def start(*argv: str) -> subprocess.Popen:
        return subprocess.Popen(train_command("supervised", *argv), env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def wait_for(condition) -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not condition():
            time.sleep(0.02)

    process = start(*flags, *seeds, "--runs-dir", str(stopped))
    wait_for(lambda: len(list(stopped.glob("*/checkpoints/step_*"))) >= 2)
    time.sleep(random.uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    runs = sorted(path for path in stopped.iterdir() if path.is_dir())
    assert len(runs) == 2

    def logged_in_last_task() -> bool:
        steps = [row["step"] for run in runs for row in read_jsonl(run / "metrics.jsonl")]
        return any(3000 < step < 4500 for step in steps)

    process = start("--resume", *map(str, runs))
    wait_for(logged_in_last_task)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "continue them together with train.py supervised --resume" in stderr
    for run_dir in runs:
        (stop,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "interrupted"]
        assert 3000 < stop["step"] < 4500, stop  # inside the last task

    resumed = run_cli_in_process("supervised", "--resume", *map(str, runs))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run_dir, seed in zip(runs, (1, 2), strict=True):
        (twin,) = [d for d in (tmp_path / "reference").iterdir() if f"__{seed}__" in d.name]
        _, events = assert_records_once(run_dir)
        assert events[-1]["event"] == "finished"
        assert [e["seeds"] for e in events if e["event"] == "seeds_in_process"] == [[1, 2]] * 2
        for prefix in ("charts/online_accuracy", "charts/train_loss", "task/heldout_loss"):
            mine, theirs = values(run_dir, prefix), values(twin, prefix)
            assert mine.keys() == theirs.keys() and mine, prefix
            for key, value in mine.items():
                assert value == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (prefix, key)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "1", "1"], "--seeds: each seed once, got [1, 1]"),
        (["--seeds", "1", "2", "--optimizer", "adam", "--update", "fused"], "--update fused cannot run here: it is plain SGD only"),
        (["--seeds", "1", "4294967296"], "--seeds must be a seed in [0, 2**32)"),
    ],
)  # fmt: skip
def test_what_seeds_in_one_process_cannot_run_is_one_error_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        tiny = ["--dataset", "digits", "--num-tasks", "1", "--examples-per-task", "10"]
        train.main(["supervised", *tiny, *flags, "--runs-dir", str(tmp_path / "runs")])
    assert stopped.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert message in line
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_seed_that_diverges_stops_alone_and_is_named(tmp_path, monkeypatch):
    """One seed's weights turned NaN after it is built (an injected fault): its run records
    `diverged` at the first log line and ends; the other seed trains both tasks and finishes;
    the command ends with one error line naming the diverged seed."""
    build = seeds.Seed.build

    def build_then_poison(seed, device):
        build(seed, device)
        if seed.args.seed == 3:
            with torch.no_grad():
                seed.model.out.weight.fill_(float("nan"))

    monkeypatch.setattr(seeds.Seed, "build", build_then_poison)
    args = small(tmp_path, seeds=(3, 5), regularizer="none", diagnostics=("none",))
    with pytest.raises(
        ConfigError, match=r"1 of 2 seeds diverged \(seed 3: training diverged at step 50"
    ):
        seeds.train(args)
    poisoned, healthy = sorted(tmp_path.iterdir())  # seed 3's run, then seed 5's
    assert read_jsonl(poisoned / "events.jsonl")[-1]["event"] == "diverged"
    assert read_jsonl(healthy / "events.jsonl")[-1]["event"] == "finished"
    tasks = [m["charts/task"] for m in read_jsonl(healthy / "metrics.jsonl")
             if "charts/online_accuracy" in m]  # fmt: skip
    assert tasks == [0, 1]
    assert_records_once(poisoned)
    assert_records_once(healthy)
