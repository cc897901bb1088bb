"""Each plasticity method against its formula, on tiny networks (float64 where it matters)."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import re
import typing
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import tyro
from torch import nn

from agents.networks import Critic, GaussianActor
from regularizers import (
    CBP,
    REGULARIZERS,
    Combined,
    LayerNormL2,
    Parseval,
    ReDo,
    Regularizer,
    RegularizerFlags,
    RegularizerName,
    Reset,
    Spectral,
    build_regularizer,
    effective_rank,
)
from regularizers.cbp import CBPConfig
from regularizers.erank import ERank, ERankConfig
from regularizers.l2 import L2, L2Config
from regularizers.l2_init import L2Init, L2InitConfig
from regularizers.shrink_perturb import ShrinkPerturb, ShrinkPerturbConfig, fresh_draw_seed

OBS_DIM, ACT_DIM, HIDDEN = 3, 2, (8, 6)


def actor_critic(
    seed: int = 0, dtype: torch.dtype = torch.float64, **options
) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    nets = {
        "actor": GaussianActor(OBS_DIM, ACT_DIM, HIDDEN, "tanh", **options),
        "critic": Critic(OBS_DIM, HIDDEN, "tanh", **options),
    }
    return {name: net.to(dtype) for name, net in nets.items()}


def perturb(nets: dict[str, nn.Module], seed: int = 1, scale: float = 0.1) -> None:
    """Move every parameter, biases and log-std included (orthogonal init leaves them at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in nets.values():
            for param in net.parameters():
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def snapshot(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": param.detach().clone()
        for name, net in nets.items()
        for key, param in net.named_parameters()
    }


def features_fn_for(nets: dict[str, nn.Module], obs: torch.Tensor, calls: list | None = None):
    def features_fn():
        if calls is not None:
            calls.append(1)
        return {name: net(obs)[1] for name, net in nets.items()}

    return features_fn


def mean_erank(nets: dict[str, nn.Module], obs: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return {
            name: float(np.mean([effective_rank(h).item() for h in net(obs)[1]]))
            for name, net in nets.items()
        }


def adam(nets: dict[str, nn.Module]) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for net in nets.values() for p in net.parameters()], lr=1e-3)


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- effective_rank ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    features = torch.zeros(12, 7, dtype=torch.float64)
    features[:, :k] = 2.5 * q[:, :k]  # k orthogonal columns of equal norm, the rest zero
    assert effective_rank(features).item() == pytest.approx(k, abs=1e-10)


def test_effective_rank_of_rank_one_is_one():
    u, v = torch.randn(20, 1, dtype=torch.float64), torch.randn(1, 9, dtype=torch.float64)
    assert effective_rank(u @ v).item() == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_matches_exp_entropy_by_hand():
    sigma = np.array([3.0, 2.0, 1.0, 0.5])
    p = sigma / sigma.sum()
    expected = math.exp(-(p * np.log(p)).sum())  # about 3.40
    u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 4)))
    v, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    features = torch.from_numpy(u @ np.diag(sigma) @ v.T)
    assert effective_rank(features).item() == pytest.approx(expected, rel=1e-12)

    random = np.random.default_rng(2).normal(size=(16, 5))
    s = np.linalg.svd(random, compute_uv=False)
    p = s / s.sum()
    assert effective_rank(torch.from_numpy(random)).item() == pytest.approx(
        math.exp(-(p * np.log(p)).sum()), rel=1e-12
    )


def test_effective_rank_zero_singular_values_give_finite_gradients():
    rank_deficient = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    rank_deficient.requires_grad_(True)
    value = effective_rank(rank_deficient)
    value.backward()
    p = np.array([2.0, 1.0]) / 3.0
    assert value.item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert torch.isfinite(rank_deficient.grad).all()

    zeros = torch.zeros(5, 4, requires_grad=True)
    value = effective_rank(zeros)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(zeros.grad).all()


# --- erank ------------------------------------------------------------------------------------


