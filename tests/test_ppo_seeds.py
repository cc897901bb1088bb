"""K seeds of one PPO configuration in one process (agents/ppo_seeds.py): one batched update
against each seed's own update for every regularizer, a batched run against single runs, a seed
that diverges alone, and what --seeds refuses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from run_helpers import (
    agents_built_as_single_runs,
    assert_records_once,
    read_jsonl,
    run_cli_in_process,
)

from agents import ppo, ppo_seeds
from agents.checkpoints import load_checkpoint
from agents.flags import preset_defaults
from regularizers import METHODS, CBPConfig, ReDoConfig, SpectralConfig

SEEDS = (3, 5, 8)


def build_agents(args: ppo.Args, seeds=SEEDS) -> list[ppo.PPOAgent]:
    """Each seed's agent as a single run builds it (no run directory: diagnostics are off)."""
    return agents_built_as_single_runs(ppo.PPOAgent, args, seeds, "PPO", bounded_actions=False,
                                       discrete_actions=True)  # fmt: skip


def rollout_batch(agent: ppo.PPOAgent, n: int, seed: int) -> dict[str, torch.Tensor]:
    """A rollout's flat batch with the old log-probabilities near the policy's own (ratios near
    1, so both the clipped and the unclipped branches of the surrogate are taken)."""
    generator = torch.Generator().manual_seed(seed)
    obs_dim = agent.obs_normalizer.rms.mean.shape[0]
    obs = torch.randn(n, obs_dim, generator=generator)
    if agent.discrete:
        actions = torch.randint(0, agent.action_space.n, (n,), generator=generator)
    else:
        actions = torch.randn(n, *agent.action_space.shape, generator=generator)
    with torch.no_grad():
        outputs, _ = ppo.policy_outputs(agent.actor, obs)
        logprobs, _ = ppo.log_prob_and_entropy(outputs, actions)
    return {
        "obs": obs,
        "actions": actions,
        "logprobs": logprobs + 0.2 * torch.randn(n, generator=generator),
        "advantages": torch.randn(n, generator=generator),
        "returns": torch.randn(n, generator=generator),
        "values": torch.randn(n, generator=generator),
    }


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("regularizer", sorted(METHODS))
def test_one_batched_update_is_each_seeds_own_update(env_id, regularizer):
    """From the same parameters, the same shift moment and the same minibatch orders, one
    batched update (2 epochs x 4 minibatches, gradient clipping on: a norm per seed) leaves each
    seed's actor, critic and statistics where its own single-run update does, to float32
    rounding, for every regularizer; the categorical policy (CartPole) and the Gaussian one."""
    args = ppo.Args(
        env_id=env_id, regularizer=regularizer, hidden_sizes=(16, 16), num_steps=64,
        num_minibatches=4, update_epochs=2, max_grad_norm=0.5, learning_rate=3e-3,
        diagnostics=("none",), shift=(), norm_obs=False, norm_reward=False,
        # strengths far above the defaults, so that each method acts within one update (CBP
        # replaces and ReDo recycles units in it)
        cbp=CBPConfig(replacement_rate=0.2, maturity=1), redo=ReDoConfig(tau=0.5, every=1),
        spectral=SpectralConfig(strength=1.0, target=0.5), erank=ppo.ERankConfig(lr=1e-2),
    )  # fmt: skip
    assert_one_batched_update_is_each_seeds_own(args)


@pytest.mark.parametrize("regularizer", ["none", "l2", "l2-init"])
def test_a_seed_whose_loss_is_not_finite_skips_only_its_own_steps(regularizer):
    """One seed's rollout holds a NaN advantage: in the batched update that seed skips the
    minibatch steps its single run skips (its loss not finite there), and every seed, it and
    the others, ends where its own single-run update leaves it (the steps taken on the stacks,
    and L2 Init's, taken seed by seed)."""
    args = ppo.Args(
        env_id="CartPole-v1", regularizer=regularizer, hidden_sizes=(16, 16), num_steps=64,
        num_minibatches=4, update_epochs=2, max_grad_norm=0.5, learning_rate=3e-3,
        diagnostics=("none",), shift=(), norm_obs=False, norm_reward=False,
    )  # fmt: skip
    skipped = assert_one_batched_update_is_each_seeds_own(args, not_finite_seed=1)
    assert skipped == [0, 2, 0]  # the NaN row is in one minibatch of each of the 2 epochs


