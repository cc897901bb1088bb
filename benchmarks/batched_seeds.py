"""K seeds in one process: how fast can one PPO update of K continual-CartPole networks be?

The design question of batched seeds, measured before it is built: on networks this small the
time of an update is per-operation overhead, so K seeds whose tensors are stacked along a seed
axis should cost little more than one. Three ways to run the same K updates, each exact per
seed (Adam is elementwise, the loss a sum of per-seed losses):
- loop: K ordinary actor/critic pairs (agents/networks.py) and K fused Adams, one after another
  (what K processes do, without the processes);
- vmap: the K pairs' parameters stacked (torch.func.stack_module_state), the loss vmapped over
  functional_call, one fused Adam over the stacked tensors;
- bmm: the same stacked weights used directly as batched matrix products (torch.baddbmm).
The work is continual-CartPole's PPO update (5 epochs x 25 minibatches of 32 over an 800-step
rollout, 3 x 256 LeakyReLU actor and critic, clipped surrogate + entropy + value loss) and its
acting (one forward per env step for the K envs). One torch thread; the table gives seconds per
update and per 800 acting steps, the speed-up per seed over the loop, and K seeds' PPO
iterations (update plus acting, without the envs) per second.

With `--workload supervised`, the same question for the supervised stream as `make reproduce`
runs it (permuted MNIST, 784-256x3-10 ReLU, batch 1, plain SGD): K seeds each take one SGD step
on their own example, as a loop of the learner's own fused step (agents/supervised.py
`fused_sgd_step`, one network after another) and as that step on stacked weights (a batched
outer product per layer, `baddbmm`). The table gives seed-examples per second (examples
learnt, summed over the K seeds) and the speed-up over the loop.

With `--workload sac`, the same question for SAC at CleanRL's sizes on Hopper (obs 11, 3
actions, 256 x 256 ReLU actor and twin critic, batch 256): one SAC step of K seeds (the twin
critic's TD step, the actor's step, alpha's step and the targets' Polyak step, with the
objectives of agents/sac.py), as a loop of K agents' steps and as the same step on stacked
weights (`stacked_mlp`: one batched GEMM per layer for the K actors, the K Q_1s and the K Q_2s),
each exact per seed (checked against the loop from the same parameters, batch and noise). The
table gives seed-updates per second (one per env step in SAC) and the speed-up over the loop.

With `--workload erank`, the ER regularizer's ascent step (`--regularizer erank` / `l2-er`,
once per PPO epoch on the whole rollout) on continual-Acrobot's networks (6 obs, 3 actions, 3 x
256 LeakyReLU actor and critic, an 800-step rollout): K seeds as each seed's own `after_update`
one after another (K forwards, K x 6 SVDs, K backwards), and as one batched step
(`after_update_seeds` on the stacks: one forward, one batched SVD per layer, one backward per
net), checked first to leave every seed where its own step does. The table gives seed-steps per
second and the speed-up over the loop.

With `--workload ppo-step`, the minibatch step `train.py ppo --seeds` takes on continual
CartPole, in its parts (the batched forward and backward; the seeds' steps each as the single
run takes it, or on the stacks), beside the floor of the forward and backward: their matrix
products at the rate this core multiplies two 1024 x 1024 matrices.

    python benchmarks/batched_seeds.py                  # K = 1, 2, 6; ~2 minutes
    python benchmarks/batched_seeds.py --workload supervised --seeds 1 3 6   # ~1 minute
    python benchmarks/batched_seeds.py --workload sac --seeds 1 2 4          # ~1 minute
    python benchmarks/batched_seeds.py --workload erank --seeds 1 3 6        # ~1 minute
    python benchmarks/batched_seeds.py --workload ppo-step --seeds 1 3 6     # ~1 minute
    python benchmarks/batched_seeds.py --device cuda --seeds 1 4 16 64 256   # the GPU check's part
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agents import supervised_seeds as seeds  # noqa: E402
from agents.networks import (  # noqa: E402
    MLP,
    CategoricalActor,
    Critic,
    SquashedGaussianActor,
    TwinCritic,
    bounded_log_std,
    stack_parameters,
    stacked_mlp,
)
from agents.ppo import hidden_features  # noqa: E402
from agents.ppo_seeds import StackedNets  # noqa: E402
from agents.sac import (  # noqa: E402
    actor_objective,
    alpha_objective,
    polyak_update,
    soft_td_target,
    squashed_gaussian,
)
from agents.supervised import fused_sgd_step  # noqa: E402
from regularizers.base import after_update_seeds  # noqa: E402
from regularizers.erank import ERank, ERankConfig  # noqa: E402

OBS, ACTIONS, HIDDEN = 4, 2, (256, 256, 256)
ACROBOT_OBS, ACROBOT_ACTIONS = 6, 3
ROLLOUT, MINIBATCH, EPOCHS = 800, 32, 5
CLIP, ENT, VF = 0.2, 0.01, 0.5


@dataclass
class Args:
    workload: tuple[Literal["ppo", "supervised", "sac", "erank", "ppo-step"], ...] = ("ppo",)
    """continual-CartPole's PPO update and acting, the supervised stream's SGD step, one SAC
    step at CleanRL's sizes on Hopper, ER's ascent step on continual Acrobot's rollout, the
    parts of `ppo --seeds`' minibatch step; several: one table each, in this order"""
    seeds: tuple[int, ...] = (1, 2, 6)
    """the K values measured (seeds trained at once)"""
    updates: int = 3
    """updates timed per K and way (after one untimed warm-up)"""
    device: str = "cpu"
    """where the networks live (cuda: the GPU check's part)"""
    loop_up_to: int = 8
    """the loop runs only for K up to this; above it the speed-up is against the loop's time
    per seed at the largest K it ran"""


