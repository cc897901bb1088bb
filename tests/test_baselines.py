"""The paper's baselines (issue 7): cbp, redo, layernorm-l2, spectral, reset, parseval, each
against its formula on a tiny network (float64), resumed exactly from a checkpoint, and run end to
end in PPO and in the supervised stream."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import tyro
from torch import nn

from agents import ppo, supervised
from agents.checkpoints import load_checkpoint
from agents.networks import MLP, Critic, GaussianActor
from diagnostics.representation import dormant_mask
from regularizers import (
    CBP,
    METHOD_FLAGS,
    CBPConfig,
    Parseval,
    ParsevalConfig,
    ReDo,
    ReDoConfig,
    RegularizerFlags,
    Reset,
    Spectral,
    SpectralConfig,
    build_regularizer,
)
from regularizers.base import method_stream_seed, reset_optimizer_state
from regularizers.parseval import anisotropy

BASELINES = ["cbp", "redo", "layernorm-l2", "spectral", "reset", "parseval"]


def mlp(seed: int = 0, hidden=(6, 5), activation="tanh", layer_norm=False) -> MLP:
    torch.manual_seed(seed)
    return MLP(3, hidden, 2, activation, "orthogonal", layer_norm=layer_norm).double()


def perturb(net: nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Move every parameter (the orthogonal init leaves biases at 0, where a reset is invisible)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def trained_adam(net: nn.Module, x: torch.Tensor, steps: int = 2) -> torch.optim.Optimizer:
    """Adam with nonzero moments everywhere (so a reset of them is visible)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        out, feats = net(x)
        (out.square().sum() + sum(h.sum() for h in feats)).backward()
        optimizer.step()
    return optimizer


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def optimizer_state(optimizer: torch.optim.Optimizer, net: nn.Module) -> dict[str, dict]:
    return {
        name: {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
        for name, p in net.named_parameters()
    }


def fresh_draw(net: nn.Module, method: str, seed: int) -> dict[str, torch.Tensor]:
    """The first fresh draw of a method's documented stream, reproduced without the method."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(method_stream_seed(seed, method))
        fresh = copy.deepcopy(net)
        fresh.reset_parameters()
    return snapshot(fresh)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@dataclass
class Flags(RegularizerFlags):
    seed: int = 1


def assert_replaced(net, before, fresh, state_before, optimizer, units: dict[int, torch.Tensor]):
    """The units `units[layer]` of each hidden layer hold the fresh draw's incoming weights and
    bias, zero outgoing weights, and zero Adam moments there (layer by layer, in order: a new
    unit's fresh row also covers the columns of new units below it); all else is untouched."""
    readers = [f"hidden.{i}" for i in range(1, len(net.hidden))] + ["out"]
    expected = {name: value.clone() for name, value in before.items()}
    zero_state = {name: torch.zeros_like(value, dtype=torch.bool) for name, value in before.items()}
    for layer, chosen in sorted(units.items()):
        for name in (f"hidden.{layer}.weight", f"hidden.{layer}.bias"):
            expected[name][chosen] = fresh[name][chosen]
            zero_state[name][chosen] = True
        expected[f"{readers[layer]}.weight"][:, chosen] = 0.0
        zero_state[f"{readers[layer]}.weight"][:, chosen] = True
    after, state = snapshot(net), optimizer_state(optimizer, net)
    history = 0.0  # of the entries reset: some must have had some, or the check is empty
    for name, value in after.items():
        assert torch.equal(value, expected[name]), name
        zero = zero_state[name]
        for key in ("exp_avg", "exp_avg_sq"):
            moment, old = state[name][key], state_before[name][key]
            assert torch.equal(moment[zero], torch.zeros_like(moment[zero])), name
            assert torch.equal(moment[~zero], old[~zero]), name
            history += float(old[zero].abs().sum())
    assert history > 0


# --- the networks' side of the interface -------------------------------------------------------


def test_unit_layers_name_the_parameters_computing_and_reading_each_hidden_layer():
    net = mlp(layer_norm=True)
    layers = net.unit_layers()
    assert [layer.width() for layer in layers] == [6, 5]
    first = layers[0]
    assert first.incoming[0] is net.hidden[0].weight and first.incoming[1] is net.hidden[0].bias
    assert first.incoming[2] is net.norms[0].weight and first.incoming[3] is net.norms[0].bias
    assert layers[0].outgoing == [net.hidden[1].weight] and layers[1].outgoing == [net.out.weight]
    actor, critic = GaussianActor(3, 2, (4,), "tanh"), Critic(3, (4,), "tanh")
    assert actor.unit_layers()[0].outgoing[0] is actor.mean.out.weight
    assert critic.unit_layers()[0].incoming[0] is critic.value.hidden[0].weight

    # A net without it gets one line naming it and what needs it.
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    for method in (CBP(CBPConfig()), ReDo(ReDoConfig())):
        with pytest.raises(TypeError, match=r"^network 'model' \(Sequential\) has no unit_layers"):
            method.attach({"model": plain}, torch.optim.SGD(plain.parameters(), lr=0.1), seed=0)


def test_layer_norm_sits_before_the_activation_and_features_stay_post_activation():
    net = mlp(activation="relu", layer_norm=True)
    perturb(net)  # LayerNorm's gain and shift away from 1 and 0
    x = torch.randn(7, 3, dtype=torch.float64)
    out, feats = net(x)
    h = x
    for i, (layer, norm) in enumerate(zip(net.hidden, net.norms, strict=True)):
        h = torch.relu(norm(layer(h)))
        torch.testing.assert_close(feats[i], h, rtol=0, atol=1e-14)
    torch.testing.assert_close(out, net.out(h), rtol=0, atol=1e-14)
    names = dict(net.named_parameters())
    assert {"norms.0.weight", "norms.0.bias", "norms.1.weight"} <= names.keys()
    net.reset_parameters()
    assert torch.equal(net.norms[1].weight, torch.ones(5, dtype=torch.float64))


# --- shared optimizer-state reset ---------------------------------------------------------------


def test_reset_optimizer_state_zeroes_exactly_the_chosen_entries_of_adam_and_sgd():
    for make in (
        lambda ps: torch.optim.Adam(ps, lr=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    ):
        weight = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        optimizer = make([weight])
        for _ in range(2):
            optimizer.zero_grad()
            (weight.sin().sum()).backward()
            optimizer.step()
        before = {k: v.clone() for k, v in optimizer.state[weight].items()}
        reset_optimizer_state(optimizer, weight, (Ellipsis, torch.tensor([0, 2])))
        for key, value in optimizer.state[weight].items():
            if value.shape != weight.shape:
                assert torch.equal(value, before[key])  # Adam's step count: per tensor
                continue
            assert value[:, [0, 2]].abs().sum() == 0 and before[key][:, [0, 2]].abs().sum() > 0
            assert torch.equal(value[:, 1], before[key][:, 1])
        reset_optimizer_state(optimizer, weight)
        assert weight not in optimizer.state


# --- cbp ------------------------------------------------------------------------------------------


def test_cbp_replaces_the_lowest_utility_mature_units_and_resets_them():
    seed, decay, rate = 4, 0.9, 0.5
    net = mlp(seed=seed)
    perturb(net)
    x = torch.randn(7, 3, dtype=torch.float64)
    optimizer = trained_adam(net, x)
    cbp = CBP(CBPConfig(replacement_rate=rate, maturity=3, decay=decay))
    cbp.attach({"model": net}, optimizer, seed=seed)

    # Layer 0: units 0-3 mature (age 10 -> 11), units 4 and 5 immature but with the lowest
    # utility of all; layer 1: nothing mature. Expected: round(0.5 * 4) = 2 replaced in layer 0.
    cbp.age["model"][0][:] = [10, 10, 10, 10, 0, 0]  # ages are kept on the host
    cbp.utility["model"][0][:] = torch.tensor([0.3, 0.02, 0.2, 0.01, 0.0, 0.0])
    activity = [h.detach().abs().mean(0) for h in net(x)[1]]
    assert cbp.penalty({"model": net(x)[1]}).item() == 0.0 and cbp.only_coupled_decay()

    # The utility by its formula, computed here: decay * u + (1 - decay) * |h| * sum_k |w_out|.
    out_weight = net.hidden[1].weight.detach()
    utility = decay * cbp.utility["model"][0] + (1 - decay) * activity[0] * out_weight.abs().sum(0)
    ages = torch.tensor([11, 11, 11, 11, 1, 1])
    corrected = utility / (1 - decay ** ages.double())
    mature = torch.arange(4)
    expected_units = mature[corrected[mature].argsort()[:2]].sort().values
    assert not torch.equal(expected_units, torch.tensor([0, 1]))  # utilities, not order, decide

    before, state_before = snapshot(net), optimizer_state(optimizer, net)
    fresh = fresh_draw(net, "cbp", seed)
    metrics = cbp.after_update(lambda: pytest.fail("features_fn used"), pass_end=False)

    assert metrics == {"cbp/replaced": 2.0}
    assert_replaced(net, before, fresh, state_before, optimizer, {0: expected_units})
    replaced = torch.zeros(6, dtype=torch.bool)
    replaced[expected_units] = True
    assert torch.equal(torch.from_numpy(cbp.age["model"][0]), torch.where(replaced, 0, ages))
    torch.testing.assert_close(
        cbp.utility["model"][0], torch.where(replaced, 0.0, utility), rtol=1e-12, atol=0
    )
    assert cbp.age["model"][1].tolist() == [1] * 5


def test_cbp_accumulates_fractional_replacements_and_resets_sgd_momentum():
    net = mlp()
    x = torch.randn(5, 3, dtype=torch.float64)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    optimizer.zero_grad()
    net(x)[0].sum().backward()
    optimizer.step()
    cbp = CBP(CBPConfig(replacement_rate=0.125, maturity=0, decay=0.5))
    cbp.attach({"model": net}, optimizer, seed=0)
    # maturity 0: all 6 + 5 units always eligible; 0.75 and 0.625 due per update in the two
    # layers (exact in binary): whole units [0, 1, 1, 1, 0] and [0, 1, 0, 1, 1].
    calls = []

    def features_fn():  # a fused step never calls penalty: CBP reads the current features
        calls.append(1)
        return {"model": net(x)[1]}

    totals, momentum = [], optimizer.state[net.hidden[0].weight]["momentum_buffer"]
    ever_replaced = torch.zeros(6, dtype=torch.bool)
    for _ in range(5):
        totals.append(cbp.after_update(features_fn, False)["cbp/replaced"])
        ever_replaced |= torch.from_numpy(cbp.age["model"][0] == 0)  # replaced by this update
        assert momentum[ever_replaced].abs().sum() == 0
        assert momentum[~ever_replaced].abs().sum(1).min() > 0
    assert totals == [0.0, 2.0, 3.0, 5.0, 6.0] and len(calls) == 5 and ever_replaced.any()


# --- redo ---------------------------------------------------------------------------------------


def test_redo_reinitialises_exactly_the_dormant_units_every_n_updates():
    seed, tau = 2, 0.1
    net = mlp(seed=seed, hidden=(6, 5), activation="relu")
    perturb(net)
    with torch.no_grad():  # units 1 and 4 of layer 0 nearly silent (dormant, not dead)
        net.hidden[0].weight[[1, 4]] *= 0.01
        net.hidden[0].bias[[1, 4]] = 0.0
    x = torch.randn(64, 3, dtype=torch.float64)
    optimizer = trained_adam(net, x)
    redo = ReDo(ReDoConfig(tau=tau, every=3))
    redo.attach({"model": net}, optimizer, seed=seed)
    features_fn = lambda: {"model": net(x)[1]}  # noqa: E731

    # The dormant units by the formula, computed here: mean|h_i| / mean_j mean|h_j| <= tau.
    with torch.no_grad():
        expected = []
        for h in net(x)[1]:
            activity = h.abs().mean(0)
            expected.append(activity / activity.mean() <= tau)
    assert expected[0][[1, 4]].all() and not expected[0].all()
    for mask, h in zip(expected, net(x)[1], strict=True):
        assert torch.equal(mask, dormant_mask(h, tau))

    before, state_before = snapshot(net), optimizer_state(optimizer, net)
    assert redo.after_update(features_fn, True) == {} and redo.after_update(features_fn, True) == {}
    assert all(torch.equal(v, snapshot(net)[k]) for k, v in before.items())
    fresh = fresh_draw(net, "redo", seed)
    metrics = redo.after_update(features_fn, False)

    dormant = int(sum(mask.sum() for mask in expected))
    assert metrics == {"redo/dormant": dormant / 11, "redo/recycled": float(dormant)}
    units = {i: torch.nonzero(mask).flatten() for i, mask in enumerate(expected)}
    assert_replaced(net, before, fresh, state_before, optimizer, units)


# --- reset --------------------------------------------------------------------------------------


def test_reset_redraws_the_initialisation_and_clears_the_optimizer_state():
    seed = 5
    torch.manual_seed(0)
    nets = {
        "actor": GaussianActor(3, 2, (8, 6), "tanh").double(),
        "critic": Critic(3, (8, 6), "tanh").double(),
    }
    params = [p for net in nets.values() for p in net.parameters()]
    for net in nets.values():
        perturb(net)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    x = torch.randn(9, 3, dtype=torch.float64)

    def step(models, opt):
        opt.zero_grad()
        sum(net(x)[0].square().sum() for net in models.values()).backward()
        opt.step()

    step(nets, optimizer)
    reset = Reset()
    reset.attach(nets, optimizer, seed=seed)
    expected = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(method_stream_seed(seed, "reset"))
        for name, net in nets.items():
            fresh = copy.deepcopy(net)
            fresh.reset_parameters()
            expected |= {f"{name}.{k}": v for k, v in snapshot(fresh).items()}
    rng = torch.get_rng_state()
    assert reset.on_shift() == {"reset/applied": 1.0}
    assert torch.equal(torch.get_rng_state(), rng)  # the run's stream is not advanced

    for name, net in nets.items():
        for key, param in net.named_parameters():
            assert torch.equal(param, expected[f"{name}.{key}"])
    # The initial distribution: orthogonal hidden weights with gain sqrt(2), zero biases/log-std.
    weight = nets["critic"].value.hidden[1].weight
    torch.testing.assert_close(weight @ weight.T, 2 * torch.eye(6, dtype=torch.float64))
    assert nets["actor"].log_std.abs().sum() == 0 and nets["critic"].value.out.bias.item() == 0
    assert all(p not in optimizer.state for p in params)

    # The next step is a fresh Adam's first step from the reset parameters.
    twins = copy.deepcopy(nets)
    fresh_adam = torch.optim.Adam([p for net in twins.values() for p in net.parameters()], lr=1e-2)
    step(nets, optimizer)
    step(twins, fresh_adam)
    for name, net in nets.items():
        for (key, a), b in zip(net.named_parameters(), twins[name].parameters(), strict=True):
            assert torch.equal(a, b), key


# --- spectral -----------------------------------------------------------------------------------


class Stacked(nn.Module):
    """Two 4x3 matrices stored as one (2, 4, 3) parameter, as SAC's twin Q networks are."""

    def __init__(self):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(2, 4, 3, dtype=torch.float64))])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(2, 4, dtype=torch.float64))])


