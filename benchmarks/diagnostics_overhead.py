"""What the diagnostics cost a PPO run: their share of wall time at a given shift frequency.

    python benchmarks/diagnostics_overhead.py                  # both configurations, projected
    python benchmarks/diagnostics_overhead.py --direct         # also a measured 200k-step pair

For each configuration (CleanRL's 64x64 tanh PPO on HalfCheetah-v5, and the paper's Slippery
Ant: 1x256 ReLU on Ant-v5), one short run with diagnostics off gives the training speed, and one
with every measure on and one shift gives the cost of a task boundary (the end measurement of
the old task plus the init measurement of the new one, both networks: Hessian and GGN spectra at
Lanczos order 100, KFAC, Gram, features, weights). The share of wall time at one shift per N
steps is then boundary / (N / SPS + boundary). `--direct` checks the projection by running
2 x 100k steps with a shift at 100k, with diagnostics on and off, and comparing wall times.
It is also called from benchmarks/hessian.py.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from agents import ppo

CONFIGS = {
    "cleanrl-halfcheetah": dict(env_id="HalfCheetah-v5"),
    "slippery-ant": {
        k: v for k, v in ppo.PRESETS["slippery-ant"].items() if k not in ("total_timesteps",)
    },
}


def run(
    config: dict, directory: Path, diagnostics: bool, total: int, shift_at: int
) -> tuple[float, dict]:
    """One PPO run; returns (wall seconds, the boundary scalars it logged)."""
    args = dataclasses.replace(
        ppo.Args(),
        **{
            **config,
            "total_timesteps": total,
            "shift": ("friction",),
            "shift_every": 0,
            "shift_at": (shift_at,),
            "runs_dir": str(directory),
            "checkpoint_every": 0,
            "regularizer": "none",
            "diagnostics": ppo.Args().diagnostics if diagnostics else ("none",),
        },
    )
    start = time.perf_counter()
    run_dir = ppo.train(args)
    wall = time.perf_counter() - start
    boundary = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "shift/end/seconds" in record and "shift/init/seconds" in record:
            boundary = record
    return wall, boundary


def diagnostics_overhead_table(
    direct: bool = False, shifts_every: tuple[int, ...] = (100_000, 2_000_000)
) -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            rollout = 2048
            # speed without diagnostics: 5 rollouts after a first one (warm-up excluded)
            wall_off, _ = run(
                config, Path(tmp) / f"{name}-off", False, 6 * rollout, 3 * rollout + 1000
            )
            wall_warm, _ = run(config, Path(tmp) / f"{name}-warm", False, rollout, rollout // 2)
            sps = 5 * rollout / (wall_off - wall_warm)
            _, boundary = run(config, Path(tmp) / f"{name}-on", True, 3 * rollout, rollout + 1000)
            cost = boundary["shift/end/seconds"] + boundary["shift/init/seconds"]
            shares = [cost / (every / sps + cost) for every in shifts_every]
            rows.append(
                (name, sps, boundary["shift/end/seconds"], boundary["shift/init/seconds"], shares)
            )
            if direct:
                every = shifts_every[0]
                on, _ = run(config, Path(tmp) / f"{name}-d-on", True, 2 * every, every)
                off, _ = run(config, Path(tmp) / f"{name}-d-off", False, 2 * every, every)
                rows[-1] = (*rows[-1], (on - off) / on)

    header = f"{'configuration':<22}{'SPS (off)':>10}{'end s':>8}{'init s':>8}" + "".join(
        f"{'share @ ' + format(e, ','):>18}" for e in shifts_every
    )
    if direct:
        header += f"{'measured @' + format(shifts_every[0], ','):>20}"
    print(
        "Diagnostics at every task boundary, share of PPO wall time (projected from measured parts)"
    )
    print(header)
    for row in rows:
        name, sps, end, init, shares = row[:5]
        line = f"{name:<22}{sps:>10.0f}{end:>8.2f}{init:>8.2f}" + "".join(
            f"{s:>18.1%}" for s in shares
        )
        if direct:
            line += f"{row[5]:>20.1%}"
        print(line)
    print("(a boundary here = end of the old task + init of the new one, actor and critic, every")
    print(" measure on: Hessian and GGN at Lanczos order 100, KFAC, Gram, features, weights)")


@dataclass
class Flags:
    direct: bool = False
    """also run 2 x 100k steps with a shift at 100k, diagnostics on and off, and compare wall time"""


if __name__ == "__main__":
    diagnostics_overhead_table(direct=tyro.cli(Flags).direct)
