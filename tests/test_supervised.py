"""The supervised-stream learner: it learns, every regularizer runs in it, and a run across task
boundaries leaves metrics, shift events and diagnostics like an RL run."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents import supervised
from diagnostics import DiagnosticsConfig
from regularizers import REGULARIZERS

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def small_args(tmp_path: Path, **overrides) -> supervised.Args:
    base = dict(
        dataset="digits",
        num_tasks=2,
        examples_per_task=300,
        hidden_sizes=(32,),
        runs_dir=str(tmp_path),
        checkpoint_every=0,
        torch_threads=1,
        diagnostics=("none",),
    )
    base.update(overrides)
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
    paper = supervised.preset_args("permuted-mnist")
    assert paper.hidden_sizes == (1000, 1000, 1000) and paper.batch_size == 1
    assert paper.learning_rate == 0.01 and paper.optimizer == "sgd"
    assert paper.regularizer == "l2-er" and paper.erank.every == 100 and paper.erank.lr == 1e-2
    assert paper.diag_every_tasks == 10 and paper.diag == DiagnosticsConfig(
        batch_size=2000, plot=True
    )
