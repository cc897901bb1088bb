"""PPO for continuous and discrete actions on a nonstationary world, in the CleanRL spirit.

Read top to bottom: Args (every flag, with its docstring), presets, then `train`: set-up,
rollout, GAE, minibatch updates with the regularizer's penalty and moments, logging and
checkpoints. A Box action space gets a diagonal Gaussian policy (CleanRL's
`ppo_continuous_action.py`), a Discrete one a softmax policy (CleanRL's `ppo.py`); everything
else is the same code. Differences from CleanRL, each on purpose:
- separate actor and critic networks that return their hidden features (the paper's RL setup);
- the gymnasium 1.x vector API with same-step autoreset, and truncated episodes bootstrapped
  from the value of their final observation (termination is not bootstrapped);
- observation/reward normalisation statistics kept here and saved in checkpoints;
- the world changes at shifts (envs.ShiftingVectorEnv), and the regularizer is one object
  whose moments are called at fixed points (regularizers.base);
- learning-rate annealing is off by default: annealing to zero would confound loss of
  plasticity with a vanishing step size (turn it on with --anneal-lr for CleanRL's setting);
- what other continual-RL code does differently is a flag, not a fork: an episode cap, a reward
  divisor, advantages normalised over the whole rollout, Monte-Carlo value targets, episodes
  cut at every rollout (the continual-* presets set them as C-CHAIN's code has them).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from agents.checkpoints import Resumed, restore_optimizer, rng_state, set_rng_state
from agents.flags import Learner, RunFlags
from agents.networks import (
    ARCHITECTURE_FLAGS,
    Activation,
    CategoricalActor,
    Critic,
    GaussianActor,
    Init,
)
from agents.progress import EpisodeStats, progress_bar
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
from envs import (
    SLIPPERY_ANT,
    OffsetConfig,
    PhysicsFlags,
    ShiftFlags,
    ShiftingVectorEnv,
    learner_envs,
)
from envs.normalize import ObservationNormalizer, RewardNormalizer
from envs.video import ClipRecorder, VideoFlags, check_video_flags
from envs.video import unused_flags as unused_video_flags
from regularizers import ERankConfig, L2Config, Regularizer, RegularizerFlags, build_regularizer
from validation import ConfigError, require, require_all, require_widths

LOG_2PI = math.log(2 * math.pi)
PresetName = Literal[
    "none", "demo", "slippery-ant", "continual-cartpole", "continual-acrobot",
    "continual-lunarlander",
]  # fmt: skip


@dataclass
class PPOFlags:
    """PPO's own flags (listed first by --help)."""

    preset: PresetName = "none"
    """a named set of defaults applied before the other flags: demo (make run: HalfCheetah-v5 with
    RK4 physics, friction shifts every 50k steps, L2-ER, 200k steps, clips at the shifts),
    slippery-ant (the paper's PPO run on Ant-v5), continual-cartpole / continual-acrobot /
    continual-lunarlander (C-CHAIN's continual Gym Control: 10 tasks, each a new offset added
    to every observation, 1.6M steps; docs/continual-gym-control.md)"""
    exp_name: str = "ppo"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the run: networks, sampling, env resets and the tasks' parameters"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """use CUDA when it is available; off by default because at these network sizes the CPU
    is faster: on an H200 machine PPO ran 2.2x (1 env) and 1.9x (8 envs) the GPU's env steps/s
    on one CPU thread (docs/gpu.md). Seeds stacked in one process are where a GPU pays"""
    torch_threads: int = 1
    """CPU threads for torch (0 = torch's default); small networks run fastest on one"""
    compile: bool = False
    """torch.compile the minibatch loss (its forward and backward graphs): a faster update after
    some seconds of compiling at the first one (measured in docs/benchmarks.md)"""

    # Environment
    env_id: str = "HalfCheetah-v5"
    """the gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total env steps of the run (summed over the vector envs)"""
    num_envs: int = 1
    """the number of parallel envs (all shift at the same global step)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """gymnasium: SyncVectorEnv in this process; envpool: envpool's C++ envs stepped in threads
    (every shift; a physics shift ends all episodes there; needs `pip install -e '.[envpool]'`)"""
    envpool_threads: int = 0
    """envpool's worker threads (0 = envpool's choice); only with --env-backend envpool"""
    norm_obs: bool = True
    """normalise observations by running statistics (saved in checkpoints)"""
    norm_reward: bool = True
    """scale rewards by the running std of the discounted return (saved in checkpoints)"""
    max_episode_steps: int = 0
    """cap every episode at this many steps (a truncation: bootstrapped from the value of its
    last observation); 0 keeps the env's own time limit"""
    reset_every_rollout: bool = False
    """start new episodes at every rollout, as C-CHAIN's (and TRAC's) PPO loop does: the
    episode in flight at a rollout's end is cut there, bootstrapped from the value of its next
    observation, and counted as an episode with the return it reached"""
    reward_divisor: float = 1.0
    """divide every reward by this before learning (C-CHAIN: 20); logged returns stay the env's"""
    clip_actions: bool = True
    """clip each sampled action to the action space's bounds before the env gets it (the
    update learns from the sample itself either way); --no-clip-actions gives the env the raw
    sample, as the paper's Slippery Ant code does: MuJoCo still clamps each control to its
    range, but Ant's and HalfCheetah's control cost is on the raw action (continuous actions)"""

    # Networks
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (each its own network)"""
    activation: Activation = "tanh"
    """hidden activation of both networks"""
    init: Init = "orthogonal"
    """weight initialisation: CleanRL's orthogonal, He kaiming-uniform or LeCun
    lecun-uniform (zero biases; the paper's RL networks), or torch-default (nn.Linear's own)"""
    layer_norm: bool = False
    """LayerNorm between each hidden linear layer and its activation (always on with
    --regularizer layernorm-l2)"""

    # PPO
    learning_rate: float = 3e-4
    """Adam's learning rate"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas (the paper's Slippery Ant run uses 0.99 0.99)"""
    adam_eps: float = 1e-5
    """Adam's epsilon"""
    anneal_lr: bool = False
    """anneal the learning rate linearly to zero over the run (CleanRL's default; off here, see above)"""
    num_steps: int = 2048
    """env steps per env in each rollout"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 32
    """minibatches per epoch"""
    update_epochs: int = 10
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages (to mean 0, std 1) over --adv-norm-scope"""
    adv_norm_scope: Literal["minibatch", "rollout"] = "minibatch"
    """what advantages are normalised over: each minibatch (CleanRL) or the whole rollout once
    (C-CHAIN)"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    value_target: Literal["gae", "monte-carlo"] = "gae"
    """the critic's target: the GAE lambda-return (advantages + old values, CleanRL) or the
    discounted reward-to-go, bootstrapped from the value where the rollout or a truncation cuts
    an episode (C-CHAIN)"""
    clip_vloss: bool = True
    """clip the value loss as in the PPO paper"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """clip the global gradient norm to this; 0 = no clipping"""
    target_kl: float | None = None
    """stop an update early when the approximate KL exceeds this"""
    seeds: tuple[int, ...] = ()
    """train these seeds in one process instead (e.g. --seeds 1 2 3 4 5 6): their networks
    stacked along a seed axis, one batched forward for acting and one batched backward per
    minibatch, each seed writing the run directory --seed alone writes (agents/ppo_seeds.py)"""


@dataclass
class Args(
    RunFlags, DiagnosticsFlags, RegularizerFlags, VideoFlags, ShiftFlags, PhysicsFlags, PPOFlags
):
    """train.py ppo: PPO's own flags first, then the shift, regularizer, diagnostics and run
    flags."""

    # --help follows the fields' order, and a dataclass takes its bases' fields last base first.


# C-CHAIN's continual Gym Control (Tang et al., ICML 2025), each value read from its code
# (github.com/bluecontra/C-CHAIN, crl_gym_classic_control/: control_train_aligned_vanilla.py
# "script", networks.py, basic_utils.py; docs/continual-gym-control.md):
CONTINUAL_GYM_CONTROL: dict = dict(
    total_timesteps=1_600_000,  # script: level_num 10 x level_switch 200 x iteration_steps 800
    shift=("obs-offset",),  # script: observation += random_perturbation, one per level
    shift_every=160_000,  # script: a new level every level_switch 200 iterations
    obs_offset=OffsetConfig(std=2.0, first_task_unshifted=True),  # np.random.normal(0,
    # obs_perturb_range 2, obs.shape) per level, random_perturbations[0] = zeros
    num_envs=1,  # script: one gym env
    num_steps=800,  # script: iteration_steps 800 per PPO iteration
    max_episode_steps=400,  # script: max_timesteps 400, cut there with end_episode(last_value=V)
    reset_every_rollout=True,  # script: every iteration starts with env.reset(); the episode in
    # flight at step 800 ends with end_episode(last_value=V) and its return is averaged in
    reward_divisor=20.0,  # script: reward_scale 20 (basic_utils Episode.append: reward / scale)
    norm_obs=False,  # script: state_scale 1.0, no normalisation
    norm_reward=False,
    hidden_sizes=(256, 256, 256),  # networks.py: fc1-fc3 of hidden_dim 256, actor and critic
    activation="leaky-relu-0.1",  # script: act_f l_relu = torch.nn.LeakyReLU(0.1)
    init="torch-default",  # networks.py: nn.Linear's own initialisation
    learning_rate=1e-3,  # script: lr 0.001, one Adam over both networks
    adam_betas=(0.9, 0.999),  # torch.optim.Adam's defaults
    adam_eps=1e-8,
    num_minibatches=25,  # script: DataLoader batch_size 32 over the 800 samples
    update_epochs=5,  # script: epoch 5
    gamma=0.99,  # basic_utils Episode(gamma=0.99, lambd=0.95)
    gae_lambda=0.95,
    norm_adv=True,  # basic_utils History.build_dataset: normalize_list(advantages) over the
    adv_norm_scope="rollout",  # whole iteration
    value_target="monte-carlo",  # basic_utils end_episode: rewards_to_go = discounted sum of
    # the scaled rewards and last_value
    clip_coef=0.2,  # basic_utils: clip 0.2
    clip_vloss=False,  # basic_utils: c2 * F.mse_loss(values, rewards_to_go)
    ent_coef=0.01,  # basic_utils: c1 0.01
    vf_coef=1.0,  # basic_utils: c2 0.5 times the plain MSE; ours is vf_coef * 0.5 * MSE
    max_grad_norm=0.0,  # basic_utils: no clipping
    checkpoint_every=160_000,  # one per task
    # The Hessian and the features at every task's init and end: what the report reads.
    diagnostics=("hessian", "features"),
)

PRESETS: dict[str, dict] = {
    "none": {},
    # HalfCheetah integrates with semi-implicit Euler at 0.01 s, under which a flailing policy
    # at low friction gains momentum no contact can supply (docs/shifts-and-envs.md); RK4 at the same
    # step (Ant's own integrator) keeps it physical for ~10% of the run's time.
    "demo": dict(
        env_id="HalfCheetah-v5",
        total_timesteps=200_000,
        shift=("friction",),
        shift_every=50_000,
        physics_integrator="rk4",
        regularizer="l2-er",
        checkpoint_every=50_000,
        diag=DiagnosticsConfig(plot=True),
        capture_video=True,
    ),
    # The paper's Slippery Ant as its code runs it (KevinGuo27/lop-jax: rlopt/config.py,
    # rlopt/models.py, rlopt/scripts/hyperparams/nonstationary/l2_er.py; docs/slippery-ant.md):
    # separate 1 x 256 ReLU actor and critic, LeCun-uniform weights and zero biases; its L2-ER:
    # Adam (0.99, 0.99) at 1e-4 (optax's eps 1e-8), wd 1e-4 and er_lr 1e-6 from its grids;
    # rollout 2048, 10 epochs, 128 minibatches, entropy 0.01, value coefficient 1.0, 1 env; no
    # observation or reward normalisation, no gradient clipping (max_grad_norm 1e9) and no
    # action clipping (Brax gets the raw sample); the friction table of its five phases. Its
    # BP keeps Adam's default betas (the named sweeps).
    "slippery-ant": dict(
        **SLIPPERY_ANT,
        total_timesteps=10_000_000,
        num_envs=1,
        hidden_sizes=(256,),
        activation="relu",
        init="lecun-uniform",
        learning_rate=1e-4,
        adam_betas=(0.99, 0.99),
        adam_eps=1e-8,
        num_steps=2048,
        update_epochs=10,
        num_minibatches=128,
        ent_coef=0.01,
        vf_coef=1.0,
        norm_obs=False,
        norm_reward=False,
        max_grad_norm=0.0,
        clip_actions=False,  # rlopt/envs/__init__.py: ClipAction is commented out
        regularizer="l2-er",
        l2=L2Config(weight_decay=1e-4),
        erank=ERankConfig(lr=1e-6),
        diag=DiagnosticsConfig(joint=True, plot=True),
    ),
    "continual-cartpole": dict(**CONTINUAL_GYM_CONTROL, env_id="CartPole-v1"),
    "continual-acrobot": dict(**CONTINUAL_GYM_CONTROL, env_id="Acrobot-v1"),
    # C-CHAIN ran LunarLander-v2; gymnasium 1.x has only v3 (the same task with v2's bugs fixed:
    # a deterministic reset, the wind seeding); needs the box2d extra (pip install -e '.[box2d]').
    "continual-lunarlander": dict(**CONTINUAL_GYM_CONTROL, env_id="LunarLander-v3"),
}


Actor = GaussianActor | CategoricalActor


def gaussian_log_prob(action: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(action; mean, exp(log_std)^2), summed over action dimensions (no Distribution
    object: it costs more than the arithmetic on the per-step hot path)."""
    return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)


