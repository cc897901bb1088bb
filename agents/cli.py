"""From a mode's command line to its config: the learners (MODES), presets, and a resumed
run's saved config, each as the base the given flags are parsed over (train.py and the sweeps
both parse through `parse`).

A mode is a learner module in agents/ with an `Args` dataclass, a `LEARNER` (its presets and
what a resume may not change) and a `train(args, resumed)` function; adding a mode is one line
in MODES.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

import tyro

from validation import ConfigError


def _join_wrapped_docstring_lines() -> None:
    """A field's docstring continues on indented lines, and tyro keeps a line break before
    every line that does not start with a letter: join each paragraph's lines first, so that
    --help wraps each flag's sentences instead of breaking them where the source does."""
    strings = getattr(tyro, "_strings", None)
    original = getattr(strings, "remove_single_line_breaks", None)
    if original is None:  # another tyro: leave its help as it is
        return

    def joined(helptext: str) -> str:
        paragraphs = re.split(r"\n\s*\n", helptext)
        return original("\n\n".join(" ".join(p.split()) for p in paragraphs))

    strings.remove_single_line_breaks = joined


_join_wrapped_docstring_lines()

MODES = {
    "ppo": "agents.ppo",
    "sac": "agents.sac",
    "supervised": "agents.supervised",
}


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv (read before tyro parses the rest)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse(mode: str, argv: list[str]) -> tuple[Any, Any, Any]:
    """The mode's module, its Args (defaults <- preset or resumed config <- flags), and what a
    --resume read (`agents.checkpoints.resume_from`: the saved config and its checkpoint, read
    once and handed to the run) or None."""
    from agents.checkpoints import resume_from
    from agents.flags import baseline_config

    module = importlib.import_module(MODES[mode])
    if "--seeds" in argv and "seeds" not in {f.name for f in dataclasses.fields(module.Args)}:
        raise ConfigError(
            f"--seeds: {mode} has no seeds in one process yet (ppo and supervised have); run a "
            f"process a seed, e.g. train.py sweep {mode} ... --grid seed=1,2,3"
        )
    resume = flag_value(argv, "--resume")
    preset = flag_value(argv, "--preset")
    if resume is not None and preset is not None:
        raise ConfigError(
            "--preset cannot be combined with --resume: a resumed run starts from its saved config"
        )
    resumed = resume_from(resume, mode) if resume is not None else None
    saved = resumed[0] if resumed is not None else None
    defaults = baseline_config(module.Args, module.LEARNER, preset or "none", saved)
    args = tyro.cli(module.Args, default=defaults, args=argv, prog=f"train.py {mode}")
    return module, args, resumed
