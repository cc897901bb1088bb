"""One entry point: `python train.py MODE [--preset NAME] [--resume RUN_DIR] [FLAGS]`.

    python train.py ppo --help
    python train.py ppo --preset demo
    python train.py ppo --env-id HalfCheetah-v5 --shift friction --shift-every 200000 \\
        --regularizer l2-er --total-timesteps 1000000 --track

A mode is a learner module in agents/ (agents/cli.py: MODES, and how its flags are parsed).
A preset is a named set of defaults that the flags given after it override; --resume starts
from the saved config of a run directory instead, and the flags given replace it.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

# MuJoCo chooses its OpenGL backend when it is first imported; on a Linux machine with no
# display only offscreen EGL can render (--capture-video), so that is the default there.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

from agents.cli import MODES, parse  # noqa: E402  (after MUJOCO_GL is set)
from validation import ConfigError

USAGE = f"""usage: train.py MODE [--preset NAME] [--resume RUN_DIR] [FLAGS]
       train.py MODE --resume RUN_DIR1 RUN_DIR2 ... [FLAGS]  (seeds resumed in one process)
       train.py sweep MODE [BASE FLAGS] --grid KEY=V1,V2 [KEY=...] [--workers N]
       train.py sweep --config NAME|SWEEP.toml     (named sweeps: experiments/sweeps/)
       train.py report SWEEP_DIR | RUN_DIR... [--out DIR]

modes: {", ".join(MODES)}   (python train.py MODE --help lists every flag; a sweep is a grid
of ordinary runs of one mode, resumed by running the same command again; a report reads run
directories and answers, across methods and seeds, whether a method keeps plasticity)"""


def one_line_errors(command: Callable[[], Any]) -> Any:
    """Run a command with its expected failures as one line: a bad flag or input (exit 2), a
    stop (130), Ctrl-C before a run had started (130)."""
    from agents.run import Interrupted

    try:
        return command()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # before the run had started: nothing to keep
        print("interrupted: before the run started; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("sweep", "report"):  # experiments/sweep.py, experiments/report.py
        command = importlib.import_module(f"experiments.{argv[0]}")
        one_line_errors(lambda: command.run(argv[1:]))
        return
    if argv[0] not in MODES:
        raise SystemExit(
            f"error: unknown mode '{argv[0]}'; choose one of: {', '.join(MODES)}\n{USAGE}"
        )
    # Until the run installs its own handlers (which stop it at a consistent point), SIGTERM
    # is Ctrl-C: a scheduler's stop during set-up ends with one line and exit status 130.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def train() -> Any:
        module, args, resumed = parse(argv[0], argv[1:])
        if getattr(args, "seeds", ()):  # K seeds of one configuration in one process
            return importlib.import_module(f"agents.{argv[0]}_seeds").train(args, resumed)
        return [module.train(args, resumed)]

    for run_dir in one_line_errors(train):
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # output piped into a reader that stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second one at exit
        raise SystemExit(0) from None
