"""A sweep: a grid of ordinary runs of one mode, each in its own run directory, resumable.

    python train.py sweep supervised --preset demo --grid regularizer=none,l2,l2-er seed=1,2,3
    python train.py sweep ppo --total-timesteps 200000 --grid seed=1,2 --workers 2
    python train.py sweep --config sweep.toml

Every cell is exactly the run `train.py MODE <base flags> <its axis flags>` makes, through the
same code path, in `SWEEP_DIR/cells/<cell>/`. Cells are checked before any starts (a bad flag
is one `error:` line for the whole sweep), and an axis flag that has no effect in a cell (an L2
strength for `--regularizer none`) is left out of that cell, so cells that would be the same
run are one cell. SWEEP_DIR/manifest.json lists the cells, their flags, status, run directory
and error line, the command and the code version. The sweep directory is named after what the
sweep runs (mode, base flags, axes), so running the same command again resumes it: finished
cells are skipped, interrupted ones resumed from their checkpoints, failed ones listed with
their error line (run again only with --retry-failed). With --track every cell of a sweep is
in one W&B group, tagged with its axis values.

A TOML file says the same: mode = "supervised", base = ["--preset", "demo"], and a [grid]
table of key = [values]. There an axis can also be a table of named flag sets, one per value
(`[grid.method]` with `l2 = ["--regularizer", "l2", "--l2.weight-decay", "1e-4"]`): a method is
then its own best settings, not one row of a full grid. `--config NAME` with no such file reads
the named sweep experiments/sweeps/NAME.toml (the paper's setups; docs/experiments.md), whose
sweep directory is sweeps/NAME.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from experiments.cells import (
    ENGINE_CHOICES,
    REPO,
    Cell,
    EngineFlags,
    Manifest,
    Sweep,
    cell_id,
    cell_state,
    jobs,
    run_dir_of,
)
from experiments.launchers import check_engine, launch
from validation import ConfigError

NAMED_SWEEPS = REPO / "experiments" / "sweeps"
USAGE = """usage: train.py sweep MODE [BASE FLAGS] --grid KEY=V1,V2 [KEY=...] [--workers N]
                      [--sweep-dir DIR] [--retry-failed] [--dry-run] [--no-group-seeds]
                      [--launcher local|slurm|ray]
                      [--slurm-partition P --slurm-time MIN --slurm-cpus N --slurm-gpus N
                       --slurm-array-parallelism N --slurm-cluster auto|slurm|local]
                      [--ray-cpus N --ray-gpus N]
       train.py sweep --config SWEEP.toml|NAME [EXTRA FLAGS] [--workers N] [--sweep-dir DIR]
                      [--retry-failed] [--dry-run] [--no-group-seeds]"""


FLAGS_HELP = """
A sweep's own flags (every other flag is a base flag of each cell; `train.py MODE --help`):
  MODE                      ppo, sac or supervised (a TOML names it itself)
  --grid KEY=V1,V2 ...      one axis per KEY (a flag without its dashes, e.g. seed=1,2,3 or
                            l2.weight-decay=1e-4,1e-3); cells are every combination
  --config FILE|NAME        a TOML file (mode, base, [grid], optional [published]) or a named
                            sweep of experiments/sweeps/ (its directory: sweeps/NAME)
  --workers N               cells run at once by --launcher local (default: the CPU count)
  --sweep-dir DIR           where the sweep lives (default: sweeps/<its name>)
  --retry-failed            run the cells that failed before again
  --dry-run                 check every cell and print the command each would run now
                            (finished cells left out, interrupted ones resumed); run nothing
  --group-seeds, --no-group-seeds
                            cells that differ only in their seed run as one process
                            (train.py MODE ... --seeds S1 S2 ...: each seed still its own run
                            in its own cell's directory); on by default for --launcher local,
                            off for slurm and ray. Where there are fewer such processes than
                            --workers, groups are cut into parts so that no worker idles (6 seeds,
                            2 workers: two processes of 3). Batching is not possible for ppo with
                            --compile or --target-kl: those run one process a cell.
                            Interrupted cells of one group resume together
                            (train.py MODE --resume DIR1 DIR2 ...)
                            where their runs have a checkpoint at one step, else one by one
  --launcher local|slurm|ray
                            where cells run: worker processes here (default), a Slurm job
                            array through submitit, or tasks on a Ray cluster
  --slurm-partition P, --slurm-time MIN (1440), --slurm-cpus N (1), --slurm-gpus N (0),
  --slurm-array-parallelism N (256), --slurm-cluster auto|slurm|local (auto)
                            Slurm's resources per cell (local: submitit's local executor)
  --ray-cpus N (1), --ray-gpus N (0)
                            Ray's resources per cell (RAY_ADDRESS: the cluster; else a local one)