def assert_one_batched_update_is_each_seeds_own(
    args: ppo.Args, not_finite_seed: int | None = None
) -> list[float]:
    """Runs both updates and compares them; returns each seed's skipped minibatch steps."""
    single, batched = build_agents(args), build_agents(args)
    nets = ppo_seeds.StackedNets(batched)
    batches = [rollout_batch(agent, 64, seed) for agent, seed in zip(single, SEEDS, strict=True)]
    if not_finite_seed is not None:
        batches[not_finite_seed]["advantages"][5] = float("nan")
    for agent in single + batched:  # reset and shrink-perturb redraw from each seed's own stream
        agent.regularizer.on_shift()
    single_stats = []
    for index, (agent, batch) in enumerate(zip(single, batches, strict=True)):
        torch.manual_seed(100 + index)  # the minibatch orders the batched seed draws
        single_stats.append(ppo.ppo_update(args, agent, batch, ppo.minibatch_loss)[0])
    seeds = [
        SimpleNamespace(agent=agent, generator=torch.Generator().manual_seed(100 + index))
        for index, agent in enumerate(batched)
    ]
    batched_stats, _ = ppo_seeds.stacked_update(args, seeds, nets, batches)
    moved = 0.0
    for one, stacked, stats, expected in zip(
        single, batched, batched_stats, single_stats, strict=True
    ):
        for net in ("actor", "critic"):
            ours = dict(getattr(stacked, net).named_parameters())
            for name, param in getattr(one, net).named_parameters():
                torch.testing.assert_close(ours[name], param, rtol=1e-4, atol=2e-5, msg=name)
        for key in ("losses/value_loss", "losses/policy_loss", "losses/entropy",
                    "losses/approx_kl", "losses/clipfrac", "regularizer/penalty", "skipped"):  # fmt: skip
            assert stats[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5, nan_ok=True), key
        start = build_agents(args, (SEEDS[single.index(one)],))[0]
        moved += sum(
            float((p - q).detach().abs().sum())
            for p, q in zip(one.actor.parameters(), start.actor.parameters(), strict=True)
        )
    assert moved > 0  # the update moved the actors: the comparison is not of two idle networks
    # The stacks are the seeds' parameters: the next batched forward sees the update.
    obs = torch.stack([batch["obs"][:4] for batch in batches])
    with torch.no_grad():
        outputs, _ = nets.policy(obs)
        for index, agent in enumerate(single):
            expected, _ = ppo.policy_outputs(agent.actor, obs[index])
            torch.testing.assert_close(outputs[index], expected, rtol=1e-4, atol=2e-5)
    return [stats["skipped"] for stats in batched_stats]


def continual_cartpole(tmp_path: Path, **changes) -> ppo.Args:
    args = preset_defaults(ppo.Args, ppo.LEARNER, "continual-cartpole")
    return dataclasses.replace(
        args, **{"runs_dir": str(tmp_path), "checkpoint_every": 0, **changes}
    )


