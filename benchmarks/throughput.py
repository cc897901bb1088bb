"""Env steps and updates per second of PPO and SAC: gymnasium vs envpool backends, 1/8/16 envs,
CPU vs GPU (when there is one), diagnostics off and on, side by side in one run, as one table.

What it measures: `agents.ppo.train` and `agents.sac.train` as a user runs them, with an
obs-permute shift half way through every run (a shift both backends can express), so the
diagnostics-on rows include the Hessian spectra and rank measures at the start, the shift and
the end (default measures, as `train.py` takes them); diagnostics-off rows pass
`--diagnostics none`; compile-on rows pass PPO's `--compile`. SPS is steady-state: env steps
per second from the run's first logged `charts/SPS` to its last (PPO: from the end of the first
update, so torch.compile's one-time compilation and the diagnostics' measurement at step 0 are
left out, the one at the shift is in; SAC: from its first log after --learning-starts); the
one-time seconds before it are the "first" column. updates/s is gradient steps over the steady
time (PPO: epochs x minibatches per rollout; SAC: the run's `charts/updates`). Every configuration runs once per
round, the backends alternating, and the table shows medians over rounds and the median of the
per-round envpool / gymnasium ratios (same agent, env, envs, device, diagnostics).

PPO runs CleanRL's continuous-action defaults (64x64 tanh, 10 epochs, 32 minibatches, lr 3e-4
annealed, observation and reward normalisation) with the rollout held at 2,048 transitions:
num_steps = 2048 / num_envs. SAC runs CleanRL's (256x256, batch 256, policy frequency 2) with
`--learning-starts 1000`. One torch thread on the CPU; envpool's threads: `--envpool-threads`.

    python benchmarks/throughput.py                 # the full grid, ~10 minutes on 2 cores
    python benchmarks/throughput.py --quick         # PPO on HalfCheetah, 1 and 8 envs, no SAC

Reference points (reported for a 2-core CPU, not measured by this script): envpool steps
HalfCheetah-v5 at ~36k/s with 8 envs vs ~19k/s for gymnasium's SyncVectorEnv; CleanRL's
single-env PPO trains at ~1,350 SPS. Targets: PPO with envpool >= 2x the gymnasium-backend PPO
on CPU at equal hyperparameters; on an H100, 1M steps of PPO on HalfCheetah-v5 in under 10
minutes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import ppo, sac  # noqa: E402

PPO_ROLLOUT = 2048


@dataclass
class Args:
    envs: tuple[str, ...] = ("HalfCheetah-v5", "Ant-v5")
    """MuJoCo tasks to measure"""
    num_envs: tuple[int, ...] = (1, 8, 16)
    """vector env sizes to measure (PPO; must divide 2,048)"""
    sac_num_envs: tuple[int, ...] = (1,)
    """vector env sizes for SAC (empty: no SAC rows)"""
    diagnostics_on_for: tuple[int, ...] = (8,)
    """env counts that also get a diagnostics-on row"""
    compile_for: tuple[int, ...] = (1, 8)
    """env counts that also get a PPO row with --compile (torch.compile of the update)"""
    ppo_steps: int = 8 * PPO_ROLLOUT
    """env steps per PPO run (8 rollouts of 2,048)"""
    sac_steps: int = 3000
    """env steps per SAC run (the first --sac-learning-starts random, then one update per step)"""
    sac_learning_starts: int = 1000
    """random env steps before SAC's first update"""
    repeats: int = 1
    """rounds; each runs every configuration once, backends alternating"""
    envpool_threads: int = 0
    """envpool's worker threads (0 = envpool's choice)"""
    torch_threads: int = 1
    """torch CPU threads for every run"""
    quick: bool = False
    """PPO on HalfCheetah only, 1 and 8 envs, one diagnostics-on row, no SAC"""


def logged(run_dir: Path, key: str) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m[key]) for m in map(json.loads, lines) if key in m]


def steady(run_dir: Path, steps_from: int = 0) -> tuple[float, float, int]:
    """(steady env steps/s, seconds before it, env steps in it) from charts/SPS, which is
    cumulative: the run has taken step / SPS seconds at each log."""
    sps = [(step, value) for step, value in logged(run_dir, "charts/SPS") if step > steps_from]
    (first_step, first_sps), (last_step, last_sps) = sps[0], sps[-1]
    first_seconds = first_step / first_sps
    return (
        (last_step - first_step) / (last_step / last_sps - first_seconds),
        first_seconds,
        last_step - first_step,
    )


