"""train.py report: its statistics against hand-computed answers, on synthetic run directories
whose every number is planted, and over real runs made by hand and by a sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from run_helpers import run_cli_in_process

from experiments.report import (
    bootstrap_interval,
    difference_of_means,
    find_run_dirs,
    interquartile_mean,
    iqm_of,
    mean_of,
    name_methods,
    phase_means,
    plot_eps_ranks,
    r_squared,
    read_run,
    summarise,
    within_task_r_squared,
    write_report,
)
from run_directory import read_run_files

# --- the estimators -------------------------------------------------------------------------------


def test_the_bootstrap_interval_of_a_mean_is_exact_for_few_runs():
    # 5 runs, one of them 1: a resample's mean is k/5 with k ~ Binomial(5, 1/5):
    # P(k=0) = 0.328 > 2.5 %, P(k<=2) = 0.942 < 97.5 % <= P(k<=3) = 0.993.
    assert bootstrap_interval(mean_of, [np.array([0, 0, 0, 0, 1.0])]) == (0.0, 0.6)
    # 3 runs (27 resamples): the mean is 0.8 + 0.1 k/3, P(k=0) = 8/27, P(k<=2) = 26/27 < 97.5 %.
    low, high = bootstrap_interval(mean_of, [np.array([0.8, 0.8, 0.9])])
    assert (low, high) == pytest.approx((0.8, 0.9))


def test_the_bootstrap_draws_when_the_resamples_are_too_many_to_enumerate():
    # 6 runs = 46,656 resamples > the exact limit: 2,000 seeded draws. k ~ Binomial(6, 1/6):
    # P(k=0) = 0.335, P(k<=2) = 0.938, P(k<=3) = 0.991: the interval is [0, 3/6].
    assert bootstrap_interval(mean_of, [np.array([0, 0, 0, 0, 0, 1.0])]) == (0.0, 0.5)


def test_the_interquartile_mean_cuts_a_quarter_from_each_end():
    assert interquartile_mean(np.arange(1.0, 9.0)) == 4.5  # mean of 3, 4, 5, 6
    assert interquartile_mean(np.array([1.0, 2, 3, 4, 100])) == 3.0  # int(5/4) = 1 each side
    assert interquartile_mean(np.array([0.0, 1.0])) == 0.5  # nothing cut from 2


def test_the_stratified_bootstrap_resamples_runs_within_each_task_only():
    # Two tasks, two runs each, equal within a task: every stratified resample is {0, 0, 1, 1},
    # whose IQM is 0.5; a bootstrap pooled over the four scores would vary.
    assert bootstrap_interval(iqm_of, [np.array([0.0, 0.0]), np.array([1.0, 1.0])]) == (0.5, 0.5)
    # One task, two runs: the resampled IQM (= mean) is 0, 0.5 or 1 with 1/4, 1/2, 1/4.
    assert bootstrap_interval(iqm_of, [np.array([0.0, 1.0])]) == (0.0, 1.0)


def test_the_difference_of_two_groups_means_resamples_each_group():
    # a - b takes 0.9 - {0.1, 0.2} resampled: always > 0.
    low, high = bootstrap_interval(
        difference_of_means, [np.array([0.9, 0.9]), np.array([0.1, 0.2])]
    )
    assert (low, high) == pytest.approx((0.7, 0.8))


def test_r_squared_of_a_small_line_fit():
    # x = 0, 1, 2; y = 0, 1, 3: Sxy = 3, Sxx = 2, Syy = 14/3, R^2 = 9 / (2 * 14/3) = 27/28.
    r2, r = r_squared(np.array([0.0, 1, 2]), np.array([0.0, 1, 3]))
    assert r2 == pytest.approx(27 / 28) and r > 0


def test_within_task_r_squared_takes_out_a_trend_every_run_shares():
    # Two tasks; both the rank and the metric rise by 10 from task 1 to task 2 (pooled r > 0),
    # but inside each task the run with the higher rank has the lower metric: after each task's
    # mean is taken out the points are (-0.5, 0.5), (0.5, -0.5) twice, r = -1 exactly.
    x = np.array([1.0, 2, 11, 12])
    y = np.array([10.0, 9, 20, 19])
    tasks = np.array([1, 1, 2, 2])
    assert r_squared(x, y)[1] > 0.9
    r2, r = within_task_r_squared(x, y, tasks)
    assert r2 == pytest.approx(1.0) and r == pytest.approx(-1.0)
    assert list(x) == [1.0, 2, 11, 12], "the caller's arrays are left as they were"
    # A task one run reached compares it with nobody: left out, two points remain, no fit.
    r2, _ = within_task_r_squared(x[:3], y[:3], tasks[:3])
    assert math.isnan(r2)


def test_a_phase_mean_is_its_learning_curve_mean_not_its_episode_mean():
    # Phase 0 (steps 0-99, spans of 10): four failed episodes of return 1 in the first span and
    # one of 1,000 in the last: the spans' mean is (1 + 1000) / 2, the episodes' 200.8.
    # Phase 1 (100 to the run's end): 10 at step 150 (span 5), 30 at the last step, 200 (span 9).
    steps = np.array([5, 6, 7, 8, 95, 150, 200])
    returns = np.array([1.0, 1, 1, 1, 1000, 10, 30])
    assert phase_means(steps, returns, [100], 200) == pytest.approx({0: 500.5, 1: 20.0})
    # No episode ended in a phase: it has no mean (not a zero).
    assert phase_means(np.array([5]), np.array([3.0]), [100], 200) == {0: 3.0}


# --- a report over planted run directories --------------------------------------------------------

TASKS = 8  # the first and last 2 tasks (8 // 4)
# seed -> the online accuracy of BP on each task, and L2-ER's
BP = {1: [0.8] * 4 + [0.6] * 4, 2: [0.8] * 4 + [0.6] * 4, 3: [0.9] * 4 + [0.7] * 4}
L2ER = {1: [0.8] * TASKS, 2: [0.8] * TASKS, 3: [0.9] * TASKS}


def planted_run(root: Path, regularizer: str, seed: int, accuracies: list[float]) -> Path:
    """A run directory as the supervised learner writes one: accuracy per task, and at the
    boundaries after tasks 1, 3 and 5 a Hessian whose exact eps-rank at task init is planted."""
    run = root / f"stream__supervised__{regularizer}__{seed}"
    (run / "diagnostics").mkdir(parents=True)
    config = {"stream": "permuted-mnist", "num_tasks": TASKS, "seed": seed,
              "regularizer": regularizer, "hidden_sizes": [32], "runs_dir": str(root),
              "l2": {"weight_decay": 1e-3}, "erank": {"lr": 1e-2, "every": 100},
              "cbp": {"replacement_rate": 1e-6}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    examples = 100
    metrics, events = [], [{"step": 0, "event": "start", "command": f"python train.py {seed}",
                            "code": {"commit": "abc", "dirty": False}}]  # fmt: skip
    for task, accuracy in enumerate(accuracies):
        metrics.append({"step": (task + 1) * examples, "charts/task": task,
                        "charts/online_accuracy": accuracy})  # fmt: skip
        if task + 1 < TASKS:
            events.append({"step": (task + 1) * examples, "event": "shift", "task": task + 1})
    for end in (1, 3, 5):
        step = (end + 1) * examples
        # Ritz values {0, 5}: the Gaussian at 0 (sigma 0.007) has no mass beyond 0.1, so the
        # exact eps-rank is the weight of 5: planted as the next task's accuracy / 10.
        weight = accuracies[end + 1] / 10
        arrays = {"step": step, "task_end": end, "task_init": end + 1,
                  "epsilons": np.array([0.1])}  # fmt: skip
        for phase in ("init", "end"):
            arrays[f"{phase}/model/hessian/ritz_values"] = np.array([[0.0, 5.0]])
            arrays[f"{phase}/model/hessian/ritz_weights"] = np.array([[1 - weight, weight]])
        np.savez(run / "diagnostics" / f"step_{step:010d}.npz", **arrays)
        metrics.append({"step": step, "shift/end/model/features/erank": 10.0 * seed,
                        "shift/end/model/features/dead": 0.1 * seed})  # fmt: skip
    events.append({"step": TASKS * examples, "event": "finished"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_a_report_over_planted_runs_gives_the_hand_computed_numbers(tmp_path):
    for seed in (1, 2, 3):
        planted_run(tmp_path / "runs", "none", seed, BP[seed])
        planted_run(tmp_path / "runs", "l2-er", seed, L2ER[seed])
    out = write_report([tmp_path / "runs"], tmp_path / "report")
    summary = json.loads((out / "report.json").read_text())
    assert summary["methods"] == ["bp", "l2-er"]  # the unused l2/erank flags of BP do not count
    assert summary["first_tasks"] == [0, 1] and summary["last_tasks"] == [6, 7]
    bp, l2er = summary["table"]["bp"], summary["table"]["l2-er"]
    # First tasks: per-run means 0.8, 0.8, 0.9 -> mean 0.8333, exact CI [0.8, 0.9] (see above).
    assert bp["first"]["mean"] == pytest.approx(0.8 + 0.1 / 3)
    assert bp["first"]["ci"] == pytest.approx([0.8, 0.9])
    assert bp["last"]["mean"] == pytest.approx(0.6 + 0.1 / 3)
    assert bp["last"]["ci"] == pytest.approx([0.6, 0.7])
    assert bp["drop"] == {"mean": pytest.approx(0.2), "ci": pytest.approx([0.2, 0.2]), "n": 3}
    assert l2er["drop"]["mean"] == pytest.approx(0.0)
    # IQM of the 6 last-task scores {0.6, 0.6, 0.7} x 2: cut 1 each side -> (0.6, 0.6, 0.6, 0.7)
    assert bp["iqm_last"]["value"] == pytest.approx(0.625)
    # Per task band: task 7 of BP is 0.6, 0.6, 0.7.
    task7 = summary["per_task"]["bp"][7]
    assert task7[0] == 7 and task7[1:4] == pytest.approx([0.6 + 0.1 / 3, 0.6, 0.7])
    # The eps-rank at each task's init is its accuracy / 10 (in %: * 100): a perfect line.
    (exact,) = [r for r in summary["r_squared"] if r["convention"] == "exact"]
    assert exact["points"] == 2 * 3 * 3 and exact["eps"] == 0.1
    assert exact["pooled"] == pytest.approx(1.0) and exact["pooled_r"] > 0
    assert exact["spearman"] == pytest.approx(1.0)  # a rising line is rising in rank too
    assert "beats_reset" not in bp  # no RESET runs here
    text = (out / "report.md").read_text()
    assert "| bp | 3 | 0.833 [0.800, 0.900] |" in text
    assert "| method | runs | tasks 0-1 | tasks 6-7 | drop | IQM, tasks 6-7 (" in text
    assert "`python train.py 1`" in text and "abc" in text
    for name in ("performance.png", "eps_rank.png", "eps_rank_paper.png", "features.png",
                 "metric_vs_eps_rank.png"):  # fmt: skip
        assert (out / name).stat().st_size > 10_000, name


def test_the_report_says_whether_a_method_beats_reset(tmp_path):
    for seed in (1, 2, 3):
        planted_run(tmp_path / "runs", "none", seed, BP[seed])
        planted_run(tmp_path / "runs", "l2-er", seed, L2ER[seed])
        planted_run(tmp_path / "runs", "reset", seed, [0.75] * TASKS)
    summary = json.loads(
        (write_report([tmp_path / "runs"], tmp_path / "r") / "report.json").read_text()
    )
    # last tasks: L2-ER 0.8, 0.8, 0.9 against RESET's 0.75: always above; BP 0.6, 0.6, 0.7 below
    assert summary["table"]["l2-er"]["beats_reset"]["verdict"] == "yes"
    assert summary["table"]["bp"]["beats_reset"]["verdict"] == "no"
    assert summary["table"]["l2-er"]["beats_reset"]["ci"] == pytest.approx([0.05, 0.15])


def test_runs_that_differ_in_a_method_setting_are_two_methods(tmp_path):
    planted_run(tmp_path / "runs", "l2-er", 1, L2ER[1])
    other = planted_run(tmp_path / "runs2", "l2-er", 1, BP[1])
    config = json.loads((other / "config.json").read_text())
    config["l2"]["weight_decay"] = 1e-4
    (other / "config.json").write_text(json.dumps(config))
    summary = json.loads(
        (
            write_report([tmp_path / "runs", tmp_path / "runs2"], tmp_path / "r") / "report.json"
        ).read_text()
    )
    assert sorted(summary["methods"]) == [
        'l2-er (l2={"weight_decay": 0.0001})',
        'l2-er (l2={"weight_decay": 0.001})',
    ]


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent"], "no run directory or sweep directory at /nonexistent"),
    (["{tmp}"], "no run directories under"),
    (["{tmp}/cells/none-1"], "{tmp}/cells/none-1/CartPole-v1__ppo__none__1/config.json cannot be read"),
])  # fmt: skip
def test_a_report_of_nothing_is_one_error_line(tmp_path, argv, message):
    if argv == ["{tmp}/cells/none-1"]:  # a run whose flags cannot be read
        planted_rl_run(tmp_path, "none", 1, [10.0] * 8)
        (next(tmp_path.glob("cells/*/*")) / "config.json").write_text("{truncated")
    result = run_cli_in_process("report", *[a.format(tmp=tmp_path) for a in argv])
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith(f"error: {message.format(tmp=tmp_path)}")
        and "Traceback" not in result.stderr
    )


# --- RL: the return averaged over the run, beside published numbers -----------------------------

ROLLOUT = 800


def planted_rl_run(
    root: Path, regularizer: str, seed: int, returns: list[float], command: str = "", **flags
) -> Path:
    """A PPO run directory: one return per 800-step rollout (logged at the step after it, as PPO
    logs), a shift every 4 rollouts (at steps 3,200 and 6,400); `flags`: more config fields."""
    run = root / "cells" / f"{regularizer}-{seed}" / f"CartPole-v1__ppo__{regularizer}__{seed}"
    run.mkdir(parents=True)
    total = ROLLOUT * len(returns)
    config = {"env_id": "CartPole-v1", "seed": seed, "regularizer": regularizer,
              "total_timesteps": total, "num_steps": ROLLOUT, "num_envs": 1,
              "shift": ["obs-offset"], "shift_every": 4 * ROLLOUT, **flags}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    metrics = [{"step": (i + 1) * ROLLOUT, "charts/rollout_return": r, "charts/episodic_return": r,
                "charts/episodes": 1} for i, r in enumerate(returns)]  # fmt: skip
    events = [{"step": 0, "event": "start", "command": command}]
    events += [
        {"step": s, "event": "shift", "task": s // (4 * ROLLOUT)}
        for s in range(4 * ROLLOUT, total, 4 * ROLLOUT)
    ]
    events.append({"step": total, "event": "finished"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_an_rl_report_averages_each_run_over_its_iterations_beside_the_published_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    bp = {1: [10, 20, 30, 40, 5, 5, 5, 5], 2: [20] * 4 + [10] * 4, 3: [30] * 4 + [6] * 4}
    for seed, returns in bp.items():
        planted_rl_run(sweep, "none", seed, returns)
        planted_rl_run(sweep, "reset", seed, [20.0] * 8)
    published = {"source": "a planted table.", "methods": {"bp": [16.5, 1.0], "reset": [40.0, 1.0]}}
    (sweep / "manifest.json").write_text(json.dumps({"command": ["train.py", "sweep"], "code": {},
                                                     "published": published}))  # fmt: skip
    out = write_report([sweep], tmp_path / "report")
    summary = json.loads((out / "report.json").read_text())
    # Phases: the rollout logged at the shift step 3,200 is the last of phase 0, so seed 1's
    # phase means are 25 and 5 (not 20 and 12.5); over seeds, phase 0 is (25 + 20 + 30) / 3.
    assert summary["per_task"]["bp"][0][:2] == pytest.approx([0, 25.0])
    assert summary["per_task"]["bp"][1][:2] == pytest.approx([1, 7.0])
    # Whole run: per-run means 15, 15, 18 -> 16 ± std(ddof 1) / sqrt(3) = 1.0; exact CI over
    # the 27 resamples, whose mean is 15 + k for k draws of the 18: P(k = 0) = 8/27 > 2.5 %,
    # P(k <= 2) = 26/27 < 97.5 %: [15, 18].
    whole = summary["table"]["bp"]["whole_run"]
    assert (whole["mean"], whole["se"], whole["n"]) == pytest.approx((16.0, 1.0, 3))
    assert whole["ci"] == pytest.approx([15.0, 18.0])
    # Against the published 16.5 ± 1.0: difference -0.5 within 2 sqrt(1 + 1); RESET's 20 ± 0
    # against 40 ± 1: -20, outside 2.
    assert whole["published"] == {"mean": 16.5, "se": 1.0, "difference": pytest.approx(-0.5),
                                  "within_2se": True}  # fmt: skip
    assert summary["table"]["reset"]["whole_run"]["published"]["within_2se"] is False
    text = (out / "report.md").read_text()
    assert "| bp | 3 | 16.0 ± 1.0 | [15.0, 18.0] | 16.5 ± 1.0 | -0.5 | yes |" in text
    # two phases: each edge is one phase, named as one (not "phases 0-0")
    assert "| method | runs | phase 0 | phase 1 | drop | IQM, phase 1 (" in text
    assert "Published: a planted table." in text
    assert (out / "learning_curves.png").stat().st_size > 10_000


def test_a_run_from_before_a_flag_existed_is_one_method_with_runs_at_its_default(tmp_path):
    # Seed 1 was made before --clip-actions existed (its config lacks the field; PPO clipped
    # then, which the flag's default True keeps); seed 2 after, at the default: one method.
    # Seed 3 turned it off: another method. A resume fills the missing field the same way.
    command = "python /x/train.py ppo --seed {}"
    made = [
        planted_rl_run(tmp_path, "none", 1, [10.0] * 8, command.format(1)),
        planted_rl_run(tmp_path, "none", 2, [20.0] * 8, command.format(2), clip_actions=True),
        planted_rl_run(tmp_path, "none", 3, [30.0] * 8, command.format(3), clip_actions=False),
    ]
    runs = [read_run(path) for path in made]
    name_methods(runs)
    assert {run.seed: run.method for run in runs} == {
        1: "bp (clip_actions=true)",
        2: "bp (clip_actions=true)",
        3: "bp (clip_actions=false)",
    }
    # A command that names no learner says nothing of its defaults: the field stays missing.
    old = read_run(planted_rl_run(tmp_path, "none", 4, [10.0] * 8, "python other.py"))
    assert "clip_actions" not in old.config


def test_a_runs_wall_and_cpu_time_sum_its_segments_and_a_shared_process_counts_a_share(tmp_path):
    """Seed 1 ran with two other seeds in one process, was killed 90 s in (its last event then)
    and resumed for 50 s more: 140 s, a third of it in the process-hours; its process used 30 +
    20 CPU seconds (it waited for a core the rest). Seed 2 ran alone, 60 s, 45 CPU seconds."""
    sweep = tmp_path / "sweep"
    shared = planted_rl_run(sweep, "none", 1, [10.0] * 8)
    alone = planted_rl_run(sweep, "none", 2, [10.0] * 8)
    together = {"event": "seeds_in_process", "seeds": [1, 3, 4]}
    timed = [
        {"step": 0, "event": "start", "time": 100.0, "cpu": 2.0},
        {"step": 0, **together, "time": 101.0, "cpu": 2.5},
        {"step": 3200, "event": "shift", "task": 1, "time": 160.0, "cpu": 20.0},
        {"step": 4000, "event": "warning", "time": 190.0, "cpu": 32.0},
        {"step": 3200, "event": "resume", "time": 1000.0, "cpu": 3.0},
        {"step": 3200, **together, "time": 1001.0, "cpu": 3.5},
        {"step": 6400, "event": "finished", "time": 1050.0, "cpu": 23.0},
    ]  # fmt: skip
    (shared / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in timed))
    (alone / "events.jsonl").write_text(
        json.dumps({"step": 0, "event": "start", "time": 5.0, "cpu": 1.0}) + "\n"
        + json.dumps({"step": 3200, "event": "shift", "task": 1, "time": 35.0, "cpu": 20.0}) + "\n"
        + json.dumps({"step": 6400, "event": "finished", "time": 65.0, "cpu": 46.0}) + "\n"
    )  # fmt: skip
    assert read_run_files(shared).wall_seconds == 140.0
    assert read_run_files(shared).cpu_seconds == 50.0 and read_run_files(alone).cpu_seconds == 45.0
    assert (read_run_files(shared).seeds_in_process, read_run_files(alone).seeds_in_process) == (
        3,
        1,
    )
    (sweep / "manifest.json").write_text(json.dumps({"command": ["train.py", "sweep"], "code": {}}))
    out = write_report([sweep], tmp_path / "report")
    cost = json.loads((out / "report.json").read_text())["cost"]["bp"]
    assert cost["median_wall_s"] == 100.0 and cost["seeds_in_process"] == [1, 3]
    assert cost["process_hours"] == pytest.approx((140 / 3 + 60) / 3600)
    assert cost["cpu_hours"] == pytest.approx((50 / 3 + 45) / 3600)
    assert cost["median_cpu_s"] == pytest.approx((50 / 3 + 45) / 2)
    text = (out / "report.md").read_text()
    assert "| bp | 2 | 1.7 min | 0.5 min | 1, 3 | 0.03 | 0.02 |" in text
    assert "| method | runs | phase 0 | phase 1 |" in text and "| bp | 2 | 10.0 | 10.0 |" in text

    # A record written before events carried "cpu", then resumed by newer code: its CPU time is
    # unknown (not the newer segment's alone). The CPU columns cover the other run and say so;
    # with neither, they are empty.
    for event in timed[:4]:
        del event["cpu"]
    (shared / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in timed))
    assert read_run_files(shared).wall_seconds == 140.0
    assert math.isnan(read_run_files(shared).cpu_seconds)
    out = write_report([sweep], tmp_path / "report-old")
    cost = json.loads((out / "report.json").read_text())["cost"]["bp"]
    assert cost["cpu_runs"] == 1 and cost["cpu_hours"] == pytest.approx(45 / 3600)
    assert cost["median_cpu_s"] == 45.0
    text = (out / "report.md").read_text()
    assert "| bp | 2 | 1.7 min | 0.8 min (1 of 2) | 1, 3 | 0.03 | >= 0.01 (1 of 2) |" in text
    (alone / "events.jsonl").write_text(
        json.dumps({"step": 0, "event": "start", "time": 5.0}) + "\n"
        + json.dumps({"step": 6400, "event": "finished", "time": 65.0}) + "\n"
    )  # fmt: skip
    out = write_report([sweep], tmp_path / "report-older")
    assert "| bp | 2 | 1.7 min | - | 1, 3 | 0.03 | - |" in (out / "report.md").read_text()


def test_two_sweeps_of_one_experiment_report_together_with_the_published_numbers(tmp_path):
    """Seeds split over two sweep directories, only the first with the [published] table: one
    report of both, beside those numbers; two sweeps that publish different numbers for one
    method are refused in one line."""
    published = {"source": "a planted table.", "methods": {"bp": [15.0, 1.0]}}
    for name, seeds, table in (("a", (1, 2), published), ("b", (3,), None)):
        for seed in seeds:
            planted_rl_run(tmp_path / name, "none", seed, [10.0 * seed] * 8)
        manifest = {"command": ["train.py", "sweep", name], "code": {}}
        (tmp_path / name / "manifest.json").write_text(json.dumps({**manifest, "published": table}
                                                                  if table else manifest))  # fmt: skip
    out = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "| bp | 3 | 20.0 ± 5.8 | [10.0, 30.0] | 15.0 ± 1.0 | +5.0 | yes |" in text
    assert "Sweep: `train.py sweep a`" in text and "Sweep: `train.py sweep b`" in text
    other = {"command": ["train.py", "sweep", "b"], "code": {},
             "published": {"source": "another.", "methods": {"bp": [99.0, 1.0]}}}  # fmt: skip
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(other))
    result = run_cli_in_process("report", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "different numbers for bp" in result.stderr.strip().splitlines()[-1]


def test_the_recorded_code_version_is_dirty_for_changed_tracked_files_only(tmp_path):
    """A run records its commit and whether the code differs from it: a log file beside the
    checkout does not make it dirty, an edited tracked file does."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip

    def version() -> dict:
        read = "import json; from agents.records import code_version; print(json.dumps(code_version()))"
        done = subprocess.run([sys.executable, "-c", read], cwd=clone, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return json.loads(done.stdout)

    (clone / "sweep.log").write_text("a log beside the checkout\n")
    assert version() == {"commit": commit, "dirty": False}
    with (clone / "README.md").open("a") as readme:
        readme.write("an edit\n")
    assert version() == {"commit": commit, "dirty": True}


def test_the_eps_rank_figure_of_many_methods_has_a_panel_per_method_on_one_scale(tmp_path):
    """Past four methods one panel's lines cannot be told apart: a panel per (network,
    method), every method's panels on one y scale, reset's init drawn in each other panel."""
    methods = ["none", "l2", "l2-er", "cbp", "reset"]
    for index, method in enumerate(methods):
        for seed in (1, 2):
            planted_run(tmp_path / "runs", method, seed, [0.5 + 0.05 * index] * TASKS)
    runs = [read_run(path) for path in find_run_dirs([tmp_path / "runs"])[0]]
    name_methods(runs)
    summary = summarise(runs, None)
    figure = plot_eps_ranks(summary, runs, "exact")
    shown = [ax for ax in figure.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in shown) == sorted(
        f"model: {m}" for m in summary["methods"]
    )
    assert len({ax.get_ylim() for ax in shown}) == 1
    greys = [ax for ax in shown if any(line.get_label() == "reset init" for line in ax.lines)]
    assert len(greys) == len(methods) - 1  # every panel but reset's own