@pytest.mark.slow
def test_batched_seeds_learn_cartpole_as_their_single_runs_do(tmp_path):
    """A learning claim, tested by learning: C-CHAIN's PPO (a softmax policy over CartPole's two
    actions) on a 64 x 64 network (its 3 x 256 took 3x the time here, for the same claim) on
    CartPole without shifts, 20 iterations of 800 steps, as a single run (seed 2)
    and as two seeds batched: each rises from a random policy's return (~20) to several times
    it. Each batched seed writes the run directory its single run writes: the same config.json
    (its own seed), the same metric names, the single run's events plus which seeds shared the
    process; its last checkpoint holds only its own weights and resumes alone."""
    args = continual_cartpole(
        tmp_path / "batched", shift=(), shift_every=0, total_timesteps=16_000, seeds=(2, 4),
        diagnostics=("none",), checkpoint_every=8_000, hidden_sizes=(64, 64),
    )  # fmt: skip
    directories = ppo_seeds.train(args)
    single_dir = ppo.train(dataclasses.replace(args, seeds=(), seed=2,
                                               runs_dir=str(tmp_path / "single")))  # fmt: skip
    single_config = json.loads((single_dir / "config.json").read_text())
    single_keys = {key for m in read_jsonl(single_dir / "metrics.jsonl") for key in m}
    single_events = [e["event"] for e in read_jsonl(single_dir / "events.jsonl")]
    for directory in [single_dir, *directories]:
        metrics = read_jsonl(directory / "metrics.jsonl")
        returns = [m["charts/rollout_return"] for m in metrics if "charts/rollout_return" in m]
        assert len(returns) == 20
        first, last = returns[0], np.mean(returns[-3:])  # the first: the initial policy's
        assert first < 40 and last > 4 * first and last > 100, (directory.name, first, last)
    for seed, directory in zip((2, 4), directories, strict=True):
        assert directory.name.startswith(f"CartPole-v1__ppo__none__{seed}__")
        config = json.loads((directory / "config.json").read_text())
        assert config["seed"] == seed
        own = ("seed", "run_name", "runs_dir")
        assert {k: v for k, v in config.items() if k not in own} == {
            k: v for k, v in single_config.items() if k not in own
        }
        metrics = read_jsonl(directory / "metrics.jsonl")
        assert {key for m in metrics for key in m} == single_keys
        assert_records_once(directory)
        events = read_jsonl(directory / "events.jsonl")
        assert [e["event"] for e in events if e["event"] != "seeds_in_process"] == single_events
        assert [e["seeds"] for e in events if e["event"] == "seeds_in_process"] == [[2, 4]]
        saved = load_checkpoint(directory)
        weight = saved["actor"]["logits.hidden.0.weight"]
        assert weight.untyped_storage().nbytes() == weight.numel() * 4  # not the whole stack
    # A batched seed's checkpoint resumes as a single run, to a longer budget.
    resumed = run_cli_in_process("ppo", "--resume", str(directories[1]),
                                 "--total-timesteps", "17600")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    steps = [m["step"] for m in read_jsonl(directories[1] / "metrics.jsonl")
             if "charts/rollout_return" in m]  # fmt: skip
    assert steps == list(range(800, 17_601, 800))
    assert_records_once(directories[1])


def test_a_seed_that_diverges_stops_alone(tmp_path, monkeypatch, capsys):
    """One seed's weights turned NaN (a fault injected after it is built): its run records
    `diverged` and ends; the other seed trains to the end and finishes; the command ends with
    one error line naming the diverged seed."""
    build = ppo_seeds.Seed.build

    def build_then_poison(seed):
        build(seed)
        if seed.args.seed == 7:
            with torch.no_grad():
                next(seed.agent.actor.parameters()).fill_(float("nan"))

    monkeypatch.setattr(ppo_seeds.Seed, "build", build_then_poison)
    args = continual_cartpole(
        tmp_path, shift=(), shift_every=0, total_timesteps=2_400, seeds=(6, 7),
        hidden_sizes=(16,), diagnostics=("none",),
    )  # fmt: skip
    with pytest.raises(ppo_seeds.ConfigError, match=r"1 of 2 seeds diverged \(seed 7: "):
        ppo_seeds.train(args)
    runs = {d.name.split("__")[3]: d for d in tmp_path.iterdir()}
    healthy = [e["event"] for e in read_jsonl(runs["6"] / "events.jsonl")]
    poisoned = [e["event"] for e in read_jsonl(runs["7"] / "events.jsonl")]
    assert healthy[-1] == "finished" and "diverged" not in healthy
    assert poisoned[-1] == "diverged" and "finished" not in poisoned
    steps = [m["step"] for m in read_jsonl(runs["6"] / "metrics.jsonl")
             if "losses/value_loss" in m]  # fmt: skip
    assert steps == [800, 1600, 2400]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "1", "1"], "--seeds: each seed once, got [1, 1]"),
        (["--seeds", "1", "2", "--compile"], "--seeds does not take --compile"),
        (["--seeds", "1", "2", "--target-kl", "0.02"], "--seeds does not take --target-kl"),
        (["--seeds", "1", "-3"], "--seeds must be a seed in [0, 2**32)"),
    ],
)
def test_what_ppo_seeds_cannot_run_is_one_error_line(tmp_path, flags, message):
    result = run_cli_in_process("ppo", "--env-id", "CartPole-v1", "--runs-dir", str(tmp_path),
                                *flags)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["alone", "together"])
