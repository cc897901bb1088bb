"""The one error for a configuration that cannot run, and the rules flags are checked against.

Every part that checks a flag (envs, regularizers, diagnostics, the learners, the run
lifecycle) raises `ConfigError` directly, with a message of one line that names the flag.
train.py prints it as `error: <message>` and exits with status 2; nothing else is caught
that way, so a bug still shows its traceback.

    require("--gamma", args.gamma, "in [0, 1]")
    require_all([("--num-envs", args.num_envs, ">= 1"), ("--learning-rate", lr, "> 0")])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(ValueError):
    """A bad user configuration: one line naming the offending flag."""


RULES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda value: value > 0,
    ">= 0": lambda value: value >= 0,
    ">= 1": lambda value: value >= 1,
    "in (0, 1]": lambda value: 0 < value <= 1,
    "in [0, 1]": lambda value: 0 <= value <= 1,
    "in [0, 1)": lambda value: 0 <= value < 1,
    "finite": lambda value: True,
    "a seed in [0, 2**32)": lambda value: 0 <= value < 2**32,
}


def require(flag: str, value: Any, rule: str) -> None:
    """Raise ConfigError unless `value` (a number, or each number of a tuple) obeys `rule`.

    NaN and infinity break every rule: a flag is never meant to be either."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ConfigError(f"{flag} must be a number, got {item!r}")
        if not (math.isfinite(item) and RULES[rule](item)):
            shown = value if len(values) == 1 else f"{tuple(values)}"
            raise ConfigError(f"{flag} must be {rule}, got {shown}")


def require_all(checks: Iterable[tuple[str, Any, str]]) -> None:
    """`require` for each (flag, value, rule), in order: the first that fails is reported."""
    for flag, value, rule in checks:
        require(flag, value, rule)


def require_widths(flag: str, widths: tuple[int, ...]) -> None:
    """Hidden layer widths: at least one layer, each at least one unit wide."""
    if not widths:
        raise ConfigError(f"{flag} needs at least one hidden layer")
    require(flag, widths, ">= 1")


def flag_name(field: str) -> str:
    """The command-line flag of a (dotted) config field: l2.weight_decay -> --l2.weight-decay."""
    return "--" + field.replace("_", "-")
