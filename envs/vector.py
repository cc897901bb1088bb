"""Building shifting envs from the flags, and the vector env that shifts them all at once.

`make_vector_env` (envs/build.py) checks the flags, builds one env per sub-env with `make_env`
(gym.make plus the requested shift wrappers, nothing else) and wraps the lot in
`ShiftingVectorEnv`, which counts global env steps and applies each task to every sub-env at
the same global step.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs.shifts as shifts
from envs.physics import refine_physics
from envs.schedule import ShiftSchedule
from validation import ConfigError


def check_env_id(env_id: str) -> None:
    """Raise ConfigError naming the closest registered ids if `env_id` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f"did you mean: {', '.join(close)}?" if close else "see gymnasium.pprint_registry()"
    raise ConfigError(f"unknown --env-id {env_id!r}; {hint}")


def check_spaces(
    envs: gym.vector.VectorEnv,
    env_id: str,
    learner: str,
    bounded_actions: bool,
    discrete_actions: bool = False,
) -> None:
    """Raise ConfigError unless the env's observations are flat vectors and its actions a Box
    (with finite bounds if `bounded_actions`), or Discrete if `discrete_actions` allows it:
    PPO has a Gaussian and a categorical policy, SAC's squashed Gaussian acts in continuous
    spaces only, and every network here is an MLP."""
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
        raise ConfigError(
            f"--env-id {env_id}: {learner} needs flat vector observations (a 1-D Box), and this "
            f"env's are {obs_space}"
        )
    if discrete_actions and isinstance(action_space, gym.spaces.Discrete):
        return
    if not isinstance(action_space, gym.spaces.Box):
        raise ConfigError(
            f"--env-id {env_id}: {learner} needs continuous (Box) actions, and this env's are "
            f"{type(action_space).__name__}"
        )
    if bounded_actions and not np.isfinite([action_space.low, action_space.high]).all():
        raise ConfigError(f"--env-id {env_id}: {learner} needs a bounded Box action space")


def check_shift_flags(
    flags: shifts.ShiftFlags, total_timesteps: int, num_envs: int, require_a_shift: bool = True
) -> ShiftSchedule:
    """Raise ConfigError on a bad shift configuration; return the run's schedule.
    `require_a_shift=False` (a resume) allows a total that ends the run before its next shift."""
    schedule = ShiftSchedule(every=flags.shift_every, at=tuple(flags.shift_at))
    if not flags.shift:
        if schedule.has_shifts:
            raise ConfigError(
                "--shift-every/--shift-at are set but --shift names nothing to change; "
                "add e.g. --shift friction"
            )
        return schedule
    for name in flags.shift:
        if name not in shifts.SHIFTS:
            raise ConfigError(
                f"--shift {name!r} is not a shift kind; choose from {list(shifts.SHIFTS)}"
            )
    repeated = sorted({name for name in flags.shift if flags.shift.count(name) > 1})
    if repeated:
        raise ConfigError(f"--shift lists {', '.join(repeated)} more than once")
    for name in flags.shift:
        config_field = shifts.SHIFTS[name][1]
        if config_field is not None:
            getattr(flags, config_field).validate("--" + config_field.replace("_", "-"))
    schedule.validate(total_timesteps, num_envs, require_a_shift)
    tasks = len(schedule.shift_steps(total_timesteps)) + 1
    for name in flags.shift:
        config_field = shifts.SHIFTS[name][1]
        table = getattr(getattr(flags, config_field), "table", ()) if config_field else ()
        if table and len(table) < tasks:
            raise ConfigError(
                f"--{config_field.replace('_', '-')}.table has {len(table)} values and the run "
                f"has {tasks} tasks: give one value per task"
            )
    return schedule


def make_env(
    env_id: str, flags: shifts.ShiftFlags, seed: int, env_index: int, max_episode_steps: int = 0
) -> Callable[[], gym.Env]:
    """A thunk building one sub-env: gym.make, then the shift wrappers in the order of --shift.

    Episode statistics, action clipping and normalisation are the agent's business. Every
    sub-env gets the same `seed`, so all draw the same task parameters; `env_index` only seeds
    per-step randomness such as observation noise. `max_episode_steps` > 0 replaces the env's
    own time limit (gymnasium's TimeLimit: the episode is truncated there).
    """

    def thunk() -> gym.Env:
        env = gym.make(env_id, max_episode_steps=max_episode_steps or None)
        return wrap_shifts(refine_physics(env, flags), flags, seed, env_index)

    return thunk


