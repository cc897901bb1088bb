"""Where a sweep's cells run. A launcher only starts each cell's process (`train.py MODE ...`,
the command experiments.sweep gives it) and reports how it ended; what a cell does is the run's
own business, so every launcher makes the same run directories.

- local (default): up to --workers processes at once on this machine (default: one per core,
  each run using one torch thread).
- slurm: one Slurm job per cell, submitted as one job array through submitit (--slurm-partition,
  --slurm-time minutes, --slurm-cpus and --slurm-gpus per cell, --slurm-array-parallelism).
  --slurm-cluster local runs the same submission through submitit's local executor (the tests
  do); the default is slurm where `sbatch` exists.
- ray: one Ray task per cell (--ray-cpus and --ray-gpus per cell), on the cluster at
  RAY_ADDRESS or on a local one started for the sweep and stopped after it.

On Slurm and Ray the sweep directory must be on a filesystem every node sees, and every node
needs this project installed at the same path (the cells run its train.py). Ctrl-C or SIGTERM
stops every running cell at its next consistent point, each with a checkpoint (a second one
stops them at once); running the same sweep command again resumes them. The engines are
optional extras (`pip install -e ".[slurm]"` / `".[ray]"`; `make test` installs both).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from experiments.cells import (
    Cell,
    EngineFlags,
    Job,
    Manifest,
    Sweep,
    cell_state,
    error_line,
    jobs,
    run_dir_of,
)
from validation import ConfigError

STOPPED = (130, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL)  # exit statuses of a stop


def run_cell_process(command: list[str], log_path: str, cwd: str, stop_file: str) -> int:
    """Run one cell's command with its output appended to its log; return its exit status.

    What a Slurm job or a Ray task runs. The sweep asks its cells to stop by creating
    `stop_file` (in the sweep directory, which every node sees): engines' own cancels are not
    a stop at a consistent point (Ray's reports a task cancelled before the task has heard of
    it, and the worker's process is then killed). A stop file, or a stop signal from the engine
    (SIGTERM from scancel, USR2 before a time limit, SIGINT), is passed on to the run once, as
    SIGTERM: it stops at its next consistent point with a checkpoint."""
    if os.path.exists(stop_file):  # started after the sweep was stopped: leave it for the rerun
        return 130
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        asked = []

        def forward(signum: int, frame: Any) -> None:
            if not asked:  # one stop: a second SIGTERM would stop the run at once
                asked.append(signum)
                process.send_signal(signal.SIGTERM)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
                signal.signal(sig, forward)
        while process.poll() is None:
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:  # a SIGINT where the handler could not be set
                forward(signal.SIGINT, None)
            if os.path.exists(stop_file):
                forward(signal.SIGTERM, None)
        return process.returncode


def check_engine(flags: EngineFlags) -> str | None:
    """One error line when the launcher's engine is not here (before anything is written);
    returns the submitit cluster a slurm launcher uses."""
    if flags.launcher == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(
                '--launcher slurm needs submitit: pip install -e ".[slurm]" (make test installs it)'
            ) from None
        if flags.slurm_cluster != "auto":
            return flags.slurm_cluster
        if not shutil.which("sbatch"):
            raise ConfigError("--launcher slurm: no sbatch here; on a machine without Slurm "
                              "give --slurm-cluster local to run the jobs here")  # fmt: skip
        return "slurm"
    if flags.launcher == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                '--launcher ray needs Ray: pip install -e ".[ray]" (make test installs it)'
            ) from None
        check_ray_address(os.environ.get("RAY_ADDRESS", ""))
    return None


# --- engines: start a cell, poll it, stop it -----------------------------------------------------


class LocalEngine:
    """Processes on this machine, at most `capacity` at once."""

    def __init__(self, sweep: Sweep):
        self.capacity = sweep.workers

    def start(self, items: list[tuple[list[str], Path]]) -> list[Any]:
        handles = []
        for command, log_path in items:
            log = open(log_path, "a")  # noqa: SIM115 - closed in poll
            # A session of its own: a terminal's Ctrl-C reaches the sweep, which passes it on
            # as SIGTERM, rather than every cell at once and the sweep left behind.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
            handles.append((process, log))
        return handles

    def poll(self, handle: Any) -> tuple[bool, int | None]:
        process, log = handle
        code = process.poll()
        if code is not None:
            log.close()
        return code is not None, code

    def stop(self, handle: Any) -> None:
        handle[0].send_signal(signal.SIGTERM)

    def kill(self, handle: Any) -> None:
        handle[0].kill()
        handle[1].close()

    def close(self) -> None:
        pass


class SlurmEngine:
    """A submitit job array: one job per cell, each running `run_cell_process`."""

    def __init__(self, sweep: Sweep):
        import submitit

        cluster = check_engine(sweep.engine)
        flags = sweep.engine
        self.cluster = cluster
        self.stop_file = sweep.stop_file
        self.capacity = None  # Slurm queues them (array parallelism)
        self.executor = submitit.AutoExecutor(folder=sweep.directory / "submitit", cluster=cluster)
        parameters: dict[str, Any] = {
            "timeout_min": flags.slurm_time,
            "cpus_per_task": flags.slurm_cpus,
            "name": f"sweep-{sweep.directory.name}",
            "slurm_array_parallelism": flags.slurm_array_parallelism,
        }
        if flags.slurm_gpus:
            parameters["gpus_per_node"] = flags.slurm_gpus
        if flags.slurm_partition:
            parameters["slurm_partition"] = flags.slurm_partition
        self.executor.update_parameters(**parameters)

    def start(self, items: list[tuple[list[str], Path]]) -> list[Any]:
        cwd, stop = os.getcwd(), str(self.stop_file)
        with self.executor.batch():  # one job array
            jobs = [self.executor.submit(run_cell_process, c, str(p), cwd, stop) for c, p in items]
        return jobs

    def poll(self, job: Any) -> tuple[bool, int | None]:
        if not job.done():
            return False, None
        try:
            return True, int(job.result())
        except Exception:  # cancelled, killed, or failed outside the run: read its directory
            return True, None

    def stop(self, job: Any) -> None:
        # A running job reads the stop file; one still queued would wait for its turn only to
        # stop at once, so it is cancelled (and started again by the rerun).
        if self.cluster != "local" and job.state in ("PENDING", "REQUEUED"):
            job.cancel(check=False)

    def kill(self, job: Any) -> None:
        job.cancel(check=False)

    def close(self) -> None:
        pass


def check_ray_address(address: str) -> None:
    """One error line at once when nothing listens at a host:port RAY_ADDRESS: Ray itself
    retries an unreachable cluster for minutes (measured: over 5) before it says so."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "local", "auto", ray://...: Ray's own business
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise ConfigError(f"--launcher ray: nothing answers at RAY_ADDRESS={address} "
                          f"({error.strerror or error}); is the cluster up?") from None  # fmt: skip


class RayEngine:
    """Ray tasks on the cluster at RAY_ADDRESS, or on a local one started here."""

    def __init__(self, sweep: Sweep):
        import ray

        self.ray = ray
        self.stop_file = sweep.stop_file
        self.capacity = None  # Ray schedules them by the resources each asks for
        self.started_here = not ray.is_initialized()
        if self.started_here:
            # "local" starts a cluster of our own: with no address Ray would join the last
            # cluster started on this machine, whatever it is, if it is still up.
            address = os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)  # fmt: skip
            except Exception as error:  # Ray's own error, after its own retries
                reason = str(error).strip().splitlines()[-1]
                if "InvalidAuthToken" in f"{error} {error.__cause__}":
                    reason = ("it asks for a token: set RAY_AUTH_MODE=token (Ray reads the token "
                              "from RAY_AUTH_TOKEN or ~/.ray/auth_token)")  # fmt: skip
                raise ConfigError(f"--launcher ray: cannot reach the Ray cluster at "
                                  f"{address}: {reason}") from None  # fmt: skip
        self.task = ray.remote(num_cpus=sweep.engine.ray_cpus, num_gpus=sweep.engine.ray_gpus,
                               max_retries=0)(run_cell_process)  # fmt: skip

    def start(self, items: list[tuple[list[str], Path]]) -> list[Any]:
        cwd, stop = os.getcwd(), str(self.stop_file)
        return [self.task.remote(command, str(path), cwd, stop) for command, path in items]

    def poll(self, ref: Any) -> tuple[bool, int | None]:
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return False, None
        try:
            return True, int(self.ray.get(ref))
        except Exception:  # cancelled, or its worker died: read the cell's directory
            return True, None

    def stop(self, ref: Any) -> None:
        pass  # a running task reads the stop file; a queued one returns at once when it starts

    def kill(self, ref: Any) -> None:
        self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


