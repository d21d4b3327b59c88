"""Dense tile processing: run ``fn`` once per tile and blend the maps into a zarr array.

Graph (one run)::

    tile t  : read window -> fn -> validate -> float32 * weights  (crop: write core, done)
    fold b,k: acc_b = acc_b + piece of tile t_k inside core b      (t_k in raster order)
    block b : acc_b / sum of weights -> finalize -> cast -> write chunk b once

Output chunks are the tile cores, so every block task writes exactly one
chunk, once. A block's partial sum is folded tile by tile, so what stays in
memory is one core-sized accumulator per block on the processing front plus
the few windows in flight, never a window per pending tile nor the whole
output. The weight sums are recomputed from geometry in the block task
instead of being shipped with every tile. Folds run in a fixed (raster)
order, so the result does not depend on which tile finishes first and equals
a plain numpy accumulation over the tiles in raster order bit for bit.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np

from ..grid import Tile, TileGrid
from ..io._sources import LazySource, create_output, open_image, same_location
from ..run._resources import available_memory
from ..run._execute import active_client, local_threads, new_token, resolve_tile_shape, run_tasks, shared, tile_windows
from ._spill import SpillingAccumulators
from ..run._windows import make_window

__all__ = ["tile_blend", "tile_map"]

logger = logging.getLogger("patchworks")


class _Target:
    """Where the map goes: the user's ``write_to`` or a fresh temporary store (no scratch needed)."""

    def __init__(self, write_to, component, *, overwrite, zarr_format, scratch_dir, inputs=()):
        self.temporary = write_to is None
        self.component, self.overwrite, self.zarr_format = component, overwrite, zarr_format
        self.created = False
        if self.temporary:
            self.root = Path(tempfile.mkdtemp(prefix="patchworks-", dir=scratch_dir))
            self.path = self.root / "map.zarr"
            return
        for item in inputs:
            if same_location(write_to, item):
                raise ValueError(f"write_to={str(write_to)!r} is the input; patchworks never writes to its "
                                 f"input: choose another output path")
        self.path = Path(write_to)
        self.target = self.path / component if component else self.path
        if self.target.exists() and not overwrite:
            raise FileExistsError(f"write_to={str(self.target)!r} already exists; pass overwrite=True to "
                                  f"replace it, or choose another path")

    def create(self, **kwargs):
        array = create_output(self.path, component=self.component, zarr_format=self.zarr_format,
                              overwrite=self.overwrite, **kwargs)
        self.created = True
        return array

    def discard(self):
        """After a failure, or once a computed result is in memory: leave no half-written output."""
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.created:
            shutil.rmtree(self.target, ignore_errors=True)


def _where(tile: Tile) -> str:
    return f"tile {tile.index} (window [" + ", ".join(f"{s.start}:{s.stop}" for s in tile.spatial_window) + "])"


def validate_map(pred, tile: Tile, n_channels: int | None, what: str = "fn") -> np.ndarray:
    """Check a tile function's dense output; errors name the tile index and window."""
    win = tile.window_shape
    expected = win if n_channels is None else (n_channels, *win)
    if not isinstance(pred, np.ndarray):
        if hasattr(pred, "__array__") and not isinstance(pred, (list, tuple, int, float)):
            pred = np.asarray(pred)
        else:
            raise TypeError(f"{what} returned {type(pred).__name__} for {_where(tile)}; it must return a numpy "
                            f"array of shape {expected}")
    if not (np.issubdtype(pred.dtype, np.number) or pred.dtype == np.bool_) or np.iscomplexobj(pred):
        raise TypeError(f"{what} returned dtype {pred.dtype} for {_where(tile)}; return a real-valued map")
    if pred.shape != expected:
        if n_channels is None and pred.ndim == len(win) + 1 and pred.shape[1:] == win:
            fix = f"it has {pred.shape[0]} channels first: pass out_channels={pred.shape[0]}"
        elif n_channels is not None and pred.ndim == len(win) + 1 and pred.shape[1:] == win:
            fix = f"it has {pred.shape[0]} channels but out_channels={n_channels}: pass out_channels={pred.shape[0]}"
        elif n_channels is not None and pred.shape == win:
            fix = "it has no channel axis: pass out_channels=None or return (C, *window)"
        else:
            fix = "return one value per voxel of the window it was given (channels first)"
        raise ValueError(f"{what} returned shape {pred.shape} for {_where(tile)}; expected {expected}; {fix}")
    return pred


