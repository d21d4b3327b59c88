"""Which tiles hold anything: the exact per-window maximum, one task per tile."""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from ..grid import TileGrid
from ..io._sources import LazySource, open_image
from ..segment._threshold import otsu_threshold, sample_values
from ..run._execute import graph_tasks, new_token, resolve_tile_shape, run_tasks


@dataclass
class _MaxJob:
    source: object
    grid: TileGrid


def _window_max_of(job: _MaxJob, i: int) -> float:
    return _window_max(job.source, job.grid, i)


def _window_max(source, grid: TileGrid, i: int, window=None) -> float:
    tile = grid.tile(i)
    data = np.asarray(source[tile.window] if window is None else window)
    return float(data.max()) if data.size else -np.inf


def estimate_empty_tiles(image, tile_shape=None, threshold=None, *, overlap=0, component=None, level=0, channel=None,
                         channel_axis=None, axes=None, client=None, progress=None, storage_options=None) -> dict:
    """How many tiles of ``image`` hold something above ``threshold``.

    A tile counts as empty only when its whole read window (core plus halo)
    is at or below the threshold, the rule ``tile_process(...,
    skip_empty=True)`` uses; the maximum of every window is computed exactly,
    one task per tile.

    Parameters
    ----------
    image : array-like or path
        Anything :func:`patchworks.open_image` reads (a URL with
        ``storage_options``).
    tile_shape, overlap, channel_axis, axes :
        The geometry ``tile_process`` will use (``tile_shape=None``: the
        input's chunks, else ``"auto"``, as there).
    threshold : float, optional
        Background level; default Otsu's threshold of a sample of the image
        (never a silent 0).

    Returns
    -------
    dict
        ``threshold``, ``n_tiles``, ``n_occupied``, ``empty_fraction``,
        ``occupied`` (bool array of the grid's shape) and ``tile_max``.

    Examples
    --------
    >>> img = np.zeros((8, 8)); img[0, 0] = 5
    >>> info = estimate_empty_tiles(img, tile_shape=4, threshold=1)
    >>> info["n_occupied"], info["empty_fraction"]
    (1, 0.75)
    """
    source = open_image(image, component=component, level=level, channel=channel, storage_options=storage_options)
    if axes is None and isinstance(source, LazySource):
        axes = source.axes
    tile_shape = resolve_tile_shape(tile_shape, source, overlap, client, channel_axis=channel_axis, axes=axes)
    grid = TileGrid(source.shape, tile_shape, overlap, channel_axis=channel_axis, axes=axes)
    if threshold is None:
        threshold = otsu_threshold(sample_values(source))
    token = new_token()
    task = dask.delayed(_window_max, pure=False)
    if isinstance(source, da.Array):
        tasks = [task(None, grid, i, source[grid.tile(i).window], dask_key_name=f"patchworks-max-{token}-{i}")
                 for i in range(grid.n_tiles)]
    else:
        tasks = graph_tasks(f"patchworks-max-{token}", _window_max_of, _MaxJob(source, grid),
                            [(i,) for i in range(grid.n_tiles)])
    maxima = np.array(run_tasks(tasks, client=client, progress=progress, desc="scanning tiles",
                                prefix=f"patchworks-max-{token}"), dtype=np.float64).reshape(grid.grid_shape)
    occupied = maxima > threshold
    n_occupied = int(occupied.sum())
    return {"threshold": float(threshold), "n_tiles": grid.n_tiles, "n_occupied": n_occupied,
            "empty_fraction": 1 - n_occupied / grid.n_tiles if grid.n_tiles else 0.0,
            "occupied": occupied, "tile_max": maxima, "grid_shape": grid.grid_shape}
