"""Where a sweep's cells run. A launcher only starts each cell's process (`train.py MODE ...`,
the command experiments.sweep gives it) and reports how it ended; what a cell does is the run's
own business.

- local: up to --workers processes at once on this machine (default: one per core, each run
  using one torch thread). Ctrl-C or SIGTERM stops every running cell at its next consistent
  point, each with a checkpoint; running the same sweep command again resumes them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

from experiments.sweep import Cell, Manifest, Sweep, cell_command, error_line, run_dir_of

STOPPED = (130, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL)  # exit statuses of a stop


def finish(
    sweep: Sweep, manifest: Manifest, cell: Cell, returncode: int, log: str, stopping: bool
) -> None:
    """Record how a cell's process ended: 0 finished, stopped (130, or killed by the signal the
    sweep sent) interrupted (resumed, or started again, by the next run of the sweep), anything
    else failed, with its error line."""
    run_dir = run_dir_of(sweep.cell_dir(cell))
    if returncode == 0:
        manifest.update(cell, status="finished", run_dir=str(run_dir), error=None)
    elif returncode == 130 or (stopping and returncode in STOPPED):
        manifest.update(cell, status="interrupted", run_dir=str(run_dir) if run_dir else None)
    else:
        manifest.update(cell, status="failed", run_dir=str(run_dir) if run_dir else None,
                        error=error_line(log))  # fmt: skip


def run_local(sweep: Sweep, manifest: Manifest, todo: list[tuple[Cell, str]]) -> bool:
    """Run the cells in `todo` ((cell, state) pairs), at most sweep.workers at once. Returns
    whether the sweep was stopped by a signal before every cell had run."""
    pending = list(todo)
    running: dict[subprocess.Popen, tuple[Cell, Any, int]] = {}
    stop = {"requested": 0}

    def request(signum: int, frame: Any) -> None:
        stop["requested"] += 1
        for process in running:  # each stops at its next consistent point (a second: at once)
            process.send_signal(signal.SIGTERM)
        print(f"\n{signal.Signals(signum).name}: stopping every running cell "
              "(again to stop them at once)", file=sys.stderr)  # fmt: skip

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.directory.name}", unit="cell",
               disable=not sys.stderr.isatty())  # fmt: skip
    try:
        while running or (pending and not stop["requested"]):
            while pending and len(running) < sweep.workers and not stop["requested"]:
                cell, state = pending.pop(0)
                cell_dir = sweep.cell_dir(cell)
                cell_dir.mkdir(parents=True, exist_ok=True)
                log = open(cell_dir / "cell.log", "a+")  # noqa: SIM115 - closed when it ends
                offset = log.tell()
                # A session of its own: a terminal's Ctrl-C reaches the sweep, which passes it
                # on as SIGTERM, rather than every cell at once and the sweep left behind.
                process = subprocess.Popen(
                    cell_command(sweep, cell, state), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                entry = manifest.entry(cell)
                manifest.update(cell, status="running", error=None,
                                attempts=entry.get("attempts", 0) + 1)  # fmt: skip
                running[process] = (cell, log, offset)
            for process in [p for p in running if p.poll() is not None]:
                cell, log, offset = running.pop(process)
                log.flush()
                log.seek(offset)
                finish(sweep, manifest, cell, process.returncode, log.read(),
                       stopping=bool(stop["requested"]))  # fmt: skip
                log.close()
                bar.update(1)
            time.sleep(0.1)
    finally:
        for process, (_, log, _) in running.items():  # only after an error of the sweep's own
            process.kill()
            log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
    return bool(stop["requested"]) and any(
        manifest.entry(cell)["status"] != "finished" for cell, _ in todo
    )