def _cast(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and np.issubdtype(block.dtype, np.floating):
        # quantise, never wrap: round, then saturate at the dtype's range
        info = np.iinfo(dtype)
        block = np.clip(np.rint(block), info.min, info.max)
    return block.astype(dtype, copy=False)


@dataclass
class BlendJob:
    """Everything tile, fold and block tasks need; enters the graph once."""

    grid: TileGrid
    fn: Callable
    source: Any                       # numpy / LazySource, or None when windows arrive as task inputs
    weights: np.ndarray | None        # full (unclipped) window weights; None = crop
    out_channels: int | None          # channels fn returns (None: no channel axis)
    final_channels: int | None        # channels after finalize (output's leading axis)
    finalize: Callable | None
    out_dtype: np.dtype
    output: Any = None                # zarr.Array
    # per axis, per core index: the tile indices whose windows reach into that core (sorted)
    reach: tuple = field(init=False)

    def __post_init__(self):
        reach = []
        for b, h, size in zip(self.grid.boundaries, self.grid.overlap, self.grid.spatial_shape):
            lo = np.maximum(b[:-1] - h, 0)
            hi = np.minimum(b[1:] + h, size)
            reach.append(tuple(tuple(int(j) for j in np.nonzero((lo < b[i + 1]) & (hi > b[i]))[0])
                               for i in range(len(b) - 1)))
        self.reach = tuple(reach)

    def contributors(self, index) -> list[tuple[int, ...]]:
        """Tiles whose windows overlap core ``index``, in raster order."""
        return list(itertools.product(*(r[i] for r, i in zip(self.reach, index))))

    def weight_region(self, tile: Tile, region) -> np.ndarray:
        """Weights of ``tile`` over the global spatial ``region`` (inside its window)."""
        # the full window starts ``overlap`` before the core: clipped windows keep their weights' position
        return self.weights[tuple(slice(r.start - c.start + h, r.stop - c.start + h)
                                  for r, c, h in zip(region, tile.spatial_core, self.grid.overlap))]

    def write(self, tile: Tile, block: np.ndarray):
        block = _check_final(block, tile, self.final_channels, self.finalize)
        key = tile.spatial_core if self.final_channels is None else (slice(None), *tile.spatial_core)
        self.output[key] = _cast(block, self.out_dtype)


def _check_final(block, tile, channels, finalize):
    if finalize is None:
        return block
    block = np.asarray(block)
    expected = tile.core_shape if channels is None else (channels, *tile.core_shape)
    if block.shape != expected:
        raise ValueError(f"finalize returned shape {block.shape} for the block of {_where(tile)}; expected "
                         f"{expected}, the shape it returned for the first block (channels first)")
    return block


def _window_of(job: BlendJob, tile: Tile, window):
    if window is None:
        window = job.source[tile.window]
    elif hasattr(window, "compute"):  # a dask input's window, read inside this task
        window = window.compute(scheduler="sync")
    data = np.asarray(window)
    return validate_map(job.fn(data), tile, job.out_channels)


def _tile_task(job: BlendJob, linear_index: int, window=None, gate=None):
    tile = job.grid.tile(linear_index)
    pred = _window_of(job, tile, window)
    if job.weights is None:  # crop: this tile owns its core, nothing to accumulate
        core = pred[(Ellipsis, *tile.spatial_crop)]
        job.write(tile, core if job.finalize is None else job.finalize(core))
        return None
    pred = pred.astype(np.float32, copy=False)
    return pred * job.weight_region(tile, tile.spatial_window)


def _overlap(tile: Tile, core) -> tuple[slice, ...]:
    return tuple(slice(max(w.start, c.start), min(w.stop, c.stop)) for w, c in zip(tile.spatial_window, core))


def _sub(region, frame) -> tuple[slice, ...]:
    """``region`` (global slices) relative to the start of ``frame``."""
    return tuple(slice(r.start - f.start, r.stop - f.start) for r, f in zip(region, frame))


def _fold_task(job: BlendJob, acc, weighted, block_index, tile_index):
    tile, block = job.grid.tile(tile_index), job.grid.tile(block_index)
    region = _overlap(tile, block.spatial_core)
    if acc is None:
        lead = () if job.out_channels is None else (job.out_channels,)
        acc = np.zeros(lead + block.core_shape, np.float32)
    # in place: the accumulator's only reader is this task (the next fold or the block consumes our result)
    acc[(Ellipsis, *_sub(region, block.spatial_core))] += weighted[(Ellipsis, *_sub(region, tile.spatial_window))]
    return acc


def _block_task(job: BlendJob, block_index, acc):
    block = job.grid.tile(block_index)
    total = np.zeros(block.core_shape, np.float32)
    for t in job.contributors(block_index):  # same order as the folds
        tile = job.grid.tile(t)
        region = _overlap(tile, block.spatial_core)
        total[_sub(region, block.spatial_core)] += job.weight_region(tile, region)
    acc /= total  # in place, as the folds: this task is the accumulator's only reader
    job.write(block, acc if job.finalize is None else job.finalize(acc))


def _final_channels(finalize, out_channels, n_spatial) -> int | None:
    if finalize is None:
        return out_channels
    if not callable(finalize):
        raise TypeError(f"finalize={finalize!r} is not callable; pass a function block -> block, "
                        f"e.g. lambda p: p.argmax(0)")
    probe = np.zeros(((out_channels,) if out_channels else ()) + (2,) * n_spatial, np.float32)
    out = np.asarray(finalize(probe))
    if out.ndim == n_spatial:
        return None
    if out.ndim == n_spatial + 1:
        return int(out.shape[0])
    raise ValueError(f"finalize returned {out.ndim} axes for a block of shape {probe.shape}; return the block's "
                     f"spatial shape, optionally with a leading channel axis")


def tile_map(image, fn, *, tile_shape=None, overlap=0, window="gaussian", out_channels=None,
             out_dtype="float32", finalize=None, write_to=None, compute=False, overwrite=False,
             progress=None, client=None, component=None, level=0, channel=None, channel_axis=None,
             axes=None, output_component=None, zarr_format=3, scratch_dir=None, memory_budget=None):
    """Run ``fn`` on every tile of ``image`` and blend its dense outputs into one map.

    ``fn`` receives each tile's window (core plus ``overlap`` voxels per side,
    clipped at the image edge) and returns a map of the window's spatial
    shape (probabilities, a denoised image, features). It is called exactly
    once per tile. Overlapping windows are combined voxel by voxel as
    ``sum(w_t * p_t) / sum(w_t)`` in float32 with spatial weights ``w`` (or
    cropped to their cores with ``window="crop"``), and the result is
    written to zarr block by block, one block per tile core, each finalised
    and written once; memory stays bounded by ``memory_budget`` plus a few
    windows, not by the image.

    Parameters
    ----------
    image : array-like or path
        Anything :func:`patchworks.open_image` accepts. Never written to.
    fn : callable
        ``fn(window) -> map``: shape ``window_spatial`` or, with
        ``out_channels=C``, channels first ``(C, *window_spatial)``. Any real
        dtype; blending accumulates in float32.
    tile_shape : "auto", int, tuple or dict, optional
        Core size per spatial axis; default (``None`` or ``"auto"``) the
        largest tile one worker can hold, as for :func:`tile_process`.
    overlap : int, tuple or dict, default 0
        Halo per side per spatial axis; must be smaller than the tile.
        Windows of neighbouring tiles overlap by ``2 * overlap``.
    window : {"gaussian", "hann", "mean", "crop"} or array, default "gaussian"
        Blending weights (see :func:`patchworks.make_window`): ``"crop"``
        takes each voxel from its own tile's core (no accumulator, exact);
        an array gives the weights of a full window, shape
        ``tile_shape + 2 * overlap`` per spatial axis, all > 0. A window
        clipped at the image edge uses the part of the full window's weights
        that lies inside the image. With ``overlap=0`` every window is crop.
    out_channels : int, optional
        Number of channels ``fn`` returns first; None for no channel axis.
    out_dtype : dtype, default "float32"
        Output dtype; floats cast to an integer dtype are rounded and
        saturated, never wrapped.
    finalize : callable, optional
        ``finalize(block) -> block`` applied to each blended block (float32,
        ``(C, *core)`` or ``core``; crop mode: fn's dtype) before the cast,
        e.g. ``lambda p: p.argmax(0)`` for labels. It may drop or change the
        channel axis; it is called once on a tiny zero block to learn its
        output's channels.
    write_to : path, optional
        zarr store to write (chunks = tile cores, channel axis whole). Default:
        a store in a new temporary directory, which backs the returned lazy
        array (removed with ``compute=True``).
    compute : bool, default False
        Return a numpy array instead of a lazy dask array.
    overwrite : bool, default False
        Replace ``write_to`` if it exists.
    progress : bool, optional
        tqdm progress bar; default only on a terminal.
    client : distributed.Client or False, optional
        Cluster to run on; default the active client, else threads.
    component, level, channel, channel_axis, axes, output_component, zarr_format, scratch_dir :
        As for :func:`patchworks.tile_process`.
    memory_budget : int, optional
        Bytes the float32 accumulators of blocks still waiting for tiles may
        hold (on threads). Beyond it, those needed last are spilled to
        scratch files and read back when their next tile comes, so memory is
        bounded by this budget plus a few windows, whatever the image.
        Default: a quarter of the memory available to this process.

    Returns
    -------
    dask.array.Array or numpy.ndarray
        ``(*spatial)`` or ``(C, *spatial)`` map of ``out_dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import tile_map
    >>> img = np.arange(36, dtype=np.float32).reshape(6, 6)
    >>> out = tile_map(img, lambda w: w * 2, tile_shape=3, overlap=1, window="hann", compute=True)
    >>> bool(np.allclose(out, img * 2))
    True
    >>> probs = lambda w: np.stack([w, 35 - w])  # two channels, first
    >>> tile_map(img, probs, tile_shape=3, overlap=1, out_channels=2, finalize=lambda p: p.argmax(0),
    ...          out_dtype="uint8", compute=True)[0]
    array([1, 1, 1, 1, 1, 1], dtype=uint8)
    """
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not callable; pass a function window -> map")
    if out_channels is not None and (isinstance(out_channels, bool) or not isinstance(out_channels, (int, np.integer))
                                     or out_channels < 1):
        raise ValueError(f"out_channels={out_channels!r}: use None (fn returns the window's spatial shape) "
                         f"or an int >= 1 (fn returns (C, *window), channels first)")
    try:
        out_dtype = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"out_dtype={out_dtype!r} is not a numpy dtype; use e.g. 'float32' or 'uint8'") from None
    if not (np.issubdtype(out_dtype, np.number) or out_dtype == np.bool_):
        raise TypeError(f"out_dtype={out_dtype}: use a numeric dtype such as 'float32' or 'uint8'")
    source = open_image(image, component=component, level=level, channel=channel)
    if axes is None and isinstance(source, LazySource):
        axes = source.axes
    in_channels = int(np.prod([n for i, n in enumerate(source.shape)
                               if i not in TileGrid(source.shape, 1, channel_axis=channel_axis, axes=axes).spatial_axes]))
    # a tile holds its input channels and its float32 output channels
    tile_shape = resolve_tile_shape(tile_shape, source, overlap, client, channel_axis=channel_axis, axes=axes,
                                    n_channels=in_channels + int(out_channels or 1))
    grid = TileGrid(source.shape, tile_shape, overlap, channel_axis=channel_axis, axes=axes)

    full = tuple(t + 2 * h for t, h in zip(grid.tile_shape, grid.overlap))
    if isinstance(window, str) and window == "crop":
        weights = None
    else:
        weights = make_window(window, full)  # validates names and user arrays
        if not any(grid.overlap):
            weights = None  # one tile per voxel: w * p / w is p, so crop is the same and exact
    final_channels = _final_channels(finalize, None if out_channels is None else int(out_channels),
                                     len(grid.spatial_axes))
    out = _Target(write_to, output_component, overwrite=overwrite, zarr_format=zarr_format,
                  scratch_dir=scratch_dir, inputs=(image,))

    source, windows = tile_windows(source, grid, client)

    lead = () if final_channels is None else (final_channels,)
    token = new_token()
    try:
        output = out.create(shape=lead + grid.spatial_shape, dtype=out_dtype, chunks=lead + grid.tile_shape,
                            attributes={"patchworks": {"complete": False}})
        job = BlendJob(grid=grid, fn=fn, source=source, weights=weights,
                       out_channels=None if out_channels is None else int(out_channels),
                       final_channels=final_channels, finalize=finalize, out_dtype=out_dtype, output=output)
        logger.info("patchworks: blending %d tiles (%s window) into %s", grid.n_tiles,
                    "crop" if weights is None else (window if isinstance(window, str) else "user"), out.path)
        if active_client(client) is None and weights is not None:
            if memory_budget is None:
                memory_budget = available_memory() // 4
            accs = SpillingAccumulators(memory_budget, scratch_dir or (None if out.temporary else
                                                                      out.path.absolute().parent))
            try:
                _stream_locally(job, windows, progress, accs)
            finally:
                accs.close()
            if accs.n_spilled:
                logger.info("patchworks: %d block accumulators spilled to disk (memory_budget=%d bytes)",
                            accs.n_spilled, memory_budget)
        else:
            tasks, prefix = _graph(job, windows, token)
            run_tasks(tasks, client=client, progress=progress, desc="blending tiles", prefix=prefix)
        output.attrs["patchworks"] = {  # completion is recorded last
            "complete": True, "window": "crop" if weights is None else
            (window if isinstance(window, str) else "user"),
            "tile_shape": list(grid.tile_shape), "overlap": list(grid.overlap)}
    except BaseException:
        out.discard()
        raise
    if compute:
        result = np.asarray(output[...])
        out.discard()
        return result
    return da.from_zarr(output)