ENGINES = {"local": LocalEngine, "slurm": SlurmEngine, "ray": RayEngine}


# --- the driver: the same for every engine --------------------------------------------------------


def finish(
    sweep: Sweep, manifest: Manifest, cell: Cell, returncode: int | None, log: str, stopping: bool
) -> None:
    """Record how a cell ended: 0 finished, stopped (130, or killed by the signal the sweep
    sent) interrupted (resumed, or started again, by the next run of the sweep), anything else
    failed, with its error line. With no exit status (an engine's job cancelled or lost) the
    cell's own directory says which."""
    run_dir = run_dir_of(sweep.cell_dir(cell))
    where = str(run_dir) if run_dir else None
    if returncode is None:
        state = cell_state(sweep.cell_dir(cell))
        returncode = 0 if state == "finished" else 130 if stopping or state == "interrupted" else 1
    if returncode == 0:
        manifest.update(cell, status="finished", run_dir=where, error=None)
    elif returncode == 130 or (stopping and returncode in STOPPED):
        manifest.update(cell, status="interrupted", run_dir=where)
    else:
        manifest.update(cell, status="failed", run_dir=where, error=error_line(log))


def launch(sweep: Sweep, manifest: Manifest, todo: list[tuple[Cell, str]]) -> bool:
    """Run the cells in `todo` ((cell, state) pairs) on the sweep's engine, one process per
    job (a cell, or the cells that differ only in seed: experiments.cells.jobs). Returns
    whether the sweep was stopped by a signal before every cell had run."""
    sweep.stop_file.unlink(missing_ok=True)  # left by a stopped run of this sweep
    engine = ENGINES[sweep.engine.launcher](sweep)
    pending = jobs(sweep, todo)
    running: dict[int, tuple[Job, Any, Path, int]] = {}
    stop = {"requested": 0}

    def request(signum: int, frame: Any) -> None:
        stop["requested"] += 1
        sweep.stop_file.touch()
        for _, handle, _, _ in running.values():
            (engine.stop if stop["requested"] == 1 else engine.kill)(handle)
        print(f"\n{signal.Signals(signum).name}: stopping every running cell "
              "(again to stop them at once)", file=sys.stderr)  # fmt: skip

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    # A terminal gets a progress bar; a log file (Slurm, CI, nohup) one line per cell that ends.
    on_terminal = sys.stderr.isatty()
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.directory.name}", unit="cell",
               disable=not on_terminal)  # fmt: skip
    started, ended = {}, 0
    try:
        while running or (pending and not stop["requested"]):
            room = len(pending) if engine.capacity is None else engine.capacity - len(running)
            batch = []
            while pending and len(batch) < room and not stop["requested"]:
                job = pending.pop(0)
                # A job of several cells logs into its first cell's cell.log; the others get
                # a copy of what it wrote when it ends.
                log_path = sweep.cell_dir(job.cells[0]) / "cell.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                offset = log_path.stat().st_size if log_path.exists() else 0
                batch.append((job, log_path, offset))
            if batch:
                handles = engine.start([(job.command, path) for job, path, _ in batch])
                for (job, path, offset), handle in zip(batch, handles, strict=True):
                    for cell in job.cells:
                        attempts = manifest.entry(cell).get("attempts", 0) + 1
                        manifest.update(cell, status="running", error=None, attempts=attempts)
                        started[cell.id] = time.time()
                    running[id(handle)] = (job, handle, path, offset)
            for key, (job, handle, path, offset) in list(running.items()):
                done, code = engine.poll(handle)
                if not done:
                    continue
                del running[key]
                text = ""
                if path.exists():  # a cell that never started (stopped first) has none
                    with open(path) as log:
                        log.seek(offset)
                        text = log.read()
                for cell in job.cells:
                    if cell is not job.cells[0] and text:
                        with open(sweep.cell_dir(cell) / "cell.log", "a") as copy:
                            copy.write(text)
                    # In a job of several seeds, each cell's own run says how it ended (one
                    # seed may diverge while the others finish).
                    cell_code = code
                    if len(job.cells) > 1 and cell_state(sweep.cell_dir(cell)) == "finished":
                        cell_code = 0
                    elif len(job.cells) > 1 and code == 0:
                        cell_code = None
                    finish(sweep, manifest, cell, cell_code, text, bool(stop["requested"]))
                    bar.update(1)
                    ended += 1
                    if not on_terminal:
                        status = manifest.entry(cell)["status"]
                        seconds = time.time() - started[cell.id]
                        print(f"[{ended}/{len(todo)}] {status}: {cell.id} ({seconds:.0f} s)",
                              file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(0.1 if engine.capacity else 0.5)
    finally:
        for _, handle, _, _ in running.values():  # only after an error of the sweep's own
            engine.kill(handle)
        engine.close()
        sweep.stop_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
    return bool(stop["requested"]) and any(
        manifest.entry(cell)["status"] != "finished" for cell, _ in todo
    )