def wrap_shifts(env: gym.Env, flags: shifts.ShiftFlags, seed: int, env_index: int) -> gym.Env:
    """`env` inside the shift wrappers of --shift, in its order (both backends build this)."""
    for name in flags.shift:
        wrapper_class, config_field = shifts.SHIFTS[name]
        config = getattr(flags, config_field) if config_field is not None else None
        env = wrapper_class(env, config, seed, env_index=env_index)
    return env


class ShiftingVectorEnv(gym.vector.VectorWrapper):
    """Counts global env steps and shifts every sub-env at the same step.

    The transition with global index S (0-based, summed over sub-envs) belongs to task
    `schedule.task_at(S)`. A call to step() covers global indices S .. S + num_envs - 1, and
    the schedule only shifts at multiples of num_envs, so the new task is applied before the
    call whose first index is S: that whole call is the first of the new task. Its infos carry
    `infos["shift"] = {"step": S, "task": k, "params": {...}}`.

    Sub-envs are expected to carry ShiftWrappers whenever the schedule has shifts; with an
    empty schedule the env never shifts and nothing is applied.
    """

    def __init__(self, env: gym.vector.VectorEnv, schedule: ShiftSchedule):
        super().__init__(env)
        self.schedule = schedule
        self.global_step = 0
        """Global env steps taken so far, summed over sub-envs."""
        self.task = 0
        """Index of the task in effect."""
        self.shift_events: list[dict[str, Any]] = []
        """Every task change: {"event": "task_start" | "shift" | "task_resume", "step", "task",
        "params"}."""
        self._task_applied = False

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        # The first reset puts the sub-envs into the task in effect; a later reset (a new
        # evaluation, say) keeps the task already applied and logs nothing.
        if not self._task_applied:
            self._apply_task(self.schedule.task_at(self.global_step), event="task_start")
        return self.env.reset(seed=seed, options=options)

    def reset_episodes(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Start new episodes in every sub-env at the current global step, as a learner that
        cuts its episodes at every rollout does (C-CHAIN's and TRAC's PPO loop). The episodes
        begun here have `global_step` as their first transition, so if a shift is due there,
        the new task is applied before the reset and infos["shift"] says so, as a step's
        infos would: their first observations are the new task's."""
        if not self._task_applied:  # the run's first reset: its task starts, no shift
            return self.reset(seed=seed)
        task = self.schedule.task_at(self.global_step)
        shift = self._apply_task(task, event="shift") if task != self.task else None
        obs, infos = self.env.reset(seed=seed)
        if shift is not None:
            infos["shift"] = shift
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        step = self.global_step
        task = self.schedule.task_at(step)
        shift = self._apply_task(task, event="shift") if task != self.task else None
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self.global_step += self.num_envs
        if shift is not None:
            infos["shift"] = shift
        return obs, rewards, terminations, truncations, infos

    def set_global_step(self, step: int) -> None:
        """Resume a run that has taken `step` global steps: apply the task of its last
        transition (index step - 1), recorded as a "task_resume" event, not a shift. If `step`
        itself starts a new task, the next step() shifts there, exactly as the uninterrupted
        run's did: with its event, and the learner's own moments at a shift."""
        if step < 0 or step % self.num_envs != 0:
            raise ValueError(
                f"a resumed global step must be a non-negative multiple of num_envs "
                f"{self.num_envs}, got {step}"
            )
        self.global_step = step
        self._apply_task(self.schedule.task_at(max(step - 1, 0)), event="task_resume")

    def _apply_task(self, task: int, event: str) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.schedule.has_shifts:
            # Every sub-env draws from the same (seed, task) stream, so all must return the
            # same params; differing ones would mean the sub-envs were built with other seeds.
            params_by_env = self.env.call("set_task", task)
            params = params_by_env[0]
            if any(other != params for other in params_by_env[1:]):
                raise RuntimeError(f"sub-envs drew different params for task {task}")
        self.task = task
        self._task_applied = True
        record = {"step": self.global_step, "task": task, "params": params}
        self.shift_events.append({"event": event, **record})
        return record
