"""The GPU check's parts, each run in its own process under a time budget (benchmarks/gpu_check.sh
installs the carried wheels and calls this; see docs/gpu.md).

    python benchmarks/gpu_check.py run --out OUT [--dry-run] [--parts a,b]  # every part, in order
    python benchmarks/gpu_check.py part NAME --out OUT [--dry-run]

Each part writes OUT/<name>.md (a table) and OUT/<name>.log; a part that fails or runs out
of its budget is recorded as such and the next one starts, so a slow part cannot eat the rest.
OUT/summary.md gathers every table, with the machine and each part's status and seconds.
--dry-run does the same on the CPU at tiny sizes (what tests/test_gpu_check.py runs here, with
the network blocked), so a GPU window never meets a typo.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# name: (seconds on the GPU, seconds in the dry run); ~9.6 minutes in all on the GPU, sized by
# the first H200 run (docs/gpu.md) so that one 10-minute call holds the whole check. The dry
# run's limits only catch a hang: each is about 4x or more what the part took on a 2-core
# machine busy with three training runs, since a test that fails because its machine is busy
# proves nothing.
BUDGETS = {
    "gpu-tests": (110, 300),
    "rl-throughput": (110, 240),
    "batched-seeds": (100, 180),
    "seeds-runs": (110, 180),
    "supervised": (35, 120),
    "hessian": (30, 120),
    "ppo-1m": (40, 120),
    "suite": (40, 120),
}


def table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def devices(dry: bool) -> list[str]:
    import torch

    return ["cpu"] if dry or not torch.cuda.is_available() else ["cpu", "cuda"]


def pytest_part(out: Path, name: str, argv: list[str], env: dict, budget: float) -> str:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=budget,
    )  # fmt: skip
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return table([{"command": " ".join(["pytest", *argv]), "result": summary,
                   "exit status": result.returncode}])  # fmt: skip


def gpu_tests(out: Path, dry: bool, budget: float) -> str:
    env = {"GPU_TESTS_ON_CPU": "1"} if dry else {"REQUIRE_GPU": "1"}
    # The dry run proves the path (the tests import and run from the installed folder) with
    # its two fastest tests; the CPU suite covers the CPU itself.
    dry_pick = ["-k", "lanczos or fp32"]
    argv = ["-m", "gpu", "tests/test_gpu.py"] + (dry_pick if dry else [])
    return pytest_part(out, "gpu-tests", argv, env, budget - 5)


def suite(out: Path, dry: bool, budget: float) -> str:
    # The whole suite with CUDA visible (its default-device runs then use the GPU); -x stops
    # at the first failure so the log shows it. In the dry run, a fast file of it.
    argv = ["tests/test_envs.py", "-k", "task_at"] if dry else ["-x", "--ignore=tests/test_gpu.py"]
    return pytest_part(out, "suite", argv, {}, budget - 5)


def rl_throughput(out: Path, dry: bool, budget: float) -> str:
    """PPO and SAC at CleanRL's sizes, steady-state env steps/s, CPU against GPU (the --cuda
    default per learner rests on these rows)."""
    import throughput

    args = throughput.Args(ppo_steps=2 * 2048 if dry else 16_384, sac_steps=600 if dry else 3000,
                           sac_learning_starts=100 if dry else 1000, torch_threads=1)  # fmt: skip
    rows = []
    # The dry run proves the path with one row of each learner.
    cases = [("ppo", 1, False)] + ([] if dry else [("ppo", 8, False), ("ppo", 8, True)])
    cases += [("sac", 1, False)]
    with tempfile.TemporaryDirectory() as runs:
        for device in devices(dry):
            for agent, num_envs, compile in cases:
                if compile and device == "cpu":
                    continue
                run = throughput.run_ppo if agent == "ppo" else throughput.run_sac
                start = time.perf_counter()
                result = run("HalfCheetah-v5", "gymnasium", num_envs, device, False, compile,
                             args, runs)  # fmt: skip
                rows.append({"agent": agent, "env": "HalfCheetah-v5", "envs": num_envs,
                             "device": device, "compile": "on" if compile else "off",
                             "SPS": f"{result['sps']:,.0f}",
                             "updates/s": f"{result['updates_per_s']:,.0f}",
                             "first s": f"{result['first_s']:.1f}",
                             "wall s": f"{time.perf_counter() - start:.1f}"})  # fmt: skip
                (out / "rl-throughput.md").write_text(table(rows))  # what is done so far
    return table(rows)


def supervised_speed(out: Path, dry: bool, budget: float) -> str:
    """examples/s of the supervised learner on the paper's 3 x 1000 network, batch 1 (the
    fused step) and 100, as the task's own training speed."""
    from agents import supervised
    from agents.cli import parse

    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for device in devices(dry):
            for batch in (1, 100):
                _, args, _ = parse("supervised", [])
                args = replace(
                    args, num_tasks=1, examples_per_task=300 if dry else 3000, batch_size=batch,
                    hidden_sizes=(64,) * 3 if dry else (1000,) * 3, diagnostics=("none",),
                    checkpoint_every=0, runs_dir=runs, cuda=device == "cuda",
                    log_every=100_000,
                )  # fmt: skip
                run_dir = supervised.train(args)
                metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
                speed = next(m["charts/examples_per_second"] for m in metrics
                             if "charts/examples_per_second" in m)  # fmt: skip
                rows.append({"network": "784-" + "-".join(map(str, args.hidden_sizes)) + "-10",
                             "batch": batch, "device": device,
                             "examples/s": f"{speed:,.0f}"})  # fmt: skip
    return table(rows)


