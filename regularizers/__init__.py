"""Plasticity methods, one file each, all implementing `Regularizer` (see base.py).

A learner's Args inherits `RegularizerFlags`, so every method's flags appear flat on its
command line, e.g. `--regularizer l2-er --l2.weight-decay 1e-3 --erank.lr 1e-2`, and builds its
method with `build_regularizer(args)`. Adding a method is one file, one config field here, one
line in `REGULARIZERS` and one in `METHOD_FLAGS` (the flags it reads: a flag of a method that
is not selected is refused rather than silently ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

from regularizers.base import Combined, Regularizer
from regularizers.cbp import CBP, CBPConfig
from regularizers.erank import ERank, ERankConfig, effective_rank
from regularizers.l2 import L2, L2Config
from regularizers.l2_init import L2Init, L2InitConfig
from regularizers.layernorm_l2 import LayerNormL2, LayerNormL2Config
from regularizers.parseval import Parseval, ParsevalConfig
from regularizers.redo import ReDo, ReDoConfig
from regularizers.reset import Reset
from regularizers.shrink_perturb import ShrinkPerturb, ShrinkPerturbConfig
from regularizers.spectral import Spectral, SpectralConfig
from validation import ConfigError, require_all

RegularizerName = Literal[
    "none",
    "l2",
    "l2-init",
    "erank",
    "l2-er",
    "shrink-perturb",
    "cbp",
    "cbp-l2",
    "redo",
    "layernorm-l2",
    "spectral",
    "reset",
    "parseval",
]


@dataclass
class RegularizerFlags:
    """The plasticity method and every method's flags (a mixin of each learner's Args)."""

    regularizer: RegularizerName = "none"
    """which plasticity method; each method's own flags are below (l2-er uses --l2.* and
    --erank.*, cbp-l2 --l2.* and --cbp.*)"""
    l2: L2Config = field(default_factory=L2Config)
    """L2: coupled weight decay toward zero on all parameters"""
    l2_init: L2InitConfig = field(default_factory=L2InitConfig)
    """L2 Init: squared distance to the initial parameters (Kumar et al. 2023)"""
    erank: ERankConfig = field(default_factory=ERankConfig)
    """ER: gradient-ascent steps on the effective rank of the hidden features"""
    shrink_perturb: ShrinkPerturbConfig = field(default_factory=ShrinkPerturbConfig)
    """Shrink & Perturb: theta <- shrink * theta + noise * fresh init (Ash & Adams 2020)"""
    cbp: CBPConfig = field(default_factory=CBPConfig)
    """CBP: replace mature low-utility hidden units with fresh ones (Dohare et al. 2024)"""
    redo: ReDoConfig = field(default_factory=ReDoConfig)
    """ReDo: re-initialise tau-dormant hidden units every N updates (Sokar et al. 2023)"""
    layernorm_l2: LayerNormL2Config = field(default_factory=LayerNormL2Config)
    """LayerNorm + L2: LayerNorm in the hidden layers and coupled weight decay (Lyle et al. 2024)"""
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    """spectral regularisation: (sigma_max(W)^2 - k)^2 per weight matrix, L2 on biases"""
    parseval: ParsevalConfig = field(default_factory=ParsevalConfig)
    """Parseval: ||A - (tr A / m) I||_F^2 on each hidden layer's feature Gram A (as SPHERE)"""


REGULARIZERS: dict[str, Callable[[RegularizerFlags], Regularizer]] = {
    "none": lambda flags: Regularizer(),
    "l2": lambda flags: L2(flags.l2),
    "l2-init": lambda flags: L2Init(flags.l2_init),
    "erank": lambda flags: ERank(flags.erank),
    "l2-er": lambda flags: Combined([L2(flags.l2), ERank(flags.erank)], name="l2-er"),
    "shrink-perturb": lambda flags: ShrinkPerturb(flags.shrink_perturb),
    "cbp": lambda flags: CBP(flags.cbp),
    # Dohare et al. 2024 ran CBP with L2 in RL; the paper compares against that pair.
    "cbp-l2": lambda flags: Combined([L2(flags.l2), CBP(flags.cbp)], name="cbp-l2"),
    "redo": lambda flags: ReDo(flags.redo),
    "layernorm-l2": lambda flags: LayerNormL2(flags.layernorm_l2),
    "spectral": lambda flags: Spectral(flags.spectral),
    "reset": lambda flags: Reset(),
    "parseval": lambda flags: Parseval(flags.parseval),
}