def spectral_reference(nets, strength, target):
    """The penalty from dense singular values (torch.linalg.matrix_norm(W, 2))."""
    total = 0.0
    for net in nets.values():
        for name, param in net.named_parameters():
            if "bias" in name:
                total = total + param.square().sum()
            elif param.ndim >= 2:
                sigma = torch.linalg.matrix_norm(param, 2)
                total = total + (sigma.square() - target).square().sum()
    return strength * total


def test_spectral_penalty_and_gradient_match_dense_singular_values():
    torch.manual_seed(0)
    nets = {"model": mlp(), "twin": Stacked()}
    perturb(nets["model"])
    nets["actor"] = GaussianActor(3, 2, (4,), "tanh").double()
    perturb(
        nets["actor"]
    )  # orthogonal init: equal singular values, where sigma_max has no gradient
    strength, target = 0.3, 2.0
    reg = Spectral(SpectralConfig(strength=strength, target=target, power_iterations=200))
    reg.attach(nets, torch.optim.SGD([p for n in nets.values() for p in n.parameters()], lr=0.1), 0)
    assert "actor.log_std" not in reg.matrices and "actor.log_std" not in reg.biases
    assert "twin.weights.0" in reg.matrices and "twin.biases.0" in reg.biases

    ours = reg.penalty({})
    reference = spectral_reference(nets, strength, target)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-10)
    params = [p for net in nets.values() for p in net.parameters()]
    grads = torch.autograd.grad(ours, params, allow_unused=True)
    expected = torch.autograd.grad(reference, params, allow_unused=True)
    for grad, dense in zip(grads, expected, strict=True):
        if dense is None:
            assert grad is None or grad.abs().sum() == 0  # log-std: untouched
        else:
            torch.testing.assert_close(grad, dense, rtol=1e-6, atol=1e-8)  # u, v to ~1e-8


