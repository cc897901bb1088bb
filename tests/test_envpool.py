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
import mujoco
import numpy as np
import pytest

from envs import (
    ScaleRange,
    ShiftFlags,
    ShiftingVectorEnv,
    ShiftSchedule,
    make_vector_env,
)
from envs.vector import wrap_shifts
from validation import ConfigError

envpool = pytest.importorskip("envpool", reason="the envpool extra is not installed")

from envs.envpool_backend import EnvpoolVectorEnv, PoolModel, envpool_xml_path  # noqa: E402


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
    make_vector_env("Ant-v5", 1, friction, 0, 5000, backend="envpool").close()  # runs now
    # dm_control's tasks have no gymnasium MuJoCo XML to rebuild a pool from.
    with pytest.raises(ConfigError, match="--env-backend gymnasium"):
        make_vector_env("CheetahRun-v1", 1, friction, 0, 5000, backend="envpool")
    with monkeypatch.context() as patch:
        patch.delattr(mujoco.MjsCompiler, "savecompiled")  # as in mujoco < 3.16
        with pytest.raises(ConfigError, match="needs mujoco >= 3.16"):
            make_vector_env("Ant-v5", 1, friction, 0, 5000, backend="envpool")
    with pytest.raises(ConfigError, match="did you mean: Hopper-v5"):
        make_vector_env("Hoper-v5", 1, ShiftFlags(), 0, 5000, backend="envpool")
    with pytest.raises(ConfigError, match="choose gymnasium or envpool"):
        make_vector_env("Hopper-v5", 1, ShiftFlags(), 0, 5000, backend="gympool")
    monkeypatch.setitem(sys.modules, "envpool", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[envpool\]'"):
        make_vector_env("Hopper-v5", 1, ShiftFlags(), 0, 5000, backend="envpool")


PHYSICS_ARRAYS = ("geom_friction", "body_mass", "body_inertia", "opt.gravity", "actuator_gear")
"""What the physics shifts edit (envs/physics.py); MassShift's mj_setConst derives the rest."""


def model_array(model: mujoco.MjModel, name: str) -> np.ndarray:
    owner, _, field = name.rpartition(".")
    return np.asarray(getattr(getattr(model, owner) if owner else model, field))


def gymnasium_reference(env_id: str, num_envs: int, flags: ShiftFlags, seed: int, **make_kwargs):
    """The gymnasium backend's sub-envs (same wrappers, same seeds), tasks set by hand."""
    return gym.vector.SyncVectorEnv(
        [
            lambda i=i: wrap_shifts(gym.make(env_id, **make_kwargs), flags, seed, i)
            for i in range(num_envs)
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def assert_same_steps(pool, reference, actions, label: str) -> None:
    for step, action in enumerate(actions):
        obs, reward, terminated, truncated, infos = pool.step(action)
        expected = reference.step(action)
        np.testing.assert_allclose(obs, expected[0], atol=1e-6, err_msg=f"{label} step {step}")
        np.testing.assert_allclose(reward, expected[1], atol=1e-6, err_msg=f"{label} step {step}")
        np.testing.assert_array_equal(terminated, expected[2], err_msg=f"{label} step {step}")
        np.testing.assert_array_equal(truncated, expected[3], err_msg=f"{label} step {step}")
        if "final_obs" in expected[4]:
            done = expected[4]["_final_obs"]
            np.testing.assert_array_equal(infos["_final_obs"], done)
            np.testing.assert_allclose(
                np.stack(infos["final_obs"][done]),
                np.stack(expected[4]["final_obs"][done]),
                atol=1e-6,
            )


def numeric_arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    arrays = {f"opt.{name}": model_array(model, f"opt.{name}") for name in ("gravity", "timestep")}
    for name in dir(model):
        value = getattr(model, name)
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            arrays[name] = value
    return arrays


@pytest.mark.parametrize("env_id", ["Ant-v5", "Walker2d-v5"])
def test_pool_model_saves_every_number_of_the_model_as_it_is_now(env_id):
    pool_model = PoolModel(envpool_xml_path(env_id))
    original = mujoco.MjModel.from_xml_path(str(envpool_xml_path(env_id)))

    def assert_compiles_to(xml_kwargs: dict, expected: mujoco.MjModel) -> None:
        path = Path(xml_kwargs["base_path"], "mujoco", "assets_gym", xml_kwargs["xml_file"])
        written = numeric_arrays(mujoco.MjModel.from_xml_path(str(path)))
        for name, value in numeric_arrays(expected).items():
            if name != "actuator_acc0":  # stale in a model whose gear was edited in place
                np.testing.assert_allclose(
                    written[name], value, rtol=1e-12, atol=1e-12, err_msg=name
                )

    # Explicit inertials (needed to save a changed mass) compile to the original model.
    assert_compiles_to(pool_model.write_xml(), original)
    model, data = pool_model.model, pool_model.data
    model.geom_friction[:, 0] *= 1.6
    model.body_mass[:] *= 1.6
    model.body_inertia[:] *= 1.6
    mujoco.mj_setConst(model, data)
    model.opt.gravity[:] *= 1.6
    model.actuator_gear[:, 0] *= 1.6
    assert_compiles_to(pool_model.write_xml(), model)
    # Back to the base values: the XML must follow (copy_back skips values it compiled to).
    for name in PHYSICS_ARRAYS:
        model_array(model, name)[:] = model_array(original, name)
    mujoco.mj_setConst(model, data)
    assert_compiles_to(pool_model.write_xml(), original)
    pool_model.close()


@pytest.mark.parametrize("kind", ["friction", "mass", "gravity", "gear"])
@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_physics_shift_rebuilds_the_pool_with_the_gymnasium_wrappers_model(env_id, kind):
    # Scale 1.6 for every task. Both envs hit 25-step limits (truncations) under the shifted
    # physics, and Hopper with the stronger gear falls (terminations).
    flags = ShiftFlags(shift=(kind,), shift_every=100, **{kind: ScaleRange(1.6, 1.6, False)})
    make_kwargs = dict(reset_noise_scale=0.0, max_episode_steps=25)
    pool = EnvpoolVectorEnv(env_id, 2, flags, seed=0, **make_kwargs)
    reference = gymnasium_reference(env_id, 2, flags, 0, **make_kwargs)
    actions = random_actions(pool.single_action_space, 45, 2)
    pool.reset(seed=0)
    reference.reset(seed=0)
    assert_same_steps(pool, reference, actions[:3], "before the shift")  # envpool's own XML
    assert pool.call("set_task", 1) == reference.call("set_task", 1)
    obs, reward, terminated, truncated, infos = pool.step(actions[3])  # the old pool's last
    assert truncated.all() and not terminated.any() and infos["_final_obs"].all()
    # The XML that the new pool was built from compiles to the gymnasium wrapper's model.
    written = mujoco.MjModel.from_xml_path(
        str(Path(pool.pool_xml["base_path"], "mujoco", "assets_gym", pool.pool_xml["xml_file"]))
    )
    shifted = reference.envs[0].unwrapped.model
    unshifted = gym.make(env_id).unwrapped.model
    for name in PHYSICS_ARRAYS:
        np.testing.assert_allclose(
            model_array(written, name),
            model_array(shifted, name),
            rtol=1e-12,
            atol=1e-9,
            err_msg=name,
        )
    edited = [
        name
        for name in PHYSICS_ARRAYS
        if not np.allclose(model_array(unshifted, name), model_array(shifted, name))
    ]
    assert edited  # the shift changed something
    # envpool (its own MuJoCo) runs that XML as gymnasium runs the shifted model.
    expected_obs, _ = reference.reset()
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)
    assert_same_steps(pool, reference, actions[4:], "after the shift")
    pool.close()


def shifting_envpool_run(env_id: str, flags: ShiftFlags, seed: int, **make_kwargs):
    """What make_vector_env(backend="envpool") builds with 2 sub-envs, plus make_kwargs."""
    schedule = ShiftSchedule(every=flags.shift_every, at=tuple(flags.shift_at))
    return ShiftingVectorEnv(EnvpoolVectorEnv(env_id, 2, flags, seed, **make_kwargs), schedule)


def unpermuted(obs: np.ndarray, params: dict) -> np.ndarray:
    if "obs_permutation" not in params:
        return obs
    return obs[..., np.argsort(params["obs_permutation"])]


@pytest.mark.parametrize("shift", [("friction",), ("friction", "obs-permute")])
def test_physics_shift_in_a_shifting_run_truncates_every_episode_at_the_shift_step(shift):
    # 2 sub-envs, a shift every 216 global steps: calls 0-107 are task 0, call 108 is the
    # shift. Under task 0's physics Hopper's sub-env 0 falls at calls 98 and 108 (the shift
    # step), while the gentler sub-env 1 keeps standing.
    flags = ShiftFlags(shift=shift, shift_every=216)
    make_kwargs = dict(reset_noise_scale=0.0)
    run = shifting_envpool_run("Hopper-v5", flags, seed=3, **make_kwargs)
    reference = gymnasium_reference("Hopper-v5", 2, flags, 3, **make_kwargs)
    gymnasium_run = make_vector_env("Hopper-v5", 2, flags, 3, 500, backend="gymnasium")
    actions = random_actions(run.single_action_space, 120, 2)
    actions[:, 1] *= 0.2
    obs, _ = run.reset(seed=3)
    gymnasium_run.reset(seed=3)
    task_params = [reference.call("set_task", 0)[0]]
    expected_obs, _ = reference.reset(seed=3)
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)  # task 0's physics from the start
    assert_same_steps(run, reference, actions[:108], "task 0")
    assert [e["params"] for e in run.shift_events] == [task_params[0]]
    # The shift step runs under task 0's physics: the episodes it ends are the reference's
    # steps before its model changes (observation shifts are already task 1's).
    obs, reward, terminated, truncated, infos = run.step(actions[108])
    old_physics = reference.step(actions[108])
    task_params.append(reference.call("set_task", 1)[0])
    assert infos["shift"] == {"step": 216, "task": 1, "params": task_params[1]}
    assert terminated.tolist() == old_physics[2].tolist() == [True, False]
    assert truncated.tolist() == [False, True]  # every episode that did not terminate
    assert infos["_final_obs"].all()
    old_final_obs = old_physics[0].copy()  # sub-env 1's; sub-env 0 was reset at once:
    old_final_obs[0] = old_physics[4]["final_obs"][0]
    np.testing.assert_allclose(
        unpermuted(np.stack(infos["final_obs"]), task_params[1]),
        unpermuted(old_final_obs, task_params[0]),
        atol=1e-6,
    )
    np.testing.assert_allclose(reward, old_physics[1], atol=1e-6)
    # Then new episodes under task 1's physics.
    expected_obs, _ = reference.reset()
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)
    assert_same_steps(run, reference, actions[109:], "task 1")
    # The params logged are the gymnasium backend's.
    for action in actions[:109]:
        gymnasium_run.step(action)
    assert [e["params"] for e in run.shift_events] == [
        e["params"] for e in gymnasium_run.shift_events
    ]
    run.close()
    gymnasium_run.close()


