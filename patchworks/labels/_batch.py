"""Batches: blocks of neighbouring small tiles staged, scanned and relabelled as one task.

A dask task costs ~0.1-0.3 ms on the scheduler and a staged file ~0.1 ms to
write, read and delete; a 32^2 tile's own work is a few tens of µs, so at
10^5 tiles and more the run would be all overhead. For small tiles a batch
(a block of ``block`` tiles per axis) is staged by one task: ``fn`` still
runs once per tile on that tile's own window, then the task joins the
labels touching across the seams *inside* the block (the same rule as the
seam scan: faces, plus edges and corners up to ``connectivity``) and stages
the block as one tile of the batch grid, numbered ``1..m`` over its objects.
From there on the pipeline sees the batch grid only: its seam scan, its
plan and its relabel are today's, with one task per batch, and nothing per
tile stays on the driver.

Exactness: two voxels that are neighbours either lie in one batch (joined
here, across the tile seam between them) or across a batch seam, where the
whole-plane seam scan of the batch grid, with its in-plane shifts, finds
them. ``stitch="iou"`` keeps one tile per batch (its matching is between two
tiles' own views of their shared band).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..grid import TileGrid
from ..run._execute import MAX_TASKS  # the graph stays under ~10^5 tasks per phase when batches allow it
from ._merge import _in_plane_shifts, apply_lut, unique_pairs
from ._table import Partials, reduce_partials
from ._tile_task import (StageJob, TileResult, core_partials, counted_ids, gap_free, known_empty, local_ids,
                         validate_labels)

# A batch does at least this many voxels of work (a few ms of fn + staging on small tiles) ...
MIN_BATCH_VOXELS = 1 << 20
# ... and never holds more than this many in one core array (uint32 ids: 64 MiB).
MAX_BATCH_VOXELS = 1 << 24
# Enough batches to keep every core busy on a small run.
MIN_BATCHES = 16


def batch_block(grid: TileGrid, stitch: str = "touch") -> tuple[int, ...]:
    """Tiles per batch along each spatial axis (all ones: one tile per task, as for large tiles).

    Depends on the grid only (never on the worker count), so that a resumed
    run finds the batches it staged.
    """
    ones = (1,) * len(grid.grid_shape)
    if stitch != "touch" or grid.n_tiles <= 1:
        return ones
    tile_voxels = max(1, math.prod(grid.tile_shape))
    want = max(math.ceil(grid.n_tiles / MAX_TASKS), MIN_BATCH_VOXELS // tile_voxels)
    want = min(want, MAX_BATCH_VOXELS // tile_voxels, max(1, grid.n_tiles // MIN_BATCHES))
    block = list(ones)
    while math.prod(block) < want:
        # grow the axis with the most batches left, keeping batches compact (fewer seam voxels)
        k = max(range(len(block)), key=lambda a: (math.ceil(grid.grid_shape[a] / block[a]), -a))
        if block[k] >= grid.grid_shape[k]:
            break
        block[k] = min(block[k] * 2, grid.grid_shape[k])
    return tuple(block)


def batch_grid(grid: TileGrid, block) -> TileGrid:
    """The grid whose tiles are the batches (spatial axes only, no halo): cores = unions of tile cores."""
    if all(b == 1 for b in block):
        return grid
    chunks = []
    for bounds, b in zip(grid.boundaries, block):
        cuts = np.r_[bounds[::b], bounds[-1]] if (len(bounds) - 1) % b else bounds[::b]
        chunks.append(tuple(int(c) for c in np.diff(cuts)))
    return TileGrid.from_chunks(grid.spatial_shape, tuple(chunks))


def tiles_of(grid: TileGrid, block, batch_index: tuple[int, ...]):
    """Grid indices of the tiles in one batch, in linear (C) order."""
    return itertools.product(*[range(i * b, min((i + 1) * b, g))
                               for i, b, g in zip(batch_index, block, grid.grid_shape)])


@dataclass(frozen=True)
class BatchResult(TileResult):
    """A batch's :class:`TileResult`: ``skipped`` counts its skipped tiles, ``n_tiles`` its tiles."""

    n_tiles: int = 1


@dataclass
class BatchJob:
    """A :class:`StageJob` for the tiles plus the batch grid the block is staged on."""

    tiles: StageJob
    batches: TileGrid
    block: tuple
    connectivity: int


def _block_pairs(core: np.ndarray, cuts, connectivity: int) -> np.ndarray:
    """Pairs of ids that touch across the given cut positions of ``core`` (one list per axis)."""
    found = []
    shifts = _in_plane_shifts(core.ndim - 1, connectivity)
    for axis, positions in enumerate(cuts):
        if not positions:
            continue
        pos = np.asarray(positions)
        lo = np.moveaxis(core.take(pos - 1, axis=axis), axis, 0)
        hi = np.moveaxis(core.take(pos, axis=axis), axis, 0)
        for shift in shifts:
            lo_key, hi_key = [slice(None)], [slice(None)]
            for s, n in zip(shift, lo.shape[1:]):
                lo_key.append(slice(max(0, -s), n - max(0, s)))
                hi_key.append(slice(max(0, s), n - max(0, -s)))
            a, b = lo[tuple(lo_key)], hi[tuple(hi_key)]
            both = (a != 0) & (b != 0)
            if both.any():
                found.append(np.stack([a[both], b[both]], axis=1))
    if not found:
        return np.zeros((0, 2), np.uint32)
    return unique_pairs(np.concatenate(found))


