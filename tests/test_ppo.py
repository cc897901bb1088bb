"""PPO and train.py end to end: as a user runs them, on real MuJoCo, with real (offline) wandb."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import run_helpers
import torch
from run_helpers import run_cli_in_process

import train
from agents import ppo
from agents.checkpoints import load_checkpoint
from agents.flags import preset_defaults

REPO = Path(__file__).resolve().parents[1]
# A small, fast configuration: 256-step rollouts, shift every 1024 steps.
SMALL = [
    "--num-steps",
    "256",
    "--num-minibatches",
    "4",
    "--update-epochs",
    "2",
    "--torch-threads",
    "1",
]


def run_cli(*argv: str, runs_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_helpers.run_cli(*argv, "--runs-dir", str(runs_dir), timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = list(runs_dir.iterdir())
    return run_dir


def test_gaussian_log_prob_matches_torch_distribution():
    mean, log_std = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    action = torch.randn(5, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)
    torch.testing.assert_close(ppo.gaussian_log_prob(action, mean, log_std), expected)


@pytest.mark.slow
def test_end_to_end_across_a_shift_with_tracking(tmp_path):
    result = run_cli(
        "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "2048", "--shift", "friction",
        "--shift-every", "1024", "--regularizer", "l2-er", "--checkpoint-every", "1024", "--track",
        *SMALL, runs_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)

    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["env_id"] == "Hopper-v5"
        and config["regularizer"] == "l2-er"
        and config["shift_every"] == 1024
    )

    events = read_jsonl(run_dir / "events.jsonl")
    shifts = [e for e in events if e["event"] == "shift"]
    assert [(e["step"], e["task"]) for e in shifts] == [(1024, 1)]
    assert 0.02 <= shifts[0]["params"]["friction_scale"] <= 2.0
    assert any(e["event"] == "task_start" and e["step"] == 0 for e in events)

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    updates = [m for m in metrics if "losses/value_loss" in m]
    assert [m["step"] for m in updates] == [256 * k for k in range(1, 9)]
    assert all(math.isfinite(m["losses/value_loss"]) for m in updates)
    assert any("regularizer/erank/actor" in m for m in updates), "the ER step never reported"
    assert any("charts/episodic_return" in m for m in metrics)  # Hopper falls within 2048 steps
    assert [m["charts/task"] for m in updates] == [0, 0, 0, 0, 1, 1, 1, 1]

    state = load_checkpoint(run_dir)
    assert state["global_step"] == 2048 and state["task"] == 1
    assert {
        "actor",
        "critic",
        "optimizer",
        "obs_normalizer",
        "reward_normalizer",
        "rng",
        "regularizer",
    } <= set(state)
    assert state["obs_normalizer"]["count"] > 2048  # statistics carried across the shift
    actor = ppo.GaussianActor(11, 3, (64, 64), "tanh")
    actor.load_state_dict(state["actor"])
    assert sorted(p.stem for p in (run_dir / "checkpoints").glob("step_*.pt")) == [
        "step_1024",
        "step_2048",
    ]

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "--track with WANDB_MODE=offline left no offline W&B run"

    # Diagnostics are on by default: spectra at the run's start, the shift and the end, and the
    # plots drawn at the end and sent to W&B as images.
    assert len(list((run_dir / "diagnostics").glob("step_*.npz"))) == 3
    assert not [e for e in events if e["event"] == "diagnostic_skipped"]
    assert (run_dir / "plots" / "eps_rank.png").exists()
    assert list(offline_runs[0].rglob("*.png")), "the plots did not reach W&B"


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path):
    first = run_cli(
        "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "1024", "--shift", "obs-permute",
        "--shift-every", "768", "--shift-at", "1280", *SMALL, runs_dir=tmp_path,
    )  # fmt: skip
    # 1024 steps end before the second shift at 1280; the first at 768 has happened.
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path)
    before = load_checkpoint(run_dir)
    assert before["task"] == 1

    second = run_cli(
        "ppo", "--resume", str(run_dir), "--total-timesteps", "2048", runs_dir=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert len(list(tmp_path.iterdir())) == 1, "resume must write into the same run directory"
    after = load_checkpoint(run_dir)
    assert after["global_step"] == 2048 and after["args"].num_steps == 256  # saved config reused
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [1024]
    assert [(e["step"], e["task"]) for e in events if e["event"] == "shift"] == [
        (768, 1),
        (1280, 2),
        (1536, 3),
    ]
    steps = [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "losses/value_loss" in m]
    assert steps == [256 * k for k in range(1, 9)]


def test_sigterm_leaves_logs_and_a_resumable_checkpoint(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "1000000",
         *SMALL, "--runs-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = list(tmp_path.iterdir())
        if (
            runs
            and (runs[0] / "metrics.jsonl").exists()
            and "losses/value_loss" in (runs[0] / "metrics.jsonl").read_text()
        ):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "interrupted" in stderr and "--resume" in stderr
    run_dir = only_run_dir(tmp_path)
    events = read_jsonl(run_dir / "events.jsonl")
    assert events[-1]["event"] == "interrupted"
    state = load_checkpoint(run_dir)
    assert state["global_step"] >= 256


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ppo", "--env-id", "HalfCheetah-v9"], "did you mean"),
        (["ppo", "--shift", "friction", "--shift-every", "-5"], "--shift-every"),
        (
            ["ppo", "--shift", "friction", "--shift-every", "5000000", "--total-timesteps", "4096"],
            "no shift",
        ),
        (["ppo", "--preset", "nope"], "unknown --preset"),
        (["pop"], "unknown mode"),
        (["ppo", "--regularizer", "l2-er", "--erank.lr", "-1"], "--erank.lr"),
        (["ppo", "--num-minibatches", "3"], "--num-minibatches"),
        (["ppo", "--learning-rate", "nan"], "--learning-rate"),
        (["ppo", "--resume", "/nonexistent/run"], "no checkpoint"),
        (["ppo", "--preset", "continual-cartpole", "--no-clip-actions"], "actions are discrete"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path, argv, expected):
    result = run_cli_in_process(*argv, "--runs-dir", str(tmp_path))
    assert result.returncode != 0
    (error_line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert expected in error_line, result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_flag_gets_tyros_error(tmp_path):
    result = run_cli_in_process("ppo", "--shfit", "friction", "--runs-dir", str(tmp_path))
    assert result.returncode != 0
    assert "Unrecognized options" in result.stderr and "--shift" in result.stderr


def test_help_shows_every_flag_with_its_docstring(tmp_path):
    result = run_cli_in_process("ppo", "--help")
    assert result.returncode == 0
    for flag in [
        "--env-id",
        "--shift-every",
        "--regularizer",
        "--erank.lr",
        "--l2.weight-decay",
        "--friction.low",
        "--track",
    ]:
        assert flag in result.stdout
    assert "anneal the learning rate" in result.stdout


@pytest.mark.parametrize("mode", ["ppo", "sac", "supervised"])
def test_help_text_of_every_flag_is_one_paragraph_that_wraps(mode):
    """Field docstrings continue on indented lines; --help must join them (and let its
    formatter wrap), not break the sentence where the source does."""
    import importlib

    import tyro

    module = importlib.import_module(f"agents.{mode}")
    broken = [
        f"{cls.__name__}.{field.name}"
        for cls in module.Args.__mro__
        if dataclasses.is_dataclass(cls)
        for field in dataclasses.fields(cls)
        if "\n" in (tyro._docstrings.get_field_docstring(cls, field.name, ()) or "")
    ]
    assert not broken


def test_nan_loss_stops_with_one_line_and_keeps_logs(tmp_path):
    # An absurd step size blows the weights up within a few updates.
    result = run_cli(
        "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "4096", "--learning-rate", "1e30", *SMALL,
        runs_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged")
    # no checkpoint yet: nothing to resume from, so the line says to start again
    assert (
        "no checkpoint was written (start a new run with a smaller" in line
        and "--resume" not in line
    )
    events = read_jsonl(only_run_dir(tmp_path) / "events.jsonl")
    assert events[-1]["event"] == "diverged"


def test_presets_resolve_to_the_paper_setting():
    _, args, _ = train.parse("ppo", ["--preset", "slippery-ant"])
    assert (args.env_id, args.shift, args.shift_every) == ("Ant-v5", ("friction",), 2_000_000)
    assert (args.friction.low, args.friction.high) == (0.02, 2.0)
    assert (args.hidden_sizes, args.activation, args.adam_betas, args.learning_rate) == (
        (256,),
        "relu",
        (0.99, 0.99),
        1e-4,
    )
    assert (args.num_steps, args.update_epochs, args.num_minibatches, args.ent_coef, args.vf_coef, args.num_envs) == (
        2048, 10, 128, 0.01, 1.0, 1,
    )  # fmt: skip
    assert (args.norm_obs, args.norm_reward, args.max_grad_norm, args.clip_actions) == (
        False, False, 0.0, False,
    )  # fmt: skip


def test_no_clip_actions_gives_ant_the_raw_sample_and_its_control_cost():
    """--no-clip-actions (the paper's code): the env gets the sample itself; MuJoCo clamps the
    control, so the physics is the clipped action's, but Ant-v5 charges control cost on the raw
    action (0.5 * sum a^2: 8 dims at 3 against at 1, 32 more)."""
    space = gymnasium.make("Ant-v5").action_space
    raw = torch.full((2, 8), 3.0)
    for clip, expected in [(True, np.ones((2, 8))), (False, raw.numpy())]:
        agent = SimpleNamespace(args=SimpleNamespace(clip_actions=clip), action_space=space)
        assert np.array_equal(ppo.PPOAgent.env_actions(agent, raw), expected)
    steps = []
    for action in (np.full(8, 3.0), np.ones(8)):
        env = gymnasium.make("Ant-v5")
        env.reset(seed=0)
        obs, reward, *_, info = env.step(action)
        steps.append((obs, reward, info["reward_ctrl"]))
        env.close()
    (obs_raw, reward_raw, ctrl_raw), (obs_clipped, reward_clipped, ctrl_clipped) = steps
    assert np.array_equal(obs_raw, obs_clipped)
    assert (ctrl_raw, ctrl_clipped) == (-36.0, -4.0)
    assert reward_clipped - reward_raw == pytest.approx(32.0)


@pytest.mark.slow
def test_ppo_learns_inverted_pendulum(tmp_path):
    """A learning claim, tested by learning: the return clearly rises within CI's budget."""
    args = ppo.Args(
        env_id="InvertedPendulum-v5", total_timesteps=20_480, num_steps=1024, seed=3, runs_dir=str(tmp_path),
        checkpoint_every=0,
    )  # fmt: skip
    run_dir = ppo.train(args)
    returns = [
        m["charts/episodic_return"]
        for m in read_jsonl(run_dir / "metrics.jsonl")
        if "charts/episodic_return" in m
    ]
    first, last = np.mean(returns[:20]), np.mean(returns[-10:])
    assert last > 5 * first and last > 100, (first, last)


def test_gae_matches_a_hand_computed_rollout():
    # One env, three steps; the second transition ends its episode (terminated or truncated:
    # a truncated one carries gamma * V(final obs) in its reward already).
    rewards = np.array([[1.0], [2.0], [3.0]])
    values = np.array([[0.5], [0.4], [0.3]])
    over = np.array([[0.0], [1.0], [0.0]])
    gamma, lam = 0.9, 0.8
    advantages = ppo.generalized_advantages(rewards, values, np.array([0.2]), over, gamma, lam)
    a2 = 3 + gamma * 0.2 - 0.3  # bootstraps from the value after the rollout
    a1 = 2 - 0.4  # the episode ended: no next value, no later advantages
    a0 = (1 + gamma * 0.4 - 0.5) + gamma * lam * a1
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2])


