"""Networks that expose their hidden features in the same forward pass.

Every network here (PPO's Gaussian or categorical actor and its critic, SAC's actor and twin critic, the supervised MLP)
returns `(output, hidden_features)`: `hidden_features` is the list of
post-activation outputs of the hidden layers, each (batch, width). That is all a rank
regularizer or a rank diagnostic needs; nothing reaches into layers by name.

Methods that replace single hidden units (CBP, ReDo) also ask a network for `unit_layers()`:
per hidden layer, the parameters that compute its units and those that read them
(regularizers.base.UnitLayer). `layer_norm=True` puts a LayerNorm between each hidden linear
layer and its activation (Lyle et al. 2024); the features stay post-activation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.adam import adam as functional_adam

from regularizers.base import Regularizer, UnitLayer

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # SAC's bounds of the policy's log-std (CleanRL)

Activation = Literal["tanh", "relu", "leaky-relu", "leaky-relu-0.1", "gelu", "silu"]
ARCHITECTURE_FLAGS = ("hidden_sizes", "activation", "init", "layer_norm")
"""The flags every learner builds its networks from (a resumed run cannot change them)."""
Init = Literal["orthogonal", "kaiming-uniform", "lecun-uniform", "torch-default"]

# Plain functions, not modules: calling a submodule costs a few microseconds of Python per
# layer, which is most of the cost of acting with a small network one step at a time.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky-relu": F.leaky_relu,  # negative slope 0.01, PyTorch's default
    # negative slope 0.1: C-CHAIN's continual Gym Control networks (nn.LeakyReLU(0.1))
    "leaky-relu-0.1": functools.partial(F.leaky_relu, negative_slope=0.1),
    "gelu": F.gelu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Linear layers with an activation after each hidden one; forward -> (output, features)."""

    def __init__(
        self,
        in_dim: int,
        hidden_sizes: tuple[int, ...],
        out_dim: int,
        activation: Activation = "tanh",
        init: Init = "orthogonal",
        out_gain: float = 1.0,
        layer_norm: bool = False,
    ):
        super().__init__()
        sizes = (in_dim, *hidden_sizes)
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        # LayerNorm (affine) after each hidden linear layer, before its activation.
        self.norms = nn.ModuleList(nn.LayerNorm(b) for b in hidden_sizes) if layer_norm else None
        self.out = nn.Linear(sizes[-1], out_dim)
        self.activation = ACTIVATIONS[activation]
        self.activation_name = activation
        self.init = init
        self.out_gain = out_gain
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraw the initialisation in place (used at construction, by reset and shrink-perturb)."""
        if self.init == "orthogonal":
            # CleanRL's scheme: orthogonal weights, gain sqrt(2) in hidden layers, zero biases.
            for layer in self.hidden:
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
            nn.init.orthogonal_(self.out.weight, self.out_gain)
            nn.init.zeros_(self.out.bias)
        elif self.init == "kaiming-uniform":
            # The paper's supervised setup (its JAX code: flax's kaiming_uniform, zero biases):
            # He-uniform, U(-b, b) with b = sqrt(6 / fan_in), on every layer. PyTorch's default
            # is 2.45x narrower (b = 1 / sqrt(fan_in)) with random biases, and the two are not
            # interchangeable: at that smaller scale the paper's ER step (er_lr 1e-2) moves the
            # weights ~6x further relative to their size and keeps Permuted MNIST at chance.
            for layer in (*self.hidden, self.out):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        elif self.init == "lecun-uniform":
            # The paper's RL networks (its JAX code: flax's lecun_uniform, zero biases):
            # U(-b, b) with b = sqrt(3 / fan_in), on every layer.
            for layer in (*self.hidden, self.out):
                bound = math.sqrt(3.0 / layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.zeros_(layer.bias)
        else:
            for layer in (*self.hidden, self.out):
                layer.reset_parameters()
        for norm in self.norms or ():
            norm.reset_parameters()

    def unit_layers(self) -> list[UnitLayer]:
        """Per hidden layer: its linear layer (and LayerNorm) computing the units, and the
        next linear layer reading them (regularizers.base.UnitLayer)."""
        readers = [*self.hidden[1:], self.out]
        return [
            UnitLayer(
                incoming=[layer.weight, layer.bias]
                + ([self.norms[i].weight, self.norms[i].bias] if self.norms else []),
                outgoing=[readers[i].weight],
            )
            for i, layer in enumerate(self.hidden)
        ]

    def forward(self, x: Tensor, frozen: bool = False) -> tuple[Tensor, list[Tensor]]:
        """(output, hidden features); `frozen` reads the parameters detached, so gradients
        reach the input but no parameter (SAC's actor loss through the critic)."""
        features = []
        for i, layer in enumerate(self.hidden):
            weight, bias = layer.weight, layer.bias
            if frozen:
                weight, bias = weight.detach(), bias.detach()
            x = F.linear(x, weight, bias)
            if self.norms is not None:
                norm = self.norms[i]
                gain, shift = norm.weight, norm.bias
                if frozen:
                    gain, shift = gain.detach(), shift.detach()
                x = F.layer_norm(x, norm.normalized_shape, gain, shift, norm.eps)
            x = self.activation(x)
            features.append(x)
        weight, bias = self.out.weight, self.out.bias
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        return F.linear(x, weight, bias), features


class GaussianActor(nn.Module):
    """A diagonal Gaussian policy: an MLP gives the mean, a state-independent log-std (CleanRL)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        init: Init = "orthogonal",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.mean = MLP(
            obs_dim, hidden_sizes, act_dim, activation, init, out_gain=0.01, layer_norm=layer_norm
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def reset_parameters(self) -> None:
        self.mean.reset_parameters()
        nn.init.zeros_(self.log_std)

    def unit_layers(self) -> list[UnitLayer]:
        return self.mean.unit_layers()

    def forward(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns the action mean and the hidden features; the std is `self.log_std.exp()`."""
        return self.mean(obs)


class CategoricalActor(nn.Module):
    """A softmax policy over n discrete actions: an MLP gives the logits (CleanRL's `ppo.py`).

    forward -> (logits (batch, n), hidden features); pi(a|s) = softmax(logits)[a]. With the
    orthogonal init the output layer's gain is 0.01, as CleanRL's, so the first policy is
    nearly uniform."""

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        init: Init = "orthogonal",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.logits = MLP(
            obs_dim, hidden_sizes, n_actions, activation, init, out_gain=0.01,
            layer_norm=layer_norm,
        )  # fmt: skip

    def reset_parameters(self) -> None:
        self.logits.reset_parameters()

    def unit_layers(self) -> list[UnitLayer]:
        return self.logits.unit_layers()

    def forward(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.logits(obs)


class Critic(nn.Module):
    """A state-value network V(s): forward -> (values of shape (batch,), features)."""

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        init: Init = "orthogonal",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.value = MLP(
            obs_dim, hidden_sizes, 1, activation, init, out_gain=1.0, layer_norm=layer_norm
        )

    def reset_parameters(self) -> None:
        self.value.reset_parameters()

    def unit_layers(self) -> list[UnitLayer]:
        return self.value.unit_layers()

    def forward(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        value, features = self.value(obs)
        return value.squeeze(-1), features


class SquashedGaussianActor(nn.Module):
    """SAC's policy pi(a|s) = tanh(N(mean(s), std(s))) * scale + bias: one MLP gives the mean
    and the log-std.

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
        return bounded_log_std(out, self.act_dim), features


def bounded_log_std(out: Tensor, act_dim: int) -> Tensor:
    """The squashed-Gaussian actor's trunk output [mean, raw log-std] as [mean, log-std], the
    log-std squashed into [LOG_STD_MIN, LOG_STD_MAX] by a tanh."""
    mean, raw_log_std = out[..., :act_dim], out[..., act_dim:]
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1)
    return torch.cat([mean, log_std], -1)


class TwinCritic(nn.Module):
    """SAC's two Q networks Q_1 and Q_2 (CleanRL's qf1, qf2), each an MLP on [obs, action].

    forward -> (Q values (2, batch), hidden features: Q_1's layers, then Q_2's). Two plain
    networks, not one with stacked weights: the stacked form (one batched GEMM per layer for
    both) measured 0.89-0.97x the speed of this one on the CPU
    (docs/benchmarks.md, "SAC against CleanRL"), and it would need every method that edits units or
    weight matrices to know about the stacking."""

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
        self.q1 = MLP(obs_dim + act_dim, hidden_sizes, 1, activation, init, layer_norm=layer_norm)
        self.q2 = MLP(obs_dim + act_dim, hidden_sizes, 1, activation, init, layer_norm=layer_norm)

    def reset_parameters(self) -> None:
        self.q1.reset_parameters()
        self.q2.reset_parameters()

    def unit_layers(self) -> list[UnitLayer]:
        """Q_1's hidden layers, then Q_2's: the order of the features."""
        return self.q1.unit_layers() + self.q2.unit_layers()

    def forward(self, obs_actions: Tensor) -> tuple[Tensor, list[Tensor]]:
        (q1, features1), (q2, features2) = self.q1(obs_actions), self.q2(obs_actions)
        return torch.stack([q1.squeeze(-1), q2.squeeze(-1)]), [*features1, *features2]

    def frozen(self, obs_actions: Tensor) -> Tensor:
        """Q values with the parameters detached: gradients reach the input (the actor's
        action) but no critic parameter."""
        q1, _ = self.q1(obs_actions, frozen=True)
        q2, _ = self.q2(obs_actions, frozen=True)
        return torch.stack([q1.squeeze(-1), q2.squeeze(-1)])


# --- Seeds stacked along a leading axis (agents/ppo_seeds.py, agents/supervised_seeds.py) ---


def stack_parameters(modules: list[nn.Module], requires_grad: bool = False) -> dict[str, Tensor]:
    """Stack K modules' parameters along a new leading seed axis, {name: (K, *shape)}, and make
    each module's parameters views into the stack: the same Parameter objects, so the optimizer,
    regularizer and diagnostics that hold one module keep working on it, and a step on the
    stack moves every module."""
    stacked = {}
    for name, _ in modules[0].named_parameters():
        parts = [dict(module.named_parameters())[name] for module in modules]
        stack = torch.stack([part.detach() for part in parts]).requires_grad_(requires_grad)
        for seed, part in enumerate(parts):
            part.data = stack.detach()[seed]
        stacked[name] = stack
    return stacked


def take_seed_gradient(module: nn.Module, stacks: dict[str, Tensor], seed: int) -> None:
    """After a backward through `stacks` ({`module`'s own parameter name: its stack}, whose
    slice `seed` the module's parameters are views into): the module's `.grad` becomes that
    slice of each stack's gradient, plus what a term that read the parameters themselves (L2
    Init's penalty) left in `.grad`. The K seeds' graphs are disjoint, so a backward of their
    summed losses gives each seed its own gradient."""
    for name, param in module.named_parameters():
        gradient = stacks[name].grad
        if gradient is not None:
            param.grad = gradient[seed] if param.grad is None else gradient[seed] + param.grad


@torch.no_grad()
def step_seeds_on_stacks(
    stacks: list[Tensor],
    optimizers: list[torch.optim.Optimizer],
    methods: list[Regularizer],
    max_grad_norm: float = 0.0,
    found_inf: Tensor | None = None,
) -> bool:
    """After a backward through `stacks` (seed axis first), every seed's single-run step on its
    own slice of the gradient, with the per-seed Python of K steps cut out: the gradients
    clipped on the stacks (a norm per seed, as `clip_grad_norm_` on the seed's parameters), its
    method's coupled decay added there, then each seed's fused Adam on its slices. `found_inf`
    (K,): the seeds whose loss was not finite, whose step is skipped as the single run skips it.

    Returns False, having done nothing, where this does not apply: a method that adds more to
    the gradient than coupled decay (a penalty on the weights, a before_step of its own), an
    optimizer that is not a one-group fused Adam over exactly the stacks' slices (in their
    order), or a stack without a gradient. The caller then takes each seed's step as the
    single run does."""
    grads = [stack.grad for stack in stacks]
    if any(grad is None for grad in grads) or not all(m.only_coupled_decay() for m in methods):
        return False
    decays = {method.coupled_decay() for method in methods}
    if len(decays) > 1:
        return False
    for k, optimizer in enumerate(optimizers):
        group = optimizer.param_groups
        if len(group) != 1 or not group[0]["fused"] or not isinstance(optimizer, torch.optim.Adam):
            return False
        params = group[0]["params"]
        if len(params) != len(stacks) or any(
            p.data_ptr() != stack[k].data_ptr() for p, stack in zip(params, stacks, strict=False)
        ):
            return False
    k = len(optimizers)
    if max_grad_norm > 0:
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads])
        scale = (max_grad_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.view(k, *[1] * (grad.dim() - 1)))
    (decay,) = decays
    if decay:
        torch._foreach_add_(grads, stacks, alpha=decay)
    for k, optimizer in enumerate(optimizers):
        fused_adam_step(optimizer, [grad[k] for grad in grads],
                        None if found_inf is None else found_inf[k])  # fmt: skip
    return True


def fused_adam_step(
    optimizer: torch.optim.Adam, grads: list[Tensor], found_inf: Tensor | None
) -> None:
    """`optimizer.step()` with `grads` as its parameters' gradients (in order), through the
    functional Adam: Optimizer.step's own bookkeeping costs as much as the arithmetic of a small
    network's step. Where the optimizer has no state yet (its first step, or a method dropped
    it), Optimizer.step itself initialises it."""
    group = optimizer.param_groups[0]
    params = group["params"]
    states = [optimizer.state.get(p) for p in params]
    if not all(states):
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.found_inf = found_inf
        optimizer.step()
        for param in params:
            param.grad = None
        return
    beta1, beta2 = group["betas"]
    functional_adam(
        params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
        [s["step"] for s in states], fused=True, found_inf=found_inf, amsgrad=group["amsgrad"],
        beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"],
        decoupled_weight_decay=group.get("decoupled_weight_decay", False),
    )  # fmt: skip


def stacked_mlp(
    mlp: MLP, params: dict[str, Tensor], prefix: str, x: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """`mlp.forward` for K networks at once: `params` from `stack_parameters` (names under
    `prefix`), x (K, batch, in) -> (outputs (K, batch, out), hidden features (K, batch, width))."""
    features = []
    for i in range(len(mlp.hidden)):
        weight, bias = params[f"{prefix}hidden.{i}.weight"], params[f"{prefix}hidden.{i}.bias"]
        x = stacked_linear(x, weight, bias)
        if mlp.norms is not None:
            norm = mlp.norms[i]
            gain, shift = params[f"{prefix}norms.{i}.weight"], params[f"{prefix}norms.{i}.bias"]
            x = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
            x = x * gain.unsqueeze(1) + shift.unsqueeze(1)
        x = mlp.activation(x)
        features.append(x)
    weight, bias = params[f"{prefix}out.weight"], params[f"{prefix}out.bias"]
    return stacked_linear(x, weight, bias), features


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """K linear layers at once: x (K, batch, in), weight (K, out, in), bias (K, out) -> (K,
    batch, out). Computed as (W x^T)^T so that the weight's gradient, delta^T x, comes out in
    the weight's own layout: x W^T would give it transposed, and accumulating a transposed
    gradient into the stack copies it, which took half of a batch-1 step's time."""
    return torch.baddbmm(bias.unsqueeze(-1), weight, x.transpose(1, 2)).transpose(1, 2)
