"""The envpool backend: envpool's C++ MuJoCo envs behind the same vector API as the gymnasium one.

`--env-backend envpool` swaps gymnasium's SyncVectorEnv for `envpool.make_gymnasium(...)`, which
steps all sub-envs in C++ threads. The agents must not notice, so `EnvpoolVectorEnv` gives the
exact contract of `envs.make_vector_env`'s gymnasium path:

- **same-step autoreset.** envpool 1.2 resets a finished sub-env on the *next* call, which then
  ignores that sub-env's action and returns its first observation with reward 0 (next-step,
  like gymnasium 1.x's default; tests/test_envpool.py checks it). Here, after a step in which
  sub-envs finished, those sub-envs are reset at once with `reset(env_id)` (envpool resets a
  subset and clears the pending autoreset), their new first observations replace the returned
  ones, and the finished episodes' last observations go to infos["final_obs"] with mask
  infos["_final_obs"], as SyncVectorEnv(SAME_STEP) does. Every action is a real transition.
- **seeding.** `reset(seed=s)` gives sub-env i seed s + i: envpool seeds at construction, so a
  reset with a new seed rebuilds the pool (milliseconds).
- **shifts.** Each sub-env has the same chain of `ShiftWrapper`s as on the gymnasium backend,
  built over a slot that holds the sub-env's latest step result, so a task draws the same
  parameters and an observation or reward shift transforms a step identically (obs-permute,
  obs-noise with its per-sub-env noise stream, reward-sign, reward-scale).
- **physics shifts** (friction, mass, gravity, gear) by rebuilding the pool. envpool compiles
  its MuJoCo model in C++ from an XML file and gives no access to it, so the physics wrappers
  edit a `PoolModel`: the same XML compiled here with the `mujoco` package (one model shared
  by all sub-envs, whose tasks are the same), so each task draws and sets exactly the values
  it does on the gymnasium backend. When a task changes the physics, the pool is rebuilt from that model
  saved as XML (`PoolModel.write_xml`), and the semantics differ from the gymnasium backend,
  which changes the model under the running episodes:

  - at a shift (the step() call that ShiftingVectorEnv makes the first of the new task) the
    old pool takes the call's actions, so **that step still runs under the old physics**
    (observation and reward shifts are already the new task's, as on gymnasium); then every
    sub-env that did not terminate is reported **truncated**, with its observation in
    infos["final_obs"], so the agent bootstraps from it, and the returned observations are
    the first ones of new episodes in a new pool with the new physics. Every episode ends
    at a physics shift; none spans two physics.
  - the new pool's seed comes from (run seed, task), so a rerun or a resumed run rebuilds the
    same pool; at reset() (the first one, task_start, or after a resume) the pool is rebuilt
    with the reset's seed before resetting, and nothing is truncated.

  Observation normalisation and episode statistics live with the agent, so a rebuild leaves
  them alone. Without a physics shift no model is compiled and nothing is rebuilt.

The XML route (mujoco >= 3.16, checked; see `PoolModel`): `MjSpec.copy_back` writes the values changed in
the compiled model to the spec, and with the compiler's `savecompiled` off `to_xml` saves the
spec as written with every number exact (compiled values would be saved to 6 digits). A
changed mass cannot be copied back while inertias come from the geoms (`inertiafromgeom`
"true", `settotalmass`), so every body's inertial is first made explicit, as compiled. envpool
1.2.5 compiles the saved file with its own bundled MuJoCo 3.6.0; tests/test_envpool.py checks
that its transitions then equal gymnasium's under the same shifted physics.

Envpool tasks other than gymnasium's MuJoCo ones (e.g. dm_control's) have no such XML, and a
physics shift on them is refused with a ConfigError that names the gymnasium backend.
"""

from __future__ import annotations

import difflib
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

import envs.shifts as shifts
from envs.physics import PhysicsShift
from envs.vector import wrap_shifts
from validation import ConfigError

INSTALL_HINT = "install it with: pip install -e '.[envpool]' (make test does)"


