"""SAC for continuous actions on a nonstationary world, in the CleanRL spirit.

Read top to bottom: Args (every flag, with its docstring), presets, SAC's losses as small
functions, the diagnostics' view of them, then `train`: set-up, acting, storing transitions,
updates with each network's regularizer moments, task boundaries, logging and checkpoints. The
networks (a tanh-squashed Gaussian actor, two Q networks) are in agents/networks.py and the
replay buffer in agents/replay.py.

The algorithm is CleanRL's `sac_continuous_action.py` (Haarnoja et al. 2018, with automatic
entropy tuning): twin Q networks with Polyak-averaged targets, a tanh-squashed Gaussian policy
with a state-dependent log-std bounded to [-5, 2], delayed policy updates (every
`policy_frequency` critic updates, `policy_frequency` actor updates at once), random actions
until `learning_starts`. Differences from CleanRL, each on purpose:
- both networks return their hidden features, and each network has its own regularizer,
  attached with its own optimizer (see `train`), so every method works unchanged;
- the gymnasium 1.x vector API with same-step autoreset: a finished episode's transition is
  stored with its real final observation (infos["final_obs"]), truncation bootstraps from it,
  termination does not, and no transition ever runs from one episode into the next;
- the world changes at shifts (envs.ShiftingVectorEnv); the replay buffer is kept or flushed
  there (--buffer-at-shift), and can be saved in checkpoints (--save-buffer);
- speed: the buffer is one preallocated tensor on the device sampled with one gather, the actor loss
  reads the critic through detached weights (no critic weight gradients are computed only to be
  thrown away), Adam is fused, alpha stays on the device (no `.item()` per update), acting runs
  under inference mode, and host/device copies are one per env step each way;
- alpha's loss uses the log-probabilities of the actor update it follows (as the original SAC
  code and Stable-Baselines3), where CleanRL draws them again after the actor step.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from agents.checkpoints import Resumed, restore_optimizer, rng_state, set_rng_state
from agents.flags import Learner, RunFlags
from agents.networks import ARCHITECTURE_FLAGS, Activation, Init, SquashedGaussianActor, TwinCritic
from agents.progress import EpisodeStats, progress_bar
from agents.replay import ReplayBuffer
from agents.run import Diverged, HostToDevice, Run
from diagnostics import (
    Diagnostics,
    DiagnosticsConfig,
    DiagnosticsFlags,
    LossClosure,
    Probe,
    TaskBoundaries,
)
from diagnostics import check_flags as check_diagnostics_flags
from envs import FIXED_ON_RESUME as ENV_FIXED_ON_RESUME
from envs import PhysicsFlags, ShiftFlags, learner_envs
from envs.video import ClipRecorder, VideoFlags, check_video_flags
from envs.video import unused_flags as unused_video_flags
from regularizers import ERankConfig, Regularizer, RegularizerFlags, build_regularizer
from validation import ConfigError, require, require_all, require_widths

LOG_2PI = math.log(2 * math.pi)
PresetName = Literal["none", "demo"]


@dataclass
class SACFlags:
    """SAC's own flags (listed first by --help)."""

    preset: PresetName = "none"
    """a named set of defaults applied before the other flags: demo (Hopper-v5, 8k steps, a
    friction shift at 4k, L2-ER, diagnostics on 256 transitions; under 3 minutes on 2 cores)"""
    exp_name: str = "sac"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the run: networks, sampling, env resets and the tasks' parameters"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """use CUDA when it is available: on an H200 machine SAC's 1-env steps/s were 1.3x one CPU
    thread's (docs/gpu.md)"""
    torch_threads: int = 1
    """CPU threads for torch (0 = torch's default); one, as PPO: a second thread speeds up the
    256-wide products only on an otherwise idle machine, and slows them down many times over
    when another process holds the other core"""

    # Environment
    env_id: str = "Hopper-v5"
    """the gymnasium environment id (a Box action space)"""
    total_timesteps: int = 1_000_000
    """total env steps of the run (summed over the vector envs)"""
    num_envs: int = 1
    """the number of parallel envs (all shift at the same global step)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """gymnasium: SyncVectorEnv in this process; envpool: envpool's C++ envs stepped in threads
    (every shift; a physics shift ends all episodes there; needs `pip install -e '.[envpool]'`)"""
    envpool_threads: int = 0
    """envpool's worker threads (0 = envpool's choice); only with --env-backend envpool"""

    # Replay buffer
    buffer_size: int = 1_000_000
    """transitions the replay buffer holds (oldest overwritten first)"""
    buffer_at_shift: Literal["keep", "flush"] = "keep"
    """at a shift, keep the replay buffer (old tasks' transitions stay and age out) or flush it
    (updates then wait until it holds --learning-starts transitions of the new task)"""
    save_buffer: bool = False
    """also save the replay buffer in checkpoints, so that --resume continues with the same
    replay data (4 * (2 * obs_dim + act_dim + 2) bytes per transition, e.g. 108 MB for 1M
    Hopper transitions); without it a resumed run refills the buffer before updating"""

    # Networks
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor and of each Q network"""
    activation: Activation = "relu"
    """hidden activation of all networks"""
    init: Init = "torch-default"
    """weight initialisation: torch-default (nn.Linear's own, as CleanRL's SAC), orthogonal, or
    He kaiming-uniform with zero biases"""
    layer_norm: bool = False
    """LayerNorm between each hidden linear layer and its activation, in the actor and in both
    Q networks (always on with --regularizer layernorm-l2)"""

    # SAC
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: target <- (1 - tau) * target + tau * online"""
    batch_size: int = 256
    """transitions sampled from the replay buffer per update"""
    learning_starts: int = 5000
    """env steps of uniformly random actions before the policy acts; updates start once the
    buffer holds this many transitions (again after a flush)"""
    policy_lr: float = 3e-4
    """learning rate of the actor's Adam"""
    q_lr: float = 1e-3
    """learning rate of the critic's Adam"""
    alpha_lr: float = 1e-3
    """learning rate of the entropy coefficient's Adam (CleanRL uses --q-lr)"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas (all three optimizers)"""
    adam_eps: float = 1e-8
    """Adam's epsilon (all three optimizers)"""
    updates_per_step: int = 1
    """critic updates per vector-env step (num_envs env steps); CleanRL: 1"""
    policy_frequency: int = 2
    """delayed policy updates: every this many critic updates, this many actor updates"""
    target_network_frequency: int = 1
    """critic updates between Polyak updates of the target critic"""
    alpha: float = 0.2
    """entropy coefficient when --no-autotune (with autotune, alpha starts at 1, as CleanRL)"""
    autotune: bool = True
    """tune alpha automatically toward --target-entropy"""
    target_entropy: float | None = None
    """the policy entropy alpha is tuned toward; None = -act_dim (Haarnoja et al.)"""
    log_every: int = 1000
    """env steps between logs of losses, alpha and speed"""
    seeds: tuple[int, ...] = ()
    """train these seeds in one process instead (e.g. --seeds 1 2 3 4): their actors and twin
    critics stacked along a seed axis, one batched forward to act and one batched backward per
    update, each seed writing the run directory --seed alone writes (agents/sac_seeds.py)"""


@dataclass
class Args(
    RunFlags, DiagnosticsFlags, RegularizerFlags, VideoFlags, ShiftFlags, PhysicsFlags, SACFlags
):
    """train.py sac: SAC's own flags first, then the shift, regularizer, diagnostics and run
    flags."""

    # --help follows the fields' order, and a dataclass takes its bases' fields last base first.

    # The ER step's cadence: SAC has no passes over its data, so every=0 would mean one step
    # after every update of each network (an SVD per hidden layer each time); one step every
    # 100 updates keeps its cost at ~5% of an update.
    erank: ERankConfig = dataclasses.field(default_factory=lambda: ERankConfig(every=100))
    """ER: gradient-ascent steps on the effective rank of the hidden features (SAC: every
    --erank.every updates of each network, on that update's replay batch; 0 = every update)"""


PRESETS: dict[str, dict] = {
    "none": {},
    "demo": dict(
        env_id="Hopper-v5",
        total_timesteps=8_000,
        learning_starts=1_000,
        shift=("friction",),
        shift_at=(4_000,),
        regularizer="l2-er",
        checkpoint_every=4_000,
        diag=DiagnosticsConfig(batch_size=256, plot=True),
    ),
}


# --- SAC's losses (shared by training, diagnostics and tests) ---------------------------------


def squashed_gaussian(
    out: Tensor, noise: Tensor, scale: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """A reparameterised sample a = tanh(mean + std * noise) * scale + bias from the actor's
    output [mean, log_std], and log pi(a|s) summed over action dimensions: the Gaussian's
    log-density minus log |da/dx| = log(scale * (1 - tanh^2) + 1e-6), as CleanRL."""
    mean, log_std = out.chunk(2, dim=-1)
    squashed = torch.tanh(mean + log_std.exp() * noise)
    action = squashed * scale + bias
    log_prob = -0.5 * noise.square() - log_std - 0.5 * LOG_2PI
    log_prob = log_prob - torch.log(scale * (1 - squashed.square()) + 1e-6)
    return action, log_prob.sum(-1)


def soft_td_target(
    rewards: Tensor,
    terminated: Tensor,
    next_q: Tensor,
    next_log_pi: Tensor,
    alpha: Tensor | float,
    gamma: float,
) -> Tensor:
    """y = r + gamma * (1 - terminated) * (min_k Q'_k(s', a') - alpha * log pi(a'|s')),
    a' ~ pi(.|s'), next_q = Q'(s', a') of shape (2, batch). A truncated transition bootstraps
    from its real final observation s'; a terminated one does not bootstrap at all."""
    soft_value = torch.minimum(next_q[0], next_q[1]) - alpha * next_log_pi
    return rewards + gamma * (1 - terminated) * soft_value


def actor_objective(log_pi: Tensor, q_pi: Tensor, alpha: Tensor | float) -> Tensor:
    """E[alpha * log pi(a|s) - min_k Q_k(s, a)], a ~ pi(.|s) reparameterised."""
    return (alpha * log_pi - torch.minimum(q_pi[0], q_pi[1])).mean()


def alpha_objective(log_alpha: Tensor, log_pi: Tensor, target_entropy: float) -> Tensor:
    """-alpha * E[log pi + target_entropy]: its gradient step raises alpha when the policy's
    entropy -E[log pi] is below the target and lowers it when above (Haarnoja et al. 2018)."""
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


def polyak_update(targets: list[Tensor], sources: list[Tensor], tau: float) -> None:
    """target <- target + tau * (source - target) = (1 - tau) * target + tau * source."""
    with torch.no_grad():
        torch._foreach_lerp_(targets, sources, tau)


# --- Diagnostics' view: SAC's losses as functions of each network's parameters ----------------


@dataclass
class Nets:
    """The networks a measurement reads: the live ones, or a snapshot taken at a shift. A
    snapshot also holds copies of the actor's and the critic's optimizers over its own copies
    of the networks, with their state at the snapshot (what the plasticity probe trains)."""

    actor: SquashedGaussianActor
    critic: TwinCritic
    critic_target: TwinCritic
    alpha: Tensor
    optimizers: list[torch.optim.Optimizer] | None = None

    def snapshot(
        self, actor_optimizer: torch.optim.Optimizer, q_optimizer: torch.optim.Optimizer
    ) -> Nets:
        """Copies of the networks and alpha, with the optimizers copied over the copies."""
        nets = Nets(
            copy.deepcopy(self.actor),
            copy.deepcopy(self.critic),
            copy.deepcopy(self.critic_target),
            self.alpha.detach().clone(),
        )
        nets.optimizers = []
        for optimizer, live, copied in (
            (actor_optimizer, self.actor, nets.actor),
            (q_optimizer, self.critic, nets.critic),
        ):
            # deepcopy with a memo: the optimizer's state, pointing at the copied parameters
            memo = {id(p): q for p, q in zip(live.parameters(), copied.parameters(), strict=True)}
            nets.optimizers.append(copy.deepcopy(optimizer, memo))
        return nets


def loss_closures(
    nets: Nets, data: dict[str, Tensor], noise: Tensor, gamma: float, n: int
) -> dict[str, LossClosure]:
    """SAC's losses on the first n transitions of `data`, as functions of each network's
    parameters (for the diagnostics):
    - actor: E[alpha * log pi(a|s) - min_k Q_k(s, a)] with a = the squashed sample at frozen
      noise, the critic's weights and alpha frozen;
    - critic: sum_k E[(Q_k(s, a) - y)^2] over both Q networks ("q1.hidden.0.weight", ...), with
      the targets y computed once, without gradients, from the target critic and the actor (at
      frozen noise), as in training.
    The regularizers' penalties are not part of them: the curvature measured is the task's.
    """
    obs, obs_actions = data["obs"][:n], data["obs_actions"][:n]
    actor, critic = nets.actor, nets.critic
    scale, bias = actor.action_scale, actor.action_bias
    alpha = float(nets.alpha)
    with torch.no_grad():
        next_obs = data["next_obs"][:n]
        next_action, next_log_pi = squashed_gaussian(actor(next_obs)[0], noise[1][:n], scale, bias)
        next_q, _ = nets.critic_target(torch.cat([next_obs, next_action], -1))
        targets = soft_td_target(
            data["rewards"][:n], data["terminated"][:n], next_q, next_log_pi, alpha, gamma
        )

    def actor_outputs(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(actor, params, (obs,))[0]

    def actor_loss(outputs: Tensor) -> Tensor:
        action, log_pi = squashed_gaussian(outputs, noise[0][:n], scale, bias)
        return actor_objective(log_pi, critic.frozen(torch.cat([obs, action], -1)), alpha)

    def critic_outputs(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(critic, params, (obs_actions,))[0].T  # (n, 2)

    def critic_loss(values: Tensor) -> Tensor:
        return (values - targets[:, None]).square().mean(0).sum()

    return {
        "actor": LossClosure(dict(actor.named_parameters()), actor_outputs, actor_loss),
        "critic": LossClosure(dict(critic.named_parameters()), critic_outputs, critic_loss),
    }


def hidden_features(nets: Nets, data: dict[str, Tensor], n: int) -> dict[str, list[Tensor]]:
    """Each network's hidden features on the first n transitions of `data`."""
    return {
        "actor": nets.actor(data["obs"][:n])[1],
        "critic": nets.critic(data["obs_actions"][:n])[1],
    }


def stream_seed(seed: int, index: int) -> int:
    """The seed of network `index`'s regularizer: its own stream, derived from the run's."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def check_args(args: Args) -> None:
    """One clear line for a configuration that cannot run."""
    require_all(
        [
            ("--policy-lr", args.policy_lr, "> 0"),
            ("--q-lr", args.q_lr, "> 0"),
            ("--alpha-lr", args.alpha_lr, "> 0"),
            ("--alpha", args.alpha, ">= 0"),
            ("--adam-betas", args.adam_betas, "in [0, 1)"),
            ("--adam-eps", args.adam_eps, "> 0"),
            ("--num-envs", args.num_envs, ">= 1"),
            ("--batch-size", args.batch_size, ">= 1"),
            ("--buffer-size", args.buffer_size, ">= 1"),
            ("--updates-per-step", args.updates_per_step, ">= 1"),
            ("--policy-frequency", args.policy_frequency, ">= 1"),
            ("--target-network-frequency", args.target_network_frequency, ">= 1"),
            ("--log-every", args.log_every, ">= 1"),
            ("--tau", args.tau, "in (0, 1]"),
            ("--gamma", args.gamma, "in [0, 1]"),
            ("--envpool-threads", args.envpool_threads, ">= 0"),
        ]
    )
    require_widths("--hidden-sizes", args.hidden_sizes)
    if args.target_entropy is not None:
        require("--target-entropy", args.target_entropy, "finite")
    if not 0 <= args.learning_starts <= args.buffer_size:
        raise ConfigError(
            f"--learning-starts {args.learning_starts} must be between 0 and --buffer-size "
            f"{args.buffer_size} (updates wait until the buffer holds that many transitions)"
        )
    if args.total_timesteps < args.num_envs:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is shorter than one vector-env step "
            f"(--num-envs {args.num_envs})"
        )
    # The critic's features list holds both Q networks' layers (Q1's, then Q2's), so "the last
    # hidden layer" of it is only Q2's.
    if args.regularizer == "parseval" and args.parseval.last_layer_only:
        raise ConfigError(
            "--parseval.last-layer-only: SAC's critic features hold both Q networks' layers "
            "(Q1's, then Q2's), so the last of the list is only Q2's last layer"
        )
    if args.diag.joint:
        raise ConfigError(
            "--diag.joint: SAC's actor loss reads the critic, so its losses have no joint form "
            "as outputs of the two networks; SAC measures the actor and critic separately"
        )
    check_diagnostics_flags(args)
    check_video_flags(args)


def unused_flags(args: Args) -> dict[str, str]:
    """{field: why it has no effect} for SAC's own flags."""
    unused = unused_video_flags(args)
    if args.env_backend != "envpool":
        unused["envpool_threads"] = "it sets envpool's threads, and --env-backend is gymnasium"
    if not args.shift:
        unused["buffer_at_shift"] = "the run has no shift (--shift names none)"
    if args.autotune:
        unused["alpha"] = "alpha is tuned (--autotune); --no-autotune fixes it to --alpha"
    else:
        unused["alpha_lr"] = unused["target_entropy"] = "--no-autotune fixes alpha to --alpha"
    return unused


LEARNER = Learner(
    mode="sac",
    presets=PRESETS,
    # What the checkpoint's tensors, its replay buffer and the tasks' parameters depend on: a
    # resume with another value would continue a different run.
    fixed_on_resume=("seed", *ARCHITECTURE_FLAGS, "regularizer", "autotune", *ENV_FIXED_ON_RESUME),
    unused_flags=unused_flags,
)


# --- The agent and the steps of the loop ---------------------------------------------------------


@dataclass
class SACAgent:
    """What SAC learns and keeps: the actor, the twin critic and its target, their optimizers,
    the entropy temperature, one regularizer per network and the diagnostics (what a checkpoint
    saves), and how it acts."""

    args: Args
    actor: SquashedGaussianActor
    critic: TwinCritic
    critic_target: TwinCritic
    actor_optimizer: torch.optim.Optimizer
    q_optimizer: torch.optim.Optimizer
    log_alpha: Tensor
    alpha_optimizer: torch.optim.Optimizer | None
    alpha: Tensor
    """exp(log_alpha), kept on the device: reading it never waits for the device"""
    target_entropy: float
    regularizers: dict[str, Regularizer]
    diagnostics: Diagnostics
    device: torch.device

    @classmethod
    def build(cls, args: Args, envs, run: Run) -> SACAgent:
        device = run.device
        obs_dim = envs.single_observation_space.shape[0]
        act_dim = envs.single_action_space.shape[0]
        low, high = envs.single_action_space.low, envs.single_action_space.high
        regularizers = {"actor": build_regularizer(args), "critic": build_regularizer(args)}
        # Architecture flags, with what the regularizer needs switched on (layernorm-l2).
        net = (args.hidden_sizes, args.activation, args.init)
        options = regularizers["critic"].network_options(layer_norm=args.layer_norm)
        actor = SquashedGaussianActor(obs_dim, act_dim, *net, low, high, **options).to(device)
        critic = TwinCritic(obs_dim, act_dim, *net, **options).to(device)
        critic_target = copy.deepcopy(critic).requires_grad_(False)
        # The fused kernel does Adam's arithmetic for all tensors in one pass (CPU and CUDA).
        adam = functools.partial(
            torch.optim.Adam,
            betas=args.adam_betas,
            eps=args.adam_eps,
            fused=device.type in ("cpu", "cuda"),
        )
        actor_optimizer = adam(actor.parameters(), lr=args.policy_lr)
        q_optimizer = adam(critic.parameters(), lr=args.q_lr)
        # Automatic entropy tuning: log alpha starts at 0 (alpha = 1), as CleanRL's.
        target_entropy = -float(act_dim) if args.target_entropy is None else args.target_entropy
        log_alpha = torch.zeros((), device=device, requires_grad=True)
        alpha_optimizer = adam([log_alpha], lr=args.alpha_lr) if args.autotune else None
        alpha = (
            log_alpha.detach().exp() if args.autotune else torch.tensor(args.alpha, device=device)
        )
        # One regularizer per network, each attached with that network's optimizer and its own
        # random stream: the critic's moments run around critic updates and the actor's around
        # actor updates, so L2's decay never touches the other network's stale gradients and
        # L2-Init's penalty of one network is never part of the other's loss.
        regularizers["actor"].attach({"actor": actor}, actor_optimizer, stream_seed(args.seed, 0))
        regularizers["critic"].attach({"critic": critic}, q_optimizer, stream_seed(args.seed, 1))
        diagnostics = Diagnostics(args, run.logger, args.seed)
        diagnostics.attach({"actor": actor, "critic": critic})
        return cls(
            args, actor, critic, critic_target, actor_optimizer, q_optimizer, log_alpha,
            alpha_optimizer, alpha, target_entropy, regularizers, diagnostics, device,
        )  # fmt: skip

    def act(self, obs: Tensor) -> Tensor:
        """The policy's sampled action per env."""
        with torch.inference_mode():
            noise = torch.randn((len(obs), self.actor.action_scale.numel()), device=self.device)
            out = self.actor(obs)[0]
            return squashed_gaussian(out, noise, self.actor.action_scale, self.actor.action_bias)[0]

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """The policy's deterministic action tanh(mean), scaled (what a clip films)."""
        with torch.inference_mode():
            out = self.actor(torch.as_tensor(obs[None], dtype=torch.float32, device=self.device))[0]
            mean = out[:, : self.actor.action_scale.numel()]
            return (
                (torch.tanh(mean) * self.actor.action_scale + self.actor.action_bias)[0]
                .cpu()
                .numpy()
            )

    def nets(self) -> Nets:
        """The live networks, as the diagnostics read them."""
        return Nets(self.actor, self.critic, self.critic_target, self.alpha)

    def snapshot(self) -> Nets:
        """Copies of the networks and alpha, with the optimizers copied over the copies."""
        return self.nets().snapshot(self.actor_optimizer, self.q_optimizer)

    def check_finite(self, step: int, losses: Tensor) -> None:
        """Stop with a clear error once a loss or a weight is not finite (checked at log points
        and before checkpoints, not per update: a NaN spreads and stays)."""
        if not bool(torch.isfinite(losses).all()):
            raise Diverged(step, f"a loss was not finite ({losses.tolist()})")
        for name, net in (("actor", self.actor), ("critic", self.critic)):
            if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
                raise Diverged(step, f"the {name}'s weights became non-finite")

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().cpu(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
            "regularizer": {name: reg.state_dict() for name, reg in self.regularizers.items()},
            "diagnostics": self.diagnostics.state_dict(),
        }

    def load_state_dict(self, saved: dict) -> None:
        self.actor.load_state_dict(saved["actor"])
        self.critic.load_state_dict(saved["critic"])
        self.critic_target.load_state_dict(saved["critic_target"])
        restore_optimizer(self.actor_optimizer, saved["actor_optimizer"])
        restore_optimizer(self.q_optimizer, saved["q_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(saved["log_alpha"])
        if self.alpha_optimizer is not None:
            restore_optimizer(self.alpha_optimizer, saved["alpha_optimizer"])
            self.alpha = self.log_alpha.detach().exp()
        for name, regularizer in self.regularizers.items():
            regularizer.load_state_dict(saved["regularizer"][name])
        self.diagnostics.load_state_dict(saved["diagnostics"])


def critic_features(critic: TwinCritic, obs_actions: Tensor) -> dict[str, list[Tensor]]:
    return {"critic": critic(obs_actions)[1]}


def actor_features(actor: SquashedGaussianActor, obs: Tensor) -> dict[str, list[Tensor]]:
    return {"actor": actor(obs)[1]}


def critic_update(agent: SACAgent, batch: dict[str, Tensor]) -> tuple[dict, dict]:
    """One step of the twin critic: TD regression on the soft target (no gradient through it)
    plus its regularizer's penalty, then its moments. Returns the step's losses (tensors, read
    at log points) and the regularizer's metrics."""
    actor, critic, regularizer = agent.actor, agent.critic, agent.regularizers["critic"]
    with torch.no_grad():
        next_obs = batch["next_obs"]
        noise = torch.randn((len(next_obs), actor.action_scale.numel()), device=agent.device)
        next_action, next_log_pi = squashed_gaussian(
            actor(next_obs)[0], noise, actor.action_scale, actor.action_bias
        )
        next_q, _ = agent.critic_target(torch.cat([next_obs, next_action], 1))
        targets = soft_td_target(
            batch["rewards"],
            batch["terminated"],
            next_q,
            next_log_pi,
            agent.alpha,
            agent.args.gamma,
        )
    q_values, features = critic(batch["obs_actions"])
    qf_losses = (q_values - targets).square().mean(1)
    penalty = regularizer.penalty({"critic": features})
    agent.q_optimizer.zero_grad(set_to_none=True)
    (qf_losses.sum() + penalty).backward()
    regularizer.before_step()
    agent.q_optimizer.step()
    # The ER step (and any method acting after updates) sees this update's batch.
    metrics = regularizer.after_update(
        functools.partial(critic_features, critic, batch["obs_actions"]), pass_end=True
    )
    losses = {
        "qf_losses": qf_losses.detach(),
        "q_values": q_values.detach().mean(1),
        "critic_penalty": penalty.detach(),
    }
    return losses, metrics


def actor_update(agent: SACAgent, batch: dict[str, Tensor]) -> tuple[dict, dict]:
    """One step of the actor (through the critic's detached weights) plus its regularizer's
    penalty, then its moments; then alpha's step on the same log-probabilities (autotune)."""
    actor, regularizer = agent.actor, agent.regularizers["actor"]
    out, features = actor(batch["obs"])
    noise = torch.randn((len(batch["obs"]), actor.action_scale.numel()), device=agent.device)
    pi, log_pi = squashed_gaussian(out, noise, actor.action_scale, actor.action_bias)
    q_pi = agent.critic.frozen(torch.cat([batch["obs"], pi], 1))
    penalty = regularizer.penalty({"actor": features})
    actor_loss = actor_objective(log_pi, q_pi, agent.alpha)
    agent.actor_optimizer.zero_grad(set_to_none=True)
    (actor_loss + penalty).backward()
    regularizer.before_step()
    agent.actor_optimizer.step()
    metrics = regularizer.after_update(
        functools.partial(actor_features, actor, batch["obs"]), pass_end=True
    )
    losses = {
        "actor_loss": actor_loss.detach(),
        "entropy": -log_pi.detach().mean(),
        "actor_penalty": penalty.detach(),
    }
    if agent.alpha_optimizer is not None:
        alpha_loss = alpha_objective(agent.log_alpha, log_pi, agent.target_entropy)
        agent.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        agent.alpha_optimizer.step()
        agent.alpha = agent.log_alpha.detach().exp()
        losses["alpha_loss"] = alpha_loss.detach()
    return losses, metrics


def store_step(
    buffer: ReplayBuffer,
    to_device: HostToDevice,
    obs: Tensor,
    action: Tensor,
    step: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict],
) -> Tensor:
    """Store one vector-env step's transitions; return the next observations on the device. A
    finished episode's transition ends at its real final observation (same-step autoreset put
    the next episode's first one in the step's observations)."""
    raw_next_obs, reward, terminated, done, infos = step
    obs_dim = raw_next_obs.shape[1]
    # [reward, terminated, final obs, next obs] per env: the one host-to-device copy
    outcome = np.empty((len(reward), 2 + 2 * obs_dim), np.float32)
    outcome[:, 0] = reward
    outcome[:, 1] = terminated
    outcome[:, 2 : 2 + obs_dim] = raw_next_obs
    outcome[:, 2 + obs_dim :] = raw_next_obs
    for i in np.flatnonzero(done):
        outcome[i, 2 : 2 + obs_dim] = infos["final_obs"][i]
    outcome_t = to_device(outcome)
    buffer.add(obs, action, outcome_t[:, : 2 + obs_dim])
    return outcome_t[:, 2 + obs_dim :]


def sac_probe(
    args: Args, buffer: ReplayBuffer, nets: Nets, rows: Tensor, step: int, **note
) -> Probe:
    """The diagnostics' view of a block of transitions (copies) with the given networks. The
    noise of the sampled actions comes from a generator of its own, so measuring never draws
    from the run's random streams."""
    data = buffer.unpack(rows.clone())
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    noise = torch.randn((2, len(rows), buffer.act_dim), generator=generator).to(rows.device)
    return Probe(
        closures=functools.partial(loss_closures, nets, data, noise, args.gamma),
        features=functools.partial(hidden_features, nets, data),
        size=len(rows),
        note=note,
        nets={"actor": nets.actor, "critic": nets.critic},
        optimizers=nets.optimizers,
    )


def task_end_probe(
    args: Args, buffer: ReplayBuffer, nets: Nets, step: int, task_start: int, wanted: int
) -> Probe | None:
    """The last transitions of the task that ends at `step` (up to `wanted`; all stored
    already), or None when the buffer holds too few of them."""
    n = min(wanted, step - task_start, buffer.size)
    if n < max(1, args.diag.min_init_samples):
        return None
    return sac_probe(args, buffer, nets, buffer.recent(n), step)


def task_init_probe(args: Args, buffer: ReplayBuffer, boundaries: TaskBoundaries) -> Probe | None:
    """The waiting boundary's init: the new task's first transitions (the newest ones, up to
    the number it waits for) with the networks as the task began; None when too few arrived."""
    n = min(boundaries.available(), buffer.size)
    if n < max(1, boundaries.min_samples):
        return None
    waiting = boundaries.waiting
    return sac_probe(args, buffer, waiting.nets, buffer.recent(n), waiting.step, samples=n)


def begin_task(
    shift: dict,
    run: Run,
    agent: SACAgent,
    buffer: ReplayBuffer,
    boundaries: TaskBoundaries,
    clips: ClipRecorder | None,
    task_start: int,
) -> None:
    """A task starts (the transitions of this step already belong to it): its event and clips,
    the old task's end measured on the networks that finished it (a boundary still waiting for
    its init gets it on what arrived: shifts closer than --diag.batch-size), the regularizers'
    moment, the buffer kept or flushed, and the new boundary waits for its init."""
    run.event(shift["step"], "shift", task=shift["task"], params=shift["params"])
    if clips is not None:
        clips.shift(shift["step"], shift["task"], agent.greedy)
    end = None
    if boundaries.enabled:
        boundaries.measure(task_init_probe(agent.args, buffer, boundaries))
        end = task_end_probe(
            agent.args, buffer, agent.snapshot(), shift["step"], task_start, boundaries.wanted
        )
    shift_metrics = {}
    for regularizer in agent.regularizers.values():
        shift_metrics.update(regularizer.on_shift())
    if shift_metrics:
        run.log(shift["step"], {f"regularizer/{k}": v for k, v in shift_metrics.items()})
    if agent.args.buffer_at_shift == "flush":
        buffer.clear()
    if boundaries.enabled:
        boundaries.begin(shift["step"], shift["task"] - 1, shift["task"], end, agent.snapshot())


@dataclass
class Rates:
    """Env steps and updates per second: over the run so far and since the last log point."""

    start_step: int
    updates: int
    start_time: float = dataclasses.field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.interval = (self.start_time, self.start_step, self.updates)

    def scalars(self, step: int, updates: int) -> dict[str, float]:
        now = time.perf_counter()
        then, interval_step, interval_updates = self.interval
        self.interval = (now, step, updates)
        return {
            "charts/SPS": int((step - self.start_step) / (now - self.start_time)),
            "charts/interval_SPS": (step - interval_step) / (now - then),
            "charts/updates_per_second": (updates - interval_updates) / (now - then),
        }


def loss_scalars(agent: SACAgent, last: dict[str, Tensor], step: int) -> dict[str, float]:
    """The latest losses, read in one device sync, as the run's scalars (stops the run when
    one is not finite)."""
    if "actor_loss" not in last:
        return {}
    no_alpha_loss = torch.zeros((), device=agent.device)
    values = torch.stack([
        *last["qf_losses"], *last["q_values"], last["actor_loss"], last["entropy"], agent.alpha,
        last.get("alpha_loss", no_alpha_loss), last["critic_penalty"], last["actor_penalty"],
    ])  # fmt: skip
    agent.check_finite(step, values)
    qf1, qf2, q1, q2, actor_loss, entropy, alpha, alpha_loss, critic_penalty, actor_penalty = (
        values.tolist()
    )
    scalars = {
        "losses/qf1_values": q1, "losses/qf2_values": q2,
        "losses/qf1_loss": qf1, "losses/qf2_loss": qf2, "losses/qf_loss": (qf1 + qf2) / 2,
        "losses/actor_loss": actor_loss, "losses/entropy": entropy, "losses/alpha": alpha,
        "regularizer/critic_penalty": critic_penalty, "regularizer/actor_penalty": actor_penalty,
    }  # fmt: skip
    if agent.alpha_optimizer is not None:
        scalars["losses/alpha_loss"] = alpha_loss
    return scalars


def check_critic(agent: SACAgent, last: dict[str, Tensor], step: int) -> None:
    """Before a checkpoint: the critic's latest losses and values are finite."""
    if "qf_losses" in last:
        agent.check_finite(step, torch.cat([last["qf_losses"], last["q_values"]]))


def checkpoint_state(agent: SACAgent, buffer: ReplayBuffer, progress: dict) -> dict:
    buffer_state = buffer.state_dict() if agent.args.save_buffer else None
    return {**progress, **agent.state_dict(), "rng": rng_state(), "buffer": buffer_state}


def restore_checkpoint(
    agent: SACAgent, buffer: ReplayBuffer, envs, saved: dict
) -> tuple[int, int, int]:
    """A resumed run's agent, buffer (if it was saved) and envs where the checkpoint left them;
    returns its env step, its update count and the step its task began at. The global random
    state (saved["rng"]) is the caller's: one process may hold several runs."""
    agent.load_state_dict(saved)
    if saved.get("buffer") is not None:
        buffer.load_state_dict(saved["buffer"])
    envs.set_global_step(saved["global_step"])
    return saved["global_step"], saved["updates"], saved["task_start"]


def warn_without_buffer(run: Run, global_step: int) -> None:
    """A run resumed from a checkpoint without its replay buffer says so in its events."""
    if run.checkpoint is not None and run.checkpoint.get("buffer") is None:
        message = (
            "resumed without a saved replay buffer (--save-buffer): updates wait until it "
            "holds --learning-starts transitions"
        )
        run.event(global_step, "warning", message=message)


# --- The training loop ---------------------------------------------------------------------------


def train(args: Args, resumed: Resumed | None = None) -> Path:
    """Run SAC as configured; return the run directory."""
    check_args(args)
    envs = learner_envs(args, "SAC", bounded_actions=True)
    run = Run.start_rl(args, LEARNER, envs, resumed)
    device, num_envs = run.device, args.num_envs
    with run.training() as stop:
        agent = SACAgent.build(args, envs, run)
        diagnostics = agent.diagnostics
        obs_dim = envs.single_observation_space.shape[0]
        buffer = ReplayBuffer(args.buffer_size, obs_dim, envs.single_action_space.shape[0], device)
        global_step, updates, task_start = 0, 0, 0
        if run.checkpoint is not None:
            set_rng_state(run.checkpoint["rng"])
            global_step, updates, task_start = restore_checkpoint(agent, buffer, envs,
                                                                  run.checkpoint)  # fmt: skip

        # Episodes in flight at a checkpoint restart on resume; the task and the buffer carry on.
        raw_obs, _ = envs.reset(seed=args.seed + global_step)
        for event in envs.shift_events:
            run.event(event["step"], event["event"], task=event["task"], params=event["params"])
        warn_without_buffer(run, global_step)
        obs = torch.from_numpy(raw_obs.astype(np.float32)).to(device)
        # Each step's [reward, terminated, final obs, next obs] rows, through pinned memory on CUDA.
        to_device = HostToDevice((num_envs, 2 + 2 * obs_dim), device)
        space = envs.single_action_space
        low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
        width = torch.as_tensor(space.high - space.low, dtype=torch.float32, device=device)
        critic_params = list(agent.critic.parameters())
        target_params = list(agent.critic_target.parameters())
        episodes = EpisodeStats(num_envs)
        clips = ClipRecorder.for_run(args, run.dir, run.logger.video)
        if clips is not None and run.checkpoint is None:
            clips.record(0, "start", envs.task, agent.greedy)
        # Transitions per boundary measurement: the last ones of a task ("end") and the first
        # ones of the next ("init"), as PPO's last and first rollouts.
        boundaries = TaskBoundaries(
            diagnostics, min(args.diag.batch_size, args.buffer_size), args.diag.min_init_samples
        )
        if diagnostics.enabled and global_step == 0:
            boundaries.begin(0, None, envs.task, nets=agent.snapshot())
        last: dict[str, Tensor] = {}  # the latest losses, read (one device sync) at log points
        regularizer_metrics: dict[str, float] = {}
        next_log = (global_step // args.log_every + 1) * args.log_every
        bar = progress_bar(args.total_timesteps, global_step, f"sac {args.env_id}")
        run.on_close(bar.close)
        rates = Rates(global_step, updates)

        while global_step + num_envs <= args.total_timesteps:
            # --- Act: uniformly random before learning starts, then the policy's sample.
            if global_step < args.learning_starts:
                action = low + width * torch.rand((num_envs, width.numel()), device=device)
            else:
                action = agent.act(obs)
            raw_next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            global_step += num_envs
            if "shift" in infos:  # the transitions of this step already belong to the new task
                begin_task(infos["shift"], run, agent, buffer, boundaries, clips, task_start)
                task_start = infos["shift"]["step"]

            # --- Store, and measure a boundary's init once enough of its task has arrived.
            done = terminated | truncated
            step = (raw_next_obs, reward, terminated, done, infos)
            obs = store_step(buffer, to_device, obs, action, step)
            if boundaries.arrived(num_envs):
                boundaries.measure(task_init_probe(args, buffer, boundaries))
            episodes.step(reward, done, run, global_step)

            # --- Updates, once the buffer holds --learning-starts transitions: the critic, the
            # actor and alpha delayed (policy_frequency updates at once, as CleanRL), the target.
            if buffer.size >= max(1, args.learning_starts):
                for _ in range(args.updates_per_step):
                    updates += 1
                    rows = buffer.sample(args.batch_size)
                    batch = buffer.unpack(rows)
                    losses, metrics = critic_update(agent, batch)
                    last.update(losses)
                    regularizer_metrics.update(metrics)
                    if updates % args.policy_frequency == 0:
                        for _ in range(args.policy_frequency):
                            losses, metrics = actor_update(agent, batch)
                            last.update(losses)
                            regularizer_metrics.update(metrics)
                    if updates % args.target_network_frequency == 0:
                        polyak_update(target_params, critic_params, args.tau)
                    if diagnostics.due(updates):
                        diagnostics.periodic(
                            global_step, sac_probe(args, buffer, agent.nets(), rows, updates)
                        )

            # --- Logging, divergence check, checkpoints.
            bar.update(num_envs)
            if global_step >= next_log:
                next_log = (global_step // args.log_every + 1) * args.log_every
                scalars = {
                    **rates.scalars(global_step, updates),
                    "charts/task": envs.task,
                    "charts/buffer_size": buffer.size,
                    "charts/updates": updates,
                    "charts/policy_lr": agent.actor_optimizer.param_groups[0]["lr"],
                    "charts/q_lr": agent.q_optimizer.param_groups[0]["lr"],
                    **loss_scalars(agent, last, global_step),
                }
                if "actor_loss" in last:
                    scalars.update({f"regularizer/{k}": v for k, v in regularizer_metrics.items()})
                    regularizer_metrics.clear()
                run.log(global_step, scalars)
                bar.set_postfix(sps=scalars["charts/SPS"], task=envs.task, ret=episodes.summary())
            # A consistent point: this step's transitions are stored and its updates done.
            checkpoint_now = run.checkpoint_due(global_step)
            if stop.requested or checkpoint_now:
                check_critic(agent, last, global_step)
                progress = {
                    "global_step": global_step,
                    "task": envs.task,
                    "task_start": task_start,
                    "updates": updates,
                }
                if stop.requested:
                    run.stop_here(global_step, checkpoint_state(agent, buffer, progress))
                run.save(global_step, checkpoint_state(agent, buffer, progress))

        check_critic(agent, last, global_step)
        if diagnostics.enabled:
            boundaries.measure(task_init_probe(args, buffer, boundaries))
            end = task_end_probe(
                args, buffer, agent.snapshot(), global_step, task_start, boundaries.wanted
            )
            boundaries.finish(global_step, envs.task, end)
        if clips is not None:
            clips.record(global_step, "end", envs.task, agent.greedy)
        progress = {
            "global_step": global_step,
            "task": envs.task,
            "task_start": task_start,
            "updates": updates,
        }
        run.finish(global_step, checkpoint_state(agent, buffer, progress))
        diagnostics.finish(global_step)
    return run.dir
