"""What a training loop reports as it goes: the returns of the episodes it finishes, and a
progress bar on a terminal."""

from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from agents.run import Run


class EpisodeStats:
    """Returns and lengths of the episodes in flight in a vector env. Episodes that end at the
    same vector step are logged as one line (their mean, and how many), so that a step has one
    value per metric, in metrics.jsonl as in W&B."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent: list[float] = []
        self.rollout: list[float] = []  # returns of the episodes ended since rollout_return()

    def step(self, rewards: np.ndarray, done: np.ndarray, run: Run, global_step: int) -> None:
        self.returns += rewards
        self.lengths += 1
        ended = np.flatnonzero(done)
        if ended.size:
            run.log(
                global_step,
                {
                    "charts/episodic_return": float(self.returns[ended].mean()),
                    "charts/episodic_length": float(self.lengths[ended].mean()),
                    "charts/episodes": int(ended.size),
                },
            )
            self.recent = [*self.recent, *self.returns[ended].tolist()][-10:]
            self.rollout += self.returns[ended].tolist()
            self.returns[ended], self.lengths[ended] = 0.0, 0

    def rollout_return(self) -> dict[str, float]:
        """{"charts/rollout_return": the mean return of the episodes that ended since the last
        call} (a PPO iteration's mean return, C-CHAIN's learning-curve point), or {} if none
        ended; the next call counts from here."""
        ended, self.rollout = self.rollout, []
        return {"charts/rollout_return": float(np.mean(ended))} if ended else {}

    def summary(self) -> str:
        return f"{np.mean(self.recent):.0f}" if self.recent else "-"


def progress_bar(total: int, initial: int, desc: str) -> tqdm:
    """A progress bar on a terminal; silent when output goes to a file or a pipe (CI, logs)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