def test_spectral_one_power_iteration_per_step_follows_sigma_max_as_training_moves_it():
    """The default: vectors converged when the method attaches, then one round per step. After
    many Adam steps (which move the weights, and sigma_max with them), the estimate u^T W v of
    every matrix still equals its dense top singular value."""
    torch.manual_seed(2)
    net = mlp(hidden=(16, 12))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    perturb(net)  # orthogonal init: every singular value equal, no top one to follow
    reg = Spectral(SpectralConfig(strength=0.1, target=4.0))  # power_iterations=1
    reg.attach({"model": net}, optimizer, seed=0)
    x = torch.randn(32, 3, dtype=torch.float64)
    start = {key: float(torch.linalg.matrix_norm(w, 2)) for key, w in reg.matrices.items()}
    for _ in range(200):
        out, _ = net(x)
        loss = (out - 1).square().mean() + reg.penalty({})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, weight in reg.matrices.items():
        dense = float(torch.linalg.matrix_norm(weight.detach(), 2))
        moved = abs(dense - start[key])
        assert moved > 0.05, key  # training did move it
        estimate = float(torch.einsum("i,ij,j->", reg.u[key], weight.detach(), reg.v[key]))
        assert estimate == pytest.approx(dense, rel=1e-3), (key, estimate, dense)