def hessian(out: Path, dry: bool, budget: float) -> str:
    """One checkpoint of the 3 x 1000 network on 2,000 samples: Lanczos order 100 on
    Hessian-vector products and the 10,000-point density (the paper's 179 s in JAX)."""
    import torch
    import torch.nn.functional as F

    from agents.networks import MLP
    from diagnostics.curvature import HessianOperator, LossClosure, spectrum

    rows = []
    width, samples, order = (64, 200, 20) if dry else (1000, 2000, 100)
    for device in reversed(devices(dry)):  # the GPU first: the CPU row may not fit the budget
        torch.manual_seed(0)
        model = MLP(784, (width,) * 3, 10, "relu", "kaiming-uniform").to(device)
        x = torch.rand(samples, 784, device=device)
        y = torch.randint(0, 10, (samples,), device=device)
        closure = LossClosure(
            dict(model.named_parameters()),
            lambda params, model=model, x=x: torch.func.functional_call(model, params, (x,))[0],
            lambda out, y=y: F.cross_entropy(out, y),
        )
        start = time.perf_counter()
        result = spectrum(HessianOperator(closure), order, 1, 20, torch.Generator().manual_seed(0))
        result.density(10_000)
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append({"network": f"784-{width}x3-10", "samples": samples, "Lanczos order": order,
                     "device": device, "seconds": f"{time.perf_counter() - start:.2f}",
                     "lambda_max": f"{result.top[0]:.4g}"})  # fmt: skip
        (out / "hessian.md").write_text(table(rows))
    return table(rows)


def ppo_1m(out: Path, dry: bool, budget: float) -> str:
    """1M PPO steps on HalfCheetah-v5 timed (8 envs, CleanRL's other defaults, no
    diagnostics); a run the budget stops is reported with the steps it reached."""
    total = 4096 if dry else 1_000_000
    with tempfile.TemporaryDirectory() as runs:
        command = [sys.executable, "train.py", "ppo", "--env-id", "HalfCheetah-v5",
                   "--total-timesteps", str(total), "--num-envs", "8", "--num-steps", "256",
                   "--diagnostics", "none", "--checkpoint-every", "0", "--runs-dir", runs]  # fmt: skip
        command.append("--no-cuda" if dry else "--cuda")  # PPO's default is the CPU
        start = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                    timeout=budget - 10)  # fmt: skip
            status = "finished" if result.returncode == 0 else f"failed ({result.returncode})"
            (out / "ppo-1m.log").write_text(result.stdout + result.stderr)
        except subprocess.TimeoutExpired:
            status = "stopped by the budget"
        seconds = time.perf_counter() - start
        metrics = [json.loads(line) for path in Path(runs).glob("*/metrics.jsonl")
                   for line in path.read_text().splitlines() if line.strip()]  # fmt: skip
        steps = max((m["step"] for m in metrics if "charts/SPS" in m), default=0)
        sps = next((m["charts/SPS"] for m in reversed(metrics) if "charts/SPS" in m), 0)
    return table([{"run": f"PPO HalfCheetah-v5, {total:,} steps, 8 envs", "status": status,
                   "steps": f"{steps:,}", "wall s": f"{seconds:.0f}", "SPS": f"{sps:,}",
                   "1M steps at this SPS": f"{1e6 / sps / 60:.1f} min" if sps else "-"}])  # fmt: skip


