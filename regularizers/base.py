"""The one interface every plasticity method implements.

A learner (PPO, SAC, the supervised stream) holds one `Regularizer` and calls its moments at
fixed points of its loop, never asking which method it holds:

    reg.attach(nets, optimizer, seed)       # once, after the networks and optimizer exist
    loss = loss + reg.penalty(feats)        # every minibatch, feats from the same forward pass
    loss.backward(); clip gradients if the learner does
    reg.before_step()                       # gradient terms that are not a loss (L2's wd * theta)
    optimizer.step()
    metrics = reg.after_update(features_fn, pass_end)   # after every optimizer step
    reg.on_shift()                          # when the task changes

`nets` maps a name ("actor", "critic", "model") to an `nn.Module` whose forward returns
`(output, hidden_features)`, where `hidden_features` is the list of post-activation hidden
layer outputs, each of shape (batch, width). A net may offer `reset_parameters()`, which
redraws its initialisation in place (methods that need a fresh initial draw use it).

`feats` (penalty) and the value of `features_fn()` (after_update) map the same names to those
lists. `features_fn` is lazy: a method that needs a forward pass on "the current data" (the
whole PPO rollout, the last examples of the supervised stream) calls it, and only then does the
learner pay for that pass. It must be called with gradients enabled (a method that only reads
the features may call it under `torch.no_grad()`). `feats` are the update's own batch, from the
forward pass of the loss: a method may read them there without adding a loss term (CBP's
utilities) and keep `only_coupled_decay()` True, reading `features_fn()` instead when a fused
update skipped `penalty` (the supervised stream's, whose `features_fn` then covers that update's
examples).

`before_step` edits `.grad` between the backward pass (and any gradient clipping) and the
optimizer step, as an optimizer's own `weight_decay` would. A learner with a fused update that
never fills `.grad` (the supervised stream's online SGD step) may run only a method whose
`only_coupled_decay()` is True, and folds `coupled_decay() * theta` into its step itself.

`pass_end` is True on the last optimizer step of one pass over the current data (the end of a
PPO epoch); methods with a "once per pass" cadence act then. A learner with no passes (the
supervised stream) makes `features_fn` cover its last `recent_updates()` updates' examples.

Two more things a method may ask of the learner and its networks:
- `network_options(**options)`: the keyword arguments the learner builds every network with,
  its own architecture flags with what the method needs switched on (`layernorm-l2`: LayerNorm
  in the hidden layers). Architecture stays in the network config; the method only names it.
- `unit_layers()` on a net, for methods that replace single hidden units (CBP, ReDo): one
  `UnitLayer` per hidden feature, in the order of `hidden_features`, naming the parameters that
  compute the layer's units and those that read them. A net used with such a method must offer
  it (MLP, GaussianActor and Critic do); `unit_layers(name, net)` gives a one-line error if not.
  `replace_units` re-initialises chosen units from a fresh draw of the net (`FreshDraws`) and
  zeroes their outgoing weights and their optimizer state (`reset_optimizer_state`).

Every moment defaults to doing nothing, so a method fills in only what it uses.

A `--seeds` learner holds one instance per seed and calls each seed's moments on that seed's
own modules, except `after_update`, which it calls for all seeds at once through
`after_update_seeds(methods, features_fns, stacks, pass_end)`: by default each seed's own
`after_update`; a method whose work batches across seeds (ER: one batched SVD for all seeds)
overrides the classmethod `Regularizer.after_update_seeds` and works on `stacks` (`SeedStacks`).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Features = dict[str, list[Tensor]]
FeaturesFn = Callable[[], Features]


@dataclass
class SeedStacks:
    """K seeds' networks as a method batched across seeds sees them (`--seeds`: the seeds'
    parameters are views into tensors stacked along a leading seed axis,
    agents.networks.stack_parameters)."""

    params: dict[str, dict[str, Tensor]]
    """net name -> {parameter name: its stack (K, *shape)}"""
    features: Callable[[dict[str, dict[str, Tensor]]], Features]
    """stacks like `params` (or leaves standing in for them) -> each net's hidden features, each
    (K, batch, width), on every seed's current data (what each seed's `features_fn` covers)"""


def after_update_seeds(
    methods: list[Regularizer],
    features_fns: list[FeaturesFn],
    stacks: SeedStacks | None,
    pass_end: bool,
) -> list[dict[str, float]]:
    """`after_update` of K seeds' methods in a `--seeds` process, batched where the method
    batches (see `Regularizer.after_update_seeds`); each seed's metrics."""
    return type(methods[0]).after_update_seeds(methods, features_fns, stacks, pass_end)


