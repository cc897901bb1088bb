"""Tests of envs/: schedules, shift wrappers on real MuJoCo envs, and the shifting vector env.

No mocks: every test builds real gymnasium envs. HalfCheetah never terminates, so rollouts of
it line up step for step with an unwrapped copy; Hopper has the smallest observation.
"""

import copy
import dataclasses
import json
import warnings
import zlib
from dataclasses import dataclass
from typing import get_args

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import tyro

from envs import (
    SHIFTS,
    SLIPPERY_ANT,
    OffsetConfig,
    PhysicsFlags,
    ScaleRange,
    ShiftFlags,
    ShiftName,
    ShiftSchedule,
    check_env_id,
    make_env,
    make_vector_env,
)
from validation import ConfigError


def single_env(env_id: str, *shift: str, seed: int = 0, env_index: int = 0, **flags) -> gym.Env:
    return make_env(env_id, ShiftFlags(shift=shift, **flags), seed, env_index)()


def fixed_actions(space: gym.spaces.Box, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(space.low, space.high, (count, *space.shape))


def base_model(env_id: str) -> mujoco.MjModel:
    """The unshifted model, built independently of the code under test."""
    return gym.make(env_id).unwrapped.model


# --- schedule ---------------------------------------------------------------------------------


def test_task_at_every_boundaries():
    schedule = ShiftSchedule(every=10)
    assert [schedule.task_at(s) for s in (0, 9, 10, 11, 19, 20, 21)] == [0, 0, 1, 1, 1, 2, 2]
    assert schedule.shift_steps(35) == [10, 20, 30]


def test_task_at_listed_steps():
    schedule = ShiftSchedule(at=(5, 12))
    assert [schedule.task_at(s) for s in (0, 4, 5, 6, 11, 12, 13, 10_000)] == [
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
    ]
    assert schedule.shift_steps(12) == [5]


def test_task_at_union_counts_a_coinciding_step_once():
    schedule = ShiftSchedule(every=10, at=(15, 20))
    assert schedule.shift_steps(35) == [10, 15, 20, 30]
    steps = (9, 10, 14, 15, 16, 19, 20, 21, 29, 30)
    assert [schedule.task_at(s) for s in steps] == [0, 1, 1, 2, 2, 2, 3, 3, 3, 4]


@pytest.mark.parametrize(
    ("schedule", "total", "num_envs", "expected"),
    [
        (
            ShiftSchedule(every=-5),
            1000,
            1,
            "--shift-every must be a positive number of env steps, got -5",
        ),
        (ShiftSchedule(), 1000, 1, "--shift-every"),
        (ShiftSchedule(at=(0, 10)), 1000, 1, "--shift-at entries must be positive"),
        (ShiftSchedule(at=(-3,)), 1000, 1, "--shift-at entries must be positive"),
        (ShiftSchedule(at=(20, 10)), 1000, 1, "--shift-at must be strictly increasing"),
        (ShiftSchedule(at=(10, 10)), 1000, 1, "--shift-at must be strictly increasing"),
        (
            ShiftSchedule(every=2_000_000),
            1_000_000,
            1,
            "--shift-every 2000000 is not shorter than --total-timesteps 1000000: "
            "the run would have no shift",
        ),
        (ShiftSchedule(at=(2_000_000,)), 1_000_000, 1, "--shift-at"),
        (
            ShiftSchedule(every=1001),
            10_000,
            8,
            "--shift-every 1001 is not a multiple of --num-envs 8",
        ),
        (ShiftSchedule(at=(16, 20)), 10_000, 8, "--shift-at 20 is not a multiple of --num-envs 8"),
    ],
)
def test_schedule_validate_rejects(schedule, total, num_envs, expected):
    with pytest.raises(ConfigError) as error:
        schedule.validate(total, num_envs)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_schedule_validate_accepts_a_runnable_schedule():
    ShiftSchedule(every=16, at=(8, 24)).validate(total_timesteps=100, num_envs=8)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (ShiftFlags(shift_every=10), "--shift"),
        (ShiftFlags(shift_at=(10,)), "--shift"),
        (ShiftFlags(shift=("friction",)), "--shift-every"),
        (ShiftFlags(shift=("friction", "friction"), shift_every=10), "more than once"),
        (
            ShiftFlags(shift=("friction",), shift_every=10, friction=ScaleRange(0.0, 1.0, True)),
            "--friction.low",
        ),
        (
            ShiftFlags(shift=("obs-noise",), shift_every=10, obs_noise=ScaleRange(0.5, 0.1, False)),
            "--obs-noise.low",
        ),
    ],
)
def test_make_vector_env_rejects_bad_shift_flags(flags, expected):
    with pytest.raises(ConfigError, match=expected) as error:
        make_vector_env("HalfCheetah-v5", 2, flags, seed=0, total_timesteps=100)
    assert "\n" not in str(error.value)