def batched_seeds(out: Path, dry: bool, budget: float) -> str:
    """K seeds stacked along a seed axis (benchmarks/batched_seeds.py), K from 1 to 256 on the
    GPU: continual-CartPole's PPO update (seconds per update, seed-iterations per second; the
    CPU buys ~1.1x per seed there), the supervised stream's batch-1 SGD step (seed-examples
    per second; the CPU buys ~2.2x at K = 3) and SAC's step at Hopper's sizes (seed-updates
    per second; the CPU buys 1.07x at K = 4), docs/benchmarks.md; then, in the last 20 s, ER's
    ascent step batched across seeds against each seed's own (K = 1, 4, 16; the CPU buys
    nothing there)."""
    device, seeds = ("cpu", ["1"]) if dry else ("cuda", ["1", "4", "16", "64", "256"])
    common = [sys.executable, "benchmarks/batched_seeds.py", "--device", device,
              "--updates", "1" if dry else "2", "--loop-up-to", "4"]  # fmt: skip
    workloads = [
        (common + ["--seeds", *seeds, "--workload", "ppo", "supervised", "sac"], budget - 25),
        (
            common + ["--seeds", *(["1"] if dry else ["1", "4", "16"]), "--workload", "erank"],
            60 if dry else 20,
        ),
    ]
    text = ""
    for command, seconds in workloads:
        try:
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                    timeout=seconds)  # fmt: skip
            text += result.stdout + (
                "" if result.returncode == 0 else f"failed:\n{result.stderr[-2000:]}"
            )
        except subprocess.TimeoutExpired as stopped:  # the rows it printed before the budget
            printed = stopped.stdout or ""
            printed = printed.decode() if isinstance(printed, bytes) else printed
            text += printed + "\n(stopped by the budget)\n"
        text += "\n"
    (out / "batched-seeds.md").write_text(text)
    return text


