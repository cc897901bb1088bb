"""SAC: its pieces against their formulas, its replay buffer on a real (tiny) gymnasium env, and
train.py sac end to end on real MuJoCo with shifts, regularizers, diagnostics and (offline) wandb."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import run_helpers
import torch
from run_helpers import run_cli_in_process

import train
from agents import sac
from agents.checkpoints import load_checkpoint
from agents.networks import LOG_STD_MAX, LOG_STD_MIN, SquashedGaussianActor, TwinCritic
from agents.replay import ReplayBuffer
from diagnostics import DiagnosticsConfig
from regularizers import CBPConfig, ERankConfig, L2Config, ParsevalConfig, ReDoConfig
from validation import ConfigError

REPO = Path(__file__).resolve().parents[1]


class CounterEnv(gym.Env):
    """A tiny real env whose observations say where they are: [episode, t].

    Even episodes terminate when t reaches 3; the others run into the time limit of 5 steps
    (registered below) and are truncated. A sub-env numbers its episodes 10 * k + (its reset
    seed mod 10), so an observation names its episode uniquely across sub-envs.
    """

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.episodes, self.offset, self.t = -1, None, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.offset = seed % 10
        self.episodes += 1
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.array([10 * self.episodes + self.offset, self.t], np.float32)

    def step(self, action):
        self.t += 1
        terminated = self.episodes % 2 == 0 and self.t == 3
        return self._obs(), float(self.t) + float(action[0]), terminated, False, {}


if "SacCounter-v0" not in gym.registry:
    gym.register("SacCounter-v0", entry_point=CounterEnv, max_episode_steps=5)


def tiny_args(tmp_path: Path, **overrides) -> sac.Args:
    """A fast configuration on the counter env: 16x16 networks, batch 16, no diagnostics."""
    base = dict(
        env_id="SacCounter-v0",
        total_timesteps=200,
        learning_starts=32,
        batch_size=16,
        hidden_sizes=(16, 16),
        log_every=20,
        diagnostics=("none",),
        checkpoint_every=0,
        runs_dir=str(tmp_path),
        cuda=False,
    )
    base.update(overrides)
    return dataclasses.replace(sac.Args(), **base)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(*argv: str, runs_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_helpers.run_cli(*argv, "--runs-dir", str(runs_dir), timeout=timeout)


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = list(runs_dir.iterdir())
    return run_dir


# --- The pieces, against their formulas -------------------------------------------------------


def test_frozen_critic_gives_the_same_q_values_and_gradients_only_to_its_input():
    torch.manual_seed(0)
    critic = TwinCritic(5, 2, (32, 24), "relu", "torch-default", layer_norm=True)
    x = torch.randn(16, 7, requires_grad=True)
    q, features = critic(x)
    assert q.shape == (2, 16) and [h.shape[1] for h in features] == [32, 24, 32, 24]
    torch.testing.assert_close(q[0], critic.q1(x)[0].squeeze(-1))
    torch.testing.assert_close(q[1], critic.q2(x)[0].squeeze(-1))
    frozen = critic.frozen(x)
    torch.testing.assert_close(frozen, q)
    frozen.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_twin_critic_unit_layers_select_each_networks_units_in_the_order_of_its_features():
    torch.manual_seed(6)
    critic = TwinCritic(3, 1, (8, 6), "relu", "torch-default", layer_norm=True)
    x = torch.randn(32, 4)
    layers = critic.unit_layers()
    with torch.no_grad():
        before = critic(x)[1]
    assert [layer.width() for layer in layers] == [h.shape[1] for h in before] == [8, 6, 8, 6]
    for i, layer in enumerate(layers):
        with torch.no_grad():
            # unit 2's weight row, bias, LayerNorm gain and shift: relu(0 * norm - 1) = 0
            for param, value in zip(layer.incoming, (0.0, 0.0, 0.0, -1.0), strict=True):
                param[2] = value
            after = critic(x)[1]
        assert (after[i][:, 2] == 0).all() and (before[i][:, 2] != 0).any(), i
        network = i // 2
        for j in range(4):
            if j // 2 != network:  # the other Q network is untouched
                torch.testing.assert_close(after[j], before[j])
        critic.reset_parameters()
        with torch.no_grad():
            before = critic(x)[1]


def test_reset_draws_two_different_networks_each_like_an_mlp():
    torch.manual_seed(1)
    critic = TwinCritic(11, 3, (256, 256), "relu", "torch-default")
    first, second = critic.q1.hidden[1].weight, critic.q2.hidden[1].weight
    assert not torch.equal(first, second)
    bound = 1 / math.sqrt(256)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weight in (first, second):
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound


def test_squashed_log_prob_matches_torch_distributions():
    torch.manual_seed(2)
    mean, log_std = torch.randn(100, 3, dtype=torch.float64), torch.randn(100, 3).double() - 1
    noise = torch.randn(100, 3, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    bias = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    action, log_prob = sac.squashed_gaussian(torch.cat([mean, log_std], -1), noise, scale, bias)
    normal = torch.distributions.Normal(mean, log_std.exp())
    pre_tanh = mean + log_std.exp() * noise
    expected = normal.log_prob(pre_tanh) - torch.log(scale * (1 - torch.tanh(pre_tanh) ** 2) + 1e-6)
    torch.testing.assert_close(log_prob, expected.sum(-1))
    torch.testing.assert_close(action, torch.tanh(pre_tanh) * scale + bias)
    assert ((action >= bias - scale) & (action <= bias + scale)).all()


def test_actor_log_std_is_bounded_like_cleanrl():
    actor = SquashedGaussianActor(4, 2, (8,), "relu", "torch-default", -np.ones(2), np.ones(2))
    with torch.no_grad():
        actor.trunk.out.bias[2:] = torch.tensor([-100.0, 100.0])
    out, features = actor(torch.zeros(1, 4))
    torch.testing.assert_close(out[0, 2:], torch.tensor([LOG_STD_MIN, LOG_STD_MAX]))
    assert len(features) == 1 and features[0].shape == (1, 8)


def test_polyak_update_is_the_formula():
    torch.manual_seed(3)
    sources = [torch.randn(2, 5, 7), torch.randn(2, 5)]
    targets = [torch.randn(2, 5, 7), torch.randn(2, 5)]
    before = [t.double() for t in targets]
    tau = 0.005
    sac.polyak_update(targets, sources, tau)
    for target, old, source in zip(targets, before, sources, strict=True):
        expected = (1 - tau) * old + tau * source.double()
        torch.testing.assert_close(target.double(), expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(target.double(), old)


def test_soft_td_target_bootstraps_unless_terminated():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q = torch.tensor([[5.0, 6.0, 7.0], [4.0, 8.0, 9.0]])
    next_log_pi = torch.tensor([0.5, 0.5, -1.0])
    targets = sac.soft_td_target(rewards, terminated, next_q, next_log_pi, 0.2, 0.9)
    expected = [1 + 0.9 * (4.0 - 0.1), 2.0, 3 + 0.9 * (7.0 + 0.2)]
    torch.testing.assert_close(targets, torch.tensor(expected))


@pytest.mark.parametrize(("log_std", "alpha_goes"), [(-4.5, "up"), (0.0, "down")])
def test_alpha_rises_when_entropy_is_below_target_and_falls_when_above(log_std, alpha_goes):
    # A real actor whose output is mean 0 and a chosen log-std: log-std -4.5 gives entropy ~ -3
    # per dimension, far below the target -1 per dimension; log-std 0 gives tanh(N(0, 1)),
    # entropy ~ +0.5 per dimension, above it.
    torch.manual_seed(4)
    act_dim = 3
    actor = SquashedGaussianActor(
        5, act_dim, (16,), "relu", "torch-default", -np.ones(act_dim), np.ones(act_dim)
    )
    raw = math.atanh((log_std - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1)
    with torch.no_grad():
        actor.trunk.out.weight.zero_()
        actor.trunk.out.bias[:act_dim] = 0.0
        actor.trunk.out.bias[act_dim:] = raw
    out, _ = actor(torch.randn(512, 5))
    _, log_pi = sac.squashed_gaussian(
        out, torch.randn(512, act_dim), actor.action_scale, actor.action_bias
    )
    entropy, target_entropy = -log_pi.mean().item(), -float(act_dim)
    assert (entropy < target_entropy) == (alpha_goes == "up")

    log_alpha = torch.tensor(math.log(0.2), requires_grad=True)
    optimizer = torch.optim.Adam([log_alpha], lr=1e-2)
    before = log_alpha.item()
    for _ in range(3):
        loss = sac.alpha_objective(log_alpha, log_pi, target_entropy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (log_alpha.item() > before) == (alpha_goes == "up")
    assert log_pi.grad_fn is not None and actor.trunk.out.bias.grad is None  # log_pi is detached


def test_replay_buffer_wraps_around_and_returns_the_latest_rows_in_order():
    buffer = ReplayBuffer(5, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    for step in range(4):  # 2 transitions per step: 8 written, the last 5 kept
        values = torch.arange(2.0) + 2 * step
        buffer.add(
            values[:, None].expand(2, 2),
            values[:, None],
            torch.stack([values, 0 * values, values, values], 1),
        )
    assert buffer.size == 5 and buffer.pos == 3
    assert buffer.recent(5)[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert set(buffer.sample(200)[:, 0].tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}
    fields = buffer.unpack(buffer.recent(2))
    assert fields["obs_actions"].shape == (2, 3) and fields["next_obs"].tolist() == [[6, 6], [7, 7]]
    saved = buffer.state_dict()
    restored = ReplayBuffer(5, 2, 1, torch.device("cpu"))
    restored.load_state_dict(saved)
    assert torch.equal(restored.recent(5), buffer.recent(5))
    buffer.clear()
    assert buffer.size == 0


# --- The replay buffer inside a real run --------------------------------------------------------


def test_buffer_holds_every_transition_with_its_real_next_observation(tmp_path):
    run = sac.train(tiny_args(tmp_path, num_envs=2, total_timesteps=120, save_buffer=True))
    state = load_checkpoint(run)
    rows = state["buffer"]["rows"]
    buffer = ReplayBuffer(len(rows), 2, 1, torch.device("cpu"))
    buffer.load_state_dict(state["buffer"])
    data = buffer.unpack(rows)
    obs, next_obs, terminated = data["obs"], data["next_obs"], data["terminated"]
    assert len(rows) == 120  # every transition of the run, none dropped
    # Never a transition into the next episode: s' is s one step later in the same episode.
    torch.testing.assert_close(next_obs, obs + torch.tensor([0.0, 1.0]), rtol=0, atol=0)
    episode = obs[:, 0] // 10
    ends_by_termination = (episode % 2 == 0) & (next_obs[:, 1] == 3)
    assert torch.equal(terminated.bool(), ends_by_termination)
    truncated = (episode % 2 == 1) & (next_obs[:, 1] == 5)
    assert ends_by_termination.sum() >= 10 and truncated.sum() >= 10
    # The reward is t' + action: the row's action is the action taken in that transition.
    torch.testing.assert_close(data["rewards"], next_obs[:, 1] + data["actions"][:, 0])

    # Targets from these rows: termination does not bootstrap, truncation does, from the real
    # final observation (t = 5, which no reset ever returns).
    actor = SquashedGaussianActor(2, 1, (16, 16), "relu", "torch-default", -np.ones(1), np.ones(1))
    target_critic = TwinCritic(2, 1, (16, 16), "relu", "torch-default")
    actor.load_state_dict(state["actor"])
    target_critic.load_state_dict(state["critic_target"])
    with torch.no_grad():
        next_action, next_log_pi = sac.squashed_gaussian(
            actor(next_obs)[0], torch.zeros(len(rows), 1), actor.action_scale, actor.action_bias
        )
        next_q, _ = target_critic(torch.cat([next_obs, next_action], 1))
        targets = sac.soft_td_target(data["rewards"], terminated, next_q, next_log_pi, 0.3, 0.99)
    torch.testing.assert_close(targets[ends_by_termination], data["rewards"][ends_by_termination])
    soft_value = torch.minimum(next_q[0], next_q[1]) - 0.3 * next_log_pi
    torch.testing.assert_close(
        targets[truncated], data["rewards"][truncated] + 0.99 * soft_value[truncated]
    )
    assert (soft_value[truncated] != 0).all()


@pytest.mark.parametrize(("mode", "updates_after_shift"), [("keep", 150), ("flush", 51)])
def test_buffer_at_shift_keep_or_flush(tmp_path, mode, updates_after_shift):
    # Shift at step 200 (reward sign flips): keep goes on updating every step; flush empties
    # the buffer, and updates wait until it holds --learning-starts (100) transitions of the
    # new task again (transitions 200..299: updates at steps 300..350).
    run = sac.train(
        tiny_args(
            tmp_path,
            total_timesteps=350,
            learning_starts=100,
            shift=("reward-sign",),
            shift_at=(200,),
            buffer_at_shift=mode,
            log_every=50,
        )
    )
    logged = {m["step"]: m for m in read_jsonl(run / "metrics.jsonl") if "charts/updates" in m}
    updates = {step: m["charts/updates"] for step, m in logged.items()}
    assert updates[200] == 101  # one per step once the buffer held 100 transitions (step 100)
    assert updates[350] - updates[200] == updates_after_shift
    assert logged[250]["charts/buffer_size"] == (250 if mode == "keep" else 50)


# --- Regularizers: each method acts on both networks, each around its own updates -------------


def final_state(tmp_path: Path, **overrides) -> dict:
    return load_checkpoint(sac.train(tiny_args(tmp_path, **overrides)))


def weight_norms(state: dict) -> dict[str, float]:
    return {
        net: math.sqrt(
            sum(float(v.square().sum()) for k, v in state[net].items() if "action_" not in k)
        )  # the actor's action scale and bias are buffers, not weights
        for net in ("actor", "critic")
    }


def test_l2_decays_both_networks(tmp_path):
    # Adam moves a weight by ~lr per step whatever the gradient's size, so a decay that dominates
    # the gradient pulls every weight toward zero by ~lr per update of its network.
    fast = dict(policy_lr=1e-2, q_lr=1e-2)
    plain = weight_norms(final_state(tmp_path / "none", **fast))
    decayed = weight_norms(
        final_state(tmp_path / "l2", regularizer="l2", l2=L2Config(weight_decay=10.0), **fast)
    )
    for net in ("actor", "critic"):
        assert decayed[net] < 0.5 * plain[net], (net, decayed, plain)


def test_shrink_perturb_shrinks_both_networks_at_a_shift(tmp_path):
    flags = sac.RegularizerFlags()
    shrunk = final_state(
        tmp_path / "sp",
        regularizer="shrink-perturb",
        shrink_perturb=dataclasses.replace(flags.shrink_perturb, shrink=0.01, noise=0.0),
        shift=("reward-sign",),
        shift_at=(199,),
        total_timesteps=200,
    )
    plain = final_state(tmp_path / "plain", shift=("reward-sign",), shift_at=(199,))
    shrunk_norms, plain_norms = weight_norms(shrunk), weight_norms(plain)
    for net in ("actor", "critic"):  # shrunk to ~1% at the shift; one update after it
        assert shrunk_norms[net] < 0.2 * plain_norms[net], (net, shrunk_norms, plain_norms)
    # the actor's and the critic's regularizers draw from different streams
    streams = shrunk["regularizer"]
    assert not torch.equal(streams["actor"]["rng_state"], streams["critic"]["rng_state"])


@pytest.mark.parametrize(
    ("method", "overrides", "reports"),
    [
        ("none", {}, ()),
        ("l2", {}, ()),
        ("l2-init", {}, ("regularizer/actor_penalty", "regularizer/critic_penalty")),
        ("erank", {}, ("regularizer/erank/actor", "regularizer/erank/critic")),
        ("l2-er", {}, ("regularizer/erank/actor", "regularizer/erank/critic")),
        ("shrink-perturb", {}, ("regularizer/shrink_perturb/applied",)),
        (
            "cbp",
            {"cbp": CBPConfig(replacement_rate=0.2, maturity=5)},
            ("regularizer/cbp/replaced",),
        ),
        ("redo", {"redo": ReDoConfig(tau=0.5, every=10)}, ("regularizer/redo/recycled",)),
        ("layernorm-l2", {}, ()),
        ("spectral", {}, ("regularizer/actor_penalty", "regularizer/critic_penalty")),
        ("reset", {}, ("regularizer/reset/applied",)),
        ("parseval", {}, ("regularizer/actor_penalty", "regularizer/critic_penalty")),
    ],
)
def test_every_regularizer_runs_on_both_networks(tmp_path, method, overrides, reports):
    if method in ("erank", "l2-er"):
        overrides = {**overrides, "erank": ERankConfig(every=5)}
    args = tiny_args(
        tmp_path, regularizer=method, total_timesteps=100, learning_starts=16, log_every=10,
        shift=("reward-sign",), shift_at=(50,), **overrides,
    )  # fmt: skip
    run = sac.train(args)
    state = load_checkpoint(run)
    for net in ("actor", "critic", "critic_target"):
        assert all(torch.isfinite(v).all() for v in state[net].values())
    has_norms = any("norms" in key for key in state["critic"])
    assert has_norms == (method == "layernorm-l2") and has_norms == any(
        "norms" in key for key in state["actor"]
    )
    metrics = read_jsonl(run / "metrics.jsonl")
    for key in reports:
        values = [m[key] for m in metrics if key in m]
        assert values and max(values) > 0, (key, values)


# --- Runs: end to end, resume, interruption, divergence, bad input ----------------------------


@pytest.mark.slow
def test_end_to_end_across_a_shift_with_diagnostics_and_tracking(tmp_path):
    result = run_cli(
        "sac", "--env-id", "Hopper-v5", "--total-timesteps", "1200", "--learning-starts", "300",
        "--hidden-sizes", "32", "32", "--batch-size", "64", "--shift", "friction",
        "--shift-at", "600", "--regularizer", "l2-er", "--erank.every", "20",
        "--checkpoint-every", "600", "--log-every", "100", "--track",
        "--diag.batch-size", "256", "--diag.lanczos-order", "20", "--diag.top-k", "3",
        "--diag.gram-batch", "8", "--diag.min-init-samples", "64",
        runs_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["regularizer"] == "l2-er" and config["shift_at"] == [600]

    events = read_jsonl(run_dir / "events.jsonl")
    shifts = [e for e in events if e["event"] == "shift"]
    assert [(e["step"], e["task"]) for e in shifts] == [(600, 1)]
    assert 0.02 <= shifts[0]["params"]["friction_scale"] <= 2.0
    assert not [e for e in events if e["event"] == "diagnostic_skipped"]

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    logs = [m for m in metrics if "losses/qf1_loss" in m]
    assert [m["step"] for m in logs] == list(range(400, 1201, 100))  # first actor update: 301
    assert all(math.isfinite(m["losses/qf1_loss"] + m["losses/actor_loss"]) for m in logs)
    assert [m["charts/task"] for m in logs][2:5] == [0, 1, 1]
    assert any("regularizer/erank/actor" in m for m in logs)
    assert any("regularizer/erank/critic" in m for m in logs)
    assert any("charts/episodic_return" in m for m in metrics)

    # Diagnostics: the init of task 0, the end of task 0 and the init of task 1 (on the first
    # 256 transitions after the shift, with the parameters of the shift), the end of task 1.
    files = sorted(p.name for p in (run_dir / "diagnostics").glob("*.npz"))
    assert files == ["step_0000000000.npz", "step_0000000600.npz", "step_0000001200.npz"]
    shift = np.load(run_dir / "diagnostics" / "step_0000000600.npz")
    assert (int(shift["task_end"]), int(shift["task_init"])) == (0, 1)
    at_shift = next(m for m in metrics if m["step"] == 600 and "shift/end/seconds" in m)
    for phase in ("end", "init"):
        for net in ("actor", "critic"):
            assert np.isfinite(shift[f"{phase}/{net}/hessian/top"]).all()
            assert 0 <= at_shift[f"shift/{phase}/{net}/hessian/eps_rank@0.1"] <= 1
            assert f"shift/{phase}/{net}/kfac/layer0/A_lambda_max" in at_shift
        assert len([k for k in at_shift if k.startswith(f"shift/{phase}/critic/features/layer")])
    assert at_shift["shift/init/samples"] == 256

    state = load_checkpoint(run_dir)
    assert state["global_step"] == 1200 and state["task"] == 1 and state["buffer"] is None
    assert sorted(p.stem for p in (run_dir / "checkpoints").glob("step_*.pt")) == [
        "step_1200",
        "step_600",
    ]
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run"


def test_resume_continues_the_same_run_with_its_buffer(tmp_path):
    first = sac.train(tiny_args(tmp_path, total_timesteps=100, save_buffer=True))
    saved = load_checkpoint(first)
    assert saved["updates"] == 100 - 31  # an update per step once the buffer held 32
    resumed = sac.train(dataclasses.replace(saved["args"], resume=str(first), total_timesteps=200))
    assert resumed == first and len(list(tmp_path.iterdir())) == 1
    state = load_checkpoint(first)
    assert state["global_step"] == 200 and state["updates"] == 200 - 31
    assert torch.equal(state["buffer"]["rows"][:100], saved["buffer"]["rows"])
    events = read_jsonl(first / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [100]
    assert not [e for e in events if e["event"] == "warning"]

    # Without a saved buffer the resumed run refills it before updating again.
    other = sac.train(tiny_args(tmp_path / "nobuf", total_timesteps=100))
    sac.train(
        dataclasses.replace(load_checkpoint(other)["args"], resume=str(other), total_timesteps=200)
    )
    assert load_checkpoint(other)["updates"] == 2 * (100 - 31)
    assert [e["event"] for e in read_jsonl(other / "events.jsonl")].count("warning") == 1


def test_sigterm_leaves_logs_and_a_resumable_checkpoint(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "sac", "--env-id", "Hopper-v5", "--total-timesteps", "1000000",
         "--learning-starts", "100", "--hidden-sizes", "16", "--log-every", "100",
         "--diagnostics", "none", "--save-buffer", "--runs-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(tmp_path.glob("*/metrics.jsonl"))
        if found and "losses/qf1_loss" in found[0].read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "interrupted" in stderr and "--resume" in stderr
    run_dir = only_run_dir(tmp_path)
    assert read_jsonl(run_dir / "events.jsonl")[-1]["event"] == "interrupted"
    state = load_checkpoint(run_dir)
    assert state["global_step"] >= 200 and len(state["buffer"]["rows"]) == state["global_step"]


def test_a_diverging_run_stops_with_one_error_and_keeps_its_logs(tmp_path):
    with pytest.raises(ConfigError, match="training diverged at step") as error:
        sac.train(tiny_args(tmp_path, q_lr=1e30, checkpoint_every=40))
    assert "\n" not in str(error.value)
    run_dir = only_run_dir(tmp_path)
    assert read_jsonl(run_dir / "events.jsonl")[-1]["event"] == "diverged"
    assert read_jsonl(run_dir / "metrics.jsonl"), "the metrics written before are kept"
    for path in (run_dir / "checkpoints").glob("*.pt"):  # no checkpoint holds NaN weights
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["critic"].values())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (dict(learning_starts=500, buffer_size=100), "--learning-starts"),
        (dict(tau=0.0), "--tau"),
        (dict(q_lr=float("nan")), "--q-lr"),
        (dict(policy_frequency=0), "--policy-frequency"),
        (dict(diag=DiagnosticsConfig(joint=True), diagnostics=("hessian",)), "--diag.joint"),
        (dict(env_id="Hoper-v5"), "did you mean"),
        (dict(regularizer="parseval", parseval=ParsevalConfig(last_layer_only=True)), "last-layer"),
    ],
)
def test_bad_settings_get_one_clear_error(tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        sac.train(tiny_args(tmp_path, **overrides))


def test_cli_help_and_errors(tmp_path):
    result = run_cli_in_process("sac", "--help")
    assert result.returncode == 0
    for flag in ("--buffer-at-shift", "--save-buffer", "--policy-frequency", "--erank.every"):
        assert flag in result.stdout
    result = run_cli_in_process("sac", "--tau", "2", "--runs-dir", str(tmp_path))
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "--tau" in line and "Traceback" not in result.stderr
    result = run_cli_in_process("sac", "--seeds", "1", "1", "--runs-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: --seeds: each seed once, got [1, 1]")
    assert len(result.stderr.splitlines()) == 1 and not any(tmp_path.iterdir())


def test_demo_preset_resolves():
    _, args, _ = train.parse("sac", ["--preset", "demo"])
    assert (args.env_id, args.shift, args.regularizer) == ("Hopper-v5", ("friction",), "l2-er")
    assert args.shift_at[0] < args.total_timesteps and args.learning_starts < args.shift_at[0]


def test_diagnostics_do_not_change_training(tmp_path):
    """Bit-identical networks, optimizers and random streams with all diagnostics on and off."""
    finals = []
    measured = ("hessian", "ggn", "kfac", "gram", "features", "weights", "readiness", "probe")
    for measures in (("none",), measured):
        run = sac.train(
            tiny_args(
                tmp_path / measures[0],
                diagnostics=measures,
                shift=("reward-sign",),
                shift_at=(100,),
                diag=DiagnosticsConfig()
                if measures == ("none",)
                else DiagnosticsConfig(
                    batch_size=64,
                    lanczos_order=10,
                    top_k=2,
                    gram_batch=4,
                    every=50,
                    min_init_samples=32,
                    probe_steps=5,
                ),  # fmt: skip
            )
        )
        finals.append(load_checkpoint(run))
    off, on = finals
    (run_dir,) = (tmp_path / "hessian").iterdir()
    logged = read_jsonl(run_dir / "metrics.jsonl")
    drops = [m for m in logged if "shift/init/critic/probe/drop" in m]
    assert len(drops) == 2 and all("shift/init/actor/probe/drop" in m for m in drops)
    assert all(m["shift/init/critic/probe/drop"] > 0 for m in drops)
    skipped = [
        e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "diagnostic_skipped"
    ]
    assert not skipped, skipped
    assert len(list((tmp_path / "hessian").glob("*/diagnostics/*.npz"))) == 3
    for key in ("actor", "critic", "critic_target"):
        for name, value in off[key].items():
            assert torch.equal(value, on[key][name]), f"{key}.{name} differs"
    for key in ("actor_optimizer", "q_optimizer", "alpha_optimizer"):
        for a, b in zip(off[key]["state"].values(), on[key]["state"].values(), strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(off["rng"]["torch"], on["rng"]["torch"])
    assert torch.equal(off["log_alpha"], on["log_alpha"])


def test_snapshot_optimizers_step_the_copies_as_the_live_optimizers_step_the_networks():
    """The plasticity probe trains a snapshot's networks with copies of the live optimizers:
    one step of a copy on its networks equals one step of the live optimizer on the live ones,
    and the live ones are untouched by it."""
    torch.manual_seed(3)
    actor = SquashedGaussianActor(3, 2, (8,), "relu", "torch-default", -np.ones(2), np.ones(2))
    critic = TwinCritic(3, 2, (8, 8), "relu", "torch-default")
    nets = sac.Nets(actor, critic, copy.deepcopy(critic), torch.tensor(0.1))
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=1e-2)
    q_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    x, y = torch.randn(16, 5), torch.randn(16)

    def q_step(net, optimizer):
        optimizer.zero_grad()
        (net(x)[0] - y).square().mean(1).sum().backward()
        optimizer.step()

    for _ in range(3):  # give Adam a history worth copying
        q_step(critic, q_optimizer)
    snap = nets.snapshot(actor_optimizer, q_optimizer)
    q_step(snap.critic, snap.optimizers[1])
    copied = [p.detach().clone() for p in snap.critic.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(copied, critic.parameters(), strict=True))
    q_step(critic, q_optimizer)
    for got, want in zip(copied, critic.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    actor_copy = snap.optimizers[0]
    assert {id(p) for g in actor_copy.param_groups for p in g["params"]} == {
        id(p) for p in snap.actor.parameters()
    }


def test_loss_closures_are_the_training_losses():
    torch.manual_seed(5)
    actor = SquashedGaussianActor(3, 2, (8, 8), "relu", "torch-default", -np.ones(2), np.ones(2))
    critic = TwinCritic(3, 2, (8, 8), "relu", "torch-default")
    nets = sac.Nets(
        actor, critic, TwinCritic(3, 2, (8, 8), "relu", "torch-default"), torch.tensor(0.1)
    )
    buffer = ReplayBuffer(64, 3, 2, torch.device("cpu"))
    buffer.add(
        torch.randn(64, 3),
        torch.rand(64, 2),
        torch.cat([torch.randn(64, 1), (torch.rand(64, 1) < 0.2).float(), torch.randn(64, 3)], 1),
    )
    data = buffer.unpack(buffer.recent(64))
    noise = torch.randn(2, 64, 2)
    closures = sac.loss_closures(nets, data, noise, 0.99, 64)
    with torch.no_grad():
        next_action, next_log_pi = sac.squashed_gaussian(
            actor(data["next_obs"])[0], noise[1], actor.action_scale, actor.action_bias
        )
        next_q, _ = nets.critic_target(torch.cat([data["next_obs"], next_action], 1))
        targets = sac.soft_td_target(
            data["rewards"], data["terminated"], next_q, next_log_pi, 0.1, 0.99
        )
        q, _ = critic(data["obs_actions"])
        pi, log_pi = sac.squashed_gaussian(
            actor(data["obs"])[0], noise[0], actor.action_scale, actor.action_bias
        )
        actor_loss = sac.actor_objective(log_pi, critic(torch.cat([data["obs"], pi], 1))[0], 0.1)
    torch.testing.assert_close(closures["critic"].loss(), (q - targets).square().mean(1).sum())
    torch.testing.assert_close(closures["actor"].loss(), actor_loss)


# --- Learning -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sac_learns_inverted_pendulum(tmp_path):
    """A learning claim, tested by learning: the return clearly rises within CI's budget."""
    args = dataclasses.replace(
        sac.Args(),
        env_id="InvertedPendulum-v5", total_timesteps=4000, learning_starts=1000,
        hidden_sizes=(64, 64), seed=1, diagnostics=("none",), checkpoint_every=0,
        save_buffer=True, runs_dir=str(tmp_path), cuda=False,
    )  # fmt: skip
    run_dir = sac.train(args)
    returns = [
        m["charts/episodic_return"]
        for m in read_jsonl(run_dir / "metrics.jsonl")
        if "charts/episodic_return" in m
    ]
    first, last = np.mean(returns[:20]), np.mean(returns[-10:])
    assert last > 5 * first and last > 40, (first, last)

    # On real MuJoCo: a terminated transition ends at the real final state (the pole past
    # 0.2 rad, which is why it terminated), and the next row starts a fresh episode near 0.
    rows = load_checkpoint(run_dir)["buffer"]["rows"]
    data = ReplayBuffer(len(rows), 4, 1, torch.device("cpu")).unpack(rows)
    ended = torch.nonzero(data["terminated"][:-1] == 1).squeeze(1)
    assert len(ended) > 20
    assert (data["next_obs"][ended, 1].abs() > 0.2).all()
    assert (data["obs"][ended + 1, 1].abs() < 0.05).all()
