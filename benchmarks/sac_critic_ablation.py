"""Ablation: does SAC's stacked twin Q critic earn its complexity? Updates/s of both layouts.

What it measures: the work of one SAC gradient update, as `agents/sac.py`'s train loop does it,
with its twin Q critic in two layouts that compute the same function:
- stacked: the two Q networks as one, each layer's weights stacked on a leading axis of 2 and
  evaluated with one `torch.baddbmm` per layer for both (sac.py's former `TwinQ` / `twin_q`,
  written out here: this ablation is why sac.py dropped it);
- separate (CleanRL's layout, and sac.py's `TwinCritic` now): two MLPs qf1 and qf2 (the forward
  of `agents.networks.MLP`, written out here too), each called on the same input.
Both start from identical parameters (the two MLPs' weights copied into the stacked tensors),
and a sanity check first asserts, on one batch, that they give the same Q values, the same
parameter gradients and the same action gradient through the detached-weight critic (to
float32 rounding).

One update, as sac.py's: sample 256 rows from a preallocated replay tensor on the CPU (one
gather); under no_grad the actor on next_obs, a squashed Gaussian sample, the target critic and
the soft TD target; the critic's forward, backward and fused Adam step; every 2nd update, 2
actor updates (actor forward, the critic with detached weights so only the action gets
gradients, backward, fused Adam) each followed by the alpha update; the Polyak update of the
target critic with `torch._foreach_lerp_`. Not included: the regularizers' moments (a zero
penalty without one) and the logging detaches. Networks: 256x256 ReLU actor (output 2 * act_dim:
mean and log-std bounded to [-5, 2]) and Q networks, torch-default init, optionally with
LayerNorm in all of them (the stacked critic with per-network gains and shifts, as sac.py's
`TwinLayerNorm`); one torch thread; the shapes of Hopper-v5 (obs 11, act 3) and Ant-v5 (obs 105,
act 8), on random replay data (the arithmetic does not depend on the values).

Timing: after a warm-up, the two variants alternate (the first one switching every round) over
--rounds rounds of --round-seconds each; updates/s is reported as median (min-max) over rounds,
and stacked / separate as the median (min-max) of the per-round ratios, so that machine noise
falls on both alike. With --critic-share (default), the critic's work alone (target critic,
critic forward/backward/Adam, the two detached-weight evaluations and their backward to the
action, Polyak) is timed the same way, and reported as a share of the update and, with
--env-step (default), of a learning-phase env step (acting + gymnasium's env.step + one update).

    python benchmarks/sac_critic_ablation.py                   # ~3 minutes on 2 cores
    python benchmarks/sac_critic_ablation.py --shapes Hopper-v5 --layer-norm False --rounds 3
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
LOG_2PI = math.log(2 * math.pi)
SHAPES: dict[str, tuple[int, int]] = {"Hopper-v5": (11, 3), "Ant-v5": (105, 8)}
"""(obs_dim, act_dim) of each env; both have actions in [-1, 1]"""
VARIANTS = ("stacked", "separate")


@dataclass
class Args:
    shapes: tuple[str, ...] = ("Hopper-v5", "Ant-v5")
    """env shapes to measure (keys of SHAPES), each a pair of rows per --layer-norm value"""
    layer_norm: tuple[bool, ...] = (False, True)
    """measure without and/or with LayerNorm in the actor and the Q networks"""
    rounds: int = 5
    """timed rounds per variant, alternating between the variants"""
    round_seconds: float = 2.5
    """seconds of updates per round and variant"""
    warmup_seconds: float = 1.0
    """seconds of untimed updates per variant before the rounds"""
    critic_share: bool = True
    """also time the critic's work alone (fewer, shorter rounds) and report its share"""
    critic_rounds: int = 3
    """timed rounds per variant of the critic's work alone"""
    critic_round_seconds: float = 1.5
    """seconds per round and variant of the critic's work alone"""
    env_step: bool = True
    """also time acting + gymnasium's env.step, to give the critic's share of an env step"""
    env_step_seconds: float = 1.5
    """seconds of acting + env.step per shape"""
    batch_size: int = 256
    """transitions sampled per update"""
    buffer_rows: int = 100_000
    """filled rows of the preallocated replay tensor the batches are gathered from"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden widths of the actor and of each Q network"""
    policy_frequency: int = 2
    """every this many critic updates, this many actor (and alpha) updates, as sac.py"""
    gamma: float = 0.99
    """the discount of the soft TD target"""
    tau: float = 0.005
    """the Polyak coefficient of the target critic"""
    torch_threads: int = 1
    """torch CPU threads (sac.py's default: 1)"""
    seed: int = 1
    """seed of the networks and of the replay data"""