def seeds_runs(out: Path, dry: bool, budget: float) -> str:
    """Whole `--seeds` runs on the GPU, K seeds in one process, diagnostics off: PPO on
    `--preset continual-cartpole` (agents/ppo_seeds.py; K = 1, 16, 64; 5 iterations of 800
    steps a seed, a shift half way) and SAC on Hopper-v5 (agents/sac_seeds.py; K = 1, 16, 64;
    500 random steps, then 1,000 updates a seed): seed-steps per second against K = 1's (on 2
    CPU cores 6 PPO seeds gave 1.18x the launcher's cells per hour and 4 SAC seeds 1.34x one
    core's seed-steps, docs/benchmarks.md). Each learner gets half the budget."""
    counts = (2,) if dry else (1, 16, 64)  # the dry run: the batched path, once
    ppo_steps, sac_steps = (1600, 300) if dry else (4000, 1500)
    learners = {
        "ppo": (ppo_steps, ["--preset", "continual-cartpole", "--shift-every", str(ppo_steps // 2)]
                + (["--hidden-sizes", "16", "--num-steps", "400", "--num-minibatches", "4"]
                   if dry else [])),
        "sac": (sac_steps, ["--env-id", "Hopper-v5", "--learning-starts", str(sac_steps // 3)]
                + (["--hidden-sizes", "16", "--batch-size", "32"] if dry else [])),
    }  # fmt: skip
    rows = []
    for learner, (total, flags) in learners.items():
        first, start = None, time.perf_counter()
        for k in counts:
            left = budget / 2 - 5 - (time.perf_counter() - start)
            with tempfile.TemporaryDirectory() as runs:
                command = [sys.executable, "train.py", learner, *flags,
                           "--seeds", *map(str, range(1, k + 1)), "--total-timesteps", str(total),
                           "--diagnostics", "none", "--checkpoint-every", "0", "--runs-dir", runs,
                           "--no-cuda" if dry else "--cuda"]  # fmt: skip
                began = time.perf_counter()
                try:
                    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                            timeout=max(left, 1))  # fmt: skip
                    status = ("finished" if result.returncode == 0
                              else f"failed: {result.stderr[-300:]}")  # fmt: skip
                except subprocess.TimeoutExpired:
                    status = "stopped by the budget"
                seconds = time.perf_counter() - began
            rate = k * total / seconds
            first = first or (rate if k == 1 else None)
            rows.append({"learner": learner, "seeds": k, "status": status,
                         "wall s (start-up included)": f"{seconds:.1f}",
                         "seed-steps per s": f"{rate:,.0f}",
                         "seed-steps per s vs K = 1": f"{rate / first:.1f}x" if first else "-"})  # fmt: skip
            if status != "finished":
                break
    return table(rows)


PARTS = {
    "gpu-tests": gpu_tests,
    "rl-throughput": rl_throughput,
    "supervised": supervised_speed,
    "hessian": hessian,
    "ppo-1m": ppo_1m,
    "batched-seeds": batched_seeds,
    "seeds-runs": seeds_runs,
    "suite": suite,
}


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: Python {platform.python_version()}, torch {torch.__version__}, "
            f"{gpu}, {os.cpu_count()} CPUs")  # fmt: skip


def run_all(out: Path, dry: bool, parts: list[str]) -> None:
    """Each of `parts` in its own process under its budget; then OUT/summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    statuses = []
    for name in parts:
        budget = BUDGETS[name][1] if dry else BUDGETS[name][0]
        command = [sys.executable, __file__, "part", name, "--out", str(out)]
        command += ["--dry-run"] if dry else []
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=budget)
            status = "ok" if result.returncode == 0 else f"failed ({result.returncode})"
            log = result.stdout + result.stderr
        except subprocess.TimeoutExpired as stopped:
            status, log = "out of budget", f"{stopped}"
        seconds = time.perf_counter() - start
        with open(out / f"{name}.log", "a") as file:
            file.write(log)
        statuses.append({"part": name, "status": status, "seconds": f"{seconds:.0f}",
                         "budget s": budget})  # fmt: skip
        print(f"{name}: {status} in {seconds:.0f} s", flush=True)
    sections = [f"# GPU check{' (dry run on the CPU)' if dry else ''}\n\n{machine()}\n",
                table(statuses)]  # fmt: skip
    for name in parts:
        path = out / f"{name}.md"
        sections.append(f"## {name}\n\n" + (path.read_text() if path.exists() else "(no table)\n"))
    (out / "summary.md").write_text("\n".join(sections))
    print((out / "summary.md").read_text())


def main(argv: list[str]) -> None:
    dry = "--dry-run" in argv
    out = Path(argv[argv.index("--out") + 1])
    if argv[0] == "run":
        # --parts: a subset, for a GPU window shorter than the whole check's ~10 minutes
        parts = argv[argv.index("--parts") + 1].split(",") if "--parts" in argv else list(BUDGETS)
        unknown = [name for name in parts if name not in BUDGETS]
        if unknown:
            raise SystemExit(f"error: unknown part(s) {unknown}; the parts are {list(BUDGETS)}")
        run_all(out, dry, parts)
    elif argv[0] == "part":
        name = argv[1]
        budget = BUDGETS[name][1 if dry else 0]
        (out / f"{name}.md").write_text(PARTS[name](out, dry, budget))
    else:
        raise SystemExit(f"error: unknown command {argv[0]!r}; use run or part")


if __name__ == "__main__":
    main(sys.argv[1:])
