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
    extra = []
    if "--track" in sweep.base:  # one W&B group per sweep, each run tagged with its values
        extra = ["--wandb-group", sweep.directory.name, "--wandb-tags",
                 *(f"{k}={v}" for k, v in cell.values.items())]  # fmt: skip
    return [*train_py, *sweep.base, *cell.flags, *extra, "--runs-dir", str(sweep.cell_dir(cell))]


def error_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith("error:")]
    if lines:
        return lines[-1]
    tail = [line for line in log.splitlines() if line.strip()]
    return tail[-1] if tail else "no output"