class Regularizer:
    """The no-op method (`--regularizer none`); every other method subclasses it."""

    name = "none"
    network_requirements: dict = {}
    """architecture options the method needs, switched on in every network the learner builds
    (layernorm-l2: {"layer_norm": True}); see `network_options`"""

    def network_options(self, **options) -> dict:
        """The keyword arguments every network of the learner is built with: the learner's own
        architecture flags (`options`, e.g. layer_norm=args.layer_norm) with what this method
        requires switched on. Every learner builds its networks through this one call."""
        return {**options, **self.network_requirements}

    def recent_updates(self) -> int:
        """How many recent updates' examples `features_fn` should cover in a learner with no
        passes over its data (the supervised stream): the method's cadence (ER's and ReDo's
        `every`); 0 = only the last update's."""
        return 0

    def attach(
        self, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, seed: int
    ) -> None:
        """Remember the networks and optimizer; snapshot whatever the method needs (theta_0, ...)."""
        self.nets = nets
        self.optimizer = optimizer
        self.seed = seed

    def parameters(self) -> Iterator[nn.Parameter]:
        for net in self.nets.values():
            yield from net.parameters()

    def penalty(self, feats: Features) -> Tensor:
        """A term added to the training loss (a zero scalar when the method has none)."""
        return torch.zeros((), device=next(self.parameters()).device)

    def only_coupled_decay(self) -> bool:
        """True when `penalty` and `before_step` add nothing to the gradient but
        `coupled_decay() * theta`, so a fused update may fold that term in and skip both."""
        cls = type(self)
        return cls.penalty is Regularizer.penalty and cls.before_step is Regularizer.before_step

    def coupled_decay(self) -> float:
        """c of the `c * theta` that `before_step` adds to every parameter's gradient (0: none)."""
        return 0.0

    def before_step(self) -> None:
        """Between backward (and clipping) and the optimizer step: add c * theta to each `.grad`."""
        decay = self.coupled_decay()
        if decay:
            # dict.fromkeys: a parameter two nets share is decayed once, not twice. One foreach
            # call for all of them: one kernel launch per device, not one per parameter.
            params = [p for p in dict.fromkeys(self.parameters()) if p.grad is not None]
            with torch.no_grad():
                torch._foreach_add_([p.grad for p in params], params, alpha=decay)

    def after_update(self, features_fn: FeaturesFn, pass_end: bool) -> dict[str, float]:
        """Act after an optimizer step (an extra ascent step, shrink-perturb, ...); return metrics."""
        return {}

    def on_shift(self) -> dict[str, float]:
        """Act when the task changes (e.g. reset, shrink-perturb at the task boundary)."""
        return {}

    @classmethod
    def after_update_seeds(
        cls,
        methods: list[Regularizer],
        features_fns: list[FeaturesFn],
        stacks: SeedStacks | None,
        pass_end: bool,
    ) -> list[dict[str, float]]:
        """`after_update` of K seeds' instances of this method (one configuration: the same
        flags, the same number of updates so far) after each seed's optimizer step; each
        seed's metrics. This default calls each seed's own; a method whose work batches
        across seeds (ER's SVDs) overrides it and uses `stacks` when it is given."""
        return [
            method.after_update(features_fn, pass_end)
            for method, features_fn in zip(methods, features_fns, strict=True)
        ]

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume the method exactly (theta_0, counters, RNG)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Combined(Regularizer):
    """Several methods at once (e.g. `l2-er` = L2 + effective-rank): penalties add, and every
    moment is passed to each part in order."""

    def __init__(self, parts: list[Regularizer], name: str):
        self.parts = parts
        self.name = name

    def network_options(self, **options):
        for part in self.parts:
            options = part.network_options(**options)
        return options

    def recent_updates(self):
        return max(part.recent_updates() for part in self.parts)

    def attach(self, nets, optimizer, seed):
        super().attach(nets, optimizer, seed)
        for part in self.parts:
            part.attach(nets, optimizer, seed)

    def penalty(self, feats):
        return sum((part.penalty(feats) for part in self.parts), super().penalty(feats))

    def only_coupled_decay(self):
        return all(part.only_coupled_decay() for part in self.parts)

    def coupled_decay(self):
        return sum(part.coupled_decay() for part in self.parts)

    def before_step(self):
        for part in self.parts:
            part.before_step()

    def after_update(self, features_fn, pass_end):
        metrics: dict[str, float] = {}
        for part in self.parts:
            metrics.update(part.after_update(features_fn, pass_end))
        return metrics

    @classmethod
    def after_update_seeds(cls, methods, features_fns, stacks, pass_end):
        metrics: list[dict[str, float]] = [{} for _ in methods]
        for index, part in enumerate(methods[0].parts):
            parts = [method.parts[index] for method in methods]
            for seed_metrics, part_metrics in zip(
                metrics,
                type(part).after_update_seeds(parts, features_fns, stacks, pass_end),
                strict=True,
            ):
                seed_metrics.update(part_metrics)
        return metrics

    def on_shift(self):
        metrics: dict[str, float] = {}
        for part in self.parts:
            metrics.update(part.on_shift())
        return metrics

    def state_dict(self):
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state):
        for part in self.parts:
            part.load_state_dict(state[part.name])