def test_erank_step_is_one_ascent_step_and_raises_the_mean_erank():
    nets = actor_critic()
    obs = torch.randn(64, OBS_DIM, dtype=torch.float64)
    before = mean_erank(nets, obs)
    lr = 1e-2

    # The expected step, computed here independently: theta + lr * grad mean_l erank(H_l).
    expected = snapshot(nets)
    for name, net in nets.items():
        objective = torch.stack([effective_rank(h) for h in net(obs)[1]]).mean()
        params = dict(net.named_parameters())
        grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
        for key, grad in zip(params, grads, strict=True):
            if grad is not None:
                expected[f"{name}.{key}"] += lr * grad

    reg = ERank(ERankConfig(lr=lr, every=0))
    reg.attach(nets, adam(nets), seed=0)
    metrics = reg.after_update(features_fn_for(nets, obs), pass_end=True)

    for key, param in snapshot(nets).items():
        torch.testing.assert_close(param, expected[key], rtol=0, atol=1e-12)
    after = mean_erank(nets, obs)
    for name in nets:
        assert metrics[f"erank/{name}"] == pytest.approx(before[name], rel=1e-12)
        assert after[name] > before[name] + 1e-6


def test_erank_step_touches_no_grad_and_no_optimizer_state():
    nets = actor_critic()
    obs = torch.randn(32, OBS_DIM, dtype=torch.float64)
    optimizer = adam(nets)
    loss = sum(net(obs)[0].pow(2).sum() for net in nets.values()) + nets["actor"].log_std.sum()
    loss.backward()
    optimizer.step()  # so Adam has moments to compare
    grads = {id(p): p.grad.clone() for net in nets.values() for p in net.parameters()}
    state = copy.deepcopy(optimizer.state_dict())
    params_before = snapshot(nets)

    reg = ERank(ERankConfig(lr=1e-2, every=1))
    reg.attach(nets, optimizer, seed=0)
    assert reg.after_update(features_fn_for(nets, obs), pass_end=False)

    assert any(not torch.equal(params_before[k], v) for k, v in snapshot(nets).items())
    for net in nets.values():
        for param in net.parameters():
            assert torch.equal(param.grad, grads[id(param)])
    new_state = optimizer.state_dict()["state"]
    for index, moments in state["state"].items():
        for key, value in moments.items():
            assert torch.equal(new_state[index][key], value)

    optimizer.zero_grad(set_to_none=True)
    reg.after_update(features_fn_for(nets, obs), pass_end=False)
    assert all(p.grad is None for net in nets.values() for p in net.parameters())


def test_erank_cadence_every_k_updates_and_once_per_pass():
    nets = actor_critic()
    obs = torch.randn(16, OBS_DIM, dtype=torch.float64)
    calls: list = []
    reg = ERank(ERankConfig(lr=1e-3, every=3))
    reg.attach(nets, adam(nets), seed=0)
    acted = [bool(reg.after_update(features_fn_for(nets, obs, calls), False)) for _ in range(7)]
    assert acted == [False, False, True, False, False, True, False]
    assert len(calls) == 2  # the forward pass is paid for only when the step is taken

    resumed = ERank(ERankConfig(lr=1e-3, every=3))
    resumed.attach(nets, adam(nets), seed=0)
    resumed.load_state_dict(roundtrip(reg.state_dict()))
    # 7 updates were counted before the checkpoint: the next step is due at update 9.
    resumed_acted = [
        bool(resumed.after_update(features_fn_for(nets, obs), False)) for _ in range(3)
    ]
    assert resumed_acted == [False, True, False]

    calls.clear()
    per_pass = ERank(ERankConfig(lr=1e-3, every=0))
    per_pass.attach(nets, adam(nets), seed=0)
    ends = [False, False, True, False, True]
    acted = [bool(per_pass.after_update(features_fn_for(nets, obs, calls), end)) for end in ends]
    assert acted == ends
    assert len(calls) == 2


# --- l2 ---------------------------------------------------------------------------------------