def ppo_loss(logits: Tensor, values: Tensor, data: dict[str, Tensor]) -> Tensor:
    """Continual-CartPole's PPO loss on one minibatch of one seed, or the sum over seeds of
    theirs on a (seeds, minibatch) stack (every mean is over the last axis, then summed)."""
    log_probs = logits.log_softmax(-1)
    new = log_probs.gather(-1, data["actions"][..., None]).squeeze(-1)
    ratio = (new - data["logprobs"]).exp()
    adv = data["advantages"]
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean(-1)
    value_loss = 0.5 * (values - data["returns"]).square().mean(-1)
    return (pg - ENT * entropy + VF * value_loss).sum()


def rollout_data(k: int, device: str = "cpu") -> dict[str, Tensor]:
    """K seeds' rollouts (random numbers of the right shapes: the time does not depend on them)."""
    data = {
        "obs": torch.randn(k, ROLLOUT, OBS),
        "actions": torch.randint(0, ACTIONS, (k, ROLLOUT)),
        "logprobs": torch.full((k, ROLLOUT), -0.69),
        "advantages": torch.randn(k, ROLLOUT),
        "returns": torch.randn(k, ROLLOUT),
    }
    return {key: value.to(device) for key, value in data.items()}


def networks(k: int, device: str = "cpu") -> list[tuple[CategoricalActor, Critic]]:
    net = (HIDDEN, "leaky-relu", "torch-default")
    return [
        (CategoricalActor(OBS, ACTIONS, *net).to(device), Critic(OBS, *net).to(device))
        for _ in range(k)
    ]


