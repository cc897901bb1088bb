"""The GPU paths, run for real on a CUDA device (marked `gpu`: skipped where there is none).

Each agent runs end to end with its networks, storage, updates and diagnostics on the GPU, and
the numerical routines agree with the same computation on the CPU. On a CPU-only machine these
paths are still exercised by the rest of the suite (the code is device-agnostic: every tensor is
created on `device`), but only here on the device itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finite_losses(run_dir: Path, key: str) -> list[float]:
    values = [m[key] for m in read_jsonl(run_dir / "metrics.jsonl") if key in m]
    assert values and all(math.isfinite(v) for v in values)
    return values


@pytest.mark.parametrize(
    ("backend", "compile"), [("gymnasium", False), ("envpool", False), ("gymnasium", True)]
)
def test_ppo_on_the_gpu_across_a_shift_with_diagnostics(tmp_path, backend, compile):
    if backend == "envpool":
        pytest.importorskip("envpool")
    from agents import ppo

    args = dataclasses.replace(
        ppo.Args(),
        env_id="HalfCheetah-v5", env_backend=backend, num_envs=8, total_timesteps=4096,
        num_steps=128, num_minibatches=4, update_epochs=2, shift=("obs-permute",),
        shift_every=2048, regularizer="l2-er", checkpoint_every=0, runs_dir=str(tmp_path),
        cuda=True, compile=compile,
    )  # fmt: skip
    run_dir = ppo.train(args)
    finite_losses(run_dir, "losses/value_loss")
    spectra = sorted((run_dir / "diagnostics").glob("step_*.npz"))
    assert len(spectra) == 3
    assert np.isfinite(np.load(spectra[1])["init/critic/hessian/top"]).all()


def test_sac_on_the_gpu_across_a_shift_with_diagnostics(tmp_path):
    from agents import sac

    args = dataclasses.replace(
        sac.Args(),
        env_id="Hopper-v5", total_timesteps=1200, learning_starts=300, batch_size=64,
        hidden_sizes=(32, 32), shift=("friction",), shift_at=(600,), regularizer="l2-er",
        log_every=100, checkpoint_every=0, runs_dir=str(tmp_path), cuda=True,
    )  # fmt: skip
    run_dir = sac.train(args)
    finite_losses(run_dir, "losses/qf1_loss")
    assert len(list((run_dir / "diagnostics").glob("step_*.npz"))) == 3


def test_supervised_fused_step_on_the_gpu_learns(tmp_path):
    import train
    from agents import supervised

    _, demo = train.parse("supervised", ["--preset", "demo"])
    args = dataclasses.replace(demo, num_tasks=2, runs_dir=str(tmp_path), cuda=True)
    run_dir = supervised.train(args)
    tasks = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "charts/online_accuracy" in m]
    assert tasks and tasks[0]["charts/online_accuracy"] > 0.5  # 10 classes: chance is 0.1
    events = read_jsonl(run_dir / "events.jsonl")
    assert any(e.get("update") == "fused" for e in events)


def test_lanczos_on_the_gpu_matches_the_cpu():
    from diagnostics.curvature import HessianOperator, LossClosure, extreme_eigenvalues

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    tops = []
    for device in ("cpu", "cuda"):
        model = net.to(device, torch.float64)
        params = {k: v.detach() for k, v in model.named_parameters()}
        xs, ys = x.to(device), y.to(device)
        closure = LossClosure(
            params,
            lambda p, xs=xs, model=model: torch.func.functional_call(model, p, (xs,)),
            lambda out, ys=ys: ((out - ys) ** 2).mean(),
        )
        operator = HessianOperator(closure)
        start = torch.ones(operator.dim, dtype=torch.float64, device=device)
        top, _, _ = extreme_eigenvalues(operator.matvec, start, k=3, tol=1e-10, which="top")
        tops.append(top)
    np.testing.assert_allclose(tops[1], tops[0], rtol=1e-8)


def test_pinned_staging_copies_every_step_without_aliasing():
    from agents.run import HostToDevice

    to_device = HostToDevice((4, 3), torch.device("cuda"))
    assert to_device.staging.is_pinned()
    arrays = [np.full((4, 3), float(k)) for k in range(50)]
    outs = [to_device(a) for a in arrays]  # no sync between copies: the event orders them
    torch.cuda.synchronize()
    for array, out in zip(arrays, outs, strict=True):
        assert out.device.type == "cuda"
        np.testing.assert_array_equal(out.cpu().numpy(), array)