def test_l2_gradient_is_weight_decay_times_theta_for_every_parameter():
    nets = actor_critic()
    perturb(nets)  # biases start at 0, where any gradient formula would pass
    weight_decay = 0.3
    reg = L2(L2Config(weight_decay=weight_decay))
    reg.attach(nets, adam(nets), seed=0)
    assert reg.only_coupled_decay() and reg.coupled_decay() == weight_decay
    # before_step adds weight_decay * theta on top of whatever the loss put in .grad
    loss_grads = {}
    for name, net in nets.items():
        for key, param in net.named_parameters():
            param.grad = torch.randn_like(param)
            loss_grads[f"{name}.{key}"] = param.grad.clone()
    reg.before_step()
    for name, net in nets.items():
        for key, param in net.named_parameters():
            torch.testing.assert_close(
                param.grad,
                loss_grads[f"{name}.{key}"] + weight_decay * param.detach(),
                rtol=1e-12,
                atol=0,
            )
    assert "actor.mean.hidden.0.bias" in loss_grads and "critic.value.out.bias" in loss_grads
    assert "actor.log_std" in loss_grads


def test_l2_before_step_equals_the_optimizers_own_weight_decay():
    for make in (
        lambda params, wd: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=wd),
        lambda params, wd: torch.optim.Adam(params, lr=0.01, weight_decay=wd),
    ):
        nets, twins = actor_critic(), actor_critic()
        ours = make([p for net in nets.values() for p in net.parameters()], 0.0)
        theirs = make([p for net in twins.values() for p in net.parameters()], 0.05)
        reg = L2(L2Config(weight_decay=0.05))
        reg.attach(nets, ours, seed=0)
        obs = torch.randn(8, OBS_DIM, dtype=torch.float64)
        for _ in range(3):
            for models, optimizer in ((nets, ours), (twins, theirs)):
                optimizer.zero_grad()
                sum(net(obs)[0].pow(2).sum() for net in models.values()).backward()
                if models is nets:
                    reg.before_step()
                optimizer.step()
        for key, param in snapshot(nets).items():
            torch.testing.assert_close(param, snapshot(twins)[key], rtol=1e-12, atol=1e-14)


# --- l2-init ----------------------------------------------------------------------------------


def test_l2_init_is_squared_distance_to_theta_0_and_survives_a_checkpoint():
    nets = actor_critic()
    strength = 0.7
    reg = L2Init(L2InitConfig(strength=strength))
    reg.attach(nets, adam(nets), seed=0)
    assert reg.penalty({}).item() == 0.0

    theta_0 = snapshot(nets)
    perturb(nets)
    penalty = reg.penalty({})
    penalty.backward()
    expected = sum((p - theta_0[k]).pow(2).sum() for k, p in snapshot(nets).items())
    assert penalty.item() == pytest.approx(strength * expected.item(), rel=1e-12)
    for name, net in nets.items():
        for key, param in net.named_parameters():
            displacement = param.detach() - theta_0[f"{name}.{key}"]
            torch.testing.assert_close(param.grad, 2 * strength * displacement, rtol=1e-12, atol=0)

    # A resumed run: other parameters, same anchor.
    other = actor_critic(seed=5)
    resumed = L2Init(L2InitConfig(strength=strength))
    resumed.attach(other, adam(other), seed=0)
    resumed.load_state_dict(roundtrip(reg.state_dict()))
    expected = sum((p - theta_0[k]).pow(2).sum() for k, p in snapshot(other).items())
    assert expected.item() > 0
    assert resumed.penalty({}).item() == pytest.approx(strength * expected.item(), rel=1e-12)


# --- shrink-perturb ---------------------------------------------------------------------------


