"""Experiments: many ordinary runs (methods x seeds) and, later, one report across them.

- sweep.py: `train.py sweep MODE [base flags] --grid key=v1,v2 ...`: the grid of cells, each
  exactly the run `train.py MODE <its flags>` makes, in its own run directory under one sweep
  directory with a manifest; running the same command again resumes the sweep;
- launchers.py: where a cell's process runs (local worker processes).
"""
