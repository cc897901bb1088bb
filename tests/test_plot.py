"""Tests of diagnostics/plot.py on a small run directory written here, as the trainer writes one.

Three task boundaries (run start, one shift, run end); made-up but well-formed SLQ output: each
probe's Ritz weights sum to 1, one probe NaN-padded where its Lanczos would have stopped early.
The actor's spectrum spans [-0.6, 88] and the critic's [-91, 1178], the two scales the symlog
axis has to show at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from diagnostics.plot import main, plot_run

# step -> (task that ended here, task that starts here); -1 where none
BOUNDARIES = {0: (-1, 0), 1000: (0, 1), 2000: (1, -1)}
SPECTRUM_RANGE = {"actor": (-0.6, 88.0), "critic": (-91.0, 1178.0)}
EPSILONS = (0.02, 0.1, 0.5)
PROBES, ORDER, HIDDEN = 4, 8, (16, 12)


def ritz(rng: np.random.Generator, low: float, high: float) -> dict[str, np.ndarray]:
    """SLQ output as diagnostics/ saves it: (probes, order) Ritz values and weights, a spike at 0
    holding most of the weight and two outliers at low and about high, plus top/bottom/grid."""
    values, weights = np.empty((PROBES, ORDER)), np.empty((PROBES, ORDER))
    for probe in range(PROBES):
        spike = rng.normal(0.0, 1e-4 * high, ORDER - 2)
        values[probe] = np.sort(np.concatenate([[low], spike, [high * rng.uniform(0.9, 1.0)]]))
        raw = np.concatenate([[0.01], rng.uniform(0.5, 1.0, ORDER - 2), [0.01]])
        weights[probe] = raw / raw.sum()
    # Probe 0's Lanczos stopped two steps early: NaN-padded, its remaining weights still sum to 1.
    values[0, -3:-1] = weights[0, -3:-1] = np.nan
    weights[0] /= np.nansum(weights[0])
    finite = np.sort(values[np.isfinite(values)])
    return {
        "ritz_values": values,
        "ritz_weights": weights,
        "top": finite[::-1][:3],
        "bottom": finite[:3],
        "grid": np.linspace(low, high, 10_000),
        "density": np.zeros(10_000),
    }


def write_run(run_dir: Path, *, ggn: bool = True, kfac: bool = True, periodic: bool = True) -> Path:
    rng = np.random.default_rng(0)
    kinds = ("hessian", "ggn") if ggn else ("hessian",)
    (run_dir / "diagnostics").mkdir(parents=True)
    metrics = [
        {"step": step, "charts/episodic_return": step / 10 + rng.normal(0, 20)}
        for step in range(0, 2001, 50)
    ]
    for step, (task_end, task_init) in BOUNDARIES.items():
        arrays = {"step": np.int64(step), "epsilons": np.array(EPSILONS)}
        arrays["task_end"], arrays["task_init"] = np.int64(task_end), np.int64(task_init)
        scalars = {"step": step}
        for phase, task in (("init", task_init), ("end", task_end)):
            if task < 0:
                continue
            for net, (low, high) in SPECTRUM_RANGE.items():
                for kind in kinds:
                    prefix = f"{phase}/{net}/{kind}"
                    arrays |= {f"{prefix}/{name}": a for name, a in ritz(rng, low, high).items()}
                    scalars[f"shift/{prefix}/lambda_max"] = high
                    for eps in EPSILONS:  # made-up ranks: ggn below hessian, end below init
                        rank = 200 * (1 - eps) - step / 20 - 10 * (phase == "end")
                        scalars[f"shift/{prefix}/eps_rank@{eps:g}"] = rank - 20 * (kind == "ggn")
                for layer, width in enumerate(HIDDEN):
                    decay = np.exp(-np.arange(width) / (3 + step / 500))
                    arrays[f"{phase}/{net}/features/layer{layer}/singular_values"] = 10 * decay
                    if kfac:
                        arrays[f"{phase}/{net}/kfac/layer{layer}/A"] = decay**2
                        arrays[f"{phase}/{net}/kfac/layer{layer}/G"] = 1e-3 * decay
                arrays[f"{phase}/{net}/gram/eigenvalues"] = 100 * np.exp(-np.arange(20) / 4)
                scalars[f"shift/{phase}/{net}/features/erank"] = 10.0 - step / 500
        if "shift/end/critic/hessian/eps_rank@0.5" in scalars:
            scalars["shift/end/critic/hessian/eps_rank@0.5"] = "nan"  # NaN is logged as a string
        metrics.append(scalars)
        np.savez(run_dir / "diagnostics" / f"step_{step:010d}.npz", **arrays)
    if periodic:
        for step in range(0, 2001, 250):
            row = {"step": step, "diag/actor/features/erank": 12 - step / 400}
            row["diag/critic/features/erank"] = 11 - step / 300
            row["diag/actor/weight_norm"] = 5 + step / 1000
            metrics.append(row)
    lines = [json.dumps(row) for row in sorted(metrics, key=lambda row: row["step"])]
    # A run killed mid-write leaves a truncated last line; the plots must still come out.
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 2050, "charts/epi')
    events = [
        {"step": 0, "event": "task_start", "task": 0, "params": {"friction_scale": 1.0}},
        {"step": 1000, "event": "shift", "task": 1, "params": {"friction_scale": 0.3}},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    return run_dir


def assert_readable_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert np.ptp(image[..., :3]) > 0.5, f"{path.name} is (nearly) uniform"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A run with every measure, plotted once (drawing dominates the test time)."""
    run_dir = write_run(tmp_path_factory.mktemp("runs") / "Hopper-v5__ppo__test__1__0")
    out_dir = run_dir.parent / "out"
    return out_dir, plot_run(run_dir, out_dir, dpi=40)