# --- the registry and the CLI -----------------------------------------------------------------


def test_registry_matches_shift_names_and_flags():
    flag_fields = {f.name for f in dataclasses.fields(ShiftFlags)}
    assert set(get_args(ShiftName)) == set(SHIFTS)
    for name, (wrapper_class, config_field) in SHIFTS.items():
        assert wrapper_class.name == name
        assert config_field is None or config_field in flag_fields


@dataclass
class Args(ShiftFlags):
    env_id: str = "HalfCheetah-v5"
    """The env id."""


def test_shift_flags_become_flat_cli_flags():
    args = tyro.cli(
        Args,
        default=Args(),
        args=["--shift", "friction", "obs-permute", "--shift-every", "5", "--friction.low", "0.1"],
    )
    assert args.shift == ("friction", "obs-permute")
    assert args.shift_every == 5
    assert args.friction == ScaleRange(0.1, 2.0, log_uniform=True)


# --- env ids ----------------------------------------------------------------------------------


def test_check_env_id_suggests_close_matches():
    check_env_id("HalfCheetah-v5")
    with pytest.raises(ConfigError) as error:
        check_env_id("HalfCheetah-v9")
    message = str(error.value)
    assert "'HalfCheetah-v9'" in message and "HalfCheetah-v5" in message
    assert "\n" not in message


def test_physics_shift_on_a_non_mujoco_env_is_a_config_error():
    flags = ShiftFlags(shift=("friction",), shift_every=10)
    with pytest.raises(ConfigError, match="the friction shift needs a MuJoCo env; CartPole-v1"):
        make_vector_env("CartPole-v1", 1, flags, seed=0, total_timesteps=100)


# --- the vector env: shifts land on their step ------------------------------------------------


def test_shift_lands_exactly_on_its_step_in_every_sub_env():
    base_friction = base_model("HalfCheetah-v5").geom_friction[:, 0].copy()
    flags = ShiftFlags(shift=("friction",), shift_every=10)
    envs = make_vector_env("HalfCheetah-v5", 2, flags, seed=0, total_timesteps=100)
    envs.reset(seed=0)
    assert [e["event"] for e in envs.shift_events] == ["task_start"]

    calls_with_shift = {}
    for _ in range(13):
        first_index = envs.global_step
        *_, infos = envs.step(envs.action_space.sample())
        if "shift" in infos:
            calls_with_shift[first_index] = infos["shift"]
            scale = infos["shift"]["params"]["friction_scale"]
            for sub_env in envs.env.envs:
                live = sub_env.unwrapped.model.geom_friction[:, 0]
                np.testing.assert_allclose(live, base_friction * scale, rtol=1e-12)
    assert envs.global_step == 26
    assert sorted(calls_with_shift) == [10, 20]
    assert [calls_with_shift[s]["task"] for s in (10, 20)] == [1, 2]
    assert [calls_with_shift[s]["step"] for s in (10, 20)] == [10, 20]
    assert envs.task == 2
    assert [(e["event"], e["step"], e["task"]) for e in envs.shift_events] == [
        ("task_start", 0, 0),
        ("shift", 10, 1),
        ("shift", 20, 2),
    ]
    scales = [e["params"]["friction_scale"] for e in envs.shift_events]
    assert len(set(scales)) == 3