def test_spectral_penalty_is_zero_at_the_target_and_kept_vectors_resume_exactly():
    torch.manual_seed(1)
    net = nn.Linear(5, 4).double()
    with torch.no_grad():
        net.weight *= math.sqrt(2.0) / torch.linalg.matrix_norm(net.weight, 2)
        net.bias.zero_()
    reg = Spectral(SpectralConfig(strength=1.0, target=2.0, power_iterations=1))
    reg.attach({"model": net}, torch.optim.SGD(net.parameters(), lr=0.1), seed=0)
    for _ in range(60):  # one iteration per step, from the kept vectors, converges
        penalty = reg.penalty({})
    assert abs(penalty.item()) < 1e-12
    (grad,) = torch.autograd.grad(reg.penalty({}), [net.weight])
    assert grad.abs().max() < 1e-6

    with torch.no_grad():
        net.weight.mul_(1.5)  # sigma_max^2 = 4.5: (4.5 - 2)^2 = 6.25
    state = roundtrip(reg.state_dict())
    other = Spectral(SpectralConfig(strength=1.0, target=2.0, power_iterations=1))
    other.attach({"model": net}, torch.optim.SGD(net.parameters(), lr=0.1), seed=7)
    other.load_state_dict(state)
    assert other.penalty({}).item() == reg.penalty({}).item() == pytest.approx(6.25, rel=1e-10)


