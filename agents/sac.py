"""SAC for continuous actions on a nonstationary world, in the CleanRL spirit.

Read top to bottom: Args (every flag, with its docstring), presets, the networks (a
tanh-squashed Gaussian actor and a twin Q critic evaluated as one batched network), the replay
buffer, SAC's losses as small functions, then `train`: set-up, acting, storing transitions,
updates with each network's regularizer moments, task boundaries, logging and checkpoints.

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
- speed: the two Q networks are one network with stacked weights (one GEMM per layer for both),
  the buffer is one preallocated tensor on the device sampled with one gather, the actor loss
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

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.networks import ACTIVATIONS, MLP, Activation, Init
from agents.run import (
    HostToDevice,
    RunLogger,
    TrackingFlags,
    load_checkpoint,
    progress_bar,
    rng_state,
    seed_everything,
    set_rng_state,
)
from diagnostics import Diagnostics, DiagnosticsConfig, DiagnosticsFlags, LossClosure, Probe
from diagnostics import check_flags as check_diagnostics_flags
from envs import ConfigError, ShiftFlags, make_vector_env
from regularizers import ERankConfig, RegularizerFlags, build_regularizer
from regularizers.base import UnitLayer

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
LOG_2PI = math.log(2 * math.pi)
PresetName = Literal["none", "demo"]


@dataclass
class Args(TrackingFlags, RegularizerFlags, ShiftFlags, DiagnosticsFlags):
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
    """use CUDA when it is available"""
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


# --- Networks ---------------------------------------------------------------------------------


class SquashedGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mean(s), std(s))) * scale + bias, one MLP giving mean and log-std.

    forward -> ((batch, 2 * act_dim): the mean, then the log-std bounded to [LOG_STD_MIN,
    LOG_STD_MAX] by a tanh (CleanRL, from SpinUp / Yarats), and the hidden features). CleanRL's
    two heads on one trunk are the two halves of the output layer here (the same function and
    the same initial distribution, one GEMM).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        init: Init,
        action_low: np.ndarray,
        action_high: np.ndarray,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.act_dim = act_dim
        self.trunk = MLP(
            obs_dim, hidden_sizes, 2 * act_dim, activation, init, layer_norm=layer_norm
        )
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def reset_parameters(self) -> None:
        self.trunk.reset_parameters()

    def unit_layers(self) -> list[UnitLayer]:
        return self.trunk.unit_layers()

    def forward(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        out, features = self.trunk(obs)
        mean, raw_log_std = out[..., : self.act_dim], out[..., self.act_dim :]
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1)
        return torch.cat([mean, log_std], -1), features


class TwinLayerNorm(nn.LayerNorm):
    """A LayerNorm over the last axis with a gain and a shift per Q network: weight and bias
    are (2, width), one row each (the twin of MLP's nn.LayerNorm, as in --layer-norm)."""

    def __init__(self, width: int):
        super().__init__(width)
        self.weight = nn.Parameter(torch.ones(2, width))
        self.bias = nn.Parameter(torch.zeros(2, width))


def twin_q(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    activation,
    norms: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Both Q networks on x = [obs, action] (batch, in): Q values (2, batch), hidden features.

    Layer l of network k has weight weights[l][k] (out, in) and bias biases[l][k], as an
    nn.Linear, and (with norms) LayerNorm gain and shift norms[l][0][k], norms[l][1][k] before
    its activation, as MLP's. Each layer is one batched GEMM over the two networks (the input
    is shared, so the first layer reads it through a stride-0 view, with no copy). Features:
    the hidden activations of network 1, then of network 2, each (batch, width).
    """
    z = x.expand(2, *x.shape)
    hidden = []
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        if layer > 0:
            if norms is not None:
                gain, shift = norms[layer - 1]
                z = F.layer_norm(z, z.shape[-1:]) * gain.unsqueeze(1) + shift.unsqueeze(1)
            z = activation(z)
            hidden.append(z)
        z = torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2))
    return z.squeeze(-1), [h[k] for k in range(2) for h in hidden]


class TwinQ(nn.Module):
    """Two Q networks Q_1, Q_2 (CleanRL's qf1, qf2) evaluated as one: each layer's weights
    stacked on a leading axis of 2. forward([obs, action]) -> (Q values (2, batch), features:
    network 1's hidden layers, then network 2's). Network k alone is `member(k)`, an MLP."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        init: Init,
        layer_norm: bool = False,
    ):
        super().__init__()
        sizes = (obs_dim + act_dim, *hidden_sizes, 1)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(2, b, a)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(2, b)) for b in sizes[1:])
        self.norms = (
            nn.ModuleList(TwinLayerNorm(width) for width in hidden_sizes) if layer_norm else None
        )
        self.mlp_args = (sizes[0], tuple(hidden_sizes), 1, activation, init)
        self.layer_norm = layer_norm
        self.activation = ACTIVATIONS[activation]
        self.reset_parameters()

    def _pairs(self, mlp: MLP) -> list[tuple[Tensor, Tensor]]:
        """(this net's stacked parameter, the MLP's) for every parameter, in one order."""
        linears = [*mlp.hidden, mlp.out]
        pairs = [(w, layer.weight) for w, layer in zip(self.weights, linears, strict=True)]
        pairs += [(b, layer.bias) for b, layer in zip(self.biases, linears, strict=True)]
        for twin, norm in zip(self.norms or (), mlp.norms or (), strict=True):
            pairs += [(twin.weight, norm.weight), (twin.bias, norm.bias)]
        return pairs

    def member(self, k: int) -> MLP:
        """Network k (0 or 1) as a separate MLP with a copy of its current parameters."""
        mlp = MLP(*self.mlp_args, layer_norm=self.layer_norm).to(self.weights[0].device)
        with torch.no_grad():
            for stacked, single in self._pairs(mlp):
                single.copy_(stacked[k])
        return mlp

    def set_members(self, members: list[MLP]) -> None:
        """Copy two MLPs' parameters into the stacked ones."""
        with torch.no_grad():
            for k, mlp in enumerate(members):
                for stacked, single in self._pairs(mlp):
                    stacked[k].copy_(single)

    def reset_parameters(self) -> None:
        """Two fresh draws of the MLP initialisation (so each network starts as CleanRL's)."""
        self.set_members([MLP(*self.mlp_args, layer_norm=self.layer_norm) for _ in range(2)])

    def unit_layers(self) -> list[UnitLayer]:
        """Per network, per hidden layer (the order of the features): the rows computing its
        units and the columns of the next layer reading them, selected by the prefix (k,)."""
        return [
            UnitLayer(
                incoming=[self.weights[i], self.biases[i]]
                + ([self.norms[i].weight, self.norms[i].bias] if self.norms else []),
                outgoing=[self.weights[i + 1]],
                prefix=(k,),
            )
            for k in range(2)
            for i in range(len(self.weights) - 1)
        ]

    def tensors(self, detach: bool = False) -> tuple[list[Tensor], list[Tensor], list | None]:
        """(weights, biases, norms) as `twin_q` takes them, optionally detached."""

        def take(t: Tensor) -> Tensor:
            return t.detach() if detach else t

        weights, biases = [take(w) for w in self.weights], [take(b) for b in self.biases]
        norms = [(take(n.weight), take(n.bias)) for n in self.norms] if self.norms else None
        return weights, biases, norms

    def forward(self, obs_actions: Tensor) -> tuple[Tensor, list[Tensor]]:
        weights, biases, norms = self.tensors()
        return twin_q(obs_actions, weights, biases, self.activation, norms)

    def frozen(self, obs_actions: Tensor) -> Tensor:
        """Q values with the parameters detached: gradients reach the input (the actor's
        action) but no critic parameter."""
        weights, biases, norms = self.tensors(detach=True)
        return twin_q(obs_actions, weights, biases, self.activation, norms)[0]