#: The issue's name for :func:`tile_map`; kept as an alias.
tile_blend = tile_map


def _local_threads() -> int:
    if dask.config.get("scheduler", None) in ("synchronous", "sync", "single-threaded"):
        return 1
    return local_threads()


def _stream_locally(job: BlendJob, windows, progress, accs: SpillingAccumulators):
    """Blend on local threads in raster order: a bounded number of tiles in flight.

    Tiles run on a pool; their results are folded into the block
    accumulators on this thread strictly in raster order (so the sums do not
    depend on which tile finishes first), and each block whose last
    contributor is folded is normalised and written on the pool. Alive at
    once: ``2 * threads + 2`` windows and the accumulators of the blocks on
    the front, which ``accs`` spills to disk beyond its budget -- never a
    graph of the whole image for a static ordering to get wrong.
    """
    from ..run._execute import _want_progress
    grid = job.grid
    threads = _local_threads()
    ahead = 2 * threads + 2
    blocks_of = [job.contributors(grid.tile(i).index) for i in range(grid.n_tiles)]  # symmetric relation
    left = [len(c) for c in blocks_of]
    # tiles contributing to each block, in the order they are folded (raster order)
    order_of = [sorted(grid.linear_index(t) for t in c) for c in blocks_of]
    bar = None
    if _want_progress(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=grid.n_tiles, desc="blending tiles", unit="tile", leave=False)
    pool = ThreadPoolExecutor(threads)
    tiles, writes = deque(), deque()

    def fold_next():
        i = len(folded)
        weighted = tiles.popleft().result()
        index = grid.tile(i).index
        for b_index in blocks_of[i]:
            b = grid.linear_index(b_index)
            acc = _fold_task(job, accs.take(b), weighted, b_index, index)
            left[b] -= 1
            if not left[b]:
                writes.append(pool.submit(_block_task, job, b_index, acc))
            else:
                accs.put(b, acc, next_use=order_of[b][bisect.bisect_right(order_of[b], i)])
        folded.append(i)
        while writes and (writes[0].done() or len(writes) > ahead):
            writes.popleft().result()  # raises a failed write here, and bounds queued blocks
        if bar is not None:
            bar.update(1)

    folded: list[int] = []
    try:
        for i in range(grid.n_tiles):
            tiles.append(pool.submit(_tile_task, job, i, None if windows is None else windows(grid.tile(i))))
            while len(tiles) > ahead:
                fold_next()
        while tiles:
            fold_next()
        while writes:
            writes.popleft().result()
    finally:
        # on failure, stop queued work and wait for running tasks: nothing writes behind the caller's back
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()


