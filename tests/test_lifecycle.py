"""The run lifecycle, tested the way runs fail: real processes killed with SIGKILL and SIGTERM at
random moments, corrupted checkpoints, runs started together, resumes with new flags, W&B
without a key or a network, a full disk, and a table of bad inputs."""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import multiprocessing
import random
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import (
    REPO,
    assert_records_once,
    cli_env,
    error_line,
    only_run_dir,
    read_jsonl,
    run_cli,
    run_cli_in_process,
    train_command,
    wandb_history_steps,
)

import train
from agents import ppo, supervised
from agents.checkpoints import load_checkpoint
from agents.records import create_run_dir
from run_directory import read_run_files

# Small runs of each learner, long enough to be killed in the middle. PPO: 256-step rollouts
# (an update line every 256 steps); SAC: one update per step after 200; supervised: three
# tasks of 1,497 digits. Each checkpoints often and measures nothing (diagnostics have tests
# of their own), and writes to W&B offline.
PPO_TOTAL, SAC_TOTAL, SUPERVISED_TASKS = 12_288, 2_400, 6
RUNS = {
    "ppo": [
        "ppo", "--env-id", "Hopper-v5", "--total-timesteps", str(PPO_TOTAL), "--num-steps", "256",
        "--num-minibatches", "4", "--update-epochs", "2", "--shift", "friction",
        "--shift-every", "1024", "--checkpoint-every", "1024", "--diagnostics", "none",
    ],
    "sac": [
        "sac", "--env-id", "Hopper-v5", "--total-timesteps", str(SAC_TOTAL),
        "--learning-starts", "200", "--hidden-sizes", "16", "--batch-size", "32",
        "--log-every", "100", "--shift", "reward-sign", "--shift-every", "400",
        "--checkpoint-every", "400", "--save-buffer", "--diagnostics", "none",
    ],
    "supervised": [
        "supervised", "--dataset", "digits", "--num-tasks", str(SUPERVISED_TASKS),
        "--hidden-sizes", "256", "256", "--log-every", "100", "--checkpoint-every", "1",
        "--diagnostics", "none", "--track",
    ],
}  # fmt: skip


