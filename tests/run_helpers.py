"""What tests of whole runs share: running train.py as a user does, and reading a run's records."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
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


def run_cli_in_process(*argv: str) -> subprocess.CompletedProcess:
    """train.py with `argv` in this process, for commands whose own process is not what is
    tested: those that end before a run starts (a bad flag or input, --help, a refused
    resume), a report, and a sweep's orchestration (its cells are still real processes). The
    exit status, stdout and stderr a real process gives (stderr is not a terminal, as a pipe's
    is not), without its ~2 s of Python and torch start-up. What must outlive or crash a process
    (a signal, a kill, a lock, an engine) stays with run_cli."""
    import train

    # Byte streams with an encoding, as a pipe's are (rich draws ASCII boxes on a StringIO).
    stdout, stderr = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))
    sigterm = signal.getsignal(signal.SIGTERM)  # train.main makes SIGTERM Ctrl-C during set-up
    environ = dict(os.environ)
    os.environ.update(cli_env())
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                train.main(list(argv))
                status = 0
            except SystemExit as stop:  # as the interpreter ends on it: a str goes to stderr
                status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        os.environ.clear()
        os.environ.update(environ)
    stdout.flush(), stderr.flush()
    return subprocess.CompletedProcess(["train.py", *argv], status,
                                       stdout.buffer.getvalue().decode(),
                                       stderr.buffer.getvalue().decode())  # fmt: skip


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


def agents_built_as_single_runs(agent_class, args, seeds, learner: str, **env_flags) -> list:
    """Each seed's agent as a single run of `args` with that seed builds it
    (`agent_class.build`, envs from `learner_envs(..., learner, **env_flags)`, closed after).
    There is no run directory, so the diagnostics must be off."""
    import dataclasses
    from types import SimpleNamespace

    import torch

    from agents.run import seed_everything
    from envs import learner_envs

    agents = []
    for seed in seeds:
        one = dataclasses.replace(args, seed=seed)
        envs = learner_envs(one, learner, **env_flags)
        seed_everything(seed)
        stand_in_run = SimpleNamespace(
            device=torch.device("cpu"), logger=SimpleNamespace(run_dir=".")
        )
        agents.append(agent_class.build(one, envs, stand_in_run))
        envs.close()
    return agents
