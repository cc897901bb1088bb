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


def resume_values(argv: list[str]) -> list[str]:
    """The run directories after --resume (one, or several: `--resume DIR1 DIR2 ...`)."""
    if "--resume" not in argv:
        value = flag_value(argv, "--resume")
        return [value] if value is not None else []
    start = argv.index("--resume") + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("-")), len(argv))
    return argv[start:end]


# What may differ between the runs one --seeds process resumes: what a seed's run has as its own.
OWN_TO_A_SEED = ("seed", "seeds", "runs_dir", "wandb_tags", "resume")


def parse_resume_together(mode: str, module: Any, argv: list[str], run_dirs: list[str]) -> tuple:
    """`--resume DIR1 DIR2 ...`: the runs of one configuration (the K seeds of a `--seeds`
    process, or cells that differ only in seed) continued in one process from their checkpoints
    at one step. Returns the module, the Args of the first run with the flags given and
    `seeds` set to the runs' seeds in order, and each run's `resume_from` pair."""
    from agents.checkpoints import resume_together
    from agents.flags import baseline_config, flag_name, flat_config

    if "seeds" not in {f.name for f in dataclasses.fields(module.Args)}:
        raise ConfigError(
            f"--resume with several run directories: {mode} cannot resume seeds in one process "
            f"yet; resume each with train.py {mode} --resume RUN_DIR"
        )
    if "--seeds" in argv or "--preset" in argv:
        raise ConfigError(
            "--resume with several run directories takes their seeds and config from them; "
            "leave out --seeds and --preset"
        )
    resumed = resume_together(run_dirs, mode)
    first = flat_config(resumed[0][0])
    for (saved, _), run_dir in zip(resumed[1:], run_dirs[1:], strict=True):
        for key, value in flat_config(saved).items():
            if key not in OWN_TO_A_SEED and value != first.get(key):
                raise ConfigError(
                    f"--resume: {run_dir} is not the same configuration as {run_dirs[0]} "
                    f"({flag_name(key)} {value} against {first.get(key)}); resume each alone "
                    f"with train.py {mode} --resume RUN_DIR"
                )
    one = argv.index("--resume")
    argv = [*argv[: one + 2], *argv[one + 1 + len(run_dirs) :]]  # tyro sees one --resume
    defaults = baseline_config(module.Args, module.LEARNER, "none", resumed[0][0])
    args = tyro.cli(module.Args, default=defaults, args=argv, prog=f"train.py {mode}")
    seeds = tuple(saved.seed for saved, _ in resumed)
    return module, dataclasses.replace(args, seeds=seeds, resume=None), resumed


def parse(mode: str, argv: list[str]) -> tuple[Any, Any, Any]:
    """The mode's module, its Args (defaults <- preset or resumed config <- flags), and what a
    --resume read (`agents.checkpoints.resume_from`: the saved config and its checkpoint, read
    once and handed to the run) or None; for `--resume DIR1 DIR2 ...`, a list of those, one a
    run (`parse_resume_together`)."""
    from agents.checkpoints import resume_from
    from agents.flags import baseline_config

    module = importlib.import_module(MODES[mode])
    run_dirs = resume_values(argv)
    if len(run_dirs) > 1:
        return parse_resume_together(mode, module, argv, run_dirs)
    if "--seeds" in argv and "seeds" not in {f.name for f in dataclasses.fields(module.Args)}:
        raise ConfigError(
            f"--seeds: {mode} has no seeds in one process yet; run a "
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
