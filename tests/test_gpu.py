"""The GPU paths, run for real on a CUDA device (marked `gpu`).

Each learner runs end to end with its networks, storage, updates and diagnostics on the GPU,
and the numerical routines agree with the same computation on the CPU. Without a GPU these
tests skip, unless REQUIRE_GPU=1 (the GPU check sets it), which makes a missing GPU a failure:
a green `pytest -m gpu` must mean the GPU ran. GPU_TESTS_ON_CPU=1 runs the same bodies on the
CPU instead (the check's dry run does, so that a first GPU window never meets a typo); the
tests that need CUDA itself (sync debug mode, pinned memory) skip then.

Every run here also asserts that no diagnostic was skipped: a failing measure is logged and
swallowed by design, which would otherwise let a device bug pass unseen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ON_CPU = os.environ.get("GPU_TESTS_ON_CPU") == "1"
REQUIRED = os.environ.get("REQUIRE_GPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"

pytestmark = [pytest.mark.gpu]
if not ON_CPU and not torch.cuda.is_available():
    if REQUIRED:
        raise RuntimeError("REQUIRE_GPU=1 but torch sees no CUDA device")  # fails collection
    pytestmark.append(pytest.mark.skip(reason="needs a CUDA device (REQUIRE_GPU=1 to insist)"))
needs_cuda = pytest.mark.skipif(ON_CPU, reason="needs CUDA itself, not only a device")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finite_losses(run_dir: Path, key: str) -> list[float]:
    values = [m[key] for m in read_jsonl(run_dir / "metrics.jsonl") if key in m]
    assert values and all(math.isfinite(v) for v in values)
    return values


def no_skipped_diagnostics(run_dir: Path) -> None:
    skipped = [
        e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "diagnostic_skipped"
    ]
    assert not skipped, skipped


def ppo_args(tmp_path: Path, **overrides):
    from agents import ppo

    base = dict(
        env_id="HalfCheetah-v5", num_envs=8, total_timesteps=2048, num_steps=128,
        num_minibatches=4, update_epochs=2, shift=("obs-permute",), shift_every=1024,
        regularizer="l2-er", checkpoint_every=1024, runs_dir=str(tmp_path), cuda=not ON_CPU,
        diag=dataclasses.replace(ppo.Args().diag, batch_size=256, lanczos_order=20, top_k=3,
                                 gram_batch=8, min_init_samples=64),
    )  # fmt: skip
    base.update(overrides)
    return dataclasses.replace(ppo.Args(), **base)


@pytest.mark.parametrize(
    ("backend", "compile"), [("gymnasium", False), ("envpool", False), ("gymnasium", True)]
)
def test_ppo_on_the_gpu_across_a_shift_with_diagnostics(tmp_path, backend, compile):
    if backend == "envpool":
        pytest.importorskip("envpool")
    from agents import ppo

    run_dir = ppo.train(ppo_args(tmp_path, env_backend=backend, compile=compile))
    finite_losses(run_dir, "losses/value_loss")
    no_skipped_diagnostics(run_dir)
    spectra = sorted((run_dir / "diagnostics").glob("step_*.npz"))
    assert len(spectra) == 3
    assert np.isfinite(np.load(spectra[1])["init/critic/hessian/top"]).all()


def test_a_gpu_run_resumes_on_the_gpu_and_on_the_cpu(tmp_path):
    """A resume restores the run's state onto the device (the weights diagnostics compare with
    the initial weights saved in the checkpoint), and a GPU checkpoint resumes with --no-cuda."""
    from agents import ppo
    from agents.checkpoints import load_checkpoint

    first = ppo.train(ppo_args(tmp_path / "gpu", total_timesteps=1024, shift_every=512))
    ppo.train(dataclasses.replace(load_checkpoint(first)["args"], resume=str(first),
                                  total_timesteps=2048))  # fmt: skip
    no_skipped_diagnostics(first)
    assert load_checkpoint(first)["global_step"] == 2048
    assert any(
        "shift/end/critic/distance_from_init" in m for m in read_jsonl(first / "metrics.jsonl")
    )

    other = ppo.train(ppo_args(tmp_path / "cpu", total_timesteps=1024, shift_every=512))
    ppo.train(dataclasses.replace(load_checkpoint(other)["args"], resume=str(other),
                                  total_timesteps=2048, cuda=False))  # fmt: skip
    no_skipped_diagnostics(other)
    assert load_checkpoint(other)["global_step"] == 2048


@pytest.mark.parametrize("method", ["cbp", "redo", "reset", "shrink-perturb"])
def test_regularizers_with_device_code_run_on_the_gpu(tmp_path, method):
    """The methods that index units, draw fresh networks or reset optimizer state."""
    from agents import ppo
    from regularizers import CBPConfig, ReDoConfig

    acting = {"cbp": {"cbp": CBPConfig(replacement_rate=0.2, maturity=2)},
              "redo": {"redo": ReDoConfig(tau=0.5, every=2)}}  # fmt: skip
    run_dir = ppo.train(
        ppo_args(tmp_path, regularizer=method, diagnostics=("none",), diag=ppo.Args().diag,
                 activation="relu", **acting.get(method, {}))
    )  # fmt: skip
    finite_losses(run_dir, "losses/value_loss")
    keys = {"cbp": "regularizer/cbp/replaced", "redo": "regularizer/redo/recycled",
            "reset": "regularizer/reset/applied", "shrink-perturb": "regularizer/shrink_perturb/applied"}  # fmt: skip
    assert any(m.get(keys[method], 0) > 0 for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_ppo_seeds_on_the_gpu_across_a_shift_with_diagnostics(tmp_path):
    """`ppo --seeds` on the device: two seeds of continual CartPole (a categorical policy, its
    stacked networks, each seed's own generator on the device) across a shift, with L2-ER (ER's
    step batched across the seeds), the Hessian measured per seed at each boundary, each seed
    its own finished run."""
    from agents import ppo, ppo_seeds
    from agents.flags import preset_defaults

    args = dataclasses.replace(
        preset_defaults(ppo.Args, ppo.LEARNER, "continual-cartpole"), seeds=(1, 2),
        hidden_sizes=(32, 32), total_timesteps=1600, shift_every=800, checkpoint_every=0,
        runs_dir=str(tmp_path), cuda=not ON_CPU, regularizer="l2-er",
        diag=dataclasses.replace(ppo.Args().diag, batch_size=256, lanczos_order=20, top_k=3,
                                 min_init_samples=64),
    )  # fmt: skip
    for run_dir in ppo_seeds.train(args):
        finite_losses(run_dir, "losses/value_loss")
        no_skipped_diagnostics(run_dir)
        assert len(list((run_dir / "diagnostics").glob("step_*.npz"))) == 3
        assert read_jsonl(run_dir / "events.jsonl")[-1]["event"] == "finished"
        ranks = [m["regularizer/erank/actor"] for m in read_jsonl(run_dir / "metrics.jsonl")
                 if "regularizer/erank/actor" in m]  # fmt: skip
        assert ranks and all(1.0 <= rank <= 32.0 for rank in ranks)


def test_sac_on_the_gpu_across_a_shift_with_diagnostics_and_the_probe(tmp_path):
    from agents import sac

    args = dataclasses.replace(
        sac.Args(),
        env_id="Hopper-v5", total_timesteps=1200, learning_starts=300, batch_size=64,
        hidden_sizes=(32, 32), shift=("friction",), shift_at=(600,), regularizer="l2-er",
        log_every=100, checkpoint_every=0, runs_dir=str(tmp_path), cuda=not ON_CPU,
        diagnostics=("hessian", "features", "weights", "readiness", "probe"),
        diag=dataclasses.replace(sac.Args().diag, batch_size=256, lanczos_order=20, top_k=3,
                                 min_init_samples=64, probe_steps=5),
    )  # fmt: skip
    run_dir = sac.train(args)
    finite_losses(run_dir, "losses/qf1_loss")
    no_skipped_diagnostics(run_dir)
    assert len(list((run_dir / "diagnostics").glob("step_*.npz"))) == 3
    drops = [
        m for m in read_jsonl(run_dir / "metrics.jsonl") if "shift/init/critic/probe/drop" in m
    ]
    assert drops and all(math.isfinite(m["shift/init/critic/probe/drop"]) for m in drops)


@pytest.mark.parametrize(
    ("optimizer", "layer_norm", "update"),
    [("sgd", False, "fused"), ("adam", False, "autograd"), ("sgd", True, "autograd")],
)
def test_supervised_on_the_gpu_learns(tmp_path, optimizer, layer_norm, update):
    import train
    from agents import supervised

    _, demo, _ = train.parse("supervised", ["--preset", "demo"])
    args = dataclasses.replace(
        demo, num_tasks=2, runs_dir=str(tmp_path), cuda=not ON_CPU, optimizer=optimizer,
        learning_rate=1e-3 if optimizer == "adam" else demo.learning_rate, layer_norm=layer_norm,
        diag=dataclasses.replace(demo.diag, plot=False),
    )  # fmt: skip
    run_dir = supervised.train(args)
    tasks = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "charts/online_accuracy" in m]
    assert tasks and tasks[0]["charts/online_accuracy"] > 0.5  # 10 classes: chance is 0.1
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["update"] for e in events if e["event"] == "stream"] == [update]
    no_skipped_diagnostics(run_dir)


def test_diagnostics_leave_the_devices_random_streams_alone(tmp_path):
    """Bit-identical parameters and CUDA random state with diagnostics on and off."""
    from agents import ppo
    from agents.checkpoints import load_checkpoint

    finals = []
    for measures in (("none",), ("hessian", "features", "weights", "readiness")):
        diag = ppo.Args().diag
        if measures != ("none",):
            diag = dataclasses.replace(diag, batch_size=256, lanczos_order=20, top_k=3,
                                       min_init_samples=64)  # fmt: skip
        run = ppo.train(ppo_args(tmp_path / measures[0], diagnostics=measures, diag=diag))
        finals.append(load_checkpoint(run))
    off, on = finals
    for net in ("actor", "critic"):
        for key, value in off[net].items():
            assert torch.equal(value, on[net][key]), f"{net}.{key}"
    assert len(off["rng"]["cuda"]) == len(on["rng"]["cuda"])
    for a, b in zip(off["rng"]["cuda"], on["rng"]["cuda"], strict=True):
        assert torch.equal(a, b)


def test_one_fp32_update_on_the_gpu_matches_the_cpu():
    """PPO's minibatch loss, backward, clipping and fused Adam step on the same data, on the
    CPU and on the device: the same parameters to float32 round-off."""
    from agents import ppo
    from agents.networks import Critic, GaussianActor

    torch.manual_seed(0)
    args = ppo.Args()
    actor, critic = GaussianActor(17, 6, (64, 64), "tanh"), Critic(17, (64, 64), "tanh")
    n = 256
    batch = {"obs": torch.randn(n, 17), "actions": torch.randn(n, 6), "logprobs": torch.randn(n),
             "advantages": torch.randn(n), "returns": torch.randn(n), "values": torch.randn(n)}  # fmt: skip
    results = []
    for device in ("cpu", DEVICE):
        a, c = (
            GaussianActor(17, 6, (64, 64), "tanh").to(device),
            Critic(17, (64, 64), "tanh").to(device),
        )
        a.load_state_dict(actor.state_dict())
        c.load_state_dict(critic.state_dict())
        params = [*a.parameters(), *c.parameters()]
        optimizer = torch.optim.Adam(params, lr=3e-4, eps=1e-5, fused=True)
        data = {k: v.to(device) for k, v in batch.items()}
        for start in range(0, n, 64):
            idx = torch.arange(start, start + 64, device=device)
            out = ppo.minibatch_loss(a, c, data, idx, args)
            optimizer.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.found_inf = torch.zeros((), device=device)
            optimizer.step()
        results.append([p.detach().cpu() for p in params])
    for cpu, gpu in zip(*results, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


@needs_cuda
def test_ppos_minibatch_loop_never_syncs_the_host():
    """CUDA's sync debug mode raises on any host synchronisation: none in PPO's minibatch
    steps (the loss, backward, clipping, L2's decay, the found_inf-guarded fused Adam step)."""
    from agents import ppo
    from agents.networks import Critic, GaussianActor
    from regularizers import L2, L2Config

    args = ppo.Args()
    actor, critic = (
        GaussianActor(17, 6, (64, 64), "tanh").cuda(),
        Critic(17, (64, 64), "tanh").cuda(),
    )
    params = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-4, fused=True)
    l2 = L2(L2Config(weight_decay=1e-4))
    l2.attach({"actor": actor, "critic": critic}, optimizer, seed=0)
    n = 2048
    batch = {k: torch.randn(n, *shape, device="cuda") for k, shape in
             (("obs", (17,)), ("actions", (6,)), ("logprobs", ()), ("advantages", ()),
              ("returns", ()), ("values", ()))}  # fmt: skip
    order = torch.randperm(n, device="cuda")
    nonfinite = torch.zeros((), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for start in range(0, n, 64):
            out = ppo.minibatch_loss(actor, critic, batch, order[start : start + 64], args)
            skipped = (~torch.isfinite(out["loss"].detach())).float()
            nonfinite = nonfinite + skipped
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            l2.before_step()
            optimizer.found_inf = skipped
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(nonfinite) == 0


@needs_cuda
def test_compiled_ppo_loss_compiles_once():
    """--compile on CUDA: the minibatch loss is compiled at its first call and never again
    (a recompile per update would cost seconds each)."""
    import torch._dynamo

    from agents import ppo
    from agents.networks import Critic, GaussianActor

    torch._dynamo.reset()
    args = ppo.Args()
    actor, critic = (
        GaussianActor(17, 6, (64, 64), "tanh").cuda(),
        Critic(17, (64, 64), "tanh").cuda(),
    )
    compiled = torch.compile(ppo.minibatch_loss)
    batch = {k: torch.randn(256, *shape, device="cuda") for k, shape in
             (("obs", (17,)), ("actions", (6,)), ("logprobs", ()), ("advantages", ()),
              ("returns", ()), ("values", ()))}  # fmt: skip
    for _ in range(3):
        for start in range(0, 256, 64):
            idx = torch.arange(start, start + 64, device="cuda")
            compiled(actor, critic, batch, idx, args)["loss"].backward()
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] >= 1 and torch._dynamo.utils.counters["recompiles"].total() == 0, dict(
        frames
    )


def test_lanczos_on_the_gpu_matches_the_cpu():
    from diagnostics.curvature import HessianOperator, LossClosure, extreme_eigenvalues

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    tops = []
    for device in ("cpu", DEVICE):
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


@needs_cuda
def test_pinned_staging_copies_are_correct_while_the_gpu_is_busy():
    """The staging buffer is reused every step; with the GPU busy (a long kernel queued first)
    the copies are still pending when the next array is written into it, which only the CUDA
    event between them keeps from overwriting an earlier copy's source."""
    from agents.run import HostToDevice

    to_device = HostToDevice((256, 64), torch.device("cuda"))
    assert to_device.staging.is_pinned()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time: every copy below queues behind it
    arrays = [np.full((256, 64), float(k)) for k in range(50)]
    outs = [to_device(a) for a in arrays]
    torch.cuda.synchronize()
    for array, out in zip(arrays, outs, strict=True):
        assert out.device.type == "cuda"
        np.testing.assert_array_equal(out.cpu().numpy(), array)