# --- Replay buffer ----------------------------------------------------------------------------


class ReplayBuffer:
    """Transitions (s, a, r, terminated, s') as rows of one preallocated tensor on the device.

    Row layout: [obs | action | reward | terminated | next_obs], so one gather samples a batch
    and the critic's input [obs, action] is a view of it. s' is the real next observation: for
    a transition that ended its episode, the final observation, never the next episode's first.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.obs_dim, self.act_dim = capacity, obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        # torch.empty: pages are committed as rows are written, not for the whole capacity.
        self.storage = torch.empty((capacity, self.width), device=device)
        self.pos = 0
        """the next row to write"""
        self.size = 0
        """how many rows hold transitions"""

    def add(self, obs: Tensor, actions: Tensor, outcome: Tensor) -> None:
        """Store one vector-env step: obs (n, obs_dim), actions (n, act_dim), outcome
        (n, 2 + obs_dim) = [reward, terminated, next_obs]."""
        n = obs.shape[0]
        if self.pos + n <= self.capacity:
            rows = slice(self.pos, self.pos + n)
        else:
            rows = (self.pos + torch.arange(n, device=self.storage.device)) % self.capacity
        split = self.obs_dim + self.act_dim
        self.storage[rows, : self.obs_dim] = obs
        self.storage[rows, self.obs_dim : split] = actions
        self.storage[rows, split:] = outcome
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Tensor:
        """batch_size rows drawn uniformly with replacement (one gather)."""
        index = torch.randint(self.size, (batch_size,), device=self.storage.device)
        return self.storage[index]

    def recent(self, n: int) -> Tensor:
        """The last n rows written, oldest first (a copy)."""
        if not 0 < n <= self.size:
            raise ValueError(f"asked for the last {n} transitions of {self.size}")
        index = (self.pos - n + torch.arange(n, device=self.storage.device)) % self.capacity
        return self.storage[index]

    def clear(self) -> None:
        self.pos = self.size = 0

    def unpack(self, rows: Tensor) -> dict[str, Tensor]:
        """Named views of a block of rows."""
        o, a = self.obs_dim, self.act_dim
        return {
            "obs": rows[:, :o],
            "actions": rows[:, o : o + a],
            "obs_actions": rows[:, : o + a],
            "rewards": rows[:, o + a],
            "terminated": rows[:, o + a + 1],
            "next_obs": rows[:, o + a + 2 :],
        }

    def state_dict(self) -> dict:
        # A copy of the filled rows only: saving a view would save the whole storage.
        return {"rows": self.storage[: self.size].cpu().clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"]
        if rows.shape[1] != self.width or len(rows) > self.capacity:
            raise ValueError(
                f"the saved replay buffer holds {len(rows)} rows of width {rows.shape[1]}; this "
                f"run's holds {self.capacity} of width {self.width} (resume with the same "
                "--buffer-size and env)"
            )
        self.storage[: len(rows)] = rows.to(self.storage.device)
        self.size, self.pos = len(rows), state["pos"]


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
    snapshot also holds each Q network as its own MLP (`members`, the tensors the critic's
    closure is a function of) and copies of the optimizers over exactly those tensors, with
    their state at the snapshot (`optimizers`: what the plasticity probe trains)."""

    actor: SquashedGaussianActor
    critic: TwinQ
    critic_target: TwinQ
    alpha: Tensor
    members: list[MLP] | None = None
    optimizers: list[torch.optim.Optimizer] | None = None

    def copy(self) -> Nets:
        return Nets(
            copy.deepcopy(self.actor),
            copy.deepcopy(self.critic),
            copy.deepcopy(self.critic_target),
            self.alpha.detach().clone(),
        )

    def snapshot(
        self, actor_optimizer: torch.optim.Optimizer, q_optimizer: torch.optim.Optimizer
    ) -> Nets:
        """A copy, with the Q networks as separate MLPs and the optimizers copied over them:
        the actor's Adam as it is; the critic's split per network, each state tensor's slice
        [k] of the stacked one (the step count is shared)."""
        nets = self.copy()
        actor_map = {
            id(live): copied
            for live, copied in zip(self.actor.parameters(), nets.actor.parameters(), strict=True)
        }
        with torch.random.fork_rng(devices=[]):  # building an MLP draws an init: not the run's
            nets.members = [nets.critic.member(k) for k in range(2)]
        nets.optimizers = [copy.deepcopy(actor_optimizer, actor_map)]
        for k, member in enumerate(nets.members):
            single = type(q_optimizer)(member.parameters(), **q_optimizer.defaults)
            for stacked, param in self.critic._pairs(member):
                state = q_optimizer.state.get(stacked, {})
                single.state[param] = {
                    key: (value[k] if value.shape == stacked.shape else value).clone()
                    if torch.is_tensor(value)
                    else value
                    for key, value in state.items()
                }
            nets.optimizers.append(single)
        return nets


