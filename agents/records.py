"""A run directory and its records: its exclusive creation and lock, atomic writes,
metrics.jsonl and events.jsonl (and the same to W&B), and what every record says about where it
came from (the command and the code's commit). The guarantees are listed in agents/run.py."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import numpy as np

from validation import ConfigError

RECORD_FILES = ("metrics.jsonl", "events.jsonl")

STEP_FILE_FOLDERS = ("diagnostics", "videos")  # step_<N>_... files written at boundaries

WANDB_INIT_TIMEOUT = 20  # seconds W&B may take to start online before the run goes on offline


def code_version() -> dict[str, Any]:
    """The git commit of this checkout and whether its tracked files have uncommitted changes
    (None, False outside a git checkout): recorded by every run and sweep, shown by the report.
    Untracked files (a sweep's log beside the checkout) do not make it dirty: the code that ran
    is the commit's plus the tracked changes."""
    repo = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True)
        except OSError:  # no git on this machine
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def command_line() -> str:
    """How this process was started, as a shell would take it back."""
    return shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0] else ""


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


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """A new directory `runs_dir/name` (or name-2, name-3, ...), created exclusively: mkdir is
    atomic, also on a filesystem several machines share, so two runs never get the same one."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--runs-dir {runs_dir}: cannot create it ({error.strerror})") from None
    for attempt in range(1, 10_000):
        candidate = runs_dir / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise ConfigError(
                f"--runs-dir {runs_dir}: cannot create a run directory there ({error.strerror})"
            ) from None
    raise ConfigError(f"--runs-dir {runs_dir}: 10,000 runs named {name} already")


class DirectoryLock:
    """An exclusive lock on a run directory for the life of the process that writes it (flock:
    the kernel drops it when the process dies, kill -9 included)."""

    def __init__(self, run_dir: Path):
        path = run_dir / ".lock"
        self.file: IO[str] | None = open(path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"{run_dir} is in use by {holder}: one process writes a run directory at a time"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


class RunWriteError(OSError):
    """A record or checkpoint could not be written (disk full, read-only, ...)."""


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (its entry is on disk, not only the file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through a temporary file that is flushed to disk and renamed over it: a
    reader (or a resume after a crash) sees the old file or the new one, never a part. A
    failure removes the temporary file and raises RunWriteError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise RunWriteError(f"cannot write {path}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunLogger:
    """Writes the run's records: scalars by step (metrics.jsonl), events (events.jsonl), and
    the same to W&B when tracking. Every line is flushed as it is written.

    W&B keeps one value per step and refuses steps older than its last; after a resume the
    steps it already holds (up to `wandb_floor`) are not sent again, so its history never
    overlaps itself (the run directory holds the resumed run's values for them)."""

    def __init__(self, run_dir: Path, wandb_run: Any = None, wandb_floor: int = -1):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.files = {name: open(self.run_dir / name, "a") for name in RECORD_FILES}  # noqa: SIM115
        self.wandb = wandb_run
        self.wandb_floor = wandb_floor
        self.wandb_step = wandb_floor
        self.last_step = 0
        """the highest step of a record written so far (where a failure is recorded)"""

    def _write(self, name: str, record: dict) -> None:
        self.last_step = max(self.last_step, record["step"])
        try:
            self.files[name].write(json.dumps(record) + "\n")
            self.files[name].flush()
        except OSError as error:
            raise RunWriteError(f"cannot write {self.run_dir / name}: {error.strerror}") from None

    def _to_wandb(self, step: int, values: dict[str, Any]) -> None:
        # Every chart is plotted against "global_step" (env steps or examples), the step of
        # metrics.jsonl; W&B's own step only orders the rows: a measurement made later for an
        # earlier step goes to the newest row, with its own step in global_step.
        if self.wandb is None or step <= self.wandb_floor:
            return
        self.wandb_step = max(step, self.wandb_step)
        self.wandb.log({"global_step": step, **values}, step=self.wandb_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One metrics line at `step` (global env steps, or examples seen)."""
        self._write("metrics.jsonl", {"step": step, **jsonable(values)})
        self._to_wandb(step, values)

    def event(self, step: int, kind: str, **data: Any) -> None:
        """A shift, a warning, a resume: recorded with its step and parameters."""
        # "cpu": this process's CPU seconds, the run's cost however many processes shared the
        # cores (run_directory.RunFiles.cpu_seconds).
        clocks = {"time": time.time(), "cpu": time.process_time()}
        self._write("events.jsonl", {"step": step, "event": kind, **clocks, **jsonable(data)})
        numbers = {
            f"{kind}/{k}": v
            for k, v in data.get("params", data).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            self._to_wandb(step, numbers)

    def images(self, step: int, paths: dict[str, Path]) -> None:
        """PNG files (e.g. the diagnostics' plots) to W&B, when tracking; they are already in
        the run directory."""
        if self.wandb is not None:
            import wandb

            self._to_wandb(step, {name: wandb.Image(str(path)) for name, path in paths.items()})

    def video(self, step: int, label: str, path: Path) -> None:
        """An MP4 clip (a task's "start" or "end") to W&B as videos/<label>, when tracking; the
        file is already in the run directory."""
        if self.wandb is not None:
            import wandb

            self._to_wandb(step, {f"videos/{label}": wandb.Video(str(path), format="mp4")})

    def table(self, step: int, name: str, csv_path: Path) -> None:
        """A CSV table (e.g. the plasticity correlation table) to W&B as a wandb.Table, when
        tracking; the file is already in the run directory."""
        if self.wandb is not None:
            import wandb

            header, *rows = [line.split(",") for line in csv_path.read_text().splitlines()]
            self._to_wandb(step, {name: wandb.Table(columns=header, data=rows)})

    def positions(self) -> dict[str, int]:
        """How long each record file is now (what a checkpoint records)."""
        return {name: file.tell() for name, file in self.files.items()}

    def close(self) -> None:
        for file in self.files.values():
            try:
                file.close()
            except OSError:
                pass  # a full disk: what could be written is written
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as error:  # noqa: BLE001 - W&B never takes a run down
                print(f"warning: W&B did not finish cleanly ({error})", file=sys.stderr)
            self.wandb = None


def wandb_unreachable() -> str | None:
    """Why W&B cannot work online here (no API key, no route to its server), or None."""
    if not os.environ.get("WANDB_API_KEY"):
        try:
            import wandb
            from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

            host = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
            if read_netrc_auth(host=host) is None:
                return "no API key (set WANDB_API_KEY or run `wandb login`)"
        except Exception:  # noqa: BLE001 - W&B's internals moved: let wandb.init decide
            pass
    import wandb

    url = urlparse(os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as error:
        return f"cannot reach {url.hostname}:{port} ({error.strerror or error})"
    return None


def start_wandb(run_dir: Path, config: Any, flags: Any, group: str, tags: list[str]) -> Any:
    """The W&B run of this run directory (resumed under the same id), or None if W&B cannot
    start at all; `flags` are the run's RunFlags (agents/flags.py). Online problems switch to offline mode with one line on stderr."""
    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    mode = os.environ.get("WANDB_MODE", "online")
    offline_note = (
        f"logging to W&B offline in {run_dir / 'wandb'} (upload later with `wandb sync`); "
        "the run directory is the record"
    )
    if mode not in ("offline", "disabled", "dryrun"):
        reason = wandb_unreachable()
        if reason is not None:
            print(f"warning: W&B is unavailable: {reason}; {offline_note}", file=sys.stderr)
            mode = "offline"

    def init(mode: str) -> Any:
        return wandb.init(
            project=flags.wandb_project_name,
            entity=flags.wandb_entity,
            group=flags.wandb_group or group,
            tags=[*tags, *flags.wandb_tags],
            name=run_dir.name,
            id=run_id,
            resume="allow",
            config=jsonable(config),
            dir=str(run_dir),
            mode=mode,
            settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT),
        )

    try:
        run = init(mode)
    except Exception as error:  # noqa: BLE001 - a server error, a timeout, a refused key
        if mode == "offline":
            print(
                f"warning: W&B failed to start ({error}); logging to the run directory only",
                file=sys.stderr,
            )
            return None
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        print(
            f"warning: W&B failed to start online ({first_line}); {offline_note}", file=sys.stderr
        )
        try:
            wandb.teardown()  # the half-started online run holds the id until its service stops
            run = init("offline")
        except Exception as offline_error:  # noqa: BLE001
            print(
                f"warning: W&B failed offline too ({offline_error}); logging to the run directory only",
                file=sys.stderr,
            )
            return None
    run.define_metric("*", step_metric="global_step")
    return run
