"""The run lifecycle every learner shares: one `Run` per training run.

A learner writes only its algorithm; this module owns what a run leaves behind:

    run = Run.start(args, LEARNER, title=args.env_id, group=..., tags=[...], seed=args.seed)
    with run.training() as stop:            # every error below is handled here
        ... build networks on run.device; if run.checkpoint: restore from it
        while ...:
            run.log(step, {...}); run.event(step, "shift", ...)
            if stop.requested: run.stop_here(step, state())   # Ctrl-C / SIGTERM
            if run.checkpoint_due(step): run.save(step, state())
        run.finish(step, state())
    return run.dir

What it guarantees (docs/run-lifecycle.md):
- a new run gets a directory of its own, created exclusively (`{title}__{exp}__{method}__{seed}
  __{time}`, then `-2`, `-3`, ... when another run took that name in the same second), and
  holds a lock on it while it writes: no two processes ever write one run directory;
- checkpoints are written to a temporary file, flushed to disk and renamed; older ones are
  deleted only after the new one is complete; `--resume` takes the newest one that loads and
  says in one line which it skipped and why;
- every checkpoint records how long metrics.jsonl and events.jsonl were when it was taken (and
  which diagnostics files existed); a resume cuts the files back to that point, so whatever a
  crash left after the checkpoint is dropped and written again by the resumed run: every
  record appears once;
- flags given with --resume replace the saved ones and take effect (optimizer settings too,
  through `restore_optimizer`); each change is printed and recorded as an event; flags that
  cannot change (architecture, env, seed, ...: the learner's `fixed_on_resume`) are refused;
- Ctrl-C or SIGTERM stop the run at the learner's next consistent point with a checkpoint; a
  second one stops it at once (then it resumes from the last periodic checkpoint);
- a diverged run, a full or read-only disk, a bad flag: one line, the records intact;
- W&B never takes a run down: no key, no network or a server error switch it to offline mode
  with one line (the run directory is the record).
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

from validation import ConfigError, flag_name, require_all

RECORD_FILES = ("metrics.jsonl", "events.jsonl")
STEP_FILE_FOLDERS = ("diagnostics", "videos")  # step_<N>_... files written at boundaries
WANDB_INIT_TIMEOUT = 20  # seconds W&B may take to start online before the run goes on offline


@dataclass
class RunFlags:
    """Flags every learner shares for naming, tracking, checkpointing and resuming a run."""

    track: bool = False
    """log to Weights & Biases as well as to the run directory (mode follows WANDB_MODE; without a
    key or a network it falls back to offline with one line)"""
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
    """env steps (or examples) between checkpoints; 0 saves only at the end (and on Ctrl-C)"""
    keep_checkpoints: int = 3
    """how many step_<N>.pt files to keep (latest.pt is the newest of them)"""
    resume: str | None = None
    """a run directory to continue from its newest good checkpoint: its saved config is used, and
    flags given here replace it and take effect (e.g. a longer --total-timesteps, a smaller
    --learning-rate); architecture, env and seed cannot change"""


@dataclass(frozen=True)
class Learner:
    """What the lifecycle needs to know about a learner (each agent module has one)."""

    mode: str
    """its train.py mode (ppo, sac, supervised)"""
    presets: dict[str, dict]
    """named sets of defaults (`--preset NAME`)"""
    fixed_on_resume: tuple[str, ...]
    """config fields a resumed run cannot change (the checkpoint's shapes or meaning depend on them)"""
    unused_flags: Callable[[Any], dict[str, str]] = lambda args: {}
    """args -> {field: why it has no effect in this configuration}, for the learner's own flags"""


def preset_defaults(args_type: type, learner: Learner, preset: str) -> Any:
    """The defaults of `--preset NAME`: the one place presets are applied (train.py, the run's
    check of which flags were given, and tests all come here)."""
    if preset not in learner.presets:
        raise ConfigError(
            f"unknown --preset {preset!r} for {learner.mode}; choose one of: {', '.join(learner.presets)}"
        )
    return dataclasses.replace(args_type(), preset=preset, **learner.presets[preset])


# --- JSON, seeds, devices ---------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The git commit of this checkout and whether it has uncommitted changes (None, False
    outside a git checkout): recorded by every run and sweep, shown by the report."""
    repo = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True)
        except OSError:  # no git on this machine
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


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


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config as {dotted field: value} over its nested dataclasses (l2.weight_decay: 1e-4)."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_config(value, f"{prefix}{f.name}."))
        else:
            flat[prefix + f.name] = value
    return flat


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


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


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


# --- The run directory ------------------------------------------------------------------------


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


# --- Records: metrics.jsonl, events.jsonl and W&B ---------------------------------------------


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
        self._write(
            "events.jsonl", {"step": step, "event": kind, "time": time.time(), **jsonable(data)}
        )
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


def start_wandb(run_dir: Path, config: Any, flags: RunFlags, group: str, tags: list[str]) -> Any:
    """The W&B run of this run directory (resumed under the same id), or None if W&B cannot
    start at all. Online problems switch to offline mode with one line on stderr."""
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


# --- Checkpoints ------------------------------------------------------------------------------


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


_kept: dict[Path, LoadedCheckpoint] = {}


def newest_checkpoint(run_dir: str | Path, keep: bool = False) -> LoadedCheckpoint:
    """The newest checkpoint of a run directory that loads. train.py reads the config of a
    resumed run from it with `keep=True`, and the run that starts next takes that same copy
    (one load per process, and the one whose config was parsed)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _kept:
        return _kept[run_dir] if keep else _kept.pop(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume {run_dir}: not a run directory (it has no checkpoints/)")
    skipped = []
    seen: set[tuple[int, int]] = set()
    for path in checkpoint_files(run_dir):
        inode = (path.stat().st_dev, path.stat().st_ino)
        if inode in seen:  # latest.pt is a link to the newest step_<N>.pt
            continue
        seen.add(inode)
        try:
            # Our own checkpoints hold numpy arrays and the Args dataclass, so not weights-only.
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "args" not in state:
                raise ValueError("not a checkpoint of this project")
        except Exception as error:  # noqa: BLE001 - truncated, empty, garbage: try the next
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
            skipped.append(f"{path.name} ({path.stat().st_size} bytes: {reason})")
            continue
        loaded = LoadedCheckpoint(path, state, skipped)
        if keep:
            _kept[run_dir] = loaded
        return loaded
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


def load_checkpoint(run_dir: str | Path) -> dict:
    """The state of the newest checkpoint of a run directory that loads."""
    return newest_checkpoint(run_dir).state


# --- The run ----------------------------------------------------------------------------------


class StopRequest:
    """Set by the first SIGINT/SIGTERM of `Run.training`; the learner checks it at its
    consistent points (between updates) and stops there with a checkpoint."""

    requested = False


class Diverged(Exception):
    """Raised by a learner when its losses or weights stop being finite."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; train.py prints the message as one line."""


@dataclass
class Run:
    args: Any
    learner: Learner
    dir: Path
    logger: RunLogger
    device: torch.device
    checkpoint: dict | None
    """the state the run resumes from (None for a new run)"""
    lock: DirectoryLock
    new: bool
    checkpoint_path: Path | None = None
    next_checkpoint: int | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        args: Any,
        learner: Learner,
        *,
        title: str,
        group: str,
        tags: list[str],
        seed: int,
        threads: int,
        cuda: bool,
        deterministic: bool = True,
        closers: tuple[Callable[[], None], ...] = (),
    ) -> Run:
        """Check the run's flags, make (or reopen) its directory, seed, pick the device, start
        the records and W&B; on a resume also load the checkpoint and apply the new flags.

        `title` starts the run name (the env id or the stream); `threads` is the torch thread
        count (0: torch's default); `closers` close what the learner opened before (its envs),
        when the run ends or fails to start."""
        try:
            run = cls._start(args, learner, title, group, tags, seed, threads, cuda, deterministic)
        except BaseException:
            for closer in closers:
                closer()
            raise
        run.closers.extend(closers)
        return run

    @classmethod
    def _start(cls, args, learner, title, group, tags, seed, threads, cuda, deterministic) -> Run:
        require_all(
            [
                ("--seed", seed, "a seed in [0, 2**32)"),
                ("--checkpoint-every", args.checkpoint_every, ">= 0"),
                ("--keep-checkpoints", args.keep_checkpoints, ">= 1"),
                ("--torch-threads", threads, ">= 0"),
            ]
        )
        loaded = newest_checkpoint(args.resume) if args.resume else None
        if loaded is not None:
            baseline = check_mode(loaded.state["args"], learner.mode, args.resume)
        elif getattr(args, "preset", "none") != "none":
            baseline = preset_defaults(type(args), learner, args.preset)
        else:
            baseline = type(args)()
        changes = changed_flags(baseline, args)
        check_unused_flags(args, learner, set(changes))
        if loaded is not None:
            check_fixed_flags(learner, changes)

        if loaded is None:
            name = f"{title}__{args.exp_name}__{args.regularizer}__{seed}__{int(time.time())}"
            run_dir = create_run_dir(Path(args.runs_dir), name.replace("/", "-"))
        else:
            run_dir = Path(args.resume)
        lock = DirectoryLock(run_dir)
        try:
            dropped = rewind_to_checkpoint(run_dir, loaded.state) if loaded is not None else {}
            config_text = json.dumps(jsonable(args), indent=2) + "\n"
            write_atomically(run_dir / "config.json", lambda f: f.write(config_text.encode()))

            if threads > 0:
                torch.set_num_threads(threads)
            seed_everything(seed, deterministic)
            device = torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")

            wandb_run = start_wandb(run_dir, args, args, group, tags) if args.track else None
            floor = -1
            if loaded is not None:
                sent = [
                    r["step"] for r in dropped.get("records", []) if isinstance(r.get("step"), int)
                ]
                floor = max([loaded.state.get("run", {}).get("wandb_step", -1), *sent])
            logger = RunLogger(run_dir, wandb_run, wandb_floor=floor)
        except BaseException:
            lock.release()
            raise
        state = loaded.state if loaded is not None else None
        run = cls(args, learner, run_dir, logger, device, state, lock, new=loaded is None)
        provenance = {"command": command_line(), "code": code_version()}
        if loaded is None:
            logger.event(0, "start", **provenance)
        else:
            run.checkpoint_path = loaded.path
            for line in loaded.skipped:
                print(f"warning: skipped checkpoint {line}", file=sys.stderr)
            for flag, (old, new) in changes.items():
                print(f"resume: {flag} {old} -> {new}", file=sys.stderr)
            logger.event(
                loaded.state.get("run", {}).get("step", 0),
                "resume",
                checkpoint=loaded.path.name,
                skipped_checkpoints=loaded.skipped,
                dropped_metrics=dropped.get("metrics.jsonl", 0),
                dropped_events=dropped.get("events.jsonl", 0),
                changed={flag: [old, new] for flag, (old, new) in changes.items()},
                **provenance,
            )
        step = loaded.state.get("run", {}).get("step", 0) if loaded is not None else 0
        run.next_checkpoint = (
            (step // args.checkpoint_every + 1) * args.checkpoint_every
            if args.checkpoint_every
            else None
        )
        return run

    @classmethod
    def start_rl(cls, args: Any, learner: Learner, envs: Any) -> Run:
        """`start` for an RL learner (PPO, SAC): named by its env, grouped in W&B by env and
        shifts (so methods compare side by side), tagged with the method; closes its envs."""
        shifts = "+".join(args.shift) or "stationary"
        return cls.start(
            args,
            learner,
            title=args.env_id,
            group=f"{args.env_id}__{shifts}",
            tags=[args.regularizer, shifts],
            seed=args.seed,
            threads=args.torch_threads,
            cuda=args.cuda,
            deterministic=args.torch_deterministic,
            closers=(envs.close,),
        )

    # --- records --------------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> None:
        self.logger.scalars(step, values)

    def event(self, step: int, kind: str, **data: Any) -> None:
        self.logger.event(step, kind, **data)

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint_due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due at `step` (then the next one is scheduled)."""
        if self.next_checkpoint is None or step < self.next_checkpoint:
            return False
        self.next_checkpoint = (step // self.args.checkpoint_every + 1) * self.args.checkpoint_every
        return True

    def save(self, step: int, state: dict) -> Path:
        """Write checkpoints/step_<step>.pt atomically with the learner's `state`, the config and
        where the records stand; point latest.pt at it; then drop the oldest beyond
        --keep-checkpoints."""
        directory = self.dir / "checkpoints"
        directory.mkdir(exist_ok=True)
        state = {
            **state,
            "args": self.args,
            "run": {
                "step": step,
                "records": self.logger.positions(),
                "files": {
                    folder: sorted(p.name for p in (self.dir / folder).glob("step_*"))
                    for folder in STEP_FILE_FOLDERS
                },
                "wandb_step": self.logger.wandb_step,
            },
        }
        # Serialised in memory first, then written as plain bytes: torch's writer turns a full
        # disk into "[enforce fail at inline_container.cc] unexpected pos"; a file write
        # says "No space left on device".
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
        path = directory / f"step_{step}.pt"
        write_atomically(path, lambda file: file.write(data))
        self.checkpoint_path = path
        latest = directory / "latest.pt"
        try:  # a hard link: no second copy on disk, and the same bytes as step_<N>.pt
            link = directory / f".latest.{os.getpid()}.tmp"
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, latest)
        except OSError:
            write_atomically(latest, lambda file: file.write(data))
        for stale in checkpoint_files(self.dir)[self.args.keep_checkpoints :]:
            if stale.name != "latest.pt":
                stale.unlink(missing_ok=True)
        return path

    def stop_here(self, step: int, state: dict) -> None:
        """Stop on a signal at a consistent point: record it, checkpoint, raise Interrupted."""
        self.event(step, "interrupted", checkpoint=f"step_{step}.pt")
        self.save(step, state)
        raise Interrupted(
            f"stopped at step {step} with a checkpoint in {self.dir}; continue with "
            f"train.py {self.learner.mode} --resume {self.dir}"
        )

    def finish(self, step: int, state: dict) -> None:
        """The end of the run: its final checkpoint."""
        self.save(step, state)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Something to close when the run ends, however it ends (e.g. the envs)."""
        self.closers.append(closer)

    # --- the guarded part of a run ----------------------------------------------------------------

    @contextmanager
    def training(self) -> Iterator[StopRequest]:
        """Everything from building the networks to the final checkpoint runs inside this.

        Signals: the first SIGINT/SIGTERM sets `stop.requested`; the learner stops at its next
        consistent point (`stop_here`); a second one stops at once, without a checkpoint.
        Errors: a divergence, a failed write or a bad configuration end the run with one line
        (ConfigError, printed by train.py) and the records so far intact."""
        stop = StopRequest()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def request(signum: int, frame: Any) -> None:
                if stop.requested:
                    raise KeyboardInterrupt
                stop.requested = True
                print(
                    f"\n{signal.Signals(signum).name}: stopping at the next consistent point with a "
                    "checkpoint (send it again to stop at once)",
                    file=sys.stderr,
                )

            previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        last_good = lambda: (  # noqa: E731
            f"the last good checkpoint is {self.checkpoint_path}"
            if self.checkpoint_path
            else "no checkpoint was written"
        )
        mode = self.learner.mode
        try:
            yield stop
            self._safe_event("finished")  # the run ended normally: what a sweep looks for
        except Interrupted:
            raise
        except KeyboardInterrupt:
            self._safe_event("interrupted", checkpoint=None)
            raise Interrupted(
                f"stopped at once: {last_good()}; continue with train.py {self.learner.mode} --resume {self.dir}"
            ) from None
        except Diverged as error:
            self._safe_event("diverged", message=str(error), step=error.step)
            again = (
                f"resume from it with a smaller learning rate or regularizer strength: "
                f"train.py {mode} --resume {self.dir} --<flag> <value>"
                if self.checkpoint_path
                else "start a new run with a smaller learning rate or regularizer strength"
            )
            raise ConfigError(
                f"training diverged at step {error.step}: {error}; logs are in {self.dir} and "
                f"{last_good()} ({again})"
            ) from None
        except RunWriteError as error:
            raise ConfigError(
                f"{error}; {last_good()} (--resume continues from it once the disk has room)"
            ) from None
        except ConfigError:
            if self.new and not self.logger.positions()["metrics.jsonl"]:
                self._abandon()  # a bad configuration found while setting up: leave nothing
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for closer in reversed(self.closers):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing must not hide the run's own error
                    pass
            self.logger.close()
            self.lock.release()

    def _safe_event(self, kind: str, step: int | None = None, **data: Any) -> None:
        """Record how the run ended, if the disk still takes it."""
        try:
            self.event(self.logger.last_step if step is None else step, kind, **data)
        except OSError:
            pass

    def _abandon(self) -> None:
        self.logger.close()
        self.lock.release()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- Resume: which flags changed, what a crash left behind ----------------------------------------


def changed_flags(before: Any, after: Any) -> dict[str, tuple[Any, Any]]:
    """{--flag: (old, new)} for every config field that differs (the flags that were given)."""
    old, new = flat_config(before), flat_config(after)
    return {
        flag_name(key): (old.get(key), value)
        for key, value in new.items()
        if key not in ("resume", "preset") and jsonable(old.get(key)) != jsonable(value)
    }


def check_fixed_flags(learner: Learner, changes: dict[str, tuple[Any, Any]]) -> None:
    for key in learner.fixed_on_resume:
        for flag, (old, new) in changes.items():
            if flag == flag_name(key) or flag.startswith(flag_name(key) + "."):
                raise ConfigError(
                    f"{flag} cannot change on a resume: the run has {old}, the flags give {new} "
                    "(start a new run for that)"
                )


def unused_given_flags(args: Any, learner: Learner, given: set[str]) -> dict[str, str]:
    """{flag: why it has no effect} for the given flags that have none in this configuration."""
    return {
        flag: why
        for key, why in unused_fields(args, learner).items()
        for flag in sorted(given)
        if flag == flag_name(key) or flag.startswith(flag_name(key) + ".")
    }


def unused_fields(args: Any, learner: Learner) -> dict[str, str]:
    """{config field: why it has no effect} in this configuration, whatever its value."""
    from diagnostics import unused_flags as unused_diagnostics_flags
    from envs import unused_flags as unused_shift_flags
    from regularizers import unused_flags as unused_method_flags

    unused = {
        **unused_shift_flags(args),
        **unused_method_flags(args),
        **unused_diagnostics_flags(args),
        **learner.unused_flags(args),
    }
    if not args.track:
        unused.update(
            dict.fromkeys(
                ("wandb_project_name", "wandb_entity", "wandb_group", "wandb_tags"),
                "it is a W&B flag and --track is off",
            )
        )
    return unused


def check_unused_flags(args: Any, learner: Learner, given: set[str]) -> None:
    """Refuse a flag that was given but has no effect in this configuration."""
    for flag, why in unused_given_flags(args, learner, given).items():
        raise ConfigError(f"{flag} has no effect here: {why}")


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


# --- Shared by the RL learners ------------------------------------------------------------------


class EpisodeStats:
    """Returns and lengths of the episodes in flight in a vector env. Episodes that end at the
    same vector step are logged as one line (their mean, and how many), so that a step has one
    value per metric, in metrics.jsonl as in W&B."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent: list[float] = []
        self.rollout: list[float] = []  # returns of the episodes ended since rollout_return()

    def step(self, rewards: np.ndarray, done: np.ndarray, run: Run, global_step: int) -> None:
        self.returns += rewards
        self.lengths += 1
        ended = np.flatnonzero(done)
        if ended.size:
            run.log(
                global_step,
                {
                    "charts/episodic_return": float(self.returns[ended].mean()),
                    "charts/episodic_length": float(self.lengths[ended].mean()),
                    "charts/episodes": int(ended.size),
                },
            )
            self.recent = [*self.recent, *self.returns[ended].tolist()][-10:]
            self.rollout += self.returns[ended].tolist()
            self.returns[ended], self.lengths[ended] = 0.0, 0

    def rollout_return(self) -> dict[str, float]:
        """{"charts/rollout_return": the mean return of the episodes that ended since the last
        call} (a PPO iteration's mean return, C-CHAIN's learning-curve point), or {} if none
        ended; the next call counts from here."""
        ended, self.rollout = self.rollout, []
        return {"charts/rollout_return": float(np.mean(ended))} if ended else {}

    def summary(self) -> str:
        return f"{np.mean(self.recent):.0f}" if self.recent else "-"


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