def test_new_task_applies_to_the_whole_call_starting_at_the_shift():
    # Rewards compared with an unshifted vector env: the call whose first global index is S
    # must already carry the new task's scale.
    flags = ShiftFlags(shift=("reward-scale",), shift_every=6)
    shifted = make_vector_env("HalfCheetah-v5", 2, flags, seed=3, total_timesteps=100)
    plain = make_vector_env("HalfCheetah-v5", 2, ShiftFlags(), seed=3, total_timesteps=100)
    shifted.reset(seed=3)
    plain.reset(seed=3)
    scale_of_task = {}
    for actions in fixed_actions(shifted.single_action_space, 8):
        batch = np.stack([actions, -actions])
        task = shifted.schedule.task_at(shifted.global_step)
        _, shifted_rewards, *_ = shifted.step(batch)
        _, plain_rewards, *_ = plain.step(batch)
        ratio = shifted_rewards / plain_rewards
        assert ratio[0] == pytest.approx(ratio[1], rel=1e-9)
        scale_of_task.setdefault(task, ratio[0])
        assert ratio[0] == pytest.approx(scale_of_task[task], rel=1e-9)
    assert sorted(scale_of_task) == [0, 1, 2]
    recorded = [e["params"]["reward_scale"] for e in shifted.shift_events]
    assert recorded == pytest.approx([scale_of_task[t] for t in (0, 1, 2)], rel=1e-9)


def test_stationary_vector_env_never_shifts_and_autoresets_on_the_same_step():
    envs = make_vector_env("Hopper-v5", 2, ShiftFlags(), seed=5, total_timesteps=100)
    assert envs.env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs.reset(seed=5)
    assert envs.env.call("np_random_seed") == (5, 6)
    # Full-throttle actions topple Hopper within a few dozen steps.
    actions = np.ones((2, *envs.single_action_space.shape), dtype=np.float32)
    for _ in range(200):
        obs, _, terminated, truncated, infos = envs.step(actions)
        assert "shift" not in infos
        if terminated.any():
            break
    done = int(np.argmax(terminated))
    assert terminated[done] and infos["_final_obs"][done]
    assert not np.array_equal(infos["final_obs"][done], obs[done])
    assert envs.shift_events == [{"event": "task_start", "step": 0, "task": 0, "params": {}}]


def test_set_global_step_resumes_in_the_right_task_without_a_shift():
    flags = ShiftFlags(shift=("friction",), shift_every=10)
    fresh = make_vector_env("HalfCheetah-v5", 2, flags, seed=0, total_timesteps=100)
    task_2_params = fresh.env.envs[0].set_task(2)

    resumed = make_vector_env("HalfCheetah-v5", 2, flags, seed=0, total_timesteps=100)
    resumed.set_global_step(24)
    resumed.reset(seed=0)
    assert resumed.task == 2
    assert resumed.shift_events == [
        {"event": "task_resume", "step": 24, "task": 2, "params": task_2_params}
    ]
    for first_index in (24, 26, 28):
        assert resumed.global_step == first_index
        *_, infos = resumed.step(resumed.action_space.sample())
        assert "shift" not in infos
    *_, infos = resumed.step(resumed.action_space.sample())
    assert infos["shift"]["step"] == 30 and infos["shift"]["task"] == 3
    with pytest.raises(ValueError):
        resumed.set_global_step(25)

    # Resumed exactly where a task starts (a checkpoint at the end of the last rollout of a
    # task): the next step is the shift, as in the run that was never stopped.
    at_shift = make_vector_env("HalfCheetah-v5", 2, flags, seed=0, total_timesteps=100)
    at_shift.set_global_step(30)
    at_shift.reset(seed=0)
    assert at_shift.task == 2
    *_, infos = at_shift.step(at_shift.action_space.sample())
    assert infos["shift"]["step"] == 30 and infos["shift"]["task"] == 3


