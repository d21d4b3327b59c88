"""Seam quality of a tiled label image, without ground truth.

Tiles that were stitched well leave no trace: cell walls and object edges
fall on a seam plane as often as on any other plane. So, per tiled axis, we
compare two rates across the seam planes (voxels ``b - 1`` and ``b`` at each
inner tile boundary ``b``) with the same rates across control planes in the
middle of every tile:

- **label changes**: the share of adjacent foreground voxel pairs whose
  labels differ. Seam rate well **above** the control rate: objects are cut
  at seams (missed joins, labels offset per tile); well **below** it: labels
  cross seams without changing where walls should be, i.e. touching objects
  were fused across seams (``touch`` stitching of a dense tissue).
- **object ends**: the share of adjacent pairs with foreground on at least
  one side that have it on one side only. Well **above** the control rate:
  objects stop at seams — the part beyond the seam was lost (a segmenter
  that drops objects touching its window edge, a tile lost in the merge).
  Label changes cannot see this: the pair is not two foreground voxels.

For connected-component labels the change rates are 0 (adjacent foreground
voxels are always one object), so any label change on a seam counts as a cut.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np

from ..grid import TileGrid
from ..io._sources import open_image
from ..io._urls import is_remote, local_path, zarr_store

__all__ = ["SeamAxis", "SeamReport", "seam_report"]

_MAX_TILE_VOXELS = 1 << 26  # read a tile whole up to this size, else only its planes

_VERDICTS = {
    "ok": "ok",
    "cut": "CUT: objects split at seams",
    "fused": "FUSED: objects merged across seams",
    "cut off": "CUT OFF: objects end at seams",
    "few data": "too little data to judge",
}
_FLAGS = ("cut off", "cut", "fused")  # an axis's verdict: the first of these its signals show


@dataclass(frozen=True)
class SeamAxis:
    """Seam statistics of one spatial axis (one row of a :class:`SeamReport`).

    Label changes: ``*_pairs`` count adjacent voxel pairs across the planes
    where both voxels are foreground, ``*_changes`` those of them whose labels
    differ; ``*_rate`` is their ratio and ``ratio`` is seam rate / control
    rate (``nan`` when both are 0, ``inf`` when only the control rate is).
    ``p_value`` is the two-sided probability of a split of the label changes
    between seams and controls at least this uneven if both had the same
    rate; ``change_verdict`` is ``"ok"``, ``"cut"``, ``"fused"`` or
    ``"few data"``.

    Object ends, the same way: ``*_fg_pairs`` count pairs with foreground on
    at least one side, ``*_ends`` those with foreground on one side only;
    ``end_*`` are their rates, ratio and p-value, and ``end_verdict`` is
    ``"ok"``, ``"cut off"`` or ``"few data"``.

    ``end_worst_tile`` is the tile after the seam face whose ends stand out
    most (rate above ``tolerance`` times the control rate), with that ratio
    and its p-value times the number of faces tested (Bonferroni): one lost
    tile cuts off every object on its faces only, which the axis-wide rate
    dilutes; a face alone below ``alpha`` also gives ``"cut off"``.

    ``verdict`` sums the axis up: ``"cut off"``, ``"cut"`` or ``"fused"``
    when a signal is flagged (in that order), else ``"few data"`` when a
    signal could not be judged, else ``"ok"``; ``"no seams"`` for an untiled
    axis.
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
    change_verdict: str = "few data"
    seam_fg_pairs: int = 0
    seam_ends: int = 0
    control_fg_pairs: int = 0
    control_ends: int = 0
    end_seam_rate: float = math.nan
    end_control_rate: float = math.nan
    end_ratio: float = math.nan
    end_p_value: float = 1.0
    end_verdict: str = "few data"
    end_worst_tile: tuple | None = None
    end_worst_ratio: float = math.nan
    end_worst_p_value: float = 1.0

    @property
    def flagged(self) -> bool:
        return self.verdict in _FLAGS

    def to_dict(self) -> dict:
        """The row as a plain dict of Python scalars (``flagged`` included)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["flagged"] = self.flagged
        return out


@dataclass(frozen=True)
class SeamReport:
    """Result of :func:`seam_report`: one :class:`SeamAxis` per spatial axis.

    ``worst_tile`` is the tile whose faces, all axes together, show the
    most object ends against the controls (rate above ``tolerance`` times
    theirs), with that ratio and its p-value times the number of tiles
    tested; below ``alpha`` the tile is flagged ``cut off`` (``tile_flagged``):
    the signature of a tile lost in the merge, which on a 128² image has too
    few pairs on any one face to be seen axis by axis.

    ``ok`` is False when any axis or the worst tile is flagged.
    ``str(report)`` is a small table for the console.
    """

    shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    axes: tuple[SeamAxis, ...]
    tolerance: float
    min_pairs: int
    alpha: float
    worst_tile: tuple | None = None
    worst_tile_ratio: float = math.nan
    worst_tile_p_value: float = 1.0

    @property
    def tile_flagged(self) -> bool:
        return self.worst_tile is not None and (self.worst_tile_p_value < self.alpha or self.alpha == 1)

    @property
    def ok(self) -> bool:
        return not any(row.flagged for row in self.axes) and not self.tile_flagged

    @property
    def flagged(self) -> tuple[SeamAxis, ...]:
        return tuple(row for row in self.axes if row.flagged)

    def to_dict(self) -> dict:
        """The report as a plain dict (lists, str, int, float, bool; ``nan`` / ``inf`` stay floats).

        Examples
        --------
        >>> from patchworks.testing import dense_tissue
        >>> d = seam_report(dense_tissue((64, 64), 8), 32).to_dict()
        >>> d["ok"], d["tile_shape"], sorted(d["axes"][0])[:3]
        (True, [32, 32], ['axis', 'change_verdict', 'control_changes'])
        """
        return {"shape": list(self.shape), "tile_shape": list(self.tile_shape), "ok": self.ok,
                "tolerance": self.tolerance, "min_pairs": self.min_pairs, "alpha": self.alpha,
                "axes": [row.to_dict() for row in self.axes],
                "worst_tile": None if self.worst_tile is None else list(self.worst_tile),
                "worst_tile_ratio": self.worst_tile_ratio, "worst_tile_p_value": self.worst_tile_p_value,
                "tile_flagged": self.tile_flagged}

    def __str__(self) -> str:
        flags = [f"axis {r.axis}: {r.verdict}" for r in self.flagged]
        if self.tile_flagged:
            flags.append(f"tile {self.worst_tile}: cut off")
        status = "ok" if self.ok else "FLAGGED (" + ", ".join(flags) + ")"
        lines = [f"seam report: shape {self.shape}, tile_shape {self.tile_shape}: {status}",
                 "axis  signal   seams  seam pairs  seam rate  control rate  ratio        p  verdict"]
        for r in self.axes:
            if r.verdict == "no seams":
                lines.append(f"{r.axis:>4}  {'-':<7}  {0:>5}  {'-':>10}  {'-':>9}  {'-':>12}  {'-':>5}  {'-':>7}  "
                             f"not tiled")
                continue
            for name, pairs, seam, control, ratio, p, verdict in (
                    ("changes", r.seam_pairs, r.seam_rate, r.control_rate, r.ratio, r.p_value, r.change_verdict),
                    ("ends", r.seam_fg_pairs, r.end_seam_rate, r.end_control_rate, r.end_ratio, r.end_p_value,
                     r.end_verdict)):
                lines.append(f"{r.axis:>4}  {name:<7}  {r.n_seams:>5}  {pairs:>10}  {seam:>9.4f}  {control:>12.4f}  "
                             f"{ratio:>5.2f}  {p:>7.1g}  {_VERDICTS[verdict]}")
        if self.worst_tile is not None:
            lines.append(f"worst tile {self.worst_tile}: object ends on its faces {self.worst_tile_ratio:.2f}x the "
                         f"control rate, p {self.worst_tile_p_value:.1g} (x tiles tested): "
                         f"{'CUT OFF: a tile lost?' if self.tile_flagged else 'ok'}")
        lines += ["changes: share of adjacent foreground voxel pairs whose labels differ; ends: share of pairs with "
                  "foreground on one side only (of those with any);",
                  "each across the seam planes / mid-tile control planes. A signal is flagged when seam rate / "
                  f"control rate leaves [{1 / self.tolerance:.3g}, {self.tolerance:.3g}] (ends: only above) "
                  f"with p < {self.alpha:g} and >= {self.min_pairs} pairs each"]
        return "\n".join(lines)


def seam_report(labels, tile_shape=None, *, component=None, tolerance: float = 2.0, min_pairs: int = 32,
                alpha: float = 1e-3, storage_options=None) -> SeamReport:
    """Check a tiled label image for objects cut, fused or cut off at the tile seams.

    Per spatial axis, compares across the seam planes and across control
    planes (up to 8 per tile, in the middle half of every tile) how often
    labels change between adjacent foreground voxels (objects cut or fused)
    and how often foreground on one side meets background on the other
    (objects cut off: their part beyond the seam lost), the latter also seam
    face by seam face (a lost tile). Needs no ground truth. Reads every tile once (only the planes it
    needs, for very large tiles), so it runs on images far larger than
    memory. An axis tiled one voxel thick has no control planes and is not
    judged.

    Parameters
    ----------
    labels : array-like, path or URL
        Integer labels (0 = background): numpy, dask, zarr array, path or
        URL (see :func:`patchworks.open_image`).
    tile_shape : int, tuple or dict, optional
        Tile core shape the labels were made with. Default: the
        ``tile_shape`` that :func:`patchworks.tile_process` records in the
        attributes of its zarr output.
    component : str, optional
        Array inside a zarr group / HDF5 file.
    tolerance : float, default 2.0
        An axis is flagged when the label-change seam rate / control rate is
        above ``tolerance`` ("cut") or below ``1 / tolerance`` ("fused"), or
        the object-end ratio above ``tolerance`` ("cut off"; cutting off
        every object that crosses a seam gives 3-4 on blobs ~10 voxels
        wide). Cutting
        every object that crosses a seam raises its rate to 1, ~10x the
        rate of objects ~10 voxels wide; fusing them drops it to 0. Honest
        seams of ground-truth tissue give 0.8-1.25 on 1024²-2048² images.
        2 is far from both, so a flag means a real defect, and it still
        catches seams that cut about one crossing object in seven (cells
        12 voxels wide) or lose half of their walls; 1.5 is more sensitive.
    min_pairs : int, default 32
        Judge a signal only with at least this many pairs both on the seams
        and on the controls (a single seam face: a quarter of it); ``alpha``
        does the rest, so a 128² image tiled 32² gets a verdict.
    alpha : float, default 1e-3
        ... and only when a difference that large is unlikely by chance:
        two-sided binomial test of the seams' share of the events (label
        changes, object ends), given their share of the pairs, with events
        counted in units of their clustering on the control planes (one wall
        changes many neighbouring pairs); for single faces, times the number
        of faces tested. Guards small images; ``alpha=1`` judges on the
        ratio alone.
    storage_options : dict, optional
        For a URL ``labels``: options of its fsspec backend (credentials,
        endpoint), as for :func:`patchworks.open_image`.

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
    source = open_image(labels, component=component, name="labels", storage_options=storage_options)
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "iub":
        raise TypeError(f"labels: dtype {dtype} is not an integer label image; pass the labels, not the image")
    if tile_shape is None:
        tile_shape = _recorded_tile_shape(labels, component, storage_options)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 1:
        raise ValueError(f"tolerance={tolerance!r}: use a number > 1, e.g. 2.0 (flag ratios above 2 or below 1/2)")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, (int, np.integer)) or min_pairs < 1:
        raise ValueError(f"min_pairs={min_pairs!r}: use an int >= 1, e.g. 32")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha!r}: use a probability in (0, 1], e.g. 1e-3 (1 judges on the ratio alone)")
    grid = TileGrid(source.shape, tile_shape)
    counts, faces = _count_changes(source, grid)
    rows = tuple(_judge(a, grid, counts[a], faces[a], tolerance, min_pairs, alpha) for a in range(len(grid.shape)))
    worst = _worst_tile(grid, counts, faces, tolerance, max(1, min_pairs // 4))
    return SeamReport(shape=tuple(grid.shape), tile_shape=tuple(grid.tile_shape), axes=rows,
                      tolerance=float(tolerance), min_pairs=int(min_pairs), alpha=float(alpha),
                      worst_tile=None if worst is None else tuple(int(i) for i in worst[0]),
                      worst_tile_ratio=math.nan if worst is None else float(worst[1]),
                      worst_tile_p_value=1.0 if worst is None else float(worst[2]))


def _recorded_tile_shape(labels, component, storage_options=None):
    """``tile_shape`` from the ``patchworks`` attributes of a zarr array written by tile_process."""
    import zarr

    array = None
    if isinstance(labels, zarr.Array):
        array = labels
    elif is_remote(labels):
        try:
            array = zarr.open(store=zarr_store(labels, storage_options, read_only=True), mode="r",
                              path=component or "")
        except Exception:  # not zarr (open_image has already said whether it can be read)
            array = None
    elif isinstance(labels, (str, os.PathLike)) and os.path.isdir(local_path(labels)):
        try:  # a plain array, or a label image (group) whose run record holds the tile shape
            array = zarr.open(store=str(local_path(labels)), mode="r", path=component or "")
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
    """Per axis and signal (label changes, object ends): [seam n, seam k, control n, control k, spread sums...]."""
    ndim = len(grid.shape)
    counts = np.zeros((ndim, _N_SIGNALS, 4 + 3 * len(_PATCHES)), np.int64)
    faces = [dict() for _ in range(ndim)]  # per axis: index of the tile after a seam face -> (fg pairs, ends)
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
                _consume(*_pop(queue), grid, counts, pending, faces)
        while queue:
            _consume(*_pop(queue), grid, counts, pending, faces)
    return counts, faces


def _pop(queue):
    tile, future = queue.popleft()
    return tile, future.result()


def _control_positions(n: int, at_most: int = 8) -> list[int]:
    """Control planes (between ``p - 1`` and ``p``) spread over the middle half of a tile ``n`` thick."""
    if n < 2:
        return []
    lo, hi = max(1, n // 4), max(1, n - n // 4 - 1)
    return sorted(set(np.linspace(lo, hi, min(at_most, hi - lo + 1)).round().astype(int).tolist()))


def _consume(tile, planes, grid: TileGrid, counts, pending, faces) -> None:
    for a, (first, last, control) in enumerate(planes):
        key = tile.index[:a] + tile.index[a + 1:]
        if tile.index[a] > 0:
            for i, (n, k) in enumerate(_signals(pending[a].pop(key), first)):
                counts[a, i, 0:2] += np.count_nonzero(n), np.count_nonzero(k)
            faces[a][tuple(tile.index)] = (np.count_nonzero(n), np.count_nonzero(k))  # the last signal: ends
        if tile.index[a] < grid.grid_shape[a] - 1:
            pending[a][key] = last  # np.take copied it: the tile itself is not kept alive
        counts[a, :, 2:] += control


_N_SIGNALS = 2


def _signals(x, y):
    """Per signal, masks of the pairs (x, y) it counts (n) and of those that it calls events (k).

    Label changes: both foreground (n), labels differ (k). Object ends: any
    side foreground (n), one side only (k).
    """
    fx, fy = x != 0, y != 0
    both = fx & fy
    return (both, both & (x != y)), (fx | fy, fx ^ fy)


_PATCHES = (8, 32)  # in-plane patch sides over which the spread of the control counts is measured


def _control_stats(pairs) -> np.ndarray:
    """Per signal: [pairs, events, then per patch side: sum k², sum k n, sum n²] over control plane pairs.

    Events are not independent: one wall or object edge lying along or
    crossing the plane changes many neighbouring pairs at once. How much the
    counts of in-plane patches spread beyond binomial noise measures that
    (see ``_judge``).
    """
    out = np.zeros((_N_SIGNALS, 2 + 3 * len(_PATCHES)), np.int64)
    for x, y in pairs:
        for s, (n_mask, k_mask) in enumerate(_signals(x, y)):
            out[s, :2] += np.count_nonzero(n_mask), np.count_nonzero(k_mask)
            for i, (n, k) in enumerate(zip(_patch_sums(n_mask), _patch_sums(k_mask))):
                out[s, 2 + 3 * i: 5 + 3 * i] += ((k * k).sum(dtype=np.int64), (k * n).sum(dtype=np.int64),
                                                 (n * n).sum(dtype=np.int64))
    return out


def _patch_sums(mask):
    """Counts of ``mask`` in square patches of each side in ``_PATCHES``, each level summed from the one before."""
    sums = mask.astype(np.int32)  # a patch holds at most 32² voxels: squares fit in int32
    out, previous = [], 1
    for side in _PATCHES:  # increasing, each a multiple of the one before
        for a in range(sums.ndim):
            sums = np.add.reduceat(sums, np.arange(0, sums.shape[a], side // previous), axis=a)
        out.append(sums)
        previous = side
    return out


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


def _signal(c, tolerance, min_pairs, alpha, *, low_flag: str | None, high_flag: str):
    """(seam n, seam k, control n, control k, seam rate, control rate, ratio, p, verdict) of one signal."""
    seam_n, seam_k, control_n, control_k = (int(v) for v in c[:4])
    seam_rate = seam_k / seam_n if seam_n else math.nan
    control_rate = control_k / control_n if control_n else math.nan
    if seam_k == 0 and control_k == 0:
        ratio = math.nan
    elif control_k == 0:
        ratio = math.inf if seam_n else math.nan
    else:
        ratio = seam_rate / control_rate if seam_n else math.nan
    # Events come in clusters (one wall changes many neighbouring pairs), so the test counts
    # events / dispersion, the dispersion measured on the controls (what seams should look like).
    spread = _dispersion(c[2:])
    p = _binomial_p(round(seam_k / spread), round((seam_k + control_k) / spread), seam_n / max(1, seam_n + control_n))
    if min(seam_n, control_n) < min_pairs:
        verdict = "few data"
    elif math.isnan(ratio) or 1 / tolerance <= ratio <= tolerance or (ratio < 1 and low_flag is None):
        verdict = "ok"
    elif p >= alpha and alpha < 1:
        verdict = "few data"  # uneven, but not beyond chance with this many events
    else:
        verdict = high_flag if ratio > tolerance else low_flag
    return seam_n, seam_k, control_n, control_k, seam_rate, control_rate, ratio, p, verdict


def _worst_face(faces, control, tolerance, min_pairs):
    """The seam face (tile after it) whose object ends stand out most against the controls.

    One lost tile cuts off every object on its few faces only, which the
    axis-wide rate dilutes among all the others; judged face by face its
    rate is 1. Returns (tile index, ratio, p-value times the number of faces
    tested, a Bonferroni bound), or None when no face has enough pairs.
    """
    control_n, control_k = int(control[0]), int(control[1])
    spread = _dispersion(control)
    tested = [(index, n, k) for index, (n, k) in faces.items() if n >= min_pairs]
    if not tested or not control_n:
        return None
    rate = control_k / control_n
    best = None
    for index, n, k in tested:
        ratio = (k / n) / rate if rate else (math.inf if k else math.nan)
        if not ratio > tolerance:
            continue
        p = min(1.0, len(tested) * _binomial_p(round(k / spread), round((k + control_k) / spread),
                                               n / (n + control_n)))
        if best is None or p < best[2]:
            best = (index, ratio, p)
    return best


def _worst_tile(grid: TileGrid, counts, faces, tolerance, min_pairs):
    """:func:`_worst_face` over tiles: each tile's seam faces on every axis together, against all controls."""
    per_tile = {}
    for a, axis_faces in enumerate(faces):
        for after, (n, k) in axis_faces.items():
            before = after[:a] + (after[a] - 1,) + after[a + 1:]
            for index in (before, after):  # a face belongs to the tiles on both of its sides
                total = per_tile.setdefault(index, [0, 0])
                total[0] += int(n)
                total[1] += int(k)
    control = counts[:, 1, 2:].sum(axis=0)  # object ends; sums of counts and of their squares add up
    return _worst_face({i: tuple(v) for i, v in per_tile.items()}, control, tolerance, min_pairs)


def _judge(axis, grid: TileGrid, c, faces, tolerance, min_pairs, alpha) -> SeamAxis:
    n_seams = grid.grid_shape[axis] - 1
    changes = _signal(c[0], tolerance, min_pairs, alpha, low_flag="fused", high_flag="cut")
    # fewer ends on seams than inside tiles has no stitching defect behind it: only too many is flagged
    ends = list(_signal(c[1], tolerance, min_pairs, alpha, low_flag=None, high_flag="cut off"))
    # a face is a fraction of a seam: judged with fewer pairs, the multiple testing corrected for
    worst = _worst_face(faces, c[1][2:], tolerance, max(1, min_pairs // 4))
    if ends[-1] != "cut off" and worst is not None and (worst[2] < alpha or alpha == 1):
        ends[-1] = "cut off"  # one seam face cut off, the others fine (a tile lost in the merge)
    if n_seams == 0:
        verdict = change_verdict = end_verdict = "no seams"
    else:
        change_verdict, end_verdict = changes[-1], ends[-1]
        shown = {change_verdict, end_verdict}
        # "ok" only when both signals could be judged: a tissue without background has no object ends
        # anywhere, which says nothing about its walls
        verdict = next((v for v in _FLAGS if v in shown), "few data" if "few data" in shown else "ok")
    return SeamAxis(axis=axis, n_seams=n_seams, seam_pairs=changes[0], seam_changes=changes[1],
                    control_pairs=changes[2], control_changes=changes[3], seam_rate=changes[4],
                    control_rate=changes[5], ratio=changes[6], p_value=changes[7], verdict=verdict,
                    change_verdict=change_verdict, seam_fg_pairs=ends[0], seam_ends=ends[1],
                    control_fg_pairs=ends[2], control_ends=ends[3], end_seam_rate=ends[4],
                    end_control_rate=ends[5], end_ratio=ends[6], end_p_value=ends[7], end_verdict=end_verdict,
                    end_worst_tile=None if worst is None else tuple(int(i) for i in worst[0]),
                    end_worst_ratio=math.nan if worst is None else float(worst[1]),
                    end_worst_p_value=1.0 if worst is None else float(worst[2]))


def _binomial_p(k: int, n: int, p: float) -> float:
    """Two-sided p-value of ``k`` successes in ``n`` trials of probability ``p`` (1.0 when undefined)."""
    if n == 0 or not 0 < p < 1:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(k, n, p).pvalue)
