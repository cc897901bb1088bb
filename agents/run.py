"""The run lifecycle every learner shares: one `Run` per training run.

A learner writes only its algorithm; this module and the three beside it own what a run
leaves behind: records.py (the run directory, its lock, metrics.jsonl / events.jsonl, W&B),
checkpoints.py (the newest good checkpoint, the rewind a resume does), flags.py (the shared
flags, presets, which flags changed or would have no effect). A run:

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

import io
import json
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from agents.checkpoints import (
    Resumed,
    checkpoint_files,
    drop_newer_checkpoints,
    point_latest_at,
    resume_from,
    rewind_to_checkpoint,
    set_rng_state,
)
from agents.flags import (
    Learner,
    baseline_config,
    changed_flags,
    check_fixed_flags,
    check_unused_flags,
)
from agents.records import (
    STEP_FILE_FOLDERS,
    DirectoryLock,
    RunLogger,
    RunWriteError,
    code_version,
    command_line,
    create_run_dir,
    jsonable,
    start_wandb,
    write_atomically,
)
from validation import ConfigError, require_all

if TYPE_CHECKING:  # annotations only: starting a run needs neither package
    from diagnostics import TaskBoundaries
    from envs import ShiftingVectorEnv
    from envs.video import ClipRecorder


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


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


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
    setting_up: bool = True
    """a ConfigError while this holds and before any metric ends a new run leaving nothing (a
    learner that runs several runs in one process clears it once they all train)"""

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
        resumed: Resumed | None = None,
    ) -> Run:
        """Check the run's flags, make (or reopen) its directory, seed, pick the device, start
        the records and W&B; on a resume also load the checkpoint and apply the new flags.

        `title` starts the run name (the env id or the stream); `threads` is the torch thread
        count (0: torch's default); `closers` close what the learner opened before (its envs),
        when the run ends or fails to start; `resumed` is what train.py read for --resume
        (`resume_from`), read here when not given."""
        try:
            run = cls._start(
                args, learner, title, group, tags, seed, threads, cuda, deterministic, resumed
            )
        except BaseException:
            for closer in closers:
                closer()
            raise
        run.closers.extend(closers)
        return run

    @classmethod
    def _start(
        cls, args, learner, title, group, tags, seed, threads, cuda, deterministic, resumed
    ) -> Run:
        require_all(
            [
                ("--seed", seed, "a seed in [0, 2**32)"),
                ("--checkpoint-every", args.checkpoint_every, ">= 0"),
                ("--keep-checkpoints", args.keep_checkpoints, ">= 1"),
                ("--torch-threads", threads, ">= 0"),
            ]
        )
        if resumed is None and args.resume:
            resumed = resume_from(args.resume, learner.mode)
        saved, loaded = resumed if resumed is not None else (None, None)
        baseline = baseline_config(type(args), learner, getattr(args, "preset", "none"), saved)
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
    def start_rl(cls, args: Any, learner: Learner, envs: Any, resumed: Resumed | None) -> Run:
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
            resumed=resumed,
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
        point_latest_at(path, data)
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
            if self.setting_up and self.new and not self.logger.positions()["metrics.jsonl"]:
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
        self._leave()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _leave(self) -> None:
        """Close a run that never trained, keeping its directory (a reopened run: its next
        resume rewinds what this one wrote)."""
        self.logger.close()
        self.lock.release()


def seed_configs(args: Any, mode: str) -> list[Any]:
    """`--seeds S1 S2 ...` (agents/ppo_seeds.py, agents/supervised_seeds.py): one line for what
    no learner can batch, else each seed's config, the one `--seed S` alone has (`{seed}` in
    --runs-dir becomes its own)."""
    seeds = list(args.seeds)
    require_all([("--seeds", seed, "a seed in [0, 2**32)") for seed in seeds])
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: each seed once, got {seeds}")
    if args.resume:
        raise ConfigError(
            "--seeds cannot be combined with --resume: each seed's run directory is an ordinary "
            f"run; resume it on its own with train.py {mode} --resume RUN_DIR"
        )
    runs_dir = args.runs_dir
    return [replace(args, seed=seed, seeds=(), runs_dir=runs_dir.replace("{seed}", str(seed)))
            for seed in seeds]  # fmt: skip


def resumed_seed_configs(args: Any, per_seed: list[Any], resumed: list) -> list[Any]:
    """The configs of seeds resumed together (`per_seed`: the flags given, each with its seed;
    `resumed`: each run's saved config and checkpoint, agents.checkpoints.resume_together):
    each its own run directory, and its own W&B tags unless new ones were given for all."""
    tags_given = args.wandb_tags != resumed[0][0].wandb_tags
    return [
        replace(one, resume=str(loaded.path.parents[1]), runs_dir=saved.runs_dir,
                wandb_tags=one.wandb_tags if tags_given else saved.wandb_tags)
        for one, (saved, loaded) in zip(per_seed, resumed, strict=True)
    ]  # fmt: skip


def start_seed_runs(
    per_seed: list[Any],
    resumed: list[Resumed] | None,
    start: Callable[[Any, Resumed | None], Any],
    close: Callable[[Any], None] = lambda seed: None,
) -> list[Any]:
    """The K seeds of one `--seeds` process, or of `--resume DIR1 DIR2 ...`: `start(config,
    resumed)` returns a seed holding its started Run (`.run`). If a later seed cannot start,
    the earlier ones are closed and leave nothing new (a new run's directory is removed, a
    resumed one left as it was). Then each resumed run's checkpoints newer than the common
    step are dropped: its records were rewound to that step (agents.checkpoints.resume_together)."""
    seeds = []
    try:
        for index, one in enumerate(per_seed):
            seeds.append(start(one, resumed[index] if resumed else None))
    except BaseException:
        for seed in seeds:
            close(seed)
            seed.run._leave() if resumed else seed.run._abandon()
        raise
    for _, loaded in resumed or []:
        drop_newer_checkpoints(loaded)
    return seeds


@contextmanager
def seeds_training(seeds: list[Any]) -> Iterator[None]:
    """Each seed's `Run.training()`, entered on the seed's own guard (`.guard`, its stop request
    in `.stop`), so that one seed can end alone (`end_diverged`) while the others go on."""
    with ExitStack() as guard:
        for seed in seeds:
            guard.enter_context(seed.guard)
            seed.stop = seed.guard.enter_context(seed.run.training())
        yield


LearnerArgs = TypeVar("LearnerArgs")


@dataclass
class RLSeed(Generic[LearnerArgs]):
    """One seed's ordinary run inside a `--seeds` process of PPO or SAC, and what every such
    loop carries; each learner's `Seed` (an `RLSeed[its Args]`) adds its agent and its loop's
    own state."""

    args: LearnerArgs
    envs: ShiftingVectorEnv
    run: Run
    guard: ExitStack = field(default_factory=ExitStack)
    stop: StopRequest | None = None
    generator: torch.Generator | None = None
    episodes: Any = None  # agents.progress.EpisodeStats (that module imports this one)
    boundaries: TaskBoundaries | None = None
    clips: ClipRecorder | None = None
    to_device: HostToDevice | None = None
    diverged: str | None = None
    global_step: int = 0


def train_rl_seeds(
    args: Any,
    per_seed: list[Any],
    resumed: list[Resumed] | None,
    start: Callable[[Any, Resumed | None], Any],
    train_together: Callable[[Any, list[Any]], None],
) -> list[Path]:
    """`train.py ppo|sac --seeds ...` once each seed's config is checked: start every seed's run
    (`start(config, resumed)`: a seed holding its `.envs` and started `.run`), build each, then
    `train_together(args, seeds)`; one line afterwards for the seeds that diverged. Returns the
    run directories."""
    seeds = start_seed_runs(per_seed, resumed, start, close=lambda seed: seed.envs.close())
    with seeds_training(seeds):
        for seed in seeds:
            seed.build()
            seed.run.event(seed.global_step, "seeds_in_process", seeds=list(args.seeds))
            seed.run.setting_up = False
        if resumed:  # one global stream in the process: where every seed's checkpoint left it
            set_rng_state(seeds[0].run.checkpoint["rng"])
        train_together(args, seeds)
    check_no_seed_diverged({seed.args.seed: seed.diverged for seed in seeds if seed.diverged},
                           len(seeds))  # fmt: skip
    return [seed.run.dir for seed in seeds]


def check_no_seed_diverged(diverged: dict[int, str], seeds: int) -> None:
    """After the others finished: one line naming each seed that diverged ({seed: message})."""
    if diverged:
        names = "; ".join(f"seed {seed}: {message}" for seed, message in diverged.items())
        raise ConfigError(f"{len(diverged)} of {seeds} seeds diverged ({names}); the others "
                          "finished, each in its run directory")  # fmt: skip


def end_diverged(guard: ExitStack, error: Diverged) -> str:
    """End one of several runs in one process (`--seeds`) as diverged, as a run alone ends:
    `guard` holds its `Run.training()`, which records the `diverged` event and closes it. The
    others go on: the signal handlers in force stay (its exit would restore the ones it
    found, an earlier run's). Returns the one-line message."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    message = str(error)
    try:
        guard.__exit__(Diverged, error, error.__traceback__)
    except ConfigError as line:
        message = str(line)
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return message


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
