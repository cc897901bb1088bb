"""A sweep's cells: what a sweep is (its axes, cells and engine settings), the state of a
cell read from its directory, the manifest, and the command that runs a cell. The sweep
(experiments/sweep.py) builds them; the launchers (experiments/launchers.py) run them."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run_directory import has_finished
from validation import ConfigError

REPO = Path(__file__).resolve().parents[1]


@dataclass
class EngineFlags:
    """The launcher and its engine's settings (train.py sweep --launcher ...)."""

    launcher: str = "local"  # local, slurm, ray
    slurm_cluster: str = "auto"  # auto (slurm where sbatch exists), slurm, local
    slurm_partition: str | None = None
    slurm_time: int = 24 * 60  # minutes
    slurm_cpus: int = 1
    slurm_gpus: int = 0
    slurm_array_parallelism: int = 256
    ray_cpus: float = 1.0
    ray_gpus: float = 0.0


ENGINE_CHOICES = {
    "launcher": ("local", "slurm", "ray"),
    "slurm_cluster": ("auto", "slurm", "local"),
}


@dataclass
class Cell:
    """One run of the sweep: its axis values and the flags they become."""

    id: str
    values: dict[str, str]
    flags: list[str]


@dataclass
class Sweep:
    mode: str
    base: list[str]
    axes: dict[str, list[str] | dict[str, list[str]]]
    """axis -> its values (each the flag --axis VALUE), or -> {value name: the flags it sets}"""
    directory: Path
    workers: int
    retry_failed: bool = False
    engine: EngineFlags = field(default_factory=EngineFlags)
    dry_run: bool = False
    """--dry-run: check every cell and print its command; run nothing, write nothing"""
    cells: list[Cell] = field(default_factory=list)
    published: dict[str, Any] | None = None
    """a TOML's [published] table: the numbers the sweep reproduces, for the report"""
    group_seeds: bool | None = None
    """cells that differ only in their seed run as one `--seeds` process (None: on for the
    local launcher, off for Slurm and Ray)"""

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def stop_file(self) -> Path:
        """Created when the sweep is stopped: how cells on other machines hear of it."""
        return self.directory / ".stop"

    def cell_dir(self, cell: Cell) -> Path:
        return self.directory / "cells" / cell.id


def run_dir_of(cell_dir: Path) -> Path | None:
    runs = [p for p in cell_dir.iterdir() if p.is_dir()] if cell_dir.is_dir() else []
    return runs[0] if len(runs) == 1 else None


def cell_state(cell_dir: Path) -> str:
    """pending (nothing yet), finished, interrupted (resumable: it has a checkpoint) or stale
    (a run that stopped before its first checkpoint: started again from scratch)."""
    run_dir = run_dir_of(cell_dir)
    if run_dir is None:
        return "pending"
    if has_finished(run_dir):
        return "finished"
    if list((run_dir / "checkpoints").glob("step_*.pt")):
        return "interrupted"
    return "stale"


class Manifest:
    """SWEEP_DIR/manifest.json: the sweep, its cells and their status; written atomically."""

    def __init__(self, sweep: Sweep, command: list[str]):
        from agents.records import code_version

        self.sweep = sweep
        self.data: dict[str, Any] = {
            "mode": sweep.mode,
            "base": sweep.base,
            "axes": sweep.axes,
            "command": command,
            "code": code_version(),
            "cells": {},
        }
        if sweep.published is not None:
            self.data["published"] = sweep.published
        old = {}
        if sweep.manifest_path.exists():
            saved = json.loads(sweep.manifest_path.read_text())
            old = saved["cells"]
            # A grid may grow (another method, more seeds): the cells it had keep their runs,
            # as long as each is the same cell (same id, same flags). Anything else is another
            # sweep, and mixing the two would make one report of two experiments.
            flags = {cell.id: cell.flags for cell in sweep.cells}
            same_cells = all(flags.get(id_) == entry["flags"] for id_, entry in old.items())
            if [saved["mode"], saved["base"]] != [sweep.mode, sweep.base] or not same_cells:
                raise ConfigError(
                    f"{sweep.directory} holds another sweep ({' '.join(saved['command'])}); a "
                    "sweep's grid may only grow there; give another --sweep-dir"
                )
        for cell in sweep.cells:
            entry = old.get(cell.id, {"status": "pending", "run_dir": None, "error": None})
            self.data["cells"][cell.id] = {**entry, "values": cell.values, "flags": cell.flags}

    def update(self, cell: Cell, **fields: Any) -> None:
        self.data["cells"][cell.id].update(fields)
        self.write()

    def entry(self, cell: Cell) -> dict[str, Any]:
        return self.data["cells"][cell.id]

    def write(self) -> None:
        path = self.sweep.manifest_path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(path)


def cell_command(sweep: Sweep, cell: Cell, state: str) -> list[str]:
    """How a cell's process is started: its flags on a fresh run, --resume on an interrupted
    one (the saved config is then the run's; the flags are already in it)."""
    train_py = [sys.executable, str(REPO / "train.py"), sweep.mode]
    if state == "interrupted":
        return [*train_py, "--resume", str(run_dir_of(sweep.cell_dir(cell)))]
    return [*train_py, *sweep.base, *cell.flags, *wandb_flags(sweep, cell.values), "--runs-dir",
            str(sweep.cell_dir(cell))]  # fmt: skip


def wandb_flags(sweep: Sweep, values: dict[str, str]) -> list[str]:
    """With --track: one W&B group per sweep, each run tagged with its axis values."""
    if "--track" not in sweep.base:
        return []
    return ["--wandb-group", sweep.directory.name, "--wandb-tags",
            *(f"{k}={v}" for k, v in values.items())]  # fmt: skip