def test_slippery_ant_preset_changes_ant_friction_at_a_shift():
    args = dataclasses.replace(Args(), **SLIPPERY_ANT)
    assert args.env_id == "Ant-v5" and args.shift == ("friction",)
    assert args.shift_every == 2_000_000
    base_friction = base_model("Ant-v5").geom_friction[:, 0].copy()
    envs = make_vector_env(args.env_id, 2, args, seed=0, total_timesteps=6_000_000)
    envs.set_global_step(2_000_000 - 2)  # resume one call before the first shift
    envs.reset(seed=0)
    *_, infos = envs.step(envs.action_space.sample())
    assert "shift" not in infos
    before = envs.env.envs[0].unwrapped.model.geom_friction[:, 0].copy()
    *_, infos = envs.step(envs.action_space.sample())
    scale = infos["shift"]["params"]["friction_scale"]
    # The paper's code's table: task 1 is its second phase, 0.2399, on every geom (Ant's are 1).
    assert infos["shift"]["step"] == 2_000_000 and scale == 0.2399
    assert (base_friction == 1.0).all()
    for sub_env in envs.env.envs:
        after = sub_env.unwrapped.model.geom_friction[:, 0]
        np.testing.assert_allclose(after, base_friction * scale, rtol=1e-12)
        assert not np.allclose(after, before)


def test_a_table_gives_task_k_its_kth_value_and_must_cover_every_task():
    table = ScaleRange(0.1, 10.0, log_uniform=True, table=(0.5, 2.0, 0.25))
    env = single_env("Hopper-v5", "friction", "reward-scale", reward_scale=table, friction=table)
    for task, value in enumerate(table.table):
        assert env.set_task(task) == {"friction_scale": value, "reward_scale": value}
    flags = ShiftFlags(shift=("friction",), shift_every=100, friction=table)
    make_vector_env("Hopper-v5", 1, flags, seed=0, total_timesteps=300).close()  # 3 tasks
    with pytest.raises(ConfigError, match="--friction.table has 3 values and the run has 4 tasks"):
        make_vector_env("Hopper-v5", 1, flags, seed=0, total_timesteps=301)
    bad = ShiftFlags(
        shift=("friction",), shift_every=100, friction=dataclasses.replace(table, table=(1.0, -1.0))
    )
    with pytest.raises(ConfigError, match="--friction.table values must be >= 0"):
        make_vector_env("Hopper-v5", 1, bad, seed=0, total_timesteps=200)


# --- physics shifts ---------------------------------------------------------------------------

PHYSICS_FIELDS = {
    # kind: (param key, the model values it scales)
    "friction": ("friction_scale", lambda m: m.geom_friction[:, 0]),
    "mass": ("mass_scale", lambda m: m.body_mass),
    "gravity": ("gravity_scale", lambda m: m.opt.gravity),
    "gear": ("gear_scale", lambda m: m.actuator_gear[:, 0]),
}


@pytest.mark.parametrize("kind", list(PHYSICS_FIELDS))
def test_physics_shift_changes_the_simulation(kind):
    env = single_env("HalfCheetah-v5", kind)
    model, data = env.unwrapped.model, env.unwrapped.data
    env.reset(seed=0)
    for action in fixed_actions(
        env.action_space, 30, seed=1
    ):  # fall onto the floor: friction needs contact
        env.step(action)
    state_kind = mujoco.mjtState.mjSTATE_INTEGRATION
    start = np.empty(mujoco.mj_stateSize(model, state_kind))
    mujoco.mj_getState(model, data, start, state_kind)
    actions = fixed_actions(env.action_space, 10, seed=2)

    def rollout(task: int) -> np.ndarray:
        env.set_task(task)
        mujoco.mj_setState(model, data, start, state_kind)
        mujoco.mj_forward(model, data)
        return np.array([env.step(action)[0] for action in actions])

    task_1, task_2, task_1_again = rollout(1), rollout(2), rollout(1)
    assert np.abs(task_1 - task_2).max() > 1e-3
    np.testing.assert_array_equal(task_1, task_1_again)


