"""The plasticity probe and optimization readiness (diagnostics/plasticity.py), their place in the
diagnostics hook, the supervised stream and PPO, and the correlation table of the plot command.

Readiness is checked against per-example gradients built densely in float64 (torch.func.vmap
of a per-sample loss, or the full Jacobian of the outputs); the probe against training an
explicit deep copy of the network and its optimizer; "the run is untouched" by continuing
training after a measurement and comparing bit for bit with a run never measured.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from agents import ppo, supervised
from agents.networks import MLP, Critic, GaussianActor
from agents.records import RunLogger
from diagnostics import Diagnostics, DiagnosticsConfig, DiagnosticsFlags, LossClosure, Probe
from diagnostics.plasticity import (
    optimization_readiness,
    pearson,
    per_example_squared_norms,
    plasticity_probe,
    readiness_from_norms,
    spearman,
)
from diagnostics.plot import correlation_table, main, plot_run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# --- readiness against dense per-example gradients ----------------------------------------------


def mlp_case(loss: str, layer_norm: bool, n: int = 24):
    """A tiny MLP closure and its per-sample loss (for the vmap reference)."""
    torch.manual_seed(0)
    net = MLP(5, (7, 6), 3, "tanh", "torch-default", layer_norm=layer_norm)
    if layer_norm:  # gains and biases away from their 1 / 0 initialisation
        with torch.no_grad():
            for norm in net.norms:
                norm.weight.add_(0.3 * torch.randn_like(norm.weight))
                norm.bias.add_(0.3 * torch.randn_like(norm.bias))
    x = torch.randn(n, 5)
    y = torch.randn(n, 3) if loss == "mse" else torch.randint(0, 3, (n,))

    def loss_fn(out, target):
        return F.mse_loss(out, target) if loss == "mse" else F.cross_entropy(out, target)

    closure = LossClosure(
        dict(net.named_parameters()),
        lambda p: functional_call(net, p, (x,))[0],
        lambda out: loss_fn(out, y),
    )

    def per_sample(params, xi, yi):
        return loss_fn(functional_call(net, params, (xi[None],))[0], yi[None])

    params = {k: v.detach() for k, v in net.named_parameters()}
    grads = vmap(grad(per_sample), in_dims=(None, 0, 0))(params, x, y)
    return closure, torch.cat([g.reshape(n, -1) for g in grads.values()], 1)


def ppo_case(net: str, n: int = 24):
    """PPO's actor or critic closure exactly as agents/ppo.py builds it, on a tiny actor and
    critic with a policy far from the clip range's centre."""
    torch.manual_seed(1)
    actor, critic = GaussianActor(4, 2, (8,), "tanh"), Critic(4, (8,), "tanh")
    with torch.no_grad():
        actor.log_std.add_(0.3 * torch.randn(2))
        actor.mean.out.weight.mul_(50)
        obs = torch.randn(n, 4)
        mean = actor(obs)[0]
        actions = mean + actor.log_std.exp() * torch.randn_like(mean)
        logprobs = ppo.gaussian_log_prob(actions, 1.1 * mean, actor.log_std.expand_as(mean))
        values = critic(obs)[0]
    data = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
            "advantages": torch.randn(n), "returns": values + torch.randn(n)}  # fmt: skip
    args = SimpleNamespace(
        norm_adv=True,
        adv_norm_scope="minibatch",
        clip_coef=0.2,
        ent_coef=0.01,
        clip_vloss=True,
        vf_coef=0.5,
    )
    return ppo.loss_closures(actor, critic, data, args, n)[net]


def weight_outside_a_linear_layer_case(n: int = 24):
    """A weight used by a linear layer and also elementwise: the fast path's per-sample split
    does not sum to its gradient, so it must take the batched fallback."""
    torch.manual_seed(2)
    params = {"w": torch.randn(6, 5), "b": torch.randn(6), "v": torch.randn(2, 6)}
    x, y = torch.randn(n, 5), torch.randn(n, 2)

    def output_fn(p):
        hidden = torch.tanh(F.linear(x, p["w"], p["b"]) + x[:, :1] * p["w"][:, 0])
        return F.linear(hidden, p["v"])

    return LossClosure(params, output_fn, lambda out: ((out - y) ** 2).mean())


