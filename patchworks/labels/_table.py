"""Exact per-object measurements from per-tile partial sums.

Each tile task measures its own core while labels and window are in memory:
per label the voxel count, the integer sum of its coordinates per axis, its
bounding box, and per intensity channel the sum, the central second moment
(``M2``, the sum of squared deviations from the tile's own mean), the
minimum and the maximum. Partials of one object from several tiles combine
exactly: counts, sums and boxes add / min / max, and the second moments by
the parallel formula ``M2 = sum M2_i + sum n_i (mean_i - mean)^2`` (Chan et
al.), which keeps the variance accurate where ``sum x^2 - n mean^2`` would
cancel. The result is the table scikit-image's ``regionprops_table`` gives
on the whole image, one row per object.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
from dataclasses import dataclass

import numpy as np
from ..io._npy import load_npy

# Blocks are measured in slabs of about this many voxels along axis 0, which bounds the temporaries
# (one byte and a few run records per voxel at worst) whatever the tile size.
_SLAB_VOXELS = 1 << 22


@dataclass
class Partials:
    """Per-label partial sums of one tile (or already combined ones), one row per label.

    ``csum`` is the sum of global voxel coordinates per axis (int64, exact),
    ``bmin`` / ``bmax`` the half-open bounding box, ``isum`` / ``im2`` /
    ``imin`` / ``imax`` per intensity channel (``(n, 0)`` without an image).
    """

    label: np.ndarray    # (n,) uint64
    count: np.ndarray    # (n,) int64
    csum: np.ndarray     # (n, d) int64
    bmin: np.ndarray     # (n, d) int64
    bmax: np.ndarray     # (n, d) int64
    isum: np.ndarray     # (n, c) float64
    im2: np.ndarray
    imin: np.ndarray
    imax: np.ndarray

    def __len__(self) -> int:
        return int(self.label.size)

    @property
    def ndim(self) -> int:
        return self.csum.shape[1]

    @property
    def n_channels(self) -> int:
        return self.isum.shape[1]

    def take(self, index) -> "Partials":
        return Partials(*(getattr(self, f)[index] for f in _FIELDS))

    @staticmethod
    def row_bytes(ndim: int, n_channels: int) -> int:
        """Bytes of one row: label, count, three per axis (csum, bmin, bmax), four per channel (8 bytes each)."""
        return 8 * (2 + 3 * ndim + 4 * n_channels)

    @staticmethod
    def empty(ndim: int, n_channels: int) -> "Partials":
        z = np.zeros((0, ndim), np.int64)
        f = np.zeros((0, n_channels), np.float64)
        return Partials(np.zeros(0, np.uint64), np.zeros(0, np.int64), z, z, z, f, f, f, f)

    @staticmethod
    def concat(parts: list["Partials"]) -> "Partials":
        return Partials(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def relabel(self, labels) -> "Partials":
        """The same rows under new labels; the other columns are shared, not copied (partials are never
        written in place)."""
        return dataclasses.replace(self, label=np.asarray(labels, dtype=np.uint64))

    def to_bytes(self) -> bytes:
        """The partials as one ``.npy`` (what :meth:`from_bytes` reads): int64 columns, then the floats' bits,
        stored column after column (Fortran order: :meth:`from_bytes` then takes every column as a view)."""
        columns = [self.label.view(np.int64), self.count, *self.csum.T, *self.bmin.T, *self.bmax.T,
                   *(f.view(np.int64) for f in (*self.isum.T, *self.im2.T, *self.imin.T, *self.imax.T))]
        data = np.concatenate(columns) if columns[0].size else np.zeros(0, np.int64)
        return _npy_header(len(self), len(columns)) + data.astype("<i8", copy=False).tobytes()

    def save(self, scratch, key: str) -> None:
        """One ``.npy`` object in ``scratch``, written atomically (:meth:`to_bytes`)."""
        scratch.put(key + ".npy", self.to_bytes())

    @staticmethod
    def load(scratch, key: str, ndim: int, n_channels: int) -> "Partials | None":
        """Read partials saved by :meth:`save`; None when ``key`` was never saved (one read, no existence check).

        The columns are read-only views of the bytes read (partials are never written in place).
        """
        try:
            raw = scratch.get(key + ".npy")
        except FileNotFoundError:
            return None
        return Partials.from_bytes(raw, ndim, n_channels)

    @staticmethod
    def from_bytes(raw: bytes, ndim: int, n_channels: int) -> "Partials":
        """The partials :meth:`to_bytes` wrote (or numpy, in either order)."""
        data = _read_npy(raw)
        d, c = ndim, n_channels
        floats = data[:, 2 + 3 * d:].view(np.float64)  # same item size: a view whatever the layout
        return Partials(data[:, 0].view(np.uint64), data[:, 1], data[:, 2:2 + d], data[:, 2 + d:2 + 2 * d],
                        data[:, 2 + 2 * d:2 + 3 * d], floats[:, :c], floats[:, c:2 * c], floats[:, 2 * c:3 * c],
                        floats[:, 3 * c:])


def _npy_header(rows: int, columns: int) -> bytes:
    """The .npy (version 1.0) header numpy writes for a ``(rows, columns)`` little-endian int64 Fortran-order array.

    Written and parsed here: ``np.save`` / ``np.load`` spend ~0.1 ms per small file on it (``np.load`` parses the
    header with ``ast.literal_eval``, under a lock, see ``io._npy``).
    """
    text = "{'descr': '<i8', 'fortran_order': True, 'shape': (%d, %d), }" % (rows, columns)
    pad = -(10 + len(text) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(text) + pad + 1).to_bytes(2, "little") + text.encode() + b" " * pad + b"\n"


_HEADER = re.compile(rb"\{'descr': '<i8', 'fortran_order': (True|False), 'shape': \((\d+), (\d+)\), \} *\n")


def _read_npy(raw: bytes) -> np.ndarray:
    """A 2-D int64 array from .npy bytes: headers like :func:`_npy_header`'s parsed here, any other by numpy."""
    if raw[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(raw[8:10], "little")
        match = _HEADER.fullmatch(raw, 10, end)
        if match:
            shape = (int(match[2]), int(match[3]))
            return np.frombuffer(raw, "<i8", shape[0] * shape[1], end).reshape(
                shape, order="F" if match[1] == b"True" else "C")
    return load_npy(io.BytesIO(raw))


_FIELDS = ("label", "count", "csum", "bmin", "bmax", "isum", "im2", "imin", "imax")


def _slabs(shape, n_planes_total: int):
    """Ranges along axis 0 with about ``_SLAB_VOXELS`` voxels each."""
    per_plane = math.prod(shape[1:])
    step = max(1, _SLAB_VOXELS // max(per_plane, 1))
    return [(s, min(s + step, n_planes_total)) for s in range(0, n_planes_total, step)]


def _runs(flat: np.ndarray, row: int):
    """``(starts, stops, labels)`` of the runs of one non-zero label along the rows of a flat block.

    A run never crosses a row (``row`` voxels, the last axis), so each run
    is one row index plus an interval on the last axis. Blobs cut into runs
    leave far fewer runs than voxels, and everything after this one pass
    over the block works on runs.
    """
    change = np.empty(flat.size + 1, dtype=bool)  # one past the end: every run's stop is the next bound
    change[0] = change[-1] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:-1])
    change[:-1:row] = True
    bounds = np.flatnonzero(change)
    labels = flat[bounds[:-1]]
    fg = np.flatnonzero(labels)  # indices, not a mask: three takes cost less than three boolean selections
    return bounds[fg], bounds[fg + 1], labels[fg]