def test_plot_run_writes_every_figure(full_run):
    out_dir, written = full_run
    assert {path.name for path in written} == {
        "spectra_actor_hessian.png",
        "spectra_actor_ggn.png",
        "spectra_critic_hessian.png",
        "spectra_critic_ggn.png",
        "eps_rank.png",
        "eps_rank_paper.png",
        "tail_mass_actor_hessian.png",
        "tail_mass_actor_ggn.png",
        "tail_mass_critic_hessian.png",
        "tail_mass_critic_ggn.png",
        "kfac_actor.png",
        "kfac_critic.png",
        "features_actor.png",
        "features_critic.png",
        "periodic.png",
    }
    for path in written:
        assert path.parent == out_dir
        assert_readable_png(path)


@pytest.mark.parametrize("net", ["actor", "critic"])
def test_spectrum_heat_map_shows_density(full_run, net):
    """Both scales ([-0.6, 88] and [-91, 1178]) fill the heat map with many colours, not a
    blank field with one bright line."""
    image = imread(full_run[0] / f"spectra_{net}_hessian.png")[..., :3]
    colours = np.unique(image.reshape(-1, 3).round(2), axis=0)
    assert len(colours) > 50


def test_missing_measures_skip_figures(tmp_path, capsys):
    """No GGN, no KFAC, no periodic measures: those figures are skipped, through the command
    line, which writes to RUN_DIR/plots and prints each path."""
    run_dir = write_run(tmp_path / "run", ggn=False, kfac=False, periodic=False)
    main([str(run_dir), "--dpi", "30"])
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert {path.name for path in printed} == {
        "spectra_actor_hessian.png",
        "spectra_critic_hessian.png",
        "eps_rank.png",
        "eps_rank_paper.png",
        "tail_mass_actor_hessian.png",
        "tail_mass_critic_hessian.png",
        "features_actor.png",
        "features_critic.png",
    }
    assert sorted(printed) == sorted((run_dir / "plots").iterdir())
    for path in printed:
        assert_readable_png(path)


@pytest.mark.parametrize("case", ["missing", "no_diagnostics"])
def test_clean_error_without_diagnostics(tmp_path, case):
    run_dir = tmp_path / "run"
    if case == "no_diagnostics":  # an RL run trained with diagnostics off: returns only
        run_dir.mkdir()
        rows = [{"step": step, "charts/episodic_return": 1.0} for step in range(0, 500, 100)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit) as raised:
        main([str(run_dir)])
    message = str(raised.value.code)
    assert message.startswith("error: ") and str(run_dir) in message and "\n" not in message
    assert not (run_dir / "plots").exists()


@pytest.mark.parametrize(
    ("config", "unit"),
    [({"env_id": "Ant-v5"}, "env step"), ({"stream": "permuted-mnist"}, "example")],
)
def test_step_axis_names_what_a_step_counts(tmp_path, config, unit):
    """RL runs count env steps; the supervised stream (its config has a stream) counts examples."""
    from diagnostics.plot import load_run, plot_eps_rank

    run_dir = write_run(tmp_path / "run", ggn=False, kfac=False, periodic=False)
    (run_dir / "config.json").write_text(json.dumps(config))
    run = load_run(run_dir)
    assert run.step_unit == unit
    assert plot_eps_rank(run).axes[-1].get_xlabel() == unit


def test_eps_rank_plots_integrate_the_saved_spectra_in_either_convention(tmp_path):
    """The plotted ranks are those of each boundary's Ritz values and weights, in the convention
    the figure names: the closed form, or the paper's grid integral of the paper's density."""
    from diagnostics.curvature import epsilon_rank, paper_density, paper_epsilon_rank
    from diagnostics.plot import boundary_eps_ranks, load_run

    run = load_run(write_run(tmp_path / "run", ggn=False, kfac=False, periodic=False))
    exact, paper = (boundary_eps_ranks(run, c) for c in ("eps_rank", "paper_eps_rank"))
    measured = [b for b in run.boundaries if "init/critic/hessian/ritz_values" in b]
    assert len(measured) >= 2
    for boundary in measured:
        values = boundary["init/critic/hessian/ritz_values"]
        weights = boundary["init/critic/hessian/ritz_weights"]
        step = int(boundary["step"])
        for eps in EPSILONS:
            assert dict(exact["critic"]["init", "hessian", eps])[step] == epsilon_rank(
                values, weights, eps
            )
            grid, density = paper_density(values, weights)
            assert dict(paper["critic"]["init", "hessian", eps])[step] == paper_epsilon_rank(
                grid, density, eps
            )


def test_minor_ticks_go_only_where_matplotlib_labels_none():
    """A log axis with one decade in view keeps its minor ticks (they carry its labels, e.g.
    3x10^-2); one spanning five decades and a symlog axis lose them (matplotlib labels none
    there): no label is ever dropped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diagnostics.plot import drop_unlabelled_minor_ticks

    fig = Figure()
    narrow, wide, symlog = fig.subplots(1, 3)
    narrow.semilogy([0, 1], [0.025, 0.35])
    wide.semilogy([0, 1], [1e-5, 1.0])
    symlog.plot([-1, 1], [-1, 1])
    symlog.set_yscale("symlog", linthresh=0.01)

    def minor_labels(ax) -> list[str]:
        FigureCanvasAgg(fig).draw()
        return [t.get_text() for t in ax.yaxis.get_minorticklabels() if t.get_text()]

    before = {ax: minor_labels(ax) for ax in (narrow, wide, symlog)}
    assert before[narrow] and not before[wide] and not before[symlog]
    drop_unlabelled_minor_ticks(fig)
    assert minor_labels(narrow) == before[narrow]
    assert not wide.yaxis.get_minor_locator()() and not symlog.yaxis.get_minor_locator()()
