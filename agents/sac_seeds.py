"""K seeds of one SAC configuration in one process: `train.py sac --seeds 1 2 3 4`.

The K actors and twin critics are stacked along a seed axis: the K policies act in one batched
forward, and each update (critic, actor) is one batched forward and backward for all seeds.
On a CPU this buys little (SAC's update is matrix products at batch 256, which stacking does
not shrink: 1.07x at 4 Hopper seeds, docs/benchmarks.md); on a GPU it is where K seeds cost
little more than one.

Each seed is still an ordinary run. It has its own envs (its own shifts), replay buffer,
random stream (a torch.Generator seeded by its seed: its random actions before learning, its
policy's noise, its replay samples), optimizers, alpha, regularizers, diagnostics and Run, and
writes the run directory that `--seed S` alone writes. Its actor and critics are ordinary
modules whose parameters are views into the stacked tensors (agents.networks.stack_parameters),
so everything that is not the forward and backward pass is the single run's own code, called
once per seed on that seed's modules (agents/sac.py): storing transitions, the task boundaries
and their spectra, the regularizers' moments (penalty on the seed's own features, before_step,
after_update, on_shift; ER's after_update is one step for all seeds, with a batched SVD), its
Adam steps, alpha's step, and its checkpoints, which are single-run checkpoints (a stopped
seed resumes alone with `train.py sac --resume RUN_DIR`).

What is not exact: a seed draws from its own generator, not from the global stream a single
run uses, so a seed's run here is another draw of the same experiment, not its single run's
copy (tests compare one update exactly, and a short run by what it learns). A seed that
diverges stops alone. Stopped, the K runs resume together (`train.py sac --resume DIR1 DIR2
...`) from their checkpoints at the newest step all of them have, or each alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agents.checkpoints import Resumed, seed_generator
from agents.networks import (
    bounded_log_std,
    stack_parameters,
    stacked_mlp,
    step_seeds_on_stacks,
    take_seed_gradient,
)
from agents.progress import EpisodeStats, progress_bar
from agents.replay import ReplayBuffer
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
from agents.sac import (
    LEARNER,
    Args,
    Rates,
    SACAgent,
    actor_features,
    alpha_objective,
    begin_task,
    check_args,
    check_critic,
    checkpoint_state,
    critic_features,
    loss_scalars,
    polyak_update,
    restore_checkpoint,
    sac_probe,
    soft_td_target,
    squashed_gaussian,
    store_step,
    task_end_probe,
    task_init_probe,
    warn_without_buffer,
)
from diagnostics import TaskBoundaries
from envs import learner_envs
from envs.video import ClipRecorder
from regularizers.base import SeedStacks, after_update_seeds


class StackedSAC:
    """The K seeds' actors, twin critics and target critics as stacked tensors (seed axis
    first) that the seeds' own modules' parameters are views into: the batched forward and
    backward run on the stacks, each seed's optimizers step its own views."""

    def __init__(self, agents: list[SACAgent]):
        self.template = agents[0]
        self.actor = stack_parameters([a.actor.trunk for a in agents], requires_grad=True)
        self.q = [stack_parameters([getattr(a.critic, q) for a in agents], requires_grad=True)
                  for q in ("q1", "q2")]  # fmt: skip
        self.target = [stack_parameters([getattr(a.critic_target, q) for a in agents])
                       for q in ("q1", "q2")]  # fmt: skip

    def policy(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """`SquashedGaussianActor.forward` for every seed: obs (K, batch, obs_dim)."""
        actor = self.template.actor
        out, features = stacked_mlp(actor.trunk, self.actor, "", obs)
        return bounded_log_std(out, actor.act_dim), features

    def twin(self, x: Tensor, stacks: list[dict[str, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """`TwinCritic.forward` for every seed on x (K, batch, obs + act): Q values
        (2, K, batch) and the features, Q_1's layers then Q_2's."""
        critic = self.template.critic
        (q1, features1), (q2, features2) = (stacked_mlp(mlp, stack, "", x) for mlp, stack in
                                            zip((critic.q1, critic.q2), stacks, strict=True))  # fmt: skip
        return torch.stack([q1.squeeze(-1), q2.squeeze(-1)]), [*features1, *features2]

    def frozen(self) -> list[dict[str, Tensor]]:
        """The critics' stacks detached: gradients reach the input, no critic parameter."""
        return [{name: value.detach() for name, value in stack.items()} for stack in self.q]

    def stacks_of(self, net: str) -> dict[str, Tensor]:
        """{a seed's own parameter name: its stack} for "actor" or "critic"."""
        if net == "actor":
            return {f"trunk.{name}": stack for name, stack in self.actor.items()}
        return {f"{q}.{name}": stack for q, stack in zip(("q1", "q2"), self.q, strict=True)
                for name, stack in stack.items()}  # fmt: skip

    def seed_stacks(self, net: str, x: Tensor) -> SeedStacks:
        """The stacks of "actor" or "critic" as a method batched across seeds sees them, with
        their hidden features on x (K, batch, in): what sac.actor_features and
        sac.critic_features give one seed."""
        actor, critic = self.template.actor, self.template.critic

        def features(params: dict[str, dict[str, Tensor]]) -> dict[str, list[Tensor]]:
            if net == "actor":
                return {"actor": stacked_mlp(actor.trunk, params["actor"], "trunk.", x)[1]}
            q1, q2 = (stacked_mlp(getattr(critic, q), params["critic"], f"{q}.", x)[1]
                      for q in ("q1", "q2"))  # fmt: skip
            return {"critic": [*q1, *q2]}

        return SeedStacks({net: self.stacks_of(net)}, features)


@dataclass
class Seed(RLSeed[Args]):
    """One seed's ordinary run inside the batched process, and what its loop carries."""

    agent: SACAgent | None = None
    buffer: ReplayBuffer | None = None
    obs: Tensor | None = None
    last: dict[str, Tensor] = field(default_factory=dict)
    regularizer_metrics: dict[str, float] = field(default_factory=dict)
    updates: int = 0
    task_start: int = 0

    def build(self) -> None:
        """The agent and buffer, from the random state a single run of this seed builds them
        from; on a resume, from its checkpoint, as a single run resumes (sac.train)."""
        args, device = self.args, self.run.device
        seed_everything(args.seed)
        self.agent = SACAgent.build(args, self.envs, self.run)
        obs_dim = self.envs.single_observation_space.shape[0]
        act_dim = self.envs.single_action_space.shape[0]
        self.buffer = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
        saved = self.run.checkpoint
        if saved is not None:
            self.global_step, self.updates, self.task_start = restore_checkpoint(
                self.agent, self.buffer, self.envs, saved
            )
        self.generator = seed_generator(args.seed, device, saved, self.global_step)
        self.episodes = EpisodeStats(args.num_envs)
        self.clips = ClipRecorder.for_run(args, self.run.dir, self.run.logger.video)
        wanted = min(args.diag.batch_size, args.buffer_size)
        self.boundaries = TaskBoundaries(self.agent.diagnostics, wanted, args.diag.min_init_samples)
        self.to_device = HostToDevice((args.num_envs, 2 + 2 * obs_dim), device)

    def progress(self, global_step: int) -> dict:
        return {"global_step": global_step, "task": self.envs.task,
                "task_start": self.task_start, "updates": self.updates}  # fmt: skip

    def state(self, global_step: int) -> dict:
        """A single-run checkpoint: this seed's own weights, not the stacks its views share."""
        state = checkpoint_state(self.agent, self.buffer, self.progress(global_step))
        for net in ("actor", "critic", "critic_target"):
            state[net] = {name: tensor.clone() for name, tensor in state[net].items()}
        state["seed_generator"] = self.generator.get_state()  # a single resume ignores it
        return state


def check_seeds(args: Args) -> list[Args]:
    """One clear line for what --seeds cannot run, else each seed's config."""
    return seed_configs(args, "sac")


def train(args: Args, resumed: list[Resumed] | None = None) -> list[Path]:
    """Train each of args.seeds as its own run, all K stacked; return the K run directories.
    `resumed`: each seed's saved config and checkpoint, at one step (`--resume DIR1 DIR2 ...`)."""
    per_seed = check_seeds(args)
    if resumed:
        per_seed = resumed_seed_configs(args, per_seed, resumed)
    check_args(per_seed[0])

    def start(one: Args, own: Resumed | None) -> Seed:
        envs = learner_envs(one, "SAC", bounded_actions=True)
        return Seed(one, envs, Run.start_rl(one, LEARNER, envs, own))

    return train_rl_seeds(args, per_seed, resumed, start, train_together)


def train_together(args: Args, seeds: list[Seed]) -> None:
    """The single run's loop (agents/sac.py: train): act, store, update, each forward and
    backward batched over the seeds."""
    first = seeds[0]
    device, num_envs = first.run.device, args.num_envs
    global_step, updates = first.global_step, first.updates  # 0, or every seed's checkpoint's
    assert all((s.global_step, s.updates) == (global_step, updates) for s in seeds)
    space = first.envs.single_action_space
    low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
    width = torch.as_tensor(space.high - space.low, dtype=torch.float32, device=device)
    actor = first.agent.actor
    for seed in seeds:
        # As a single run: episodes in flight at a checkpoint restart on resume.
        raw_obs, _ = seed.envs.reset(seed=seed.args.seed + global_step)
        for event in seed.envs.shift_events:
            seed.run.event(event["step"], event["event"], task=event["task"],
                           params=event["params"])  # fmt: skip
        warn_without_buffer(seed.run, global_step)
        seed.obs = torch.from_numpy(raw_obs.astype(np.float32)).to(device)
        if seed.clips is not None and seed.run.checkpoint is None:
            seed.clips.record(0, "start", seed.envs.task, seed.agent.greedy)
        if seed.agent.diagnostics.enabled and global_step == 0:
            seed.boundaries.begin(0, None, seed.envs.task, nets=seed.agent.snapshot())
    active = list(seeds)
    nets = StackedSAC([seed.agent for seed in active])
    next_log = (global_step // args.log_every + 1) * args.log_every
    bar = progress_bar(args.total_timesteps * len(seeds), global_step * len(seeds),
                       f"sac {args.env_id}, {len(seeds)} seeds")  # fmt: skip
    first.run.on_close(bar.close)
    rates = Rates(global_step, updates)

    while global_step + num_envs <= args.total_timesteps and active:
        # --- Act: each seed uniformly at random before learning starts (its own draws), then
        # one batched forward of the K policies with each seed's own noise.
        if global_step < args.learning_starts:
            actions = torch.stack([
                low + width * torch.rand((num_envs, width.numel()), generator=seed.generator,
                                         device=device)
                for seed in active
            ])  # fmt: skip
        else:
            with torch.inference_mode():
                out, _ = nets.policy(torch.stack([seed.obs for seed in active]))
                noise = draws(active, out.shape[1:-1] + (width.numel(),), device)
                actions = squashed_gaussian(out, noise, actor.action_scale, actor.action_bias)[0]
        global_step += num_envs
        for k, seed in enumerate(active):
            raw_next_obs, reward, terminated, truncated, infos = seed.envs.step(
                actions[k].cpu().numpy()
            )
            if "shift" in infos:  # the transitions of this step already belong to the new task
                begin_task(infos["shift"], seed.run, seed.agent, seed.buffer, seed.boundaries,
                           seed.clips, seed.task_start)  # fmt: skip
                seed.task_start = infos["shift"]["step"]
            done = terminated | truncated
            step = (raw_next_obs, reward, terminated, done, infos)
            seed.obs = store_step(seed.buffer, seed.to_device, seed.obs, actions[k], step)
            if seed.boundaries.arrived(num_envs):
                seed.boundaries.measure(task_init_probe(args, seed.buffer, seed.boundaries))
            seed.episodes.step(reward, done, seed.run, global_step)

        # --- Updates, as a single run's: the critic, the actor and alpha delayed, the target.
        if active[0].buffer.size >= max(1, args.learning_starts):  # the same in every seed
            for _ in range(args.updates_per_step):
                updates += 1
                rows = [seed.buffer.sample(args.batch_size, seed.generator) for seed in active]
                batch = stacked_batch(active, rows)
                stacked_critic_update(active, nets, batch)
                if updates % args.policy_frequency == 0:
                    for _ in range(args.policy_frequency):
                        stacked_actor_update(active, nets, batch)
                if updates % args.target_network_frequency == 0:
                    targets = [t for stack in nets.target for t in stack.values()]
                    sources = [q.detach() for stack in nets.q for q in stack.values()]
                    polyak_update(targets, sources, args.tau)
                for seed, seed_rows in zip(active, rows, strict=True):
                    if seed.agent.diagnostics.due(updates):
                        probe = sac_probe(args, seed.buffer, seed.agent.nets(), seed_rows, updates)
                        seed.agent.diagnostics.periodic(global_step, probe)
        for seed in active:
            seed.global_step, seed.updates = global_step, updates

        # --- Logging and each seed's divergence check, then checkpoints.
        bar.update(num_envs * len(active))
        if global_step >= next_log:
            next_log = (global_step // args.log_every + 1) * args.log_every
            shared = rates.scalars(global_step, updates)
            for seed in active:
                log_seed(seed, global_step, shared)
        if any(seed.diverged for seed in active):
            active = [seed for seed in active if not seed.diverged]
            if active:  # the survivors' networks, restacked without the diverged one
                nets = StackedSAC([seed.agent for seed in active])
        # A consistent point: this step's transitions are stored and its updates done.
        if any(seed.stop.requested for seed in seeds):
            stop_all(active, global_step)
        if active and all([seed.run.checkpoint_due(global_step) for seed in active]):
            for seed in checked(active, global_step):
                seed.run.save(global_step, seed.state(global_step))
    for seed in checked(active, global_step):
        agent, boundaries = seed.agent, seed.boundaries
        if agent.diagnostics.enabled:
            boundaries.measure(task_init_probe(args, seed.buffer, boundaries))
            end = task_end_probe(args, seed.buffer, agent.snapshot(), global_step,
                                 seed.task_start, boundaries.wanted)  # fmt: skip
            boundaries.finish(global_step, seed.envs.task, end)
        if seed.clips is not None:
            seed.clips.record(global_step, "end", seed.envs.task, agent.greedy)
        seed.run.finish(global_step, seed.state(global_step))
        agent.diagnostics.finish(global_step)


def draws(active: list[Seed], shape: tuple[int, ...], device) -> Tensor:
    """Each seed's standard normals of `shape` from its own generator, stacked."""
    return torch.stack([torch.randn(shape, generator=s.generator, device=device) for s in active])


def stacked_batch(active: list[Seed], rows: list[Tensor]) -> dict[str, Tensor]:
    """The seeds' replay samples as one batch with a leading seed axis."""
    unpacked = [seed.buffer.unpack(r) for seed, r in zip(active, rows, strict=True)]
    return {key: torch.stack([u[key] for u in unpacked]) for key in unpacked[0]}


def step_each(active: list[Seed], net: str, stacks: dict[str, Tensor], total: Tensor) -> None:
    """Backward of the seeds' summed losses through the stacks, then per seed, on its own slice
    of the gradient (take_seed_gradient), the single run's moments: before_step and its
    optimizer's step. Where the seeds' methods add nothing but coupled decay, the decay and the
    seeds' Adam steps are taken on the stacks (agents.networks.step_seeds_on_stacks)."""
    for stack in stacks.values():
        stack.grad = None
    optimizers = [getattr(seed.agent, "actor_optimizer" if net == "actor" else "q_optimizer")
                  for seed in active]  # fmt: skip
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total.backward()
    methods = [seed.agent.regularizers[net] for seed in active]
    if step_seeds_on_stacks(list(stacks.values()), optimizers, methods):
        return
    for k, (seed, optimizer, method) in enumerate(zip(active, optimizers, methods, strict=True)):
        take_seed_gradient(getattr(seed.agent, net), stacks, k)
        method.before_step()
        optimizer.step()


def after_update_each(active: list[Seed], nets: StackedSAC, net: str, x: Tensor) -> None:
    """After `step_each`: every seed's `net` regularizer's after_update, on that seed's rows of
    x (K, batch, in) as `sac.actor_features` / `sac.critic_features` give them (batched across
    seeds where the method batches); each seed's metrics into its own."""
    own_features = actor_features if net == "actor" else critic_features
    recent = [functools.partial(own_features, getattr(seed.agent, net), x[k])
              for k, seed in enumerate(active)]  # fmt: skip
    regularizers = [seed.agent.regularizers[net] for seed in active]
    metrics = after_update_seeds(regularizers, recent, nets.seed_stacks(net, x), pass_end=True)
    for seed, seed_metrics in zip(active, metrics, strict=True):
        seed.regularizer_metrics.update(seed_metrics)


def stacked_critic_update(active: list[Seed], nets: StackedSAC, batch: dict[str, Tensor]) -> None:
    """`sac.critic_update` for every seed: the soft TD targets from the stacked actor and target
    critics, one batched forward and backward of the twin critics, then each seed's own steps;
    each seed's losses go to its `last`, its regularizer's metrics to its own."""
    actor, template = nets.template.actor, nets.template
    alphas = torch.stack([seed.agent.alpha for seed in active])[:, None]  # (K, 1)
    with torch.no_grad():
        next_out, _ = nets.policy(batch["next_obs"])
        noise = draws(active, next_out.shape[1:-1] + (actor.act_dim,), next_out.device)
        next_action, next_log_pi = squashed_gaussian(next_out, noise, actor.action_scale,
                                                     actor.action_bias)  # fmt: skip
        next_q, _ = nets.twin(torch.cat([batch["next_obs"], next_action], -1), nets.target)
        targets = soft_td_target(batch["rewards"], batch["terminated"], next_q, next_log_pi,
                                 alphas, template.args.gamma)  # fmt: skip
    q_values, features = nets.twin(batch["obs_actions"], nets.q)
    qf_losses = (q_values - targets).square().mean(-1)  # (2, K)
    penalties = [seed.agent.regularizers["critic"].penalty({"critic": [h[k] for h in features]})
                 for k, seed in enumerate(active)]  # fmt: skip
    step_each(active, "critic", nets.stacks_of("critic"), qf_losses.sum() + sum(penalties))
    after_update_each(active, nets, "critic", batch["obs_actions"])
    for k, seed in enumerate(active):
        seed.last.update({"qf_losses": qf_losses[:, k].detach(),
                          "q_values": q_values[:, k].detach().mean(-1),
                          "critic_penalty": penalties[k].detach()})  # fmt: skip


def stacked_actor_update(active: list[Seed], nets: StackedSAC, batch: dict[str, Tensor]) -> None:
    """`sac.actor_update` for every seed: one batched forward and backward of the actors
    through the critics' detached stacks, each seed's own steps, then each seed's alpha."""
    actor = nets.template.actor
    alphas = torch.stack([seed.agent.alpha for seed in active])[:, None]
    out, features = nets.policy(batch["obs"])
    noise = draws(active, out.shape[1:-1] + (actor.act_dim,), out.device)
    pi, log_pi = squashed_gaussian(out, noise, actor.action_scale, actor.action_bias)
    q_pi, _ = nets.twin(torch.cat([batch["obs"], pi], -1), nets.frozen())
    actor_losses = (alphas * log_pi - torch.minimum(q_pi[0], q_pi[1])).mean(-1)  # (K,)
    penalties = [seed.agent.regularizers["actor"].penalty({"actor": [h[k] for h in features]})
                 for k, seed in enumerate(active)]  # fmt: skip
    step_each(active, "actor", nets.stacks_of("actor"), actor_losses.sum() + sum(penalties))
    after_update_each(active, nets, "actor", batch["obs"])
    for k, seed in enumerate(active):
        agent = seed.agent
        seed.last.update({"actor_loss": actor_losses[k].detach(),
                          "entropy": -log_pi[k].detach().mean(),
                          "actor_penalty": penalties[k].detach()})  # fmt: skip
        if agent.alpha_optimizer is not None:
            alpha_loss = alpha_objective(agent.log_alpha, log_pi[k], agent.target_entropy)
            agent.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            agent.alpha_optimizer.step()
            agent.alpha = agent.log_alpha.detach().exp()
            seed.last["alpha_loss"] = alpha_loss.detach()


def log_seed(seed: Seed, global_step: int, shared: dict[str, float]) -> None:
    """A seed's log line, as a single run writes it (a non-finite loss or weight ends its run
    as diverged)."""
    agent = seed.agent
    try:
        losses = loss_scalars(agent, seed.last, global_step)
    except Diverged as error:
        seed.diverged = end_diverged(seed.guard, error)
        return
    scalars = {
        **shared,
        "charts/task": seed.envs.task,
        "charts/buffer_size": seed.buffer.size,
        "charts/updates": seed.updates,
        "charts/policy_lr": agent.actor_optimizer.param_groups[0]["lr"],
        "charts/q_lr": agent.q_optimizer.param_groups[0]["lr"],
        **losses,
    }
    if "actor_loss" in seed.last:
        scalars.update({f"regularizer/{k}": v for k, v in seed.regularizer_metrics.items()})
        seed.regularizer_metrics.clear()
    seed.run.log(global_step, scalars)


def checked(active: list[Seed], global_step: int) -> list[Seed]:
    """The seeds whose critic's latest losses are finite (before a checkpoint or the end);
    the others end as diverged."""
    for seed in active:
        try:
            check_critic(seed.agent, seed.last, global_step)
        except Diverged as error:
            seed.diverged = end_diverged(seed.guard, error)
    return [seed for seed in active if not seed.diverged]


def stop_all(active: list[Seed], global_step: int) -> None:
    """On a signal: every seed records the stop and checkpoints, then the process stops."""
    for seed in checked(active, global_step):
        seed.run.event(global_step, "interrupted", checkpoint=f"step_{global_step}.pt")
        seed.run.save(global_step, seed.state(global_step))
    directories = " ".join(str(seed.run.dir) for seed in active if not seed.diverged)
    raise Interrupted(
        f"stopped at step {global_step} with a checkpoint in each seed's run directory; "
        f"continue them together with train.py sac --resume {directories} (or each alone "
        "with --resume RUN_DIR)"
    )
