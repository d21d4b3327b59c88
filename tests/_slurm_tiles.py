"""Tile functions for the SLURM tests, importable by the worker jobs (their PYTHONPATH holds tests/)."""

import os
import time

from patchworks import label_components


def slow_label(tile, *, delay=0.0, log=None):
    """Threshold at 0.5 and label (connectivity 1), after ``delay`` s; one line appended to ``log`` per call."""
    if log:
        with open(log, "a") as f:  # one short append per call: whole lines even from several hosts
            f.write(f"{os.environ.get('SLURM_JOB_ID', '-')}\n")
    time.sleep(delay)
    return label_components(tile > 0.5)


def calls(log) -> list[str]:
    """The SLURM job id of every call logged so far."""
    try:
        with open(log) as f:
            return f.read().split()
    except FileNotFoundError:
        return []
