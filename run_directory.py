"""A run directory read back: the one reader of what a run writes (config.json, metrics.jsonl,
events.jsonl, diagnostics/step_*.npz; docs/run-lifecycle.md), for the plots
(diagnostics/plot.py), the report (experiments/report.py) and the sweeps (experiments/sweep.py).

A run killed mid-write can leave a truncated last line in a record file: it is skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a record file ([] if there is none), without a truncated last line."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.json as a dict ({} if it is missing or unreadable)."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def ended_normally(events: list[dict]) -> bool:
    """Whether a run's events hold its "finished" event."""
    return any(event.get("event") == "finished" for event in events)


def has_finished(run_dir: Path) -> bool:
    """Whether the run ended normally (read from its events alone)."""
    return ended_normally(read_jsonl(run_dir / "events.jsonl"))


@dataclass
class RunFiles:
    """What a run directory holds, read once."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict]
    """metrics.jsonl's rows, each with its "step" """
    events: list[dict]

    @property
    def is_supervised(self) -> bool:
        return "stream" in self.config

    @property
    def shift_steps(self) -> list[int]:
        return sorted(event["step"] for event in self.events if event.get("event") == "shift")

    @property
    def finished(self) -> bool:
        return ended_normally(self.events)

    @property
    def origin(self) -> dict[str, Any]:
        """The "start" event: the command and the code's commit."""
        return next((event for event in self.events if event.get("event") == "start"), {})

    @property
    def wall_seconds(self) -> float:
        """The seconds its processes ran for what the record holds: each segment (a "start" or
        "resume" event to the segment's last event) summed. Time a crash lost after the last
        checkpoint is not in it (the resume dropped those records); NaN without timed events."""
        return self._segments_summed("time")

    @property
    def cpu_seconds(self) -> float:
        """The CPU seconds its processes used over the same segments (each event's "cpu", the
        process's time.process_time()): unlike wall time, not inflated by a process waiting for
        a core it shares or stopped by a signal. NaN for records from before "cpu" was written."""
        return self._segments_summed("cpu")

    def _segments_summed(self, clock: str) -> float:
        # NaN when any segment lacks the clock: a record resumed by newer code would otherwise
        # count only its newer segments.
        segments: list[list[float]] = []
        for event in self.events:
            if event.get("event") in ("start", "resume"):
                segments.append([event.get(clock, math.nan)] * 2)
            elif segments and clock in event:
                segments[-1][1] = event[clock]
        if not segments:
            return math.nan
        return sum(last - begin for begin, last in segments)

    @property
    def seeds_in_process(self) -> int:
        """How many seeds its (last) process trained together (`--seeds`); 1 for a run alone."""
        counts = [len(e["seeds"]) for e in self.events if e.get("event") == "seeds_in_process"]
        return counts[-1] if counts else 1

    def boundaries(self) -> Iterator[dict[str, np.ndarray]]:
        """Each diagnostics/step_*.npz (one per task boundary), in step order."""
        paths = (self.path / "diagnostics").glob("step_*.npz")
        for path in sorted(paths, key=lambda p: int(p.stem.split("_")[1])):
            with np.load(path, allow_pickle=False) as data:
                yield {key: data[key] for key in data.files}


def read_run_files(run_dir: Path) -> RunFiles:
    return RunFiles(
        path=run_dir,
        config=read_config(run_dir),
        metrics=[row for row in read_jsonl(run_dir / "metrics.jsonl") if "step" in row],
        events=read_jsonl(run_dir / "events.jsonl"),
    )