@pytest.mark.parametrize("kind", list(PHYSICS_FIELDS))
def test_physics_shift_scales_base_values_without_compounding(kind):
    key, values_of = PHYSICS_FIELDS[kind]
    base = values_of(base_model("HalfCheetah-v5")).copy()
    env = single_env("HalfCheetah-v5", kind)
    model = env.unwrapped.model
    np.testing.assert_array_equal(values_of(model), base)  # unshifted before set_task

    scale = env.set_task(3)[key]
    np.testing.assert_allclose(values_of(model), base * scale, rtol=1e-12)
    after_task_3 = copy.copy(model)
    env.set_task(5)
    env.set_task(3)
    for name in ("geom_friction", "body_mass", "body_inertia", "actuator_gear", "body_subtreemass"):
        np.testing.assert_array_equal(getattr(model, name), getattr(after_task_3, name))
    np.testing.assert_array_equal(model.opt.gravity, after_task_3.opt.gravity)


def test_mass_shift_scales_inertia_and_keeps_the_state_mid_episode():
    base = base_model("Hopper-v5")
    env = single_env("Hopper-v5", "mass")
    model, data = env.unwrapped.model, env.unwrapped.data
    env.reset(seed=0)
    for action in fixed_actions(env.action_space, 5):
        env.step(action)
    qpos, qvel = data.qpos.copy(), data.qvel.copy()
    scale = env.set_task(1)["mass_scale"]
    np.testing.assert_allclose(model.body_inertia, base.body_inertia * scale, rtol=1e-12)
    # mj_setConst ran: derived constants follow the new masses.
    np.testing.assert_allclose(model.body_subtreemass, base.body_subtreemass * scale, rtol=1e-9)
    # ... and it did not move the robot to qpos0 in mid-episode.
    np.testing.assert_array_equal(data.qpos, qpos)
    np.testing.assert_array_equal(data.qvel, qvel)


# --- observation shifts -----------------------------------------------------------------------


def test_obs_permute_permutes_observations_per_task():
    env = single_env("Hopper-v5", "obs-permute")
    plain = gym.make("Hopper-v5")
    actions = fixed_actions(env.action_space, 5)
    permutations = []
    for task in (1, 2):
        permutation = env.set_task(task)["obs_permutation"]
        assert sorted(permutation) == list(range(11))
        obs, _ = env.reset(seed=3)
        plain_obs, _ = plain.reset(seed=3)
        np.testing.assert_array_equal(obs, plain_obs[permutation])
        for action in actions:  # the same permutation on every step of the task
            np.testing.assert_array_equal(env.step(action)[0], plain.step(action)[0][permutation])
        permutations.append(permutation)
    assert permutations[0] != permutations[1]


def test_obs_permute_permutes_the_observation_bounds():
    # CartPole has finite bounds on some dimensions, unlike MuJoCo's (-inf, inf).
    env = single_env("CartPole-v1", "obs-permute")
    base_space = env.observation_space
    permutation = env.set_task(1)["obs_permutation"]
    np.testing.assert_array_equal(env.observation_space.low, base_space.low[permutation])
    np.testing.assert_array_equal(env.observation_space.high, base_space.high[permutation])