def policy_outputs(
    actor: Actor, obs: Tensor, params: dict[str, Tensor] | None = None
) -> tuple[Tensor, list[Tensor]]:
    """What pi(.|obs) is made of, as one (batch, width) tensor, and the actor's hidden
    features: a categorical actor's logits, or a Gaussian actor's mean and log-std side by
    side. `params` evaluates the actor at other parameters (torch.func, for the diagnostics)."""
    if params is None:
        out, features = actor(obs)
        log_std = getattr(actor, "log_std", None)
    else:
        out, features = torch.func.functional_call(actor, params, (obs,))
        log_std = params.get("log_std")
    if isinstance(actor, CategoricalActor):
        return out, features
    return torch.cat([out, log_std.expand_as(out)], -1), features


def log_prob_and_entropy(outputs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: log pi(action) and the policy's entropy, from `policy_outputs`. Integer
    actions are a categorical policy's (outputs: logits), float ones a Gaussian's (outputs:
    mean and log-std)."""
    if not actions.is_floating_point():
        log_probs = outputs.log_softmax(-1)
        chosen = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return chosen, -(log_probs.exp() * log_probs).sum(-1)
    mean, log_std = outputs.chunk(2, dim=-1)
    return gaussian_log_prob(actions, mean, log_std), (0.5 + 0.5 * LOG_2PI + log_std).sum(-1)


def hidden_features(actor: Actor, critic: Critic, obs: Tensor) -> dict[str, list[Tensor]]:
    """Both networks' hidden features on `obs`, with gradients (for the regularizer's moments)."""
    return {"actor": actor(obs)[1], "critic": critic(obs)[1]}


def policy_objective(outputs: Tensor, data: dict[str, Tensor], args: Args) -> dict[str, Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017) and the entropy of the new policy, from
    the actor's `policy_outputs` on `data` (its actions, old log-probabilities and advantages;
    with --adv-norm-scope minibatch the advantages are normalised over `data`). Training and
    the diagnostics' closures both call this: the curvature measured is that of the loss
    trained. Means are over the last (sample) axis: a leading seed axis gives one loss per seed
    (agents/ppo_seeds.py)."""
    new_logprob, entropy = log_prob_and_entropy(outputs, data["actions"])
    logratio = new_logprob - data["logprobs"]
    ratio = logratio.exp()
    advantages = data["advantages"]
    if args.norm_adv and args.adv_norm_scope == "minibatch":
        mean, std = advantages.mean(-1, keepdim=True), advantages.std(-1, keepdim=True)
        advantages = (advantages - mean) / (std + 1e-8)
    clipped = torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(-advantages * ratio, -advantages * clipped).mean(-1)
    return {"pg_loss": pg_loss, "entropy": entropy.mean(-1), "logratio": logratio, "ratio": ratio}


