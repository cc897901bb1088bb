"""What tests of whole runs share: running train.py as a user does, and reading a run's records."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_command(*argv: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *argv]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def run_cli(
    *argv: str, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """train.py with `argv` in a real process (W&B offline unless `env` says otherwise)."""
    return subprocess.run(
        train_command(*argv),
        cwd=REPO,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
    return run_dir


def error_line(stderr: str) -> str:
    """The one `error:` line of a failed run (and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


# Events that may legitimately repeat at one step: every resume is its own event.
REPEATABLE_EVENTS = {"resume", "task_resume", "warning"}


def assert_records_once(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Every (step, metric) pair of metrics.jsonl and every (step, event) of events.jsonl
    appears once, and every line is whole; returns (metrics, events)."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    pairs = Counter((row["step"], key) for row in metrics for key in row if key != "step")
    twice = [pair for pair, count in pairs.items() if count > 1]
    assert not twice, f"metrics recorded twice: {twice[:10]}"
    kinds = Counter((e["step"], e["event"]) for e in events if e["event"] not in REPEATABLE_EVENTS)
    twice = [kind for kind, count in kinds.items() if count > 1]
    assert not twice, f"events recorded twice: {twice[:10]}"
    return metrics, events


def wandb_history_steps(offline_run_dir: Path) -> list[int]:
    """The history steps in a W&B offline run's .wandb file (its LevelDB-style log of
    protobuf records: a 7-byte header, then 32 KiB blocks of [crc32, length, type] chunks)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(offline_run_dir).glob("*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, block, payloads, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:  # a whole record
            payloads.append(payload)
        elif kind == 2:  # first chunk
            pending = payload
        elif kind == 3:  # middle
            pending += payload
        elif kind == 4:  # last
            payloads.append(pending + payload)
    steps = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            steps.append(record.history.step.num)
    return steps
