"""Probes several test files share: callables run on real threads at once, and a phase's task arguments."""

from __future__ import annotations

import threading

import numpy as np

import patchworks.labels._process as process
from patchworks import threshold, tile_process
from patchworks.testing import random_blobs


def run_on_threads(func, args) -> list[BaseException]:
    """``func(a)`` for every ``a`` of ``args``, each on its own thread, all at once; the errors they raised."""
    errors = []

    def run(a):
        try:
            func(a)
        except Exception as exc:  # noqa: BLE001 -- returned to the test, which asserts there are none
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def relabel_task_arguments(monkeypatch, n_side: int, **options) -> list:
    """The per-task arguments of the relabel phase of a run on ``n_side``^2 tiles of 4^2 (blobs, threshold)."""
    seen = {}
    real = process.graph_tasks

    def spy(name, func, shared, per_task):
        if name.startswith("patchworks-relabel"):
            seen["args"] = per_task
        return real(name, func, shared, per_task)

    monkeypatch.setattr(process, "graph_tasks", spy)
    image = random_blobs((4 * n_side, 4 * n_side), density=0.5, sigma=1.0, seed=n_side)
    tile_process(image, threshold(0.5), tile_shape=4, compute=True, progress=False, **options)
    return seen["args"]


def assert_partials_geometry(parts, ids, origin) -> list:
    """Assert a tile's partials' rows, counts, coordinate sums and boxes against a direct loop; the labels present."""
    present = [v for v in np.unique(ids) if v]
    assert parts.label.tolist() == present
    for row, v in enumerate(present):
        where = np.argwhere(ids == v) + origin
        assert parts.count[row] == len(where)
        np.testing.assert_array_equal(parts.csum[row], where.sum(axis=0))
        np.testing.assert_array_equal(parts.bmin[row], where.min(axis=0))
        np.testing.assert_array_equal(parts.bmax[row], where.max(axis=0) + 1)
    return present