def jacobian_reference(closure: LossClosure) -> torch.Tensor:
    """g_i = n J_i^T dL/d out_i from the dense Jacobian, (n, parameters)."""
    names = list(closure.params)
    shapes = [closure.params[k].shape for k in names]
    theta = torch.cat([closure.params[k].detach().reshape(-1) for k in names])

    def outputs_of(vector):
        pieces = torch.split(vector, [math.prod(s) for s in shapes])
        params = {k: piece.view(s) for k, piece, s in zip(names, pieces, shapes, strict=True)}
        return closure.output_fn(params)

    outputs = outputs_of(theta).detach().requires_grad_(True)
    n = outputs.shape[0]
    (u,) = torch.autograd.grad(closure.loss_fn(outputs), outputs)
    J = torch.autograd.functional.jacobian(lambda v: outputs_of(v).reshape(n, -1), theta)
    return n * torch.einsum("ncp,nc->np", J, u.reshape(n, -1))


CASES = {
    "mlp-mse": (lambda: mlp_case("mse", layer_norm=False), []),
    "mlp-layernorm-cross-entropy": (lambda: mlp_case("ce", layer_norm=True), []),
    "ppo-actor": (lambda: (ppo_case("actor"), None), ["log_std"]),
    "ppo-critic": (lambda: (ppo_case("critic"), None), []),
    "weight-outside-linear": (lambda: (weight_outside_a_linear_layer_case(), None), ["w"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_example_gradient_norms_match_dense_per_example_gradients(float64, case):
    build, expected_fallback = CASES[case]
    closure, vmapped = build()
    dense = jacobian_reference(closure)
    if vmapped is not None:  # the per-sample loss itself, no assumption about the closure
        torch.testing.assert_close(dense, vmapped, rtol=1e-10, atol=1e-12)
    # a small chunk bound: the fallback's batched backward passes take several chunks
    full, squared, fallback = per_example_squared_norms(closure, chunk_elements=100)
    assert fallback == expected_fallback  # everything else took the one-backward fast path
    torch.testing.assert_close(squared, (dense**2).sum(1), rtol=1e-10, atol=1e-12)
    flat = torch.cat([full[k].reshape(-1) for k in closure.params])
    torch.testing.assert_close(flat, dense.mean(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["mlp-layernorm-cross-entropy", "ppo-actor"])
def test_readiness_is_strength_and_pairwise_agreement_of_per_example_gradients(float64, case):
    closure, _ = CASES[case][0]()
    G = jacobian_reference(closure)
    n = len(G)
    K = G @ G.T  # K_ij = <g_i, g_j>
    pairwise = (K.sum() - K.trace()) / (n * (n - 1))
    mean_squared = K.trace() / n
    result = optimization_readiness(closure)
    strength = float(G.mean(0).norm())
    assert result.samples == n
    assert result.strength == pytest.approx(strength, rel=1e-10)
    assert result.reliability == pytest.approx(float(pairwise / mean_squared), rel=1e-8)
    assert result.score == pytest.approx(strength**2 * float(pairwise / mean_squared), rel=1e-8)
    assert result.example_norm == pytest.approx(math.sqrt(float(mean_squared)), rel=1e-10)


def test_reliability_is_one_for_identical_examples_and_minus_one_for_opposite_ones(float64):
    w = torch.tensor([[0.5, -1.0, 2.0]])

    def closure(x, y):
        return LossClosure({"w": w}, lambda p: F.linear(x, p["w"]), lambda o: ((o - y) ** 2).mean())

    same = optimization_readiness(closure(torch.ones(5, 3), torch.zeros(5, 1)))
    assert same.reliability == pytest.approx(1.0) and same.score == pytest.approx(same.strength**2)
    # residuals +1 and -1 on the same input: g_2 = -g_1, the mean gradient vanishes
    x = torch.ones(2, 3)
    opposite = optimization_readiness(closure(x, (x @ w.T) + torch.tensor([[-1.0], [1.0]])))
    assert opposite.strength == pytest.approx(0.0, abs=1e-12)
    assert opposite.reliability == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        readiness_from_norms(1.0, torch.ones(1))


# --- the plasticity probe -----------------------------------------------------------------------


def regression(n: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return x, torch.sin(x @ torch.randn(4, 2, generator=generator))


def closure_of(net: MLP, x, y) -> LossClosure:
    return LossClosure(
        dict(net.named_parameters()),
        lambda p: functional_call(net, p, (x,))[0],
        lambda out: ((out - y) ** 2).mean(),
    )


def trained(optimizer_name: str, steps: int = 3):
    """A tiny MLP and its optimizer after a few real steps (so the optimizer has state)."""
    torch.manual_seed(0)
    net = MLP(4, (16,), 2, "tanh")
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.9))
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = regression(seed=1)
    for _ in range(steps):
        optimizer.zero_grad()
        ((net(x)[0] - y) ** 2).mean().backward()
        optimizer.step()
    return net, optimizer


@pytest.mark.parametrize("optimizer_name", ["adam", "sgd-momentum"])
def test_the_probe_continues_the_learners_optimizer_on_copies(float64, optimizer_name):
    net, optimizer = trained(optimizer_name)
    x, y = regression(seed=2)  # the "new task"
    result = plasticity_probe(closure_of(net, x, y), [optimizer], steps=6)
    # the same training on an explicit deep copy of the network and its optimizer
    net_copy, optimizer_copy = copy.deepcopy((net, optimizer))
    expected = []
    for _ in range(6):
        loss = ((net_copy(x)[0] - y) ** 2).mean()
        expected.append(float(loss.detach()))
        optimizer_copy.zero_grad()
        loss.backward()
        optimizer_copy.step()
    expected.append(float(((net_copy(x)[0] - y) ** 2).mean().detach()))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-12)
    # and the state matters: a fresh optimizer of the same kind takes another path
    fresh = type(optimizer)(net.parameters(), **optimizer.defaults)
    other = plasticity_probe(closure_of(net, x, y), [fresh], steps=6)
    assert not np.allclose(other.losses[2:], result.losses[2:], rtol=1e-6)


def make_hook(tmp_path: Path, measures=("probe", "readiness"), optimizers=True, **config):
    net, optimizer = trained("adam")
    flags = DiagnosticsFlags(diagnostics=measures, diag=DiagnosticsConfig(**config))
    logger = RunLogger(tmp_path / "run")
    hook = Diagnostics(flags, logger, seed=0)
    hook.attach({"model": net}, [optimizer] if optimizers else None)
    return hook, logger, net, optimizer


def probe_of(net: MLP, seed: int) -> Probe:
    x, y = regression(seed=seed)
    return Probe(lambda n: {"model": closure_of(net, x[:n], y[:n])},
                 lambda n: {"model": net(x[:n])[1]}, len(x))  # fmt: skip


def test_the_probe_lowers_a_learnable_loss_at_the_init_and_leaves_the_run_untouched(tmp_path):
    hook, logger, net, optimizer = make_hook(tmp_path, probe_steps=50)
    twin_net, twin_optimizer = copy.deepcopy((net, optimizer))  # never measured
    gradients = [p.grad.clone() for p in net.parameters()]  # the run's own, from training
    torch.manual_seed(123)
    rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    scalars = hook.boundary(7, {"end": probe_of(net, 1), "init": probe_of(net, 2)}, 0, 1)
    logger.close()
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1])
    # on a learnable task the probe's copy learns: the loss falls by a good share
    assert scalars["shift/init/model/probe/drop"] > 0
    assert scalars["shift/init/model/probe/relative_drop"] > 0.3
    assert (
        scalars["shift/init/model/probe/loss_after"] < scalars["shift/init/model/probe/loss_before"]
    )
    assert not any(key.startswith("shift/end/model/probe") for key in scalars)  # init only
    assert "shift/end/model/readiness/score" in scalars  # readiness at both phases
    losses = np.load(tmp_path / "run" / "diagnostics" / "step_0000000007.npz")[
        "init/model/probe/losses"
    ]
    assert losses.shape == (51,) and losses[0] == pytest.approx(
        scalars["shift/init/model/probe/loss_before"]
    )
    # the run goes on exactly as the twin that was never measured
    x, y = regression(seed=3)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), gradients, strict=True))
    for model, opt in ((net, optimizer), (twin_net, twin_optimizer)):
        torch.manual_seed(5)
        for _ in range(3):
            noise = 0.1 * torch.randn_like(y)
            opt.zero_grad()
            ((model(x)[0] - y - noise) ** 2).mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin_net.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), twin_optimizer.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_probe_without_the_learners_optimizer_is_skipped_with_the_reason(tmp_path):
    hook, logger, net, _ = make_hook(tmp_path, optimizers=False, probe_steps=3)
    scalars = hook.boundary(1, {"init": probe_of(net, 2)}, None, 0)
    periodic = hook.periodic(2, probe_of(net, 2))
    logger.close()
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    (skipped,) = [e for e in events if e["event"] == "diagnostic_skipped"]
    assert skipped["measure"] == "init/model/probe" and "Diagnostics.attach" in skipped["error"]
    assert "shift/init/model/readiness/strength" in scalars
    # readiness is cheap enough to be a periodic measure too (--diag.every); the probe is not
    assert 0 < periodic["diag/model/readiness/strength"]
    assert not any("probe" in key for key in periodic)


