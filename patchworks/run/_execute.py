"""Execution: run lists of tile tasks on threads or on a distributed cluster.

One task per tile (or per task group of tiles, :func:`task_groups`), in a
plain dask graph; big shared arguments (the job: grid, function, stores)
enter the graph once under a fixed key, so a cluster ships them once per
worker instead of once per task.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import dask
from dask.callbacks import Callback

from ._heap import settle_malloc
from ._resources import available_cores

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
    if "distributed" not in sys.modules:  # no client can exist; importing distributed costs ~0.2 s
        return None
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def new_token() -> str:
    """A fresh id for one run: its scratch space and task keys never collide with another run's."""
    return uuid.uuid4().hex[:12]


def tile_windows(source, grid, client):
    """How tile tasks get their windows: ``(source, windows)``.

    A path-backed source or a numpy array on threads is read inside each
    task (``windows`` is None). A dask array gives each task its window as a
    dask dependency. A numpy array on a cluster, which cannot share the
    driver's memory, is shipped once as a dask array cut by tile.
    """
    import dask.array as da
    import numpy as np

    if isinstance(source, np.ndarray) and active_client(client) is not None:
        source = da.from_array(source, chunks=tuple(grid.tile_shape[grid.spatial_axes.index(i)]
                                                    if i in grid.spatial_axes else -1
                                                    for i in range(len(source.shape))))
    if isinstance(source, da.Array):
        whole = source
        return None, lambda tile: whole[tile.window]
    return source, None


def input_chunks(source, spatial_axes) -> tuple[int, ...] | None:
    """The chunk shape of a chunked input on its spatial axes: dask chunks or zarr / OME-Zarr chunks.

    None for inputs without a chunk grid of their own (numpy, ``.npy``) and
    for TIFF and HDF5, whose strips and library-chosen chunks say nothing
    about a sensible tile.
    """
    import dask.array as da

    from ..io._sources import LazySource

    if isinstance(source, da.Array):
        chunks = source.chunksize
    elif isinstance(source, LazySource) and source.kind in ("zarr", "zarr-array") and source.chunks:
        chunks = source.chunks
    else:
        return None
    return tuple(int(chunks[a]) for a in spatial_axes)


def resolve_tile_shape(tile_shape, source, overlap, client, *, use_gpu=False, channel_axis=None, axes=None,
                       n_channels=None, n_workers=None, budget=None):
    """``tile_shape`` as given; ``None``: the input's own chunks; ``"auto"``: the largest tile one worker can hold.

    ``None`` on an input without chunks (numpy, TIFF, HDF5, ``.npy``) means
    ``"auto"``. The ``"auto"`` budget is this process's (psutil, cgroup,
    SLURM, shared by ``n_workers`` or its cores), the smallest worker's of
    the cluster the run will use, the free memory of the visible GPU with
    ``use_gpu``, or ``budget`` (bytes per tile) when given; on a chunked
    input the tile is a multiple of the chunks, so that no tile reads a chunk
    it only partly needs.
    """
    if tile_shape is not None and not (isinstance(tile_shape, str) and tile_shape == "auto"):
        if isinstance(tile_shape, str):
            raise ValueError(f"tile_shape={tile_shape!r}: use None (the input's chunks), 'auto', an int, a tuple "
                             f"or a dict {{axis: int}}")
        return tile_shape
    from ..grid import TileGrid
    from ._resources import auto_tile_shape

    spatial = TileGrid(source.shape, 1, channel_axis=channel_axis, axes=axes).spatial_axes
    chunks = input_chunks(source, spatial)
    if tile_shape is None and chunks is not None:
        logger.info("patchworks: tile_shape=None -> the input's chunks %s", chunks)
        return chunks
    cluster = active_client(client)
    if budget is None and cluster is not None and not use_gpu:
        per_thread = [w["memory_limit"] / max(w.get("nthreads", 1), 1)
                      for w in cluster.scheduler_info()["workers"].values() if w.get("memory_limit")]
        budget = int(min(per_thread)) if per_thread else None
    shape = auto_tile_shape(source.shape, source.dtype, overlap=overlap, spatial_axes=spatial, use_gpu=use_gpu,
                            budget=budget, n_channels=n_channels, n_workers=n_workers if budget is None else None,
                            chunks=chunks)
    logger.info("patchworks: tile_shape='auto' -> %s", shape)
    return shape


def local_threads() -> int:
    """Threads for a local run: as many as cores this process may use (affinity, cgroup quota, SLURM)."""
    return int(dask.config.get("num_workers", None) or available_cores())


# A phase makes at most this many tasks, whatever the tile count: dask advises graphs well under 10^6
# tasks, and the scheduler's ~0.1-0.3 ms (and ~2-4 KB of the driver's memory) per task would otherwise
# outweigh small tiles' own work.
MAX_TASKS = 50_000
# Small items are grouped further, to at least this many voxels of work per task (as batches are) ...
MIN_GROUP_VOXELS = 1 << 20
# ... while leaving at least this many tasks to spread over the workers.
MIN_GROUPS = 16