def loss_closures(
    nets: Nets, data: dict[str, Tensor], noise: Tensor, gamma: float, n: int
) -> dict[str, LossClosure]:
    """SAC's losses on the first n transitions of `data`, as functions of each network's
    parameters (for the diagnostics):
    - actor: E[alpha * log pi(a|s) - min_k Q_k(s, a)] with a = the squashed sample at frozen
      noise, the critic's weights and alpha frozen;
    - critic: sum_k E[(Q_k(s, a) - y)^2] with the targets y computed once, without gradients,
      from the target critic and the actor (at frozen noise), as in training.
    The critic's parameters are given per network ("q1.hidden.0.weight", ...): the closure
    evaluates each Q network as the MLP it is (`TwinQ.member`, the same function as the stacked
    forward), so KFAC sees every linear layer of each.
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

    members = nets.members or [critic.member(k) for k in range(2)]
    critic_params = {
        f"q{k + 1}.{name}": param
        for k, mlp in enumerate(members)
        for name, param in mlp.named_parameters()
    }

    def critic_outputs(params: dict[str, Tensor]) -> Tensor:
        values = [
            torch.func.functional_call(
                mlp,
                {name: params[f"q{k + 1}.{name}"] for name, _ in mlp.named_parameters()},
                (obs_actions,),
            )[0]
            for k, mlp in enumerate(members)
        ]
        return torch.cat(values, -1)

    def critic_loss(values: Tensor) -> Tensor:
        return (values - targets[:, None]).square().mean(0).sum()

    return {
        "actor": LossClosure(dict(actor.named_parameters()), actor_outputs, actor_loss),
        "critic": LossClosure(critic_params, critic_outputs, critic_loss),
    }


def hidden_features(nets: Nets, data: dict[str, Tensor], n: int) -> dict[str, list[Tensor]]:
    """Each network's hidden features on the first n transitions of `data`."""
    return {
        "actor": nets.actor(data["obs"][:n])[1],
        "critic": nets.critic(data["obs_actions"][:n])[1],
    }