@dataclass
class Job:
    """What one process of the sweep runs: one cell, or the cells of one configuration that
    differ only in their seed (`train.py MODE ... --seeds S1 S2 ...`, each seed's run
    directory in its own cell's directory)."""

    cells: list[Cell]
    state: str
    command: list[str]


def jobs(sweep: Sweep, todo: list[tuple[Cell, str]]) -> list[Job]:
    """The processes that run `todo` ((cell, state) pairs, in order): with grouping on, the
    new cells that differ only in seed become one job where the mode's batched learner takes
    their flags, and the interrupted ones one job that resumes them together where it can
    (else one job a cell); a group is cut in parts where workers would otherwise idle."""
    grouping = sweep.group_seeds
    if grouping is None:
        grouping = sweep.engine.launcher == "local"
    groups: dict[tuple, list[Cell]] = {}
    singles: dict[str, Job] = {}
    for cell, state in todo:
        if grouping and state in ("pending", "interrupted") and seed_flags(sweep, cell) is not None:
            rest = tuple(sorted((k, v) for k, v in cell.values.items() if k != "seed"))
            groups.setdefault((state, rest), []).append(cell)
        else:
            singles[cell.id] = Job([cell], state, cell_command(sweep, cell, state))
    for state, cells in spread(groups, len(singles), sweep):
        together = seeds_command if state == "pending" else resume_command
        command = together(sweep, cells) if len(cells) > 1 else None
        if command is None:
            singles |= {c.id: Job([c], state, cell_command(sweep, c, state)) for c in cells}
        else:
            singles[cells[0].id] = Job(cells, state, command)
    order = {cell.id: index for index, (cell, _) in enumerate(todo)}
    return sorted(singles.values(), key=lambda job: order[job.cells[0].id])


def spread(
    groups: dict[tuple, list[Cell]], others: int, sweep: Sweep
) -> list[tuple[str, list[Cell]]]:
    """The seed groups ({(state, flags): cells}) as the processes they run in, (state, cells)
    each: a process a group, unless the local launcher would leave workers idle (fewer groups
    and `others` jobs than --workers). Then groups are cut into near-equal parts, the largest
    parts first, until every worker has one: 6 seeds on 2 workers are two processes of 3 seeds,
    each on its own core, not one process on one core with the other idle."""
    parts = dict.fromkeys(groups, 1)
    while sweep.engine.launcher == "local" and others + sum(parts.values()) < sweep.workers:
        splittable = [key for key in groups if len(groups[key]) > parts[key]]
        if not splittable:
            break
        parts[max(splittable, key=lambda key: len(groups[key]) / parts[key])] += 1
    return [
        (key[0], cells[len(cells) * i // parts[key] : len(cells) * (i + 1) // parts[key]])
        for key, cells in groups.items()
        for i in range(parts[key])
    ]


def seed_flags(sweep: Sweep, cell: Cell) -> list[str] | None:
    """The cell's flags without its seed, or None where its seed is not a plain --seed axis."""
    axis = sweep.axes.get("seed")
    if "seed" not in cell.values or not isinstance(axis, list):
        return None
    flags, seed = list(cell.flags), ["--seed", cell.values["seed"]]
    for i in range(len(flags) - 1):
        if flags[i : i + 2] == seed:
            return flags[:i] + flags[i + 2 :]
    return None


def seeds_command(sweep: Sweep, cells: list[Cell]) -> list[str] | None:
    """One `--seeds` process for `cells` (the same flags but their seeds), or None where the
    mode has no batched learner or it refuses these flags (then each cell runs alone)."""
    import importlib
    import importlib.util

    from agents.cli import parse

    if importlib.util.find_spec(f"agents.{sweep.mode}_seeds") is None:
        return None
    seeds = [cell.values["seed"] for cell in cells]
    values = {**cells[0].values, "seed": "{seed}"}
    flags = [*sweep.base, *seed_flags(sweep, cells[0]), "--seeds", *seeds]
    try:
        _, args, _ = parse(sweep.mode, flags)
        importlib.import_module(f"agents.{sweep.mode}_seeds").check_seeds(args)
    except ConfigError:
        return None
    train_py = [sys.executable, str(REPO / "train.py"), sweep.mode]
    tags = wandb_flags(sweep, {k: v for k, v in cells[0].values.items() if k != "seed"})
    return [*train_py, *flags, *tags, "--runs-dir",
            str(sweep.directory / "cells" / cell_id(values))]  # fmt: skip


def resume_command(sweep: Sweep, cells: list[Cell]) -> list[str] | None:
    """One process resuming the interrupted runs of `cells` together
    (`train.py MODE --resume DIR1 DIR2 ...`), or None where the mode cannot or the runs have no
    checkpoint at one step (then each resumes alone)."""
    from agents.cli import parse

    run_dirs = [str(run_dir_of(sweep.cell_dir(cell))) for cell in cells]
    try:
        parse(sweep.mode, ["--resume", *run_dirs])
    except ConfigError:
        return None
    return [sys.executable, str(REPO / "train.py"), sweep.mode, "--resume", *run_dirs]


def cell_id(values: dict[str, str]) -> str:
    return "__".join(f"{key}={value}" for key, value in values.items()).replace("/", "-")


def error_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith("error:")]
    if lines:
        return lines[-1]
    tail = [line for line in log.splitlines() if line.strip()]
    return tail[-1] if tail else "no output"