def value_objective(values: Tensor, data: dict[str, Tensor], args: Args) -> Tensor:
    """The critic's squared error to the returns, clipped around the old values (as the PPO
    paper and CleanRL) with --clip-vloss."""
    returns, old_values = data["returns"], data["values"]
    if args.clip_vloss:
        clipped = old_values + torch.clamp(values - old_values, -args.clip_coef, args.clip_coef)
        return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean(-1)
    return 0.5 * ((values - returns) ** 2).mean(-1)


def minibatch_loss(
    actor: Actor, critic: Critic, batch: dict[str, Tensor], idx: Tensor, args: Args
) -> dict[str, Tensor]:
    """PPO's loss on the minibatch `idx` of the rollout `batch` (without the regularizer's
    penalty), the hidden features it computed, and the update's statistics. One function so
    that `--compile` can hand all of it to torch.compile as one graph."""
    data = {k: v[idx] for k, v in batch.items()}
    outputs, actor_features = policy_outputs(actor, data["obs"])
    new_value, critic_features = critic(data["obs"])
    terms = ppo_terms(outputs, new_value, data, args)
    return {**terms, "actor_features": actor_features, "critic_features": critic_features}


def ppo_terms(
    outputs: Tensor, new_value: Tensor, data: dict[str, Tensor], args: Args
) -> dict[str, Tensor]:
    """PPO's loss and the update's statistics from the networks' outputs on `data` (means over
    the last axis: one value per seed with a leading seed axis, agents/ppo_seeds.py)."""
    policy = policy_objective(outputs, data, args)
    v_loss = value_objective(new_value, data, args)
    with torch.no_grad():
        logratio, ratio = policy["logratio"], policy["ratio"]
        old_approx_kl = (-logratio).mean(-1)
        approx_kl = ((ratio - 1) - logratio).mean(-1)
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean(-1)
    return {
        "loss": policy["pg_loss"] - args.ent_coef * policy["entropy"] + args.vf_coef * v_loss,
        "pg_loss": policy["pg_loss"],
        "v_loss": v_loss,
        "entropy": policy["entropy"],
        "old_approx_kl": old_approx_kl,
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }


def loss_closures(
    actor: Actor, critic: Critic, data: dict[str, Tensor], args: Args, n: int
) -> dict[str, LossClosure]:
    """PPO's losses on the first n samples of `data` as functions of each network's parameters
    (for the diagnostics): the actor's clipped surrogate with its entropy bonus (a function of
    its logits, or of its Gaussian's mean and log-std), the critic's (weighted) value loss, and
    their sum, the joint loss: the objectives training uses, with everything but the parameters
    frozen (actions, old log-probabilities, advantages, returns, old values). The regularizer's
    penalty is not part of them: the curvature measured is the task's.
    """
    frozen = {k: v[:n] for k, v in data.items()}
    obs = frozen["obs"]

    def actor_outputs(params: dict[str, Tensor]) -> Tensor:
        return policy_outputs(actor, obs, params)[0]

    def actor_loss(outputs: Tensor) -> Tensor:
        policy = policy_objective(outputs, frozen, args)
        return policy["pg_loss"] - args.ent_coef * policy["entropy"]

    def critic_outputs(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(critic, params, (obs,))[0]

    def critic_loss(values: Tensor) -> Tensor:
        return args.vf_coef * value_objective(values, frozen, args)

    def joint_outputs(params: dict[str, Tensor]) -> Tensor:
        split = {"actor": {}, "critic": {}}
        for name, value in params.items():
            net, _, rest = name.partition(".")
            split[net][rest] = value
        return torch.cat(
            [actor_outputs(split["actor"]), critic_outputs(split["critic"])[:, None]], -1
        )

    def joint_loss(outputs: Tensor) -> Tensor:
        return actor_loss(outputs[:, :-1]) + critic_loss(outputs[:, -1])

    actor_params, critic_params = dict(actor.named_parameters()), dict(critic.named_parameters())
    joint_params = {
        **{f"actor.{k}": v for k, v in actor_params.items()},
        **{f"critic.{k}": v for k, v in critic_params.items()},
    }
    return {
        "actor": LossClosure(actor_params, actor_outputs, actor_loss),
        "critic": LossClosure(critic_params, critic_outputs, critic_loss),
        "joint": LossClosure(joint_params, joint_outputs, joint_loss),
    }


def generalized_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    next_value: np.ndarray,
    episode_over: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """GAE (Schulman et al. 2016) over a (steps, envs) rollout.

    episode_over[t] marks that transition t ended its episode (terminated or truncated): the
    recursion is cut there, and the next value is not used. A truncated transition's reward
    already includes gamma * V(final observation), so truncation is bootstrapped and
    termination is not. A sequential scan: cheapest on the host, whatever the device.
    """
    advantages = np.zeros_like(rewards)
    last_advantage = np.zeros_like(next_value)
    for t in reversed(range(len(rewards))):
        following_value = next_value if t == len(rewards) - 1 else values[t + 1]
        not_over = 1.0 - episode_over[t]
        delta = rewards[t] + gamma * following_value * not_over - values[t]
        last_advantage = delta + gamma * gae_lambda * not_over * last_advantage
        advantages[t] = last_advantage
    return advantages


def check_args(args: Args) -> None:
    """One clear line for a configuration that cannot run."""
    require_all(
        [
            ("--learning-rate", args.learning_rate, "> 0"),
            ("--adam-betas", args.adam_betas, "in [0, 1)"),
            ("--adam-eps", args.adam_eps, "> 0"),
            ("--num-envs", args.num_envs, ">= 1"),
            ("--num-steps", args.num_steps, ">= 1"),
            ("--num-minibatches", args.num_minibatches, ">= 1"),
            ("--update-epochs", args.update_epochs, ">= 1"),
            ("--gamma", args.gamma, "in [0, 1]"),
            ("--gae-lambda", args.gae_lambda, "in [0, 1]"),
            ("--clip-coef", args.clip_coef, "> 0"),
            ("--ent-coef", args.ent_coef, "finite"),
            ("--vf-coef", args.vf_coef, ">= 0"),
            ("--max-grad-norm", args.max_grad_norm, ">= 0"),
            ("--envpool-threads", args.envpool_threads, ">= 0"),
            ("--max-episode-steps", args.max_episode_steps, ">= 0"),
            ("--reward-divisor", args.reward_divisor, "> 0"),
        ]
    )
    require_widths("--hidden-sizes", args.hidden_sizes)
    if args.target_kl is not None:
        require("--target-kl", args.target_kl, "> 0")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise ConfigError(
            f"--num-minibatches {args.num_minibatches} must divide the rollout size num_envs * num_steps = {batch_size}"
        )
    if args.total_timesteps < batch_size:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is shorter than one rollout (num_envs * num_steps = {batch_size})"
        )
    check_diagnostics_flags(args)
    check_video_flags(args)


def unused_flags(args: Args) -> dict[str, str]:
    """{field: why it has no effect} for PPO's own flags."""
    unused = unused_video_flags(args)
    if args.env_backend != "envpool":
        unused["envpool_threads"] = "it sets envpool's threads, and --env-backend is gymnasium"
    if not args.norm_adv:
        unused["adv_norm_scope"] = "it says what advantages are normalised over, and --no-norm-adv"
    return unused


