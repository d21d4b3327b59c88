"""What one tile task does: read window -> fn -> validate -> number -> stage.

The task stages the tile's core with its local numbering ``1..n`` and its
seam planes (see ``_stage_store``), then returns only a tiny
:class:`TileResult`. The merge works from the seam planes, so it never
re-reads the volume, and ``fn`` is never called a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import fastremap
import numpy as np

from ..grid import Tile, TileGrid
from ._table import tile_partials

_UINT32_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class TileResult:
    """What a tile task sends back to the driver: its position and label count."""

    linear_index: int
    n_labels: int
    skipped: bool = False        # skip_empty: the whole window was at or below the threshold


@dataclass
class StageJob:
    """Everything a tile task needs; enters the task graph once."""

    grid: TileGrid
    staging: Any                 # MemoryStaging or DiskStaging
    fn: Callable | None = None   # None: the source already holds labels (merge_tile_labels)
    source: Any = None           # numpy array or LazySource; None when windows arrive as task inputs
    label_counts: Any = None     # per-tile counts the caller vouches for (labels already 1..n)
    compact: bool = True         # number 1..n without gaps (sequential output needs it)
    empty_threshold: float | None = None  # skip fn when the whole window is <= this
    table: bool = False          # measure the core's table partials (staged with the tile)
    intensity: bool = False      # measure the window's intensities too (the window is the image)


def _window_text(tile: Tile) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in tile.spatial_window) + "]"


def validate_labels(labels, tile: Tile, expected_shape, what: str = "fn") -> np.ndarray:
    """Check a tile function's output; errors name the tile index and window."""
    if isinstance(labels, np.ndarray) and labels.shape == tuple(expected_shape) and labels.dtype.kind == "u":
        return labels  # the common case, checked without building the messages (µs per tile at 10^5 tiles)
    where = f"tile {tile.index} (window {_window_text(tile)})"
    if not isinstance(labels, np.ndarray):
        if hasattr(labels, "__array__") and not isinstance(labels, (list, tuple, int, float)):
            labels = np.asarray(labels)
        else:
            raise TypeError(
                f"{what} returned {type(labels).__name__} for {where}; it must return a numpy array of "
                f"integer labels with the window's spatial shape {tuple(expected_shape)}")
    if labels.shape != tuple(expected_shape):
        raise ValueError(
            f"{what} returned shape {labels.shape} for {where}; expected the window's spatial shape "
            f"{tuple(expected_shape)} (channels dropped). Return one label per voxel of the window it was given")
    if labels.dtype == np.bool_:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"{what} returned dtype {labels.dtype} for {where}; labels must be integers "
            f"(0 = background). Threshold or label a float map first, e.g. cc3d.connected_components(prob > 0.5)")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(
            f"{what} returned negative labels (min {labels.min()}) for {where}; labels must be >= 0 "
            f"with 0 as background")
    return labels