# --- Networks ---------------------------------------------------------------------------------


def mlp_forward(
    x: Tensor, linears: list[tuple[Tensor, Tensor]], norms: list[tuple[Tensor, Tensor]] | None
) -> tuple[Tensor, list[Tensor]]:
    """agents.networks.MLP's forward with ReLU: linear, (LayerNorm,) activation per hidden
    layer, then the output layer; returns (output, hidden features)."""
    features = []
    for i, (weight, bias) in enumerate(linears[:-1]):
        x = F.linear(x, weight, bias)
        if norms is not None:
            gain, shift = norms[i]
            x = F.layer_norm(x, x.shape[-1:], gain, shift, 1e-5)
        x = F.relu(x)
        features.append(x)
    weight, bias = linears[-1]
    return F.linear(x, weight, bias), features


class MLP(nn.Module):
    """agents.networks.MLP with torch-default init: nn.Linear layers, optional LayerNorm."""

    def __init__(self, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, layer_norm: bool):
        super().__init__()
        sizes = (in_dim, *hidden_sizes)
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(b) for b in hidden_sizes) if layer_norm else None
        self.out = nn.Linear(sizes[-1], out_dim)

    def tensors(self, detach: bool = False) -> tuple[list, list | None]:
        def take(t: Tensor) -> Tensor:
            return t.detach() if detach else t

        linears = [(take(m.weight), take(m.bias)) for m in (*self.hidden, self.out)]
        norms = [(take(n.weight), take(n.bias)) for n in self.norms] if self.norms else None
        return linears, norms

    def forward(self, x: Tensor, detach: bool = False) -> tuple[Tensor, list[Tensor]]:
        return mlp_forward(x, *self.tensors(detach))