# --- parseval -----------------------------------------------------------------------------------


def dense_anisotropy(h: torch.Tensor) -> torch.Tensor:
    n, m = h.shape
    gram = h.T @ h / n
    return (gram - torch.trace(gram) / m * torch.eye(m, dtype=h.dtype)).square().sum()


def test_parseval_is_zero_for_isotropic_features_and_matches_the_dense_gram():
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    isotropic = 3.0 * math.sqrt(10) * q[:, :4]  # H^T H / n = 9 I
    assert abs(anisotropy(isotropic).item()) < 1e-10
    assert dense_anisotropy(isotropic).item() < 1e-10

    torch.manual_seed(0)
    tall = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)  # n >= m: A itself
    wide = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)  # n < m: via H H^T
    strength = 0.2
    net = mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    reg = Parseval(ParsevalConfig(strength=strength))
    reg.attach({"model": net}, optimizer, seed=0)
    ours = reg.penalty({"a": [tall, wide], "b": [wide]})
    reference = strength * (dense_anisotropy(tall) + 2 * dense_anisotropy(wide))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12) and ours.item() > 0
    ours_grads = torch.autograd.grad(ours, [tall, wide])
    dense_grads = torch.autograd.grad(reference, [tall, wide])
    for ours_grad, dense_grad in zip(ours_grads, dense_grads, strict=True):
        torch.testing.assert_close(ours_grad, dense_grad, rtol=1e-10, atol=1e-12)

    last = Parseval(ParsevalConfig(strength=strength, last_layer_only=True))
    last.attach({"model": net}, optimizer, seed=0)
    assert last.penalty({"a": [tall, wide]}).item() == pytest.approx(
        strength * dense_anisotropy(wide).item(), rel=1e-12
    )


# --- layernorm-l2 -------------------------------------------------------------------------------