def test_a_batched_process_killed_resumes_with_every_record_once(tmp_path, how):
    """kill -9 of a process training two seeds, at a random moment after both have a
    checkpoint: each seed's run resumes (alone, or both in one process with
    `--resume DIR1 DIR2`) from its last checkpoint to the end, with every record once and the
    updates and shifts of an uninterrupted run at the same steps. Together, the kill is also
    made to fall between the two seeds' checkpoints (the second seed's newest one removed):
    both resume from the step they share, and the first seed's newer checkpoint is dropped."""
    import random
    import signal
    import subprocess
    import time

    from run_helpers import cli_env, run_cli, train_command

    total = 8192
    flags = ["ppo", "--preset", "continual-cartpole", "--num-steps", "256", "--num-minibatches",
             "4", "--hidden-sizes", "16", "--total-timesteps", str(total), "--shift-every",
             "2048", "--checkpoint-every", "512", "--diagnostics", "none", "--runs-dir",
             str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(train_command(*flags, "--seeds", "1", "2"), env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    needed = 2 if how == "together" else 1  # checkpoints a seed has at the kill
    while time.time() < deadline:
        checkpoints = [path.parents[1] for path in tmp_path.glob("*/checkpoints/step_*.pt")]
        if len(set(checkpoints)) == 2 and min(map(checkpoints.count, checkpoints)) >= needed:
            break
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.3))
    assert process.poll() is None, "the run ended before the kill: make it longer"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    runs = sorted(path for path in tmp_path.iterdir() if path.is_dir())
    assert len(runs) == 2
    if how == "together":

        def steps(run_dir: Path) -> set[int]:
            return {int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")}

        newest = max(steps(runs[1]))  # the second seed one checkpoint behind the first
        (runs[1] / "checkpoints" / f"step_{newest}.pt").unlink()
        (runs[1] / "checkpoints" / "latest.pt").unlink()
        common = max(steps(runs[0]) & steps(runs[1]))
        assert common < max(steps(runs[0]))
        resumed = run_cli_in_process("ppo", "--resume", *map(str, runs))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run_dir in runs:
        if how == "alone":
            resumed = run_cli("ppo", "--resume", str(run_dir))
            assert resumed.returncode == 0, resumed.stderr[-3000:]
        metrics, events = assert_records_once(run_dir)
        if how == "together":
            (resume,) = [e for e in events if e["event"] == "resume"]
            assert resume["step"] == common and resume["checkpoint"] == f"step_{common}.pt"
            assert [e["seeds"] for e in events if e["event"] == "seeds_in_process"
                    and e["step"] == common] == [[1, 2]]  # fmt: skip
        assert [m["step"] for m in metrics if "losses/value_loss" in m] == list(
            range(256, total + 1, 256)
        )
        assert [e["step"] for e in events if e["event"] == "shift"] == [2048, 4096, 6144]
        assert events[-1]["event"] == "finished"


def test_what_cannot_resume_together_is_one_error_line(tmp_path):
    """`--resume DIR1 DIR2 ...` takes runs of one configuration (what differs is each seed's
    own), each once, without --seeds or --preset, and of the learner that resumes them."""
    args = continual_cartpole(tmp_path, seeds=(1, 2), total_timesteps=1600, shift_every=800,
                              diagnostics=("none",), checkpoint_every=800, hidden_sizes=(8,),
                              num_steps=400, num_minibatches=4)  # fmt: skip
    first, second = map(str, ppo_seeds.train(args))
    other = str(ppo.train(dataclasses.replace(args, seeds=(), seed=3, hidden_sizes=(16,))))
    cases = [
        (["ppo", "--resume", first, other], f"--resume: {other} is not the same configuration"),
        (["ppo", "--resume", first, first], "--resume: each run directory once"),
        (["ppo", "--resume", first, second, "--seeds", "1", "2"], "--resume with several run "
         "directories takes their seeds and config from them; leave out --seeds and --preset"),
        (["sac", "--resume", first, second], f"--resume {Path(first).resolve()} is a ppo run"),
    ]  # fmt: skip
    for argv, message in cases:
        result = run_cli_in_process(*argv)
        assert result.returncode == 2, argv
        assert result.stderr.startswith(f"error: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
