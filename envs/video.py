"""Short clips of the policy around each shift, rendered headless into the run directory.

    --capture-video               clips at the run's start, at every shift and at its end
    --video.width 320 --video.height 240 --video.steps 60 --video.stride 2

At a shift the policy that ends the old task is filmed twice, in the old world and in the new
one (the same parameters: the shift happens between two updates), so a clip pair shows what
the change did to the behaviour before any learning on it. Each clip is its own env, built like
a training sub-env (the same shift wrappers and physics, set to the clip's task from the run's
seed), reset from a seed of its own and driven by the policy's deterministic action: it never
touches the training envs, the networks, the normalisation statistics or any random stream
of the run. MuJoCo renders offscreen (train.py picks EGL on a headless Linux machine); frames
are written as H.264 MP4 with imageio's ffmpeg (the `video` extra).

Cost: about 45 ms per frame with Mesa's software EGL on the 2-core development machine, so a
clip of 60 control steps filmed every 2nd step (30 frames, 3 s of simulated time) takes about
1.5 s, and a shift's pair about 3 s.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.physics import refine_physics
from envs.vector import wrap_shifts
from validation import ConfigError, require_all

Policy = Callable[[np.ndarray], np.ndarray]
"""observation of one env -> its action (deterministic)"""


@dataclass
class VideoConfig:
    """Settings of the clips (flags --video.*)."""

    width: int = 320
    """frame width in pixels (MuJoCo envs; classic-control and Box2D envs render at their own
    size)"""
    height: int = 240
    """frame height in pixels (MuJoCo envs, as --video.width)"""
    steps: int = 60
    """control steps a clip runs (60 x HalfCheetah's 0.05 s: 3 s of simulated time)"""
    stride: int = 2
    """film every this many control steps (the clip plays in real time)"""


@dataclass
class VideoFlags:
    """Flags of the clips (a mixin of the RL learners' Args)."""

    capture_video: bool = False
    """film the policy (MP4 in RUN_DIR/videos, and to W&B with --track) at the run's start, at
    every shift (the old task's end and the new task's start, the same parameters) and at the
    end; a clip costs about a second or two of rendering on a CPU (--video.* sets its size)"""
    video: VideoConfig = field(default_factory=VideoConfig)


def check_video_flags(flags: VideoFlags) -> None:
    config = flags.video
    require_all(
        [(f"--video.{name}", getattr(config, name), ">= 1")
         for name in ("width", "height", "steps", "stride")]
    )  # fmt: skip
    if config.width % 2 or config.height % 2:
        raise ConfigError(
            f"--video.width and --video.height must be even (H.264), got {config.width}x{config.height}"
        )
    if flags.capture_video:
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--capture-video writes MP4 with imageio's ffmpeg: pip install -e '.[video]'"
            ) from None
        if not (os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY")):
            # MuJoCo picks its GL backend when it is imported: too late to choose here.
            raise ConfigError(
                "--capture-video renders offscreen: set MUJOCO_GL=egl (or osmesa) before the "
                "run starts (train.py does so on a headless Linux machine)"
            )


def unused_flags(flags: Any) -> dict[str, str]:
    if getattr(flags, "capture_video", True):
        return {}
    return {"video": "it sets the clips of --capture-video, which is off"}


class ClipRecorder:
    """Films clips of a policy in the run's world, one env per clip, for one run directory."""

    def __init__(
        self,
        env_id: str,
        flags: Any,
        seed: int,
        directory: Path,
        on_clip: Callable[[int, str, Path], None] = lambda step, label, path: None,
    ):
        self.env_id, self.flags, self.seed = env_id, flags, seed
        self.directory = Path(directory)
        self.config: VideoConfig = flags.video
        self.on_clip = on_clip
        """called with (step, label, MP4 path) after each clip (e.g. to send it to W&B)"""

    @classmethod
    def for_run(cls, args: Any, run_dir: Path, on_clip: Callable) -> ClipRecorder | None:
        """The recorder of an RL learner's run (None without --capture-video)."""
        if not args.capture_video:
            return None
        return cls(args.env_id, args, args.seed, Path(run_dir) / "videos", on_clip)

    def shift(self, step: int, task: int, policy: Policy) -> None:
        """The pair of clips at the shift to `task`: the policy that ends the old task, in the
        old world and in the new one."""
        self.record(step, "end", task - 1, policy)
        self.record(step, "start", task, policy)

    def record(self, step: int, label: str, task: int, policy: Policy) -> Path:
        """Film `policy` for one clip in task `task` ("start" or "end" of it, the label); write
        RUN_DIR/videos/step_<step>_<label>_task<task>.mp4 and return its path."""
        import imageio.v3 as iio

        config = self.config
        try:
            env = gym.make(
                self.env_id, render_mode="rgb_array", width=config.width, height=config.height
            )
        except TypeError:  # classic control and Box2D envs render at their own size
            env = gym.make(self.env_id, render_mode="rgb_array")
        env = wrap_shifts(refine_physics(env, self.flags), self.flags, self.seed, env_index=0)
        try:
            if self.flags.shift:
                env.set_task(task)
            # A seed of the clip's own, from (run seed, task, label): never a training stream.
            clip_seed = zlib.crc32(f"{self.seed}/{task}/{label}".encode())
            obs, _ = env.reset(seed=clip_seed)
            frames = [env.render()]
            for t in range(1, config.steps + 1):
                obs, _, terminated, truncated, _ = env.step(policy(obs))
                if t % config.stride == 0:
                    frames.append(env.render())
                if terminated or truncated:
                    break
            fps = max(1, round(env.metadata["render_fps"] / config.stride))  # real time
        finally:
            env.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:010d}_{label}_task{task}.mp4"
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        iio.imwrite(tmp, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
        tmp.replace(path)
        self.on_clip(step, label, path)
        return path
