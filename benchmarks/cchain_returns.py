"""C-CHAIN's own continual-Gym-Control script, run here: its mean return per task, to set
beside ours (docs/continual-gym-control.md).

Runs `control_train_aligned_vanilla.py` (vanilla PPO) from a temporary copy with only the
gymnasium-1.x edits of benchmarks/cchain_speed.py, one seed after another, one CPU thread
each, for the first `--iterations` PPO iterations (200 a task), and prints a table of the mean
of its `itr_mean_return` per task (the number its Table 1 averages over a whole run).

    git clone https://github.com/bluecontra/C-CHAIN /tmp/C-CHAIN
    python benchmarks/cchain_returns.py --cchain-dir /tmp/C-CHAIN --seeds 0 1   # ~25 min a seed
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cchain_speed import PATCHES, SCRIPT, prepared_cchain, run_env  # noqa: E402

ITERATIONS_PER_TASK = 200  # C-CHAIN's level_switch
RETURN = re.compile(r"^- Iteration num: (\d+), Avg Return: ([-0-9.e]+)")


@dataclass
class Args:
    cchain_dir: Path
    """a checkout of github.com/bluecontra/C-CHAIN"""
    seeds: tuple[int, ...] = (0, 1)
    """C-CHAIN's --seed values, run one after another"""
    iterations: int = 600
    """PPO iterations of 800 steps per seed (200 a task; 2,000 is a whole run)"""
    env_id: str = "CartPole-v1"
    """CartPole-v1 or Acrobot-v1 (its LunarLander-v2 is gone from gymnasium 1.x)"""


def returns_of(script: Path, env_id: str, seed: int, iterations: int) -> list[float]:
    """Its iterations' mean returns, read off its "Iteration num" lines, then stopped."""
    process = subprocess.Popen(
        [sys.executable, "-u", script.name, "--env_name", env_id, "--seed", str(seed)],
        cwd=script.parent, env=run_env("one"), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    returns = []
    for line in process.stdout:
        match = RETURN.match(line)
        if match:
            returns.append(float(match.group(2)))
            if len(returns) == iterations:
                break
    process.kill()
    process.wait()
    if len(returns) < iterations:
        sys.exit(f"error: C-CHAIN's script stopped after {len(returns)} iterations (seed {seed})")
    return returns


def main(args: Args) -> None:
    tasks = -(-args.iterations // ITERATIONS_PER_TASK)
    print(f"C-CHAIN's {SCRIPT}, changed only so: " + "; ".join(why for *_, why in PATCHES))
    print(f"\n{args.env_id}, the first {args.iterations} iterations; mean return per task\n")
    print("| seed | " + " | ".join(f"task {t}" for t in range(tasks)) + " |")
    print("|---" * (tasks + 1) + "|")
    with tempfile.TemporaryDirectory(prefix="cchain-") as tmp:
        script = prepared_cchain(args.cchain_dir, Path(tmp))
        for seed in args.seeds:
            returns = np.array(returns_of(script, args.env_id, seed, args.iterations))
            per_task = [returns[t * ITERATIONS_PER_TASK : (t + 1) * ITERATIONS_PER_TASK].mean()
                        for t in range(tasks)]  # fmt: skip
            print(f"| {seed} | " + " | ".join(f"{r:.1f}" for r in per_task) + " |", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