# --- Shared by the methods that re-initialise parameters (reset, CBP, ReDo, shrink-perturb) ----


STREAM_TAG = 0x5EED
"""Mixed with the run's seed so that a method's stream differs from every stream the run seeds."""


def method_stream_seed(seed: int, method: str) -> int:
    """The seed of a method's own stream of fresh draws, derived from the run's seed and the
    method's name (so two methods in one run never draw the same numbers)."""
    tag = zlib.crc32(method.encode())
    return int(np.random.SeedSequence([seed, STREAM_TAG, tag]).generate_state(1)[0])


def named_parameters(nets: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """Every parameter of `nets` as "<net>.<parameter>" (so a checkpoint says which state
    belongs to which weight); a parameter two nets share keeps its first name, once."""
    names: dict[nn.Parameter, str] = {}
    for net_name, net in nets.items():
        for param_name, param in net.named_parameters():
            names.setdefault(param, f"{net_name}.{param_name}")
    return {name: param for param, name in names.items()}


def reinitialise(net: nn.Module) -> None:
    """Redraw `net`'s initialisation in place: its own reset_parameters(), else its layers'."""
    if hasattr(net, "reset_parameters"):
        net.reset_parameters()
        return
    for module in net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


class FreshDraws:
    """A method's own random stream of fresh initialisations of a network.

    `draw(net)` returns a CPU copy of `net` re-initialised from this stream, taken inside
    `torch.random.fork_rng` on the CPU, so the run's random streams are never advanced. The
    stream's state (`rng_state`) belongs in the method's `state_dict`, so a resumed run draws
    what an uninterrupted one would.
    """

    def __init__(self, seed: int):
        self.rng_state = torch.Generator().manual_seed(seed).get_state()

    def draw(self, net: nn.Module) -> nn.Module:
        fresh = copy.deepcopy(net).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            reinitialise(fresh)
            self.rng_state = torch.get_rng_state()
        return fresh

    def load_state(self, rng_state: Tensor) -> None:
        self.rng_state = rng_state.to("cpu", copy=True)


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, index: tuple | None = None
) -> None:
    """Forget the optimizer's history of `param[index]`, or of all of `param` (index None).

    Part of a parameter: every per-element state tensor (Adam's exp_avg and exp_avg_sq, AMSGrad's
    max_exp_avg_sq, SGD's momentum_buffer: those shaped like the parameter) is zeroed there.
    Adam's step count is one number per parameter tensor in PyTorch, so it is not reset per unit
    (Dohare et al.'s AdamGnT keeps one per element): a replaced unit's first Adam steps use the
    tensor's bias correction, with zeroed moments. All of a parameter: its state is dropped, and
    the optimizer starts it afresh on its next step, step count included.
    """
    if index is None:
        optimizer.state.pop(param, None)
        return
    for key, value in optimizer.state.get(param, {}).items():
        if key != "step" and torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0