LEARNER = Learner(
    mode="ppo",
    presets=PRESETS,
    # What the checkpoint's tensors, the normalisation statistics and the tasks' parameters
    # depend on: a resume with another value would continue a different run.
    fixed_on_resume=(
        *("seed", "norm_obs", "norm_reward", *ARCHITECTURE_FLAGS, "regularizer"),
        # what an episode is and what is learnt from it: another value is another MDP
        *("max_episode_steps", "reset_every_rollout", "reward_divisor", "value_target"),
        "clip_actions",
        *ENV_FIXED_ON_RESUME,
    ),
    unused_flags=unused_flags,
)


# --- The agent, its rollout storage and the steps of the loop -----------------------------------


@dataclass
class PPOAgent:
    """What PPO learns and keeps: both networks, their optimizer, the regularizer, the
    normalisation statistics and the diagnostics (what a checkpoint saves), and how it acts."""

    args: Args
    actor: Actor
    critic: Critic
    optimizer: torch.optim.Optimizer
    regularizer: Regularizer
    obs_normalizer: ObservationNormalizer
    reward_normalizer: RewardNormalizer
    diagnostics: Diagnostics
    action_space: gym.Space
    device: torch.device

    @classmethod
    def build(cls, args: Args, envs: gym.vector.VectorEnv, run: Run) -> PPOAgent:
        regularizer = build_regularizer(args)
        obs_dim = envs.single_observation_space.shape[0]
        action_space = envs.single_action_space
        # Architecture flags, with what the regularizer needs switched on (layernorm-l2: LayerNorm).
        net = (args.hidden_sizes, args.activation, args.init)
        options = regularizer.network_options(layer_norm=args.layer_norm)
        if isinstance(action_space, gym.spaces.Discrete):
            actor = CategoricalActor(obs_dim, int(action_space.n), *net, **options)
        else:
            actor = GaussianActor(obs_dim, action_space.shape[0], *net, **options)
        actor, critic = actor.to(run.device), Critic(obs_dim, *net, **options).to(run.device)
        # The fused kernel does Adam's arithmetic in one pass: the same update in half the time
        # of the default on CPU for networks this small (benchmarks/ppo_throughput.py).
        optimizer = torch.optim.Adam(
            [*actor.parameters(), *critic.parameters()],
            lr=args.learning_rate,
            betas=args.adam_betas,
            eps=args.adam_eps,
            fused=True,  # CPU and CUDA; its found_inf also skips a non-finite step (ppo_update)
        )
        regularizer.attach({"actor": actor, "critic": critic}, optimizer, args.seed)
        diagnostics = Diagnostics(args, run.logger, args.seed)
        diagnostics.attach({"actor": actor, "critic": critic}, [optimizer])
        return cls(
            args, actor, critic, optimizer, regularizer,
            ObservationNormalizer(obs_dim, enabled=args.norm_obs),
            RewardNormalizer(args.num_envs, args.gamma, enabled=args.norm_reward),
            diagnostics, action_space, run.device,
        )  # fmt: skip

    @property
    def discrete(self) -> bool:
        return isinstance(self.actor, CategoricalActor)

    def act(self, obs: Tensor) -> tuple[Tensor, Tensor, np.ndarray]:
        """A sampled action per env, its log-probability, and what the envs are given."""
        with torch.inference_mode():
            outputs, _ = self.actor(obs)
            if self.discrete:
                log_probs = outputs.log_softmax(-1)
                action = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
                return (
                    action,
                    log_probs.gather(-1, action[:, None]).squeeze(-1),
                    action.cpu().numpy(),
                )
            noise = torch.randn_like(outputs)
            action = outputs + self.actor.log_std.exp() * noise
            # log N(action; mean, std) with (action - mean) / std = noise: fewer ops.
            logprob = (-0.5 * noise.square() - self.actor.log_std).sum(-1)
            logprob = logprob - 0.5 * action.shape[-1] * LOG_2PI
            return action, logprob, self.env_actions(action)

    def env_actions(self, action: Tensor) -> np.ndarray:
        """What the envs are given for sampled continuous actions (--clip-actions)."""
        if not self.args.clip_actions:
            return action.cpu().numpy()
        return np.clip(action.cpu().numpy(), self.action_space.low, self.action_space.high)

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """The policy's most likely action on one raw observation (what a clip films)."""
        with torch.inference_mode():
            x = torch.as_tensor(self.obs_normalizer(obs[None], update=False), device=self.device)
            out = self.actor(x)[0][0]
            if self.discrete:
                return out.argmax().cpu().numpy()
            return self.env_actions(out)

    def learning_rewards(
        self, reward: np.ndarray, cut: np.ndarray, truncated: np.ndarray, infos: dict
    ) -> np.ndarray:
        """The rewards the update learns from: divided by --reward-divisor and normalised (an
        episode that is `cut` restarts its discounted return). A truncated episode did not end
        in the MDP: gamma * V(final observation) is added (same-step autoreset puts that
        observation in infos["final_obs"]; the step's own observation is already the reset)."""
        scaled = self.reward_normalizer(reward / self.args.reward_divisor, cut)
        cut_short = np.flatnonzero(truncated)
        if cut_short.size:
            final = self.obs_normalizer(np.stack(infos["final_obs"][cut_short]), update=False)
            with torch.inference_mode():
                final_value = self.critic(torch.from_numpy(final).to(self.device))[0]
            scaled[cut_short] += self.args.gamma * final_value.cpu().numpy()
        return scaled

    def snapshot(self) -> dict[str, torch.nn.Module]:
        """Copies of both networks as they are now (the diagnostics measure them later)."""
        return {"actor": copy.deepcopy(self.actor), "critic": copy.deepcopy(self.critic)}

    def probe(self, data: dict[str, Tensor], nets: dict | None = None, **note: float) -> Probe:
        """The diagnostics' view of one batch of rollout data (frozen copies), measured on the
        live networks or on `nets`, a snapshot taken earlier."""
        data = {k: v.detach().clone() for k, v in data.items()}
        actor, critic = (nets["actor"], nets["critic"]) if nets else (self.actor, self.critic)
        return Probe(
            closures=functools.partial(loss_closures, actor, critic, data, self.args),
            features=functools.partial(first_features, actor, critic, data["obs"]),
            size=len(data["obs"]),
            note=note,
            nets=nets,
        )

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "regularizer": self.regularizer.state_dict(),
            "diagnostics": self.diagnostics.state_dict(),
            "obs_normalizer": self.obs_normalizer.rms.state_dict(),
            "reward_normalizer": self.reward_normalizer.state_dict(),
        }

    def load_state_dict(self, saved: dict) -> None:
        self.actor.load_state_dict(saved["actor"])
        self.critic.load_state_dict(saved["critic"])
        restore_optimizer(self.optimizer, saved["optimizer"])
        self.regularizer.load_state_dict(saved["regularizer"])
        self.diagnostics.load_state_dict(saved["diagnostics"])
        self.obs_normalizer.rms.load_state_dict(saved["obs_normalizer"])
        self.reward_normalizer.load_state_dict(saved["reward_normalizer"])
        # Episodes in flight at the checkpoint restart: so does their discounted return.
        self.reward_normalizer.discounted_return[:] = 0.0