def test_resume_and_reset_with_new_physics_rebuild_the_pool_before_resetting():
    flags = ShiftFlags(shift=("gravity", "mass"), shift_every=40)
    make_kwargs = dict(reset_noise_scale=0.0)
    run = shifting_envpool_run("HalfCheetah-v5", flags, seed=3, **make_kwargs)
    reference = gymnasium_reference("HalfCheetah-v5", 2, flags, 3, **make_kwargs)
    run.set_global_step(90)  # resumed in task 2, past its first step
    (event,) = run.shift_events
    assert (event["event"], event["task"]) == ("task_resume", 2)
    assert event["params"] == reference.call("set_task", 2)[0]
    obs, _ = run.reset(seed=4)
    expected_obs, _ = reference.reset(seed=4)
    np.testing.assert_allclose(obs, expected_obs, atol=1e-9)
    actions = random_actions(run.single_action_space, 10, 2)
    assert_same_steps(run, reference, actions, "resumed")  # no truncation at the first step
    run.close()
    # A reset without a seed (the first one here) builds the pool with the seed of (run seed,
    # task), so that a rerun rebuilds the same pool.
    run = shifting_envpool_run("HalfCheetah-v5", flags, seed=3)
    first, _ = run.reset()
    assert run.env.pool_seed == run.env.task_seed(0) != run.env.task_seed(1)
    rerun = shifting_envpool_run("HalfCheetah-v5", flags, seed=3)
    np.testing.assert_array_equal(rerun.reset()[0], first)
    rerun.close()
    run.close()


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
    # All 4 sub-envs end together at step 4 x 1,000: one line, their mean and how many.
    (returns,) = [m for m in metrics if "charts/episodic_return" in m]
    assert (returns["step"], returns["charts/episodes"]) == (4000, 4)
    assert returns["charts/episodic_length"] == 1000
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