def _join(pairs: np.ndarray, n: int) -> tuple[np.ndarray | None, int]:
    """Look-up table ``lut[batch id] = object id 1..m`` (objects in order of their smallest id), and ``m``."""
    if not len(pairs):
        return None, n
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64))),
                       shape=(n + 1, n + 1))
    # components are numbered as their smallest node is met in order: 0 (background, alone) keeps 0
    m, component = connected_components(graph, directed=False)
    return component.astype(np.uint32), int(m) - 1


def stage_batch(job: BatchJob, batch_index: int, windows=None) -> BatchResult:
    """Stage one batch: fn on each of its tiles, joined across its inner seams, staged as one batch tile."""
    tj, grid = job.tiles, job.tiles.grid
    batch = job.batches.tile(batch_index)
    origin = [s.start for s in batch.spatial_core]
    # made when a tile first has labels, uninitialised: the slots of tiles without labels are zeroed
    # one by one. np.zeros of a 1024^2 core is a 0.5 ms memset, paid by every empty batch before
    core, blank = None, []
    parts, n_total, skipped, n_tiles = [], 0, 0, 0
    indices = list(tiles_of(grid, job.block, batch.index))
    if windows is None:  # one read for the whole block (halos included): one zarr call, not one per tile
        first, last = grid.tile(indices[0]).window, grid.tile(indices[-1]).window
        box = tuple(slice(a.start, b.stop) for a, b in zip(first, last))
        if known_empty(tj, box):  # a sparse image's empty block: skipped unread
            tj.staging.put(batch, None, None, 0)
            return BatchResult(linear_index=batch.linear_index, n_labels=0, skipped=len(indices),
                               n_tiles=len(indices))
        block = np.asarray(tj.source[box])
    members = [grid.tile(index) for index in indices]
    for j, tile in enumerate(members):
        n_tiles += 1
        if windows is not None:
            window = windows[j]
        else:
            window = block[tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(tile.window, box))]
        where = tuple(slice(c.start - o, c.stop - o) for c, o in zip(tile.spatial_core, origin))
        if tj.empty_threshold is not None and (window.size == 0 or window.max() <= tj.empty_threshold):
            skipped += 1
            blank.append(where)
            continue
        labels = validate_labels(window if tj.fn is None else tj.fn(window), tile, tile.window_shape,
                                 what="the input" if tj.fn is None else "fn")
        ids = labels[tile.spatial_crop]
        if tj.label_counts is not None:
            ids, lut, n = counted_ids(ids, tj.label_counts, tile), None, int(tj.label_counts[tile.index])
        else:  # always 1..n: the batch's own numbering then has no gaps
            ids, lut, n = local_ids(ids, True, gap_free(tj.fn, labels, ids))
        if n == 0:
            blank.append(where)
            continue
        local = ids if lut is None else apply_lut(lut, ids)
        if core is None:
            core = np.empty(batch.core_shape, np.uint32)
        slot = core[where]
        # slot = local + n_total where local != 0, in three plain passes (a where= mask costs 4x: 3.9 vs 0.9 ms)
        np.minimum(local, 1, out=slot)
        np.multiply(slot, np.uint32(n_total), out=slot)
        np.add(slot, local, out=slot)
        if tj.table:
            parts.append(core_partials(tj, tile, ids, lut, n, window, n_total))
        n_total += n
    if core is None:  # no tile with labels: staged empty
        tj.staging.put(batch, None, None, 0)
        return BatchResult(linear_index=batch.linear_index, n_labels=0, skipped=skipped, n_tiles=n_tiles)
    for where in blank:
        core[where] = 0
    # the tile seams inside the block, as positions in the batch's core
    cuts = [[int(b) - o for b in bounds[1:-1] if c.start < b < c.stop]
            for bounds, c, o in zip(grid.boundaries, batch.spatial_core, origin)]
    lut, m = _join(_block_pairs(core, cuts, job.connectivity), n_total) if n_total else (None, 0)
    partials = b""
    if parts:  # staged means measured: the partials go with the batch
        joined = Partials.concat(parts)
        if lut is not None:
            joined = reduce_partials(joined.relabel(lut[joined.label.astype(np.int64)].astype(np.uint64)))
        partials = joined.to_bytes()
    tj.staging.put(batch, core, lut, m, partials=partials)
    return BatchResult(linear_index=batch.linear_index, n_labels=m, skipped=skipped, n_tiles=n_tiles)
