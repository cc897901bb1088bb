"""Does the simulation stay physical at low friction? Momentum gained against what friction allows.

On flat ground the only horizontal force on a MuJoCo robot is contact friction, and Coulomb
friction is at most mu times the normal force. Over T seconds the normal impulse is the weight's
impulse M g T plus the change of vertical momentum, so a physical run obeys

    |change of horizontal momentum| <= mu * (M g T + |change of vertical momentum|)

with mu the largest sliding friction of any geom (MuJoCo takes the larger of the two geoms' of a
contact). This script drives each env with scripted flailing policies (every actuator a square
wave at one frequency with its own phase, the robot started on its back, as the policy that
found the artefact flailed) at the low end of the Slippery Ant friction range, and prints, per
integration setting, the ratio of the momentum gained to that bound (over 1 is unphysical),
the top speed reached, and the cost of an env step. HalfCheetah's flail is the one the test
tests/test_envs.py uses; Ant's are the worst of a random search of flails found at Ant's
default integration. With --checkpoint RUN_DIR/checkpoints/step_N.pt a trained PPO policy of
that env is rolled out too (deterministic, at --friction).

    python benchmarks/physics_artefact.py                    # ~2 minutes on 2 cores
    python benchmarks/physics_artefact.py --checkpoint runs/<demo run>/checkpoints/step_100352.pt --friction 0.0704
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.networks import GaussianActor  # noqa: E402
from envs import PhysicsFlags, ScaleRange, ShiftFlags, make_env  # noqa: E402
from envs.normalize import ObservationNormalizer  # noqa: E402

SETTINGS = [("the env's own integration", 1, "model"), ("--physics-substeps 10", 10, "model"),
            ("--physics-integrator rk4", 1, "rk4")]  # fmt: skip
# The flail of tests/test_envs.py: found by a search like the one below for Ant.
CHEETAH_FLAIL = (3.69, np.array([4.59, 3.57, 5.65, 2.81, 2.55, 1.93]))


@dataclass
class Args:
    friction: float = 0.07
    """the friction scale (the Slippery Ant range is [0.02, 2]; the demo's artefact was at 0.07)"""
    ant_friction: float = 0.02
    """Ant's friction scale (the low end of the paper's range)"""
    seconds: float = 20.0
    """simulated seconds per rollout"""
    search: int = 60
    """random flails tried on Ant at its default integration (the worst 3 are reported)"""
    checkpoint: str | None = None
    """a PPO checkpoint whose policy is rolled out as well"""
    seed: int = 0


@dataclass
class EnvFlags(ShiftFlags, PhysicsFlags):
    pass


def make(env_id: str, friction: float, substeps: int, integrator: str):
    flags = EnvFlags(
        shift=("friction",),
        friction=ScaleRange(friction, friction, log_uniform=False),
        physics_substeps=substeps,
        physics_integrator=integrator,
    )
    env = make_env(env_id, flags, seed=0, env_index=0)()
    env.set_task(1)
    return env


def rollout(env, policy, steps: int, on_back: bool) -> dict[str, float]:
    """Run `policy(t, obs)` for `steps` control steps; momentum against friction's bound."""
    obs, _ = env.reset(seed=0)
    unwrapped = env.unwrapped
    model, data = unwrapped.model, unwrapped.data
    if on_back:  # turn the robot over: the root's orientation about its lateral axis
        if model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE:
            data.qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # quaternion: a half turn about x
            data.qpos[2] = 0.5
        else:
            data.qpos[2], data.qpos[1] = np.pi, 0.3  # planar: rooty, rootz
        mujoco.mj_forward(model, data)
        obs = unwrapped._get_obs()
    mass, mu = model.body_subtreemass[1], model.geom_friction[:, 0].max()
    mujoco.mj_subtreeVel(model, data)
    start = data.subtree_linvel[1] * mass
    top_speed, seconds = 0.0, 0.0
    for t in range(steps):
        action = policy(t, obs)
        tick = time.perf_counter()
        obs, *_ = env.step(action)
        seconds += time.perf_counter() - tick
        mujoco.mj_subtreeVel(model, data)
        top_speed = max(top_speed, float(np.linalg.norm(data.subtree_linvel[1][:2])))
    change = data.subtree_linvel[1] * mass - start
    horizontal = float(np.linalg.norm(change[:2]))  # planar robots have no y motion
    bound = mu * (mass * 9.81 * steps * unwrapped.dt + abs(change[2]))
    return {"ratio": horizontal / bound, "top_speed": top_speed, "ms": 1e3 * seconds / steps}


def square_wave(frequency: float, phases: np.ndarray, dt: float):
    return lambda t, obs: np.sign(np.sin(2 * np.pi * frequency * t * dt + phases))


def table_row(label: str, results: list[dict]) -> str:
    cells = [f"{r['ratio']:.2f} / {r['top_speed']:.1f} / {r['ms']:.3f}" for r in results]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(args: Args) -> None:
    rng = np.random.default_rng(args.seed)
    cases: list[tuple[str, str, float, callable, bool]] = []
    frequency, phases = CHEETAH_FLAIL
    cases.append(("HalfCheetah-v5, the test's flail", "HalfCheetah-v5", args.friction,
                  square_wave(frequency, phases, 0.05), True))  # fmt: skip
    # Ant: the worst flails of a random search at the default integration.
    env = make("Ant-v5", args.ant_friction, 1, "model")
    steps = int(args.seconds / env.unwrapped.dt)
    tried = []
    for _ in range(args.search):
        frequency, phases = rng.uniform(1, 8), rng.uniform(0, 2 * np.pi, 8)
        on_back = bool(rng.integers(2))
        result = rollout(env, square_wave(frequency, phases, 0.05), steps, on_back)
        tried.append((result["ratio"], frequency, phases, on_back))
    for _, frequency, phases, on_back in sorted(tried, key=lambda c: -c[0])[:3]:
        where = "on its back" if on_back else "upright"
        cases.append((f"Ant-v5, flail at {frequency:.2f} Hz {where}", "Ant-v5", args.ant_friction,
                      square_wave(frequency, phases, 0.05), on_back))  # fmt: skip
    if args.checkpoint:
        state = torch.load(args.checkpoint, weights_only=False, map_location="cpu")
        saved = state["args"]
        probe = make(saved.env_id, args.friction, 1, "model")
        obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        actor = GaussianActor(obs_dim, act_dim, saved.hidden_sizes, saved.activation, saved.init)
        actor.load_state_dict(state["actor"])
        normalizer = ObservationNormalizer(obs_dim, enabled=saved.norm_obs)
        normalizer.rms.load_state_dict(state["obs_normalizer"])

        def trained(t, obs):
            with torch.no_grad():
                mean = actor(torch.as_tensor(normalizer(obs[None], update=False)))[0][0]
            return mean.numpy().clip(-1, 1)

        cases.append((f"{saved.env_id}, trained PPO ({Path(args.checkpoint).name})",
                      saved.env_id, args.friction, trained, False))  # fmt: skip

    print(f"friction scale {args.friction} (HalfCheetah, checkpoint), {args.ant_friction} (Ant); "
          f"{args.seconds:g} s per rollout")  # fmt: skip
    print(
        "cells: momentum gained / friction's bound (over 1: unphysical) / top speed m/s / ms per env step\n"
    )
    print("| case | " + " | ".join(label for label, _, _ in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for label, env_id, friction, policy, on_back in cases:
        results = []
        for _, substeps, integrator in SETTINGS:
            env = make(env_id, friction, substeps, integrator)
            steps = int(args.seconds / env.unwrapped.dt)
            results.append(rollout(env, policy, steps, on_back))
        print(table_row(label, results), flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