def test_gae_with_lambda_one_gives_discounted_returns_cut_at_episode_ends():
    rng = np.random.default_rng(0)
    steps, num_envs, gamma = 50, 3, 0.97
    rewards, values = rng.normal(size=(steps, num_envs)), rng.normal(size=(steps, num_envs))
    over = (rng.random((steps, num_envs)) < 0.1).astype(float)
    next_value = rng.normal(size=num_envs)
    advantages = ppo.generalized_advantages(rewards, values, next_value, over, gamma, 1.0)
    expected_returns = np.zeros_like(rewards)
    following = next_value
    for t in reversed(range(steps)):
        following = rewards[t] + gamma * (1 - over[t]) * following
        expected_returns[t] = following
    np.testing.assert_allclose(advantages + values, expected_returns, rtol=1e-10)


def small_rollout(n: int, obs_dim: int, act_dim: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "obs": draw(n, obs_dim),
        "actions": draw(n, act_dim),
        "logprobs": draw(n) - 5.0,
        "advantages": draw(n),
        "returns": draw(n),
        "values": draw(n),
    }


def test_minibatch_loss_equals_the_diagnostics_joint_loss():
    """The training loss and the loss the diagnostics differentiate are written separately;
    on the same data (one minibatch holding the whole batch) they must be the same number."""
    torch.manual_seed(0)
    args = ppo.Args(ent_coef=0.01, vf_coef=0.7)
    actor = ppo.GaussianActor(5, 2, (16, 16), "tanh")
    critic = ppo.Critic(5, (16, 16), "tanh")
    data = small_rollout(32, 5, 2)
    out = ppo.minibatch_loss(actor, critic, data, torch.arange(32), args)
    joint = ppo.loss_closures(actor, critic, data, args, 32)["joint"]
    expected = joint.loss_fn(joint.output_fn(joint.params))
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-7)
    # The clipped objective is active: the ratios are far from 1 (logprobs shifted by -5).
    assert out["clipfrac"] > 0.5