class SquashedGaussianActor(nn.Module):
    """sac.py's actor: one MLP giving [mean, log-std], the log-std bounded by a tanh."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], layer_norm: bool):
        super().__init__()
        self.act_dim = act_dim
        self.trunk = MLP(obs_dim, hidden_sizes, 2 * act_dim, layer_norm)
        self.register_buffer("action_scale", torch.ones(act_dim))  # actions in [-1, 1]
        self.register_buffer("action_bias", torch.zeros(act_dim))

    def forward(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        out, features = self.trunk(obs)
        mean, raw_log_std = out[..., : self.act_dim], out[..., self.act_dim :]
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1)
        return torch.cat([mean, log_std], -1), features


class SeparateQ(nn.Module):
    """CleanRL's layout: two MLPs qf1, qf2 on the same input [obs, action]. Q values are the
    pair (qf1 (batch,), qf2 (batch,)); the loss is CleanRL's mse(qf1) + mse(qf2)."""

    def __init__(self, in_dim: int, hidden_sizes: tuple[int, ...], layer_norm: bool):
        super().__init__()
        self.qf1 = MLP(in_dim, hidden_sizes, 1, layer_norm)
        self.qf2 = MLP(in_dim, hidden_sizes, 1, layer_norm)

    def forward(self, x: Tensor, detach: bool = False) -> tuple[tuple[Tensor, Tensor], list]:
        q1, features1 = self.qf1(x, detach)
        q2, features2 = self.qf2(x, detach)
        return (q1.squeeze(-1), q2.squeeze(-1)), features1 + features2

    def frozen(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Q values with the weights detached: gradients reach the input only."""
        return self(x, detach=True)[0]

    @staticmethod
    def loss(q: tuple[Tensor, Tensor], targets: Tensor) -> Tensor:
        return (q[0] - targets).square().mean() + (q[1] - targets).square().mean()


def twin_q(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    norms: list[tuple[Tensor, Tensor]] | None,
) -> tuple[Tensor, list[Tensor]]:
    """sac.py's twin_q with ReLU: both Q networks on x (batch, in) as one batched GEMM per
    layer over a stride-0 view of x; Q values (2, batch) and the hidden features."""
    z = x.expand(2, *x.shape)
    hidden = []
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        if layer > 0:
            if norms is not None:
                gain, shift = norms[layer - 1]
                z = F.layer_norm(z, z.shape[-1:]) * gain.unsqueeze(1) + shift.unsqueeze(1)
            z = F.relu(z)
            hidden.append(z)
        z = torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2))
    return z.squeeze(-1), [h[k] for k in range(2) for h in hidden]


class StackedQ(nn.Module):
    """sac.py's TwinQ: layer l's weights (2, out, in) and biases (2, out), network k in row k;
    with LayerNorm, a gain and a shift (2, width) per hidden layer (sac.py's TwinLayerNorm)."""

    def __init__(self, separate: SeparateQ):
        super().__init__()
        members = (separate.qf1, separate.qf2)
        linears = [[*m.hidden, m.out] for m in members]
        with torch.no_grad():
            self.weights = nn.ParameterList(
                nn.Parameter(torch.stack([a.weight, b.weight]))
                for a, b in zip(*linears, strict=True)
            )
            self.biases = nn.ParameterList(
                nn.Parameter(torch.stack([a.bias, b.bias])) for a, b in zip(*linears, strict=True)
            )
            self.gains = self.shifts = None
            if separate.qf1.norms is not None:
                pairs = list(zip(separate.qf1.norms, separate.qf2.norms, strict=True))
                self.gains = nn.ParameterList(
                    nn.Parameter(torch.stack([a.weight, b.weight])) for a, b in pairs
                )
                self.shifts = nn.ParameterList(
                    nn.Parameter(torch.stack([a.bias, b.bias])) for a, b in pairs
                )

    def pairs(self, separate: SeparateQ) -> list[tuple[Tensor, int, Tensor]]:
        """(stacked parameter, row k, the separate network's parameter) for every parameter."""
        out = []
        for k, member in enumerate((separate.qf1, separate.qf2)):
            for stacked, layer in zip(self.weights, [*member.hidden, member.out], strict=True):
                out.append((stacked, k, layer.weight))
            for stacked, layer in zip(self.biases, [*member.hidden, member.out], strict=True):
                out.append((stacked, k, layer.bias))
            for gain, shift, norm in zip(
                self.gains or (), self.shifts or (), member.norms or (), strict=True
            ):
                out += [(gain, k, norm.weight), (shift, k, norm.bias)]
        return out

    def forward(self, x: Tensor, detach: bool = False) -> tuple[Tensor, list[Tensor]]:
        def take(t: Tensor) -> Tensor:
            return t.detach() if detach else t

        weights, biases = [take(w) for w in self.weights], [take(b) for b in self.biases]
        norms = (
            [(take(g), take(s)) for g, s in zip(self.gains, self.shifts, strict=True)]
            if self.gains is not None
            else None
        )
        return twin_q(x, weights, biases, norms)

    def frozen(self, x: Tensor) -> Tensor:
        """Q values with the weights detached: gradients reach the input only."""
        return self(x, detach=True)[0]

    @staticmethod
    def loss(q: Tensor, targets: Tensor) -> Tensor:
        return (q - targets).square().mean(1).sum()  # sac.py: qf_losses.sum()


# --- SAC's losses (as agents/sac.py's) ---------------------------------------------------------


def squashed_gaussian(
    out: Tensor, noise: Tensor, scale: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """a = tanh(mean + std * noise) * scale + bias and log pi(a|s), as sac.py's."""
    mean, log_std = out.chunk(2, dim=-1)
    squashed = torch.tanh(mean + log_std.exp() * noise)
    action = squashed * scale + bias
    log_prob = -0.5 * noise.square() - log_std - 0.5 * LOG_2PI
    log_prob = log_prob - torch.log(scale * (1 - squashed.square()) + 1e-6)
    return action, log_prob.sum(-1)


def soft_td_target(rewards, terminated, next_q, next_log_pi, alpha, gamma: float) -> Tensor:
    soft_value = torch.minimum(next_q[0], next_q[1]) - alpha * next_log_pi
    return rewards + gamma * (1 - terminated) * soft_value


def actor_objective(log_pi: Tensor, q_pi, alpha) -> Tensor:
    return (alpha * log_pi - torch.minimum(q_pi[0], q_pi[1])).mean()


def alpha_objective(log_alpha: Tensor, log_pi: Tensor, target_entropy: float) -> Tensor:
    return (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


# --- One SAC update ---------------------------------------------------------------------------


class Sac:
    """One variant's SAC state (its own copies of the actor and critic, target, Adams, alpha)
    and its update, the sequence of sac.py's train loop."""

    def __init__(self, actor, critic, storage: Tensor, obs_dim: int, act_dim: int, args: Args):
        self.actor, self.critic = copy.deepcopy(actor), copy.deepcopy(critic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4, fused=True)
        self.q_optimizer = torch.optim.Adam(self.critic.parameters(), lr=1e-3, fused=True)
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=1e-3, fused=True)
        self.alpha = self.log_alpha.detach().exp()
        self.target_entropy = -float(act_dim)
        self.critic_params = list(self.critic.parameters())
        self.target_params = list(self.critic_target.parameters())
        self.storage, self.obs_dim, self.act_dim, self.args = storage, obs_dim, act_dim, args
        self.updates = 0
        self.fixed: dict[str, Tensor] | None = None

    def sample(self) -> dict[str, Tensor]:
        o, a = self.obs_dim, self.act_dim
        rows = self.storage[torch.randint(len(self.storage), (self.args.batch_size,))]
        return {
            "obs": rows[:, :o],
            "obs_actions": rows[:, : o + a],
            "rewards": rows[:, o + a],
            "terminated": rows[:, o + a + 1],
            "next_obs": rows[:, o + a + 2 :],
        }

    def update(self) -> None:
        args, actor, critic = self.args, self.actor, self.critic
        scale, bias = actor.action_scale, actor.action_bias
        self.updates += 1
        batch = self.sample()
        with torch.no_grad():
            next_obs = batch["next_obs"]
            next_action, next_log_pi = squashed_gaussian(
                actor(next_obs)[0], torch.randn((len(next_obs), self.act_dim)), scale, bias
            )
            next_q, _ = self.critic_target(torch.cat([next_obs, next_action], 1))
            targets = soft_td_target(
                batch["rewards"], batch["terminated"], next_q, next_log_pi, self.alpha, args.gamma
            )
        q_values, _ = critic(batch["obs_actions"])
        qf_loss = critic.loss(q_values, targets)
        self.q_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        self.q_optimizer.step()

        if self.updates % args.policy_frequency == 0:
            for _ in range(args.policy_frequency):
                out, _ = actor(batch["obs"])
                pi, log_pi = squashed_gaussian(
                    out, torch.randn((args.batch_size, self.act_dim)), scale, bias
                )
                q_pi = critic.frozen(torch.cat([batch["obs"], pi], 1))
                actor_loss = actor_objective(log_pi, q_pi, self.alpha)
                self.actor_optimizer.zero_grad(set_to_none=True)
                actor_loss.backward()
                self.actor_optimizer.step()
                alpha_loss = alpha_objective(self.log_alpha, log_pi, self.target_entropy)
                self.alpha_optimizer.zero_grad(set_to_none=True)
                alpha_loss.backward()
                self.alpha_optimizer.step()
                self.alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, args.tau)

    def critic_update(self) -> None:
        """The critic's part of `update` alone, on one fixed batch with fixed actions and
        log-probabilities (no gather, no actor): the target critic and TD target, the critic's
        forward/backward/Adam, every policy_frequency-th update policy_frequency evaluations
        with detached weights and their backward to the action, Polyak."""
        args, critic = self.args, self.critic
        if self.fixed is None:
            batch = self.sample()
            n = args.batch_size
            self.fixed = {
                **batch,
                "next_obs_actions": torch.cat([batch["next_obs"], torch.rand(n, self.act_dim)], 1),
                "log_pi": torch.randn(n),
                "pi": torch.rand(n, self.act_dim) * 2 - 1,
            }
        fixed = self.fixed
        self.updates += 1
        with torch.no_grad():
            next_q, _ = self.critic_target(fixed["next_obs_actions"])
            targets = soft_td_target(
                fixed["rewards"],
                fixed["terminated"],
                next_q,
                fixed["log_pi"],
                self.alpha,
                args.gamma,
            )
        q_values, _ = critic(fixed["obs_actions"])
        qf_loss = critic.loss(q_values, targets)
        self.q_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        self.q_optimizer.step()
        if self.updates % args.policy_frequency == 0:
            for _ in range(args.policy_frequency):
                pi = fixed["pi"].detach().requires_grad_()
                q_pi = critic.frozen(torch.cat([fixed["obs"], pi], 1))
                actor_objective(fixed["log_pi"], q_pi, self.alpha).backward()
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, args.tau)

    def finite(self) -> bool:
        params = [*self.critic_params, *self.actor.parameters(), self.log_alpha]
        return all(bool(torch.isfinite(p).all()) for p in params)


# --- Sanity check, timing ---------------------------------------------------------------------


def max_rel_diff(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def sanity_check(separate: SeparateQ, stacked: StackedQ, batch: dict[str, Tensor]) -> float:
    """Assert that both critics give the same Q values, parameter gradients and (with detached
    weights) action gradients on one batch; returns the largest relative difference seen."""
    x = batch["obs_actions"]
    targets = batch["rewards"] + torch.randn_like(batch["rewards"])
    diffs = {}
    q_sep, _ = separate(x)
    q_st, _ = stacked(x)
    diffs["Q values"] = max_rel_diff(q_st, torch.stack(q_sep))
    separate.loss(q_sep, targets).backward()
    stacked.loss(q_st, targets).backward()
    grads = [max_rel_diff(st.grad[k], sep.grad) for st, k, sep in stacked.pairs(separate)]
    diffs["parameter gradients"] = max(grads)
    for net in (separate, stacked):
        net.zero_grad(set_to_none=True)
    action = torch.rand(len(x), x.shape[1] - batch["obs"].shape[1]) * 2 - 1
    action_grads = []
    for net in (separate, stacked):
        pi = action.clone().requires_grad_()
        actor_objective(
            torch.zeros(len(x)), net.frozen(torch.cat([batch["obs"], pi], 1)), 0.2
        ).backward()
        assert all(p.grad is None for p in net.parameters()), "a frozen critic got gradients"
        action_grads.append(pi.grad)
    diffs["action gradients (detached weights)"] = max_rel_diff(*action_grads[::-1])
    worst = max(diffs.values())
    assert worst < 1e-4, f"the two critics differ beyond float32 rounding: {diffs}"
    return worst


def rate(step: Callable[[], None], seconds: float) -> float:
    """Calls of `step` per second over at least `seconds` (pairs of calls: a critic-only update
    and one with actor updates, with policy_frequency 2)."""
    count, start = 0, time.perf_counter()
    while True:
        step()
        step()
        count += 2
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def alternate(steps: dict[str, Callable[[], None]], rounds: int, seconds: float, warmup: float):
    """Rates per variant over alternating rounds (the first variant switches every round)."""
    for step in steps.values():
        rate(step, warmup)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(rate(steps[name], seconds))
    return rates


def env_step_seconds(env_id: str, actor: SquashedGaussianActor, seconds: float) -> float | None:
    """Seconds per learning-phase env step outside the update: acting (the actor's sample
    under inference mode, one copy to numpy) and gymnasium's env.step (autoreset included)."""
    try:
        import gymnasium as gym

        env = gym.make(env_id)
    except Exception as error:  # no gymnasium / MuJoCo: the env-step share is left out
        print(f"env-step timing skipped ({env_id}): {error}", file=sys.stderr)
        return None
    obs, _ = env.reset(seed=0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.inference_mode():
            out, _ = actor(torch.from_numpy(obs.astype(np.float32)).unsqueeze(0))
            noise = torch.randn((1, actor.act_dim))
            action, _ = squashed_gaussian(out, noise, actor.action_scale, actor.action_bias)
        obs, _reward, terminated, truncated, _ = env.step(action[0].numpy())
        if terminated or truncated:
            obs, _ = env.reset()
        count += 1
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / count


def median_range(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(args: Args) -> None:
    torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    rows, notes = [], []
    for shape in args.shapes:
        obs_dim, act_dim = SHAPES[shape]
        for layer_norm in args.layer_norm:
            label = f"{shape}, {'LayerNorm' if layer_norm else 'no LayerNorm'}"
            torch.manual_seed(args.seed)
            width = 2 * obs_dim + act_dim + 2  # sac.py's row: [obs | action | r | term | next_obs]
            storage = torch.randn(args.buffer_rows, width)
            storage[:, obs_dim : obs_dim + act_dim].uniform_(-1, 1)
            storage[:, obs_dim + act_dim + 1] = (torch.rand(args.buffer_rows) < 0.01).float()
            actor = SquashedGaussianActor(obs_dim, act_dim, args.hidden_sizes, layer_norm)
            separate = SeparateQ(obs_dim + act_dim, args.hidden_sizes, layer_norm)
            if layer_norm:  # distinct per-network gains and shifts, so the check sees them
                with torch.no_grad():
                    for norm in [*separate.qf1.norms, *separate.qf2.norms]:
                        norm.weight.add_(0.1 * torch.randn_like(norm.weight))
                        norm.bias.add_(0.1 * torch.randn_like(norm.bias))
            stacked = StackedQ(separate)
            sacs = {
                "stacked": Sac(actor, stacked, storage, obs_dim, act_dim, args),
                "separate": Sac(actor, separate, storage, obs_dim, act_dim, args),
            }
            worst = sanity_check(separate, stacked, sacs["stacked"].sample())
            print(
                f"{label}: sanity check passed (Q values, parameter and action gradients agree; "
                f"largest relative difference {worst:.1e})",
                file=sys.stderr,
                flush=True,
            )
            notes.append(f"sanity check {label}: passed, largest relative difference {worst:.1e}")

            rates = alternate(
                {name: sac.update for name, sac in sacs.items()},
                args.rounds,
                args.round_seconds,
                args.warmup_seconds,
            )
            ratios = [s / p for s, p in zip(rates["stacked"], rates["separate"], strict=True)]
            for name in VARIANTS:
                ratio = median_range(ratios, 2) if name == "stacked" else "1.00"
                rows.append(
                    f"| {shape} | {'yes' if layer_norm else 'no'} | {name} "
                    f"| {median_range(rates[name], 0)} | {ratio} |"
                )
            print(
                f"{label}: updates/s "
                + ", ".join(f"{n} {[round(r) for r in rates[n]]}" for n in VARIANTS),
                file=sys.stderr,
                flush=True,
            )
            if not all(sac.finite() for sac in sacs.values()):
                notes.append(f"WARNING {label}: non-finite parameters after the timed updates")

            if not args.critic_share:
                continue
            critic_rates = alternate(
                {name: sac.critic_update for name, sac in sacs.items()},
                args.critic_rounds,
                args.critic_round_seconds,
                args.warmup_seconds / 2,
            )
            step_s = None
            if args.env_step:
                step_s = env_step_seconds(shape, sacs["stacked"].actor, args.env_step_seconds)
            parts = []
            for name in VARIANTS:
                update_ms = 1e3 / statistics.median(rates[name])
                critic_ms = 1e3 / statistics.median(critic_rates[name])
                part = (
                    f"{name} {critic_ms:.2f} of {update_ms:.2f} ms per update "
                    f"({critic_ms / update_ms:.0%})"
                )
                if step_s is not None:
                    env_ms = update_ms + 1e3 * step_s
                    part += f", {critic_ms / env_ms:.0%} of a {env_ms:.2f} ms env step"
                parts.append(part)
            notes.append(f"critic's work {label}: " + "; ".join(parts))

    print(
        f"\nmachine: nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"{args.torch_threads} torch thread(s), load average {load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; total {time.perf_counter() - started:.0f} s"
    )
    print(
        f"one SAC update (batch {args.batch_size}, {'x'.join(map(str, args.hidden_sizes))} ReLU, "
        f"policy frequency {args.policy_frequency}), {args.rounds} alternating rounds of "
        f"{args.round_seconds:g} s per variant\n"
    )
    print("| shape | layer norm | variant | updates/s median (min-max) | stacked / separate |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if notes:
        print("\n" + "\n".join(f"- {note}" for note in notes))


if __name__ == "__main__":
    main(tyro.cli(Args))
