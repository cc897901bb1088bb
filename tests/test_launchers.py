"""The same tiny sweep through every launcher (local processes, submitit's local executor, a
real local Ray cluster) and by hand: the same cells, the same run records, the same report;
a cell is the same run as by hand bit for bit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import REPO, cli_env, run_cli, run_cli_in_process

from agents.checkpoints import load_checkpoint

# 2 methods x 3 tasks of the 8x8 digits, with a small Hessian at every boundary (seeds are one
# more axis of the same code: tests/test_sweep.py runs them)
TINY = ["supervised", "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "32",
        "--diagnostics", "hessian", "--diag.batch-size", "200", "--diag.lanczos-order", "10",
        "--checkpoint-every", "0"]  # fmt: skip
GRID = ["--grid", "regularizer=none,l2", "seed=2"]
CELLS = ["regularizer=l2__seed=2", "regularizer=none__seed=2"]


def report_numbers(path: Path, out: Path) -> dict:
    result = run_cli_in_process("report", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "report.json").read_text())
    return {key: summary[key] for key in ("methods", "table", "per_task", "r_squared")}


def accuracies(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["charts/online_accuracy"] for row in rows if "charts/online_accuracy" in row]


def only_run_dir(runs_dir: Path, regularizer: str, seed: str) -> Path:
    (run_dir,) = runs_dir.glob(f"*__{regularizer}__{seed}__*")
    return run_dir


def swept(sweep_dir: Path) -> dict[str, list[float]]:
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert sorted(manifest["cells"]) == CELLS
    assert {c["status"] for c in manifest["cells"].values()} == {"finished"}, manifest["cells"]
    assert all(c["attempts"] == 1 for c in manifest["cells"].values())
    return {cell: accuracies(Path(e["run_dir"])) for cell, e in manifest["cells"].items()}


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray cluster: these tests share one xdist worker
def test_every_launcher_and_a_hand_run_give_the_same_runs_and_report(tmp_path, ray_cluster):
    results, reports = {}, {}
    launchers = {
        "local": ["--workers", "2"],
        "slurm": ["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-time", "10"],
        "ray": ["--launcher", "ray", "--ray-cpus", "1"],
    }
    for name, flags in launchers.items():
        sweep_dir = tmp_path / name
        env = cli_env(**ray_cluster) if name == "ray" else None
        result = run_cli("sweep", *TINY, *GRID, "--sweep-dir", str(sweep_dir), *flags,
                         timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        results[name] = swept(sweep_dir)
        reports[name] = report_numbers(sweep_dir, tmp_path / f"report-{name}")
    for regularizer in ("none", "l2"):
        hand = run_cli(*TINY, "--regularizer", regularizer, "--seed", "2",
                       "--runs-dir", str(tmp_path / "hand"))  # fmt: skip
        assert hand.returncode == 0, hand.stderr[-2000:]
    reports["hand"] = report_numbers(tmp_path / "hand", tmp_path / "report-hand")

    by_hand = {
        f"regularizer={r}__seed=2": accuracies(only_run_dir(tmp_path / "hand", r, "2"))
        for r in ("none", "l2")
    }
    for name in launchers:
        assert results[name] == by_hand, name
        assert reports[name] == reports["hand"], name
    assert all(len(values) == 3 for values in by_hand.values())
    assert reports["hand"]["methods"] == ["bp", "l2"]
    assert reports["hand"]["r_squared"], "the Hessian at each boundary gives eps-rank points"

    # A cell is the run by hand bit for bit (the supervised stream is deterministic).
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    entry = local["cells"]["regularizer=l2__seed=2"]
    swept_state = load_checkpoint(entry["run_dir"])
    hand_state = load_checkpoint(only_run_dir(tmp_path / "hand", "l2", "2"))
    for name, value in hand_state["model"].items():
        assert torch.equal(swept_state["model"][name], value), name
    assert local["code"]["commit"]
    # Each run records how it was started and from which code: what the report shows.
    start = json.loads((Path(entry["run_dir"]) / "events.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["step"] == 0
    assert "--seed 2" in start["command"] and "train.py supervised" in start["command"]
    assert start["code"]["commit"] == local["code"]["commit"]
    # Run again: nothing to do.
    again = run_cli_in_process("sweep", *TINY, *GRID, "--sweep-dir", str(tmp_path / "local"))
    assert again.returncode == 0 and "2 cells, 0 to run" in again.stderr, again.stderr[-2000:]


@pytest.mark.parametrize("launcher, extra", [("slurm", "slurm"), ("ray", "ray")])
def test_a_launcher_whose_engine_is_not_installed_is_one_error_line(tmp_path, launcher, extra):
    # The engine's module made unimportable in this process only, as on a machine without it.
    code = (f"import sys, runpy; sys.modules[{('submitit' if launcher == 'slurm' else 'ray')!r}] = None; "
            f"sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path('train.py', run_name='__main__')")  # fmt: skip
    flags = ["--slurm-cluster", "local"] if launcher == "slurm" else []
    result = subprocess.run(
        [sys.executable, "-c", code, "sweep", *TINY, "--grid", "seed=1", "--launcher", launcher,
         *flags, "--sweep-dir", str(tmp_path / "s")],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --launcher {launcher} needs {'submitit' if launcher == 'slurm' else 'Ray'}: "
        f'pip install -e ".[{extra}]" (make test installs it)'
    )


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "kubernetes"], "--launcher 'kubernetes': choose one of local, slurm, ray"),
    (["--slurm-partition", "gpu"], "--slurm-partition is a flag of --launcher slurm, not of --launcher local"),
    (["--launcher", "ray", "--workers", "2"], "--workers is a flag of --launcher local"),
    (["--launcher", "slurm", "--slurm-time", "0"], "--slurm-time must be >= 1, got 0"),
    (["--launcher", "ray", "--ray-cpus", "two"], "--ray-cpus must be a float, got 'two'"),
])  # fmt: skip
def test_bad_launcher_flags_are_one_error_line(tmp_path, flags, message):
    result = run_cli_in_process("sweep", *TINY, "--grid", "seed=1", *flags, "--sweep-dir",
                                str(tmp_path / "s"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "s").exists()


def test_a_ray_address_where_nothing_answers_is_one_error_line_at_once(tmp_path):
    with socket.socket() as probe:  # a port nothing listens at: bound, never listened on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        # Ray alone would retry for minutes; the timeout is a guard against that hang.
        result = run_cli("sweep", *TINY, "--grid", "seed=1", "--launcher", "ray", "--sweep-dir",
                         str(tmp_path / "s"), env=cli_env(RAY_ADDRESS=address), timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --launcher ray: nothing answers at RAY_ADDRESS={address} (Connection refused); "
        "is the cluster up?"
    )
    assert not (tmp_path / "s").exists()