def _by_label(starts, stops, lab):
    """The runs sorted by label, stably (raster order within a label), and where each label's runs begin.

    Grouped so, every per-label quantity is one ``reduceat`` with a
    segment per label (instead of a segment per run and then a
    ``ufunc.at`` scatter of the runs into their labels).
    """
    # 16-bit keys take numpy's radix sort
    keys = lab.astype(np.uint16) if lab.size and int(lab.max()) < 1 << 16 else lab
    order = np.argsort(keys, kind="stable")
    starts, stops, lab = starts[order], stops[order], lab[order]
    first = np.empty(lab.size, dtype=bool)
    first[0] = True
    np.not_equal(lab[1:], lab[:-1], out=first[1:])
    return starts, stops, lab, np.flatnonzero(first)


@functools.lru_cache(maxsize=None)
def _largest_magnitude(dtype: np.dtype) -> int | None:
    """The largest ``|value|`` of an 8/16-bit integer (or bool) dtype; None for any other."""
    if dtype.kind not in "biu" or dtype.itemsize > 2:
        return None
    return 1 if dtype.kind == "b" else max(abs(int(np.iinfo(dtype).min)), int(np.iinfo(dtype).max))


def _exact_intensities(dtype: np.dtype, n_voxels: int) -> bool:
    """Whether the sums and squared sums of a block of ``dtype`` values fit int64 exactly (8/16-bit integers)."""
    top = _largest_magnitude(np.dtype(dtype))
    return top is not None and top * top * max(n_voxels, 1) < 2 ** 62


