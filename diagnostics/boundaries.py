"""When a task boundary is measured: one tracker for every learner.

A boundary has two sides: the end of the old task (its last data, on the networks that finished
it) and the init of the new one (its first data, before the learner has adapted to it). The
end is known when the task ends; the init needs data of the new task, which an RL learner
collects only after the shift (a PPO rollout, SAC's transitions). So a learner calls:

    boundaries.begin(step, task_end, task_init, end=probe)   when a task begins (the run's
        start too: no end); the boundary now waits for its init
    boundaries.arrived(n)   as n samples of the new task are collected: True once the waiting
        boundary has the samples it waits for (`wanted`); the learner then calls
    boundaries.measure(init=probe)   which writes the boundary: end and init in one record at
        the step the task began (a boundary still waiting when the next one begins is written
        there, with the init measured on what arrived or without it)
    boundaries.finish(step, task, end=probe)   at the run's end: the last task's end.

The supervised learner has its new task's data at once: begin, then measure. The tracker holds
what waits; the learner decides what the probes see (which samples, which networks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diagnostics.hooks import Diagnostics, Probe


@dataclass
class Boundary:
    """A task boundary waiting for its init measurement."""

    step: int
    """the step at which the new task began (the record's step)"""
    task_end: int | None
    """the task that ended there (None at the run's start)"""
    task_init: int
    """the task that began there"""
    end: Probe | None
    """the old task's last data on the networks that finished it (None: not measured)"""
    nets: Any = None
    """what the learner keeps for the init (e.g. SAC's networks as the task began)"""
    samples: int = 0
    """samples of the new task collected so far"""


class TaskBoundaries:
    """The boundary that waits for its init, and when it is due (see the module docstring)."""

    def __init__(self, diagnostics: Diagnostics, wanted: int, min_samples: int):
        self.diagnostics = diagnostics
        self.wanted = wanted
        """samples of the new task the init waits for"""
        self.min_samples = min_samples
        """fewer than this and an init measured early (another shift, the run's end) is left out"""
        self.waiting: Boundary | None = None

    @property
    def enabled(self) -> bool:
        return self.diagnostics.enabled

    def begin(
        self,
        step: int,
        task_end: int | None,
        task_init: int,
        end: Probe | None = None,
        nets: Any = None,
    ) -> None:
        """Task `task_init` began at `step`: a boundary still waiting is written without its
        init, and this one waits for its own."""
        if self.waiting is not None:
            self.measure(None)
        self.waiting = Boundary(step, task_end, task_init, end, nets)

    def arrived(self, samples: int) -> bool:
        """`samples` more of the new task were collected: whether the init is due now."""
        if self.waiting is None:
            return False
        self.waiting.samples += samples
        return self.waiting.samples >= self.wanted

    def available(self) -> int:
        """How many samples an init measured now would take: up to `wanted`, 0 when fewer
        than `min_samples` arrived (or nothing waits)."""
        if self.waiting is None:
            return 0
        n = min(self.waiting.samples, self.wanted)
        return n if n >= max(1, self.min_samples) else 0

    def measure(self, init: Probe | None, **note: float) -> None:
        """Write the waiting boundary: its end (if measured) and `init` (if given), with
        `note` recorded beside the init."""
        boundary, self.waiting = self.waiting, None
        if boundary is None:
            return
        probes = {"end": boundary.end} if boundary.end is not None else {}
        if init is not None:
            init.note.update(note)
            probes["init"] = init
        task_init = boundary.task_init if init is not None else None
        self.diagnostics.boundary(boundary.step, probes, boundary.task_end, task_init)

    def finish(self, step: int, task: int, end: Probe | None) -> None:
        """The run ended at `step` in `task`: a boundary still waiting is written (without an
        init), then the last task's end."""
        self.measure(None)
        if end is not None:
            self.diagnostics.boundary(step, {"end": end}, task, None)