def group_size(n_items: int, item_voxels: int | None = None) -> int:
    """Items per task: at most :data:`MAX_TASKS` tasks for ``n_items``, and a few ms of work per task.

    ``ceil(n / MAX_TASKS)`` items at least (between ``MAX_TASKS / 2`` and
    ``MAX_TASKS`` tasks beyond that many items). With ``item_voxels``,
    items smaller than :data:`MIN_GROUP_VOXELS` are grouped up to that many
    voxels, but never into fewer than :data:`MIN_GROUPS` tasks, so every
    worker of a small run has work. One item per task for large items.
    """
    n = int(n_items)
    size = max(1, math.ceil(n / MAX_TASKS))
    if item_voxels:
        size = max(size, min(MIN_GROUP_VOXELS // max(1, int(item_voxels)), n // MIN_GROUPS))
    return size


def task_groups(items, size: int) -> list:
    """``items`` (a sequence, e.g. sorted tile indices) cut into consecutive runs of ``size``.

    Consecutive, so that a group's tiles are neighbours in C order (one
    task's reads stay close together).
    """
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def shared(obj, name: str):
    """Put ``obj`` in the graph once, under ``name``, without hashing or traversing it."""
    return dask.delayed(obj, name=name, traverse=False)


def _want_progress(progress) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


class _Bar:
    """A tqdm bar counting tiles done and tiles skipped (its ETA comes with tqdm)."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm
        # at most two refreshes a second, however many tiles a second finish
        self._tqdm = tqdm(total=total, desc=desc, unit="tile", dynamic_ncols=True, mininterval=0.5)
        self.skipped = 0

    def done(self, result) -> None:
        skipped = int(getattr(result, "skipped", 0))  # a batch of tiles says how many of its tiles
        if skipped:
            self.skipped += skipped
            self._tqdm.set_postfix(skipped=self.skipped, refresh=False)
        self._tqdm.update(int(getattr(result, "n_tiles", 1)))

    def note(self, text: str) -> None:
        self._tqdm.write(text)

    def close(self) -> None:
        self._tqdm.close()


class _TileProgress(Callback):
    """Advance the bar when a task whose key starts with ``prefix`` finishes (local schedulers)."""

    def __init__(self, bar: _Bar, prefix: str):
        super().__init__()
        self._bar, self._prefix = bar, prefix

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, str) and key.startswith(self._prefix):
            self._bar.done(result)


def graph_tasks(name: str, func, shared, per_task: list[tuple]) -> tuple[dict, list[str]]:
    """One task per entry of ``per_task``: ``func(shared, *args)``, as a plain dask graph.

    ``shared`` enters the graph once. Building the graph directly costs a few
    microseconds per task where ``dask.delayed`` costs about a hundred, which
    matters at 10**4 tiles.
    """
    shared_key = f"{name}-shared"
    dsk = {shared_key: shared}
    keys = []
    for i, args in enumerate(per_task):
        key = f"{name}-{i}"
        dsk[key] = (func, shared_key, *args)
        keys.append(key)
    return dsk, keys


def run_tasks(tasks, *, client=None, progress=None, desc: str = "tiles", prefix: str = "", total=None) -> list:
    """Compute tasks and return their results in order.

    ``tasks`` is a ``(graph, keys)`` pair from :func:`graph_tasks` or a list of
    ``dask.delayed`` objects. Runs on ``client`` when given (or the active
    default client), else on the local scheduler configured in dask (threads
    unless the user chose another). ``total``: what the progress bar counts
    to (tiles, when a task's result says how many tiles it ran as
    ``n_tiles``); default one per task.
    """
    if isinstance(tasks, tuple):
        dsk, keys = tasks
    else:
        dsk = {}
        for task in tasks:
            dsk.update(task.__dask_graph__())
        keys = [t.key for t in tasks]
    if not keys:
        return []
    show = _want_progress(progress)
    client = active_client(client)
    bar = _Bar(len(keys) if total is None else int(total), desc) if show else None
    try:
        if client is not None:
            from distributed import as_completed
            if bar is not None and getattr(client, "dashboard_link", None):
                bar.note(f"patchworks: {desc} on {client.scheduler.address}, dashboard {client.dashboard_link}")
            # fetch results as they land and let go of each future: the cluster then forgets a finished
            # tile's result, so a worker lost later (a job cancelled, its walltime reached) costs only the
            # tiles it was running, not every tile whose result it still held (those would all rerun fn)
            position = {}
            for i, key in enumerate(keys):
                position.setdefault(key, []).append(i)
            results = [None] * len(keys)
            pending = as_completed(client.get(dsk, keys, sync=False))
            for batch in pending.batches():
                for future, result in zip(batch, client.gather(batch)):
                    for i in position[future.key]:
                        results[i] = result
                    if bar is not None:
                        bar.done(result)
                batch = future = None  # noqa: F841 (drop the references)
            return results
        # a local scheduler the user chose (e.g. synchronous, to debug) is kept;
        # anything else (an inactive cluster's setting) falls back to threads
        scheduler = dask.config.get("scheduler", None)
        if scheduler not in _LOCAL_SCHEDULERS:
            scheduler = "threads"
        settle_malloc()  # before the first tile: no page-fault storm while glibc adapts
        with _TileProgress(bar, prefix) if bar is not None else contextlib.nullcontext():
            if scheduler not in ("threads", "threading"):
                from dask.local import get_sync
                return list(get_sync(dsk, keys))
            # our own pool, so that when a task fails we return only after the tasks
            # still running have stopped: nothing keeps writing behind the caller's back
            from dask.threaded import get
            pool = ThreadPoolExecutor(local_threads())
            try:
                return list(get(dsk, keys, pool=pool))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
