"""train.py sweep: real processes, real run directories, a real kill (local and on a real Ray
cluster); the same runs through every launcher and by hand: tests/test_launchers.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from run_helpers import (
    REPO,
    assert_records_once,
    cli_env,
    error_line,
    run_cli,
    run_cli_in_process,
    train_command,
)

# 2 methods x 2 seeds x 3 tasks of the 8x8 digits
TINY = ["supervised", "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "32",
        "--diagnostics", "none", "--checkpoint-every", "1"]  # fmt: skip
GRID = ["--grid", "regularizer=none,l2", "seed=1,2"]


def manifest(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "manifest.json").read_text())


# Slurm's stop reaches its jobs as Ray's does (the sweep's stop file: experiments/launchers.py),
# and a sweep through submitit's local executor is tested in tests/test_launchers.py.
LAUNCHERS = {
    "local": ["--workers", "2"],
    "ray": ["--launcher", "ray", "--ray-cpus", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", ["local", pytest.param("ray", marks=pytest.mark.xdist_group("ray"))]
)
def test_a_sweep_killed_half_way_completes_on_the_rerun_with_no_cell_run_twice(
    tmp_path, launcher, request
):
    sweep_dir = tmp_path / "sweep"
    env = cli_env()
    if launcher == "ray":
        env.update(request.getfixturevalue("ray_cluster"))
    slow = ["supervised", "--dataset", "digits", "--num-tasks", "5", "--hidden-sizes", "256", "256",
            "--diagnostics", "none", "--checkpoint-every", "1"]  # fmt: skip
    argv = [
        "sweep",
        *slow,
        "--grid",
        "seed=1,2,3,4" if launcher == "local" else "seed=1,2,3",
        "--sweep-dir",
        str(sweep_dir),
        *LAUNCHERS[launcher],
    ]
    process = subprocess.Popen(train_command(*argv), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:  # until some cell has a checkpoint, and none has finished all
        if list(sweep_dir.glob("cells/*/*/checkpoints/step_*.pt")):
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command again" in stderr, stderr[-2000:]
    first = manifest(sweep_dir)["cells"]
    assert "interrupted" in {c["status"] for c in first.values()}, first

    rerun = run_cli(*argv, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    cells = manifest(sweep_dir)["cells"]
    assert {c["status"] for c in cells.values()} == {"finished"}
    for cell_id, cell in cells.items():
        runs = [p for p in (sweep_dir / "cells" / cell_id).iterdir() if p.is_dir()]
        assert len(runs) == 1, runs  # one run directory per cell
        metrics, _ = assert_records_once(runs[0])  # no record written twice
        assert [m["charts/task"] for m in metrics if "charts/online_accuracy" in m] == list(
            range(5)
        )
        if first[cell_id]["status"] == "finished":
            assert cell["attempts"] == 1, cell_id  # never run again


@pytest.mark.slow
def test_a_stopped_seed_group_resumes_together(tmp_path):
    """A PPO seed group stopped by Ctrl-C: its cells are interrupted at one checkpoint step,
    the rerun resumes them in one process (`--resume DIR1 DIR2`, shown by --dry-run) to the
    end, each run with every record once."""
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", "ppo", "--preset", "continual-cartpole", "--hidden-sizes", "16",
            "--num-steps", "256", "--num-minibatches", "4", "--total-timesteps", "8192",
            "--shift-every", "2048", "--checkpoint-every", "512", "--diagnostics", "none",
            "--grid", "seed=1,2", "--workers", "1", "--sweep-dir", str(sweep_dir)]  # fmt: skip
    process = subprocess.Popen(train_command(*argv), cwd=REPO, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep_dir.glob("cells/*/*/checkpoints/step_*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert {c["status"] for c in manifest(sweep_dir)["cells"].values()} == {"interrupted"}

    dry = run_cli_in_process(*argv, "--dry-run")
    (line,) = dry.stdout.splitlines()[:-1]
    run_dirs = [cell["run_dir"] for cell in manifest(sweep_dir)["cells"].values()]
    assert line.startswith("seed=1, seed=2: ") and f"--resume {' '.join(run_dirs)}" in line, line
    rerun = run_cli_in_process(*argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for cell in manifest(sweep_dir)["cells"].values():
        assert cell["status"] == "finished" and cell["attempts"] == 2
        metrics, events = assert_records_once(Path(cell["run_dir"]))
        assert [m["step"] for m in metrics if "losses/value_loss" in m] == list(
            range(256, 8193, 256)
        )
        (resume,) = [e for e in events if e["event"] == "resume"]
        assert [e["seeds"] for e in events if e["event"] == "seeds_in_process"] == [[1, 2]] * 2


@pytest.mark.slow
def test_cells_that_differ_only_in_seed_run_as_one_process_with_a_line_per_cell(tmp_path):
    """The local launcher groups the cells of one configuration into one `--seeds` process:
    2 methods x 2 seeds are 2 processes, and each cell still holds its own run (its seed in its
    config, the process's seeds in its events) and its own manifest line. --no-group-seeds and
    flags the batched learner refuses run one process a cell (their commands, by --dry-run)."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli_in_process(
        "sweep", *TINY, *GRID, "--sweep-dir", str(sweep_dir), "--workers", "2"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cells = manifest(sweep_dir)["cells"]
    assert sorted(cells) == ["regularizer=l2__seed=1", "regularizer=l2__seed=2",
                             "regularizer=none__seed=1", "regularizer=none__seed=2"]  # fmt: skip
    assert {c["status"] for c in cells.values()} == {"finished"}
    for cell_id, cell in cells.items():
        runs = [p for p in (sweep_dir / "cells" / cell_id).iterdir() if p.is_dir()]
        assert len(runs) == 1 and str(runs[0]) == cell["run_dir"]
        assert json.loads((runs[0] / "config.json").read_text())["seed"] == int(cell_id[-1])
        assert_records_once(runs[0])
        events = [json.loads(line) for line in (runs[0] / "events.jsonl").read_text().splitlines()]
        assert [e["seeds_in_process"] for e in events if e["event"] == "stream"] == [[1, 2]]
        assert "run directory" in (sweep_dir / "cells" / cell_id / "cell.log").read_text()
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 4  # a line per cell, not per process

    def commands(*flags: str) -> list[str]:
        dry = run_cli_in_process("sweep", *TINY, *flags, *GRID, "--dry-run",
                                 "--sweep-dir", str(tmp_path / "dry"))  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        return dry.stdout.splitlines()[:-1]

    grouped = commands()
    assert [line.split(": ")[0] for line in grouped] == [
        "regularizer=none__seed=1, regularizer=none__seed=2",
        "regularizer=l2__seed=1, regularizer=l2__seed=2",
    ]
    assert all("--seeds 1 2" in line and "seed={seed}" in line for line in grouped)
    single = commands("--no-group-seeds")
    assert len(single) == 4 and not any("--seeds" in line for line in single)
    # Adam takes the autograd step, which is batched too.
    assert [line.split(": ")[0] for line in commands("--optimizer", "adam")] == [
        line.split(": ")[0] for line in grouped
    ]


def test_cells_the_batched_learner_refuses_run_one_process_each(tmp_path):
    """PPO's --seeds refuses --target-kl (an early stop per seed): --dry-run shows those cells
    as one process each, and the same grid without it as one --seeds process."""
    argv = ["sweep", "ppo", "--preset", "continual-cartpole", "--grid", "seed=1,2",
            "--workers", "1", "--sweep-dir", str(tmp_path / "sweep"), "--dry-run"]  # fmt: skip
    grouped = run_cli_in_process(*argv)
    assert grouped.returncode == 0, grouped.stderr
    (line,) = grouped.stdout.splitlines()[:-1]
    assert line.startswith("seed=1, seed=2: ") and "--seeds 1 2" in line
    alone = run_cli_in_process(*argv, "--target-kl", "0.02")
    assert alone.returncode == 0, alone.stderr
    lines = alone.stdout.splitlines()[:-1]
    assert [line.split(": ")[0] for line in lines] == ["seed=1", "seed=2"]
    assert not any("--seeds" in line for line in lines)


def test_a_seed_group_is_cut_so_that_no_worker_idles(tmp_path):
    """One configuration's 6 seeds: one --seeds process on 1 worker, two of 3 seeds on 2 (each
    a one-thread process on its own core), and on 4 workers four parts, a part of one seed an
    ordinary cell; with 2 configurations on 2 workers, a process each. Slurm and Ray keep a
    group whole (--dry-run's commands)."""

    def processes(*flags: str) -> list[tuple[str, str]]:
        dry = run_cli_in_process("sweep", "ppo", "--preset", "continual-cartpole", *flags,
                                 "--dry-run", "--sweep-dir", str(tmp_path / "sweep"))  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        lines = [line.split(": ", 1) for line in dry.stdout.splitlines()[:-1]]
        return [(cells, command.split("--seeds ")[1].split(" --")[0] if "--seeds" in command
                 else "alone") for cells, command in lines]  # fmt: skip

    six = ("--grid", "seed=1,2,3,4,5,6")
    assert processes(*six, "--workers", "1") == [(", ".join(f"seed={s}" for s in range(1, 7)),
                                                  "1 2 3 4 5 6")]  # fmt: skip
    assert processes(*six, "--workers", "2") == [
        ("seed=1, seed=2, seed=3", "1 2 3"), ("seed=4, seed=5, seed=6", "4 5 6"),
    ]  # fmt: skip
    four = processes(*six, "--workers", "4")
    assert [seeds for _, seeds in four] == ["alone", "2 3", "alone", "5 6"]
    two = processes("--grid", "regularizer=none,l2", "seed=1,2,3", "--workers", "2")
    assert [seeds for _, seeds in two] == ["1 2 3", "1 2 3"]
    whole = processes(*six, "--launcher", "slurm", "--group-seeds", "--slurm-cluster", "local")
    assert [seeds for _, seeds in whole] == ["1 2 3 4 5 6"]


@pytest.mark.slow
def test_unused_axis_flags_are_left_out_and_cells_that_are_one_run_merged(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli_in_process("sweep", *TINY, "--num-tasks", "1", "--grid", "regularizer=none,l2",
                     "l2.weight-decay=1e-4,1e-3", "--sweep-dir", str(sweep_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(manifest(sweep_dir)["cells"]) == [
        "regularizer=l2__l2.weight-decay=1e-3",
        "regularizer=l2__l2.weight-decay=1e-4",
        "regularizer=none",
    ]


@pytest.mark.slow
def test_a_failed_cell_is_listed_retried_when_asked_and_a_grid_may_only_grow(tmp_path):
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--num-tasks", "1", "--grid", "learning-rate=0.01,1e30",
            "--sweep-dir", str(sweep_dir)]  # fmt: skip
    result = run_cli_in_process(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    cells = manifest(sweep_dir)["cells"]
    assert cells["learning-rate=0.01"]["status"] == "finished"
    failed = cells["learning-rate=1e30"]
    assert failed["status"] == "failed" and failed["error"].startswith("error: training diverged")
    assert "failed: learning-rate=1e30: error: training diverged" in result.stderr
    # Without a terminal (here: a pipe) a line per cell as it ends: count, status, cell, time.
    lines = [line.split(" (")[0] for line in result.stderr.splitlines() if line.startswith("[")]
    assert [line.split("] ")[0] for line in lines] == ["[1/2", "[2/2"]
    assert sorted(line.split("] ")[1] for line in lines) == [
        "failed: learning-rate=1e30", "finished: learning-rate=0.01",
    ]  # fmt: skip
    assert "1 failed before" in run_cli_in_process(*argv).stderr  # listed, not run again
    assert manifest(sweep_dir)["cells"]["learning-rate=1e30"]["attempts"] == 1
    run_cli_in_process(*argv, "--retry-failed")
    assert manifest(sweep_dir)["cells"]["learning-rate=1e30"]["attempts"] == 2

    # The grid may grow there: the cells it had keep their runs, the new one runs.
    before = manifest(sweep_dir)["cells"]
    grown = run_cli_in_process(
        *argv[:-3], "learning-rate=0.01,1e30,0.02", "--sweep-dir", str(sweep_dir)
    )
    assert grown.returncode == 0, grown.stderr[-2000:]
    cells = manifest(sweep_dir)["cells"]
    assert {k: cells[k] for k in before} == before  # kept, not run again
    assert cells["learning-rate=0.02"]["status"] == "finished"
    # A cell that would lose its place (a shrunk grid) or change its flags: another sweep.
    for other in (["--grid", "learning-rate=0.02"], ["--hidden-sizes", "16", "--grid", "seed=1"]):
        refused = run_cli_in_process(
            "sweep", *TINY, "--num-tasks", "1", *other, "--sweep-dir", str(sweep_dir)
        )
        assert refused.returncode == 2
        assert "a sweep's grid may only grow there" in error_line(refused.stderr)
    assert len(manifest(sweep_dir)["cells"]) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep"], "needs a mode first"),
        (["sweep", "supervised", "--num-tasks", "1"], "a sweep needs --grid"),
        (["sweep", "supervised", "--grid", "seed"], "write KEY=V1,V2"),
        (["sweep", "nope", "--grid", "seed=1"], "unknown mode 'nope'"),
        (["sweep", "supervised", "--grid", "learning-rate=0.1,-1"], "--learning-rate must be > 0"),
        (["sweep", "supervised", "--grid", "seed=1", "--workers", "0"], "--workers must be >= 1"),
        (["sweep", "supervised", "--resume", "x", "--grid", "seed=1"], "--resume is the sweep's"),
    ],
)
def test_bad_sweeps_are_one_error_line_before_any_cell_starts(tmp_path, argv, message):
    result = run_cli_in_process(*argv, "--sweep-dir", str(tmp_path / "sweep"))
    assert result.returncode == 2
    assert message in error_line(result.stderr)
    assert not (tmp_path / "sweep" / "cells").exists()


def test_a_toml_file_describes_the_same_sweep(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(
        'mode = "supervised"\n'
        f"base = {json.dumps([*TINY[1:], '--num-tasks', '1'])}\n"
        "[grid]\nseed = [1, 2]\n"
    )
    result = run_cli_in_process(
        "sweep", "--config", str(config), "--sweep-dir", str(tmp_path / "sweep")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(manifest(tmp_path / "sweep")["cells"]) == ["seed=1", "seed=2"]


def test_a_named_sweeps_published_numbers_are_read_and_a_malformed_table_refused(tmp_path):
    from experiments.sweep import read_config
    from validation import ConfigError

    path = tmp_path / "s.toml"
    head = 'mode = "ppo"\n[grid]\nseed = [1]\n'
    path.write_text(
        head + '[published]\nsource = "Table 1."\n[published.methods]\nbp = [61.8, 6.9]\n'
    )
    assert read_config(path)[3] == {"source": "Table 1.", "methods": {"bp": [61.8, 6.9]}}
    path.write_text(head)
    assert read_config(path)[3] is None
    for bad in ('[published]\nsource = "x"\n[published.methods]\nbp = [61.8]\n',
                '[published]\n[published.methods]\nbp = [61.8, 6.9]\n',
                '[published]\nsource = "x"\nmethods = [1, 2]\n',
                '[published]\nsource = "x"\n[published.methods]\nbp = [true, 6.9]\n'):  # fmt: skip
        path.write_text(head + bad)
        with pytest.raises(ConfigError, match=r"\[published\] needs source"):
            read_config(path)
    # Every named sweep that says what it reproduces says it well.
    for named in (REPO / "experiments" / "sweeps").glob("*.toml"):
        read_config(named)


@pytest.mark.parametrize(
    "command", [["sweep", "--help"], ["sweep", "ppo", "-h"], ["report", "--help"]]
)
def test_help_of_sweep_and_report_lists_their_flags_and_exits_0(command):
    result = run_cli_in_process(*command)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    for flag in (
        ("--grid", "--workers", "--launcher", "--dry-run") if command[0] == "sweep" else ("--out",)
    ):
        assert flag in result.stdout