def test_layernorm_l2_builds_layernorm_nets_and_decays_every_parameter():
    reg = build_regularizer(Flags(regularizer="layernorm-l2"))
    assert reg.network_options(layer_norm=False) == {"layer_norm": True}
    assert build_regularizer(Flags(regularizer="l2")).network_options(layer_norm=False) == {
        "layer_norm": False
    }
    assert reg.coupled_decay() == 1e-5 and reg.only_coupled_decay()
    # A supervised run cannot take the fused step (it has no LayerNorm): it says so.
    args = dataclasses.replace(supervised.Args(), regularizer="layernorm-l2")
    assert "LayerNorm" in supervised.fused_update_blocker(args, reg)

    plain = MLP(3, (4,), 2, "relu")
    with pytest.raises(ValueError, match="network 'model' \\(MLP\\) has no LayerNorm"):
        reg.attach({"model": plain}, torch.optim.SGD(plain.parameters(), lr=0.1), seed=0)
    net = MLP(3, (4,), 2, "relu", **reg.network_options(layer_norm=False)).double()
    assert isinstance(net.norms[0], nn.LayerNorm)
    reg.attach({"model": net}, torch.optim.SGD(net.parameters(), lr=0.1), seed=0)
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    reg.before_step()
    assert torch.equal(net.norms[0].weight.grad, 1e-5 * net.norms[0].weight.detach())


# --- every method: an exact resume, and end to end -----------------------------------------------

ACTING = dict(  # settings under which each method acts within a few updates
    cbp=CBPConfig(replacement_rate=0.2, maturity=1),
    redo=ReDoConfig(tau=0.5, every=2),
)


def baseline_flags(name: str, **extra) -> Flags:
    flags = Flags(regularizer=name, **extra)
    for field_name, config in ACTING.items():
        if field_name in METHOD_FLAGS[name]:  # another method's flags would be refused
            setattr(flags, field_name, config)
    return flags


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_resumes_from_its_state_dict_exactly(name):
    x = torch.randn(16, 3, dtype=torch.float64)

    def build(seed):
        reg = build_regularizer(baseline_flags(name))
        torch.manual_seed(seed)
        net = MLP(3, (6, 5), 2, "relu", **reg.network_options(layer_norm=False)).double()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        reg.attach({"model": net}, optimizer, seed=3)
        return net, optimizer, reg

    def steps(net, optimizer, reg, count):
        for step in range(count):
            out, feats = net(x)
            loss = out.square().mean() + reg.penalty({"model": feats})
            optimizer.zero_grad()
            loss.backward()
            reg.before_step()
            optimizer.step()
            reg.after_update(lambda: {"model": net(x)[1]}, pass_end=step % 2 == 1)
            if step == 1:
                reg.on_shift()

    net, optimizer, reg = build(seed=0)
    steps(net, optimizer, reg, 4)
    checkpoint = roundtrip(
        {"net": net.state_dict(), "opt": optimizer.state_dict(), "reg": reg.state_dict()}
    )
    resumed = build(seed=9)
    resumed[0].load_state_dict(checkpoint["net"])
    resumed[1].load_state_dict(checkpoint["opt"])
    resumed[2].load_state_dict(checkpoint["reg"])
    steps(net, optimizer, reg, 4)
    steps(*resumed, 4)
    resumed_state = resumed[0].state_dict().values()
    for (key, value), other in zip(net.state_dict().items(), resumed_state, strict=True):
        assert torch.equal(value, other), key


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_runs_in_ppo_across_a_shift(tmp_path, name):
    args = dataclasses.replace(
        ppo.Args(),
        **vars(baseline_flags(name)) | {"seed": 1},
        env_id="Pendulum-v1",
        total_timesteps=192,
        num_steps=64,
        num_minibatches=2,
        update_epochs=2,
        hidden_sizes=(16,),
        shift=("obs-noise",),
        shift_every=64,
        diagnostics=("none",),
        checkpoint_every=0,
        runs_dir=str(tmp_path),
    )
    run_dir = ppo.train(args)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    losses = [m for m in metrics if "losses/value_loss" in m]
    assert len(losses) == 3 and all(math.isfinite(m["losses/value_loss"]) for m in losses)
    acted = {
        "cbp": "regularizer/cbp/replaced",
        "redo": "regularizer/redo/recycled",
        "reset": "regularizer/reset/applied",
    }
    if name in acted:
        assert any(m.get(acted[name], 0) > 0 for m in metrics), f"{name} never acted"
    if name in ("spectral", "parseval"):
        assert all(m["regularizer/penalty"] > 0 for m in losses)
    checkpoint = load_checkpoint(run_dir)
    assert ("mean.norms.0.weight" in checkpoint["actor"]) == (name == "layernorm-l2")