def import_envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise ConfigError(
            f"--env-backend envpool needs the envpool package; {INSTALL_HINT}"
        ) from None
    return envpool


def check_envpool_env_id(env_id: str) -> None:
    """Raise ConfigError naming the closest envpool ids if envpool has no `env_id`."""
    known = import_envpool().list_all_envs()
    if env_id in known:
        return
    close = difflib.get_close_matches(env_id, known, n=3)
    hint = f"did you mean: {', '.join(close)}?" if close else "see envpool.list_all_envs()"
    raise ConfigError(f"envpool has no --env-id {env_id!r}; {hint}")


def is_physics_shift(name: str) -> bool:
    return issubclass(shifts.SHIFTS[name][0], PhysicsShift)


def envpool_xml_path(env_id: str, **make_kwargs: Any) -> Path | None:
    """The XML file from which envpool compiles `env_id`'s MuJoCo model; None if it has none.

    As envpool's gym MuJoCo envs find it (envpool/mujoco/gym/mujoco_env.h): base_path +
    "/mujoco/assets_gym/" + xml_file, or the converted copy "<name>_envpool.xml" beside it if
    there is one (the hopper.xml that gymnasium ships uses global coordinates, which MuJoCo 3
    no longer reads, so envpool ships hopper_envpool.xml).
    """
    config = import_envpool().make_spec(env_id, **make_kwargs).config._asdict()
    if "xml_file" not in config or "base_path" not in config:
        return None
    path = Path(config["base_path"], "mujoco", "assets_gym", config["xml_file"])
    converted = path.with_name(path.stem + "_envpool.xml")
    if converted.exists():
        return converted
    return path if path.exists() else None


def physics_xml_path(env_id: str, physics: str, **make_kwargs: Any) -> Path:
    """The XML file to rebuild `env_id`'s pool from under the physics shifts `physics` (their
    names, for the message); ConfigError if there is none or mujoco cannot save it exactly."""
    xml_path = envpool_xml_path(env_id, **make_kwargs)
    if xml_path is None:
        raise ConfigError(
            f"--shift {physics} on --env-backend envpool rebuilds the pool from the gymnasium "
            f"MuJoCo XML of the task, and envpool's {env_id} has none; use --env-backend "
            f"gymnasium for physics shifts on it"
        )
    if not hasattr(mujoco.MjsCompiler, "savecompiled"):  # exact XML saving came in 3.16
        raise ConfigError(
            f"--shift {physics} on --env-backend envpool saves the shifted model as XML, which "
            f"needs mujoco >= 3.16 (found {mujoco.__version__}); upgrade it (pip install -U "
            f"mujoco) or use --env-backend gymnasium"
        )
    return xml_path


class PoolModel:
    """The MuJoCo model the physics shifts edit on the envpool backend, and its XML.

    Compiled here from the XML file envpool compiles, so it starts as envpool's model; the
    shift wrappers edit it in place as they edit a gymnasium env's, and `write_xml` saves it
    as it is now for envpool to build a pool from.
    """

    def __init__(self, xml_path: Path):
        spec = mujoco.MjSpec.from_file(str(xml_path))
        with warnings.catch_warnings():
            # half_cheetah.xml sets settotalmass, deprecated in mujoco 4; the saved XML does not.
            warnings.filterwarnings("ignore", "compiler attribute 'settotalmass' is deprecated")
            compiled = spec.compile()
        # copy_back refuses a changed mass or inertia while compilation infers them from the
        # geoms (inertiafromgeom "true") or rescales them (settotalmass). So every body gets
        # the inertial that compilation inferred, explicitly: the model stays the same.
        spec.compiler.inertiafromgeom = mujoco.mjtInertiaFromGeom.mjINERTIAFROMGEOM_AUTO
        spec.compiler.settotalmass = -1
        for body in spec.bodies[1:]:  # bodies[0] is the world
            body.explicitinertial = True
            body.mass = compiled.body_mass[body.id]
            body.inertia = compiled.body_inertia[body.id]
            body.ipos = compiled.body_ipos[body.id]
            body.iquat = compiled.body_iquat[body.id]
        # Save the spec as written, every number exact and in the file's own notation
        # (degrees, fromto); the default saves the compiled values, to 6 significant digits.
        spec.compiler.savecompiled = False
        spec.compiler.savecanonical = False
        self.spec = spec
        self.model: mujoco.MjModel = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.directory = tempfile.TemporaryDirectory(prefix="envpool-physics-")
        """Where the XML goes; deleted by close() (or when this object is collected)."""

    def write_xml(self) -> dict[str, str]:
        """Save the model as it is now; return the make_gymnasium arguments that load it."""
        # copy_back writes a value only where the model no longer has what compilation gave
        # it (its documented rule), so it goes to a copy of the spec as compiled: a value set
        # back to its base then cannot meet an earlier task's in the spec.
        spec = self.spec.copy()
        spec.copy_back(self.model)
        folder = Path(self.directory.name, "mujoco", "assets_gym")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "shifted.xml").write_text(spec.to_xml())
        return {"base_path": self.directory.name, "xml_file": "shifted.xml"}

    def close(self) -> None:
        self.directory.cleanup()