def test_obs_noise_std_is_recorded_and_matches_the_noise():
    noise_range = ScaleRange(0.2, 0.4, log_uniform=False)
    env = single_env("HalfCheetah-v5", "obs-noise", obs_noise=noise_range)
    plain = gym.make("HalfCheetah-v5")
    actions = fixed_actions(env.action_space, 200)

    def noise_of_rollout() -> np.ndarray:
        env.reset(seed=0)
        plain.reset(seed=0)
        return np.array([env.step(a)[0] - plain.step(a)[0] for a in actions])

    np.testing.assert_array_equal(noise_of_rollout(), 0.0)  # no noise before set_task
    global_rng_state = np.random.get_state()[1].copy()
    std = env.set_task(1)["obs_noise_std"]
    assert 0.2 <= std <= 0.4
    noise = noise_of_rollout()  # 200 steps x 17 dims
    assert noise.std() == pytest.approx(std, rel=0.1)
    assert abs(noise.mean()) < 0.05
    np.testing.assert_array_equal(np.random.get_state()[1], global_rng_state)

    other_sub_env = single_env("HalfCheetah-v5", "obs-noise", env_index=1, obs_noise=noise_range)
    assert other_sub_env.set_task(1)["obs_noise_std"] == std  # same task, same std
    obs_0, _ = env.reset(seed=0)
    obs_1, _ = other_sub_env.reset(seed=1)  # a vector env seeds sub-env i with seed + i
    assert not np.allclose(obs_0, obs_1)  # independent noise

    # reset(seed=s) restarts the noise stream too: the same seed, the same noisy rollout.
    first = [env.reset(seed=5)[0], *[env.step(a)[0] for a in actions[:20]]]
    again = [env.reset(seed=5)[0], *[env.step(a)[0] for a in actions[:20]]]
    np.testing.assert_array_equal(np.array(first), np.array(again))
    assert not np.allclose(env.reset(seed=6)[0], first[0])


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_wrapper_passes_gymnasiums_env_checker(name, monkeypatch):
    """gymnasium's check_env on each wrapper with a task applied: spaces, seeding (reset with a
    seed is deterministic), step and reset signatures, that the wrapper stack can be rebuilt
    from its spec, and that close can be called twice. Its render check is left out: it opens
    a "human" window, which a headless machine does not have."""
    from gymnasium.utils.env_checker import check_env

    env = single_env("HalfCheetah-v5", name)
    env.set_task(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on MuJoCo's infinite bounds, the wrapper
        check_env(env, skip_render_check=True)


# --- reward shifts ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reward-sign", "reward-scale"])
def test_reward_shift_multiplies_the_reward(kind):
    env = single_env("HalfCheetah-v5", kind)
    plain = gym.make("HalfCheetah-v5")
    actions = fixed_actions(env.action_space, 5)
    factors = []
    for task in (1, 2, 3):
        factor = next(iter(env.set_task(task).values()))
        env.reset(seed=0)
        plain.reset(seed=0)
        for action in actions:
            assert env.step(action)[1] == pytest.approx(factor * plain.step(action)[1], rel=1e-12)
        factors.append(factor)
    if kind == "reward-sign":
        assert factors == [-1, 1, -1]
    else:
        assert len(set(factors)) == 3 and all(0.1 <= f <= 10 for f in factors)


# --- reproducibility and composition ----------------------------------------------------------

ALL_DRAWN = ("friction", "mass", "gravity", "gear", "obs-permute", "obs-noise", "reward-scale")


def test_params_are_a_function_of_seed_and_task():
    same_seed = [single_env("Hopper-v5", *ALL_DRAWN, seed=7).set_task(4) for _ in range(2)]
    other_seed = single_env("Hopper-v5", *ALL_DRAWN, seed=8).set_task(4)
    other_task = single_env("Hopper-v5", *ALL_DRAWN, seed=7).set_task(5)
    assert same_seed[0] == same_seed[1]
    for key in same_seed[0]:
        assert other_seed[key] != same_seed[0][key]
        assert other_task[key] != same_seed[0][key]


def test_stacked_shifts_apply_together_and_merge_their_params():
    env = single_env("Hopper-v5", "friction", "obs-permute", "reward-scale")
    params = env.set_task(2)
    assert list(params) == ["friction_scale", "obs_permutation", "reward_scale"]
    json.dumps(params)  # params go to the run's log as JSON
    wrapper, params_seen = env, {}
    while isinstance(wrapper, gym.Wrapper):
        params_seen.update(getattr(wrapper, "params", {}))
        wrapper = wrapper.env
    assert params_seen == params
    base_friction = base_model("Hopper-v5").geom_friction[:, 0]
    np.testing.assert_allclose(
        env.unwrapped.model.geom_friction[:, 0], base_friction * params["friction_scale"]
    )


# --- Physics that stays physical ---------------------------------------------------------------


@dataclass
class EnvFlags(ShiftFlags, PhysicsFlags):
    pass


def flailing_momentum(substeps: int, integrator: str, steps: int = 400) -> tuple[float, float]:
    """A scripted flail (every actuator a square wave at 3.69 Hz with its own phase, the
    cheetah started on its back: the pattern of the policy that found the artefact) at friction
    scale 0.07; returns (horizontal momentum gained, the most Coulomb friction can supply).

    On flat ground the only horizontal force is contact friction, at most mu times the normal
    force, and the normal impulse over the run is the weight's impulse plus the change of
    vertical momentum: |dp_x| <= mu (M g T + |dp_z|), mu the largest geom friction."""
    flags = EnvFlags(
        shift=("friction",), friction=ScaleRange(0.07, 0.07, log_uniform=False),
        physics_substeps=substeps, physics_integrator=integrator,
    )  # fmt: skip
    env = make_env("HalfCheetah-v5", flags, seed=0, env_index=0)()
    env.set_task(1)
    env.reset(seed=0)
    model, data = env.unwrapped.model, env.unwrapped.data
    assert env.unwrapped.dt == pytest.approx(0.05)  # the control period never changes
    data.qpos[2], data.qpos[1] = np.pi, 0.3  # on its back
    mujoco.mj_forward(model, data)
    mass, mu = model.body_subtreemass[1], model.geom_friction[:, 0].max()
    mujoco.mj_subtreeVel(model, data)
    start = data.subtree_linvel[1] * mass
    phases = np.array([4.59, 3.57, 5.65, 2.81, 2.55, 1.93])
    for t in range(steps):
        env.step(np.sign(np.sin(2 * np.pi * 3.69 * t * 0.05 + phases)))
    mujoco.mj_subtreeVel(model, data)
    change = data.subtree_linvel[1] * mass - start
    return abs(change[0]), mu * (mass * 9.81 * steps * 0.05 + abs(change[2]))


def test_halfcheetahs_default_integration_gains_momentum_friction_cannot_supply():
    gained, bound = flailing_momentum(1, "model")
    assert gained > 2 * bound, (gained, bound)  # unphysical: semi-implicit Euler at 0.01 s
    for substeps, integrator in ((10, "model"), (1, "rk4")):
        gained, bound = flailing_momentum(substeps, integrator)
        assert gained < 0.2 * bound, (substeps, integrator, gained, bound)


def test_refined_physics_keeps_the_control_period_and_is_refused_where_it_cannot_apply():
    flags = EnvFlags(physics_substeps=4, physics_integrator="rk4")
    env = make_env("HalfCheetah-v5", flags, seed=0, env_index=0)()
    plain = gym.make("HalfCheetah-v5").unwrapped
    assert env.unwrapped.dt == plain.dt and env.unwrapped.frame_skip == 4 * plain.frame_skip
    assert env.unwrapped.model.opt.timestep == plain.model.opt.timestep / 4
    assert env.unwrapped.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    with pytest.raises(ConfigError, match="need a MuJoCo env"):
        make_env("CartPole-v1", flags, seed=0, env_index=0)()
    with pytest.raises(ConfigError, match="--physics-substeps must be >= 1"):
        make_vector_env("HalfCheetah-v5", 1, EnvFlags(physics_substeps=0), 0, 100)
    with pytest.raises(ConfigError, match="envpool backend"):
        make_vector_env("HalfCheetah-v5", 1, flags, 0, 100, backend="envpool")


# --- obs-offset (C-CHAIN's continual Gym Control) ---------------------------------------------


def expected_offset(seed: int, task: int, std: float = 2.0, dims: int = 4) -> np.ndarray:
    """The documented draw: N(0, std^2) per dimension from the task's stream (seed, task, the
    shift's name), written out here rather than taken from the wrapper."""
    rng = np.random.default_rng([seed, task, zlib.crc32(b"obs-offset")])
    return rng.normal(0.0, std, dims).astype(np.float32)


def test_obs_offset_adds_the_tasks_vector_from_the_shift_step_on():
    """Two sub-envs, a shift every 10 global steps: every observation equals the unshifted env's
    plus the offset of the task its call belongs to, exactly, from the call that starts at the
    shift step on (autoresets included: CartPole's episodes end here)."""
    flags = ShiftFlags(shift=("obs-offset",), shift_every=10)
    shifted = make_vector_env("CartPole-v1", 2, flags, seed=4, total_timesteps=100)
    plain = make_vector_env("CartPole-v1", 2, ShiftFlags(), seed=4, total_timesteps=100)
    obs, _ = shifted.reset(seed=7)
    base, _ = plain.reset(seed=7)
    np.testing.assert_array_equal(obs, base)  # task 0 sees the env as it is
    actions = np.random.default_rng(0).integers(0, 2, (40, 2))
    for call, action in enumerate(actions):
        obs, _, terminated, _, infos = shifted.step(action)
        base, *_ = plain.step(action)
        task = (2 * call) // 10
        offset = expected_offset(4, task) if task else np.zeros(4, np.float32)
        np.testing.assert_array_equal(obs, base + offset, err_msg=f"call {call}")
        if "shift" in infos:
            assert 2 * call == 10 * task and infos["shift"]["task"] == task
            np.testing.assert_allclose(infos["shift"]["params"]["obs_offset"], offset, rtol=1e-6)
    assert shifted.task == 7
    for env in (shifted, plain):
        env.close()


def test_obs_offset_is_a_function_of_seed_and_task_and_task_0_can_draw_one():
    offsets = {
        (seed, task): single_env("CartPole-v1", "obs-offset", seed=seed).set_task(task)[
            "obs_offset"
        ]
        for seed in (1, 2)
        for task in (0, 1, 2)
    }
    assert offsets[1, 0] == [0.0] * 4  # C-CHAIN: the first task has no offset
    assert offsets[1, 1] != offsets[2, 1] and offsets[1, 1] != offsets[1, 2]
    again = single_env("CartPole-v1", "obs-offset", seed=1).set_task(2)["obs_offset"]
    assert again == offsets[1, 2]
    np.testing.assert_allclose(offsets[1, 2], expected_offset(1, 2), rtol=1e-6)
    drawn = single_env(
        "CartPole-v1",
        "obs-offset",
        seed=1,
        obs_offset=OffsetConfig(std=0.5, first_task_unshifted=False),
    ).set_task(0)["obs_offset"]
    np.testing.assert_allclose(drawn, expected_offset(1, 0, std=0.5), rtol=1e-6)


def test_obs_offset_moves_the_observation_bounds():
    env = single_env("CartPole-v1", "obs-offset")
    base_space = env.observation_space
    offset = np.asarray(env.set_task(3)["obs_offset"], np.float32)
    np.testing.assert_array_equal(env.observation_space.low, base_space.low + offset)
    np.testing.assert_array_equal(env.observation_space.high, base_space.high + offset)


def test_reset_episodes_starts_a_task_due_at_the_reset_with_its_first_observation():
    """A learner that starts new episodes at every rollout (reset_episodes) at the shift step:
    the new task comes with the reset, its first observations already shifted, and infos say so;
    at any other step a reset changes no task."""
    flags = ShiftFlags(shift=("obs-offset",), shift_every=10)
    shifted = make_vector_env("CartPole-v1", 2, flags, seed=4, total_timesteps=100)
    plain = make_vector_env("CartPole-v1", 2, ShiftFlags(), seed=4, total_timesteps=100)
    shifted.reset(seed=3)
    plain.reset(seed=3)
    for _ in range(5):  # global steps 0-9: task 0
        shifted.step(np.zeros(2, np.int64))
        plain.step(np.zeros(2, np.int64))
    obs, infos = shifted.reset_episodes(seed=11)
    base, _ = plain.reset(seed=11)
    assert infos["shift"] == {"step": 10, "task": 1, "params": shifted.shift_events[-1]["params"]}
    np.testing.assert_array_equal(obs, base + expected_offset(4, 1))
    obs, infos = shifted.reset_episodes(seed=12)  # still step 10: no second shift
    assert "shift" not in infos and shifted.task == 1
    assert [e["event"] for e in shifted.shift_events] == ["task_start", "shift"]


def test_a_mujoco_warning_is_shown_once_however_often_it_happens():
    """mujoco 4 warns at every compile of gymnasium's half_cheetah.xml (settotalmass); with the
    envs package imported, three models give one line on stderr, not three, even when other code
    changes the warning filters between them (which makes Python forget what it has shown)."""
    import subprocess
    import sys

    code = (
        "import envs, gymnasium as gym, warnings\n"
        "for _ in range(3):\n"
        "    gym.make('HalfCheetah-v5')\n"
        "    with warnings.catch_warnings(): pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("settotalmass") == 1, result.stderr