def start(argv: list[str], runs_dir: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(*argv, "--runs-dir", str(runs_dir)),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_checkpoint(process: subprocess.Popen, runs_dir: Path, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(runs_dir.glob("*/checkpoints/step_*.pt"))
        if found:
            return found[0].parent.parent
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint within the timeout")


def newest_step(run_dir: Path) -> int:
    return max(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))


def last_step(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            continue
    return 0


def final_step(run_dir: Path) -> int:
    state = load_checkpoint(run_dir)
    return state.get("global_step", state.get("examples_seen"))


def total_of(mode: str) -> int:
    return {"ppo": PPO_TOTAL, "sac": SAC_TOTAL, "supervised": SUPERVISED_TASKS * 1497}[mode]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "sig"), [("ppo", "KILL"), ("ppo", "TERM"), ("sac", "KILL"), ("supervised", "KILL")]
)
def test_a_run_killed_at_a_random_moment_resumes_with_every_record_once(tmp_path, mode, sig):
    rng = random.Random()
    process = start(RUNS[mode], tmp_path)
    run_dir = wait_for_checkpoint(process, tmp_path)
    # A random moment between the first checkpoint and 80% of the run, read off its records
    # (whatever the machine's speed), then a random fraction of a second more.
    target = rng.uniform(newest_step(run_dir), 0.8 * total_of(mode))
    while process.poll() is None and last_step(run_dir) < target:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))
    assert process.poll() is None, "the run ended before the kill: make it longer"
    process.send_signal(getattr(signal, f"SIG{sig}"))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    if sig == "TERM":  # stopped at the next update with a checkpoint of its own
        assert "interrupted: stopped at step" in stderr and "--resume" in stderr, stderr[-2000:]
        assert read_jsonl(run_dir / "events.jsonl")[-1]["event"] == "interrupted"

    # The statistics a resume starts from are the checkpoint's: resuming with nothing left to
    # do writes the same state back.
    at = newest_step(run_dir)
    assert at < total_of(mode), "the kill came after the last checkpoint: make the run longer"
    if mode == "ppo":
        loaded = load_checkpoint(run_dir)
        again = run_cli(mode, "--resume", str(run_dir), "--total-timesteps", str(at))
        assert again.returncode == 0, again.stderr[-3000:]
        reloaded = load_checkpoint(run_dir)
        for key in ("mean", "var", "count"):
            np.testing.assert_array_equal(
                reloaded["obs_normalizer"][key], loaded["obs_normalizer"][key]
            )
        np.testing.assert_array_equal(
            reloaded["reward_normalizer"]["rms"]["var"], loaded["reward_normalizer"]["rms"]["var"]
        )
        for name, value in loaded["actor"].items():
            assert torch.equal(reloaded["actor"][name], value), name
        total = ["--total-timesteps", str(PPO_TOTAL)]
    else:
        total = []

    resumed = run_cli(mode, "--resume", str(run_dir), *total)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_step(run_dir) == total_of(mode)
    metrics, events = assert_records_once(run_dir)
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes and resumes[-1]["checkpoint"] == f"step_{at}.pt"

    if mode == "ppo":  # the updates of an uninterrupted run, at the same steps
        steps = [m["step"] for m in metrics if "losses/value_loss" in m]
        assert steps == list(range(256, PPO_TOTAL + 1, 256))
        shifts = [e["step"] for e in events if e["event"] == "shift"]
        assert shifts == list(range(1024, PPO_TOTAL, 1024))
    if mode == "sac":
        state = load_checkpoint(run_dir)
        assert state["updates"] == SAC_TOTAL - 199  # one per step once the buffer held 200
        logs = [m["step"] for m in metrics if "charts/updates" in m]
        assert logs == list(range(100, SAC_TOTAL + 1, 100))
    if mode == "supervised":
        tasks = [m["charts/task"] for m in metrics if "charts/online_accuracy" in m]
        assert tasks == list(range(SUPERVISED_TASKS))
        # W&B offline: one segment per process, none sending a step an earlier one sent.
        segments = sorted((run_dir / "wandb").glob("offline-run-*"))
        assert len(segments) == 2
        # (What the killed process had not yet written, W&B's own writer lost with it.)
        first, second = (wandb_history_steps(segment) for segment in segments)
        assert second and (not first or max(first) < min(second)), (first, second, resumed.stderr)
        assert len(set(first + second)) == len(first + second)


def test_a_stopped_run_counts_its_pause_in_wall_time_and_not_in_cpu_time(tmp_path):
    """SIGSTOP a real run for 3 s (as a machine's owner pauses a sweep): its record's wall time
    holds the pause, its CPU time does not, so the report's CPU-hours are the run's own cost."""
    argv = ["supervised", "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "256", "256",
            "--checkpoint-every", "1", "--diagnostics", "none", "--torch-threads", "1"]  # fmt: skip
    process = start(argv, tmp_path)
    run_dir = wait_for_checkpoint(process, tmp_path)
    assert process.poll() is None, "the run ended before the pause: make it longer"
    process.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    files = read_run_files(run_dir)
    assert 0 < files.cpu_seconds < files.wall_seconds - 2.5, (files.cpu_seconds, files.wall_seconds)


