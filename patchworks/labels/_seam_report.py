"""Seam quality of a tiled label image, without ground truth.

Tiles that were stitched well leave no trace: cell walls fall on a seam
plane as often as on any other plane. So, per tiled axis, we compare the
share of adjacent foreground voxel pairs whose labels differ across the seam
planes (voxels ``b - 1`` and ``b`` at each inner tile boundary ``b``) with the
same share across control planes in the middle of every tile.

- seam rate well **above** the control rate: objects are cut at seams
  (missed joins, labels offset per tile);
- seam rate well **below** it: labels cross seams without changing where
  walls should be, i.e. touching objects were fused across seams (``touch``
  stitching of a dense tissue).

For connected-component labels both rates are 0 (adjacent foreground voxels
are always one object), so any label change on a seam counts as a cut.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..grid import TileGrid
from ..io._sources import open_image

__all__ = ["SeamAxis", "SeamReport", "seam_report"]

_MAX_TILE_VOXELS = 1 << 26  # read a tile whole up to this size, else only its planes

_VERDICTS = {
    "ok": "ok",
    "cut": "CUT: objects split at seams",
    "fused": "FUSED: objects merged across seams",
    "few data": "too little data to judge",
}


@dataclass(frozen=True)
class SeamAxis:
    """Seam statistics of one spatial axis (one row of a :class:`SeamReport`).

    ``*_pairs`` count adjacent voxel pairs across the planes where both
    voxels are foreground, ``*_changes`` those of them whose labels differ;
    ``*_rate`` is their ratio and ``ratio`` is seam rate / control rate
    (``nan`` when both are 0, ``inf`` when only the control rate is).
    ``p_value`` is the two-sided probability of a split of the label changes
    between seams and controls at least this uneven if both had the same
    rate. ``verdict`` is ``"ok"``, ``"cut"``, ``"fused"``, ``"few data"`` or
    ``"no seams"``.
    """

    axis: int
    n_seams: int
    seam_pairs: int
    seam_changes: int
    control_pairs: int
    control_changes: int
    seam_rate: float
    control_rate: float
    ratio: float
    p_value: float
    verdict: str

    @property
    def flagged(self) -> bool:
        return self.verdict in ("cut", "fused")


@dataclass(frozen=True)
class SeamReport:
    """Result of :func:`seam_report`: one :class:`SeamAxis` per spatial axis.

    ``ok`` is False when any axis is flagged. ``str(report)`` is a small
    table for the console.
    """

    shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    axes: tuple[SeamAxis, ...]
    tolerance: float
    min_pairs: int
    alpha: float

    @property
    def ok(self) -> bool:
        return not any(row.flagged for row in self.axes)

    @property
    def flagged(self) -> tuple[SeamAxis, ...]:
        return tuple(row for row in self.axes if row.flagged)

    def __str__(self) -> str:
        status = "ok" if self.ok else "FLAGGED (" + ", ".join(f"axis {r.axis}: {r.verdict}" for r in self.flagged) + ")"
        lines = [f"seam report: shape {self.shape}, tile_shape {self.tile_shape}: {status}",
                 "axis  seams  seam pairs  seam rate  control rate  ratio        p  verdict"]
        for r in self.axes:
            if r.verdict == "no seams":
                lines.append(f"{r.axis:>4}  {0:>5}  {'-':>10}  {'-':>9}  {'-':>12}  {'-':>5}  {'-':>7}  not tiled")
            else:
                lines.append(f"{r.axis:>4}  {r.n_seams:>5}  {r.seam_pairs:>10}  {r.seam_rate:>9.4f}  "
                             f"{r.control_rate:>12.4f}  {r.ratio:>5.2f}  {r.p_value:>7.1g}  {_VERDICTS[r.verdict]}")
        lines += ["rate: share of adjacent foreground voxel pairs whose labels differ across seam planes / mid-tile "
                  "control planes;",
                  f"an axis is flagged when seam rate / control rate leaves [{1 / self.tolerance:.3g}, "
                  f"{self.tolerance:.3g}] with p < {self.alpha:g} and >= {self.min_pairs} pairs each"]
        return "\n".join(lines)


def seam_report(labels, tile_shape=None, *, component=None, tolerance: float = 2.0, min_pairs: int = 256,
                alpha: float = 1e-3) -> SeamReport:
    """Check a tiled label image for objects cut or fused at the tile seams.

    Per spatial axis, compares how often labels change between adjacent
    foreground voxels across the seam planes with how often they change
    across control planes (up to 8 per tile, in the middle half of every
    tile). Needs no ground truth. Reads every tile once (only the planes it
    needs, for very large tiles), so it runs on images far larger than
    memory. An axis tiled one voxel thick has no control planes and is not
    judged.

    Parameters
    ----------
    labels : array-like or path
        Integer labels (0 = background): numpy, dask, zarr array or path
        (see :func:`patchworks.open_image`).
    tile_shape : int, tuple or dict, optional
        Tile core shape the labels were made with. Default: the
        ``tile_shape`` that :func:`patchworks.tile_process` records in the
        attributes of its zarr output.
    component : str, optional
        Array inside a zarr group / HDF5 file.
    tolerance : float, default 2.0
        An axis is flagged when seam rate / control rate is above
        ``tolerance`` ("cut") or below ``1 / tolerance`` ("fused"). Cutting
        every object that crosses a seam raises its rate to 1, ~10x the
        rate of objects ~10 voxels wide; fusing them drops it to 0. Honest
        seams of ground-truth tissue give 0.8-1.25 on 1024²-2048² images.
        2 is far from both, so a flag means a real defect, and it still
        catches seams that cut about one crossing object in seven (cells
        12 voxels wide) or lose half of their walls; 1.5 is more sensitive.
    min_pairs : int, default 256
        Judge an axis only with at least this many foreground pairs both on
        its seams and on its controls.
    alpha : float, default 1e-3
        ... and only when a difference that large is unlikely by chance:
        two-sided binomial test of the seams' share of the label changes,
        given their share of the pairs, with changes counted in units of
        their clustering on the control planes (one wall changes many
        neighbouring pairs). Guards small images; ``alpha=1`` judges on the
        ratio alone.

    Returns
    -------
    SeamReport
        ``ok``, one row per axis, and a table as ``str(report)``.

    Examples
    --------
    >>> from patchworks.testing import dense_tissue
    >>> truth = dense_tissue((128, 128), 8)
    >>> seam_report(truth, (32, 32)).ok
    True
    >>> tile = (np.arange(128) // 32)[:, None] * 4 + np.arange(128) // 32   # tile index per voxel
    >>> report = seam_report(truth + 1000 * tile, (32, 32))                   # labels offset per tile
    >>> report.ok, [row.verdict for row in report.axes]
    (False, ['cut', 'cut'])
    """
    source = open_image(labels, component=component, name="labels")
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "iub":
        raise TypeError(f"labels: dtype {dtype} is not an integer label image; pass the labels, not the image")
    if tile_shape is None:
        tile_shape = _recorded_tile_shape(labels, component)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 1:
        raise ValueError(f"tolerance={tolerance!r}: use a number > 1, e.g. 2.0 (flag ratios above 2 or below 1/2)")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, (int, np.integer)) or min_pairs < 1:
        raise ValueError(f"min_pairs={min_pairs!r}: use an int >= 1, e.g. 256")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha!r}: use a probability in (0, 1], e.g. 1e-3 (1 judges on the ratio alone)")
    grid = TileGrid(source.shape, tile_shape)
    counts = _count_changes(source, grid)
    rows = tuple(_judge(a, grid, counts[a], tolerance, min_pairs, alpha) for a in range(len(grid.shape)))
    return SeamReport(shape=tuple(grid.shape), tile_shape=tuple(grid.tile_shape), axes=rows,
                      tolerance=float(tolerance), min_pairs=int(min_pairs), alpha=float(alpha))


def _recorded_tile_shape(labels, component):
    """``tile_shape`` from the ``patchworks`` attributes of a zarr array written by tile_process."""
    import zarr

    array = None
    if isinstance(labels, zarr.Array):
        array = labels
    elif isinstance(labels, (str, os.PathLike)) and os.path.isdir(labels):
        try:  # a plain array, or a label image (group) whose run record holds the tile shape
            array = zarr.open(store=os.fspath(labels), mode="r", path=component or "")
        except Exception:  # not zarr: no attributes to read
            array = None
    attrs = array.attrs.get("patchworks") if array is not None else None
    recorded = attrs.get("tile_shape") if isinstance(attrs, dict) else None
    if recorded is None:
        what = f"labels={os.fspath(labels)!r}" if isinstance(labels, (str, os.PathLike)) else "labels"
        raise ValueError(f"tile_shape=None: {what} carries no recorded tile shape (only zarr arrays written by "
                         f"patchworks.tile_process / merge_tile_labels do); pass tile_shape=, the tile core shape "
                         f"the labels were made with, e.g. tile_shape=(64, 512, 512)")
    return tuple(int(t) for t in recorded)


def _count_changes(source, grid: TileGrid) -> np.ndarray:
    """Per axis: [seam pairs, seam changes, control pairs, control changes, control spread sums...]."""
    ndim = len(grid.shape)
    counts = np.zeros((ndim, 4 + 3 * len(_PATCHES)), np.int64)
    pending = [dict() for _ in range(ndim)]  # last plane of a tile, waiting for its neighbour along the axis
    whole = math.prod(grid.tile_shape) <= _MAX_TILE_VOXELS

    def read(tile):
        if whole:
            block = np.asarray(source[tile.core])
            return [(np.take(block, 0, a), np.take(block, -1, a),
                     _control_stats([(np.take(block, p - 1, a), np.take(block, p, a))
                                     for p in _control_positions(block.shape[a])])) for a in range(ndim)]
        out = []
        for a in range(ndim):  # huge tiles: read only the planes this axis needs
            start, stop = tile.core[a].start, tile.core[a].stop
            at = [tile.core[:a] + (i,) + tile.core[a + 1:] for i in range(start, stop)]
            controls = [(np.asarray(source[at[p - 1]]), np.asarray(source[at[p]]))
                        for p in _control_positions(stop - start, at_most=3)]
            # own copies of the edge planes: the last one waits for the next tile
            out.append((np.array(source[at[0]]), np.array(source[at[-1]]), _control_stats(controls)))
        return out

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # reading, decompressing and counting run ahead
        queue = deque()
        for tile in grid:
            queue.append((tile, pool.submit(read, tile)))
            if len(queue) > workers:
                _consume(*_pop(queue), grid, counts, pending)
        while queue:
            _consume(*_pop(queue), grid, counts, pending)
    return counts


def _pop(queue):
    tile, future = queue.popleft()
    return tile, future.result()


def _control_positions(n: int, at_most: int = 8) -> list[int]:
    """Control planes (between ``p - 1`` and ``p``) spread over the middle half of a tile ``n`` thick."""
    if n < 2:
        return []
    lo, hi = max(1, n // 4), max(1, n - n // 4 - 1)
    return sorted(set(np.linspace(lo, hi, min(at_most, hi - lo + 1)).round().astype(int).tolist()))


def _consume(tile, planes, grid: TileGrid, counts, pending) -> None:
    for a, (first, last, control) in enumerate(planes):
        key = tile.index[:a] + tile.index[a + 1:]
        if tile.index[a] > 0:
            both, changed = _pairs(pending[a].pop(key), first)
            counts[a, 0:2] += np.count_nonzero(both), np.count_nonzero(changed)
        if tile.index[a] < grid.grid_shape[a] - 1:
            pending[a][key] = last  # np.take copied it: the tile itself is not kept alive
        counts[a, 2:] += control


def _pairs(x, y):
    """Masks of the adjacent pairs (x, y) that are both foreground, and of those whose labels differ."""
    both = (x != 0) & (y != 0)
    return both, both & (x != y)


_PATCHES = (8, 32)  # in-plane patch sides over which the spread of the control counts is measured


def _control_stats(pairs) -> np.ndarray:
    """[pairs, changes, then per patch side: sum k², sum k n, sum n²] over control plane pairs.

    Changes are not independent: one wall lying along or crossing the plane
    changes many neighbouring pairs at once. How much the counts of in-plane
    patches spread beyond binomial noise measures that (see ``_judge``).
    """
    out = np.zeros(2 + 3 * len(_PATCHES), np.int64)
    for x, y in pairs:
        both, changed = _pairs(x, y)
        out[:2] += np.count_nonzero(both), np.count_nonzero(changed)
        for i, side in enumerate(_PATCHES):
            n, k = _patch_sums(both, side), _patch_sums(changed, side)
            out[2 + 3 * i: 5 + 3 * i] += (k * k).sum(), (k * n).sum(), (n * n).sum()
    return out


def _patch_sums(mask, side):
    sums = mask.astype(np.int64)
    for a in range(mask.ndim):
        sums = np.add.reduceat(sums, np.arange(0, mask.shape[a], side), axis=a)
    return sums


def _dispersion(control) -> float:
    """Variance of the control counts over its binomial value (Pearson), the largest over patch sides; >= 1."""
    n, k = int(control[0]), int(control[1])
    if not n or k in (0, n):
        return 1.0
    r = k / n
    out = 1.0
    for i in range(len(_PATCHES)):
        kk, kn, nn = (float(v) for v in control[2 + 3 * i: 5 + 3 * i])
        out = max(out, (kk - 2 * r * kn + r * r * nn) / (r * (1 - r) * n))
    return out


def _judge(axis, grid: TileGrid, c, tolerance, min_pairs, alpha) -> SeamAxis:
    seam_pairs, seam_changes, control_pairs, control_changes = (int(v) for v in c[:4])
    n_seams = grid.grid_shape[axis] - 1
    seam_rate = seam_changes / seam_pairs if seam_pairs else math.nan
    control_rate = control_changes / control_pairs if control_pairs else math.nan
    if seam_changes == 0 and control_changes == 0:
        ratio = math.nan
    elif control_changes == 0:
        ratio = math.inf
    else:
        ratio = seam_rate / control_rate if seam_pairs else math.nan
    # Changes come in clusters (one wall changes many neighbouring pairs), so the test counts
    # changes / dispersion, the dispersion measured on the controls (what seams should look like).
    spread = _dispersion(c[2:])
    p = _binomial_p(round(seam_changes / spread), round((seam_changes + control_changes) / spread),
                    seam_pairs / max(1, seam_pairs + control_pairs))
    if n_seams == 0:
        verdict = "no seams"
    elif min(seam_pairs, control_pairs) < min_pairs:
        verdict = "few data"
    elif math.isnan(ratio) or 1 / tolerance <= ratio <= tolerance:
        verdict = "ok"
    elif p >= alpha and alpha < 1:
        verdict = "few data"  # uneven, but not beyond chance with this many changes
    else:
        verdict = "cut" if ratio > tolerance else "fused"
    return SeamAxis(axis=axis, n_seams=n_seams, seam_pairs=seam_pairs, seam_changes=seam_changes,
                    control_pairs=control_pairs, control_changes=control_changes, seam_rate=seam_rate,
                    control_rate=control_rate, ratio=ratio, p_value=p, verdict=verdict)


def _binomial_p(k: int, n: int, p: float) -> float:
    """Two-sided p-value of ``k`` successes in ``n`` trials of probability ``p`` (1.0 when undefined)."""
    if n == 0 or not 0 < p < 1:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(k, n, p).pvalue)