def test_compiled_minibatch_loss_matches_eager_values_and_gradients():
    """--compile hands minibatch_loss to torch.compile; its loss and every parameter's
    gradient must equal the eager ones (to float32 rounding: the compiler reorders sums)."""
    torch.manual_seed(0)
    args = ppo.Args()
    actor = ppo.GaussianActor(5, 2, (16, 16), "tanh")
    critic = ppo.Critic(5, (16, 16), "tanh")
    params = [*actor.parameters(), *critic.parameters()]
    data = small_rollout(64, 5, 2)
    idx = torch.randperm(64)[:16]
    results = []
    for loss_fn in (ppo.minibatch_loss, torch.compile(ppo.minibatch_loss)):
        out = loss_fn(actor, critic, data, idx, args)
        penalty = sum((f**2).mean() for f in out["actor_features"] + out["critic_features"])
        grads = torch.autograd.grad(out["loss"] + penalty, params)
        results.append((out["loss"].detach(), out["approx_kl"], grads))
    (loss_eager, kl_eager, grads_eager), (loss_compiled, kl_compiled, grads_compiled) = results
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_compiled, kl_eager, rtol=1e-5, atol=1e-6)
    for compiled, eager in zip(grads_compiled, grads_eager, strict=True):
        assert eager.abs().max() > 0
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_host_to_device_copies_without_aliasing():
    """The per-step host-to-device copy (pinned staging on CUDA; the same code on the CPU)."""
    from agents.run import HostToDevice

    to_device = HostToDevice((2, 3), torch.device("cpu"))
    first_array = np.arange(6, dtype=np.float64).reshape(2, 3)
    first = to_device(first_array)
    second = to_device(-first_array)
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    np.testing.assert_array_equal(first.numpy(), first_array)  # not overwritten by the second
    np.testing.assert_array_equal(second.numpy(), -first_array)
    first_array[0, 0] = 99.0
    assert first[0, 0] == 0.0  # a copy, not a view of the caller's array
    with pytest.raises(ValueError):
        to_device(np.zeros((3, 3)))


