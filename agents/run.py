"""One object per run that writes everything a run leaves behind.

    runs/<run_name>/
        config.json        the resolved configuration (every flag, after presets)
        metrics.jsonl      one JSON object per line: {"step": ..., "<name>": value, ...}
        events.jsonl       shifts (with their parameters), warnings, resumes, interruptions
        checkpoints/       step_<N>.pt and latest.pt: everything needed to resume exactly
        wandb/             the W&B files when --track is on

Every line is flushed as it is written, so a killed run loses nothing it had logged. With
tracking on, the same scalars and events go to Weights & Biases; its mode follows WANDB_MODE
(offline works with no network).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


@dataclasses.dataclass
class TrackingFlags:
    """Flags every learner shares for naming, tracking and checkpointing a run (a mixin of Args)."""

    track: bool = False
    """log to Weights & Biases as well as to the run directory (mode follows WANDB_MODE)"""
    wandb_project_name: str = "plasticity"
    """the W&B project"""
    wandb_entity: str | None = None
    """the W&B entity (team or user); None uses your default"""
    wandb_group: str | None = None
    """the W&B group; None groups by environment and shifts, so regularizers compare side by side"""
    wandb_tags: tuple[str, ...] = ()
    """extra W&B tags (the regularizer's name is always added)"""
    runs_dir: str = "runs"
    """where run directories are created"""
    checkpoint_every: int = 100_000
    """env steps (or examples) between checkpoints; 0 saves only at the end"""
    keep_checkpoints: int = 3
    """how many step_<N>.pt files to keep besides latest.pt"""
    resume: str | None = None
    """a run directory to resume from its latest checkpoint (its saved config is used; flags
    given here override it, e.g. a longer --total-timesteps)"""


def jsonable(value: Any) -> Any:
    """Turn configs and numpy values into plain JSON (NaN and inf become strings)."""
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


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
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


class RunLogger:
    def __init__(
        self, run_dir: Path, config: Any, flags: TrackingFlags, group: str, tags: list[str]
    ):
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.keep_checkpoints = flags.keep_checkpoints
        (self.run_dir / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        self.events_file = open(self.run_dir / "events.jsonl", "a")
        self.wandb = None
        self._wandb_step = 0
        if flags.track:
            import wandb

            # Resuming a run continues the same W&B run: its id is kept in the run directory.
            id_file = self.run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id + "\n")
            self.wandb = wandb.init(
                project=flags.wandb_project_name,
                entity=flags.wandb_entity,
                group=flags.wandb_group or group,
                tags=[*tags, *flags.wandb_tags],
                name=self.run_dir.name,
                id=run_id,
                resume="allow",
                config=jsonable(config),
                dir=str(self.run_dir),
            )
            # Plot every chart against the env step (or examples seen), which is what
            # metrics.jsonl records, rather than W&B's own step counter.
            self.wandb.define_metric("*", step_metric="global_step")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One metrics line at `step` (global env steps, or examples seen)."""
        self.metrics_file.write(json.dumps({"step": step, **jsonable(values)}) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            # W&B drops a step older than its last one; a task-boundary measurement taken after
            # the rollout that held the shift goes to the current step, with its own step kept
            # in "global_step" (the x axis to plot against) and in metrics.jsonl.
            self._wandb_step = max(step, self._wandb_step)
            self.wandb.log({"global_step": step, **values}, step=self._wandb_step)

    def event(self, step: int, kind: str, **data: Any) -> None:
        """A shift, a warning, a resume: recorded with its step and parameters."""
        record = {"step": step, "event": kind, "time": time.time(), **jsonable(data)}
        self.events_file.write(json.dumps(record) + "\n")
        self.events_file.flush()
        if self.wandb is not None:
            numbers = {
                f"{kind}/{k}": v
                for k, v in data.get("params", data).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if numbers:
                self._wandb_step = max(step, self._wandb_step)
                self.wandb.log({"global_step": step, **numbers}, step=self._wandb_step)

    def images(self, step: int, paths: dict[str, Path]) -> None:
        """PNG files (e.g. the diagnostics' plots) to W&B, when tracking; they are already in
        the run directory."""
        if self.wandb is not None:
            import wandb

            self.wandb.log(
                {name: wandb.Image(str(path)) for name, path in paths.items()}, step=step
            )

    def table(self, step: int, name: str, csv_path: Path) -> None:
        """A CSV table (e.g. the plasticity correlation table) to W&B as a wandb.Table, when
        tracking; the file is already in the run directory."""
        if self.wandb is not None:
            import wandb

            header, *rows = [line.split(",") for line in csv_path.read_text().splitlines()]
            self.wandb.log({name: wandb.Table(columns=header, data=rows)}, step=step)

    def checkpoint(self, step: int, state: dict) -> Path:
        """Write step_<step>.pt atomically, copy it to latest.pt, keep the newest few."""
        path = self.checkpoint_dir / f"step_{step}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        latest_tmp = self.checkpoint_dir / "latest.tmp"
        torch.save(state, latest_tmp)
        os.replace(latest_tmp, self.checkpoint_dir / "latest.pt")
        old = sorted(self.checkpoint_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for stale in old[: max(0, len(old) - self.keep_checkpoints)]:
            stale.unlink()
        return path

    def close(self) -> None:
        self.metrics_file.close()
        self.events_file.close()
        if self.wandb is not None:
            self.wandb.finish()


def load_checkpoint(run_dir: str | Path) -> dict:
    """The latest checkpoint of a run directory, with a clear error if there is none."""
    path = Path(run_dir) / "checkpoints" / "latest.pt"
    if not path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no checkpoint at {path}")
    # Our own checkpoints hold numpy arrays and the Args dataclass, so not weights-only.
    return torch.load(path, map_location="cpu", weights_only=False)


class HostToDevice:
    """Copies host arrays of one fixed shape to `device`, once per env step.

    On CUDA the array is written into a page-locked (pinned) staging tensor and copied with
    `non_blocking=True`: the copy is a DMA the GPU runs in order on its stream, with no bounce
    through pageable memory and no wait on the host. The staging tensor is reused, so before
    it is overwritten the previous copy out of it must have finished: a CUDA event recorded
    after each copy is waited on first (it has, in practice: acting reads the action back).
    On the CPU the same code copies into a fresh tensor (no pinning, no event): the result
    never aliases the staging tensor or the caller's array on either device.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.staging = torch.empty(shape, dtype=torch.float32, pin_memory=self.pinned)
        self.copied = torch.cuda.Event() if self.pinned else None

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        if self.copied is not None:
            self.copied.synchronize()
        self.staging.numpy()[...] = array  # casts to float32 (numpy broadcasting rules)
        out = torch.empty(self.staging.shape, dtype=torch.float32, device=self.device)
        out.copy_(self.staging, non_blocking=self.pinned)
        if self.copied is not None:
            self.copied.record()
        return out


def progress_bar(total: int, initial: int, desc: str) -> tqdm:
    """A progress bar on a terminal; silent when output goes to a file or a pipe (CI, logs)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )


class StopRequest:
    """Set by SIGINT/SIGTERM inside `deferred_interrupts`; the loop checks it between steps."""

    requested = False


@contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """Turn Ctrl-C and SIGTERM into a flag for the duration, so a learner stops between two
    steps (a consistent checkpoint) rather than halfway through an in-place update. Outside the
    main thread signals cannot be caught, and the flag simply never gets set."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, frame: Any) -> None:
        stop.requested = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