def first_features(actor: Actor, critic: Critic, obs: Tensor, n: int) -> dict[str, list[Tensor]]:
    """Both networks' hidden features on the first n observations (a probe's view)."""
    return hidden_features(actor, critic, obs[:n])


@dataclass
class Rollout:
    """One rollout's storage: observations, actions and log-probabilities on the device where
    the update runs; rewards and episode ends on the host, where GAE runs. `task` is the task
    it began in; `shift` a shift that happened in it, with the index of its first sample."""

    obs: Tensor
    actions: Tensor
    logprobs: Tensor
    rewards: np.ndarray
    episode_over: np.ndarray
    task: int = 0
    shift: dict | None = None

    @classmethod
    def allocate(cls, args: Args, agent: PPOAgent) -> Rollout:
        steps, envs, device = args.num_steps, args.num_envs, agent.device
        obs_dim = agent.obs_normalizer.rms.mean.shape[0]
        # One action per env and step: an index (categorical policy) or a vector (Gaussian).
        action_shape = () if agent.discrete else agent.action_space.shape
        action_type = torch.long if agent.discrete else torch.float32
        return cls(
            obs=torch.zeros((steps, envs, obs_dim), device=device),
            actions=torch.zeros((steps, envs, *action_shape), dtype=action_type, device=device),
            logprobs=torch.zeros((steps, envs), device=device),
            rewards=np.zeros((steps, envs), np.float32),
            episode_over=np.zeros((steps, envs), np.float32),
        )


def begin_task(
    shift: dict, index: int, run: Run, agent: PPOAgent, clips: ClipRecorder | None
) -> dict:
    """A task starts (a step or a reset of the envs reported `shift`, at sample `index` of the
    rollout): the networks as the old task left them are kept for its end measurement (the
    regularizer's moment may change them: reset, shrink-perturb), then its event, the clips of
    the policy in the old and the new world, and that moment. Returns the rollout's record."""
    end_nets = agent.snapshot() if agent.diagnostics.enabled else None
    run.event(shift["step"], "shift", task=shift["task"], params=shift["params"])
    if clips is not None:
        clips.shift(shift["step"], shift["task"], agent.greedy)
    shift_metrics = agent.regularizer.on_shift()
    if shift_metrics:
        run.log(shift["step"], {f"regularizer/{k}": v for k, v in shift_metrics.items()})
    return {**shift, "index": index, "end_nets": end_nets}


def advantages_and_returns(
    args: Args, agent: PPOAgent, rollout: Rollout, next_obs: Tensor
) -> dict[str, Tensor]:
    """Values of the whole rollout in one pass (the critic does not change while acting, so
    this equals evaluating it at every step, at a fraction of the cost), GAE, the value targets
    and the flat batch the update trains on."""
    with torch.inference_mode():
        values = agent.critic(rollout.obs)[0]
        next_value = agent.critic(next_obs)[0]
    values_np, next_value_np = values.cpu().numpy(), next_value.cpu().numpy()
    gae = (rollout.rewards, values_np, next_value_np, rollout.episode_over, args.gamma)
    device = values.device
    advantages = torch.from_numpy(generalized_advantages(*gae, args.gae_lambda)).to(device)
    values = values.clone()  # a normal tensor: the update's value clipping reads it
    if args.value_target == "gae":
        returns = advantages + values
    else:  # the discounted reward-to-go: GAE's recursion at lambda 1, plus the values
        returns = values + torch.from_numpy(generalized_advantages(*gae, 1.0)).to(device)
    if args.norm_adv and args.adv_norm_scope == "rollout":
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    batch_size = rollout.logprobs.numel()
    return {
        "obs": rollout.obs.reshape(batch_size, -1),
        "actions": rollout.actions.reshape(batch_size, *rollout.actions.shape[2:]),
        "logprobs": rollout.logprobs.reshape(-1),
        "advantages": advantages.reshape(-1),
        "returns": returns.reshape(-1),
        "values": values.reshape(-1),
    }


