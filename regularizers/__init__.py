"""Plasticity methods, one file each, all implementing `Regularizer` (see base.py).

A learner's Args inherits `RegularizerFlags`, so every method's flags appear flat on its
command line, e.g. `--regularizer l2-er --l2.weight-decay 1e-3 --erank.lr 1e-2`, and builds its
method with `build_regularizer(args)`. A method's file declares what the rest is made from:
`FLAGS` (its config dataclass, the flags' prefix, one line of help, the rules its values must
meet) and `METHODS` (each `--regularizer` name it provides, how it is built, which flag groups
it reads: a flag of a method that is not selected is refused rather than silently ignored).
Adding a method is its file and one line in METHOD_FILES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field, fields
from typing import Annotated, Any, Literal

import tyro

from regularizers import (
    base,
    cbp,
    erank,
    l2,
    l2_init,
    layernorm_l2,
    parseval,
    redo,
    reset,
    shrink_perturb,
    spectral,
)
from regularizers.base import Combined, FlagGroup, Method, Regularizer
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
from validation import ConfigError, flag_name, require_all

# One line per method file, in the order --help lists their names and flags.
METHOD_FILES = [base, l2, l2_init, erank, shrink_perturb, cbp, redo, layernorm_l2, spectral, reset,
                parseval]  # fmt: skip

METHODS: dict[str, Method] = {m.name: m for file in METHOD_FILES for m in file.METHODS}
FLAG_GROUPS: list[FlagGroup] = [file.FLAGS for file in METHOD_FILES if hasattr(file, "FLAGS")]
RegularizerName = Literal[tuple(METHODS)]  # type: ignore[valid-type]

# The plasticity method and every method's flags (a mixin of each learner's Args).
RegularizerFlags: Any = dataclasses.make_dataclass(
    "RegularizerFlags",
    [
        (
            "regularizer",
            Annotated[RegularizerName, tyro.conf.arg(help=(
                "which plasticity method; each method's own flags are below (l2-er uses --l2.* "
                "and --erank.*, cbp-l2 --l2.* and --cbp.*)"
            ))],
            "none",
        ),
        *(
            (group.field, Annotated[group.config, tyro.conf.arg(help=group.help)],
             field(default_factory=group.config))
            for group in FLAG_GROUPS
        ),
    ],
    namespace={"__doc__": "The plasticity method and every method's flags (a mixin of each "
               "learner's Args).", "__module__": __name__},
)  # fmt: skip

REGULARIZERS: dict[str, Callable[[Any], Regularizer]] = {
    name: method.build for name, method in METHODS.items()
}
METHOD_FLAGS: dict[str, tuple[str, ...]] = {name: method.reads for name, method in METHODS.items()}


def check_flags(flags: Any) -> None:
    """Raise ConfigError naming the first flag no method can run with (NaN breaks every rule)."""
    require_all(
        [
            (flag_name(f"{group.field}.{name}"), getattr(getattr(flags, group.field), name), rule)
            for group in FLAG_GROUPS
            for name, rule in group.rules.items()
        ]
    )


def unused_flags(flags: Any) -> dict[str, str]:
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


def build_regularizer(flags: Any) -> Regularizer:
    """The method `flags.regularizer` names, built from its flags (after checking them)."""
    if flags.regularizer not in REGULARIZERS:
        raise ConfigError(
            f"--regularizer must be one of {list(REGULARIZERS)}, got {flags.regularizer!r}"
        )
    check_flags(flags)
    return REGULARIZERS[flags.regularizer](flags)


__all__ = [
    "FLAG_GROUPS",
    "METHODS",
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