Running the same command again resumes the sweep: finished cells are kept, interrupted ones
resumed from their checkpoints."""


def parse_argv(argv: list[str]) -> Sweep:
    """The sweep a command line describes (raises ConfigError with one line)."""
    from agents.cli import MODES

    options: dict[str, Any] = {
        "grid": [],
        "workers": None,
        "sweep_dir": None,
        "retry": False,
        "dry_run": False,
        "group_seeds": None,
    }
    rest, config = [], None
    engine: dict[str, Any] = {f.name: None for f in dataclasses.fields(EngineFlags)}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--grid":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                options["grid"].append(argv[i])
                i += 1
            continue
        if arg in ("--workers", "--sweep-dir", "--config") or arg[2:].replace("-", "_") in engine:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"{arg} needs a value")
            value, key = argv[i + 1], arg[2:].replace("-", "_")
            if key == "config":
                config = value
            elif key in ("workers", "sweep_dir"):
                options[key] = value
            else:
                engine[key] = value
            i += 2
            continue
        if arg in ("--retry-failed", "--dry-run"):
            options["retry" if arg == "--retry-failed" else "dry_run"] = True
            i += 1
            continue
        if arg in ("--group-seeds", "--no-group-seeds"):
            options["group_seeds"] = arg == "--group-seeds"
            i += 1
            continue
        rest.append(arg)
        i += 1
    named = None
    if config is not None:
        path = Path(config)
        if not path.exists() and (NAMED_SWEEPS / f"{config}.toml").exists():
            named, path = config, NAMED_SWEEPS / f"{config}.toml"
        mode, base, axes, published = read_config(path)
        if rest and rest[0] in MODES:
            raise ConfigError(f"--config {config}: the file names the mode; give only flags")
        base = [*base, *rest]  # extra flags (e.g. --data-dir) go after the file's base flags
        if named and rest:  # another sweep than the named one: a directory of its own
            named = f"{named}__{sweep_name(mode, base, axes).rsplit('__', 1)[1]}"
    else:
        if not rest or rest[0].startswith("-"):
            raise ConfigError(f"train.py sweep needs a mode first\n{USAGE}")
        mode, base = rest[0], rest[1:]
        axes = parse_grid(options["grid"])
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} for a sweep; choose one of: {', '.join(MODES)}")
    for flag in ("--resume", "--runs-dir"):
        if flag in base:
            raise ConfigError(
                f"{flag} is the sweep's to set, per cell; leave it out of the base flags"
            )
    workers = options["workers"]
    if workers is not None and engine["launcher"] not in (None, "local"):
        raise ConfigError(f"--workers is a flag of --launcher local; {engine['launcher']} "
                          "schedules the cells itself (by the CPUs and GPUs each asks for)")  # fmt: skip
    try:
        workers = int(workers) if workers is not None else max(1, os.cpu_count() or 1)
    except ValueError:
        raise ConfigError(f"--workers must be a number, got {workers!r}") from None
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    default = Path("sweeps") / (named or sweep_name(mode, base, axes))
    # absolute: a cell's process may start elsewhere (a Slurm node, a Ray worker's directory)
    directory = Path(options["sweep_dir"] or default).absolute()
    return Sweep(mode, base, axes, directory, workers, retry_failed=options["retry"],
                 dry_run=options["dry_run"], engine=parse_engine(engine),
                 published=published if config is not None else None,
                 group_seeds=options["group_seeds"])  # fmt: skip


def parse_engine(given: dict[str, str | None]) -> EngineFlags:
    """--launcher and the engines' flags, each checked; an engine's flags need that engine."""
    flags = EngineFlags()
    for f in dataclasses.fields(EngineFlags):
        value = given[f.name]
        if value is None:
            continue
        name = "--" + f.name.replace("_", "-")
        if f.name in ENGINE_CHOICES and value not in ENGINE_CHOICES[f.name]:
            raise ConfigError(
                f"{name} {value!r}: choose one of {', '.join(ENGINE_CHOICES[f.name])}"
            )
        kind = type(getattr(flags, f.name)) if getattr(flags, f.name) is not None else str
        try:
            parsed = kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None
        minimum = 1 if f.name in ("slurm_time", "slurm_cpus", "slurm_array_parallelism") else 0
        if kind in (int, float) and not parsed >= minimum:  # `not >=`: NaN is refused too
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        setattr(flags, f.name, parsed)
    for f in dataclasses.fields(EngineFlags):
        engine = f.name.split("_")[0]
        if given[f.name] is not None and engine in ("slurm", "ray") and flags.launcher != engine:
            raise ConfigError(f"--{f.name.replace('_', '-')} is a flag of --launcher {engine}, "
                              f"not of --launcher {flags.launcher}")  # fmt: skip
    return flags


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    if not items:
        raise ConfigError("a sweep needs --grid KEY=V1,V2 ... (e.g. --grid seed=1,2,3)")
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2 (e.g. regularizer=none,l2-er)")
        key = key.removeprefix("--").replace("_", "-")  # the flag's own spelling
        if key in axes:
            raise ConfigError(f"--grid names {key} twice")
        axes[key] = values.split(",")
    return axes


def read_config(path: Path) -> tuple[str, list[str], dict[str, list[str]], dict | None]:
    """(mode, base flags, axes, the [published] table or None) of a sweep's TOML file.

    [published] says what the sweep reproduces, for the report to print beside its own numbers:
    `source` (one sentence: where the numbers come from and what they are) and `methods`, a
    table of report method names (bp, l2-init, reset, ...) to [mean, standard error]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or later (tomllib)") from None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        names = ", ".join(sorted(p.stem for p in NAMED_SWEEPS.glob("*.toml")))
        raise ConfigError(f"--config {path}: {error} (named sweeps: {names})") from None
    if "mode" not in data or "grid" not in data:
        raise ConfigError(f'--config {path}: needs mode = "..." and a [grid] table')
    base = [str(flag) for flag in data.get("base", [])]
    axes: dict[str, list[str] | dict[str, list[str]]] = {}
    # named flag sets first: a cell reads method=l2-er__seed=1
    for key, values in sorted(data["grid"].items(), key=lambda item: not isinstance(item[1], dict)):
        key = str(key).removeprefix("--").replace("_", "-")
        if isinstance(values, dict):
            if not values or not all(isinstance(v, list) for v in values.values()):
                raise ConfigError(
                    f"--config {path}: [grid.{key}] maps each name to a list of flags"
                )
            axes[key] = {str(name): [str(flag) for flag in flags] for name, flags in values.items()}
        elif isinstance(values, list) and values:
            axes[key] = [str(v) for v in values]
        else:
            raise ConfigError(f"--config {path}: grid {key} needs a list of values or a table")
    published = data.get("published")
    if published is not None:
        methods = published.get("methods") if isinstance(published, dict) else None
        number = lambda x: isinstance(x, int | float) and not isinstance(x, bool)  # noqa: E731
        if (
            not isinstance(methods, dict)
            or not methods
            or not isinstance(published.get("source"), str)
            or not all(
                isinstance(v, list) and len(v) == 2 and all(number(x) for x in v)
                for v in methods.values()
            )
        ):
            raise ConfigError(
                f'--config {path}: [published] needs source = "..." and a [published.methods] '
                "table of method = [mean, standard error]"
            )
    return str(data["mode"]), base, axes, published


