"""K seeds of one SAC configuration in one process (agents/sac_seeds.py): one batched update
against each seed's own update, batched seeds that learn, resume together, and a seed that
diverges alone."""

from __future__ import annotations

import dataclasses
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

from agents import sac, sac_seeds
from agents.checkpoints import load_checkpoint
from regularizers import (
    METHODS,
    CBPConfig,
    L2Config,
    L2InitConfig,
    ParsevalConfig,
    ReDoConfig,
    SpectralConfig,
)
from validation import ConfigError

SEEDS = (3, 5)


def build_agents(args: sac.Args) -> list[sac.SACAgent]:
    """Each seed's agent as a single run builds it (no run directory: diagnostics are off)."""
    return agents_built_as_single_runs(sac.SACAgent, args, SEEDS, "SAC", bounded_actions=True)


def replay_batch(agent: sac.SACAgent, n: int, seed: int) -> dict[str, torch.Tensor]:
    """A replay sample's named views (random transitions, some terminated)."""
    generator = torch.Generator().manual_seed(seed)
    obs_dim, act_dim = agent.actor.trunk.hidden[0].in_features, agent.actor.act_dim
    buffer = sac.ReplayBuffer(n, obs_dim, act_dim, torch.device("cpu"))
    outcome = torch.cat([torch.randn(n, 1, generator=generator),
                         (torch.rand(n, 1, generator=generator) < 0.1).float(),
                         torch.randn(n, obs_dim, generator=generator)], 1)  # fmt: skip
    buffer.add(torch.randn(n, obs_dim, generator=generator),
               torch.rand(n, act_dim, generator=generator) * 2 - 1, outcome)  # fmt: skip
    return buffer.unpack(buffer.recent(n))


@pytest.mark.parametrize("regularizer", sorted(METHODS))
def test_one_batched_update_is_each_seeds_own_update(regularizer):
    """From the same parameters, the same shift moment and the same replay batch and noise, three
    batched SAC updates (critic, actor, alpha, Polyak) leave each seed's actor, critic, target
    and alpha where its own single-run updates do, to float32 rounding, for every regularizer."""
    # Strengths far above the defaults, so that each method's part of the step shows (CBP
    # replaces and ReDo recycles units within these three updates).
    args = sac.Args(env_id="Pendulum-v1", regularizer=regularizer, hidden_sizes=(16, 16),
                    diagnostics=("none",), erank=sac.ERankConfig(every=1, lr=1e-2),
                    l2_init=L2InitConfig(strength=10.0), parseval=ParsevalConfig(strength=1.0),
                    l2=L2Config(weight_decay=1e-1),
                    spectral=SpectralConfig(strength=1.0, target=0.5),
                    cbp=CBPConfig(replacement_rate=0.2, maturity=1),
                    redo=ReDoConfig(tau=0.5, every=1))  # fmt: skip
    single, batched = build_agents(args), build_agents(args)
    batches = [replay_batch(agent, 32, seed) for agent, seed in zip(single, SEEDS, strict=True)]
    nets = sac_seeds.StackedSAC(batched)
    seeds = [SimpleNamespace(agent=agent, generator=torch.Generator().manual_seed(100 + k),
                             last={}, regularizer_metrics={}, diverged=None)
             for k, agent in enumerate(batched)]  # fmt: skip
    # A shift first: reset and shrink-perturb redraw each seed's weights (from the seed's own
    # stream) in place, which the stacks' views must see.
    for agent in single + batched:
        for regularizer in agent.regularizers.values():
            regularizer.on_shift()
    stacked = {key: torch.stack([b[key] for b in batches]) for key in batches[0]}
    # Each single seed draws its noise from the global stream, in the order its batched twin
    # draws from its own generator (the critic's, then the actor's): one stream state a seed.
    streams = [torch.Generator().manual_seed(100 + k).get_state() for k in range(len(SEEDS))]
    for _ in range(3):
        for k, (agent, batch) in enumerate(zip(single, batches, strict=True)):
            torch.set_rng_state(streams[k])
            sac.critic_update(agent, batch)
            sac.actor_update(agent, batch)
            sac.polyak_update(list(agent.critic_target.parameters()),
                              list(agent.critic.parameters()), args.tau)  # fmt: skip
            streams[k] = torch.get_rng_state()
        sac_seeds.stacked_critic_update(seeds, nets, stacked)
        sac_seeds.stacked_actor_update(seeds, nets, stacked)
        sac.polyak_update([t for s in nets.target for t in s.values()],
                          [q.detach() for s in nets.q for q in s.values()], args.tau)  # fmt: skip
    for one, twin in zip(single, batched, strict=True):
        for net in ("actor", "critic", "critic_target"):
            ours = dict(getattr(twin, net).named_parameters())
            for name, param in getattr(one, net).named_parameters():
                torch.testing.assert_close(ours[name], param, rtol=1e-4, atol=2e-5, msg=name)
        torch.testing.assert_close(twin.log_alpha, one.log_alpha, rtol=1e-5, atol=1e-6)
    start = build_agents(args)[0]
    moved = sum(float((p - q).detach().abs().sum()) for p, q in
                zip(single[0].actor.parameters(), start.actor.parameters(), strict=True))  # fmt: skip
    assert moved > 0  # the updates moved the actors: not a comparison of idle networks