def loop_update(pairs, optimizers, data) -> None:
    for seed, ((actor, critic), optimizer) in enumerate(zip(pairs, optimizers, strict=True)):
        for _ in range(EPOCHS):
            order = torch.randperm(ROLLOUT, device=data["obs"].device)
            for start in range(0, ROLLOUT, MINIBATCH):
                idx = order[start : start + MINIBATCH]
                mb = {key: value[seed, idx] for key, value in data.items()}
                loss = ppo_loss(actor(mb["obs"])[0], critic(mb["obs"])[0], mb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()


def loop_act(pairs, obs: Tensor) -> None:
    with torch.inference_mode():
        for _ in range(ROLLOUT):
            for seed, (actor, _critic) in enumerate(pairs):
                torch.multinomial(actor(obs[seed : seed + 1])[0].softmax(-1), 1)


def stacked(pairs) -> tuple[dict, dict, CategoricalActor, Critic]:
    actor_params, _ = torch.func.stack_module_state([a for a, _ in pairs])
    critic_params, _ = torch.func.stack_module_state([c for _, c in pairs])
    base_actor = CategoricalActor(OBS, ACTIONS, HIDDEN, "leaky-relu", "torch-default").to("meta")
    base_critic = Critic(OBS, HIDDEN, "leaky-relu", "torch-default").to("meta")
    return actor_params, critic_params, base_actor, base_critic


def minibatches(k: int, data: dict[str, Tensor]):
    """Each seed its own order (its own random stream), gathered per seed: (k, 32, ...)."""
    device = data["obs"].device
    for _ in range(EPOCHS):
        order = torch.stack([torch.randperm(ROLLOUT, device=device) for _ in range(k)])
        for start in range(0, ROLLOUT, MINIBATCH):
            idx = order[:, start : start + MINIBATCH]
            yield {key: value.gather(1, idx.view(k, -1, *[1] * (value.dim() - 2)).expand(
                k, MINIBATCH, *value.shape[2:])) for key, value in data.items()}  # fmt: skip


def vmap_update(state, optimizer, data) -> None:
    actor_params, critic_params, base_actor, base_critic = state
    k = data["obs"].shape[0]

    def one_seed(a_params, c_params, mb):
        logits = torch.func.functional_call(base_actor, a_params, (mb["obs"],))[0]
        values = torch.func.functional_call(base_critic, c_params, (mb["obs"],))[0]
        return ppo_loss(logits, values, mb)

    batched = torch.vmap(one_seed)
    for mb in minibatches(k, data):
        loss = batched(actor_params, critic_params, mb).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bmm_forward(weights: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
    """x (k, n, in) through stacked layers: W (k, out, in) as nn.Linear keeps them, b (k, out)."""
    for index, (w, b) in enumerate(weights):
        x = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
        if index < len(weights) - 1:
            x = F.leaky_relu(x, 0.01)
    return x


def layers(params: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    weights = sorted(name for name in params if name.endswith("weight"))
    return [(params[w], params[w.removesuffix("weight") + "bias"]) for w in weights]


def bmm_update(state, optimizer, data) -> None:
    actor_params, critic_params, _, _ = state
    k = data["obs"].shape[0]
    actor_layers, critic_layers = layers(actor_params), layers(critic_params)
    for mb in minibatches(k, data):
        logits = bmm_forward(actor_layers, mb["obs"])
        values = bmm_forward(critic_layers, mb["obs"]).squeeze(-1)
        loss = ppo_loss(logits, values, mb)  # the sum of the K seeds' losses
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bmm_act(state, obs: Tensor) -> None:
    """800 acting steps of K seeds: one stacked forward and one sampling per step."""
    actor_layers = layers(state[0])
    with torch.inference_mode():
        for _ in range(ROLLOUT):
            logits = bmm_forward(actor_layers, obs[:, None, :])
            torch.multinomial(logits[:, 0].softmax(-1), 1)


def timed(function, *inputs, repeats: int) -> float:
    function(*inputs)  # warm-up
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function(*inputs)
    synchronize()
    return (time.perf_counter() - start) / repeats


def check_layer_order(pairs) -> None:
    """The bmm path reads the stacked weights in name order: it must be the forward's order."""
    actor_params = stacked(pairs)[0]
    x = torch.randn(len(pairs), 5, OBS)
    direct = torch.stack([pairs[s][0](x[s])[0] for s in range(len(pairs))])
    torch.testing.assert_close(bmm_forward(layers(actor_params), x), direct)


def check_same_gradients(k: int = 3) -> None:
    """From the same parameters and minibatches, the stacked ways give each seed the gradient
    its own network gets alone (float32 tolerance): they are K updates, not one."""
    pairs, data = networks(k), rollout_data(k)
    mb = next(minibatches(k, data))
    alone = []
    for seed, (actor, critic) in enumerate(pairs):
        one = {key: value[seed] for key, value in mb.items()}
        loss = ppo_loss(actor(one["obs"])[0], critic(one["obs"])[0], one)
        alone.append(torch.autograd.grad(loss, list(actor.parameters())))
    actor_params = stacked(pairs)[0]
    for p in actor_params.values():
        p.requires_grad_(True)
    critic_layers = layers(stacked(pairs)[1])
    logits = bmm_forward(layers(actor_params), mb["obs"])
    loss = ppo_loss(logits, bmm_forward(critic_layers, mb["obs"]).squeeze(-1), mb)
    names = [name for name, _ in pairs[0][0].named_parameters()]
    grads = dict(
        zip(names, torch.autograd.grad(loss, [actor_params[n] for n in names]), strict=True)
    )
    for seed in range(k):
        for name, expected in zip(names, alone[seed], strict=True):
            torch.testing.assert_close(grads[name][seed], expected, rtol=1e-4, atol=1e-6)


# --- the supervised stream: permuted MNIST at batch 1 ------------------------------------------

MNIST_IN, MNIST_HIDDEN, MNIST_CLASSES, SGD_LR = 784, (256, 256, 256), 10, 0.01


def mnist_models(k: int, device: str = "cpu") -> list[MLP]:
    return [
        MLP(MNIST_IN, MNIST_HIDDEN, MNIST_CLASSES, "relu", "kaiming-uniform").to(device)
        for _ in range(k)
    ]


def stacked_sgd_step(weights: list[tuple[Tensor, Tensor]], x: Tensor, y: Tensor) -> None:
    """The learner's stacked step (`agents.supervised_seeds.stacked_sgd_step`: cross-entropy, no decay)
    for K seeds at once, each on its own example: x (k, 1, 784), y (k,)."""
    seeds.stacked_sgd_step(weights, "relu", x, y[:, None], "cross-entropy", None, SGD_LR, 0.0)


def mnist_stack(models: list[MLP]) -> list[tuple[Tensor, Tensor]]:
    params, _ = torch.func.stack_module_state(models)
    names = [f"hidden.{i}" for i in range(len(MNIST_HIDDEN))] + ["out"]
    return [(params[f"{n}.weight"].detach(), params[f"{n}.bias"].detach()) for n in names]


def check_same_sgd_steps(k: int = 3) -> None:
    """From the same parameters and examples, the stacked step leaves each seed where the
    learner's own fused step leaves its network alone (float32 tolerance)."""
    models = mnist_models(k)
    weights = mnist_stack(models)
    x, y = torch.rand(k, 1, MNIST_IN), torch.randint(0, MNIST_CLASSES, (k,))
    for _ in range(3):
        stacked_sgd_step(weights, x, y)
        with torch.no_grad():
            for seed, model in enumerate(models):
                fused_sgd_step(model, x[seed], y[seed : seed + 1], "ce", None, SGD_LR, 0.0)
    for seed, model in enumerate(models):
        for (w, b), layer in zip(weights, [*model.hidden, model.out], strict=True):
            torch.testing.assert_close(w[seed], layer.weight, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b[seed], layer.bias, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def loop_sgd(models: list[MLP], x: Tensor, y: Tensor) -> None:
    """x (examples, k, 1, 784): each example, each seed's network its own step in turn."""
    for i in range(len(x)):
        for seed, model in enumerate(models):
            fused_sgd_step(model, x[i, seed], y[i, seed : seed + 1], "ce", None, SGD_LR, 0.0)


@torch.no_grad()
def stacked_sgd(weights: list[tuple[Tensor, Tensor]], x: Tensor, y: Tensor) -> None:
    for i in range(len(x)):
        stacked_sgd_step(weights, x[i], y[i])


def supervised_table(args: Args, examples: int = 2000) -> None:
    check_same_sgd_steps()
    print(f"permuted MNIST 784-256x3-10, batch 1, SGD, {args.device}, torch {torch.__version__}, "
          "1 torch thread\n")  # fmt: skip
    print("| K seeds | way | seed-examples per second | speed-up over the loop |")
    print("|---|---|---|---|")
    loop_rate = None  # the loop's, at the largest K it ran: the reference for larger K
    for k in args.seeds:
        x = torch.rand(examples, k, 1, MNIST_IN, device=args.device)
        y = torch.randint(0, MNIST_CLASSES, (examples, k), device=args.device)
        models, weights = mnist_models(k, args.device), mnist_stack(mnist_models(k, args.device))
        rows = []
        if k <= args.loop_up_to:
            loop_rate = examples * k / timed(loop_sgd, models, x, y, repeats=args.updates)
            rows.append(("loop", loop_rate))
        rows.append(
            ("stacked", examples * k / timed(stacked_sgd, weights, x, y, repeats=args.updates))
        )
        for way, rate in rows:
            print(f"| {k} | {way} | {rate:,.0f} | {rate / loop_rate:.2f}x |", flush=True)


# --- SAC: one step of K seeds' actor, twin critic and temperature ---------------------------

SAC_OBS, SAC_ACT, SAC_HIDDEN, SAC_BATCH = 11, 3, (256, 256), 256
GAMMA, TAU, TARGET_ENTROPY = 0.99, 0.005, -3.0


@dataclass
class SACSeeds:
    """K seeds' SAC networks, optimizers and log-alphas. Stacked: the modules' parameters are
    views into stacks (`stack_parameters`) and each optimizer steps the stacks at once."""

    actors: list[SquashedGaussianActor]
    critics: list[TwinCritic]
    targets: list[TwinCritic]
    log_alpha: Tensor | list[Tensor]  # (K,) stacked, else K scalars
    optimizers: list[torch.optim.Optimizer]  # actors', critics', alphas': K of each, or 1 of each
    stacks: dict[str, dict[str, Tensor]] | None = None  # actor, q1, q2, target q1, target q2


def sac_seeds(k: int, device: str, stacked: bool) -> SACSeeds:
    torch.manual_seed(0)
    low, high = -torch.ones(SAC_ACT).numpy(), torch.ones(SAC_ACT).numpy()
    net = (SAC_HIDDEN, "relu", "torch-default")
    actors = [SquashedGaussianActor(SAC_OBS, SAC_ACT, *net, low, high).to(device) for _ in range(k)]
    critics = [TwinCritic(SAC_OBS, SAC_ACT, *net).to(device) for _ in range(k)]
    targets = [TwinCritic(SAC_OBS, SAC_ACT, *net).to(device) for _ in range(k)]
    for target, critic in zip(targets, critics, strict=True):
        target.load_state_dict(critic.state_dict())
        target.requires_grad_(False)
    adam = functools.partial(torch.optim.Adam, fused=True)
    if not stacked:
        log_alphas = [torch.zeros((), device=device, requires_grad=True) for _ in range(k)]
        optimizers = [adam(module.parameters(), lr=lr) for modules, lr in
                      ((actors, 3e-4), (critics, 1e-3)) for module in modules]  # fmt: skip
        optimizers += [adam([log_alpha]) for log_alpha in log_alphas]
        return SACSeeds(actors, critics, targets, log_alphas, optimizers)
    log_alpha = torch.zeros(k, device=device, requires_grad=True)
    stacks = {
        "actor": stack_parameters([a.trunk for a in actors], requires_grad=True),
        "q1": stack_parameters([c.q1 for c in critics], requires_grad=True),
        "q2": stack_parameters([c.q2 for c in critics], requires_grad=True),
        "target q1": stack_parameters([t.q1 for t in targets]),
        "target q2": stack_parameters([t.q2 for t in targets]),
    }
    optimizers = [
        adam(stacks["actor"].values(), lr=3e-4),
        adam([*stacks["q1"].values(), *stacks["q2"].values()], lr=1e-3),
        adam([log_alpha]),
    ]
    return SACSeeds(actors, critics, targets, log_alpha, optimizers, stacks)


def sac_batch(k: int, device: str) -> dict[str, Tensor]:
    """K seeds' replay samples and the step's noise (random numbers of the right shapes)."""
    batch = {
        "obs": torch.randn(k, SAC_BATCH, SAC_OBS),
        "actions": torch.rand(k, SAC_BATCH, SAC_ACT) * 2 - 1,
        "next_obs": torch.randn(k, SAC_BATCH, SAC_OBS),
        "rewards": torch.randn(k, SAC_BATCH),
        "terminated": (torch.rand(k, SAC_BATCH) < 0.01).float(),
        "next_noise": torch.randn(k, SAC_BATCH, SAC_ACT),
        "noise": torch.randn(k, SAC_BATCH, SAC_ACT),
    }
    return {key: value.to(device) for key, value in batch.items()}


def sac_loop_step(seeds: SACSeeds, batch: dict[str, Tensor]) -> None:
    """K agents' SAC steps one after another (agents/sac.py's order: critic, actor, alpha,
    targets), each seed on its own batch and noise."""
    k = len(seeds.actors)
    actor_adams, critic_adams, alpha_adams = (seeds.optimizers[i * k : (i + 1) * k]
                                              for i in range(3))  # fmt: skip
    for seed in range(k):
        actor, critic, target = seeds.actors[seed], seeds.critics[seed], seeds.targets[seed]
        b = {key: value[seed] for key, value in batch.items()}
        alpha = seeds.log_alpha[seed].detach().exp()
        scale, bias = actor.action_scale, actor.action_bias
        with torch.no_grad():
            next_action, next_log_pi = squashed_gaussian(actor(b["next_obs"])[0], b["next_noise"],
                                                         scale, bias)  # fmt: skip
            next_q, _ = target(torch.cat([b["next_obs"], next_action], 1))
            y = soft_td_target(b["rewards"], b["terminated"], next_q, next_log_pi, alpha, GAMMA)
        q, _ = critic(torch.cat([b["obs"], b["actions"]], 1))
        critic_adams[seed].zero_grad(set_to_none=True)
        (q - y).square().mean(1).sum().backward()
        critic_adams[seed].step()
        pi, log_pi = squashed_gaussian(actor(b["obs"])[0], b["noise"], scale, bias)
        q_pi = critic.frozen(torch.cat([b["obs"], pi], 1))
        actor_adams[seed].zero_grad(set_to_none=True)
        actor_objective(log_pi, q_pi, alpha).backward()
        actor_adams[seed].step()
        alpha_adams[seed].zero_grad(set_to_none=True)
        alpha_objective(seeds.log_alpha[seed], log_pi, TARGET_ENTROPY).backward()
        alpha_adams[seed].step()
        polyak_update(list(target.parameters()), list(critic.parameters()), TAU)


def stacked_squashed_actor(stack: dict[str, Tensor], template: SquashedGaussianActor, obs: Tensor):
    """`SquashedGaussianActor.forward` for K actors: obs (K, batch, obs) -> (K, batch, 2 act)."""
    return bounded_log_std(stacked_mlp(template.trunk, stack, "", obs)[0], SAC_ACT)


def stacked_twin(seeds: SACSeeds, names: tuple[str, str], x: Tensor, frozen: bool = False):
    """Q_1 and Q_2 of K seeds on x (K, batch, in) -> (2, K, batch)."""
    template = seeds.critics[0]
    qs = []
    for name, mlp in zip(names, (template.q1, template.q2), strict=True):
        stack = seeds.stacks[name]
        if frozen:
            stack = {key: value.detach() for key, value in stack.items()}
        qs.append(stacked_mlp(mlp, stack, "", x)[0].squeeze(-1))
    return torch.stack(qs)


def sac_stacked_step(seeds: SACSeeds, batch: dict[str, Tensor]) -> None:
    """The same K steps on stacked weights: one batched forward and backward per network."""
    actor_adam, critic_adam, alpha_adam = seeds.optimizers
    template, stacks = seeds.actors[0], seeds.stacks
    scale, bias = template.action_scale, template.action_bias
    alpha = seeds.log_alpha.detach().exp()[:, None]
    with torch.no_grad():
        next_out = stacked_squashed_actor(stacks["actor"], template, batch["next_obs"])
        next_action, next_log_pi = squashed_gaussian(next_out, batch["next_noise"], scale, bias)
        next_q = stacked_twin(seeds, ("target q1", "target q2"),
                              torch.cat([batch["next_obs"], next_action], -1))  # fmt: skip
        y = soft_td_target(batch["rewards"], batch["terminated"], next_q, next_log_pi, alpha,
                           GAMMA)  # fmt: skip
    q = stacked_twin(seeds, ("q1", "q2"), torch.cat([batch["obs"], batch["actions"]], -1))
    critic_adam.zero_grad(set_to_none=True)
    (q - y).square().mean(-1).sum().backward()
    critic_adam.step()
    out = stacked_squashed_actor(stacks["actor"], template, batch["obs"])
    pi, log_pi = squashed_gaussian(out, batch["noise"], scale, bias)
    q_pi = stacked_twin(seeds, ("q1", "q2"), torch.cat([batch["obs"], pi], -1), frozen=True)
    soft = alpha * log_pi - torch.minimum(q_pi[0], q_pi[1])  # actor_objective per seed
    actor_adam.zero_grad(set_to_none=True)
    soft.mean(-1).sum().backward()
    actor_adam.step()
    alpha_adam.zero_grad(set_to_none=True)
    (-seeds.log_alpha.exp()[:, None] * (log_pi.detach() + TARGET_ENTROPY)).mean(-1).sum().backward()
    alpha_adam.step()
    targets = [*stacks["target q1"].values(), *stacks["target q2"].values()]
    polyak_update(targets, [t.detach() for t in (*stacks["q1"].values(), *stacks["q2"].values())],
                  TAU)  # fmt: skip


def check_same_sac_steps(k: int = 3) -> None:
    """Two stacked steps move each seed's actor, critic, target and alpha as its own two steps
    do (float32 tolerance): the stacked step is K seeds' steps, not one."""
    loop, stacked = sac_seeds(k, "cpu", stacked=False), sac_seeds(k, "cpu", stacked=True)
    for _ in range(2):
        batch = sac_batch(k, "cpu")
        sac_loop_step(loop, batch)
        sac_stacked_step(stacked, batch)
    for seed in range(k):
        for name in ("actors", "critics", "targets"):
            ours = dict(getattr(stacked, name)[seed].named_parameters())
            for key, value in getattr(loop, name)[seed].named_parameters():
                torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stacked.log_alpha, torch.stack(loop.log_alpha))


def sac_table(args: Args, steps: int = 20) -> None:
    check_same_sac_steps()
    print(f"SAC on Hopper's sizes (11 obs, 3 actions, 256 x 256 ReLU, batch 256), {args.device}, "
          f"torch {torch.__version__}, 1 torch thread\n")  # fmt: skip
    print("| K seeds | way | seed-updates per second | speed-up over the loop |")
    print("|---|---|---|---|")
    loop_rate = None  # the loop's, at the largest K it ran: the reference for larger K

    def run(step, seeds: SACSeeds, batch: dict[str, Tensor]) -> None:
        for _ in range(steps):
            step(seeds, batch)

    for k in args.seeds:
        batch, rows = sac_batch(k, args.device), []
        if k <= args.loop_up_to:
            seeds = sac_seeds(k, args.device, stacked=False)
            loop_rate = steps * k / timed(run, sac_loop_step, seeds, batch, repeats=args.updates)
            rows.append(("loop", loop_rate))
        seeds = sac_seeds(k, args.device, stacked=True)
        rate = steps * k / timed(run, sac_stacked_step, seeds, batch, repeats=args.updates)
        rows.append(("stacked", rate))
        for way, rate in rows:
            print(f"| {k} | {way} | {rate:,.0f} | {rate / loop_rate:.2f}x |", flush=True)


def erank_seeds(k: int, device: str) -> tuple[list[ERank], list, StackedNets]:
    """K seeds' actor-critic pairs at continual Acrobot's sizes, each with its own ER attached,
    and their stacks (the seeds' parameters become views into them, as in `--seeds`)."""
    agents = []
    for _ in range(k):
        actor = CategoricalActor(ACROBOT_OBS, ACROBOT_ACTIONS, HIDDEN, "leaky-relu").to(device)
        critic = Critic(ACROBOT_OBS, HIDDEN, "leaky-relu").to(device)
        agents.append(SimpleNamespace(actor=actor, critic=critic))
    methods = []
    for agent in agents:
        method = ERank(ERankConfig(lr=1e-2))
        nets = {"actor": agent.actor, "critic": agent.critic}
        method.attach(nets, torch.optim.SGD([*agent.actor.parameters()], lr=0.0), seed=0)
        methods.append(method)
    return methods, agents, StackedNets(agents)


def erank_loop(methods, agents, obs: Tensor) -> None:
    for k, (method, agent) in enumerate(zip(methods, agents, strict=True)):
        method.after_update(
            functools.partial(hidden_features, agent.actor, agent.critic, obs[k]), True
        )


def erank_batched(methods, nets: StackedNets, obs: Tensor) -> None:
    after_update_seeds(methods, [None] * len(methods), nets.on(obs), True)


def check_same_erank_steps(k: int = 3) -> None:
    """Two batched ER steps leave every seed's networks where its own two steps leave them."""
    obs = torch.randn(k, ROLLOUT, ACROBOT_OBS)
    torch.manual_seed(1)
    loop_methods, loop_agents, _ = erank_seeds(k, "cpu")
    torch.manual_seed(1)
    methods, agents, nets = erank_seeds(k, "cpu")
    for _ in range(2):
        erank_loop(loop_methods, loop_agents, obs)
        erank_batched(methods, nets, obs)
    for ours, theirs in zip(agents, loop_agents, strict=True):
        for net in ("actor", "critic"):
            for p, q in zip(getattr(ours, net).parameters(), getattr(theirs, net).parameters(),
                            strict=True):  # fmt: skip
                torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def erank_table(args: Args, steps: int = 4) -> None:
    check_same_erank_steps()
    print(f"ER's ascent step on continual Acrobot's networks (6 obs, 3 x 256 LeakyReLU actor and "
          f"critic, {ROLLOUT}-step rollout), {args.device}, torch {torch.__version__}, "
          "1 torch thread\n")  # fmt: skip
    print("| K seeds | way | seed-steps per second | speed-up over the loop |")
    print("|---|---|---|---|")
    loop_rate = None  # the loop's, at the largest K it ran: the reference for larger K

    def run(step, *inputs) -> None:
        for _ in range(steps):
            step(*inputs)

    for k in args.seeds:
        obs, rows = torch.randn(k, ROLLOUT, ACROBOT_OBS, device=args.device), []
        methods, agents, nets = erank_seeds(k, args.device)
        if k <= args.loop_up_to:
            loop_rate = steps * k / timed(run, erank_loop, methods, agents, obs,
                                          repeats=args.updates)  # fmt: skip
            rows.append(("loop", loop_rate))
        rate = steps * k / timed(run, erank_batched, methods, nets, obs, repeats=args.updates)
        rows.append(("batched", rate))
        for way, rate in rows:
            print(f"| {k} | {way} | {rate:,.1f} | {rate / loop_rate:.2f}x |", flush=True)


def ppo_step_table(args: Args) -> None:
    """The `train.py ppo --seeds` minibatch step of continual CartPole, in its parts: the batched
    forward and backward (agents/ppo_seeds.py `StackedNets`, the loss a sum of per-seed PPO
    losses), then the seeds' steps each as the single run takes it (its slice of the gradient,
    clip_grad_norm_, before_step, Optimizer.step) or on the stacks (`step_seeds_on_stacks`).
    Beside them, the floor of the forward and backward: their matrix products' arithmetic at
    the rate this core multiplies two 1024 x 1024 matrices."""
    big = torch.randn(1024, 1024, device=args.device)
    rate = 2 * 1024**3 / timed(torch.mm, big, big, repeats=20)  # FLOP/s
    hidden = list(zip([OBS, *HIDDEN], HIDDEN, strict=False))
    layers = [*hidden, (HIDDEN[-1], ACTIONS), *hidden, (HIDDEN[-1], 1)]  # the actor's, the critic's
    # per seed: each layer's forward and weight gradient, and its input's gradient but at the
    # first layer (the observations need none)
    flops = sum((2 if a == OBS else 3) * 2 * MINIBATCH * a * b for a, b in layers)
    print(f"continual-CartPole PPO's minibatch step in `ppo --seeds` (minibatches of {MINIBATCH},"
          f" 3 x 256 LeakyReLU actor and critic), {args.device}, torch {torch.__version__}, "
          f"1 torch thread; 1024^3 GEMM: {rate / 1e9:.0f} GFLOP/s\n")  # fmt: skip
    print("| K seeds | forward + backward, ms | per seed | its products at the GEMM rate, per "
          "seed | each seed's step, ms | the step on the stacks, ms | step speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for k in args.seeds:
        ppo_step_row(k, args, rate, flops)


def ppo_step_row(k: int, args: Args, rate: float, flops: int, steps: int = 50) -> None:
    """One row of `ppo_step_table`: K seeds, timed over `steps` minibatches."""
    from agents.networks import step_seeds_on_stacks, take_seed_gradient
    from regularizers.base import Regularizer

    pairs = networks(k, args.device)
    agents = [SimpleNamespace(actor=a, critic=c) for a, c in pairs]
    nets = StackedNets(agents)
    adams = [torch.optim.Adam([*a.parameters(), *c.parameters()], lr=1e-3, fused=True)
             for a, c in pairs]  # fmt: skip
    methods = [Regularizer() for _ in pairs]
    for method, (a, c), adam in zip(methods, pairs, adams, strict=True):
        method.attach({"actor": a, "critic": c}, adam, 0)
    batches = list(minibatches(k, rollout_data(k, args.device)))[:steps]
    found_inf = torch.zeros(k, device=args.device)

    def forward_backward() -> None:
        for mb in batches:
            logits, _ = nets.policy(mb["obs"])
            values, _ = nets.values(mb["obs"])
            for stack in nets.stacks:
                stack.grad = None
            ppo_loss(logits, values, mb).backward()

    forward_backward()
    gradients = [stack.grad.clone() for stack in nets.stacks]

    def restore() -> None:
        for _ in batches:
            for stack, grad in zip(nets.stacks, gradients, strict=True):
                stack.grad = grad.clone()

    def each_seed() -> None:
        for _ in batches:
            for stack, grad in zip(nets.stacks, gradients, strict=True):
                stack.grad = grad.clone()
            for index, ((actor, critic), adam, method) in enumerate(
                zip(pairs, adams, methods, strict=True)
            ):
                params = adam.param_groups[0]["params"]
                for param in params:
                    param.grad = None
                take_seed_gradient(actor, nets.actor, index)
                take_seed_gradient(critic, nets.critic, index)
                torch.nn.utils.clip_grad_norm_(params, 0.5)
                method.before_step()
                adam.found_inf = found_inf[index]
                adam.step()

    def on_stacks() -> None:
        for _ in batches:
            for stack, grad in zip(nets.stacks, gradients, strict=True):
                stack.grad = grad.clone()
            assert step_seeds_on_stacks(nets.stacks, adams, methods, 0.5, found_inf)

    n = len(batches)
    fb = timed(forward_backward, repeats=args.updates) / n
    copy = timed(restore, repeats=args.updates) / n  # the gradients put back, in both steps
    each = timed(each_seed, repeats=args.updates) / n - copy
    stacked_step = timed(on_stacks, repeats=args.updates) / n - copy
    print(f"| {k} | {fb * 1e3:.2f} | {fb / k * 1e3:.2f} | {flops / rate * 1e3:.2f} | "
          f"{each * 1e3:.2f} | {stacked_step * 1e3:.2f} | {each / stacked_step:.2f}x |",
          flush=True)  # fmt: skip


def main(args: Args) -> None:
    torch.set_num_threads(1)
    tables = {"ppo": ppo_table, "supervised": supervised_table, "sac": sac_table,
              "erank": erank_table, "ppo-step": ppo_step_table}  # fmt: skip
    for index, workload in enumerate(args.workload):
        if index:
            print()
        torch.manual_seed(0)
        tables[workload](args)


def ppo_table(args: Args) -> None:
    check_layer_order(networks(2))
    check_same_gradients()
    print(f"continual-CartPole PPO, {args.device}, torch {torch.__version__}, 1 torch thread\n")
    print("| K seeds | way | s per update | update speed-up per seed | s per 800 acting steps "
          "| acting speed-up per seed | seed-iterations per second |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    loop_per_seed = None  # (update s, acting s) per seed at the largest K the loop ran
    for k in args.seeds:
        data = rollout_data(k, args.device)
        obs = torch.randn(k, OBS, device=args.device)
        rows = []
        if k <= args.loop_up_to:
            pairs = networks(k, args.device)
            adams = [
                torch.optim.Adam([*a.parameters(), *c.parameters()], lr=1e-3, fused=True)
                for a, c in pairs
            ]
            loop_s = timed(loop_update, pairs, adams, data, repeats=args.updates)
            loop_act_s = timed(loop_act, pairs, obs, repeats=1)
            loop_per_seed = (loop_s / k, loop_act_s / k)
            rows.append(("loop", loop_s, loop_act_s))
        for way, update in (("vmap", vmap_update), ("bmm", bmm_update)):
            state = stacked(networks(k, args.device))
            params = [*state[0].values(), *state[1].values()]
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
            seconds = timed(update, state, optimizer, data, repeats=args.updates)
            act = timed(bmm_act, state, obs, repeats=1)  # the same stacked forward for both
            rows.append((way, seconds, act))
        for way, seconds, act in rows:
            update_up = loop_per_seed[0] * k / seconds
            act_up = loop_per_seed[1] * k / act
            print(f"| {k} | {way} | {seconds:.3f} | {update_up:.2f}x | {act:.3f} | {act_up:.2f}x "
                  f"| {k / (seconds + act):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
