"""Seconds per PPO iteration of our continual-CartPole run against C-CHAIN's own script, as a
table of ratios measured in one run.

What it measures: C-CHAIN's `crl_gym_classic_control/control_train_aligned_vanilla.py`
(github.com/bluecontra/C-CHAIN, with its networks.py and basic_utils.py) and ours
(`train.py ppo --preset continual-cartpole`, the same setting), both on CartPole-v1 with one
CPU thread each (OMP_NUM_THREADS=1; `--torch-threads 1`), one after the other, alternating,
C-CHAIN's first. `--threads as-shipped` runs each with the threads it takes when started as it
comes: C-CHAIN's script torch's default (one per core), ours its `--torch-threads` default (1).
C-CHAIN's script runs from a temporary copy with only what gymnasium 1.x and this machine need
changed, each printed by the benchmark:
- `import gym` -> `import gymnasium as gym` (it uses the gym 0.26 API, which gymnasium kept);
- `from trac_optimizer import start_trac` dropped (TRAC's optimizer, used only with --opt TRAC,
  is not on the package index);
- its wandb run is offline (WANDB_MODE=offline), as the script itself sets.
Its time per iteration is the median gap between its "Iteration num" lines after the first;
ours is 800 / the last `charts/SPS` of the run (env steps per second since its training loop
started), with no diagnostics and no checkpoints (C-CHAIN's script has neither). A full run is
2,000 iterations (1.6M steps); its time is extrapolated from these, and our measured full runs
are in docs/continual-gym-control.md.

    git clone https://github.com/bluecontra/C-CHAIN /tmp/C-CHAIN
    python benchmarks/cchain_speed.py --cchain-dir /tmp/C-CHAIN          # ~4 minutes
    python benchmarks/cchain_speed.py --cchain-dir /tmp/C-CHAIN --threads as-shipped
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cleanrl_wheel import apply_edits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "control_train_aligned_vanilla.py"
FILES = (SCRIPT, "networks.py", "basic_utils.py")
PATCHES = [
    ("import gym\n", "import gymnasium as gym\n", "gym -> gymnasium (the gym 0.26 API it uses)"),
    ("from trac_optimizer import start_trac\n", "", "TRAC's import dropped (--opt TRAC only)"),
]
FULL_RUN_ITERATIONS = 2_000
Threads = Literal["one", "as-shipped"]


@dataclass
class Args:
    cchain_dir: Path
    """a checkout of github.com/bluecontra/C-CHAIN"""
    iterations: int = 40
    """PPO iterations of 800 steps timed per run"""
    repeats: int = 2
    """runs of each implementation, alternating"""
    env_id: str = "CartPole-v1"
    """CartPole-v1 or Acrobot-v1"""
    threads: Threads = "one"
    """one: a thread each; as-shipped: each its default (C-CHAIN: a thread a core; ours: 1)"""


def prepared_cchain(cchain_dir: Path, into: Path) -> Path:
    """C-CHAIN's three files in `into`, with PATCHES applied (each must apply exactly once)."""
    source = cchain_dir / "crl_gym_classic_control"
    if not (source / SCRIPT).exists():
        sys.exit(f"error: --cchain-dir {cchain_dir}: no crl_gym_classic_control/{SCRIPT} there")
    for name in FILES:
        (into / name).write_text((source / name).read_text())
    script = into / SCRIPT
    script.write_text(apply_edits(script.read_text(), PATCHES, f"C-CHAIN's {SCRIPT}"))
    return script


def run_env(threads: Threads) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
        if threads == "one":
            env[name] = "1"
    return env


def time_cchain(script: Path, env_id: str, iterations: int, threads: Threads) -> float:
    """Seconds per iteration of C-CHAIN's script: the median gap between its iteration lines."""
    process = subprocess.Popen(
        [sys.executable, "-u", script.name, "--env_name", env_id, "--seed", "1"],
        cwd=script.parent, env=run_env(threads), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    stamps = []
    for line in process.stdout:
        if line.startswith("- Iteration num:"):
            stamps.append(time.perf_counter())
            if len(stamps) > iterations:
                break
    process.kill()
    process.wait()
    if len(stamps) < 3:
        sys.exit(
            "error: C-CHAIN's script printed fewer than 3 iterations; run it by hand to see why"
        )
    return statistics.median(b - a for a, b in itertools.pairwise(stamps))


def time_ours(env_id: str, iterations: int, threads: Threads) -> float:
    """Seconds per iteration of ours: 800 / its last charts/SPS."""
    steps = 800 * iterations
    with tempfile.TemporaryDirectory(prefix="ours-") as runs_dir:
        command = [sys.executable, str(REPO / "train.py"), "ppo", "--preset", "continual-cartpole",
                   "--env-id", env_id, "--total-timesteps", str(steps), "--shift-every",
                   str(steps // 2), "--diagnostics", "none", "--checkpoint-every", "0",
                   "--torch-threads", "1", "--runs-dir", runs_dir]  # fmt: skip
        subprocess.run(command, env=run_env(threads), check=True, capture_output=True)
        (metrics,) = Path(runs_dir).glob("*/metrics.jsonl")
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return 800 / [row["charts/SPS"] for row in rows if "charts/SPS" in row][-1]


def torch_threads() -> int:
    """The threads torch takes by default here (what C-CHAIN's script runs with as shipped)."""
    command = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(command, env=run_env("as-shipped"), capture_output=True,
                              text=True, check=True).stdout)  # fmt: skip


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory(prefix="cchain-") as tmp:
        script = prepared_cchain(args.cchain_dir, Path(tmp))
        print(f"C-CHAIN's {SCRIPT}, changed only so: " + "; ".join(why for *_, why in PATCHES))
        theirs, ours = [], []
        for _ in range(args.repeats):
            theirs.append(time_cchain(script, args.env_id, args.iterations, args.threads))
            ours.append(time_ours(args.env_id, args.iterations, args.threads))
    cchain, mine = statistics.median(theirs), statistics.median(ours)
    print(f"\n{args.env_id}, {args.iterations} iterations of 800 steps per run, {args.repeats} runs "
          + ("each, one CPU thread each" if args.threads == "one" else
             f"each as shipped (C-CHAIN's: torch's default, {torch_threads()} threads; ours: 1)")
          + "; medians\n")  # fmt: skip
    print("| implementation | s per iteration | a 1.6M-step run (2,000 iterations) | speed-up |")
    print("|---|---|---|---|")
    for name, seconds in (("C-CHAIN's script", cchain), ("ours (continual-cartpole)", mine)):
        hours = seconds * FULL_RUN_ITERATIONS / 3600
        print(f"| {name} | {seconds:.3f} | {hours:.2f} h | {cchain / seconds:.2f}x |")
    print(f"\nper run: C-CHAIN {', '.join(f'{s:.3f}' for s in theirs)}; ours "
          f"{', '.join(f'{s:.3f}' for s in ours)}")  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
