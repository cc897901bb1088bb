"""Host reads of device values: each one stalls a GPU until its queue drains. Counted here on the
CPU by instrumenting every way a tensor's value reaches Python (tests/test_gpu.py checks the same
paths with CUDA's own sync debug mode on a GPU)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from contextlib import contextmanager

import torch

from agents import ppo
from agents.networks import MLP
from regularizers import CBP, L2, CBPConfig, L2Config

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def count_host_reads():
    """Counts, by name, the calls that bring a tensor's value to the host (and torch.nonzero,
    whose output size depends on the values)."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    original_nonzero = torch.nonzero

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    try:
        for name, function in originals.items():
            setattr(torch.Tensor, name, counted(name, function))
        torch.nonzero = counted("nonzero", original_nonzero)
        yield counts
    finally:
        for name, function in originals.items():
            setattr(torch.Tensor, name, function)
        torch.nonzero = original_nonzero


def test_the_counter_sees_a_read():
    with count_host_reads() as counts:
        assert bool(torch.ones(()) > 0)
        torch.nonzero(torch.ones(3))
    assert counts["__bool__"] == 1 and counts["nonzero"] == 1


def test_cbp_and_l2_read_nothing_on_a_step_that_replaces_no_unit():
    net = MLP(3, (8, 8), 2, "relu")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as the learners
    cbp = CBP(CBPConfig(replacement_rate=1e-4, maturity=100))
    cbp.attach({"model": net}, optimizer, seed=0)
    l2 = L2(L2Config(weight_decay=1e-3))
    l2.attach({"model": net}, optimizer, seed=0)
    x = torch.randn(16, 3)
    out, feats = net(x)
    (out.square().mean() + cbp.penalty({"model": feats})).backward()
    with count_host_reads() as counts:
        l2.before_step()
        optimizer.step()
        cbp.after_update(lambda: {"model": net(x)[1]}, pass_end=True)
    assert sum(counts.values()) == 0, counts


def ppo_reads(tmp_path, minibatches: int) -> Counter:
    args = dataclasses.replace(
        ppo.Args(), env_id="HalfCheetah-v5", total_timesteps=1024, num_steps=512,
        num_minibatches=minibatches, update_epochs=2, hidden_sizes=(8,), diagnostics=("none",),
        checkpoint_every=0, runs_dir=str(tmp_path / str(minibatches)),
    )  # fmt: skip
    with count_host_reads() as counts:
        ppo.train(args)
    return counts


def test_ppo_reads_the_device_per_update_and_per_env_step_never_per_minibatch(tmp_path):
    """The same rollouts with 2 and 16 minibatches per epoch: the same host reads (acting, and
    one read of each update's statistics), so none happens per minibatch (a NaN check per
    minibatch was 320 syncs per update at CleanRL's settings)."""
    few, many = ppo_reads(tmp_path, 2), ppo_reads(tmp_path, 16)
    assert few == many, (few, many)


def test_a_skipped_step_leaves_fused_adams_parameters_and_state_as_they_were():
    """What PPO relies on to skip a non-finite minibatch without a host read: fused Adam with
    found_inf = 1 does not move the parameters, the moments or the step count."""
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
    param.grad = torch.randn(5)
    optimizer.step()
    before = param.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[param].items()}
    param.grad = torch.full((5,), float("nan"))
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    assert torch.equal(param.detach(), before)
    for key, value in state.items():
        assert torch.equal(optimizer.state[param][key], value), key
    param.grad = torch.randn(5)
    optimizer.found_inf = torch.zeros(())
    optimizer.step()
    assert not torch.equal(param.detach(), before)
    assert float(optimizer.state[param]["step"]) == float(state["step"]) + 1