def run_ppo(env_id, backend, num_envs, device, diagnostics, compile, args, runs_dir) -> dict:
    config = replace(
        ppo.Args(),
        env_id=env_id, env_backend=backend, num_envs=num_envs, envpool_threads=args.envpool_threads,
        total_timesteps=args.ppo_steps, num_steps=PPO_ROLLOUT // num_envs,
        hidden_sizes=(64, 64), activation="tanh", init="orthogonal", learning_rate=3e-4,
        anneal_lr=True, update_epochs=10, num_minibatches=32, regularizer="none",
        shift=("obs-permute",), shift_at=(args.ppo_steps // 2,),
        diagnostics=ppo.Args().diagnostics if diagnostics else ("none",),
        cuda=device == "cuda", torch_threads=args.torch_threads, track=False,
        checkpoint_every=0, runs_dir=runs_dir, compile=compile,
    )  # fmt: skip
    run_dir = ppo.train(config)
    sps, first_seconds, steps = steady(run_dir)
    updates = steps // PPO_ROLLOUT * config.update_epochs * config.num_minibatches
    return {"sps": sps, "first_s": first_seconds, "updates_per_s": updates / (steps / sps)}


def run_sac(env_id, backend, num_envs, device, diagnostics, compile, args, runs_dir) -> dict:
    config = replace(
        sac.Args(),
        env_id=env_id, env_backend=backend, num_envs=num_envs, envpool_threads=args.envpool_threads,
        total_timesteps=args.sac_steps, learning_starts=args.sac_learning_starts,
        log_every=min(500, max(1, (args.sac_steps - args.sac_learning_starts) // 2)),
        shift=("obs-permute",), shift_at=(args.sac_steps // 2 // num_envs * num_envs,),
        diagnostics=sac.Args().diagnostics if diagnostics else ("none",),
        cuda=device == "cuda", torch_threads=args.torch_threads, track=False,
        checkpoint_every=0, runs_dir=runs_dir,
    )  # fmt: skip
    run_dir = sac.train(config)
    sps, first_seconds, steps = steady(run_dir, steps_from=config.learning_starts)
    updates = [
        count for step, count in logged(run_dir, "charts/updates") if step > config.learning_starts
    ]
    return {
        "sps": sps,
        "first_s": first_seconds,
        "updates_per_s": (updates[-1] - updates[0]) / (steps / sps),
    }


def main(args: Args) -> None:
    torch.set_num_threads(args.torch_threads)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    env_ids = ("HalfCheetah-v5",) if args.quick else args.envs
    ppo_envs = (1, 8) if args.quick else args.num_envs
    sac_envs = () if args.quick else args.sac_num_envs
    compile_envs = (8,) if args.quick else args.compile_for
    cases = []  # (agent, env_id, num_envs, device, diagnostics, compile)
    for device in devices:
        for env_id in env_ids:
            for agent, counts in (("ppo", ppo_envs), ("sac", sac_envs)):
                for num_envs in counts:
                    cases.append((agent, env_id, num_envs, device, False, False))
                    if num_envs in args.diagnostics_on_for and not (agent == "sac" and args.quick):
                        cases.append((agent, env_id, num_envs, device, True, False))
                    if agent == "ppo" and num_envs in compile_envs:
                        cases.append((agent, env_id, num_envs, device, False, True))
    results: dict[tuple, list[dict]] = {}
    total = len(cases) * 2 * args.repeats
    done = 0
    with tempfile.TemporaryDirectory() as runs_dir, open(os.devnull, "w") as sink:
        for _ in range(args.repeats):
            for case in cases:
                agent, env_id, num_envs, device, diagnostics, compile = case
                for backend in ("gymnasium", "envpool"):
                    run = run_ppo if agent == "ppo" else run_sac
                    stderr, sys.stderr = sys.stderr, sink  # the runs' progress bars
                    try:
                        result = run(
                            env_id, backend, num_envs, device, diagnostics, compile, args, runs_dir
                        )
                    finally:
                        sys.stderr = stderr
                    results.setdefault((*case, backend), []).append(result)
                    done += 1
                    print(
                        f"[{done}/{total}] {agent} {env_id} {num_envs} envs {device} "
                        f"diag {'on' if diagnostics else 'off'} compile {'on' if compile else 'off'} "
                        f"{backend}: {result['sps']:.0f} SPS",
                        file=sys.stderr,
                        flush=True,
                    )

    print(
        f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"{args.torch_threads} torch thread(s), envpool threads {args.envpool_threads or 'auto'}; "
        f"PPO {args.ppo_steps} steps/run, SAC {args.sac_steps}; median of {args.repeats}\n"
    )
    print(
        "| agent | env | envs | device | diagnostics | compile | gymnasium SPS | envpool SPS "
        "| envpool / gymnasium | gymnasium updates/s | envpool updates/s | first s (gym / pool) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def ratio_of(a: tuple, b: tuple) -> float:
        """Median over rounds of run a's SPS / run b's SPS (the same round's runs paired)."""
        return statistics.median(
            x["sps"] / y["sps"] for x, y in zip(results[a], results[b], strict=True)
        )

    for case in cases:
        gym_runs, pool_runs = results[(*case, "gymnasium")], results[(*case, "envpool")]
        ratio = ratio_of((*case, "envpool"), (*case, "gymnasium"))
        agent, env_id, num_envs, device, diagnostics, compile = case

        def med(runs: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"| {agent} | {env_id} | {num_envs} | {device} | {'on' if diagnostics else 'off'} "
            f"| {'on' if compile else 'off'} "
            f"| {med(gym_runs, 'sps'):,.0f} | {med(pool_runs, 'sps'):,.0f} | {ratio:.2f} "
            f"| {med(gym_runs, 'updates_per_s'):,.0f} | {med(pool_runs, 'updates_per_s'):,.0f} "
            f"| {med(gym_runs, 'first_s'):.1f} / {med(pool_runs, 'first_s'):.1f} |"
        )
    # What --compile buys, and envpool + --compile against the eager gymnasium-backend run.
    print()
    for case in cases:
        agent, env_id, num_envs, device, diagnostics, compile = case
        if not compile:
            continue
        eager = (agent, env_id, num_envs, device, diagnostics, False)
        print(
            f"{agent} {env_id} {num_envs} envs {device}: --compile / eager SPS "
            f"gymnasium {ratio_of((*case, 'gymnasium'), (*eager, 'gymnasium')):.2f}, "
            f"envpool {ratio_of((*case, 'envpool'), (*eager, 'envpool')):.2f}; "
            f"envpool + --compile / eager gymnasium "
            f"{ratio_of((*case, 'envpool'), (*eager, 'gymnasium')):.2f}"
        )


if __name__ == "__main__":
    main(tyro.cli(Args))