def _exact_m2(count: np.ndarray, s: np.ndarray, q: np.ndarray, fits: bool = False) -> np.ndarray:
    """``sum (x - mean)^2 = (n q - s^2) / n`` from exact integer sums, correctly rounded (one rounding).

    ``fits``: the caller knows ``n q`` and ``s^2`` fit int64 (no check of the data then).
    """
    n = np.maximum(count, 1)
    if len(n) == 0:
        return np.zeros(s.shape)
    if fits or (int(n.max()) * int(q.max()) < 2 ** 63 and int(np.abs(s).max()) ** 2 < 2 ** 63):
        numerator = n * q - s * s
        out = numerator / n  # int64 -> float64 is exact below 2**53: the division then rounds once
        big = numerator >= 2 ** 53
        if not big.any():
            return out
        # the others: Python ints (rounding the numerator first would round twice: 1 ulp off in ~1/4 of cases)
        rows = np.nonzero(big)
        out[rows] = [int(a) / int(b) for a, b in zip(numerator[rows], np.broadcast_to(n, numerator.shape)[rows])]
        return out
    # Python ints do not overflow and int / int is correctly rounded
    n, s, q = n.astype(object), s.astype(object), q.astype(object)
    return ((n * q - s * s) / n).astype(np.float64)


def _slab_rows(block: np.ndarray, s0: int, values: np.ndarray | None, exact: bool) -> list | None:
    """One slab's rows, one per label present, sorted by label: ``[label, count, csum, bmin, bmax]`` (block
    coordinates, axis 0 shifted by ``s0``) plus, with ``values`` (``(c, voxels)``), per channel its sums, its
    second sums (squares, exact int64, when ``exact``; else the M2 around the label's mean over the slab),
    minima and maxima. None for a slab of background only.
    """
    d = block.ndim
    starts, stops, lab = _runs(block.reshape(-1), block.shape[-1])
    if starts.size == 0:
        return None
    starts, stops, lab, group = _by_label(starts, stops, lab)
    length = stops - starts
    row, x = np.divmod(starts, block.shape[-1])
    lo = [None] * d  # each run's first voxel, per axis
    lo[d - 1], rest = x, row
    for a in range(d - 2, 0, -1):
        rest, lo[a] = np.divmod(rest, block.shape[a])
    if d > 1:
        lo[0] = rest
    count = np.add.reduceat(length, group)
    csum, bmin, bmax = (np.empty((group.size, d), np.int64) for _ in range(3))
    for a in range(d):  # integer sums: exact at any size
        if a == d - 1:  # x + ... + (x + len - 1) in closed form (the product is always even)
            csum[:, a] = np.add.reduceat((2 * lo[a] + length - 1) * length // 2, group)
            bmin[:, a] = np.minimum.reduceat(lo[a], group)
            bmax[:, a] = np.maximum.reduceat(lo[a] + length, group)
        elif a == 0:  # within a label the runs are in raster order: axis 0 grows from its first run to its last
            csum[:, a] = np.add.reduceat(lo[a] * length, group)
            bmin[:, a] = lo[a][group]
            bmax[:, a][:-1] = lo[a][group[1:] - 1]
            bmax[-1, a] = lo[a][-1]
            bmax[:, a] += 1
        else:
            csum[:, a] = np.add.reduceat(lo[a] * length, group)
            bmin[:, a] = np.minimum.reduceat(lo[a], group)
            bmax[:, a] = np.maximum.reduceat(lo[a], group) + 1
    if s0:
        csum[:, 0] += s0 * count
        bmin[:, 0] += s0
        bmax[:, 0] += s0
    rows = [lab[group], count, csum, bmin, bmax]
    if values is None:
        return rows
    c = values.shape[0]
    offsets = np.zeros(length.size, np.intp)  # each run's first voxel among the gathered ones
    np.cumsum(length[:-1], out=offsets[1:])
    # the foreground's flat indices, label after label: each label is then one segment of the gathered values
    where = np.repeat(starts - offsets, length)
    where += np.arange(where.size, dtype=np.intp)
    segment = offsets[group]
    sums = np.empty((group.size, c), np.int64 if exact else np.float64)
    second, imin, imax = np.empty(sums.shape, sums.dtype), np.empty((group.size, c)), np.empty((group.size, c))
    for ch in range(c):
        raw = values[ch].take(where)
        imin[:, ch] = np.minimum.reduceat(raw, segment)
        imax[:, ch] = np.maximum.reduceat(raw, segment)
        v = raw.astype(np.int64 if exact else np.float64)
        sums[:, ch] = np.add.reduceat(v, segment)
        if not exact:  # around the label's mean over the slab (sum x**2 - n mean**2 would cancel)
            v -= np.repeat(sums[:, ch] / count, count)
        second[:, ch] = np.add.reduceat(np.multiply(v, v, out=v), segment)
    return rows + [sums, second, imin, imax]


def _combine_slabs(slabs: list, exact: bool) -> list:
    """The rows of several slabs as one row per label: sums add, boxes and extremes min / max, float M2s by the
    parallel formula (exact sums simply add)."""
    cat = [np.concatenate(column) for column in zip(*slabs)]
    order = np.argsort(cat[0], kind="stable")
    cat = [column[order] for column in cat]
    first = np.ones(order.size, bool)
    first[1:] = cat[0][1:] != cat[0][:-1]
    start = np.flatnonzero(first)
    count = np.add.reduceat(cat[1], start)
    out = [cat[0][start], count, np.add.reduceat(cat[2], start, axis=0), np.minimum.reduceat(cat[3], start, axis=0),
           np.maximum.reduceat(cat[4], start, axis=0)]
    if len(cat) == 5:
        return out
    sums, second = np.add.reduceat(cat[5], start, axis=0), cat[6]
    if not exact:
        group = np.cumsum(first) - 1
        spread = cat[1][:, None] * np.square(cat[5] / cat[1][:, None] - (sums / count[:, None])[group])
        second = second + spread
    return out + [sums, np.add.reduceat(second, start, axis=0), np.minimum.reduceat(cat[7], start, axis=0),
                  np.maximum.reduceat(cat[8], start, axis=0)]


def tile_partials(ids: np.ndarray, n: int, origin, intensity: np.ndarray | None = None) -> Partials:
    """Partial sums of the labels (``1..n``, 0 = background) in one block of local ids.

    One pass over the block finds the runs of equal labels along the last
    axis and sorts them by label (few runs: blobs leave far fewer runs than
    voxels); counts, coordinate sums (closed form per run) and boxes come
    from the runs, intensities from the foreground voxels only, gathered
    label after label, so that each label's sum, extremes and second
    moment are one segment of a ``reduceat``. For 8/16-bit integer images
    the sums and sums of squares are exact int64 and the second moment
    comes from them exactly, ``(n q - s^2) / n``; for other images it is
    taken around each label's mean over the slab (a second pass over the
    foreground only, which keeps ``std`` exact where ``sum x**2 - n
    mean**2`` in floating point would cancel).

    Parameters
    ----------
    ids : ndarray of unsigned int
        The block's labels, numbered ``1..n`` (gaps allowed: absent labels get no row).
    n : int
        Largest label of the block.
    origin : sequence of int
        Global coordinate of the block's first voxel, per axis.
    intensity : ndarray, optional
        ``(channels, *ids.shape)`` intensities of the same voxels.

    Examples
    --------
    >>> p = tile_partials(np.array([[0, 1, 1], [2, 0, 1]], np.uint32), 2, (10, 0))
    >>> p.label.tolist(), p.count.tolist(), p.csum.tolist(), p.bmin.tolist(), p.bmax.tolist()
    ([1, 2], [3, 1], [[31, 5], [11, 0]], [[10, 1], [11, 0]], [[12, 3], [12, 1]])
    """
    d = ids.ndim
    c = 0 if intensity is None else intensity.shape[0]
    if n == 0 or ids.size == 0:
        return Partials.empty(d, c)
    ids = np.asarray(ids)
    if ids.dtype.kind != "u":
        ids = ids.astype(np.uint64)
    # 8/16-bit integer images: exact int64 sums and squared sums give M2 without a second pass and
    # without floats (a 512^2 uint8 tile: 5.8 -> 2.5 ms)
    exact = c > 0 and _exact_intensities(np.dtype(intensity.dtype), ids.size)
    slabs = []
    for s0, s1 in _slabs(ids.shape, ids.shape[0]):
        values = None
        if c:
            values = intensity[:, s0:s1].reshape(c, -1)
            if values.dtype == np.bool_:
                values = values.view(np.uint8)
        rows = _slab_rows(ids[s0:s1], s0, values, exact)
        if rows is not None:
            slabs.append(rows)
    if not slabs:
        return Partials.empty(d, c)
    label, count, csum, bmin, bmax, *stats = slabs[0] if len(slabs) == 1 else _combine_slabs(slabs, exact)
    origin = np.asarray(origin, dtype=np.int64)
    csum += origin * count[:, None]
    bmin += origin
    bmax += origin
    if not c:
        stats = [np.zeros((label.size, 0))] * 4
    elif exact:
        sums, squares = stats[0], stats[1]
        n = count[:, None]
        # n q and s^2 are at most (voxels * top)^2: below 2**63, int64 holds them (no check of the data)
        fits = (ids.size * _largest_magnitude(np.dtype(intensity.dtype))) ** 2 < 2 ** 63
        stats[:2] = sums.astype(np.float64), _exact_m2(n, sums, squares, fits)
    return Partials(label.astype(np.uint64), count, csum, bmin, bmax, *stats)


def reduce_partials(parts: Partials) -> Partials:
    """Combine rows that share a label (any order in); rows come out sorted by label.

    Examples
    --------
    >>> a = tile_partials(np.array([[1, 1]], np.uint32), 1, (0, 0), np.array([[[1.0, 3.0]]]))
    >>> b = tile_partials(np.array([[1]], np.uint32), 1, (0, 2), np.array([[[8.0]]]))
    >>> r = reduce_partials(Partials.concat([a, b]))
    >>> r.count.tolist(), r.isum.tolist(), r.im2.tolist(), r.bmax.tolist()
    ([3], [[12.0]], [[26.0]], [[1, 3]])
    """
    if len(parts) == 0 or bool((parts.label[1:] > parts.label[:-1]).all()):
        return parts  # already one row per label, in order (a tile's own rows mostly are): nothing to copy
    order = np.argsort(parts.label, kind="stable")
    label = parts.label[order]
    first = np.ones(label.size, bool)
    first[1:] = label[1:] != label[:-1]
    if first.all():
        return parts.take(order)
    p = parts.take(order)
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    count = np.add.reduceat(p.count, starts)
    isum = np.add.reduceat(p.isum, starts, axis=0) if p.n_channels else p.isum[starts]
    im2 = p.im2[starts]
    if p.n_channels:  # parallel variance: within-part M2 plus each part's spread around the joint mean
        joint = isum / count[:, None]
        part_mean = p.isum / np.maximum(p.count, 1)[:, None]
        spread = p.count[:, None] * np.square(part_mean - joint[group])
        im2 = np.add.reduceat(p.im2 + spread, starts, axis=0)
    return Partials(label[starts], count, np.add.reduceat(p.csum, starts, axis=0),
                    np.minimum.reduceat(p.bmin, starts, axis=0), np.maximum.reduceat(p.bmax, starts, axis=0),
                    isum, im2,
                    np.minimum.reduceat(p.imin, starts, axis=0) if p.n_channels else p.imin[starts],
                    np.maximum.reduceat(p.imax, starts, axis=0) if p.n_channels else p.imax[starts])


def table_columns(parts: Partials, shape, *, voxel_size=None, channel_names=None) -> dict[str, np.ndarray]:
    """Finished columns from fully reduced partials, named like ``skimage.measure.regionprops_table``.

    ``label``, ``area`` (voxels), ``centroid-k``, ``bbox-k`` (half-open: the
    minima of every axis, then the ends), ``touches_border``, and per channel
    ``intensity_mean``/``_std``/``_min``/``_max`` (suffixed ``-c`` when the
    image has several channels; ``std`` is the population one, as
    scikit-image's). With a ``voxel_size``: ``area_physical`` and
    ``centroid_physical-k`` too.
    """
    d = parts.ndim
    count = parts.count
    cols = {"label": parts.label.astype(np.uint64), "area": count.astype(np.int64)}
    if voxel_size is not None:
        cols["area_physical"] = count * float(np.prod(voxel_size))
    centroid = parts.csum / np.maximum(count, 1)[:, None]
    for a in range(d):
        cols[f"centroid-{a}"] = centroid[:, a]
    if voxel_size is not None:
        for a in range(d):
            cols[f"centroid_physical-{a}"] = centroid[:, a] * float(voxel_size[a])
    for a in range(d):
        cols[f"bbox-{a}"] = parts.bmin[:, a]
    for a in range(d):
        cols[f"bbox-{a + d}"] = parts.bmax[:, a]
    shape = np.asarray(shape, dtype=np.int64)
    cols["touches_border"] = ((parts.bmin == 0) | (parts.bmax == shape)).any(axis=1) if len(parts) else \
        np.zeros(0, bool)
    c = parts.n_channels
    for ch in range(c):
        suffix = "" if c == 1 else f"-{ch if channel_names is None else channel_names[ch]}"
        mean = parts.isum[:, ch] / np.maximum(count, 1)
        cols[f"intensity_mean{suffix}"] = mean
        cols[f"intensity_std{suffix}"] = np.sqrt(np.maximum(parts.im2[:, ch], 0) / np.maximum(count, 1))
        cols[f"intensity_min{suffix}"] = parts.imin[:, ch]
        cols[f"intensity_max{suffix}"] = parts.imax[:, ch]
    return cols


def column_dtypes(ndim: int, n_channels: int, *, voxel_size=None) -> dict[str, np.dtype]:
    """The columns :func:`table_columns` makes, with their dtypes, without any data."""
    probe = Partials.empty(ndim, n_channels)
    return {k: v.dtype for k, v in table_columns(probe, (1,) * ndim, voxel_size=voxel_size).items()}
