"""Cells per hour of `train.py sweep` on each launcher, against the same cells run one after
another, as a table of ratios.

What it measures, on one machine (the 2-core CI machine):
- serial (the reference): the N cells' own commands (`train.py supervised ...`) run one after
  another, each in a fresh process, as a script looping over them would;
- local: the sweep with --workers = cores. Ideal is serial time / cores; the "of ideal" column is
  ideal / measured (target: within 5 %);
- slurm: the same sweep through submitit's local executor (--slurm-cluster local: the submission
  path a Slurm cluster gets, the jobs started here, all at once);
- ray: the same sweep on a local Ray cluster started by the sweep (--ray-cpus 1: cores at once).
  Its start-up is part of the sweep's time.
The engine overhead per cell is (engine time - local time) * cores / N: what each cell costs on
top of the same cell under the local launcher (target: under 5 s).

A cell is a small supervised run (8x8 digits, 10 tasks, 64-unit hidden layer, no diagnostics,
one torch thread), so process start-up is a real share of it, as in a sweep of short runs.

    python benchmarks/sweep.py                  # 8 cells per launcher, ~5 minutes on 2 cores
    python benchmarks/sweep.py --cells 4 --skip ray
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELL = ["supervised", "--dataset", "digits", "--num-tasks", "10", "--hidden-sizes", "64",
        "--diagnostics", "none", "--checkpoint-every", "0", "--torch-threads", "1"]  # fmt: skip


def run(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[:3])}... failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], choices=["slurm", "ray"])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    seeds = ",".join(str(s) for s in range(1, args.cells + 1))
    env = {**os.environ, "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        times = {"serial": sum(run([*CELL, "--seed", str(s), "--runs-dir", str(root / "serial")], env)
                               for s in range(1, args.cells + 1))}  # fmt: skip
        launchers = {"local": ["--workers", str(cores)],
                     "slurm": ["--launcher", "slurm", "--slurm-cluster", "local"],
                     "ray": ["--launcher", "ray", "--ray-cpus", "1"]}  # fmt: skip
        for name, flags in launchers.items():
            if name in args.skip:
                continue
            times[name] = run(["sweep", *CELL, "--grid", f"seed={seeds}",
                               "--sweep-dir", str(root / name), *flags], env)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ideal = times["serial"] / cores
    print(f"{args.cells} cells of `train.py {' '.join(CELL)}`, {cores} cores\n")
    print("| launcher | wall s | cells/hour | of ideal (serial / cores) | overhead per cell, s |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        share = "-" if name == "serial" else f"{ideal / seconds:.1%}"
        overhead = "-"
        if name not in ("serial", "local"):
            overhead = f"{(seconds - times['local']) * cores / args.cells:+.1f}"
        print(
            f"| {name} | {seconds:.1f} | {3600 * args.cells / seconds:,.0f} | {share} | {overhead} |"
        )


if __name__ == "__main__":
    main()
