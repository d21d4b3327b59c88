"""The object table of a labelling run: staged partials -> final ids -> rows on disk.

The tile tasks staged per-label partials of their cores with each tile (the
tail of its staged object, see ``_stage_store``). The relabel task that reads
a tile back maps its partials through the same
:class:`~patchworks.labels._merge.TilePlan` it relabels the tile with
(:func:`tile_rows`; no object, read or task of their own). An object's
final id is its root's, the smallest global id of the object, so every
object belongs to exactly one tile, the one
holding its root; and since final ids grow with the root, the tiles' own
rows, taken in tile order, are the whole table sorted by label. A tile keeps
the rows of the objects it owns (reduced, in a side file) and sends back to
the driver only the rows of its labels absorbed into an earlier tile's
object: those are boundary labels, so the driver's memory grows with the
number of objects on seams, never with all objects. The driver then streams
the tiles' rows in order, folding each boundary row into its owner's, into
the table's column arrays one chunk at a time.

A group whose own rows fit its share of :data:`INLINE_ROWS_BYTES` (the
budget divided by the number of groups) sends them back with its result
instead: on an object store each side file costs a PUT and a GET, which is
two of a tile's few requests, and locally a write and a read. The driver
then holds at most that budget of own rows, whatever the run's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..grid import TileGrid
from ..io._table_store import TableWriter, labels_stamp
from ._table import Partials, column_dtypes, reduce_partials, table_columns


# own rows the driver may receive with the relabel results, all groups together (the rest go to side files)
INLINE_ROWS_BYTES = 64 << 20


def _own_stem(linear_index: int) -> str:
    return f"rows-{linear_index}"


@dataclass
class TableJob:
    """What a relabel task needs to map its tiles' partials: where own rows go, and the partials' shape."""

    scratch: object              # the run's Scratch (staged tiles' objects)
    ndim: int
    n_channels: int
    inline_rows: int = 0         # a group with at most this many own rows returns them instead of saving them

    @staticmethod
    def for_groups(scratch, ndim: int, n_channels: int, n_groups: int) -> "TableJob":
        """A job whose ``n_groups`` groups share :data:`INLINE_ROWS_BYTES` of inline own rows."""
        rows = INLINE_ROWS_BYTES // Partials.row_bytes(ndim, n_channels)
        return TableJob(scratch, ndim, n_channels, rows // max(1, n_groups))


def _own_lower(plan) -> int:
    """Final ids above this belong to objects whose root lies in the tile (``plan``'s tile)."""
    return int(plan.offset) - int(plan.base)


def tile_rows(job: TableJob, linear_index: int, plan, raw: bytes | None):
    """Map one tile's partials (``raw``, staged with it) to final ids.

    Returns ``(the rows of the objects it owns, the others' rows)``.
    """
    if raw is None:  # a tile with no labels in its core (or skipped as empty)
        empty = Partials.empty(job.ndim, job.n_channels)
        return empty, empty
    parts = Partials.from_bytes(raw, job.ndim, job.n_channels)
    final = plan.final_ids(parts.label)
    own = final > np.uint64(_own_lower(plan))
    mine = reduce_partials(parts.take(own).relabel(final[own]))  # two labels of the tile may be one object
    return mine, parts.take(~own).relabel(final[~own])


@dataclass(frozen=True)
class GroupRows:
    """A group of tiles' share of the table: its tiles, the rows each keeps, the rows they send on.

    ``own`` holds the tiles' own rows, in tile order, when the group sent them
    back (``inline_rows``); else each owning tile saved them in a side file.
    """

    index: np.ndarray
    n_own: np.ndarray
    foreign: Partials
    own: Partials | None = None


def group_rows(job: TableJob, items, rows) -> GroupRows:
    """:func:`tile_rows`' results ``rows`` for the tiles ``items``, as one :class:`GroupRows`."""
    n_own = np.array([len(mine) for mine, _ in rows], np.int64)
    foreign = [f for _, f in rows if len(f)]
    foreign = Partials.concat(foreign) if foreign else Partials.empty(job.ndim, job.n_channels)
    own = None
    if n_own.sum() <= job.inline_rows:
        own = Partials.concat([mine for mine, _ in rows]) if rows else Partials.empty(job.ndim, job.n_channels)
    else:
        for i, (mine, _) in zip(np.asarray(items).tolist(), rows):
            if len(mine):  # the driver reads the rows of owners only
                mine.save(job.scratch, _own_stem(i))
    return GroupRows(index=np.asarray(items, np.int64), n_own=n_own, foreign=foreign, own=own)


class _Prefetch:
    """The tiles' own rows read ahead in batches of ``window`` keys, in the order the driver takes them.

    An object store answers a batch concurrently (one round trip, not one per
    tile); the window bounds what waits in the driver's memory. Each key is
    handed out once (a :class:`Scratch`'s ``get``) and then dropped.
    """

    def __init__(self, scratch, keys: list, window: int = 32):
        self.scratch, self.keys, self.window = scratch, list(keys), int(window)
        self.position = {k: j for j, k in enumerate(self.keys)}
        self.ready: dict = {}

    def get(self, key: str) -> bytes:
        if key not in self.ready and key in self.position:
            ahead = self.keys[self.position[key]:self.position[key] + self.window]
            self.ready.update(zip(ahead, self.scratch.get_many(ahead)))
        data = self.ready.pop(key, None) if key in self.position else self.scratch.get(key)
        if data is None:
            raise FileNotFoundError(f"{key} is not in {self.scratch}")
        return data


def write_object_table(*, scratch, grid: TileGrid, plan, table_path, labels_path, labels_rel: str, n_channels: int,
                       results, voxel_size=None, units=None, zarr_format: int = 3,
                       storage_options: dict | None = None) -> int:
    """Build the run's table from the tiles' rows and write it at ``table_path``; returns its rows.

    ``results``: the :class:`GroupRows` of the relabel tasks (their own rows
    sent back or kept in ``scratch``). ``labels_path`` is the finished level-0
    array (stamped so that a later change of it makes the table stale),
    ``labels_rel`` the same seen from the table.
    """
    ndim = len(grid.spatial_axes)
    n_own = np.zeros(grid.n_tiles, np.int64)
    foreign, inline = [], {}  # inline: tile -> its own rows, sent back with its group
    for r in results:
        n_own[r.index] = r.n_own
        if len(r.foreign):
            foreign.append(r.foreign)
        if r.own is not None:
            ends = np.cumsum(r.n_own)
            inline.update((int(i), r.own.take(slice(int(e - n), int(e))))
                          for i, n, e in zip(r.index, r.n_own, ends) if n)
    del results
    foreign = Partials.concat(foreign) if foreign else Partials.empty(ndim, n_channels)
    lower = plan.tiles.own_lower()  # array arithmetic, not one TilePlan per tile
    owner = np.searchsorted(lower, foreign.label, side="left") - 1
    order = np.argsort(owner, kind="stable")
    foreign, owner = foreign.take(order), owner[order]
    bounds = np.searchsorted(owner, np.arange(grid.n_tiles + 1))

    record = {"labels": labels_rel, "stamp": labels_stamp(labels_path, storage_options, zarr_format),
              "n_objects": int(n_own.sum()),
              "voxel_size": None if voxel_size is None else [float(v) for v in voxel_size],
              "units": None if units is None else list(units), "n_channels": int(n_channels)}
    writer = TableWriter(table_path, int(n_own.sum()), column_dtypes(ndim, n_channels, voxel_size=voxel_size),
                         record=record, zarr_format=zarr_format,
                         storage_options=storage_options)
    # rows of many tiles reduced and finished at once (per-call costs, not per tile): the tiles own
    # increasing ranges of labels, so the batch's rows sorted by label are its tiles' rows one after the other
    batch, first, n_batch = [], 0, 0  # first: the batch's first tile (those owning nothing included)
    owners = np.flatnonzero(n_own)
    stored = _Prefetch(scratch, [_own_stem(i) + ".npy" for i in owners if int(i) not in inline])

    def finish(last: int) -> None:
        rows = reduce_partials(Partials.concat(batch + [foreign.take(slice(bounds[first], bounds[last + 1]))]))
        if len(rows) != n_batch:
            raise RuntimeError(f"tiles {first}..{last}: boundary rows name objects the tiles do not own")
        writer.append(table_columns(rows, grid.spatial_shape, voxel_size=voxel_size))

    for i in owners:
        rows = inline.pop(int(i), None)
        if rows is None:
            rows = Partials.load(stored, _own_stem(i), ndim, n_channels)
        batch.append(rows)
        n_batch += len(rows)
        if n_batch >= writer.chunk:
            finish(int(i))
            batch, first, n_batch = [], int(i) + 1, 0
    if batch:
        finish(grid.n_tiles - 1)
    writer.close()
    return int(n_own.sum())


def spatial_voxel_size(source, grid: TileGrid, voxel_size=None):
    """``(voxel_size, units)`` per spatial axis from ``voxel_size=`` or the source's metadata, else ``(None, None)``.

    ``voxel_size`` may be a number, one per spatial axis, or one per axis of
    the image (non-spatial ones dropped); the source's ``voxel_size`` /
    ``units`` attributes (OME-Zarr, OME-TIFF, ImageJ) are used when it is None.
    """
    units = getattr(source, "units", None)
    if voxel_size is None:
        voxel_size = getattr(source, "voxel_size", None)
    if voxel_size is None:
        return None, None
    n, spatial = len(grid.spatial_axes), grid.spatial_axes
    if np.ndim(voxel_size) == 0:
        voxel_size = (float(voxel_size),) * n
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(voxel_size) == len(grid.shape) and len(grid.shape) != n:
        voxel_size = tuple(voxel_size[a] for a in spatial)
    if len(voxel_size) != n:
        raise ValueError(f"voxel_size={voxel_size!r}: give one size per spatial axis ({n}), e.g. "
                         f"{(1.0,) * n}")
    if isinstance(units, str) or units is None:
        units = None if units is None else (units,) * n
    else:
        units = tuple(units)
        if len(units) == len(grid.shape) and len(grid.shape) != n:
            units = tuple(units[a] for a in spatial)
        units = units if len(units) == n else None
    return voxel_size, units