def test_a_bad_probe_steps_flag_gets_one_clear_error():
    args = dataclasses.replace(supervised.Args(), diag=DiagnosticsConfig(probe_steps=0))
    with pytest.raises(Exception, match="--diag.probe-steps"):
        supervised.check_args(args)


# --- the learners ---------------------------------------------------------------------------------


def supervised_args(tmp_path: Path, measures) -> supervised.Args:
    # only the settings the measures read (any other --diag.* would be refused as unused)
    diag = DiagnosticsConfig()
    if measures != ("none",):
        diag = DiagnosticsConfig(batch_size=100, probe_steps=5)
    if {"hessian", "ggn"} & set(measures):
        diag = dataclasses.replace(diag, lanczos_order=10, top_k=3)
    return dataclasses.replace(
        supervised.Args(), dataset="digits", num_tasks=2, examples_per_task=100,
        hidden_sizes=(16,), optimizer="adam", learning_rate=1e-3, runs_dir=str(tmp_path),
        checkpoint_every=0, torch_threads=1, diagnostics=measures, diag=diag,
    )  # fmt: skip


def test_supervised_run_measures_probe_and_readiness_and_trains_as_without_them(tmp_path):
    measured = supervised.train(
        supervised_args(tmp_path / "on", ("probe", "readiness", "hessian", "features"))
    )
    metrics = read_jsonl(measured / "metrics.jsonl")
    for step in (0, 100):  # the init of task 0 and of task 1
        (row,) = [m for m in metrics if m["step"] == step and "shift/init/seconds" in m]
        assert row["shift/init/model/probe/drop"] > 0  # Adam on a fresh task's batch
        assert math.isfinite(row["shift/init/model/readiness/score"])
        assert 0 <= row["shift/init/model/hessian/eps_rank@0.1"] <= 1
        assert "shift/init/model/features/erank" in row
    assert any("shift/end/model/readiness/reliability" in m for m in metrics)
    assert not any(
        e["event"] == "diagnostic_skipped" for e in read_jsonl(measured / "events.jsonl")
    )
    plain = supervised.train(supervised_args(tmp_path / "off", ("none",)))
    on, off = (
        torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
        for run in (measured, plain)
    )
    for key, value in off["model"].items():
        assert torch.equal(value, on["model"][key]), key
    for a, b in zip(
        off["optimizer"]["state"].values(), on["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(off["rng"]["torch"], on["rng"]["torch"])


def test_ppo_run_measures_probe_and_readiness_and_trains_as_without_them(tmp_path):
    finals, runs = [], []
    for measures in (("none",), ("probe", "readiness")):
        args = dataclasses.replace(
            ppo.Args(), env_id="HalfCheetah-v5", total_timesteps=1024, num_steps=256,
            num_minibatches=2, update_epochs=1, hidden_sizes=(8,), shift=("friction",),
            shift_at=(512,), runs_dir=str(tmp_path / measures[0]), checkpoint_every=0,
            diagnostics=measures,
            diag=DiagnosticsConfig(**({} if measures == ("none",) else dict(batch_size=256, probe_steps=5))),
        )  # fmt: skip
        runs.append(ppo.train(args))
        finals.append(torch.load(runs[-1] / "checkpoints" / "latest.pt", weights_only=False))
    off, on = finals
    for net in ("actor", "critic"):
        for key, value in off[net].items():
            assert torch.equal(value, on[net][key]), f"{net}.{key} differs"
    for a, b in zip(
        off["optimizer"]["state"].values(), on["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(off["rng"]["torch"], on["rng"]["torch"])
    at_shift = [
        m
        for m in read_jsonl(runs[1] / "metrics.jsonl")
        if m["step"] == 512 and "shift/init/seconds" in m
    ]
    (row,) = at_shift
    for net in ("actor", "critic"):
        assert math.isfinite(row[f"shift/init/{net}/probe/drop"])
        assert 0 < row[f"shift/init/{net}/readiness/strength"]
        assert -1 <= row[f"shift/end/{net}/readiness/reliability"] <= 1
    assert row["shift/init/critic/probe/drop"] > 0  # Adam steps on the value loss lower it


# --- the correlation table ------------------------------------------------------------------------


def write_probe_run(run_dir: Path) -> dict[str, np.ndarray]:
    """A run with 7 boundaries whose probe drops are known functions of made-up measures."""
    rng = np.random.default_rng(0)
    drops = np.array([0.9, 0.7, 0.75, 0.4, 0.3, 0.35, 0.1])
    series = {
        "score": np.exp(3 * drops),  # monotone, not linear: Spearman 1, Pearson < 1
        "weight_norm": 10 - 5 * drops + rng.normal(0, 0.01, 7),  # Spearman -1
        "eps_rank": np.array([0.5, 0.4, 0.4, 0.3, 0.3, 0.2, 0.2]),  # ties
        "noise": rng.normal(0, 1, 7),
    }
    (run_dir / "diagnostics").mkdir(parents=True)
    rows = []
    for i, step in enumerate(range(0, 7000, 1000)):
        row = {
            "step": step,
            "shift/init/model/probe/drop": drops[i],
            "shift/init/model/probe/relative_drop": drops[i] / 2,
            "shift/init/model/readiness/score": series["score"][i],
            "shift/init/model/weight_norm": series["weight_norm"][i],
            "shift/init/model/hessian/eps_rank@0.1": series["eps_rank"][i],
            "shift/end/model/readiness/strength": series["noise"][i],
            "shift/init/model/features/dormant": 0.0,  # constant: undefined correlation
            "shift/init/model/unrelated/thing": 1.0 * i,  # not a candidate predictor
        }
        if i == 3:
            del row["shift/end/model/readiness/strength"]  # not measured at one boundary
        rows.append(row)
        rows.append({"step": step, "charts/online_accuracy": 0.5})  # another row at the step
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"drop": drops} | series


def test_the_correlation_table_ranks_predictors_of_the_probe(tmp_path, capsys):
    series = write_probe_run(tmp_path / "run")
    table = correlation_table(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    by_name = {entry["predictor"]: entry for entry in table}
    assert set(by_name) == {"init/readiness/score", "init/weight_norm", "init/hessian/eps_rank@0.1",
                            "end/readiness/strength", "init/features/dormant"}  # fmt: skip
    drop = series["drop"]
    score = by_name["init/readiness/score"]
    assert score["n"] == 7 and score["spearman_drop"] == pytest.approx(1.0)
    assert score["pearson_drop"] == pytest.approx(np.corrcoef(series["score"], drop)[0, 1])
    assert score["pearson_drop"] < 0.99
    assert score["spearman_relative_drop"] == pytest.approx(1.0)
    assert by_name["init/weight_norm"]["spearman_drop"] == pytest.approx(-1.0)
    assert by_name["end/readiness/strength"]["n"] == 6
    assert math.isnan(by_name["init/features/dormant"]["spearman_drop"])
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.spearmanr(series["eps_rank"], drop).statistic  # with ties
    assert by_name["init/hessian/eps_rank@0.1"]["spearman_drop"] == pytest.approx(expected)
    noise = np.delete(series["noise"], 3), np.delete(drop, 3)
    assert spearman(*noise) == pytest.approx(scipy_stats.spearmanr(*noise).statistic)
    assert by_name["end/readiness/strength"]["spearman_drop"] == pytest.approx(spearman(*noise))
    # strongest first, undefined last
    strengths = [abs(entry["spearman_drop"]) for entry in table[:-1]]
    assert (
        strengths == sorted(strengths, reverse=True)
        and table[-1] is by_name["init/features/dormant"]
    )
    assert math.isnan(pearson([1.0, 2.0], [3.0, 4.0]))  # too few points to say anything

    # the plot command writes the table beside the figures and prints it
    main([str(tmp_path / "run"), "--dpi", "30"])
    printed = capsys.readouterr().out
    plots = tmp_path / "run" / "plots"
    assert str(plots / "plasticity_correlations.md") in printed
    assert "| model | init/readiness/score | 7 | +1.000 |" in printed
    csv = (plots / "plasticity_correlations.csv").read_text().splitlines()
    assert csv[0].startswith("net,predictor,n,spearman_drop") and len(csv) == 1 + len(table)
    assert (plots / "plasticity_correlations.md").read_text() in printed
    # plot_run returns figures only (the trainer sends them to W&B as images)
    assert all(
        path.suffix == ".png" for path in plot_run(tmp_path / "run", tmp_path / "out", dpi=30)
    )
    assert (tmp_path / "out" / "plasticity_correlations.csv").exists()


def test_the_correlation_table_reaches_wandb(tmp_path, monkeypatch):
    """With --track (offline here) the end of a run sends the probe-vs-predictors table to W&B
    as a wandb.Table, the same rows as plots/plasticity_correlations.csv."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = dataclasses.replace(
        supervised_args(tmp_path, ("probe", "readiness", "features")), num_tasks=3, track=True
    )
    run_dir = supervised.train(args)
    csv = (run_dir / "plots" / "plasticity_correlations.csv").read_text().splitlines()
    (table_file,) = (run_dir / "wandb").rglob("plasticity_correlations*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == csv[0].split(",")
    assert [[str(cell) for cell in row] for row in table["data"]] == [
        line.split(",") for line in csv[1:]
    ]