METHOD_FLAGS: dict[str, tuple[str, ...]] = {
    # --regularizer name: the RegularizerFlags fields its builder above reads
    "none": (),
    "l2": ("l2",),
    "l2-init": ("l2_init",),
    "erank": ("erank",),
    "l2-er": ("l2", "erank"),
    "shrink-perturb": ("shrink_perturb",),
    "cbp": ("cbp",),
    "cbp-l2": ("l2", "cbp"),
    "redo": ("redo",),
    "layernorm-l2": ("layernorm_l2",),
    "spectral": ("spectral",),
    "reset": (),
    "parseval": ("parseval",),
}


def check_flags(flags: RegularizerFlags) -> None:
    """Raise ConfigError naming the first flag no method can run with (NaN breaks every rule)."""
    require_all(
        [
            ("--l2.weight-decay", flags.l2.weight_decay, ">= 0"),
            ("--l2-init.strength", flags.l2_init.strength, ">= 0"),
            ("--erank.lr", flags.erank.lr, ">= 0"),
            ("--erank.every", flags.erank.every, ">= 0"),
            ("--shrink-perturb.shrink", flags.shrink_perturb.shrink, "in (0, 1]"),
            ("--shrink-perturb.noise", flags.shrink_perturb.noise, ">= 0"),
            ("--shrink-perturb.every", flags.shrink_perturb.every, ">= 0"),
            ("--cbp.replacement-rate", flags.cbp.replacement_rate, "in [0, 1]"),
            ("--cbp.maturity", flags.cbp.maturity, ">= 0"),
            ("--cbp.decay", flags.cbp.decay, "in [0, 1)"),
            ("--redo.tau", flags.redo.tau, ">= 0"),
            ("--redo.every", flags.redo.every, ">= 1"),
            ("--layernorm-l2.weight-decay", flags.layernorm_l2.weight_decay, ">= 0"),
            ("--spectral.strength", flags.spectral.strength, ">= 0"),
            ("--spectral.target", flags.spectral.target, ">= 0"),
            ("--spectral.power-iterations", flags.spectral.power_iterations, ">= 1"),
            ("--parseval.strength", flags.parseval.strength, ">= 0"),
        ]
    )


def unused_flags(flags: RegularizerFlags) -> dict[str, str]:
    """{config field: why it has no effect} for the flags of the methods not selected."""
    used = set(METHOD_FLAGS.get(flags.regularizer, ()))
    unused = {}
    for f in fields(RegularizerFlags):
        if f.name != "regularizer" and f.name not in used:
            users = [name for name, reads in METHOD_FLAGS.items() if f.name in reads]
            unused[f.name] = (
                f"it is a flag of --regularizer {' / '.join(users)}, and this run uses "
                f"--regularizer {flags.regularizer}"
            )
    return unused


def build_regularizer(flags: RegularizerFlags) -> Regularizer:
    """The method `flags.regularizer` names, built from its flags (after checking them)."""
    if flags.regularizer not in REGULARIZERS:
        raise ConfigError(
            f"--regularizer must be one of {list(REGULARIZERS)}, got {flags.regularizer!r}"
        )
    check_flags(flags)
    return REGULARIZERS[flags.regularizer](flags)


__all__ = [
    "METHOD_FLAGS",
    "REGULARIZERS",
    "CBP",
    "CBPConfig",
    "Combined",
    "ERank",
    "ERankConfig",
    "L2",
    "L2Config",
    "L2Init",
    "L2InitConfig",
    "LayerNormL2",
    "LayerNormL2Config",
    "Parseval",
    "ParsevalConfig",
    "ReDo",
    "ReDoConfig",
    "Regularizer",
    "RegularizerFlags",
    "RegularizerName",
    "Reset",
    "ShrinkPerturb",
    "ShrinkPerturbConfig",
    "Spectral",
    "SpectralConfig",
    "build_regularizer",
    "check_flags",
    "effective_rank",
    "unused_flags",
]
