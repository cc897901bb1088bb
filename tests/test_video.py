"""--capture-video: real frames of real MuJoCo rendering (offscreen EGL), written as MP4 at the
run's start, at every shift (the old task's end and the new one's start) and at its end, and a
run that films is bit-identical in training to one that does not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from run_helpers import read_jsonl

from agents import ppo, sac
from agents.checkpoints import load_checkpoint
from envs.video import VideoConfig

pytest.importorskip("imageio_ffmpeg", reason="the video extra: pip install -e '.[video]'")
import imageio.v3 as iio  # noqa: E402

TINY = VideoConfig(width=64, height=48, steps=10, stride=2)


def ppo_args(tmp_path, capture_video: bool) -> ppo.Args:
    return dataclasses.replace(
        ppo.Args(), env_id="HalfCheetah-v5", total_timesteps=1024, num_steps=256,
        num_minibatches=2, update_epochs=1, hidden_sizes=(8,), shift=("obs-permute",),
        shift_every=512, diagnostics=("none",), checkpoint_every=0, runs_dir=str(tmp_path),
        capture_video=capture_video, **({"video": TINY} if capture_video else {}),
    )  # fmt: skip


def test_clips_are_real_frames_at_the_start_every_shift_and_the_end(tmp_path):
    run_dir = ppo.train(ppo_args(tmp_path, capture_video=True))
    clips = sorted(p.name for p in (run_dir / "videos").glob("*.mp4"))
    assert clips == [
        "step_0000000000_start_task0.mp4",
        "step_0000000512_end_task0.mp4",
        "step_0000000512_start_task1.mp4",
        "step_0000001024_end_task1.mp4",
    ]
    frames = iio.imread(run_dir / "videos" / clips[1])
    assert frames.shape == (1 + TINY.steps // TINY.stride, 48, 64, 3)
    # A rendered scene, not a blank buffer: many distinct colours and strong contrast.
    assert frames.std() > 30 and len(np.unique(frames.reshape(-1, 3), axis=0)) > 100
    # The robot moves: consecutive frames differ.
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1


def final_states(tmp_path, train, make_args) -> list[dict]:
    states = []
    for capture in (False, True):
        run_dir = train(make_args(tmp_path / str(capture), capture))
        states.append(load_checkpoint(run_dir))
        if capture:
            assert list((run_dir / "videos").glob("*.mp4")), "no clip was filmed"
    return states


def assert_same_tensors(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)


@pytest.mark.parametrize("learner", ["ppo", "sac"])
def test_filming_never_changes_training(tmp_path, learner):
    """Networks, optimizers, normalisation statistics and every random stream are bit-identical
    at the end of a run with clips and one without."""
    if learner == "ppo":
        off, on = final_states(tmp_path, ppo.train, lambda d, c: ppo_args(d, c))
        keys = ("actor", "critic", "optimizer", "obs_normalizer", "reward_normalizer", "rng")
    else:

        def sac_args(directory, capture_video):
            return dataclasses.replace(
                sac.Args(), env_id="Hopper-v5", total_timesteps=300, learning_starts=100,
                batch_size=32, hidden_sizes=(16,), shift=("reward-sign",), shift_at=(200,),
                diagnostics=("none",), checkpoint_every=0, runs_dir=str(directory),
                log_every=100, capture_video=capture_video,
                **({"video": TINY} if capture_video else {}),
            )  # fmt: skip

        off, on = final_states(tmp_path, sac.train, sac_args)
        keys = ("actor", "critic", "critic_target", "actor_optimizer", "q_optimizer",
                "log_alpha", "rng")  # fmt: skip
    for key in keys:
        assert_same_tensors(off[key], on[key], key)
    assert off["rng"]["python"] == on["rng"]["python"]
    assert off["rng"]["numpy"][1].tolist() == on["rng"]["numpy"][1].tolist()


def test_clips_reach_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = ppo.train(dataclasses.replace(ppo_args(tmp_path, capture_video=True), track=True))
    sent = list((run_dir / "wandb").rglob("media/videos/**/*.mp4"))
    assert len(sent) == 4, sent
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert metrics  # and the run's records are as ever