# --- Checkpoints that do not load --------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_supervised_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("finished")
    result = run_cli(
        "supervised", "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "16",
        "--checkpoint-every", "1", "--diagnostics", "none", "--runs-dir", str(runs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(runs)


def test_a_resume_may_end_the_run_at_its_checkpoint_before_the_next_shift(tmp_path):
    """A run whose newest good checkpoint sits at its first shift step resumes with
    --total-timesteps at that step: "the run would have no shift" is a new run's mistake, not a
    resume's (the random-kill test above hits this when the kill lands before step 2048)."""
    argv = [*RUNS["ppo"], "--total-timesteps", "2048", "--runs-dir", str(tmp_path)]
    first = run_cli(*argv)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    (run_dir / "checkpoints" / "latest.pt").unlink()
    (run_dir / "checkpoints" / "step_2048.pt").write_bytes(b"")  # a kill during its write
    again = run_cli("ppo", "--resume", str(run_dir), "--total-timesteps", "1024")
    assert again.returncode == 0, again.stderr[-3000:]
    assert final_step(run_dir) == 1024
    metrics, _ = assert_records_once(run_dir)
    assert max(m["step"] for m in metrics) <= 1024
    # (A new run with that total is still refused: tests/test_envs.py.)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_newest_checkpoint_is_skipped_with_one_line(
    tmp_path, finished_supervised_run, damage
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_supervised_run, run_dir)
    # latest.pt is a hard link to the newest step file (copytree copies them apart)
    latest, newest = (
        finished_supervised_run / "checkpoints" / n for n in ("latest.pt", "step_4491.pt")
    )
    assert latest.stat().st_ino == newest.stat().st_ino
    (run_dir / "checkpoints" / "latest.pt").unlink()
    newest = run_dir / "checkpoints" / "step_4491.pt"
    raw = newest.read_bytes()
    newest.write_bytes(
        {"truncated": raw[: len(raw) // 2], "empty": b"", "garbage": bytes(random.randbytes(5000))}[
            damage
        ]
    )
    result = run_cli("supervised", "--resume", str(run_dir), "--num-tasks", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "skipped checkpoint" in line]
    assert line.startswith("warning: skipped checkpoint step_4491.pt")
    (resume,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "resume"]
    assert resume["checkpoint"] == "step_2994.pt" and resume["dropped_metrics"] > 0
    assert final_step(run_dir) == 4 * 1497
    metrics, _ = assert_records_once(run_dir)
    assert [m["charts/task"] for m in metrics if "charts/online_accuracy" in m] == [0, 1, 2, 3]
    assert not list(run_dir.glob("checkpoints/*.tmp")) and not list(run_dir.glob("checkpoints/.*"))


def test_no_loadable_checkpoint_is_one_error_line(tmp_path, finished_supervised_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_supervised_run, run_dir)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(b"")
    result = run_cli_in_process("supervised", "--resume", str(run_dir))
    assert result.returncode == 2
    assert "no checkpoint loads" in error_line(result.stderr)
    # A run killed while writing its first checkpoint leaves only a temporary file.
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.unlink()
    (run_dir / "checkpoints" / ".step_1497.pt.123.tmp").write_bytes(b"partial")
    result = run_cli_in_process("supervised", "--resume", str(run_dir))
    assert "no checkpoint yet" in error_line(result.stderr)


# --- Run directories ---------------------------------------------------------------------------


def _make_run_dir(runs_dir: str, queue) -> None:
    queue.put(str(create_run_dir(Path(runs_dir), "HalfCheetah-v5__ppo__none__1__1700000000")))


def test_runs_created_at_the_same_moment_get_directories_of_their_own(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    processes = [
        multiprocessing.get_context("fork").Process(
            target=_make_run_dir, args=(str(tmp_path), queue)
        )
        for _ in range(8)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    made = sorted(queue.get(timeout=5) for _ in processes)
    assert len(set(made)) == 8 and all(Path(path).is_dir() for path in made)
    assert Path(made[0]).name == "HalfCheetah-v5__ppo__none__1__1700000000"
    assert {Path(path).name.rsplit("-", 1)[-1] for path in made[1:]} == {
        str(k) for k in range(2, 9)
    }


def test_two_runs_started_together_write_two_intact_directories(tmp_path):
    base = ["supervised", "--dataset", "digits", "--num-tasks", "2", "--hidden-sizes", "16",
            "--diagnostics", "none", "--checkpoint-every", "0"]  # fmt: skip
    processes = [start([*base, "--learning-rate", lr], tmp_path) for lr in ("0.001", "0.0001")]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    run_dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(run_dirs) == 2
    rates = sorted(json.loads((d / "config.json").read_text())["learning_rate"] for d in run_dirs)
    assert rates == [0.0001, 0.001]
    for run_dir in run_dirs:
        metrics, _ = assert_records_once(run_dir)
        lr = json.loads((run_dir / "config.json").read_text())["learning_rate"]
        assert {m["charts/learning_rate"] for m in metrics if "charts/learning_rate" in m} == {lr}
        assert load_checkpoint(run_dir)["examples_seen"] == 2 * 1497


def test_a_run_directory_in_use_cannot_be_resumed_by_another_process(tmp_path):
    process = start(RUNS["ppo"], tmp_path)
    try:
        run_dir = wait_for_checkpoint(process, tmp_path)
        result = run_cli("ppo", "--resume", str(run_dir))
        assert "is in use by pid" in error_line(result.stderr)
    finally:
        process.kill()
        process.communicate()


# --- Resume with new flags ----------------------------------------------------------------------


def largest_change(before: dict, after: dict) -> float:
    return max(
        float((after[k] - v).abs().max()) for k, v in before.items() if v.is_floating_point()
    )


def test_a_new_learning_rate_given_with_resume_is_the_one_the_optimizer_uses(tmp_path):
    """Adam moves each weight by about the learning rate per step whatever the gradient, so the
    weights' largest change over the resumed updates shows the rate that was used."""
    first = run_cli(
        "ppo", "--env-id", "Hopper-v5", "--total-timesteps", "1024", "--num-steps", "256",
        "--num-minibatches", "4", "--update-epochs", "2", "--diagnostics", "none",
        "--runs-dir", str(tmp_path),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    before = load_checkpoint(run_dir)
    resumed = run_cli("ppo", "--resume", str(run_dir), "--total-timesteps", "2048",
                      "--learning-rate", "1e-6", "--adam-eps", "1e-8")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: --learning-rate 0.0003 -> 1e-06" in resumed.stderr
    after = load_checkpoint(run_dir)
    steps = 4 * 2 * 4  # updates x epochs x minibatches
    assert largest_change(before["actor"], after["actor"]) < 3 * steps * 1e-6
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == [1e-6]
    assert [g["eps"] for g in after["optimizer"]["param_groups"]] == [1e-8]
    metrics, events = assert_records_once(run_dir)
    rates = {m["step"]: m["charts/learning_rate"] for m in metrics if "charts/learning_rate" in m}
    assert {rates[s] for s in range(256, 1025, 256)} == {3e-4}
    assert {rates[s] for s in range(1280, 2049, 256)} == {1e-6}
    (resume,) = [e for e in events if e["event"] == "resume"]
    assert resume["changed"] == {
        "--total-timesteps": [1024, 2048],
        "--learning-rate": [0.0003, 1e-06],
        "--adam-eps": [1e-05, 1e-08],
    }
    assert json.loads((run_dir / "config.json").read_text())["learning_rate"] == 1e-6


def test_supervised_adam_takes_the_resumed_learning_rate(tmp_path):
    args = train.parse("supervised", [
        "--dataset", "digits", "--num-tasks", "1", "--hidden-sizes", "16", "--optimizer", "adam",
        "--learning-rate", "1e-3", "--diagnostics", "none", "--runs-dir", str(tmp_path),
    ])[1]  # fmt: skip
    run_dir = supervised.train(args)
    before = load_checkpoint(run_dir)
    _, args, resumed = train.parse(
        "supervised", ["--resume", str(run_dir), "--num-tasks", "2", "--learning-rate", "1e-7"]
    )
    supervised.train(args, resumed)  # the checkpoint train.py read is the one the run starts from
    after = load_checkpoint(run_dir)
    assert largest_change(before["model"], after["model"]) < 3 * 1497 * 1e-7
    assert after["optimizer"]["param_groups"][0]["lr"] == 1e-7


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--hidden-sizes", "8"],
            "--hidden-sizes cannot change on a resume: the run has (16,), the flags give (8,)",
        ),
        (["--seed", "2"], "--seed cannot change on a resume"),
        (["--stream", "class-incremental"], "--stream cannot change on a resume"),
        (["--regularizer", "l2"], "--regularizer cannot change on a resume"),
        (["--preset", "demo"], "--preset cannot be combined with --resume"),
    ],
)
def test_flags_that_cannot_change_on_a_resume_are_refused(finished_supervised_run, flags, message):
    with pytest.raises(Exception) as error:
        _, args, resumed = train.parse(
            "supervised", ["--resume", str(finished_supervised_run), *flags]
        )
        supervised.train(args, resumed)
    assert message in str(error.value)


def test_a_run_of_another_mode_is_refused(finished_supervised_run):
    result = run_cli_in_process("ppo", "--resume", str(finished_supervised_run))
    assert "is a supervised run; resume it with train.py supervised" in error_line(result.stderr)


# --- W&B without a key, a network or a working server ---------------------------------------


def timed_run(tmp_path: Path, name: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = cli_env(HOME=str(tmp_path / "home"), **env)
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        if key not in env:
            environment.pop(key, None)
    start_time = time.time()
    result = run_cli(
        "supervised", "--dataset", "digits", "--num-tasks", "2", "--hidden-sizes", "16",
        "--diagnostics", "none", "--track", "--runs-dir", str(tmp_path / name), env=environment,
    )  # fmt: skip
    return result, time.time() - start_time


class FailingServer(http.server.BaseHTTPRequestHandler):
    """A W&B server that answers every request with 500."""

    def do_GET(self):
        self.send_response(500)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_wandb_without_a_key_a_network_or_a_working_server_goes_offline_with_one_line(tmp_path):
    (tmp_path / "home").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = {"WANDB_API_KEY": "a" * 40}
    cases = {
        "no key": ({}, "no API key"),
        "no network": ({**key, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "cannot reach"),
        "server error": (
            {**key, "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}"},
            "failed to start online",
        ),
    }
    # All at once, the offline baseline among them: each case's time is compared with a run
    # that shared the machine with it.
    with concurrent.futures.ThreadPoolExecutor(len(cases) + 1) as pool:
        started = {
            name: pool.submit(timed_run, tmp_path, name.replace(" ", "-"), **env)
            for name, (env, _) in {"baseline": ({"WANDB_MODE": "offline"}, ""), **cases}.items()
        }
        finished = {name: future.result() for name, future in started.items()}
    _, baseline = finished.pop("baseline")
    for name, (_, reason) in cases.items():
        result, seconds = finished[name]
        print(name, f"{seconds:.1f} s against {baseline:.1f} s offline")
        assert result.returncode == 0, result.stderr[-3000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("warning: W&B")]
        assert reason in line and "offline" in line, line
        assert seconds < baseline + 30, (name, seconds, baseline)
        run_dir = only_run_dir(tmp_path / name.replace(" ", "-"))
        assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run"
        assert load_checkpoint(run_dir)["examples_seen"] == 2 * 1497
    server.shutdown()


# --- A full disk ----------------------------------------------------------------------------------


def test_a_really_full_disk_says_no_space_left(tmp_path):
    """A 64 KB tmpfs fills at the first checkpoint: the line names the disk's error (torch's
    own writer would say "[enforce fail at inline_container.cc] unexpected pos")."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        argv = ["supervised", "--dataset", "digits", "--num-tasks", "2", "--hidden-sizes", "64",
                "--checkpoint-every", "1", "--diagnostics", "none", "--runs-dir", str(disk)]  # fmt: skip
        result = subprocess.run(train_command(*argv), cwd=REPO, env=cli_env(), capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        line = error_line(result.stderr)
        assert "No space left on device" in line and "enforce fail" not in line, line
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def limit_file_size(limit: int):
    # Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG ("File too
    # large"): the same path through the code as a full disk's ENOSPC, in a real process.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
@pytest.mark.parametrize("fails", ["first checkpoint", "metrics after a checkpoint"])
def test_a_full_disk_is_one_line_and_the_last_good_checkpoint_survives(tmp_path, fails):
    # the checkpoint of this network is ~20 KB; metrics.jsonl passes 40 KB in the second task
    log_every = "1000" if fails == "first checkpoint" else "5"
    limit = 8_000 if fails == "first checkpoint" else 40_000
    argv = ["supervised", "--dataset", "digits", "--num-tasks", "3", "--hidden-sizes", "16",
            "--checkpoint-every", "1", "--diagnostics", "none", "--log-every", log_every,
            "--runs-dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(train_command(*argv), cwd=REPO, env=cli_env(), capture_output=True,
                            text=True, timeout=120, preexec_fn=limit_file_size(limit))  # fmt: skip
    assert result.returncode == 2
    line = error_line(result.stderr)
    run_dir = only_run_dir(tmp_path)
    assert "File too large" in line
    assert not list((run_dir / "checkpoints").glob(".*")), "a temporary file survived"
    if fails == "first checkpoint":
        assert "step_1497.pt" in line and "no checkpoint was written" in line
        return
    assert "metrics.jsonl" in line and "the last good checkpoint is" in line
    resumed = run_cli("supervised", "--resume", str(run_dir))  # room again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics, _ = assert_records_once(run_dir)
    assert [m["charts/task"] for m in metrics if "charts/online_accuracy" in m] == [0, 1, 2]


# --- Bad input: one line, no traceback ------------------------------------------------------------

PPO_BAD = [
    (["--env-id", "HalfCheetah-v9"], "did you mean"),
    (["--env-id", "Blackjack-v1"], "needs flat vector observations"),
    (["--update-epochs", "0"], "--update-epochs must be >= 1"),
    (["--hidden-sizes", "-4"], "--hidden-sizes must be >= 1"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes must be >= 1"),
    (["--hidden-sizes"], "--hidden-sizes needs at least one hidden layer"),
    (["--learning-rate", "nan"], "--learning-rate must be > 0"),
    (["--learning-rate", "-1"], "--learning-rate must be > 0"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    (["--gae-lambda", "-0.1"], "--gae-lambda must be in [0, 1]"),
    (["--num-minibatches", "3"], "--num-minibatches 3 must divide"),
    (["--num-envs", "0"], "--num-envs must be >= 1"),
    (["--clip-coef", "0"], "--clip-coef must be > 0"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0"),
    (["--reward-divisor", "0"], "--reward-divisor must be > 0"),
    (["--max-episode-steps", "-1"], "--max-episode-steps must be >= 0"),
    (["--no-norm-adv", "--adv-norm-scope", "rollout"], "--adv-norm-scope has no effect here"),
    (
        ["--shift", "obs-offset", "--shift-every", "1000", "--obs-offset.std", "-1"],
        "--obs-offset.std must be >= 0",
    ),
    (["--adam-betas", "0.9", "1.0"], "--adam-betas must be in [0, 1)"),
    (["--target-kl", "0"], "--target-kl must be > 0"),
    (["--vf-coef", "-1"], "--vf-coef must be >= 0"),
    (["--seed", "-1"], "--seed must be a seed"),
    (["--torch-threads", "-1"], "--torch-threads must be >= 0"),
    (["--diagnostics"], "--diagnostics needs at least one measure"),
    (["--diagnostics", "none", "hessian"], "--diagnostics none cannot be combined"),
    (["--regularizer", "l2", "--erank.lr", "0.1"], "--erank.lr has no effect here"),
    (["--friction.low", "0.1"], "--friction.low has no effect here"),
    (["--envpool-threads", "4"], "--envpool-threads has no effect here"),
    (["--wandb-project-name", "x"], "--wandb-project-name has no effect here"),
    (["--diagnostics", "none", "--diag.batch-size", "100"], "--diag.batch-size has no effect here"),
    (
        ["--diagnostics", "features", "--diag.lanczos-order", "10"],
        "--diag.lanczos-order has no effect",
    ),
    (["--shift", "friction"], "--shift needs --shift-every"),
    (["--shift", "friction", "--shift-every", "-5"], "--shift-every"),
    (["--total-timesteps", "100"], "shorter than one rollout"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
    (["--preset", "nope"], "unknown --preset 'nope'"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
    (["--preset", "demo", "--resume", "/nonexistent/run"], "--preset cannot be combined"),
    (["--runs-dir", "/proc/version/runs"], "--runs-dir /proc/version/runs: cannot create it"),
]
SAC_BAD = [
    (["--tau", "2"], "--tau must be in (0, 1]"),
    (["--q-lr", "nan"], "--q-lr must be > 0"),
    (["--policy-frequency", "0"], "--policy-frequency must be >= 1"),
    (["--learning-starts", "500", "--buffer-size", "100"], "--learning-starts 500 must be between"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--alpha", "0.5"], "--alpha has no effect here"),
    (["--no-autotune", "--target-entropy", "-2"], "--target-entropy has no effect here"),
    (["--buffer-at-shift", "flush"], "--buffer-at-shift has no effect here"),
    (["--env-id", "CartPole-v1"], "needs continuous (Box) actions"),
    (["--diag.joint"], "--diag.joint"),
    (["--hidden-sizes", "0"], "--hidden-sizes must be >= 1"),
]
SUPERVISED_BAD = [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--learning-rate", "0"], "--learning-rate must be > 0"),
    (["--momentum", "1.0"], "--momentum must be in [0, 1)"),
    (
        ["--stream", "slowly-changing-regression", "--dataset", "digits"],
        "--dataset has no effect here",
    ),
    (["--subset", "10"], "--subset has no effect here"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum has no effect here"),
    (["--num-tasks", "0"], "--num-tasks must be at least 1"),
    (["--examples-per-task", "-1"], "--examples-per-task must be >= 0"),
    (["--update", "fused", "--optimizer", "adam"], "--update fused cannot run here"),
    (
        ["--stream", "permuted-fashion-mnist", "--data-dir", "/nonexistent"],
        "not found in the data directory",
    ),
    (["--hidden-sizes", "0"], "--hidden-sizes must be >= 1"),
    (["--diag-every-tasks", "0"], "--diag-every-tasks must be >= 1"),
    (["--diag.min-init-samples", "10"], "--diag.min-init-samples has no effect here"),
]
BAD_INPUTS = (
    [("ppo", *case) for case in PPO_BAD]
    + [("sac", *case) for case in SAC_BAD]
    + [("supervised", *case) for case in SUPERVISED_BAD]
)


@pytest.mark.parametrize(("mode", "flags", "message"), BAD_INPUTS)
def test_bad_input_is_one_error_line(tmp_path, capsys, mode, flags, message):
    """train.main as the command line runs it: exit status 2, one `error:` line, no traceback,
    and no run directory left behind."""
    with pytest.raises(SystemExit) as exit_status:
        runs_dir = [] if "--runs-dir" in flags else ["--runs-dir", str(tmp_path / "runs")]
        train.main([mode, *flags, *runs_dir])
    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    assert message in error_line(stderr), stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_the_bad_input_table_covers_forty_cases_across_the_three_modes():
    assert len(BAD_INPUTS) >= 40 and {mode for mode, *_ in BAD_INPUTS} == {
        "ppo",
        "sac",
        "supervised",
    }


def test_a_bad_input_in_a_real_process_is_one_line(tmp_path):
    result = run_cli("ppo", "--update-epochs", "0", "--runs-dir", str(tmp_path))
    assert result.returncode == 2
    assert error_line(result.stderr) == "error: --update-epochs must be >= 1, got 0"


def test_the_help_lists_the_learners_own_flags_first(tmp_path):
    for mode, own, later in (("ppo", "--clip-coef", "--shift-every"), ("sac", "--tau", "--shift-every"),
                             ("supervised", "--stream", "--regularizer")):  # fmt: skip
        lines = run_cli_in_process(mode, "--help").stdout.splitlines()

        def row(flag: str, lines: list[str] = lines) -> int:  # where the flag itself is listed
            return next(i for i, line in enumerate(lines) if line.startswith(f"│ {flag} "))

        order = [row(own), row(later), row("--diagnostics"), row("--track, --no-track")]
        assert order == sorted(order), (mode, order)


def test_presets_go_through_one_function(tmp_path):
    _, args, _ = train.parse("ppo", ["--preset", "demo", "--seed", "3"])
    assert (args.preset, args.total_timesteps, args.regularizer, args.seed) == (
        "demo",
        200_000,
        "l2-er",
        3,
    )
    assert ppo.LEARNER.presets is ppo.PRESETS


def test_cuda_random_states_are_restored_for_the_devices_this_host_has(monkeypatch):
    """A checkpoint from a host with more GPUs restores the states it can, by index, instead of
    failing (torch.cuda.set_rng_state_all would index past this host's devices). Only the
    CUDA calls are stand-ins here: this machine has no GPU."""
    from agents import checkpoints as lifecycle

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append(index))
    saved = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [torch.zeros(8, dtype=torch.uint8)] * 4,  # four GPUs' states
    }
    lifecycle.set_rng_state(saved)
    assert restored == [0]