def expected_fresh_draws(nets: dict[str, nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """The first fresh draw, reproduced without the method: its documented stream, net by net."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fresh_draw_seed(seed))
        fresh = {name: copy.deepcopy(net) for name, net in nets.items()}
        for net in fresh.values():
            net.reset_parameters()
    return snapshot(fresh)


def test_shrink_perturb_mixes_in_a_fresh_draw_from_its_own_stream():
    seed, shrink, noise = 3, 0.6, 0.25
    nets = actor_critic(seed=seed)  # built from the run's seed, as train.py does
    theta_0 = snapshot(nets)
    perturb(nets)
    old = snapshot(nets)
    fresh = expected_fresh_draws(nets, seed)
    # The fresh draw is a new initialisation, not a replay of the run's own initial draw.
    assert not torch.equal(
        fresh["actor.mean.hidden.0.weight"], theta_0["actor.mean.hidden.0.weight"]
    )

    reg = ShrinkPerturb(ShrinkPerturbConfig(shrink=shrink, noise=noise, every=0))
    reg.attach(nets, adam(nets), seed=seed)
    global_state = torch.get_rng_state()
    assert reg.on_shift() == {"shrink_perturb/applied": 1.0}
    assert torch.equal(torch.get_rng_state(), global_state)
    for key, param in snapshot(nets).items():
        torch.testing.assert_close(
            param, shrink * old[key] + noise * fresh[key], rtol=1e-12, atol=0
        )

    # The stream goes on (a new draw each shift), and a checkpoint resumes it exactly.
    state = roundtrip(reg.state_dict())
    copies = {name: copy.deepcopy(net) for name, net in nets.items()}
    reg.on_shift()
    resumed = ShrinkPerturb(ShrinkPerturbConfig(shrink=shrink, noise=noise, every=0))
    resumed.attach(copies, adam(copies), seed=seed)
    resumed.load_state_dict(state)
    resumed.on_shift()
    for key, param in snapshot(copies).items():
        assert torch.equal(param, snapshot(nets)[key])
    first_mix = {k: shrink * old[k] + noise * fresh[k] for k in old}
    second_fresh = {k: (v - shrink * first_mix[k]) / noise for k, v in snapshot(nets).items()}
    assert not torch.allclose(
        second_fresh["critic.value.hidden.0.weight"], fresh["critic.value.hidden.0.weight"]
    )


def test_shrink_perturb_every_k_updates_ignores_shifts():
    nets = actor_critic()
    reg = ShrinkPerturb(ShrinkPerturbConfig(shrink=0.5, noise=0.1, every=2))
    reg.attach(nets, adam(nets), seed=0)
    obs = torch.randn(4, OBS_DIM, dtype=torch.float64)
    before = snapshot(nets)
    assert reg.on_shift() == {}
    assert all(torch.equal(v, snapshot(nets)[k]) for k, v in before.items())
    applied = [bool(reg.after_update(features_fn_for(nets, obs), True)) for _ in range(5)]
    assert applied == [False, True, False, True, False]

    at_shifts = ShrinkPerturb(ShrinkPerturbConfig(every=0))
    at_shifts.attach(nets, adam(nets), seed=0)
    assert not any(at_shifts.after_update(features_fn_for(nets, obs), True) for _ in range(3))


def test_shrink_perturb_falls_back_to_the_layers_reset_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))  # no reset_parameters
    old = {k: v.detach().clone() for k, v in net.state_dict().items()}
    reg = ShrinkPerturb(ShrinkPerturbConfig(shrink=1.0, noise=1.0))
    reg.attach({"model": net}, adam({"model": net}), seed=0)
    reg.on_shift()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fresh_draw_seed(0))
        fresh = copy.deepcopy(net)
        fresh[0].reset_parameters()
        fresh[2].reset_parameters()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, old[key] + fresh.state_dict()[key])


# --- registry, l2-er, flags -------------------------------------------------------------------


@dataclass
class Args(RegularizerFlags):
    seed: int = 1
    """the run's seed"""


def flags(name: str, **configs) -> Args:
    args = Args(regularizer=name)
    for path, value in configs.items():
        group, key = path.split("__")
        setattr(getattr(args, group), key, value)
    return args


def test_l2_er_adds_the_l2_decay_and_takes_the_erank_step():
    nets = actor_critic()
    perturb(nets)
    twins = {name: copy.deepcopy(net) for name, net in nets.items()}
    obs = torch.randn(32, OBS_DIM, dtype=torch.float64)
    reg = build_regularizer(flags("l2-er", l2__weight_decay=1e-2, erank__lr=1e-2))
    assert isinstance(reg, Combined) and reg.name == "l2-er"
    reg.attach(nets, adam(nets), seed=0)
    l2, erank = L2(L2Config(weight_decay=1e-2)), ERank(ERankConfig(lr=1e-2))
    l2.attach(twins, adam(twins), seed=0)
    erank.attach(twins, adam(twins), seed=0)

    assert reg.only_coupled_decay() and reg.coupled_decay() == l2.coupled_decay() == 1e-2
    metrics = reg.after_update(features_fn_for(nets, obs), pass_end=True)
    assert metrics == pytest.approx(erank.after_update(features_fn_for(twins, obs), True))
    for key, param in snapshot(nets).items():
        torch.testing.assert_close(param, snapshot(twins)[key], rtol=0, atol=1e-14)
    assert set(reg.state_dict()) == {"l2", "erank"}


def test_cbp_l2_decays_then_replaces_units_as_l2_and_cbp_would():
    nets = actor_critic()
    perturb(nets)
    twins = {name: copy.deepcopy(net) for name, net in nets.items()}
    obs = torch.randn(32, OBS_DIM, dtype=torch.float64)
    cbp_flags = {"cbp__replacement_rate": 0.2, "cbp__maturity": 1}
    reg = build_regularizer(flags("cbp-l2", l2__weight_decay=1e-2, **cbp_flags))
    assert isinstance(reg, Combined) and reg.name == "cbp-l2"
    optimizer, twin_optimizer = adam(nets), adam(twins)
    reg.attach(nets, optimizer, seed=0)
    parts = [L2(L2Config(weight_decay=1e-2)), CBP(CBPConfig(replacement_rate=0.2, maturity=1))]
    for part in parts:
        part.attach(twins, twin_optimizer, seed=0)

    replaced = 0.0
    for _step in range(4):
        for learner, opt, methods in ((nets, optimizer, [reg]), (twins, twin_optimizer, parts)):
            loss = sum(net(obs)[0].pow(2).mean() for net in learner.values())
            opt.zero_grad()
            loss.backward()
            for method in methods:
                method.before_step()
            opt.step()
            metrics = {}
            for method in methods:
                metrics.update(method.after_update(features_fn_for(learner, obs), True))
            if methods == parts:
                replaced += sum(v for k, v in metrics.items() if "replaced" in k)
        for key, param in snapshot(nets).items():
            torch.testing.assert_close(param, snapshot(twins)[key], rtol=0, atol=1e-12)
    assert replaced > 0, "no unit was replaced: the test would not see CBP's part"
    assert reg.coupled_decay() == 1e-2 and reg.only_coupled_decay()  # CBP acts after steps
    assert set(reg.state_dict()) == {"l2", "cbp"}


EXPECTED_TYPES = {
    "none": Regularizer,
    "l2": L2,
    "l2-init": L2Init,
    "erank": ERank,
    "l2-er": Combined,
    "shrink-perturb": ShrinkPerturb,
    "cbp": CBP,
    "cbp-l2": Combined,
    "redo": ReDo,
    "layernorm-l2": LayerNormL2,
    "spectral": Spectral,
    "reset": Reset,
    "parseval": Parseval,
}


@pytest.mark.parametrize("name", typing.get_args(RegularizerName))
def test_every_method_builds_and_runs_a_full_cycle(name):
    assert set(REGULARIZERS) == set(typing.get_args(RegularizerName)) == set(EXPECTED_TYPES)
    reg = build_regularizer(flags(name))
    assert type(reg) is EXPECTED_TYPES[name] and reg.name == name

    options = reg.network_options()  # what the method needs of the networks (layernorm-l2)
    nets = actor_critic(dtype=torch.float32, **options)
    optimizer = adam(nets)
    reg.attach(nets, optimizer, seed=0)
    obs = torch.randn(16, OBS_DIM)
    for step in range(2):
        outputs = {key: net(obs) for key, net in nets.items()}
        loss = sum(out.pow(2).mean() for out, _ in outputs.values())
        loss = loss + reg.penalty({key: feats for key, (_, feats) in outputs.items()})
        optimizer.zero_grad()
        loss.backward()
        reg.before_step()
        optimizer.step()
        metrics = reg.after_update(features_fn_for(nets, obs), pass_end=step == 1)
        assert all(math.isfinite(v) for v in metrics.values())
    assert all(math.isfinite(v) for v in reg.on_shift().values())

    state = roundtrip(reg.state_dict())
    fresh_nets = actor_critic(seed=1, dtype=torch.float32, **options)
    resumed = build_regularizer(flags(name))
    resumed.attach(fresh_nets, adam(fresh_nets), seed=0)
    resumed.load_state_dict(state)
    assert torch.isfinite(resumed.penalty({}))
    assert all(torch.isfinite(p).all() for net in nets.values() for p in net.parameters())


@pytest.mark.parametrize(
    ("configs", "flag"),
    [
        ({"l2__weight_decay": -1.0}, "--l2.weight-decay must be >= 0, got -1.0"),
        ({"l2_init__strength": -0.5}, "--l2-init.strength must be >= 0, got -0.5"),
        ({"erank__lr": -1.0}, "--erank.lr must be >= 0, got -1.0"),
        ({"erank__lr": float("nan")}, "--erank.lr must be >= 0, got nan"),
        ({"erank__every": -1}, "--erank.every must be >= 0, got -1"),
        ({"shrink_perturb__shrink": 0.0}, "--shrink-perturb.shrink must be in (0, 1], got 0.0"),
        ({"shrink_perturb__shrink": 1.5}, "--shrink-perturb.shrink must be in (0, 1], got 1.5"),
        ({"shrink_perturb__noise": -0.1}, "--shrink-perturb.noise must be >= 0, got -0.1"),
        ({"shrink_perturb__every": -2}, "--shrink-perturb.every must be >= 0, got -2"),
    ],
)
def test_bad_flag_values_raise_naming_the_flag(configs, flag):
    with pytest.raises(ValueError, match=f"^{re.escape(flag)}$"):
        build_regularizer(flags("l2-er", **configs))


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="--regularizer must be one of"):
        build_regularizer(flags("dropout"))


def test_flags_are_flat_on_the_command_line():
    args = tyro.cli(
        Args,
        args=[
            "--regularizer", "l2-er",
            "--l2.weight-decay", "1e-3",
            "--erank.lr", "1e-2",
            "--erank.every", "100",
            "--l2-init.strength", "0.5",
            "--shrink-perturb.shrink", "0.5",
        ],
    )  # fmt: skip
    assert (args.regularizer, args.l2.weight_decay, args.erank.lr) == ("l2-er", 1e-3, 1e-2)
    assert (args.erank.every, args.l2_init.strength, args.shrink_perturb.shrink) == (100, 0.5, 0.5)
    reg = build_regularizer(args)
    assert [part.config for part in reg.parts] == [args.l2, args.erank]


def test_every_method_reads_flag_groups_that_exist_and_every_group_has_a_reader():
    """The registry a method file declares itself in is consistent: `reads` names real flag
    groups, every group is read by some method, and every rule names a field of its config."""
    from regularizers import FLAG_GROUPS, METHODS

    groups = {group.field: group for group in FLAG_GROUPS}
    read = {name for method in METHODS.values() for name in method.reads}
    assert read == set(groups), (read, set(groups))
    for group in FLAG_GROUPS:
        assert set(group.rules) <= {f.name for f in dataclasses.fields(group.config)}, group.field
    assert [f.name for f in dataclasses.fields(RegularizerFlags)] == ["regularizer", *groups]