@pytest.mark.slow
def test_batched_seeds_learn_and_resume_together(tmp_path):
    """A learning claim, tested by learning: each of two batched seeds' return clearly rises on
    InvertedPendulum within CI's budget (as the single run's test asks). Then the finished runs
    resume together to a longer total, every record once."""
    args = dataclasses.replace(
        sac.Args(),
        env_id="InvertedPendulum-v5", total_timesteps=4000, learning_starts=1000,
        hidden_sizes=(64, 64), seeds=(1, 2), diagnostics=("none",), checkpoint_every=0,
        save_buffer=True, runs_dir=str(tmp_path), cuda=False,
    )  # fmt: skip
    run_dirs = sac_seeds.train(args)
    for run_dir, seed in zip(run_dirs, (1, 2), strict=True):
        returns = [m["charts/episodic_return"] for m in read_jsonl(run_dir / "metrics.jsonl")
                   if "charts/episodic_return" in m]  # fmt: skip
        first, last = np.mean(returns[:20]), np.mean(returns[-10:])
        assert last > 5 * first and last > 40, (seed, first, last)
    resumed = run_cli_in_process("sac", "--resume", *map(str, run_dirs),
                                 "--total-timesteps", "4500")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run_dir in run_dirs:
        metrics, events = assert_records_once(run_dir)
        kinds = [e["event"] for e in events]
        assert kinds.count("resume") == 1 and kinds[-1] == "finished"
        assert [e["seeds"] for e in events if e["event"] == "seeds_in_process"] == [[1, 2]] * 2
        assert load_checkpoint(run_dir)["global_step"] == 4500
        assert max(m["step"] for m in metrics) > 4000


def test_a_seed_that_diverges_stops_alone_and_is_named(tmp_path, monkeypatch):
    """One seed's actor turned NaN after it is built (an injected fault): its run records
    `diverged` at the first log line with losses, the other seed trains to the end; the
    command ends with one error line naming the diverged seed."""
    build = sac_seeds.Seed.build

    def build_then_poison(seed):
        build(seed)
        if seed.args.seed == 7:
            with torch.no_grad():
                next(seed.agent.actor.parameters()).fill_(float("nan"))

    monkeypatch.setattr(sac_seeds.Seed, "build", build_then_poison)
    args = sac.Args(env_id="Pendulum-v1", seeds=(6, 7), total_timesteps=800, learning_starts=200,
                    log_every=200, hidden_sizes=(16,), diagnostics=("none",),
                    checkpoint_every=0, runs_dir=str(tmp_path), cuda=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"1 of 2 seeds diverged \(seed 7: "):
        sac_seeds.train(args)
    runs = {d.name.split("__")[3]: d for d in tmp_path.iterdir()}
    healthy = [e["event"] for e in read_jsonl(runs["6"] / "events.jsonl")]
    poisoned = [e["event"] for e in read_jsonl(runs["7"] / "events.jsonl")]
    assert healthy[-1] == "finished" and "diverged" not in healthy
    assert poisoned[-1] == "diverged" and "finished" not in poisoned
    steps = [m["step"] for m in read_jsonl(runs["6"] / "metrics.jsonl")
             if "losses/qf1_loss" in m]  # fmt: skip
    assert steps == [400, 600, 800]