def measure_boundaries(
    boundaries: TaskBoundaries,
    agent: PPOAgent,
    rollout: Rollout,
    batch: dict[str, Tensor],
    previous_batch: dict[str, Tensor] | None,
    rollout_start: int,
) -> None:
    """Task boundaries, measured before this rollout's update (docs/paper.md): a task's "end"
    on its last rollout with the networks that finished it, the next one's "init" on its first
    rollout data, before any update on it; with fewer than --diag.min-init-samples of them in
    the rollout that held the shift, on the next rollout (the note says one update happened)."""
    batch_size = len(batch["obs"])
    shift = rollout.shift
    if shift is None:
        waiting = boundaries.waiting
        if boundaries.arrived(batch_size):
            note = {}
            if waiting.step < rollout_start:
                note["updates_since_shift"] = (rollout_start - waiting.step) // batch_size + 1
            boundaries.measure(agent.probe(batch), **note)
        return
    cut = shift["index"]
    before = {k: v[:cut] for k, v in batch.items()}
    if cut and boundaries.arrived(cut):  # the task that began before (the run's first one)
        boundaries.measure(agent.probe(before))
    end = None
    if previous_batch is not None:
        end = agent.probe(previous_batch, nets=shift["end_nets"])
    elif cut >= boundaries.min_samples:  # the run started in this rollout
        end = agent.probe(before, nets=shift["end_nets"])
    boundaries.begin(shift["step"], rollout.task, shift["task"], end)
    if boundaries.arrived(batch_size - cut):
        boundaries.measure(agent.probe({k: v[cut:] for k, v in batch.items()}))


def ppo_update(
    args: Args, agent: PPOAgent, batch: dict[str, Tensor], ppo_loss: Callable
) -> tuple[dict[str, float], dict[str, float]]:
    """Epochs of minibatch steps on the rollout: PPO's loss plus the regularizer's penalty,
    then its moments. Returns the update's statistics (one host read) and the regularizer's."""
    batch_size = len(batch["obs"])
    minibatch_size = batch_size // args.num_minibatches
    actor, critic, optimizer, regularizer = (
        agent.actor,
        agent.critic,
        agent.optimizer,
        agent.regularizer,
    )
    parameters = optimizer.param_groups[0]["params"]
    # The ER step (and any method acting "once per pass") sees the whole rollout.
    features_on_rollout = functools.partial(hidden_features, actor, critic, batch["obs"])
    skipped = torch.zeros((), device=batch["obs"].device)  # minibatch steps not taken
    clipfracs, regularizer_metrics = [], {}
    for _epoch in range(args.update_epochs):
        order = torch.randperm(batch_size, device=batch["obs"].device)
        for start in range(0, batch_size, minibatch_size):
            out = ppo_loss(actor, critic, batch, order[start : start + minibatch_size], args)
            clipfracs.append(out["clipfrac"])
            penalty = regularizer.penalty(
                {"actor": out["actor_features"], "critic": out["critic_features"]}
            )
            loss = out["loss"] + penalty
            # A loss that is not finite skips its step rather than write NaN into the weights,
            # with no host read: fused Adam's found_inf (GradScaler's hook) leaves parameters
            # and moments as they were. Counted, read with the statistics below.
            not_finite = (~torch.isfinite(loss.detach())).float()
            skipped = skipped + not_finite
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
            regularizer.before_step()  # L2's decay, after clipping (as weight_decay)
            optimizer.found_inf = not_finite
            optimizer.step()
            pass_end = start + minibatch_size >= batch_size
            regularizer_metrics.update(regularizer.after_update(features_on_rollout, pass_end))
        # (A host read per epoch, only with --target-kl: early stopping needs it.)
        if args.target_kl is not None and out["approx_kl"] > args.target_kl:
            break
    with torch.no_grad():
        var_returns = batch["returns"].var()
        unexplained = (batch["returns"] - batch["values"]).var() / var_returns
        stats = {
            "losses/value_loss": out["v_loss"], "losses/policy_loss": out["pg_loss"],
            "losses/entropy": out["entropy"], "losses/old_approx_kl": out["old_approx_kl"],
            "losses/approx_kl": out["approx_kl"], "losses/clipfrac": torch.stack(clipfracs).mean(),
            "losses/explained_variance": torch.where(var_returns > 0, 1 - unexplained, torch.nan),
            "regularizer/penalty": penalty, "skipped": skipped,
        }  # fmt: skip
        read = torch.stack([value.detach().float() for value in stats.values()]).tolist()
    stats = dict(zip(stats, read, strict=True))
    stats["minibatches"] = len(clipfracs)
    return stats, regularizer_metrics


def check_skipped(run: Run, step: int, stats: dict[str, float], agent: PPOAgent) -> None:
    """Record the minibatch steps an update skipped for a non-finite loss; stop the run when its
    weights are not finite or no step of the update could be taken."""
    skipped, minibatches = stats.pop("skipped"), stats.pop("minibatches")
    if not skipped:
        return
    run.event(step, "warning", message=f"{skipped:.0f} minibatch losses were not finite; skipped")
    if not all(torch.isfinite(p).all() for p in agent.optimizer.param_groups[0]["params"]):
        raise Diverged(step, "parameters became non-finite")
    if skipped >= minibatches:
        raise Diverged(step, "every minibatch loss of the update was not finite")


def checkpoint_state(
    agent: PPOAgent, global_step: int, task: int, previous_batch: dict | None
) -> dict:
    # the last rollout, for the "end" measurement of a task that ends after a resume
    return {"global_step": global_step, "task": task, **agent.state_dict(),
            "rng": rng_state(), "previous_batch": previous_batch}  # fmt: skip


def restore_checkpoint(
    agent: PPOAgent, envs, checkpoint: dict, device
) -> tuple[int, dict[str, Tensor] | None]:
    """A resumed run's agent and envs where `checkpoint` left them; returns its env step and
    the last rollout it saved (for the end measurement of a task that ends after the resume)."""
    agent.load_state_dict(checkpoint)
    global_step = checkpoint["global_step"]
    envs.set_global_step(global_step)
    previous = checkpoint.get("previous_batch")
    return global_step, None if previous is None else {k: v.to(device) for k, v in previous.items()}


# --- The training loop ---------------------------------------------------------------------------