def sweep_name(mode: str, base: list[str], axes: dict[str, list[str]]) -> str:
    """A name a rerun of the same command finds again: the mode and a digest of the rest."""
    digest = hashlib.sha1(json.dumps([mode, base, axes]).encode()).hexdigest()[:8]
    return f"{mode}__{'-'.join(axes)}__{digest}"


def build_cells(sweep: Sweep) -> list[Cell]:
    """Every combination of the axes, checked as train.py would check it; axis flags with no
    effect in a cell are left out of it and cells that become the same run are merged."""
    from agents.cli import parse
    from agents.flags import baseline_config, changed_flags, check_unused_flags, unused_fields
    from validation import flag_name

    def as_flags(values: dict[str, str]) -> list[str]:
        flags = []
        for key, value in values.items():
            axis = sweep.axes[key]
            flags += axis[value] if isinstance(axis, dict) else [f"--{key}", value]
        return flags

    def parsed(values: dict[str, str]) -> tuple[Any, Any, set[str]]:
        module, args, _ = parse(sweep.mode, [*sweep.base, *as_flags(values)])
        baseline = baseline_config(module.Args, module.LEARNER, args.preset)
        return module, args, set(changed_flags(baseline, args))

    cells: dict[tuple, Cell] = {}
    for combination in itertools.product(*sweep.axes.values()):
        values = dict(zip(sweep.axes, combination, strict=True))
        module, args, _ = parsed(values)
        unused = [flag_name(field) for field in unused_fields(args, module.LEARNER)]
        kept = {  # a named flag set is kept whole: its flags were written for this method
            key: value
            for key, value in values.items()
            if isinstance(sweep.axes[key], dict)
            or not any(f"--{key}" == flag or f"--{key}".startswith(flag + ".") for flag in unused)
        }
        module, args, given = parsed(kept)
        module.check_args(args)  # what the run would refuse, refused before any cell starts
        check_unused_flags(args, module.LEARNER, given)
        cells.setdefault(tuple(sorted(kept.items())), Cell(cell_id(kept), kept, as_flags(kept)))
    return list(cells.values())


