"""The supervised-stream learner: it learns, every regularizer runs in it, and a run across task
boundaries leaves metrics, shift events and diagnostics like an RL run."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from agents import supervised
from agents.networks import MLP
from diagnostics import DiagnosticsConfig
from envs.streams import STREAMS
from regularizers import REGULARIZERS, ERankConfig
from validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def small_args(tmp_path: Path, **overrides) -> supervised.Args:
    base = dict(
        num_tasks=2,
        examples_per_task=300,
        hidden_sizes=(32,),
        runs_dir=str(tmp_path),
        checkpoint_every=0,
        torch_threads=1,
        diagnostics=("none",),
    )
    base.update(overrides)
    if "dataset" in STREAMS[base.get("stream", "permuted-mnist")]:
        base.setdefault("dataset", "digits")  # the 8x8 digits: fast
    return dataclasses.replace(supervised.Args(), **base)


def task_metrics(run_dir: Path) -> list[dict]:
    return [m for m in read_jsonl(run_dir / "metrics.jsonl") if "task/heldout_loss" in m]


def test_online_sgd_learns_the_first_permuted_task_well_above_chance(tmp_path):
    # one pass over the 1,497 permuted 8x8 digits, batch 1, the paper's lr 0.01
    run = supervised.train(
        small_args(tmp_path, num_tasks=1, examples_per_task=0, hidden_sizes=(64,))
    )
    (first,) = task_metrics(run)
    assert first["charts/online_accuracy"] > 0.5  # chance is 0.1
    assert first["task/heldout_accuracy"] > 0.7


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_every_regularizer_runs_in_the_supervised_stream(tmp_path, name):
    run = supervised.train(small_args(tmp_path, regularizer=name))
    metrics = task_metrics(run)
    assert [m["charts/task"] for m in metrics] == [0, 1]
    assert all(math.isfinite(m["task/train_loss"]) for m in metrics)
    events = read_jsonl(run / "events.jsonl")
    assert [e["task"] for e in events if e["event"] == "shift"] == [1]


@pytest.mark.parametrize(
    "stream, options",
    [("class-incremental", {"classes_per_task": 5}), ("slowly-changing-regression", {}),
     ("random-label-mnist", {"subset": 200})],
)  # fmt: skip
def test_other_streams_run(tmp_path, stream, options):
    run = supervised.train(small_args(tmp_path, stream=stream, **options))
    metrics = task_metrics(run)
    assert len(metrics) == 2 and all(math.isfinite(m["task/heldout_loss"]) for m in metrics)
    if stream == "slowly-changing-regression":
        assert "charts/online_accuracy" not in metrics[0]


@pytest.mark.slow
def test_cli_run_measures_the_hessian_at_every_task_boundary(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "supervised", "--dataset", "digits", "--num-tasks", "2",
         "--examples-per-task", "300", "--hidden-sizes", "32", "--regularizer", "l2-er",
         "--erank.every", "100", "--diag.batch-size", "100", "--diag.lanczos-order", "20",
         "--runs-dir", str(tmp_path), "--checkpoint-every", "0", "--track"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    files = sorted(p.name for p in (run / "diagnostics").glob("*.npz"))
    assert files == ["step_0000000000.npz", "step_0000000300.npz", "step_0000000600.npz"]
    boundary = np.load(run / "diagnostics" / "step_0000000300.npz")
    assert (int(boundary["task_end"]), int(boundary["task_init"])) == (0, 1)
    assert np.isfinite(boundary["init/model/hessian/top"]).all()
    assert np.isfinite(boundary["end/model/ggn/top"]).all()
    metrics = read_jsonl(run / "metrics.jsonl")
    assert any("regularizer/erank/model" in m for m in metrics), "the ER step never ran"
    assert [m["charts/task"] for m in metrics if "charts/online_accuracy" in m] == [0, 1]
    assert (run / "plots" / "eps_rank.png").exists()


def test_missing_fashion_mnist_gets_one_clear_line(tmp_path, monkeypatch):
    import envs.datasets

    monkeypatch.setattr(envs.datasets, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent")
    args = small_args(tmp_path, stream="permuted-fashion-mnist")
    with pytest.raises(supervised.ConfigError, match="dataset-fashion-mnist"):
        supervised.train(args)


def test_presets_resolve():
    _, paper, _ = train.parse("supervised", ["--preset", "permuted-mnist"])
    assert paper.hidden_sizes == (1000, 1000, 1000) and paper.batch_size == 1
    assert paper.learning_rate == 0.01 and paper.optimizer == "sgd"
    assert paper.regularizer == "l2-er" and paper.erank.every == 100 and paper.erank.lr == 1e-2
    assert paper.l2.weight_decay == 1e-3  # the paper's L2-ER (docs/paper.md), not L2's own 1e-4
    assert paper.diag_every_tasks == 10 and paper.diag == DiagnosticsConfig(
        batch_size=2000, plot=True
    )


# --- the fused SGD step -----------------------------------------------------------------------


def autograd_sgd_steps(model, batches, loss, active_classes, lr, decay):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=decay)
    outputs = []
    for x, y in batches:
        out, _ = model(x)
        outputs.append(out.detach())
        optimizer.zero_grad()
        supervised.task_loss(out, y, loss, active_classes).backward()
        optimizer.step()
    return outputs


@pytest.mark.parametrize(
    "activation, batch, loss, active_classes, decay",
    [("relu", 1, "cross-entropy", None, 0.0), ("relu", 1, "cross-entropy", None, 1e-2),
     ("relu", 16, "cross-entropy", 4, 1e-2), ("tanh", 1, "mse", None, 0.0),
     ("leaky-relu", 5, "mse", None, 1e-3), ("tanh", 16, "cross-entropy", None, 0.0)],
)  # fmt: skip
def test_fused_step_gives_the_autograd_sgd_step(activation, batch, loss, active_classes, decay):
    torch.manual_seed(0)
    out_dim = 3 if loss == "mse" else 7
    model = MLP(11, (13, 9), out_dim, activation, "kaiming-uniform").double()
    for layer in (*model.hidden, model.out):
        torch.nn.init.normal_(layer.bias, std=0.3)  # nonzero biases, or their update goes unchecked
    twin = copy.deepcopy(model)
    batches = []
    for _ in range(20):
        x = torch.randn(batch, 11, dtype=torch.float64)
        if loss == "mse":
            y = torch.randn(batch, out_dim, dtype=torch.float64)
        else:
            y = torch.randint(0, active_classes or out_dim, (batch,))
        batches.append((x, y))
    expected = autograd_sgd_steps(twin, batches, loss, active_classes, 0.1, decay)
    for (x, y), want in zip(batches, expected, strict=True):
        out, value = supervised.fused_sgd_step(model, x, y, loss, active_classes, 0.1, decay)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
        assert value.item() == pytest.approx(
            supervised.task_loss(want, y, loss, active_classes).item()
        )
    for (name, param), other in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(param, other, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_and_autograd_runs_agree_with_l2_er(tmp_path):
    runs = {
        update: supervised.train(
            small_args(
                tmp_path / update,
                regularizer="l2-er",
                update=update,
                erank=ERankConfig(lr=1e-2, every=20),
            )
        )
        for update in ("fused", "autograd")
    }
    fused, plain = (task_metrics(runs[u]) for u in ("fused", "autograd"))
    for a, b in zip(fused, plain, strict=True):
        assert a["task/train_loss"] == pytest.approx(b["task/train_loss"], rel=1e-4)
        assert a["task/heldout_loss"] == pytest.approx(b["task/heldout_loss"], rel=1e-4)
        assert abs(a["charts/online_accuracy"] - b["charts/online_accuracy"]) <= 2 / 300
    events = {
        u: next(e for e in read_jsonl(runs[u] / "events.jsonl") if e["event"] == "stream")
        for u in runs
    }
    assert events["fused"]["update"] == "fused" and events["autograd"]["update"] == "autograd"


def test_auto_falls_back_to_autograd_and_fused_refuses_with_a_reason(tmp_path):
    run = supervised.train(small_args(tmp_path, optimizer="adam", learning_rate=1e-3))
    (stream_event,) = [e for e in read_jsonl(run / "events.jsonl") if e["event"] == "stream"]
    assert stream_event["update"] == "autograd" and "SGD" in stream_event["why_not_fused"]
    with pytest.raises(ConfigError, match="--update fused cannot run here: --regularizer l2-init"):
        supervised.train(small_args(tmp_path, regularizer="l2-init", update="fused"))


def test_kaiming_uniform_is_he_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = MLP(784, (1000, 1000), 10, "relu", "kaiming-uniform")
    for layer in (*model.hidden, model.out):
        fan_in = layer.weight.shape[1]
        bound = math.sqrt(6 / fan_in)
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.99 * bound
        assert layer.weight.var().item() == pytest.approx(2 / fan_in, rel=0.05)
        assert torch.count_nonzero(layer.bias) == 0
    default = MLP(784, (1000,), 10, "relu", "torch-default")
    assert default.hidden[0].weight.abs().max() <= 1 / math.sqrt(784)


@pytest.mark.slow
def test_a_run_stopped_mid_task_by_sigterm_resumes_as_if_never_stopped(tmp_path):
    flags = [
        "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "256", "256",
        "--regularizer", "l2-er", "--erank.lr", "1e-2", "--erank.every", "100",
        "--log-every", "50", "--checkpoint-every", "0", "--diagnostics", "none",
        "--torch-threads", "1",
    ]  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), "supervised", *flags]
    env = {**os.environ, "WANDB_MODE": "offline"}
    whole = subprocess.run(
        [*command, "--runs-dir", str(tmp_path / "whole")], env=env, capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr[-2000:]

    runs = tmp_path / "stopped"
    process = subprocess.Popen(
        [*command, "--runs-dir", str(runs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline and process.poll() is None:
        found = list(runs.glob("*/metrics.jsonl"))
        if found and '"charts/running_accuracy"' in found[0].read_text():
            metrics = found[0]
            break
        time.sleep(0.05)
    assert metrics is not None, "the run never logged"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "--resume" in stderr.decode()
    run_dir = metrics.parent
    (stopped,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "interrupted"]
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert checkpoint["position"] is not None, "expected a stop between two steps of a task"
    assert 0 < stopped["step"] < 3 * 1497

    resumed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "supervised", "--resume", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (whole_dir,) = (tmp_path / "whole").iterdir()
    final = torch.load(whole_dir / "checkpoints" / "latest.pt", weights_only=False)
    again = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert again["examples_seen"] == final["examples_seen"] == 3 * 1497
    for name, value in final["model"].items():
        assert torch.equal(again["model"][name], value), name
    ours, theirs = task_metrics(run_dir), task_metrics(whole_dir)
    assert [m["charts/online_accuracy"] for m in ours] == [
        m["charts/online_accuracy"] for m in theirs
    ]
    assert [m["task/train_loss"] for m in ours] == [m["task/train_loss"] for m in theirs]


def test_a_tasks_end_is_measured_on_the_network_that_finished_it_even_under_reset(tmp_path):
    """The boundary's end is measured after the regularizer's shift action has run; it must
    still read the network that finished the old task: the same numbers as a run that simply
    ended there (before the fix it measured the freshly reset network)."""
    common = dict(regularizer="reset", diagnostics=("hessian",), hidden_sizes=(16,))
    ended = supervised.train(small_args(tmp_path / "one", num_tasks=1, **common))
    went_on = supervised.train(small_args(tmp_path / "two", num_tasks=2, **common))

    def end_of_task_0(run_dir: Path) -> dict[str, float]:
        rows = [row for row in read_jsonl(run_dir / "metrics.jsonl") if row["step"] == 300]
        return {k: v for row in rows for k, v in row.items()
                if k.startswith("shift/end/") and not k.endswith("seconds")}  # fmt: skip

    measured = end_of_task_0(went_on)
    assert measured and any("lambda_max" in key for key in measured)
    for key, value in end_of_task_0(ended).items():
        assert measured[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