@dataclass
class PendingBoundary:
    """A task boundary whose init measurement waits for post-shift transitions. The init is
    measured on the first transitions of the new task with `nets`, the parameters of the
    moment the task started (so before any update on it), once enough have been stored."""

    step: int
    task_end: int | None
    task_init: int
    end: Probe | None
    nets: Nets
    collected: int = 0


def stream_seed(seed: int, index: int) -> int:
    """The seed of network `index`'s regularizer: its own stream, derived from the run's."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def check_args(args: Args) -> None:
    """One clear line for a configuration that cannot run."""
    for flag, value in (("--policy-lr", args.policy_lr), ("--q-lr", args.q_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be a positive number, got {value}")
    if args.autotune and not (math.isfinite(args.alpha_lr) and args.alpha_lr > 0):
        raise ConfigError(f"--alpha-lr must be a positive number, got {args.alpha_lr}")
    if not args.autotune and not (math.isfinite(args.alpha) and args.alpha >= 0):
        raise ConfigError(f"--alpha must be a non-negative number, got {args.alpha}")
    for flag, value in (
        ("--num-envs", args.num_envs),
        ("--batch-size", args.batch_size),
        ("--buffer-size", args.buffer_size),
        ("--updates-per-step", args.updates_per_step),
        ("--policy-frequency", args.policy_frequency),
        ("--target-network-frequency", args.target_network_frequency),
        ("--log-every", args.log_every),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must be in (0, 1], got {args.tau}")
    if not 0 <= args.gamma <= 1:
        raise ConfigError(f"--gamma must be in [0, 1], got {args.gamma}")
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
    # The twin critic's parameters are stacked (2, ...) and its features list holds both Q
    # networks' layers: two methods would misread that.
    if args.regularizer == "spectral" and args.layer_norm:
        raise ConfigError(
            "--regularizer spectral with --layer-norm: the twin critic's LayerNorm gains are "
            "(2, width) and spectral would take them for weight matrices"
        )
    if args.regularizer == "parseval" and args.parseval.last_layer_only:
        raise ConfigError(
            "--parseval.last-layer-only: the twin critic's features hold both Q networks' "
            "layers (Q1's, then Q2's), so the last of the list is only Q2's last layer"
        )
    if args.diag.joint:
        raise ConfigError(
            "--diag.joint: SAC's actor loss reads the critic, so its losses have no joint form "
            "as outputs of the two networks; SAC measures the actor and critic separately"
        )
    try:
        check_diagnostics_flags(args)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def train(args: Args) -> Path:
    """Run SAC as configured; return the run directory."""
    check_args(args)
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    if checkpoint is None:
        run_name = (
            f"{args.env_id}__{args.exp_name}__{args.regularizer}__{args.seed}__{int(time.time())}"
        )
        run_dir = Path(args.runs_dir) / run_name
    else:
        run_dir = Path(args.resume)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    try:
        regularizers = {"actor": build_regularizer(args), "critic": build_regularizer(args)}
    except ValueError as error:
        raise ConfigError(str(error)) from None
    envs = make_vector_env(
        args.env_id,
        args.num_envs,
        args,
        args.seed,
        args.total_timesteps,
        backend=args.env_backend,
        envpool_threads=args.envpool_threads,
    )
    if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
        raise RuntimeError("SAC's transitions assume same-step autoreset (envs.make_vector_env)")
    space = envs.single_action_space
    if not (isinstance(space, gym.spaces.Box) and np.isfinite([space.low, space.high]).all()):
        raise ConfigError(f"--env-id {args.env_id}: SAC needs a bounded Box action space")
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    action_low, action_high = envs.single_action_space.low, envs.single_action_space.high
    num_envs = args.num_envs

    # Architecture flags, with what the regularizer needs switched on (layernorm-l2: LayerNorm).
    net_options = regularizers["critic"].network_options(layer_norm=args.layer_norm)
    actor = SquashedGaussianActor(
        obs_dim,
        act_dim,
        args.hidden_sizes,
        args.activation,
        args.init,
        action_low,
        action_high,
        **net_options,
    ).to(device)
    critic = TwinQ(
        obs_dim, act_dim, args.hidden_sizes, args.activation, args.init, **net_options
    ).to(device)
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
    # Automatic entropy tuning: log alpha starts at 0 (alpha = 1), as CleanRL's. alpha stays a
    # tensor on the device, so reading it never waits for the device.
    target_entropy = -float(act_dim) if args.target_entropy is None else args.target_entropy
    log_alpha = torch.zeros((), device=device, requires_grad=True)
    alpha_optimizer = adam([log_alpha], lr=args.alpha_lr) if args.autotune else None
    alpha = log_alpha.detach().exp() if args.autotune else torch.tensor(args.alpha, device=device)

    # One regularizer per network, each attached with that network's optimizer and its own
    # random stream: the critic's moments run around critic updates and the actor's around
    # actor updates, so L2's decay never touches the other network's stale gradients and
    # L2-Init's penalty of one network is never part of the other's loss.
    regularizers["actor"].attach({"actor": actor}, actor_optimizer, stream_seed(args.seed, 0))
    regularizers["critic"].attach({"critic": critic}, q_optimizer, stream_seed(args.seed, 1))
    buffer = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)

    global_step, updates, task_start = 0, 0, 0
    if checkpoint is not None:
        actor.load_state_dict(checkpoint["actor"])
        critic.load_state_dict(checkpoint["critic"])
        critic_target.load_state_dict(checkpoint["critic_target"])
        actor_optimizer.load_state_dict(checkpoint["actor_optimizer"])
        q_optimizer.load_state_dict(checkpoint["q_optimizer"])
        with torch.no_grad():
            log_alpha.copy_(checkpoint["log_alpha"])
        if alpha_optimizer is not None:
            alpha_optimizer.load_state_dict(checkpoint["alpha_optimizer"])
            alpha = log_alpha.detach().exp()
        for name, regularizer in regularizers.items():
            regularizer.load_state_dict(checkpoint["regularizer"][name])
        if checkpoint.get("buffer") is not None:
            try:
                buffer.load_state_dict(checkpoint["buffer"])
            except ValueError as error:
                raise ConfigError(str(error)) from None
        set_rng_state(checkpoint["rng"])
        global_step, updates = checkpoint["global_step"], checkpoint["updates"]
        task_start = checkpoint["task_start"]
        envs.set_global_step(global_step)

    shifts = "+".join(args.shift) or "stationary"
    logger = RunLogger(
        run_dir, args, args, group=f"{args.env_id}__{shifts}", tags=[args.regularizer, shifts]
    )
    diagnostics = Diagnostics(args, logger, args.seed)
    diagnostics.attach({"actor": actor, "critic": critic})
    if checkpoint is not None and "diagnostics" in checkpoint:
        diagnostics.load_state_dict(checkpoint["diagnostics"])
    live = Nets(actor, critic, critic_target, alpha)

    def snapshot() -> Nets:
        return live.snapshot(actor_optimizer, q_optimizer)

    # Transitions per boundary measurement: the last ones of a task ("end") and the first ones
    # of the next ("init"), as PPO's last and first rollouts.
    boundary_samples = min(args.diag.batch_size, args.buffer_size)

    def probe(nets: Nets, rows: Tensor, step: int, **note: float) -> Probe:
        """The diagnostics' view of a block of transitions (copies) with the given networks.
        The noise of the sampled actions comes from a generator of its own, so measuring never
        draws from the run's random streams."""
        data = buffer.unpack(rows.clone())
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn((2, len(rows), act_dim), generator=generator).to(device)
        return Probe(
            closures=functools.partial(loss_closures, nets, data, noise, args.gamma),
            features=functools.partial(hidden_features, nets, data),
            size=len(rows),
            note=note,
            nets={"actor": nets.actor, "critic": nets.critic},
            optimizers=nets.optimizers,
        )

    def task_probe(nets: Nets, step: int) -> Probe | None:
        """The last transitions of the task that ends at `step` (up to boundary_samples; all
        stored already), or None when the buffer holds too few of them."""
        n = min(boundary_samples, step - task_start, buffer.size)
        if n < max(1, args.diag.min_init_samples):
            return None
        return probe(nets, buffer.recent(n), step)

    pending: PendingBoundary | None = None

    def measure_pending() -> None:
        """Measure the pending boundary: its end probe, and its init on the post-shift
        transitions stored so far (when there are enough)."""
        nonlocal pending
        if pending is None:
            return
        probes = {"end": pending.end} if pending.end is not None else {}
        n = min(pending.collected, boundary_samples, buffer.size)
        if n >= max(1, args.diag.min_init_samples):
            probes["init"] = probe(pending.nets, buffer.recent(n), pending.step, samples=n)
        diagnostics.boundary(
            pending.step,
            probes,
            pending.task_end,
            pending.task_init if "init" in probes else None,
        )
        pending = None

    def save_checkpoint() -> Path:
        return logger.checkpoint(
            global_step,
            {
                "args": args,
                "global_step": global_step,
                "task": envs.task,
                "task_start": task_start,
                "updates": updates,
                "actor": actor.state_dict(),
                "critic": critic.state_dict(),
                "critic_target": critic_target.state_dict(),
                "log_alpha": log_alpha.detach().cpu(),
                "actor_optimizer": actor_optimizer.state_dict(),
                "q_optimizer": q_optimizer.state_dict(),
                "alpha_optimizer": alpha_optimizer.state_dict() if alpha_optimizer else None,
                "regularizer": {name: reg.state_dict() for name, reg in regularizers.items()},
                "diagnostics": diagnostics.state_dict(),
                "rng": rng_state(),
                "buffer": buffer.state_dict() if args.save_buffer else None,
            },
        )

    def check_finite(losses: Tensor) -> None:
        """Stop with a clear error once a loss or a weight is not finite (checked at log points
        and before checkpoints, not per update: a NaN spreads to every weight and stays)."""
        if not bool(torch.isfinite(losses).all()):
            raise FloatingPointError(f"a loss was not finite ({losses.tolist()})")
        for name, net in (("actor", actor), ("critic", critic)):
            if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
                raise FloatingPointError(f"the {name}'s weights became non-finite")

    # Episodes in flight at a checkpoint restart on resume; the task and the buffer carry on.
    raw_obs, _ = envs.reset(seed=args.seed + global_step)
    for event in envs.shift_events:
        logger.event(event["step"], event["event"], task=event["task"], params=event["params"])
    if checkpoint is not None and checkpoint.get("buffer") is None and buffer.size == 0:
        logger.event(
            global_step,
            "warning",
            message="resumed without a saved replay buffer (--save-buffer): updates wait until "
            "it holds --learning-starts transitions",
        )
    obs = torch.from_numpy(raw_obs.astype(np.float32)).to(device)
    # Each step's [reward, terminated, final obs, next obs] rows, through pinned memory on CUDA.
    to_device = HostToDevice((num_envs, 2 + 2 * obs_dim), device)
    low = torch.as_tensor(action_low, dtype=torch.float32, device=device)
    width = torch.as_tensor(action_high - action_low, dtype=torch.float32, device=device)
    critic_params, target_params = list(critic.parameters()), list(critic_target.parameters())
    episode_return = np.zeros(num_envs)
    episode_length = np.zeros(num_envs, dtype=np.int64)
    recent_returns: list[float] = []
    last: dict[str, Tensor] = {}  # the latest losses, read (one device sync) at log points
    regularizer_metrics: dict[str, float] = {}
    next_checkpoint = (
        (global_step // args.checkpoint_every + 1) * args.checkpoint_every
        if args.checkpoint_every
        else None
    )
    next_log = (global_step // args.log_every + 1) * args.log_every
    if diagnostics.enabled and global_step == 0:
        pending = PendingBoundary(0, None, envs.task, None, snapshot())
    bar = progress_bar(args.total_timesteps, global_step, f"sac {args.env_id}")
    start_time, start_step = time.perf_counter(), global_step
    interval_time, interval_step, interval_updates = start_time, global_step, updates

    try:
        while global_step + num_envs <= args.total_timesteps:
            # --- Act: uniformly random before learning starts, then the policy's sample.
            if global_step < args.learning_starts:
                action = low + width * torch.rand((num_envs, act_dim), device=device)
            else:
                with torch.inference_mode():
                    noise = torch.randn((num_envs, act_dim), device=device)
                    action, _ = squashed_gaussian(
                        actor(obs)[0], noise, actor.action_scale, actor.action_bias
                    )
            raw_next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            global_step += num_envs

            # --- A shift: the transitions of this step already belong to the new task.
            if "shift" in infos:
                shift = infos["shift"]
                logger.event(shift["step"], "shift", task=shift["task"], params=shift["params"])
                end_probe = None
                if diagnostics.enabled:
                    measure_pending()  # shifts closer than boundary_samples: init on fewer
                    end_probe = task_probe(snapshot(), shift["step"])
                metrics = {}
                for regularizer in regularizers.values():
                    metrics.update(
                        {f"regularizer/{k}": v for k, v in regularizer.on_shift().items()}
                    )
                logger.scalars(shift["step"], {"charts/task": shift["task"], **metrics})
                if args.buffer_at_shift == "flush":
                    buffer.clear()
                if diagnostics.enabled:
                    pending = PendingBoundary(
                        shift["step"], shift["task"] - 1, shift["task"], end_probe, snapshot()
                    )
                task_start = shift["step"]

            # --- Store: a finished episode's transition ends at its real final observation
            # (same-step autoreset put the next episode's first one in raw_next_obs).
            done = terminated | truncated
            outcome = np.empty((num_envs, 2 + 2 * obs_dim), np.float32)
            outcome[:, 0] = reward
            outcome[:, 1] = terminated
            outcome[:, 2 : 2 + obs_dim] = raw_next_obs
            outcome[:, 2 + obs_dim :] = raw_next_obs
            for i in np.flatnonzero(done):
                outcome[i, 2 : 2 + obs_dim] = infos["final_obs"][i]
            outcome_t = to_device(outcome)  # the one host-to-device copy
            buffer.add(obs, action, outcome_t[:, : 2 + obs_dim])
            obs = outcome_t[:, 2 + obs_dim :]
            if pending is not None:
                pending.collected += num_envs
                if pending.collected >= boundary_samples:
                    measure_pending()

            episode_return += reward
            episode_length += 1
            for i in np.flatnonzero(done):
                recent_returns = [*recent_returns[-9:], float(episode_return[i])]
                logger.scalars(
                    global_step,
                    {
                        "charts/episodic_return": episode_return[i],
                        "charts/episodic_length": episode_length[i],
                    },
                )
                episode_return[i], episode_length[i] = 0.0, 0

            # --- Updates, once the buffer holds --learning-starts transitions.
            if buffer.size >= max(1, args.learning_starts):
                for _ in range(args.updates_per_step):
                    updates += 1
                    rows = buffer.sample(args.batch_size)
                    batch = buffer.unpack(rows)

                    # Critic: twin TD regression on the soft target (no gradient through it).
                    with torch.no_grad():
                        next_obs = batch["next_obs"]
                        next_out, _ = actor(next_obs)
                        next_action, next_log_pi = squashed_gaussian(
                            next_out,
                            torch.randn((len(next_obs), act_dim), device=device),
                            actor.action_scale,
                            actor.action_bias,
                        )
                        next_q, _ = critic_target(torch.cat([next_obs, next_action], 1))
                        targets = soft_td_target(
                            batch["rewards"],
                            batch["terminated"],
                            next_q,
                            next_log_pi,
                            alpha,
                            args.gamma,
                        )
                    q_values, critic_features = critic(batch["obs_actions"])
                    qf_losses = (q_values - targets).square().mean(1)
                    critic_penalty = regularizers["critic"].penalty({"critic": critic_features})
                    qf_loss = qf_losses.sum() + critic_penalty
                    q_optimizer.zero_grad(set_to_none=True)
                    qf_loss.backward()
                    regularizers["critic"].before_step()
                    q_optimizer.step()
                    # The ER step (and any method acting after updates) sees this update's batch.
                    critic_metrics = regularizers["critic"].after_update(
                        lambda batch=batch: {"critic": critic(batch["obs_actions"])[1]},
                        pass_end=True,
                    )
                    last.update(
                        qf_losses=qf_losses.detach(),
                        q_values=q_values.detach().mean(1),
                        critic_penalty=critic_penalty.detach(),
                    )
                    regularizer_metrics.update(critic_metrics)

                    # Actor and alpha: delayed, policy_frequency updates at once (CleanRL).
                    if updates % args.policy_frequency == 0:
                        for _ in range(args.policy_frequency):
                            out, actor_features = actor(batch["obs"])
                            pi, log_pi = squashed_gaussian(
                                out,
                                torch.randn((args.batch_size, act_dim), device=device),
                                actor.action_scale,
                                actor.action_bias,
                            )
                            q_pi = critic.frozen(torch.cat([batch["obs"], pi], 1))
                            actor_penalty = regularizers["actor"].penalty({"actor": actor_features})
                            actor_loss = actor_objective(log_pi, q_pi, alpha)
                            actor_optimizer.zero_grad(set_to_none=True)
                            (actor_loss + actor_penalty).backward()
                            regularizers["actor"].before_step()
                            actor_optimizer.step()
                            actor_metrics = regularizers["actor"].after_update(
                                lambda batch=batch: {"actor": actor(batch["obs"])[1]},
                                pass_end=True,
                            )
                            if alpha_optimizer is not None:
                                alpha_loss = alpha_objective(log_alpha, log_pi, target_entropy)
                                alpha_optimizer.zero_grad(set_to_none=True)
                                alpha_loss.backward()
                                alpha_optimizer.step()
                                alpha = log_alpha.detach().exp()
                                live.alpha = alpha
                                last["alpha_loss"] = alpha_loss.detach()
                            last.update(
                                actor_loss=actor_loss.detach(),
                                entropy=-log_pi.detach().mean(),
                                actor_penalty=actor_penalty.detach(),
                            )
                            regularizer_metrics.update(actor_metrics)

                    if updates % args.target_network_frequency == 0:
                        polyak_update(target_params, critic_params, args.tau)

                    if diagnostics.due(updates):
                        diagnostics.periodic(global_step, probe(live, rows, updates))

            # --- Logging, divergence check, checkpoints.
            bar.update(num_envs)
            if global_step >= next_log:
                next_log = (global_step // args.log_every + 1) * args.log_every
                now = time.perf_counter()
                scalars = {
                    "charts/SPS": int((global_step - start_step) / (now - start_time)),
                    "charts/interval_SPS": (global_step - interval_step) / (now - interval_time),
                    "charts/updates_per_second": (updates - interval_updates)
                    / (now - interval_time),
                    "charts/task": envs.task,
                    "charts/buffer_size": buffer.size,
                    "charts/updates": updates,
                }
                interval_time, interval_step, interval_updates = now, global_step, updates
                if "actor_loss" in last:
                    values = torch.stack(
                        [
                            *last["qf_losses"],
                            *last["q_values"],
                            last["actor_loss"],
                            last["entropy"],
                            alpha,
                            last.get("alpha_loss", torch.zeros((), device=device)),
                            last["critic_penalty"],
                            last["actor_penalty"],
                        ]
                    )
                    check_finite(values)
                    (
                        qf1_loss,
                        qf2_loss,
                        qf1_value,
                        qf2_value,
                        actor_value,
                        entropy,
                        alpha_value,
                        alpha_loss_value,
                        critic_penalty_value,
                        actor_penalty_value,
                    ) = values.tolist()
                    scalars.update(
                        {
                            "losses/qf1_values": qf1_value,
                            "losses/qf2_values": qf2_value,
                            "losses/qf1_loss": qf1_loss,
                            "losses/qf2_loss": qf2_loss,
                            "losses/qf_loss": (qf1_loss + qf2_loss) / 2,
                            "losses/actor_loss": actor_value,
                            "losses/entropy": entropy,
                            "losses/alpha": alpha_value,
                            "regularizer/critic_penalty": critic_penalty_value,
                            "regularizer/actor_penalty": actor_penalty_value,
                        }
                    )
                    if alpha_optimizer is not None:
                        scalars["losses/alpha_loss"] = alpha_loss_value
                    scalars.update({f"regularizer/{k}": v for k, v in regularizer_metrics.items()})
                    regularizer_metrics.clear()
                logger.scalars(global_step, scalars)
                bar.set_postfix(
                    sps=scalars["charts/SPS"],
                    task=envs.task,
                    ret=f"{np.mean(recent_returns):.0f}" if recent_returns else "-",
                )
            if next_checkpoint is not None and global_step >= next_checkpoint:
                if "qf_losses" in last:
                    check_finite(torch.cat([last["qf_losses"], last["q_values"]]))
                save_checkpoint()
                next_checkpoint = (global_step // args.checkpoint_every + 1) * args.checkpoint_every

        if "qf_losses" in last:
            check_finite(torch.cat([last["qf_losses"], last["q_values"]]))
        if diagnostics.enabled:
            measure_pending()
            end_probe = task_probe(snapshot(), global_step)
            if end_probe is not None:
                diagnostics.boundary(global_step, {"end": end_probe}, envs.task, None)
        save_checkpoint()
        diagnostics.finish(global_step)
    except KeyboardInterrupt:
        # A killed run (Ctrl-C, SIGTERM) keeps its logs and leaves a checkpoint to --resume from.
        logger.event(global_step, "interrupted", checkpoint=str(save_checkpoint()))
        raise
    except FloatingPointError as error:
        logger.event(global_step, "diverged", message=str(error))
        raise ConfigError(
            f"training diverged at step {global_step}: {error}; logs are in {run_dir} "
            "(resume from its last good checkpoint with a smaller learning rate or regularizer strength)"
        ) from None
    finally:
        bar.close()
        envs.close()
        logger.close()
    return run_dir


def preset_args(name: str) -> Args:
    """The defaults of a named preset (the other flags are applied on top of these)."""
    return dataclasses.replace(Args(), preset=name, **PRESETS[name])