@dataclass
class UnitLayer:
    """One hidden layer's units, as the parameters around them (for methods that replace units).

    `incoming` hold the units on their first axis: the rows of the weight that computes them,
    their biases (and a LayerNorm's gain and shift). `outgoing` hold them on their last axis:
    the columns of the next layer's weight, which reads them.
    """

    incoming: list[nn.Parameter]
    outgoing: list[nn.Parameter]

    def width(self) -> int:
        return self.incoming[0].shape[0]


def unit_layers(name: str, net: nn.Module) -> list[UnitLayer]:
    """`net.unit_layers()`, or a one-line error saying the net must offer it."""
    if not hasattr(net, "unit_layers"):
        raise TypeError(
            f"network '{name}' ({type(net).__name__}) has no unit_layers(), which methods that "
            "replace hidden units (cbp, redo) need (see regularizers/base.py)"
        )
    return net.unit_layers()


@torch.no_grad()
def replace_units(
    layer: UnitLayer, fresh: UnitLayer, units: Tensor, optimizer: torch.optim.Optimizer
) -> None:
    """Re-initialise `units` of `layer`: their incoming parameters from the same units of
    `fresh` (the same layer of a fresh draw of the net), their outgoing weights to zero, and
    the optimizer's history of both forgotten (Dohare et al. 2024; Sokar et al. 2023)."""
    if units.numel() == 0:
        return
    for param, new in zip(layer.incoming, fresh.incoming, strict=True):
        index = units.to(param.device)
        param[index] = new[units.cpu()].to(param.device, param.dtype)
        reset_optimizer_state(optimizer, param, index)
    for param in layer.outgoing:
        index = (Ellipsis, units.to(param.device))
        param[index] = 0
        reset_optimizer_state(optimizer, param, index)


# --- How a method file declares itself (regularizers/__init__.py collects them) ----------------


@dataclass(frozen=True)
class FlagGroup:
    """A method's flags: its config dataclass, whose fields become `--<field>.<name>` flags."""

    field: str
    """the field of RegularizerFlags (and the flags' prefix): e.g. l2_init -> --l2-init.*"""
    config: type
    """the config dataclass (each field with a docstring: its help)"""
    help: str
    """one line on the method, shown above its flags in --help"""
    rules: dict[str, str] = field(default_factory=dict)
    """config field -> the rule its value must meet (validation.require_all's rules)"""


@dataclass(frozen=True)
class Method:
    """What `--regularizer NAME` builds."""

    name: str
    build: Callable[[Any], Regularizer]
    """the run's flags (RegularizerFlags) -> the method"""
    reads: tuple[str, ...] = ()
    """the flag groups it reads (a given flag of another group is refused as having no effect)"""


METHODS = [Method("none", lambda flags: Regularizer())]