@pytest.mark.parametrize(
    ("name", "optimizer", "update"),
    [
        ("cbp", "sgd", "fused"),  # no penalty: the fused step, activity from features_fn
        ("cbp", "adam", "autograd"),  # activity from the penalty's features; Adam state reset
        ("redo", "sgd", "fused"),
        ("layernorm-l2", "sgd", "autograd"),
        ("spectral", "sgd", "autograd"),
        ("reset", "sgd", "fused"),
        ("parseval", "sgd", "autograd"),
    ],
)
def test_every_baseline_runs_in_the_supervised_stream(tmp_path, name, optimizer, update):
    args = dataclasses.replace(
        supervised.Args(),
        **vars(baseline_flags(name))
        | {"seed": 1}
        | ({"redo": ReDoConfig(tau=0.5, every=20)} if name == "redo" else {}),
        dataset="digits",
        num_tasks=2,
        examples_per_task=100,
        hidden_sizes=(16,),
        batch_size=4,
        optimizer=optimizer,
        learning_rate=0.01,
        runs_dir=str(tmp_path),
        checkpoint_every=0,
        torch_threads=1,
        log_every=50,
        diagnostics=("none",),
    )
    run_dir = supervised.train(args)
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["update"] for e in events if e["event"] == "stream"] == [update]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    tasks = [m for m in metrics if "task/train_loss" in m]
    assert [m["charts/task"] for m in tasks] == [0, 1]
    assert all(math.isfinite(m["task/train_loss"]) for m in tasks)
    acted = {"cbp": "regularizer/cbp/replaced", "redo": "regularizer/redo/recycled"}
    if name in acted:
        assert tasks[-1][acted[name]] > 0, f"{name} never acted"
    if name == "reset":
        assert any(m.get("regularizer/reset/applied") == 1.0 for m in metrics)


# --- flags ----------------------------------------------------------------------------------------


def test_the_baselines_flags_are_flat_on_the_command_line():
    args = tyro.cli(
        Flags,
        args=[
            "--regularizer", "cbp", "--cbp.replacement-rate", "1e-4", "--cbp.maturity", "10000",
            "--redo.tau", "0.025", "--layernorm-l2.weight-decay", "1e-4",
            "--spectral.power-iterations", "1", "--parseval.last-layer-only",
        ],
    )  # fmt: skip
    assert (args.cbp.replacement_rate, args.cbp.maturity, args.redo.tau) == (1e-4, 10000, 0.025)
    assert args.layernorm_l2.weight_decay == 1e-4 and args.spectral.power_iterations == 1
    assert args.parseval.last_layer_only
    assert build_regularizer(args).config is args.cbp


@pytest.mark.parametrize(
    ("group", "key", "value", "message"),
    [
        ("cbp", "replacement_rate", 1.5, "--cbp.replacement-rate must be in [0, 1], got 1.5"),
        ("cbp", "maturity", -1, "--cbp.maturity must be >= 0, got -1"),
        ("cbp", "decay", 1.0, "--cbp.decay must be in [0, 1), got 1.0"),
        ("redo", "tau", -0.1, "--redo.tau must be >= 0, got -0.1"),
        ("redo", "every", 0, "--redo.every must be >= 1, got 0"),
        (
            "layernorm_l2",
            "weight_decay",
            -1.0,
            "--layernorm-l2.weight-decay must be >= 0, got -1.0",
        ),
        ("spectral", "strength", float("nan"), "--spectral.strength must be >= 0, got nan"),
        ("spectral", "target", -2.0, "--spectral.target must be >= 0, got -2.0"),
        ("spectral", "power_iterations", 0, "--spectral.power-iterations must be >= 1, got 0"),
        ("parseval", "strength", -1.0, "--parseval.strength must be >= 0, got -1.0"),
    ],
)
def test_bad_baseline_flags_raise_naming_the_flag(group, key, value, message):
    flags = Flags(regularizer="none")
    setattr(getattr(flags, group), key, value)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_regularizer(flags)
