"""The flags every learner shares (RunFlags), what the lifecycle knows of a learner (Learner),
presets, and the checks on what a run was given: which flags changed from the defaults (or from
a resumed run's), which cannot change on a resume, and which would have no effect."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.records import jsonable
from validation import ConfigError, flag_name


@dataclass
class RunFlags:
    """Flags every learner shares for naming, tracking, checkpointing and resuming a run."""

    track: bool = False
    """log to Weights & Biases as well as to the run directory (mode follows WANDB_MODE; without a
    key or a network it falls back to offline with one line)"""
    wandb_project_name: str = "plasticity"
    """the W&B project"""
    wandb_entity: str | None = None
    """the W&B entity (team or user); None uses your default"""
    wandb_group: str | None = None
    """the W&B group; None groups by environment and shifts, so regularizers compare side by side"""
    wandb_tags: tuple[str, ...] = ()
    """extra W&B tags (the regularizer's name is always added)"""
    runs_dir: str = "runs"
    """where run directories are created"""
    checkpoint_every: int = 100_000
    """env steps (or examples) between checkpoints; 0 saves only at the end (and on Ctrl-C)"""
    keep_checkpoints: int = 3
    """how many step_<N>.pt files to keep (latest.pt is the newest of them)"""
    resume: str | None = None
    """a run directory to continue from its newest good checkpoint: its saved config is used, and
    flags given here replace it and take effect (e.g. a longer --total-timesteps, a smaller
    --learning-rate); architecture, env and seed cannot change. Several (--resume DIR1 DIR2
    ...): the seeds of one configuration, resumed together in one process"""


@dataclass(frozen=True)
class Learner:
    """What the lifecycle needs to know about a learner (each agent module has one)."""

    mode: str
    """its train.py mode (ppo, sac, supervised)"""
    presets: dict[str, dict]
    """named sets of defaults (`--preset NAME`)"""
    fixed_on_resume: tuple[str, ...]
    """config fields a resumed run cannot change (the checkpoint's shapes or meaning depend on them)"""
    unused_flags: Callable[[Any], dict[str, str]] = lambda args: {}
    """args -> {field: why it has no effect in this configuration}, for the learner's own flags"""


def baseline_config(args_type: type, learner: Learner, preset: str, saved: Any = None) -> Any:
    """The config a run's flags are given against: a resumed run's saved config, else its
    preset's defaults, else the learner's defaults. Which flags were "given" (and so must have
    an effect, or must not change on a resume) is the difference from this."""
    if saved is not None:
        return saved
    if preset != "none":
        return preset_defaults(args_type, learner, preset)
    return args_type()


def preset_defaults(args_type: type, learner: Learner, preset: str) -> Any:
    """The defaults of `--preset NAME`: the one place presets are applied (train.py, the run's
    check of which flags were given, and tests all come here)."""
    if preset not in learner.presets:
        raise ConfigError(
            f"unknown --preset {preset!r} for {learner.mode}; choose one of: {', '.join(learner.presets)}"
        )
    return dataclasses.replace(args_type(), preset=preset, **learner.presets[preset])


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config as {dotted field: value} over its nested dataclasses (l2.weight_decay: 1e-4)."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_config(value, f"{prefix}{f.name}."))
        else:
            flat[prefix + f.name] = value
    return flat


def changed_flags(before: Any, after: Any) -> dict[str, tuple[Any, Any]]:
    """{--flag: (old, new)} for every config field that differs (the flags that were given)."""
    old, new = flat_config(before), flat_config(after)
    return {
        flag_name(key): (old.get(key), value)
        for key, value in new.items()
        if key not in ("resume", "preset") and jsonable(old.get(key)) != jsonable(value)
    }


def check_fixed_flags(learner: Learner, changes: dict[str, tuple[Any, Any]]) -> None:
    for key in learner.fixed_on_resume:
        for flag, (old, new) in changes.items():
            if flag == flag_name(key) or flag.startswith(flag_name(key) + "."):
                raise ConfigError(
                    f"{flag} cannot change on a resume: the run has {old}, the flags give {new} "
                    "(start a new run for that)"
                )


def unused_given_flags(args: Any, learner: Learner, given: set[str]) -> dict[str, str]:
    """{flag: why it has no effect} for the given flags that have none in this configuration."""
    return {
        flag: why
        for key, why in unused_fields(args, learner).items()
        for flag in sorted(given)
        if flag == flag_name(key) or flag.startswith(flag_name(key) + ".")
    }


def unused_fields(args: Any, learner: Learner) -> dict[str, str]:
    """{config field: why it has no effect} in this configuration, whatever its value."""
    from diagnostics import unused_flags as unused_diagnostics_flags
    from envs import unused_flags as unused_shift_flags
    from regularizers import unused_flags as unused_method_flags

    unused = {
        **unused_shift_flags(args),
        **unused_method_flags(args),
        **unused_diagnostics_flags(args),
        **learner.unused_flags(args),
    }
    if not args.track:
        unused.update(
            dict.fromkeys(
                ("wandb_project_name", "wandb_entity", "wandb_group", "wandb_tags"),
                "it is a W&B flag and --track is off",
            )
        )
    return unused


def check_unused_flags(args: Any, learner: Learner, given: set[str]) -> None:
    """Refuse a flag that was given but has no effect in this configuration."""
    for flag, why in unused_given_flags(args, learner, given).items():
        raise ConfigError(f"{flag} has no effect here: {why}")
