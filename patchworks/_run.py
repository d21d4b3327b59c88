"""Execution: run lists of tile tasks on threads or on a distributed cluster.

Tasks are plain ``dask.delayed`` calls, one per tile; big shared arguments
(the job: grid, function, stores) enter the graph once under a fixed name,
so a cluster ships them once per worker instead of once per task.
"""

from __future__ import annotations

import logging
import sys
import uuid

import dask
from dask.callbacks import Callback

logger = logging.getLogger("patchworks")

_LOCAL_SCHEDULERS = ("threads", "threading", "synchronous", "sync", "single-threaded")


def active_client(client=None):
    """The ``distributed.Client`` to use: the one given, else the active default, else None.

    ``client=False`` means "not on a cluster", even when a client is active.
    """
    if client is False:
        return None
    if client is not None:
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def new_token() -> str:
    """A fresh id for one run: its scratch space and task keys never collide with another run's."""
    return uuid.uuid4().hex[:12]


def shared(obj, name: str):
    """Put ``obj`` in the graph once, under ``name``, without hashing or traversing it."""
    return dask.delayed(obj, name=name, traverse=False)


def _want_progress(progress) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


class _TileProgress(Callback):
    """Advance a tqdm bar when a task whose key starts with ``prefix`` finishes (threaded scheduler)."""

    def __init__(self, bar, prefix: str):
        super().__init__()
        self._bar, self._prefix = bar, prefix

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, str) and key.startswith(self._prefix):
            self._bar.update(1)


def run_tasks(tasks: list, *, client=None, progress=None, desc: str = "tiles", prefix: str = "") -> list:
    """Compute ``tasks`` and return their results in order.

    Uses ``client`` when given (or the active default client), else the
    scheduler configured in dask (threads unless the user chose another).
    """
    if not tasks:
        return []
    show = _want_progress(progress)
    client = active_client(client)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), desc=desc, unit="tile", leave=False)
    try:
        if client is not None:
            from distributed import as_completed
            futures = client.compute(tasks)
            if bar is not None:
                for _ in as_completed(futures):
                    bar.update(1)
            results = client.gather(futures)
            del futures
            return results
        # a local scheduler the user chose (e.g. synchronous, to debug) is kept;
        # anything else (an inactive cluster's setting) falls back to threads
        scheduler = dask.config.get("scheduler", None)
        if scheduler not in _LOCAL_SCHEDULERS:
            scheduler = "threads"
        if bar is not None:
            with _TileProgress(bar, prefix):
                return list(dask.compute(*tasks, scheduler=scheduler))
        return list(dask.compute(*tasks, scheduler=scheduler))
    finally:
        if bar is not None:
            bar.close()