def _graph(job: BlendJob, windows, token: str):
    """Tile tasks, each folded at once into the accumulators of the blocks it reaches; blocks write.

    Left to itself a scheduler may run every tile before folding any (dask's
    static ordering did, holding every window at once). So tile ``i`` also
    waits until tile ``i - _LAG`` is folded everywhere: at most ``_LAG``
    windows are alive whatever the scheduler, and memory is the slab of
    core-sized accumulators on the processing front, not the image. No
    deadlock: a fold needs only its tile and earlier tiles' folds.
    """
    grid = job.grid
    jobd = shared(job, f"patchworks-blend-job-{token}")
    tile = dask.delayed(_tile_task, pure=False)
    tprefix = f"patchworks-blend-tile-{token}"
    window_of = (lambda i: None) if windows is None else (lambda i: windows(grid.tile(i)))  # noqa: E731
    if job.weights is None:  # crop: independent tiles, each writes its own chunk
        return [tile(jobd, i, window_of(i), dask_key_name=f"{tprefix}-{i}") for i in range(grid.n_tiles)], tprefix
    fold = dask.delayed(_fold_task, pure=False)
    block = dask.delayed(_block_task, pure=False)
    bprefix = f"patchworks-blend-block-{token}"
    last = [grid.linear_index(job.contributors(grid.tile(b).index)[-1]) for b in range(grid.n_tiles)]
    acc, blocks, folds_of = [None] * grid.n_tiles, [None] * grid.n_tiles, []
    for i in range(grid.n_tiles):
        t = grid.tile(i)
        gate = folds_of[i - _LAG] if i >= _LAG else None
        result = tile(jobd, i, window_of(i), gate, dask_key_name=f"{tprefix}-{i}")
        folds = []
        for index in job.contributors(t.index):  # the blocks tile i reaches (the relation is symmetric)
            b = grid.linear_index(index)
            acc[b] = fold(jobd, acc[b], result, index, t.index, dask_key_name=f"patchworks-blend-fold-{token}-{b}-{i}")
            folds.append(acc[b])
            if last[b] == i:  # every contributor folded, in raster order: normalise and write
                blocks[b] = block(jobd, index, acc[b], dask_key_name=f"{bprefix}-{b}")
                acc[b] = None
        folds_of.append(folds)
    return blocks, bprefix


#: windows allowed in flight: enough to keep the workers busy, few enough to bound memory
_LAG = 8
