"""K seeds of one PPO configuration in one process: `train.py ppo --seeds 1 2 3 4 5 6`.

K actors and critics stacked along a seed axis act in one batched forward and learn in one
batched backward per minibatch. On a GPU that costs little more than one seed; on a CPU the
matrix products of continual CartPole's 3 x 256 networks do not shrink, and K seeds in one
process save the per-operation cost around them (docs/benchmarks.md).

Each seed is still an ordinary run. It has its own envs (its own shifts and task parameters),
random stream, optimizer, regularizer, diagnostics and Run, and writes the run directory that
`--seed S` alone writes (config.json with its seed, metrics, events, checkpoints,
diagnostics, W&B run). Its actor and critic are ordinary modules whose parameters are views
into the stacked tensors (agents.networks.stack_parameters). So everything that is not the
forward and backward pass is the single run's own code, called once per seed on that seed's
modules: the rewards, GAE, the task boundaries and their Hessian spectra, the regularizer's
moments (penalty on the seed's own features, before_step on its own gradients, after_update,
on_shift; ER's after_update is one step for all seeds, with a batched SVD: each seed moves as
its own step moves it, regularizers/base.py `after_update_seeds`), gradient clipping (a norm
per seed, never across seeds), its Adam step and its checkpoints, which are single-run
checkpoints (a stopped seed resumes alone with `train.py ppo --resume RUN_DIR`). Where every
seed's method adds nothing to the gradient but coupled decay, the clipping, the decay and the
seeds' Adam steps are taken on the stacks' gradients (agents.networks.step_seeds_on_stacks):
the same steps, without K rounds of per-parameter Python.

What is not exact: each seed samples its actions and minibatch orders from its own
torch.Generator (seeded by its seed), not from the global stream a single run uses, so a seed's
run here is another draw of the same experiment, not its single run's copy (tests compare one
update exactly, and a short run by what it learns). A seed that diverges stops alone (its run
records `diverged`, the others go on, and the command ends with one error line naming it).
Not batched: --compile and --target-kl (an early stop per seed).

Stopped, the K runs resume together (`train.py ppo --resume DIR1 DIR2 ...`, agents/cli.py:
parse_resume_together) from their checkpoints at the newest step all of them have, each
seed's generator where its checkpoint left it; or each alone (`--resume DIR`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agents.checkpoints import Resumed, seed_generator
from agents.networks import (
    CategoricalActor,
    stack_parameters,
    stacked_mlp,
    step_seeds_on_stacks,
    take_seed_gradient,
)
from agents.ppo import (
    LEARNER,
    LOG_2PI,
    Args,
    PPOAgent,
    Rollout,
    advantages_and_returns,
    begin_task,
    check_args,
    check_skipped,
    checkpoint_state,
    hidden_features,
    measure_boundaries,
    ppo_envs,
    ppo_terms,
    restore_checkpoint,
)
from agents.progress import EpisodeStats, progress_bar
from agents.run import (
    Diverged,
    HostToDevice,
    Interrupted,
    RLSeed,
    Run,
    end_diverged,
    resumed_seed_configs,
    seed_configs,
    seed_everything,
    train_rl_seeds,
)
from diagnostics import TaskBoundaries
from envs.video import ClipRecorder
from regularizers.base import SeedStacks, after_update_seeds
from validation import ConfigError


class StackedNets:
    """The K seeds' actors and critics as stacked leaf tensors (seed axis first) that the
    seeds' own modules' parameters are views into: the batched forward and backward run on the
    stack, each seed's optimizer steps its own views."""

    def __init__(self, agents: list[PPOAgent]):
        self.template = agents[0]
        self.actor = stack_parameters([agent.actor for agent in agents], requires_grad=True)
        self.critic = stack_parameters([agent.critic for agent in agents], requires_grad=True)
        self.stacks = [*self.actor.values(), *self.critic.values()]

    def policy(
        self, obs: Tensor, params: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """`policy_outputs` for every seed: obs (K, batch, obs_dim); `params` in place of the
        actor's stacks (for a method's own leaves)."""
        actor, params = self.template.actor, self.actor if params is None else params
        if isinstance(actor, CategoricalActor):
            return stacked_mlp(actor.logits, params, "logits.", obs)
        mean, features = stacked_mlp(actor.mean, params, "mean.", obs)
        log_std = params["log_std"].unsqueeze(1).expand_as(mean)
        return torch.cat([mean, log_std], -1), features

    def values(
        self, obs: Tensor, params: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        params = self.critic if params is None else params
        values, features = stacked_mlp(self.template.critic.value, params, "value.", obs)
        return values.squeeze(-1), features

    def on(self, obs: Tensor) -> SeedStacks:
        """The stacks as a method batched across seeds sees them, with the features of
        `hidden_features` on obs (K, batch, obs_dim)."""
        return SeedStacks(
            {"actor": self.actor, "critic": self.critic},
            lambda params: {"actor": self.policy(obs, params["actor"])[1],
                            "critic": self.values(obs, params["critic"])[1]},
        )  # fmt: skip


@dataclass
class Seed(RLSeed[Args]):
    """One seed's ordinary run inside the batched process, and what its loop carries."""

    agent: PPOAgent | None = None
    next_obs: Tensor | None = None
    rollout: Rollout | None = None
    previous_batch: dict[str, Tensor] | None = None

    def build(self) -> None:
        """The agent, from the random state a single run of this seed builds it from; on a
        resume, from its checkpoint, as a single run resumes (ppo.train)."""
        seed_everything(self.args.seed)
        self.agent = PPOAgent.build(self.args, self.envs, self.run)
        checkpoint = self.run.checkpoint
        if checkpoint is not None:
            self.global_step, self.previous_batch = restore_checkpoint(
                self.agent, self.envs, checkpoint, self.run.device
            )
        self.generator = seed_generator(self.args.seed, self.run.device, checkpoint,
                                        self.global_step)  # fmt: skip
        self.episodes = EpisodeStats(self.args.num_envs)
        self.clips = ClipRecorder.for_run(self.args, self.run.dir, self.run.logger.video)
        minimum = self.args.diag.min_init_samples
        self.boundaries = TaskBoundaries(self.agent.diagnostics, minimum, minimum)

    def state(self, global_step: int) -> dict:
        """A single-run checkpoint: this seed's own weights, not the stacks its views share."""
        state = checkpoint_state(self.agent, global_step, self.envs.task, self.previous_batch)
        for net in ("actor", "critic"):
            state[net] = {name: tensor.clone() for name, tensor in state[net].items()}
        state["seed_generator"] = self.generator.get_state()  # a single resume ignores it
        return state


def check_seeds(args: Args) -> list[Args]:
    """One clear line for what --seeds cannot run (yet), else each seed's config."""
    per_seed = seed_configs(args, "ppo")
    if args.compile:
        raise ConfigError("--seeds does not take --compile (the batched step is not compiled)")
    if args.target_kl is not None:
        raise ConfigError("--seeds does not take --target-kl (an early stop per seed)")
    return per_seed


def train(args: Args, resumed: list[Resumed] | None = None) -> list[Path]:
    """Train each of args.seeds as its own run, all K stacked; return the K run directories.
    `resumed`: each seed's saved config and checkpoint, at one step (`--resume DIR1 DIR2 ...`)."""
    per_seed = check_seeds(args)
    if resumed:
        per_seed = resumed_seed_configs(args, per_seed, resumed)
    check_args(per_seed[0])

    def start(one: Args, own: Resumed | None) -> Seed:
        envs = ppo_envs(one)
        return Seed(one, envs, Run.start_rl(one, LEARNER, envs, own))

    return train_rl_seeds(args, per_seed, resumed, start, train_together)


def train_together(args: Args, seeds: list[Seed]) -> None:
    """The single run's loop (agents/ppo.py: train), each forward and backward batched."""
    first = seeds[0]
    device, num_envs, num_steps = first.run.device, args.num_envs, args.num_steps
    batch_size = num_envs * num_steps
    obs_dim = first.agent.obs_normalizer.rms.mean.shape[0]
    global_step = first.global_step  # 0, or the step every seed's checkpoint was taken at
    assert all(seed.global_step == global_step for seed in seeds)
    for seed in seeds:
        # As a single run: episodes in flight at a checkpoint restart on resume, and their
        # first observations do not move the saved statistics.
        raw_obs, _ = seed.envs.reset(seed=seed.args.seed + global_step)
        for event in seed.envs.shift_events:
            seed.run.event(event["step"], event["event"], task=event["task"],
                           params=event["params"])  # fmt: skip
        seed.to_device = HostToDevice((num_envs, obs_dim), device)
        new = seed.run.checkpoint is None
        seed.next_obs = seed.to_device(seed.agent.obs_normalizer(raw_obs, update=new))
        if seed.clips is not None and new:
            seed.clips.record(0, "start", seed.envs.task, seed.agent.greedy)
        if seed.agent.diagnostics.enabled and global_step == 0:
            seed.boundaries.begin(0, None, seed.envs.task)
    active = list(seeds)
    nets = StackedNets([seed.agent for seed in active])
    bar = progress_bar(args.total_timesteps * len(seeds), global_step * len(seeds),
                       f"ppo {args.env_id}, {len(seeds)} seeds")  # fmt: skip
    first.run.on_close(bar.close)
    start_time, start_step, updates = time.time(), global_step, 0

    while global_step + batch_size <= args.total_timesteps and active:
        if args.anneal_lr:
            for seed in active:
                fraction_left = 1.0 - global_step / args.total_timesteps
                seed.agent.optimizer.param_groups[0]["lr"] = fraction_left * args.learning_rate

        # --- Rollout: one batched forward acts for every seed, each seed steps its own world.
        stores = allocate_rollouts(args, active, device)
        for seed in active:
            seed.rollout.task, seed.rollout.shift = seed.envs.task, None
            if args.reset_every_rollout:
                raw_obs, infos = seed.envs.reset_episodes()
                seed.next_obs = seed.to_device(seed.agent.obs_normalizer(raw_obs))
                if "shift" in infos:
                    seed.rollout.shift = begin_task(infos["shift"], 0, seed.run, seed.agent,
                                                    seed.clips)  # fmt: skip
        draws = action_draws(args, active, nets, device)
        for step in range(num_steps):
            next_obs = torch.stack([seed.next_obs for seed in active])
            stores["obs"][:, step] = next_obs
            actions, logprobs, env_actions = act(nets, next_obs, draws[:, step], first.agent)
            stores["actions"][:, step], stores["logprobs"][:, step] = actions, logprobs
            global_step += num_envs
            for k, seed in enumerate(active):
                raw_obs, reward, terminated, truncated, infos = seed.envs.step(env_actions[k])
                done = terminated | truncated
                cut = done | (args.reset_every_rollout and step == num_steps - 1)
                seed.episodes.step(reward, cut, seed.run, global_step)
                seed.rollout.rewards[step] = seed.agent.learning_rewards(
                    reward, cut, truncated & ~terminated, infos
                )
                seed.rollout.episode_over[step] = done
                seed.next_obs = seed.to_device(seed.agent.obs_normalizer(raw_obs))
                if "shift" in infos:
                    seed.rollout.shift = begin_task(infos["shift"], step * num_envs, seed.run,
                                                    seed.agent, seed.clips)  # fmt: skip

        # --- Advantages and the task boundaries per seed, then one batched update.
        batches = []
        for seed in active:
            batch = advantages_and_returns(args, seed.agent, seed.rollout, seed.next_obs)
            if seed.agent.diagnostics.enabled:
                measure_boundaries(seed.boundaries, seed.agent, seed.rollout, batch,
                                   seed.previous_batch, global_step - batch_size)  # fmt: skip
            batches.append(batch)
        stats, regularizer_metrics = stacked_update(args, active, nets, batches)
        updates += 1
        sps = int((global_step - start_step) / (time.time() - start_time))
        for seed, batch, seed_stats, metrics in zip(
            active, batches, stats, regularizer_metrics, strict=True
        ):
            diagnostics = seed.agent.diagnostics
            if diagnostics.enabled:
                seed.previous_batch = {k: v.clone() for k, v in batch.items()}
                if diagnostics.due(updates):
                    diagnostics.periodic(global_step, seed.agent.probe(batch))
            try:
                check_skipped(seed.run, global_step, seed_stats, seed.agent)
            except Diverged as error:
                seed.diverged = end_diverged(seed.guard, error)
                continue
            seed.run.log(global_step, {
                **seed.episodes.rollout_return(),
                "charts/learning_rate": seed.agent.optimizer.param_groups[0]["lr"],
                "charts/SPS": sps,
                "charts/task": seed.envs.task,
                **seed_stats,
                **{f"regularizer/{k}": v for k, v in metrics.items()},
            })  # fmt: skip
        bar.update(batch_size * len(active))
        if any(seed.diverged for seed in active):
            active = [seed for seed in active if not seed.diverged]
            if active:  # the survivors' networks, restacked without the diverged one
                nets = StackedNets([seed.agent for seed in active])
        # A consistent point: the update is done and the next rollout not begun.
        if any(seed.stop.requested for seed in seeds):
            stop_all(active, global_step)
        if active and all([seed.run.checkpoint_due(global_step) for seed in active]):
            for seed in active:
                seed.run.save(global_step, seed.state(global_step))
    for seed in active:
        if seed.agent.diagnostics.enabled:
            end = seed.agent.probe(seed.previous_batch) if seed.previous_batch is not None else None
            seed.boundaries.finish(global_step, seed.envs.task, end)
        if seed.clips is not None:
            seed.clips.record(global_step, "end", seed.envs.task, seed.agent.greedy)
        seed.run.finish(global_step, seed.state(global_step))
        seed.agent.diagnostics.finish(global_step)


def allocate_rollouts(args: Args, active: list[Seed], device) -> dict[str, Tensor]:
    """One rollout storage for all seeds (seed axis first), each seed's Rollout a view of its
    row: one write a step."""
    agent, k = active[0].agent, len(active)
    single = Rollout.allocate(args, agent)
    stores = {
        name: torch.zeros((k, *getattr(single, name).shape), dtype=getattr(single, name).dtype,
                          device=device)
        for name in ("obs", "actions", "logprobs")
    }  # fmt: skip
    for index, seed in enumerate(active):
        seed.rollout = Rollout(
            obs=stores["obs"][index],
            actions=stores["actions"][index],
            logprobs=stores["logprobs"][index],
            rewards=np.zeros_like(single.rewards),
            episode_over=np.zeros_like(single.episode_over),
        )
    return stores


def action_draws(args: Args, active: list[Seed], nets: StackedNets, device) -> Tensor:
    """Each seed's random numbers for the rollout's actions, from its own generator: a uniform
    per env and step (categorical) or a standard normal per action dimension (Gaussian)."""
    agent = active[0].agent
    shape = (args.num_steps, args.num_envs)
    if not agent.discrete:
        shape = (*shape, *agent.action_space.shape)
    draw = torch.rand if agent.discrete else torch.randn
    return torch.stack([draw(shape, generator=seed.generator, device=device) for seed in active])


def act(
    nets: StackedNets, obs: Tensor, draws: Tensor, agent: PPOAgent
) -> tuple[Tensor, Tensor, np.ndarray]:
    """`PPOAgent.act` for every seed: obs (K, envs, obs_dim), each seed's own draws."""
    with torch.inference_mode():
        outputs, _ = nets.policy(obs)
        if agent.discrete:
            log_probs = outputs.log_softmax(-1)
            # The inverse CDF: the first action whose cumulative probability exceeds the draw.
            below = (draws.unsqueeze(-1) > log_probs.exp().cumsum(-1)).sum(-1)
            action = below.clamp(max=outputs.shape[-1] - 1)
            logprob = log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
            return action, logprob, action.cpu().numpy()
        mean, log_std = outputs.chunk(2, dim=-1)
        action = mean + log_std.exp() * draws
        # log N(action; mean, std) with (action - mean) / std = draws, as PPOAgent.act
        logprob = (-0.5 * draws.square() - log_std).sum(-1) - 0.5 * action.shape[-1] * LOG_2PI
        return action, logprob, agent.env_actions(action)


def stacked_update(
    args: Args, active: list[Seed], nets: StackedNets, batches: list[dict[str, Tensor]]
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """`ppo_update` for every seed: each minibatch one batched forward and backward on the
    stacks; then per seed, on its own slice of the gradient, the single run's steps (penalty,
    clipping, before_step, Adam, after_update). Returns each seed's statistics and its
    regularizer's metrics."""
    batch = {name: torch.stack([b[name] for b in batches]) for name in batches[0]}
    k, batch_size = batch["obs"].shape[:2]
    minibatch_size = batch_size // args.num_minibatches
    rows = torch.arange(k, device=batch["obs"].device)[:, None]
    features_on_rollout = [
        functools.partial(hidden_features, seed.agent.actor, seed.agent.critic, b["obs"])
        for seed, b in zip(active, batches, strict=True)
    ]
    on_rollout = nets.on(batch["obs"])
    regularizers = [seed.agent.regularizer for seed in active]
    parameters = [seed.agent.optimizer.param_groups[0]["params"] for seed in active]
    optimizers = [seed.agent.optimizer for seed in active]
    skipped = torch.zeros(k, device=batch["obs"].device)
    clipfracs, regularizer_metrics = [], [{} for _ in active]
    for _epoch in range(args.update_epochs):
        order = torch.stack(
            [torch.randperm(batch_size, generator=seed.generator, device=rows.device)
             for seed in active]
        )  # fmt: skip
        for start in range(0, batch_size, minibatch_size):
            idx = order[:, start : start + minibatch_size]
            data = {name: value[rows, idx] for name, value in batch.items()}
            outputs, actor_features = nets.policy(data["obs"])
            new_value, critic_features = nets.values(data["obs"])
            out = ppo_terms(outputs, new_value, data, args)
            clipfracs.append(out["clipfrac"])
            penalty = torch.stack([
                torch.as_tensor(seed.agent.regularizer.penalty({
                    "actor": [h[index] for h in actor_features],
                    "critic": [h[index] for h in critic_features],
                }), dtype=torch.float32, device=rows.device)
                for index, seed in enumerate(active)
            ])  # fmt: skip
            loss = out["loss"] + penalty
            not_finite = (~torch.isfinite(loss.detach())).float()
            skipped = skipped + not_finite
            for stack in nets.stacks:
                stack.grad = None
            for params in parameters:
                for param in params:
                    param.grad = None
            loss.sum().backward()  # the seeds' graphs are disjoint: each gets its own gradient
            pass_end = start + minibatch_size >= batch_size
            # Methods whose only gradient work is coupled decay (BP, L2, ER, CBP, ReDo, reset,
            # S&P) step on the stacks; the others each seed as its single run does.
            if not step_seeds_on_stacks(
                nets.stacks, optimizers, regularizers, args.max_grad_norm, not_finite
            ):
                for index, seed in enumerate(active):
                    params = parameters[index]
                    take_seed_gradient(seed.agent.actor, nets.actor, index)
                    take_seed_gradient(seed.agent.critic, nets.critic, index)
                    if args.max_grad_norm > 0:  # a norm per seed
                        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                    seed.agent.regularizer.before_step()
                    seed.agent.optimizer.found_inf = not_finite[index]
                    seed.agent.optimizer.step()
            for metrics, seed_metrics in zip(
                regularizer_metrics,
                after_update_seeds(regularizers, features_on_rollout, on_rollout, pass_end),
                strict=True,
            ):
                metrics.update(seed_metrics)
    with torch.no_grad():
        var_returns = batch["returns"].var(-1)
        unexplained = (batch["returns"] - batch["values"]).var(-1) / var_returns
        stats = {
            "losses/value_loss": out["v_loss"], "losses/policy_loss": out["pg_loss"],
            "losses/entropy": out["entropy"], "losses/old_approx_kl": out["old_approx_kl"],
            "losses/approx_kl": out["approx_kl"],
            "losses/clipfrac": torch.stack(clipfracs).mean(0),
            "losses/explained_variance": torch.where(var_returns > 0, 1 - unexplained, torch.nan),
            "regularizer/penalty": penalty, "skipped": skipped,
        }  # fmt: skip
        read = torch.stack([value.detach().float() for value in stats.values()], 1).tolist()
    per_seed = []
    for row in read:
        seed_stats = dict(zip(stats, row, strict=True))
        seed_stats["minibatches"] = len(clipfracs)
        per_seed.append(seed_stats)
    return per_seed, regularizer_metrics


def stop_all(active: list[Seed], global_step: int) -> None:
    """On a signal: every seed records the stop and checkpoints, then the process stops."""
    for seed in active:
        seed.run.event(global_step, "interrupted", checkpoint=f"step_{global_step}.pt")
        seed.run.save(global_step, seed.state(global_step))
    directories = " ".join(str(seed.run.dir) for seed in active)
    raise Interrupted(
        f"stopped at step {global_step} with a checkpoint in each seed's run directory; "
        f"continue them together with train.py ppo --resume {directories} (or each alone "
        "with --resume RUN_DIR)"
    )