class _SubEnvSlot(gym.Env):
    """One sub-env as the shift wrappers see it: the spaces, and the step result the vector env
    has just put here. The wrappers' step/reset transform it exactly as on a real env; the
    physics wrappers edit `model` (the vector env's PoolModel, shared by all sub-envs)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        spec: Any,
        pool_model: PoolModel | None,
    ):
        self.observation_space = observation_space
        self.action_space = action_space
        self.spec = spec
        self.result: tuple = ()
        if pool_model is not None:
            self.model, self.data = pool_model.model, pool_model.data

    def step(self, action: Any) -> tuple:
        return self.result

    def reset(self, **kwargs: Any) -> tuple:
        return self.result


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """envpool's vector env with same-step autoreset, per-sub-env seeds and shift wrappers."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        flags: shifts.ShiftFlags,
        seed: int,
        num_threads: int = 0,
        **make_kwargs: Any,
    ):
        self.env_id = env_id
        self.make_kwargs = make_kwargs
        """Extra keyword arguments for envpool.make_gymnasium (e.g. max_episode_steps)."""
        self.num_envs = num_envs
        self.num_threads = num_threads
        self.run_seed = seed
        """Seeds the pools that physics shifts build (with the task's index)."""
        self.pool_model: PoolModel | None = None
        """The model the physics shifts edit; None without a physics shift."""
        self.pool_xml: dict[str, str] = {}
        """make_gymnasium's base_path and xml_file of the pool's physics ({}: envpool's own)."""
        self.pool_physics: dict[str, Any] = {}
        """The physics shifts' params that the pool was built with ({}: none applied)."""
        self.rebuild_task: int | None = None
        """The task whose physics the pool lacks, to be rebuilt at the next step or reset."""
        physics = " ".join(name for name in flags.shift if is_physics_shift(name))
        if physics:
            self.pool_model = PoolModel(physics_xml_path(env_id, physics, **make_kwargs))
        self.pool_seed = seed
        self.pool = self._make_pool(seed)
        self.pool_used = False
        self.single_observation_space = self.pool.observation_space
        self.single_action_space = self.pool.action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        spec = gym.spec(env_id) if env_id in gym.registry else None
        # One chain of shift wrappers per sub-env, as make_env builds them (none: no shifts).
        self.slots = [
            _SubEnvSlot(
                self.single_observation_space, self.single_action_space, spec, self.pool_model
            )
            for _ in range(num_envs)
        ]
        self.chains: list[gym.Env] = []
        if flags.shift:
            self.chains = [
                wrap_shifts(slot, flags, seed, env_index)
                for env_index, slot in enumerate(self.slots)
            ]
            self.single_observation_space = self.chains[0].observation_space

    def _make_pool(self, seed: int) -> Any:
        return import_envpool().make_gymnasium(
            self.env_id,
            num_envs=self.num_envs,
            seed=seed,
            num_threads=self.num_threads,
            **self.make_kwargs,
            **self.pool_xml,
        )

    def _replace_pool(self, seed: int) -> None:
        """A new pool seeded with `seed`, with the physics of the PoolModel if it changed."""
        self.pool.close()
        if self.rebuild_task is not None:
            self.pool_xml = self.pool_model.write_xml()
            self.pool_physics = self._physics_params()
            self.rebuild_task = None
        self.pool = self._make_pool(seed)
        self.pool_seed = seed

    def _physics_params(self) -> dict[str, Any]:
        """The params of the physics shifts in effect (the same in every sub-env's chain)."""
        params, env = {}, self.chains[0]
        while isinstance(env, gym.Wrapper):
            if isinstance(env, PhysicsShift):
                params.update(env.params)
            env = env.env
        return params

    def task_seed(self, task: int) -> int:
        """The seed of the pool rebuilt for `task` outside a seeded reset: (run seed, task)."""
        rng = np.random.default_rng([self.run_seed, task, zlib.crc32(b"envpool pool")])
        return int(rng.integers(2**31 - self.num_envs))  # sub-env i gets seed + i

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list):
            raise ValueError("the envpool backend seeds sub-env i with seed + i; pass one int")
        # A seed restarts every sub-env's random stream (as gymnasium's reset(seed) does), which
        # envpool only does at construction; a pool never reset yet already has its seed's.
        # New physics (the first task, or a resumed one) needs a new pool too.
        if self.rebuild_task is not None:
            self._replace_pool(seed if seed is not None else self.task_seed(self.rebuild_task))
        elif seed is not None and (self.pool_used or seed != self.pool_seed):
            self._replace_pool(seed)
        self.pool_used = True
        obs, _ = self.pool.reset()
        return self._shift_reset(obs, np.arange(self.num_envs)), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, _ = self.pool.step(np.asarray(actions, np.float64))
        reward = np.asarray(reward, np.float64)
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        if self.chains:
            obs, reward = self._shift_step(obs, reward, terminated, truncated)
        physics_shift = self.rebuild_task is not None
        if physics_shift:
            # This step ran under the old physics; every episode ends here, and those that did
            # not terminate are cut short (truncated), to bootstrap from their final_obs.
            truncated = truncated | ~terminated
        infos: dict[str, Any] = {}
        done = np.logical_or(terminated, truncated)
        if done.any():
            finished = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            final_obs[finished] = list(obs[finished])
            infos["final_obs"], infos["_final_obs"] = final_obs, done
            if physics_shift:
                self._replace_pool(self.task_seed(self.rebuild_task))
                first_obs, _ = self.pool.reset()
            else:
                first_obs, _ = self.pool.reset(finished.astype(np.int32))
            obs = obs.copy()
            obs[finished] = self._shift_reset(first_obs, finished)
        return obs, reward, terminated, truncated, infos

    def _shift_step(self, obs, reward, terminated, truncated):
        obs, reward = obs.copy(), reward.copy()
        for i, (slot, chain) in enumerate(zip(self.slots, self.chains, strict=True)):
            slot.result = (obs[i], reward[i], terminated[i], truncated[i], {})
            obs[i], reward[i], *_ = chain.step(None)
        return obs, reward

    def _shift_reset(self, obs: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        if not self.chains:
            return obs
        obs = obs.copy()
        for row, i in enumerate(env_indices):
            self.slots[i].result = (obs[row], {})
            obs[row] = self.chains[i].reset()[0]
        return obs

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        """Call `name` on every sub-env's shift chain (ShiftingVectorEnv calls set_task).

        A set_task that changes the physics marks the pool for a rebuild (module docstring).
        """
        results = tuple(getattr(chain, name)(*args, **kwargs) for chain in self.chains)
        if name == "set_task" and self.pool_model is not None:
            changed = self._physics_params() != self.pool_physics
            task = args[0] if args else kwargs["task"]
            self.rebuild_task = task if changed else None
        return results

    def close_extras(self, **kwargs: Any) -> None:
        self.pool.close()
        if self.pool_model is not None:
            self.pool_model.close()
