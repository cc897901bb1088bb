"""The diagnostics hook: what it writes, that failures are skipped, that training is untouched,
and its use in a real PPO run across shifts (files, metrics, plots, bit-identical training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from agents import ppo
from agents.networks import MLP
from agents.records import RunLogger
from diagnostics import Diagnostics, DiagnosticsConfig, DiagnosticsFlags, LossClosure, Probe
from diagnostics.plot import plot_run
from validation import ConfigError


def regression_probe(net: MLP, n_total: int = 64, nan: bool = False) -> Probe:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_total, 4, generator=generator)
    y = torch.randn(n_total, 2, generator=generator)
    if nan:
        y[0, 0] = float("nan")

    def closures(n: int) -> dict[str, LossClosure]:
        params = dict(net.named_parameters())
        return {
            "model": LossClosure(
                params,
                lambda p: functional_call(net, p, (x[:n],))[0],
                lambda out: ((out - y[:n]) ** 2).mean(),
            )
        }

    return Probe(closures=closures, features=lambda n: {"model": net(x[:n])[1]}, size=n_total)


def make_hook(tmp_path: Path, **config) -> tuple[Diagnostics, RunLogger, MLP]:
    torch.manual_seed(0)
    net = MLP(4, (16, 16), 2, activation="relu")
    flags = DiagnosticsFlags(diag=DiagnosticsConfig(lanczos_order=30, top_k=5, **config))
    logger = RunLogger(tmp_path / "run")
    hook = Diagnostics(flags, logger, seed=0)
    hook.attach({"model": net})
    return hook, logger, net


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_boundary_writes_spectra_and_scalars(tmp_path):
    hook, logger, net = make_hook(tmp_path, gram_batch=8)
    scalars = hook.boundary(
        100, {"end": regression_probe(net), "init": regression_probe(net)}, 0, 1
    )
    logger.close()
    archive = np.load(tmp_path / "run" / "diagnostics" / "step_0000000100.npz")
    assert int(archive["step"]) == 100 and int(archive["task_end"]) == 0
    assert int(archive["task_init"]) == 1
    for phase in ("end", "init"):
        for kind in ("hessian", "ggn"):
            values = archive[f"{phase}/model/{kind}/ritz_values"]
            weights = archive[f"{phase}/model/{kind}/ritz_weights"]
            assert values.shape == weights.shape == (1, 30)
            assert np.nansum(weights) == pytest.approx(1.0)
            assert archive[f"{phase}/model/{kind}/density"].shape == (10_000,)
            # the GGN of a squared loss is PSD, the Hessian of a ReLU net need not be
            assert scalars[f"shift/{phase}/model/ggn/lambda_min"] > -1e-4
            for eps in (0.02, 0.1):
                assert 0 <= scalars[f"shift/{phase}/model/{kind}/eps_rank@{eps:g}"] <= 1
        assert archive[f"{phase}/model/kfac/layer0/A"].shape == (5,)  # 4 inputs + bias
        assert archive[f"{phase}/model/gram/eigenvalues"].shape == (16,)  # 8 samples x 2
        assert scalars[f"shift/{phase}/model/gram/ggn_gap"] < 1e-3
        assert archive[f"{phase}/model/features/layer1/singular_values"].shape == (16,)
        assert 1 <= scalars[f"shift/{phase}/model/features/erank"] <= 16
        assert scalars[f"shift/{phase}/model/grad_norm"] > 0
        assert scalars[f"shift/{phase}/model/distance_from_init"] == 0.0
    # the same scalars are in the run's metrics file
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert logged[-1]["step"] == 100
    assert logged[-1]["shift/init/model/hessian/eps_rank@0.1"] == pytest.approx(
        scalars["shift/init/model/hessian/eps_rank@0.1"]
    )


def test_a_failing_measure_is_logged_and_skipped(tmp_path):
    hook, logger, net = make_hook(tmp_path)
    scalars = hook.boundary(5, {"init": regression_probe(net, nan=True)}, None, 0)

    def broken(n: int):
        raise RuntimeError("out of memory (simulated)")

    hook.boundary(6, {"init": Probe(broken, regression_probe(net).features, 64)}, None, 0)
    logger.close()
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    skipped = {e["measure"]: e["error"] for e in events if e["event"] == "diagnostic_skipped"}
    assert "non-finite" in skipped["init/model/hessian"]
    assert "out of memory (simulated)" in skipped["init/closures"]
    # the measures that could run did
    assert "shift/init/model/features/erank" in scalars


def test_diagnostics_leave_parameters_gradients_and_random_streams_untouched(tmp_path):
    hook, logger, net = make_hook(tmp_path, every=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    hook.boundary(1, {"end": regression_probe(net), "init": regression_probe(net)}, 0, 1)
    hook.periodic(2, regression_probe(net))
    logger.close()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()


def test_bad_diagnostics_flags_get_one_clear_error():
    args = dataclasses.replace(ppo.Args(), diag=DiagnosticsConfig(lanczos_order=0))
    with pytest.raises(ConfigError, match="--diag.lanczos-order"):
        ppo.check_args(args)
    args = dataclasses.replace(ppo.Args(), diagnostics=("none", "hessian"))
    with pytest.raises(ConfigError, match="--diagnostics none"):
        ppo.check_args(args)


def tiny_ppo_args(tmp_path: Path, **overrides) -> ppo.Args:
    base = dict(
        env_id="HalfCheetah-v5",
        total_timesteps=2048,
        num_steps=512,
        num_minibatches=4,
        update_epochs=2,
        hidden_sizes=(16,),
        shift=("friction",),
        shift_at=(1024 + 100,),
        runs_dir=str(tmp_path),
        checkpoint_every=0,
        diag=DiagnosticsConfig(batch_size=512, lanczos_order=20, top_k=3, gram_batch=8, every=2),
    )
    base.update(overrides)
    return dataclasses.replace(ppo.Args(), **base)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    return ppo.train(tiny_ppo_args(tmp_path_factory.mktemp("runs")))


def test_ppo_measures_actor_and_critic_at_run_start_every_shift_and_run_end(ppo_run):
    files = sorted((ppo_run / "diagnostics").glob("*.npz"))
    assert [f.name for f in files] == [
        "step_0000000000.npz",
        "step_0000001124.npz",
        "step_0000002048.npz",
    ]
    start, shift, end = (np.load(f) for f in files)
    assert (int(start["task_init"]), int(start["task_end"])) == (0, -1)
    assert (int(shift["task_end"]), int(shift["task_init"])) == (0, 1)
    assert (int(end["task_end"]), int(end["task_init"])) == (1, -1)
    for archive, phases in ((start, ["init"]), (shift, ["end", "init"]), (end, ["end"])):
        for phase in phases:
            for net in ("actor", "critic"):
                assert np.isfinite(archive[f"{phase}/{net}/hessian/top"]).all()
                assert f"{phase}/{net}/ggn/ritz_values" in archive
        assert not any(key.startswith("init") for key in archive if "init" not in phases)
    metrics = read_jsonl(ppo_run / "metrics.jsonl")
    at_shift = next(m for m in metrics if m["step"] == 1124 and "shift/end/seconds" in m)
    for phase in ("end", "init"):
        for net in ("actor", "critic"):
            assert 0 <= at_shift[f"shift/{phase}/{net}/hessian/eps_rank@0.1"] <= 1
    # the periodic measures every 2 updates (4 updates in this run)
    periodic_steps = [m["step"] for m in metrics if "diag/actor/weight_norm" in m]
    assert periodic_steps == [1024, 2048]


def test_the_plot_command_turns_a_ppo_run_into_pngs(ppo_run, tmp_path):
    from matplotlib.image import imread

    paths = plot_run(ppo_run, tmp_path / "plots", dpi=50)
    names = {p.name for p in paths}
    assert {"eps_rank.png", "spectra_actor_hessian.png", "spectra_critic_hessian.png"} <= names
    image = imread(tmp_path / "plots" / "eps_rank.png")
    assert image.ndim == 3 and image.std() > 0


def test_diagnostics_do_not_change_training(tmp_path):
    """Bit-identical parameters and optimizer state with all diagnostics on and with them off."""
    finals = []
    for measures in (("none",), ("hessian", "ggn", "kfac", "gram", "features", "weights")):
        # --diag.* settings with --diagnostics none would be refused as having no effect
        off = {"diag": DiagnosticsConfig()} if measures == ("none",) else {}
        run = ppo.train(tiny_ppo_args(tmp_path / measures[0], diagnostics=measures, **off))
        finals.append(torch.load(run / "checkpoints" / "latest.pt", weights_only=False))
    off, on = finals
    assert not list((tmp_path / "none").glob("*/diagnostics/*.npz"))
    assert len(list((tmp_path / "hessian").glob("*/diagnostics/*.npz"))) == 3
    for net in ("actor", "critic"):
        for key, value in off[net].items():
            assert torch.equal(value, on[net][key]), f"{net}.{key} differs"
    for a, b in zip(
        off["optimizer"]["state"].values(), on["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(off["rng"]["torch"], on["rng"]["torch"])


def test_an_init_with_too_few_post_shift_samples_waits_for_the_next_rollout(tmp_path):
    # shift 12 samples before the end of a rollout: fewer than min_init_samples (256)
    run = ppo.train(tiny_ppo_args(tmp_path, shift_at=(1024 - 12,)))
    files = sorted(p.name for p in (run / "diagnostics").glob("*.npz"))
    assert files == ["step_0000000000.npz", "step_0000001012.npz", "step_0000002048.npz"]
    # one record at the shift's step: the end of task 0 and the init of task 1, the latter
    # measured on the next rollout, after one update
    shift = np.load(run / "diagnostics" / "step_0000001012.npz")
    assert (int(shift["task_end"]), int(shift["task_init"])) == (0, 1)
    assert "end/actor/hessian/top" in shift and "init/actor/hessian/top" in shift
    metrics = read_jsonl(run / "metrics.jsonl")
    late = next(m for m in metrics if "shift/init/updates_since_shift" in m)
    assert late["step"] == 1012 and late["shift/init/updates_since_shift"] == 1
    # the other boundaries measured their init on the rollout they began in: no such note
    assert sum("shift/init/updates_since_shift" in m for m in metrics) == 1


def test_a_resumed_runs_initial_weights_go_to_the_networks_device(tmp_path):
    """A checkpoint is loaded onto the CPU; on a GPU run the distance from init would subtract a
    CPU tensor from a CUDA one at every boundary. Provoked here with the meta device."""
    diagnostics, _, net = make_hook(tmp_path)
    state = diagnostics.state_dict()
    resumed, _, _ = make_hook(tmp_path / "resumed")
    resumed.attach({"model": net.to("meta")})
    resumed.load_state_dict(state)
    assert all(t.device.type == "meta" for t in resumed.initial["model"])
