"""Diagnostics of plasticity: curvature of loss closures, rank measures of features, hooks, plots.

- curvature.py: Hessian / GGN spectra of a loss given as a function of parameters (Lanczos,
  SLQ density, epsilon-rank, trace, top/bottom eigenvalues), KFAC factors and the
  loss-weighted Gram (NTK) matrix;
- representation.py: effective rank, srank, feature epsilon-rank, dormant and dead units,
  weight norms;
- plasticity.py: the plasticity probe (train copies of a network and its optimizer for k steps
  on the new task) and optimization readiness (gradient strength and reliability);
- hooks.py: the `Diagnostics` object a learner calls at task boundaries and every N updates,
  and its flags;
- boundaries.py: `TaskBoundaries`, when each learner measures a boundary's end and init;
- plot.py: `python -m diagnostics.plot RUN_DIR` turns a run into PNGs.

Diagnostics never change parameters, optimizer state or the run's random streams, and know
nothing about PPO, SAC or the supervised stream.
"""

from diagnostics.boundaries import TaskBoundaries
from diagnostics.curvature import LossClosure
from diagnostics.hooks import (
    Diagnostics,
    DiagnosticsConfig,
    DiagnosticsFlags,
    Probe,
    check_flags,
    unused_flags,
)

__all__ = [
    "Diagnostics",
    "DiagnosticsConfig",
    "DiagnosticsFlags",
    "LossClosure",
    "Probe",
    "TaskBoundaries",
    "check_flags",
    "unused_flags",
]
