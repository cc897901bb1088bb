"""When the world changes, and what a task is.

A run is a sequence of tasks separated by shifts. `ShiftSchedule` says at which global env
steps (summed over all sub-envs) a shift happens; task 0 is in effect before the first shift
and every shift increments the task index by one.

A task's parameters are a pure function of (seed, task index, shift name): `task_rng` seeds a
fresh generator from exactly those three numbers. A resumed run therefore redraws the same
parameters, and two kinds of shift (friction, obs-noise, ...) draw independently of each other
and of the order in which they are stacked.

`ShiftWrapper` is the small base every shift kind (physics.py, observation.py, reward.py)
builds on: it draws and applies one task, then hands the task on to the next shift wrapper
further inside, so that `set_task` on the outermost wrapper shifts the whole stack.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from validation import ConfigError


@dataclass(frozen=True)
class ShiftSchedule:
    """Shifts every `every` global env steps and/or at the listed global steps (their union)."""

    every: int = 0
    """Global env steps between shifts; 0 means no periodic shift."""
    at: tuple[int, ...] = ()
    """Explicit global env steps at which a shift happens."""

    @property
    def has_shifts(self) -> bool:
        return self.every > 0 or len(self.at) > 0

    def task_at(self, step: int) -> int:
        """The task in effect for the transition with 0-based global index `step`.

        A shift at step S makes transition S the first of the new task, so the task index is
        the number of shift steps <= `step`. A step listed in `at` that is also a multiple of
        `every` is one shift, not two.
        """
        if step < 0:
            raise ValueError(f"global step must be >= 0, got {step}")
        periodic_shifts = step // self.every if self.every > 0 else 0
        listed_shifts = sum(1 for s in self.at if s <= step and not self._is_periodic(s))
        return periodic_shifts + listed_shifts

    def shift_steps(self, total: int) -> list[int]:
        """The sorted global steps < `total` at which a shift happens."""
        periodic = range(self.every, total, self.every) if self.every > 0 else range(0)
        return sorted(set(periodic) | {s for s in self.at if s < total})

    def validate(self, total_timesteps: int, num_envs: int, require_a_shift: bool = True) -> None:
        """Raise ConfigError (one line naming the flag) unless this schedule can be run.
        `require_a_shift`: a new run whose total ends before its first shift is a mistake; a
        resume may stop a run anywhere (its plan was checked when it started)."""
        if self.every < 0:
            raise ConfigError(
                f"--shift-every must be a positive number of env steps, got {self.every}"
            )
        if not self.has_shifts:
            raise ConfigError(
                "--shift needs --shift-every N or --shift-at S1 S2 ...: with neither, no shift "
                "would ever happen"
            )
        for step in self.at:
            if step <= 0:
                raise ConfigError(
                    f"--shift-at entries must be positive global env steps, got {step}"
                )
        for previous, step in itertools.pairwise(self.at):
            if step <= previous:
                raise ConfigError(
                    f"--shift-at must be strictly increasing, got {step} after {previous}"
                )
        if require_a_shift and not self.shift_steps(total_timesteps):
            raise ConfigError(self._no_shift_message(total_timesteps))
        # A vector env advances num_envs global steps per call, so the schedule is only ever
        # consulted at multiples of num_envs; any other shift step would land late.
        why = f"a vector env advances {num_envs} global steps per call, so a shift can only land on a multiple of {num_envs}"
        if self.every % num_envs != 0:
            raise ConfigError(
                f"--shift-every {self.every} is not a multiple of --num-envs {num_envs}: {why}"
            )
        for step in self.at:
            if step % num_envs != 0:
                raise ConfigError(
                    f"--shift-at {step} is not a multiple of --num-envs {num_envs}: {why}"
                )

    def _is_periodic(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _no_shift_message(self, total_timesteps: int) -> str:
        total = f"--total-timesteps {total_timesteps}"
        if self.every > 0 and self.at:
            return (
                f"neither --shift-every {self.every} nor any --shift-at step is below {total}: "
                "the run would have no shift"
            )
        if self.every > 0:
            return f"--shift-every {self.every} is not shorter than {total}: the run would have no shift"
        return f"every --shift-at step is at or beyond {total}: the run would have no shift"


@dataclass(frozen=True)
class ScaleRange:
    """The range a shift kind draws its value from, once per task."""

    low: float
    """Smallest value a task can draw."""
    high: float
    """Largest value a task can draw."""
    log_uniform: bool
    """Draw uniformly in log space (suits a scale spanning decades), else uniformly."""
    table: tuple[float, ...] = ()
    """Task k takes table[k] instead of a draw (e.g. the paper's code's fixed friction
    sequence); the run may have at most as many tasks as values. Empty: draw."""

    def draw(self, rng: np.random.Generator, task: int) -> float:
        if self.table:
            return float(self.table[task])
        if self.log_uniform:
            return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def validate(self, flag: str) -> None:
        """Raise ConfigError unless this range can be drawn from; `flag` is e.g. "--friction"."""
        if not 0 <= self.low <= self.high:
            raise ConfigError(
                f"{flag}.low and {flag}.high must satisfy 0 <= low <= high, "
                f"got low {self.low} and high {self.high}"
            )
        if self.log_uniform and self.low == 0:
            raise ConfigError(
                f"{flag}.low must be positive for a log-uniform draw ({flag}.log-uniform), got 0"
            )
        for value in self.table:
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{flag}.table values must be >= 0, got {value}")


def task_rng(seed: int, task: int, name: str) -> np.random.Generator:
    """The generator a shift kind draws task `task`'s parameters from.

    crc32 is a stable hash of the name (Python's hash() is salted per process), so the stream
    is the same in every run and on resume.
    """
    return np.random.default_rng([seed, task, zlib.crc32(name.encode())])


class ShiftWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Base of every shift kind: draws a task's parameters and applies them to the live env.

    Subclasses set `name` (the --shift value, also the key of the task's random stream) and
    implement `draw(rng, task)` -> JSON-serialisable dict and `apply(params)`. Until the first
    `set_task` the wrapper must behave as the unshifted env. Its constructor arguments are
    recorded (gymnasium's RecordConstructorArgs), so `env.spec` can rebuild the stack.
    """

    name: ClassVar[str]

    def __init__(self, env: gym.Env, config: Any, seed: int, *, env_index: int = 0):
        gym.utils.RecordConstructorArgs.__init__(
            self, config=config, seed=seed, env_index=env_index
        )
        gym.Wrapper.__init__(self, env)
        self.config = config
        self.seed = seed
        self.env_index = env_index
        self.params: dict[str, Any] = {}
        """The parameters in effect now; empty before the first set_task."""

    def draw(self, rng: np.random.Generator, task: int) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def set_task(self, task: int) -> dict[str, Any]:
        """Apply task `task` here and in every shift wrapper inside; return all their params."""
        params = self.draw(task_rng(self.seed, task, self.name), task)
        self.apply(params)
        self.params = params
        inner = self._next_shift_wrapper()
        inner_params = inner.set_task(task) if inner is not None else {}
        # Inner wrappers first, so the keys read in the order of --shift.
        return {**inner_params, **params}

    def _next_shift_wrapper(self) -> ShiftWrapper | None:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, ShiftWrapper):
                return env
            env = env.env
        return None