def local_ids(core: np.ndarray, compact: bool = True,
              consecutive: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Number a tile's non-zero labels ``1..n`` without rewriting the tile.

    Returns ``(ids, lut, n)`` with ``lut[ids]`` the local ids (``lut`` is
    None when ``ids`` already are local). For the small ids segmenters
    produce, the ids are kept as they are: with ``compact=False`` the tile
    simply reserves ``1..max`` (unused ids become gaps in a non-sequential
    output), otherwise a presence table numbers them ``1..n``, which the
    relabel task composes with the final look-up, so the tile is rewritten
    once instead of twice. ``consecutive``: the ids are known to be
    ``1..max`` (a labeller's whole output, see :func:`gap_free`): no count.
    """
    top = int(core.max()) if core.size else 0
    if top == 0:
        return np.zeros(core.shape, np.uint32), None, 0
    if top <= 4 * core.size + 1024 and (consecutive or not compact):
        return core.astype(np.uint32, copy=False), None, top
    if top <= 4 * core.size + 1024:
        # bincount, not ``present[core] = True``: one counting pass (0.9 vs 1.5 ms on a 512^2 tile)
        present = np.bincount(core.reshape(-1), minlength=top + 1).astype(bool)
        present[0] = False
        lut = np.cumsum(present, dtype=np.uint64)
        n = int(lut[-1])
        ids = core if core.dtype == np.uint32 else core.astype(np.uint32)
        if n == top:  # already 1..n
            return ids, None, n
        return ids, lut.astype(np.uint32), n
    renumbered, mapping = fastremap.renumber(np.ascontiguousarray(core), preserve_zero=True)
    n = len(mapping) - (0 in mapping)
    if n > _UINT32_MAX:
        raise ValueError("a single tile holds more than 2**32-1 labels; use smaller tiles")
    return renumbered.astype(np.uint32, copy=False), None, n


def band_ids(labels: np.ndarray, tile: Tile, boxes) -> tuple[np.ndarray, np.ndarray | None, int, list]:
    """Local numbering for ``stitch="iou"``: core labels ``1..n``, halo-only labels after them.

    Returns ``(ids, lut, n, bands)`` like :func:`local_ids` (``lut`` maps
    the core's raw ids to ``1..n``) plus the tile's view of each band box
    in local ids, made one at a time as ``bands`` is iterated (six bands of
    a 3-D tile together would outweigh the tile). A label seen only in the
    halo (a neighbour's object, as this tile sees it) gets an id above
    ``n``: it competes in the IoU matching but owns no output voxel, so it
    never joins anything.
    """
    top = int(labels.max()) if labels.size else 0
    if top > 4 * labels.size + 1024:  # huge raw ids: number the window compactly first
        labels, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
        top = int(labels.max())
    origin = [s.start for s in tile.spatial_window]
    views = [labels[tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, origin))] for box in boxes]
    core = labels[tile.spatial_crop]
    in_core = np.zeros(top + 1, dtype=bool)
    in_core[core] = True
    in_core[0] = False
    core_lut = np.cumsum(in_core, dtype=np.uint32)
    n = int(core_lut[-1])
    if n == 0:
        return np.zeros(core.shape, np.uint32), None, 0, []
    halo_only = np.zeros(top + 1, dtype=bool)
    for view in views:
        halo_only[view] = True
    halo_only &= ~in_core
    halo_only[0] = False
    full = core_lut.copy()
    full[halo_only] = n + np.cumsum(halo_only, dtype=np.uint32)[halo_only]
    core_lut[~in_core] = 0
    ids = core if core.dtype == np.uint32 else core.astype(np.uint32)
    return ids, core_lut, n, (full[v] for v in views)


def core_partials(job: StageJob, tile: Tile, ids, lut, n: int, window, shift: int = 0):
    """The core's table partials, measured while it is in memory, rows named by local id + ``shift``.

    ``ids`` are raw when ``lut`` is given: measured by raw id (no relabelled
    copy of the tile), then the rows are named through ``lut``.
    """
    intensity = None
    if job.intensity:
        spatial = job.grid.spatial_axes
        core = np.asarray(window[tile.crop])
        others = [a for a in range(core.ndim) if a not in spatial]
        intensity = np.moveaxis(core, others, list(range(len(others)))).reshape((-1,) + tile.core_shape)
    parts = tile_partials(ids, n if lut is None else lut.size - 1, [s.start for s in tile.spatial_core], intensity)
    local = parts.label if lut is None else lut[parts.label.astype(np.int64)]
    return parts.relabel(np.asarray(local, np.uint64) + np.uint64(shift))


def _stage_partials(job: StageJob, tile: Tile, ids, lut, n: int, window) -> bytes:
    """The bytes of the core's partials for its staged object (staged means measured); none without a table."""
    if not job.table or n == 0:
        return b""
    return core_partials(job, tile, ids, lut, n, window).to_bytes()


def counted_ids(core: np.ndarray, label_counts, tile) -> np.ndarray:
    """A core already numbered ``1..n`` by the caller (``label_counts``), checked, as uint32 ids."""
    n = int(label_counts[tile.index])
    top = int(core.max()) if core.size else 0
    if top > n:
        raise ValueError(
            f"label_counts[{tile.index}] = {n} but that tile holds label {top}; label_counts must be the "
            f"number of labels of each tile, numbered 1..n, or leave label_counts=None")
    return core.astype(np.uint32, copy=False)


def gap_free(fn, labels: np.ndarray, core: np.ndarray) -> bool:
    """Whether the core ``core`` of ``fn``'s output ``labels`` is known to hold ids ``1..max`` without gaps.

    ``fn`` says so with a true ``gap_free`` attribute (the built-in
    ``threshold`` / ``otsu``: connected components are numbered
    consecutively), and only the whole output counts: a halo cropped off
    may have taken some labels with it.
    """
    return bool(getattr(fn, "gap_free", False)) and core.shape == labels.shape


def known_empty(job: StageJob, window) -> bool:
    """Whether ``skip_empty`` skips the window ``job.source[window]`` without reading it.

    True when the source knows the window holds one value at or below the
    threshold (a sparse zarr image whose chunks there were never written):
    no read, no decode and no maximum over the voxels.
    """
    if job.empty_threshold is None:
        return False
    blank = getattr(job.source, "blank", None)
    value = blank(window) if blank is not None else None
    return value is not None and value <= job.empty_threshold


def stage_tile(job: StageJob, linear_index: int, window=None) -> TileResult:
    """Run one tile: the body of a staging task."""
    grid = job.grid
    tile = grid.tile(linear_index)
    if window is None and known_empty(job, tile.window):
        job.staging.put(tile, None, None, 0)
        return TileResult(linear_index=tile.linear_index, n_labels=0, skipped=True)
    if window is None:
        window = np.asarray(job.source[tile.window])
    if job.empty_threshold is not None and (window.size == 0 or window.max() <= job.empty_threshold):
        job.staging.put(tile, None, None, 0)  # exact: the window it would have seen is all background
        return TileResult(linear_index=tile.linear_index, n_labels=0, skipped=True)
    if job.fn is None:
        labels = validate_labels(window, tile, tile.window_shape, what="the input")
    else:
        labels = validate_labels(job.fn(window), tile, tile.window_shape)
    if job.staging.bands:  # stitch="iou": the band views come from the whole window
        ids, lut, n, bands = band_ids(labels, tile, job.staging.band_boxes(tile).values())
        job.staging.put(tile, ids, lut, n, bands, partials=_stage_partials(job, tile, ids, lut, n, window))
        return TileResult(linear_index=tile.linear_index, n_labels=n)
    core = labels[tile.spatial_crop]
    if core.shape != labels.shape:
        core = np.ascontiguousarray(core)  # do not keep the halo alive while the tile waits
    if job.label_counts is not None:
        ids, lut, n = counted_ids(core, job.label_counts, tile), None, int(job.label_counts[tile.index])
    else:
        ids, lut, n = local_ids(core, job.compact, gap_free(job.fn, labels, core))
    job.staging.put(tile, ids, lut, n, partials=_stage_partials(job, tile, ids, lut, n, window))
    return TileResult(linear_index=tile.linear_index, n_labels=n)