def test_obs_offset_on_envpool_shifts_the_same_transitions_by_the_same_vector():
    """CartPole on envpool with --shift obs-offset: each observation is the unshifted pool's plus
    the task's offset, and the offset is the one the gymnasium backend draws."""
    flags = ShiftFlags(shift=("obs-offset",), shift_every=20)
    plain = EnvpoolVectorEnv("CartPole-v1", 2, ShiftFlags(), seed=3)
    shifted = make_vector_env("CartPole-v1", 2, flags, 3, 100, backend="envpool")
    gym_env = make_vector_env("CartPole-v1", 2, flags, 3, 100, backend="gymnasium")
    base, _ = plain.reset(seed=3)
    obs, _ = shifted.reset(seed=3)
    gym_env.reset(seed=3)
    np.testing.assert_array_equal(obs, base)
    actions = np.random.default_rng(1).integers(0, 2, (30, 2))
    for call, action in enumerate(actions):
        base, *_ = plain.step(action)
        obs, *_ = shifted.step(action)
        gym_env.step(action)
        offset = np.asarray(shifted.shift_events[-1]["params"]["obs_offset"], np.float32)
        assert shifted.task == (2 * call) // 20
        np.testing.assert_array_equal(obs, base + offset, err_msg=f"call {call}")
    assert shifted.task == 2 and np.abs(offset).max() > 0
    assert shifted.shift_events[-1]["params"] == gym_env.shift_events[-1]["params"]
    for env in (plain, shifted, gym_env):
        env.close()
