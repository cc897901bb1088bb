"""Checkpoints and what a resume reads from them: the newest one that loads, the random
streams and optimizer state they hold, and the rewind of a run directory's records to the
moment a checkpoint was taken (so that every record appears once after a crash)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.records import STEP_FILE_FOLDERS, write_atomically
from validation import ConfigError


def checkpoint_files(run_dir: Path) -> list[Path]:
    """step_<N>.pt of a run directory, newest first, then latest.pt (of older runs)."""
    directory = Path(run_dir) / "checkpoints"
    steps = sorted(
        directory.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]), reverse=True
    )
    latest = directory / "latest.pt"
    return [*steps, latest] if latest.exists() else steps


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict
    skipped: list[str] = field(default_factory=list)
    """one line per newer checkpoint that did not load, with why"""
    newer: list[Path] = field(default_factory=list)
    """newer checkpoints that load but are not resumed from (`resume_together`)"""


def read_checkpoint(path: Path) -> tuple[dict | None, str]:
    """(a checkpoint's state, "") or (None, one line saying why it does not load)."""
    try:
        # Our own checkpoints hold numpy arrays and the Args dataclass, so not weights-only.
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "args" not in state:
            raise ValueError("not a checkpoint of this project")
    except Exception as error:  # noqa: BLE001 - truncated, empty, garbage: say why
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        return None, f"{path.name} ({path.stat().st_size} bytes: {reason})"
    return state, ""


def seed_generator(seed: int, device: Any, checkpoint: dict | None, step: int) -> torch.Generator:
    """A batched seed's own random stream (agents/ppo_seeds.py, agents/sac_seeds.py): seeded by
    its seed; on a resume, where its checkpoint left it, or, from a single run's checkpoint
    (which has none), a stream of its own from (seed, step)."""
    generator = torch.Generator(device).manual_seed(seed)
    if checkpoint is not None:
        if "seed_generator" in checkpoint:
            generator.set_state(checkpoint["seed_generator"])
        else:
            generator.manual_seed(seed + step)
    return generator


def newest_checkpoint(run_dir: str | Path) -> LoadedCheckpoint:
    """The newest checkpoint of a run directory that loads."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume {run_dir}: not a run directory (it has no checkpoints/)")
    skipped = []
    seen: set[tuple[int, int]] = set()
    for path in checkpoint_files(run_dir):
        inode = (path.stat().st_dev, path.stat().st_ino)
        if inode in seen:  # latest.pt is a link to the newest step_<N>.pt
            continue
        seen.add(inode)
        state, why = read_checkpoint(path)
        if state is None:  # truncated, empty, garbage: try the next
            skipped.append(why)
            continue
        return LoadedCheckpoint(path, state, skipped)
    if skipped:
        raise ConfigError(f"--resume {run_dir}: no checkpoint loads: {'; '.join(skipped)}")
    raise ConfigError(
        f"--resume {run_dir}: no checkpoint yet (the run stopped before its first one); start "
        "it again without --resume"
    )


def check_mode(saved_args: Any, mode: str, run_dir: str | Path) -> Any:
    """`saved_args` (a checkpoint's config), if it is the config of a `mode` run."""
    saved_mode = type(saved_args).__module__.rsplit(".", 1)[-1]
    if saved_mode != mode:
        raise ConfigError(
            f"--resume {run_dir} is a {saved_mode} run; resume it with train.py {saved_mode} --resume"
        )
    # A run saved before a flag existed resumes with that flag at its default (what the run
    # did then): unpickling restores the saved fields only.
    defaults = type(saved_args)()
    for f in dataclasses.fields(saved_args):
        if f.name not in vars(saved_args):
            setattr(saved_args, f.name, getattr(defaults, f.name))
    return saved_args


Resumed = tuple[Any, LoadedCheckpoint]
"""(a resumed run's saved config, the checkpoint it was read from)"""


def resume_from(run_dir: str | Path, mode: str) -> Resumed:
    """What a resume continues from, read once: the run's saved config (checked to be a `mode`
    run, with flags added since at their defaults) and the checkpoint it was read from. train.py
    parses the flags over that config and hands the checkpoint to the learner, whose run then
    starts from the same copy; a learner called with only `args.resume` reads it here too."""
    loaded = newest_checkpoint(run_dir)
    return check_mode(loaded.state["args"], mode, run_dir), loaded


def resume_together(run_dirs: list[str], mode: str) -> list[Resumed]:
    """What one process resuming several runs in step (`train.py ppo --resume DIR1 DIR2 ...`,
    agents/ppo_seeds.py) continues from: each run's checkpoint at the newest step at which
    every run has one that loads, with its saved config. A process stopped between two seeds'
    checkpoints left the first seeds one step ahead: theirs is then `newer`, to be dropped
    once the run is reopened (its records are rewound to the common step)."""
    dirs = [Path(d).resolve() for d in run_dirs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"--resume: each run directory once, got {' '.join(run_dirs)}")
    steps: list[dict[int, Path]] = []
    for run_dir in dirs:
        if not (run_dir / "checkpoints").is_dir():
            raise ConfigError(f"--resume {run_dir}: not a run directory (it has no checkpoints/)")
        files = [path for path in checkpoint_files(run_dir) if path.name != "latest.pt"]
        steps.append({int(path.stem.split("_")[1]): path for path in files})
    skipped: list[list[str]] = [[] for _ in dirs]
    for step in sorted(set.intersection(*(set(s) for s in steps)), reverse=True):
        loaded = [read_checkpoint(s[step]) for s in steps]
        if any(state is None for state, _ in loaded):
            for lines, (state, why) in zip(skipped, loaded, strict=True):
                lines.extend([why] if state is None else [])
            continue
        return [
            (check_mode(state["args"], mode, run_dir),
             LoadedCheckpoint(s[step], state, lines, newer=[s[n] for n in s if n > step]))
            for run_dir, s, (state, _), lines in zip(dirs, steps, loaded, skipped, strict=True)
        ]  # fmt: skip
    have = "; ".join(f"{d.name}: {sorted(s) or 'none'}" for d, s in zip(dirs, steps, strict=True))
    raise ConfigError(
        f"--resume: these runs have no checkpoint at one step that loads in all of them ({have}); "
        f"resume each alone with train.py {mode} --resume RUN_DIR"
    )


def point_latest_at(path: Path, data: bytes | memoryview | None = None) -> None:
    """Make checkpoints/latest.pt the checkpoint at `path`: a hard link (no second copy on
    disk, the same bytes as step_<N>.pt), else an atomic copy of its bytes (`data`, or read)."""
    latest = path.parent / "latest.pt"
    try:
        link = path.parent / f".latest.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, latest)
    except OSError:
        content = path.read_bytes() if data is None else data
        write_atomically(latest, lambda file: file.write(content))


def drop_newer_checkpoints(loaded: LoadedCheckpoint) -> None:
    """Remove the checkpoints newer than the one a run resumed from (`resume_together`) and
    point latest.pt at it: they hold a future the resumed run is writing again."""
    for path in loaded.newer:
        path.unlink(missing_ok=True)
    if loaded.newer:
        point_latest_at(loaded.path)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The state of the newest checkpoint of a run directory that loads."""
    return newest_checkpoint(run_dir).state


def rewind_to_checkpoint(run_dir: Path, state: dict) -> dict[str, Any]:
    """Cut the record files back to their length at the checkpoint and remove the diagnostics
    files written after it; return how many lines were dropped (and the dropped metric records,
    whose steps W&B already holds)."""
    recorded = state.get("run")
    if recorded is None:  # a checkpoint of an older version: nothing to cut by
        return {}
    dropped: dict[str, Any] = {"records": []}
    for name, size in recorded["records"].items():
        path = run_dir / name
        if not path.exists():
            continue
        with open(path, "r+b") as file:
            file.seek(size)
            tail = file.read().decode(errors="replace")
            file.truncate(size)
        lines = [line for line in tail.splitlines() if line.strip()]
        dropped[name] = len(lines)
        for line in lines:
            try:
                dropped["records"].append(json.loads(line))
            except json.JSONDecodeError:
                continue
    for folder in STEP_FILE_FOLDERS:
        keep = set(recorded["files"].get(folder, ()))
        for path in (run_dir / folder).glob("step_*"):
            if path.name not in keep:
                path.unlink()
    for tmp in (run_dir / "checkpoints").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return dropped


def rng_state() -> dict:
    """The run's random streams, for a checkpoint."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # By index, as many as both hosts have: a checkpoint from a host with more GPUs
        # resumes on one with fewer (a run uses device 0).
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an optimizer's saved state but keep the hyperparameters it was built with now.

    `load_state_dict` also restores each parameter group's saved lr, betas, eps, weight decay,
    momentum, ...; a resume with `--learning-rate 3e-4` must train at 3e-4, so the groups'
    settings of this run (from its flags) are put back over the saved ones."""
    current = [
        {k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, current, strict=True):
        group.update(settings)
