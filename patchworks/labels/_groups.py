"""Task groups: one dask task runs several staged items (batches, or tiles) one after the other.

Batches (``_batch``) bound the tasks of ``stitch="touch"`` only as far as a
batch may grow (2^24 voxels), and ``stitch="iou"`` keeps one tile per item.
A group is a run of consecutive items (C order) handled by one task, each
still staged, scanned, relabelled and measured as its own item: staged
keys, memory per item (a task holds one item at a time) and exactness are
those of one item per task. The group size is
:func:`patchworks.run._execute.group_size` of the phase's item count and
item size: every phase makes at most ``MAX_TASKS`` tasks whatever the tile
count, items smaller than 2^20 voxels (small tiles with ``stitch="iou"``,
which are never batched) are grouped to about that much work per task, and
a small run keeps at least ``MIN_GROUPS`` tasks for its workers.

Resume does not depend on the grouping: the driver lists the items already
staged and groups only the others. A group that fails part way (an error,
a lost worker retried by dask) runs again whole; the items it had already
staged are simply staged again (``put`` replaces the file atomically with
the same content), and a resumed run skips them, since they are staged.
A task sends back one small record of arrays for its items (not one
Python object per tile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..grid import TileGrid
from ._batch import BatchJob, stage_batch
from ._tile_task import stage_tile

# With a dask-array input a group's windows arrive together as its task's inputs: at most this many voxels
# of them (a batch's cap), so a group then holds no more than one large batch would.
MAX_GROUP_WINDOW_VOXELS = 1 << 24


@dataclass(frozen=True)
class GroupResult:
    """What a group task sends back: per item its index and label count; ``n_tiles``/``skipped`` for the bar."""

    index: np.ndarray            # int64 linear indices of the items (batch grid)
    n_labels: np.ndarray         # int64 label count of each
    n_tiles: int = 0             # tiles run (a batch counts its tiles)
    skipped: int = 0             # tiles skipped as empty


@dataclass(frozen=True)
class Counted:
    """A group task's result for the progress bar (``n_tiles`` done) and one number (``value``)."""

    n_tiles: int
    value: int = 0


def stage_group(job, items, windows=None) -> GroupResult:
    """Stage the items one after the other (the body of a grouped staging task)."""
    stage = stage_batch if isinstance(job, BatchJob) else stage_tile
    index = np.asarray(items, dtype=np.int64)
    n_labels = np.zeros(index.size, np.int64)
    n_tiles = skipped = 0
    for k, i in enumerate(index.tolist()):
        r = stage(job, i, None if windows is None else windows[k])
        n_labels[k] = r.n_labels
        n_tiles += int(getattr(r, "n_tiles", 1))
        skipped += int(r.skipped)
    return GroupResult(index=index, n_labels=n_labels, n_tiles=n_tiles, skipped=skipped)


def window_group_size(size: int, window_voxels: int) -> int:
    """Cap a group whose windows come as task inputs (a dask array's) at :data:`MAX_GROUP_WINDOW_VOXELS`.

    A dask-array input has a graph of one task per chunk of its own, so its
    graph is not bounded by grouping the staging anyway.
    """
    return max(1, min(int(size), MAX_GROUP_WINDOW_VOXELS // max(1, int(window_voxels))))


def tiles_per_item(tiles: TileGrid, block, items) -> np.ndarray:
    """Tiles in each batch ``items`` (linear indices on the batch grid of ``block``); ones without batches."""
    items = np.asarray(items, dtype=np.int64)
    if all(b == 1 for b in block):
        return np.ones(items.size, np.int64)
    shape = [math.ceil(g / b) for g, b in zip(tiles.grid_shape, block)]
    n = np.ones(items.size, np.int64)
    for i, b, g in zip(np.unravel_index(items, shape), block, tiles.grid_shape):
        n *= np.minimum(b, g - i * b)
    return n