def ppo_envs(args: Args) -> ShiftingVectorEnv:
    """PPO's envs (discrete or continuous actions), refusing --no-clip-actions where the
    actions are discrete (there is nothing to clip)."""
    envs = learner_envs(args, "PPO", bounded_actions=False, discrete_actions=True)
    if not args.clip_actions and isinstance(envs.single_action_space, gym.spaces.Discrete):
        envs.close()
        raise ConfigError(
            f"--no-clip-actions has no effect here: {args.env_id}'s actions are discrete"
        )
    return envs


def train(args: Args, resumed: Resumed | None = None) -> Path:
    """Run PPO as configured; return the run directory."""
    check_args(args)
    batch_size = args.num_envs * args.num_steps
    envs = ppo_envs(args)
    run = Run.start_rl(args, LEARNER, envs, resumed)
    with run.training() as stop:
        agent = PPOAgent.build(args, envs, run)
        diagnostics = agent.diagnostics
        global_step = 0
        previous_batch: dict[str, Tensor] | None = None  # the last rollout, for a task's end
        if run.checkpoint is not None:
            set_rng_state(run.checkpoint["rng"])
            global_step, previous_batch = restore_checkpoint(agent, envs, run.checkpoint,
                                                             run.device)  # fmt: skip
        rollout = Rollout.allocate(args, agent)

        # Episodes in flight at a checkpoint restart on resume; the task and statistics carry
        # on (the first observations do not move the statistics of a resumed run: they are
        # what the checkpoint saved).
        raw_obs, _ = envs.reset(seed=args.seed + global_step)
        for event in envs.shift_events:
            run.event(event["step"], event["event"], task=event["task"], params=event["params"])
        to_device = HostToDevice(tuple(rollout.obs.shape[1:]), run.device)  # pinned on CUDA
        next_obs = to_device(agent.obs_normalizer(raw_obs, update=run.checkpoint is None))
        episodes = EpisodeStats(args.num_envs)
        clips = ClipRecorder.for_run(args, run.dir, run.logger.video)
        if clips is not None and run.checkpoint is None:
            clips.record(0, "start", envs.task, agent.greedy)
        boundaries = TaskBoundaries(
            diagnostics, args.diag.min_init_samples, args.diag.min_init_samples
        )
        if diagnostics.enabled and global_step == 0:
            boundaries.begin(0, None, envs.task)
        bar = progress_bar(args.total_timesteps, global_step, f"ppo {args.env_id}")
        run.on_close(bar.close)
        start_time, start_step, updates = time.time(), global_step, 0
        # Compiled at its first call (5-15 s); later calls with the same shapes reuse the graphs.
        ppo_loss = torch.compile(minibatch_loss) if args.compile else minibatch_loss

        while global_step + batch_size <= args.total_timesteps:
            if args.anneal_lr:
                fraction_left = 1.0 - global_step / args.total_timesteps
                agent.optimizer.param_groups[0]["lr"] = fraction_left * args.learning_rate

            # --- Rollout: act, step the (shifting) world, store transitions.
            rollout.task, rollout.shift = envs.task, None
            if args.reset_every_rollout:  # new episodes; a shift due here comes with them
                raw_obs, infos = envs.reset_episodes()
                next_obs = to_device(agent.obs_normalizer(raw_obs))
                if "shift" in infos:
                    rollout.shift = begin_task(infos["shift"], 0, run, agent, clips)
            for step in range(args.num_steps):
                rollout.obs[step] = next_obs
                rollout.actions[step], rollout.logprobs[step], env_action = agent.act(next_obs)
                raw_obs, reward, terminated, truncated, infos = envs.step(env_action)
                global_step += args.num_envs
                done = terminated | truncated
                # With --reset-every-rollout the episodes in flight end with the rollout.
                cut = done | (args.reset_every_rollout and step == args.num_steps - 1)
                episodes.step(reward, cut, run, global_step)
                rollout.rewards[step] = agent.learning_rewards(
                    reward, cut, truncated & ~terminated, infos
                )
                rollout.episode_over[step] = done
                next_obs = to_device(agent.obs_normalizer(raw_obs))
                if "shift" in infos:
                    index = step * args.num_envs
                    rollout.shift = begin_task(infos["shift"], index, run, agent, clips)

            # --- Advantages, then the task boundaries (before this rollout's update), then
            # the minibatch updates.
            batch = advantages_and_returns(args, agent, rollout, next_obs)
            if diagnostics.enabled:
                rollout_start = global_step - batch_size
                measure_boundaries(boundaries, agent, rollout, batch, previous_batch, rollout_start)
            stats, regularizer_metrics = ppo_update(args, agent, batch, ppo_loss)
            updates += 1
            if diagnostics.enabled:
                previous_batch = {k: v.clone() for k, v in batch.items()}
                if diagnostics.due(updates):
                    diagnostics.periodic(global_step, agent.probe(batch))

            # --- Logging, divergence check, checkpoints.
            check_skipped(run, global_step, stats, agent)
            sps = int((global_step - start_step) / (time.time() - start_time))
            run.log(
                global_step,
                {
                    **episodes.rollout_return(),
                    "charts/learning_rate": agent.optimizer.param_groups[0]["lr"],
                    "charts/SPS": sps,
                    "charts/task": envs.task,
                    **stats,
                    **{f"regularizer/{k}": v for k, v in regularizer_metrics.items()},
                },
            )
            bar.update(batch_size)
            bar.set_postfix(sps=sps, task=envs.task, ret=episodes.summary())
            # A consistent point: the update is done and the next rollout not begun.
            if stop.requested:
                run.stop_here(
                    global_step, checkpoint_state(agent, global_step, envs.task, previous_batch)
                )
            if run.checkpoint_due(global_step):
                run.save(
                    global_step, checkpoint_state(agent, global_step, envs.task, previous_batch)
                )
        if diagnostics.enabled:
            end = agent.probe(previous_batch) if previous_batch is not None else None
            boundaries.finish(global_step, envs.task, end)
        if clips is not None:
            clips.record(global_step, "end", envs.task, agent.greedy)
        run.finish(global_step, checkpoint_state(agent, global_step, envs.task, previous_batch))
        diagnostics.finish(global_step)
    return run.dir
