"""The envpool backend (envs/envpool_backend.py) against gymnasium's own vector env, on real MuJoCo.

With the reset noise off, envpool's MuJoCo and gymnasium's follow the same trajectory under the
same actions (to ~1e-9), so the backends can be compared step for step: observations, rewards,
terminations, truncations, final observations and resets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from envs import ConfigError, ShiftFlags, make_vector_env

envpool = pytest.importorskip("envpool", reason="the envpool extra is not installed")

from envs.envpool_backend import EnvpoolVectorEnv  # noqa: E402


def random_actions(space: gym.spaces.Box, steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(
        space.low, space.high, (steps, num_envs, *space.shape)
    )


def test_envpool_itself_resets_on_the_next_step():
    # What the adapter exists for: envpool 1.2 resets a finished sub-env one call late, ignoring
    # that call's action and returning reward 0. If envpool changes this, the adapter must too.
    pool = envpool.make_gymnasium("HalfCheetah-v5", num_envs=1, seed=0, max_episode_steps=3)
    pool.reset()
    for step in range(3):
        _, reward, terminated, truncated, info = pool.step(np.ones((1, 6)))
        assert truncated[0] == (step == 2) and not terminated[0] and reward[0] != 0
    _, reward, terminated, truncated, info = pool.step(np.ones((1, 6)))
    assert reward[0] == 0 and not truncated[0] and info["elapsed_step"][0] == 0


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_same_transitions_as_gymnasium_same_step_autoreset(env_id):
    # Hopper falls (terminations) and both hit a 25-step limit (truncations), at different
    # steps in the two sub-envs.
    num_envs, steps = 2, 90
    make_kwargs = dict(reset_noise_scale=0.0, max_episode_steps=25)
    pool = EnvpoolVectorEnv(env_id, num_envs, ShiftFlags(), seed=0, **make_kwargs)
    reference = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **make_kwargs) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert pool.single_observation_space.shape == reference.single_observation_space.shape
    assert pool.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = pool.reset(seed=0)
    expected_obs, _ = reference.reset(seed=0)
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)
    # Sub-env 1 acts more gently, so its episodes end at other steps than sub-env 0's.
    actions = random_actions(pool.single_action_space, steps, num_envs)
    actions[:, 1] *= 0.3
    ends = {"terminated": 0, "truncated": 0, "split": 0}
    for step in range(steps):
        obs, reward, terminated, truncated, infos = pool.step(actions[step])
        expected = reference.step(actions[step])
        np.testing.assert_allclose(obs, expected[0], atol=1e-6, err_msg=f"step {step}")
        np.testing.assert_allclose(reward, expected[1], atol=1e-6, err_msg=f"step {step}")
        np.testing.assert_array_equal(terminated, expected[2])
        np.testing.assert_array_equal(truncated, expected[3])
        done = terminated | truncated
        assert ("final_obs" in infos) == done.any() == ("final_obs" in expected[4])
        if done.any():
            np.testing.assert_array_equal(infos["_final_obs"], expected[4]["_final_obs"])
            np.testing.assert_allclose(
                np.stack(infos["final_obs"][done]),
                np.stack(expected[4]["final_obs"][done]),
                atol=1e-6,
            )
            ends["terminated"] += int(terminated.any())
            ends["truncated"] += int(truncated.any())
            ends["split"] += int(done.sum() == 1)
    assert ends["truncated"] > 0  # the rollout covered what it should
    if env_id == "Hopper-v5":  # falls, so its sub-envs' episodes end at different steps
        assert ends["terminated"] > 0 and ends["split"] > 0
    pool.close()


def test_seeds_sub_env_i_with_seed_plus_i_and_reseeds_on_reset():
    pool = EnvpoolVectorEnv("Hopper-v5", 2, ShiftFlags(), seed=0)
    first, _ = pool.reset(seed=7)
    again, _ = pool.reset(seed=7)
    other, _ = pool.reset(seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(other[0], first[1])  # sub-env 0 of seed 8 = sub-env 1 of seed 7
    pool.close()


def test_observation_and_reward_shifts_transform_the_same_transitions():
    flags = ShiftFlags(shift=("obs-permute", "reward-scale", "obs-noise"), shift_every=1000)
    plain = EnvpoolVectorEnv("HalfCheetah-v5", 2, ShiftFlags(), seed=3)
    shifted_env = make_vector_env("HalfCheetah-v5", 2, flags, 3, 5000, backend="envpool")
    gym_env = make_vector_env("HalfCheetah-v5", 2, flags, 3, 5000, backend="gymnasium")
    base, _ = plain.reset(seed=3)
    shifted, _ = shifted_env.reset(seed=3)
    gym_env.reset(seed=3)
    # The task's parameters are the gymnasium backend's: the same wrappers drew them.
    (event,) = shifted_env.shift_events
    assert event["params"] == gym_env.shift_events[0]["params"]
    permutation = np.asarray(event["params"]["obs_permutation"])
    scale, noise_std = event["params"]["reward_scale"], event["params"]["obs_noise_std"]
    assert noise_std > 0
    tolerance = 6 * noise_std  # the noise is the only difference
    assert np.abs(shifted - base[:, permutation]).max() < tolerance
    # 1,100 calls of 2 sub-envs: the shift at global step 1,000 is call 500; HalfCheetah's
    # episodes end (truncated) at call 999, so resets are covered too.
    actions = random_actions(plain.single_action_space, 1100, 2)
    for step in range(1100):
        base, reward, *_ = plain.step(actions[step])
        shifted, shifted_reward, *_ = shifted_env.step(actions[step])
        assert shifted_env.task == step // 500  # shifts at global steps 1,000 and 2,000
        params = shifted_env.shift_events[-1]["params"]
        permutation = np.asarray(params["obs_permutation"])
        scale, noise_std = params["reward_scale"], params["obs_noise_std"]
        np.testing.assert_allclose(
            shifted_reward, scale * reward, rtol=1e-12, err_msg=f"step {step}"
        )
        noise = shifted - base[:, permutation]
        assert np.abs(noise).max() < 6 * noise_std + 1e-12
    assert noise.std() > 0.3 * noise_std  # noise is really added
    for env in (plain, shifted_env, gym_env):
        env.close()


def test_bad_configurations_get_one_clear_error(monkeypatch):
    friction = ShiftFlags(shift=("friction",), shift_every=1000)
    with pytest.raises(ConfigError, match="--env-backend gymnasium"):
        make_vector_env("Ant-v5", 1, friction, 0, 5000, backend="envpool")
    with pytest.raises(ConfigError, match="did you mean: Hopper-v5"):
        make_vector_env("Hoper-v5", 1, ShiftFlags(), 0, 5000, backend="envpool")
    with pytest.raises(ConfigError, match="choose gymnasium or envpool"):
        make_vector_env("Hopper-v5", 1, ShiftFlags(), 0, 5000, backend="gympool")
    monkeypatch.setitem(sys.modules, "envpool", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[envpool\]'"):
        make_vector_env("Hopper-v5", 1, ShiftFlags(), 0, 5000, backend="envpool")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_end_to_end_on_envpool_across_an_observation_shift(tmp_path):
    from agents import ppo

    args = dataclasses.replace(
        ppo.Args(),
        env_id="HalfCheetah-v5", env_backend="envpool", num_envs=4, total_timesteps=4096,
        num_steps=256, num_minibatches=4, update_epochs=2, shift=("obs-permute",),
        shift_every=2048, regularizer="l2-er", checkpoint_every=0, runs_dir=str(tmp_path),
        diagnostics=("hessian",), cuda=False,
    )  # fmt: skip
    run_dir = ppo.train(args)
    events = read_jsonl(run_dir / "events.jsonl")
    shifts = [e for e in events if e["event"] == "shift"]
    assert [(e["step"], e["task"]) for e in shifts] == [(2048, 1)]
    assert sorted(shifts[0]["params"]["obs_permutation"]) == list(range(17))
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    updates = [m for m in metrics if "losses/value_loss" in m]
    assert [m["step"] for m in updates] == [1024 * k for k in range(1, 5)]
    assert all(math.isfinite(m["losses/value_loss"]) for m in updates)
    assert [m["charts/task"] for m in updates] == [0, 0, 1, 1]
    # HalfCheetah's 1,000-step episodes end (truncated) within 4 x 1,024 steps of each sub-env.
    returns = [m for m in metrics if "charts/episodic_return" in m]
    assert len(returns) == 4 and all(m["charts/episodic_length"] == 1000 for m in returns)
    assert len(list((run_dir / "diagnostics").glob("step_*.npz"))) == 3


def test_sac_end_to_end_on_envpool_across_a_reward_shift(tmp_path):
    from agents import sac

    args = dataclasses.replace(
        sac.Args(),
        env_id="Hopper-v5", env_backend="envpool", num_envs=2, total_timesteps=800,
        learning_starts=200, batch_size=32, hidden_sizes=(32, 32), shift=("reward-sign",),
        shift_at=(400,), log_every=100, diagnostics=("none",), checkpoint_every=0,
        runs_dir=str(tmp_path), cuda=False,
    )  # fmt: skip
    run_dir = sac.train(args)
    events = read_jsonl(run_dir / "events.jsonl")
    assert [(e["step"], e["params"]) for e in events if e["event"] == "shift"] == [
        (400, {"reward_sign": -1})
    ]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    logs = [m for m in metrics if "losses/qf1_loss" in m]
    assert logs and all(math.isfinite(m["losses/qf1_loss"]) for m in logs)
    assert any("charts/episodic_return" in m for m in metrics)  # Hopper falls within 400 steps