def test_compile_flag_trains_the_same_first_update(tmp_path):
    """PPO with --compile end to end: the first update's logged losses equal the eager run's
    (later updates drift apart: float rounding changes actions, and the world is chaotic)."""
    losses = []
    for flag in ("--no-compile", "--compile"):
        runs_dir = tmp_path / flag
        result = run_cli(
            "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "512", "--diagnostics", "none",
            "--checkpoint-every", "0", flag, *SMALL, runs_dir=runs_dir,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = read_jsonl(only_run_dir(runs_dir) / "metrics.jsonl")
        losses.append([m for m in metrics if "losses/value_loss" in m][0])
    eager, compiled = losses
    for key in ("losses/value_loss", "losses/policy_loss", "losses/approx_kl"):
        assert math.isclose(compiled[key], eager[key], rel_tol=1e-3, abs_tol=1e-6), key


def continual_cartpole(tmp_path: Path, **changes) -> ppo.Args:
    """The continual-cartpole preset (C-CHAIN's setting) with `changes`, writing to tmp_path."""
    args = preset_defaults(ppo.Args, ppo.LEARNER, "continual-cartpole")
    return dataclasses.replace(
        args, **{"runs_dir": str(tmp_path), "checkpoint_every": 0, **changes}
    )


def test_reset_every_rollout_counts_every_step_in_an_episode_of_its_rollout(tmp_path):
    """With --reset-every-rollout (C-CHAIN's loop) every rollout starts new episodes and the one
    in flight at its end is cut and counted: the lengths of the episodes logged in a rollout sum
    to its 800 steps, and the rollout's return is their mean. CartPole pays 1 per step, so a
    logged return equals its length: the reward divisor (20) acts on learning only."""
    args = continual_cartpole(tmp_path, total_timesteps=2_400, shift_every=1_600, seed=5,
                              diagnostics=("none",))  # fmt: skip
    metrics = read_jsonl(ppo.train(args) / "metrics.jsonl")
    for end in (800, 1600, 2400):
        episodes = [m for m in metrics if end - 800 < m["step"] <= end and "charts/episodes" in m]
        lengths = sum(m["charts/episodic_length"] * m["charts/episodes"] for m in episodes)
        returns = sum(m["charts/episodic_return"] * m["charts/episodes"] for m in episodes)
        assert lengths == 800 and returns == lengths
        (rollout,) = [
            m["charts/rollout_return"]
            for m in metrics
            if m["step"] == end and "charts/rollout_return" in m
        ]
        count = sum(m["charts/episodes"] for m in episodes)
        assert rollout == pytest.approx(returns / count)
        assert episodes[-1]["step"] == end  # the cut episode ends with the rollout


def test_monte_carlo_value_targets_are_the_discounted_reward_to_go():
    """--value-target monte-carlo: R_t = r_t + gamma R_{t+1}, cut where an episode ends and
    bootstrapped from the value after the rollout; GAE's recursion at lambda 1 plus the values
    gives exactly that (what train() computes)."""
    rewards = np.array([[1.0], [2.0], [3.0], [4.0]])
    values = np.array([[0.5], [0.4], [0.3], [0.2]])
    over = np.array([[0.0], [1.0], [0.0], [0.0]])
    gamma, next_value = 0.9, np.array([0.7])
    returns = ppo.generalized_advantages(rewards, values, next_value, over, gamma, 1.0) + values
    expected = [1 + gamma * 2, 2, 3 + gamma * (4 + gamma * 0.7), 4 + gamma * 0.7]
    np.testing.assert_allclose(returns[:, 0], expected, rtol=1e-12)


def test_continual_presets_are_c_chains_setting():
    _, args, _ = train.parse("ppo", ["--preset", "continual-acrobot"])
    assert (args.env_id, args.shift, args.shift_every, args.total_timesteps) == (
        "Acrobot-v1", ("obs-offset",), 160_000, 1_600_000,
    )  # fmt: skip
    assert (args.obs_offset.std, args.obs_offset.first_task_unshifted) == (2.0, True)
    assert (args.hidden_sizes, args.activation, args.init) == (
        (256,) * 3,
        "leaky-relu-0.1",
        "torch-default",
    )
    assert (args.num_steps, args.num_minibatches, args.update_epochs, args.learning_rate) == (
        800,
        25,
        5,
        1e-3,
    )
    assert (args.max_episode_steps, args.reward_divisor, args.reset_every_rollout) == (
        400,
        20.0,
        True,
    )
    assert (args.adv_norm_scope, args.value_target, args.clip_vloss, args.max_grad_norm) == (
        "rollout", "monte-carlo", False, 0.0,
    )  # fmt: skip
    assert (args.norm_obs, args.norm_reward, args.adam_betas, args.adam_eps) == (
        False,
        False,
        (0.9, 0.999),
        1e-8,
    )


def test_continual_lunarlander_runs_on_real_box2d(tmp_path):
    pytest.importorskip("Box2D", reason="the box2d extra is not installed")
    args = dataclasses.replace(
        preset_defaults(ppo.Args, ppo.LEARNER, "continual-lunarlander"), runs_dir=str(tmp_path),
        checkpoint_every=0, total_timesteps=1_600, shift_every=800, diagnostics=("none",),
    )  # fmt: skip
    events = read_jsonl(ppo.train(args) / "events.jsonl")
    (shift,) = [e for e in events if e["event"] == "shift"]
    assert shift["step"] == 800 and len(shift["params"]["obs_offset"]) == 8


def test_lecun_uniform_init_is_uniform_within_sqrt_3_over_fan_in_with_zero_biases():
    """The paper's RL networks (flax's lecun_uniform): U(-b, b), b = sqrt(3 / fan_in), so the
    weights' std is 1 / sqrt(fan_in); biases zero."""
    from agents.networks import MLP

    torch.manual_seed(0)
    net = MLP(300, (200,), 50, "relu", "lecun-uniform")
    for layer in (net.hidden[0], net.out):
        bound = math.sqrt(3 / layer.in_features)
        weight = layer.weight.detach()
        assert bound * 0.99 < weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(1 / math.sqrt(layer.in_features), rel=0.03)
        assert not layer.bias.detach().any()


def test_a_tasks_end_is_measured_on_the_networks_that_finished_it_even_under_reset(tmp_path):
    """--regularizer reset re-initialises the networks when a task starts; the "end" measurement
    of the task before must still see the networks as that task left them: the ones in the
    checkpoint taken at its last step. And a run resumed from that checkpoint still measures
    that task's end (its last rollout is in the checkpoint)."""
    from diagnostics.representation import weight_norm

    args = continual_cartpole(tmp_path, regularizer="reset", total_timesteps=2_400,
                              shift_every=800, checkpoint_every=800, seed=3,
                              diagnostics=("weights",))  # fmt: skip
    run_dir = ppo.train(args)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    saved = torch.load(run_dir / "checkpoints" / "step_1600.pt", weights_only=False)
    (end,) = [m for m in metrics if m["step"] == 1600 and "shift/end/actor/weight_norm" in m]
    for net in ("actor", "critic"):
        assert end[f"shift/end/{net}/weight_norm"] == pytest.approx(
            weight_norm(saved[net].values()), rel=1e-9
        )
        assert end[f"shift/init/{net}/weight_norm"] != pytest.approx(
            end[f"shift/end/{net}/weight_norm"], rel=1e-3
        )  # the init is the re-initialised network's
    resumed = ppo.train(dataclasses.replace(args, resume=str(run_dir), total_timesteps=3_200))
    rows = [m for m in read_jsonl(resumed / "metrics.jsonl") if m["step"] == 2400]
    assert any("shift/end/actor/weight_norm" in m for m in rows)