def run(argv: list[str]) -> None:
    """train.py sweep ...: build the cells, then run every cell still to run."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"{USAGE}\n{FLAGS_HELP}")
        return
    sweep = parse_argv(argv)
    sweep.cells = build_cells(sweep)
    if sweep.dry_run:  # what running it would start now: a cell to resume is resumed
        states = [(cell, cell_state(sweep.cell_dir(cell))) for cell in sweep.cells]
        todo = [(cell, "pending" if state == "stale" else state) for cell, state in states
                if state != "finished"]  # fmt: skip
        for job in jobs(sweep, todo):
            print(f"{', '.join(c.id for c in job.cells)}: {shlex.join(job.command[1:])}")
        print(f"sweep {sweep.directory}: {len(sweep.cells)} cells (--dry-run: none started)")
        return
    check_engine(sweep.engine)
    sweep.directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(sweep, ["train.py", "sweep", *argv])
    todo = []
    for cell in sweep.cells:
        state = cell_state(sweep.cell_dir(cell))
        entry = manifest.entry(cell)
        if state == "finished":
            manifest.data["cells"][cell.id].update(status="finished", error=None,
                                                   run_dir=str(run_dir_of(sweep.cell_dir(cell))))  # fmt: skip
            continue
        if entry["status"] == "failed" and not sweep.retry_failed:
            continue
        if state == "stale":
            shutil.rmtree(sweep.cell_dir(cell))
            state = "pending"
        todo.append((cell, state))
    # Interrupted cells first (they hold work), then seed by seed: a sweep stopped part way has
    # every method at its first seeds, not some methods at every seed and others at none.
    seeds = sweep.axes.get("seed", [])
    todo.sort(key=lambda item: (
        item[1] != "interrupted",
        seeds.index(item[0].values["seed"]) if "seed" in item[0].values else 0,
    ))  # fmt: skip
    manifest.write()
    failed = [c for c in sweep.cells if manifest.entry(c)["status"] == "failed" and
              not sweep.retry_failed]  # fmt: skip
    where = (f"{sweep.workers} workers" if sweep.engine.launcher == "local"
             else f"launcher {sweep.engine.launcher}")  # fmt: skip
    print(f"sweep {sweep.directory}: {len(sweep.cells)} cells, {len(todo)} to run "
          f"({sum(s == 'interrupted' for _, s in todo)} to resume), {len(failed)} failed before "
          f"(--retry-failed runs them), {where}", file=sys.stderr)  # fmt: skip
    started = time.time()
    interrupted = launch(sweep, manifest, todo)
    statuses = [manifest.entry(c)["status"] for c in sweep.cells]
    for cell in sweep.cells:
        entry = manifest.entry(cell)
        if entry["status"] == "failed":
            print(f"failed: {cell.id}: {entry['error']}", file=sys.stderr)
    summary = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    print(f"sweep {sweep.directory}: {summary} ({time.time() - started:.0f} s)")
    if interrupted:
        from agents.run import Interrupted

        raise Interrupted(
            f"the sweep stopped; run the same command again to resume {sweep.directory}"
        )
