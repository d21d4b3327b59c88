"""Writing label results as OME-NGFF label images with a pyramid.

A label image is a zarr group: one array per resolution level at paths
``"0"``, ``"1"``, ..., the NGFF ``multiscales`` (axes with units, one
``scale`` per level) and ``image-label``; 0.5 on zarr v3 (attributes under
``"ome"``, ``dimension_names`` on every array), 0.4 on zarr v2. Our run
record lives under its own key, ``"patchworks"``.

Level ``k`` is exact strided subsampling of level 0, ``level0[::F, ::F]``,
with no translation. It is written from each final tile while the relabel
task holds it: a tile whose core starts at ``a`` owns the level-``k``
voxels ``ceil(a / F)`` up to the next tile's. When the tile core is a
multiple of ``F`` those ranges are aligned to the level's chunks (chunk =
core / F) and each task writes whole chunks. Otherwise -- and at coarse
levels, whose chunks are never below ``MIN_CHUNK_VOXELS`` and so span several
tiles -- some chunks of a level hold voxels of two or more tiles; a task
writes the chunks it owns and keeps its part of each shared chunk in the
run's scratch, and one small task per shared chunk assembles and writes it
afterwards, so no two tasks ever write one chunk (or shard) and nothing
reads level 0 back. A level with shared chunks whose finer neighbour is
not level 0 is instead *derived*: each of its chunks is subsampled from the
finished finer level (``level_k = level_{k-1}[::r]``, exact), level after
level, which reads a small fraction of the data once instead of writing
and reading a part of every tile. When the levels from the first one with
shared or small chunks on are small (``INLINE_LEVEL_VOXELS`` in all), they are
*inline* instead: each relabel task sends its tiles' parts of them back with
its result, and the driver writes every chunk those parts reach, in larger
chunks (``INLINE_CHUNK_VOXELS``) than the tasks could.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import posixpath
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from ._npy import load_npz
from ._chunk_io import blank_value, read_region, write_region
from ._scratch import Scratch
from ._urls import is_remote, zarr_store
from ._zarr_nodes import draft_group, ensure_parents, open_array_from, write_nodes

__all__ = ["LabelImageWriter", "LevelPlan", "NGFF_VERSIONS", "default_level_count", "ngff_unit", "plan_levels",
           "register_label"]

NGFF_VERSIONS = {3: "0.5", 2: "0.4"}
COARSEST = 256  # default pyramid: halve y and x until both are about this many pixels
# smallest chunk (in voxels) of a coarse level: core / factor shrinks fast (a 512^2 core is 16^2 pixels
# at level 5), and thousands of tiny chunks cost a zarr write each and a file each; below this size the
# subsampled axes of a chunk grow together until it spans several tiles' parts (measured on 8192^2 in
# 512^2 tiles, 6 levels: the pyramid cost 3.8x the labels-only time with chunks of core / factor). A
# volume, not a length per axis: 3-D levels of 128^3 tiles (128 x 64 x 64 at level 1) are big enough
# as they are and stay written by their own tiles.
MIN_CHUNK_VOXELS = 128 * 128
# zarr v3 sharding (shard = the tile's share of a level, inner chunks one plane of <= 256 x 256) lets a
# viewer read one plane without decoding a whole 3-D chunk. zarr-python's own codec pipeline encodes
# the inner chunks one by one in Python: measured (shared 2-core machine, CPU seconds per tile write)
# 128^3 into 1 x 128 x 128 inner chunks 87 ms vs 18 ms unsharded (4.8x), 512^2 into 256^2 8.3 vs
# 5.0 ms (1.7x). The zarrs pipeline (Rust, ``pip install "patchworks[zarrs]"``) writes the same
# shards for 18.2 vs 17.0 ms and 4.0 vs 3.8 ms. None = shard exactly when zarr's configured codec
# pipeline is zarrs; True / False force it.
SHARDING = None
# The coarse levels whose chunks hold parts of several tiles are assembled on the driver, from parts the
# relabel tasks send back with their results, when all of them together have at most this many voxels
# (64 MiB of uint32 labels, twice that in the rare uint64 case): no part file per tile and level (a write
# and a read; a PUT and a GET on an object store), no read of a finer level back, no task per shared
# chunk. Past it (a deep 3-D volume's coarse levels), they are written as before.
INLINE_LEVEL_VOXELS = 16 << 20
# An inline level's chunks are the driver's to choose: the subsampled axes grow together up to this many
# voxels (512^2: a viewer still reads one tile's worth), so that few files are written where the tasks
# would have written one small chunk each. A file costs 0.4-0.8 ms of system time to create on the 2-core
# machine of the benchmarks, more than encoding a 256^2 chunk: 16384^2 in 512^2 tiles writes 22 chunks
# for levels 3-6 instead of 340.
INLINE_CHUNK_VOXELS = 512 * 512
# UDUNITS-2 names NGFF allows for space axes, from the spellings files carry
_UNIT_NAMES = {"µm": "micrometer", "um": "micrometer", "μm": "micrometer", "micron": "micrometer",
               "microns": "micrometer", "\\u00b5m": "micrometer", "nm": "nanometer", "mm": "millimeter",
               "cm": "centimeter", "m": "meter", "pm": "picometer", "å": "angstrom", "a": "angstrom",
               "ang": "angstrom", "in": "inch", "inch": "inch", "s": "second", "ms": "millisecond",
               "sec": "second", "min": "minute", "h": "hour"}
_SPACE_UNITS = {"angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot",
                "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile",
                "millimeter", "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer",
                "yottameter", "zeptometer", "zettameter"}
_TIME_UNITS = {"attosecond", "centisecond", "day", "decisecond", "exasecond", "femtosecond", "gigasecond",
               "hectosecond", "hour", "kilosecond", "megasecond", "microsecond", "millisecond", "minute",
               "nanosecond", "petasecond", "picosecond", "second", "terasecond", "yoctosecond", "yottasecond",
               "zeptosecond", "zettasecond"}


def ngff_unit(unit, kind: str = "space"):
    """The NGFF (UDUNITS-2) name of a unit as files spell it, or None when it is not one.

    Examples
    --------
    >>> ngff_unit("µm"), ngff_unit("micron"), ngff_unit("pixel")
    ('micrometer', 'micrometer', None)
    """
    if unit is None:
        return None
    text = str(unit).strip()
    name = _UNIT_NAMES.get(text.lower(), _UNIT_NAMES.get(text, text.lower()))
    return name if name in (_SPACE_UNITS if kind == "space" else _TIME_UNITS) else None


def zarrs_pipeline() -> bool:
    """Whether zarr's configured codec pipeline is zarrs' (``zarr.config`` ``codec_pipeline.path``)."""
    return "zarrs" in str(zarr.config.get("codec_pipeline.path", "")).lower()


def _axis_type(name: str) -> str | None:
    return {"x": "space", "y": "space", "z": "space", "t": "time", "c": "channel"}.get(name)


def default_level_count(shape, factors, coarsest: int = COARSEST) -> int:
    """Levels from ``shape`` down to about ``coarsest`` voxels on every axis with a factor above 1.

    Examples
    --------
    >>> default_level_count((512, 512), (2, 2)), default_level_count((100, 16384, 700), (1, 2, 2))
    (2, 7)
    """
    n = 1
    while any(f > 1 and -(-s // f ** (n - 1)) > coarsest for s, f in zip(shape, factors)):
        n += 1
    return n


@dataclass(frozen=True)
class LevelPlan:
    """Geometry of one level, per spatial axis of the labels.

    ``factors``: level ``k`` is ``level0[::factors]``; ``shape``: its extent;
    ``chunks``: its write unit (a shard when ``inner`` is set, whose chunks
    are ``inner``).
    """

    shape: tuple
    factors: tuple
    chunks: tuple
    inner: tuple | None
    derive: bool = False  # chunks subsampled from the finished level before (no part written by tiles)
    inline: bool = False  # the tiles' parts travel with the relabel results; the driver writes the level


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def plan_levels(spatial_shape, boundaries, *, factors, level_shapes=None, shard: bool,
                plane_axes=(), inline_voxels: int | None = None) -> list[LevelPlan]:
    """One :class:`LevelPlan` per level.

    Parameters
    ----------
    spatial_shape : tuple of int
    boundaries : sequence of int arrays
        Tile boundaries per axis (``TileGrid.boundaries``); level 0 is
        chunked by the tile cores.
    factors : list of tuple of int
        Per level, the subsampling factor per axis (level 0: all 1).
    level_shapes : list of tuple, optional
        The extent of each level when it must match an image's levels;
        default ``ceil(shape / factor)``.
    shard : bool
        Zarr v3 sharding: shard = the write unit, inner chunks one plane
        (``plane_axes``: 1 there) by at most 256 x 256.
    inline_voxels : int, optional
        Budget of the coarse levels assembled in the driver's memory
        (:data:`INLINE_LEVEL_VOXELS` by default; 0 never inlines).
    """
    inline_voxels = INLINE_LEVEL_VOXELS if inline_voxels is None else int(inline_voxels)
    # level 0: chunks that never straddle two cores (the core, or the gcd of irregular boundaries)
    core = [int(np.gcd.reduce(b[1:-1])) if len(b) > 2 else max(int(b[-1]), 1) for b in boundaries]
    plans = []
    for k, f in enumerate(factors):
        shape = tuple(level_shapes[k]) if level_shapes is not None else \
            tuple(-(-s // q) for s, q in zip(spatial_shape, f))
        chunks = []
        for t, q, n in zip(core, f, shape):
            if t % q == 0:
                c = t // q  # tile ranges align with chunks of core / factor: every task owns its chunks
            else:  # a chunk small against a tile's range, so that few are shared between two tiles
                c = 1 << max(0, int(np.log2(max(1, t // q // 2))))
            chunks.append(max(1, min(c, n)))
        # never tiny: the subsampled axes grow together (chunks then span several tiles' ranges)
        chunks = _grown(chunks, f, shape, MIN_CHUNK_VOXELS)
        inner = _inner_chunks(chunks, plane_axes) if shard else None
        derive = False
        if k >= 2 and _has_shared_chunks(boundaries, f, chunks, shape):
            prev = plans[-1]
            ratio = [q // p for q, p in zip(f, prev.factors)]
            derive = all(q % p == 0 for q, p in zip(f, prev.factors)) and \
                all((n - 1) * r < m for n, r, m in zip(shape, ratio, prev.shape))
        plans.append(LevelPlan(shape=shape, factors=tuple(f), chunks=tuple(chunks), inner=inner, derive=derive))
    return _inline_coarse(plans, boundaries, inline_voxels, plane_axes)


def _inline_coarse(plans: list, boundaries, budget: int, plane_axes=()) -> list:
    """Mark inline the levels from the first one that gains by it on, when all of them together have at most
    ``budget`` voxels: their parts then travel with the relabel results and the driver writes them, in
    chunks of up to :data:`INLINE_CHUNK_VOXELS`.

    A level gains when its chunks hold parts of several tiles (shared or derived: no part file per tile and
    level, a PUT and a GET on an object store, and no read of the finer level back) or are smaller than
    that (fewer, larger files than one per task).
    """
    def gains(lv) -> bool:
        return lv.derive or math.prod(lv.chunks) < INLINE_CHUNK_VOXELS or \
            _has_shared_chunks(boundaries, lv.factors, lv.chunks, lv.shape)

    first = next((k for k in range(1, len(plans)) if gains(plans[k]) and
                  sum(math.prod(lv.shape) for lv in plans[k:]) <= budget), None)
    if first is None:
        return plans
    inline = []
    for lv in plans[first:]:
        chunks = _grown(lv.chunks, lv.factors, lv.shape, INLINE_CHUNK_VOXELS)
        inner = None if lv.inner is None else _inner_chunks(chunks, plane_axes)
        inline.append(dataclasses.replace(lv, chunks=chunks, inner=inner, derive=False, inline=True))
    return plans[:first] + inline


def _grown(chunks, factors, shape, voxels: int) -> tuple:
    """``chunks`` with their subsampled axes (factor > 1) doubled together until they hold ``voxels``, each axis
    at most the level's extent."""
    chunks = list(chunks)
    while math.prod(chunks) < voxels:
        grow = [a for a, (q, c, n) in enumerate(zip(factors, chunks, shape)) if q > 1 and c < n]
        if not grow:
            break
        for a in grow:
            chunks[a] = min(2 * chunks[a], shape[a])
    return tuple(chunks)


def _inner_chunks(chunks, plane_axes) -> tuple:
    """A shard's inner chunks: one plane along ``plane_axes``, at most :data:`COARSEST` on the others."""
    return tuple(1 if ax in plane_axes else _largest_divisor(c, COARSEST) for ax, c in enumerate(chunks))


def _level_cuts(b, q: int, n: int, c: int):
    """Indices of the chunks (size ``c``) of a level axis that hold voxels of two tiles (boundaries ``b``)."""
    cuts = {min(_ceil_div(int(x), q), n) for x in b[1:-1]}
    return sorted({x // c for x in cuts if x % c and x < n})


def _has_shared_chunks(boundaries, factors, chunks, shape) -> bool:
    return any(_level_cuts(b, q, n, c) for b, q, c, n in zip(boundaries, factors, chunks, shape))


def _ceil_div(a, b):
    return -(-a // b)


def _level_range(a: int, b: int, q: int, n: int) -> tuple[int, int]:
    """Level voxels ``j`` with ``j * q`` in ``[a, b)``, clipped to the level's extent ``n``."""
    return min(_ceil_div(a, q), n), min(_ceil_div(b, q), n)


def _paste(out: np.ndarray, box, bounds, data: np.ndarray) -> None:
    """Copy into ``out`` (the level region ``box``) the part of ``data`` (the region ``bounds``) inside it;
    both as ``[(start, stop), ...]`` per axis."""
    cut = [(max(p0, s), min(p1, e)) for (p0, p1), (s, e) in zip(bounds, box)]
    if any(c0 >= c1 for c0, c1 in cut):
        return
    out[tuple(slice(c0 - s, c1 - s) for (c0, c1), (s, _) in zip(cut, box))] = \
        data[tuple(slice(c0 - p0, c1 - p0) for (c0, c1), (p0, _) in zip(cut, bounds))]


def _segments(s: int, e: int, c: int, n: int):
    """Split ``[s, e)`` into (start, stop, owned) runs: owned = whole chunks of size ``c`` inside it."""
    if e <= s:
        return []
    h = s if s % c == 0 else (s // c + 1) * c
    t = e if e == n else (e // c) * c
    if h >= t:
        return [(s, e, False)]
    return [seg for seg in ((s, h, False), (h, t, True), (t, e, False)) if seg[1] > seg[0]]


class LabelImageWriter:
    """Creates a label image and writes its levels tile by tile (picklable; arrays reopen per process).

    Parameters
    ----------
    store : path
        Zarr store root.
    path : str
        The label group inside the store ("" for the root).
    levels : list of LevelPlan
    zarr_format : {3, 2}
    dtype : numpy dtype
    axes : list of dict
        NGFF axes of the arrays, which may have more axes than the labels
        (size 1 there, e.g. the channel axis of the image they belong to).
    embed : tuple of int
        For each spatial axis of the labels, its axis in the arrays.
    transforms : list of list of dict
        Each level's ``coordinateTransformations``.
    scratch : Scratch or path
        Where the parts of shared chunks wait for their assembling task.
    storage_options : dict, optional
        For a ``store`` that is an object-store URL.
    physical : bool
        Whether the level-0 scale is a real voxel size (given, read from the
        source, or the image's) rather than the default 1: only then does
        the object table get physical columns.
    """

    def __init__(self, store, path, *, levels, zarr_format, dtype, axes, embed, transforms, scratch,
                 name="labels", source_image=None, multiscale_transforms=None, storage_options=None,
                 physical=False):
        self.store, self.path = str(store), path or ""
        self.levels, self.zarr_format, self.dtype = levels, int(zarr_format), np.dtype(dtype)
        self.axes, self.embed, self.transforms = axes, tuple(embed), transforms
        self.scratch = scratch if isinstance(scratch, Scratch) else Scratch(scratch)
        self.storage_options = storage_options
        self.name, self.source_image, self.multiscale_transforms = name, source_image, multiscale_transforms
        self.physical = bool(physical)
        self._arrays = None
        self._metadata = None  # {level path: array metadata} once create() wrote them

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def locate(self, store, path, scratch, dtype, storage_options=None) -> None:
        """Where the label image goes and its dtype, known once the run and its plan exist."""
        self.store, self.path, self.dtype = str(store), path or "", np.dtype(dtype)
        self.scratch = scratch if isinstance(scratch, Scratch) else Scratch(scratch)
        self.storage_options = storage_options
        self._arrays = self._metadata = None

    def _store(self, mode: str):
        """The label image's zarr store (a ``LocalStore`` for a path, the object store of a URL)."""
        if not is_remote(self.store):
            return zarr.storage.LocalStore(self.store, read_only=mode == "r")
        return zarr_store(self.store, self.storage_options, read_only=mode == "r", parameter="write_to")

    def spatial_voxel_size(self):
        """``(voxel_size, units)`` per spatial axis of the labels, as the scales say; ``(None, None)`` if unknown."""
        record = self.record()
        if not self.physical or record["voxel_size"] is None:
            return None, None
        units = record["units"]
        return tuple(float(v) for v in record["voxel_size"]), None if not any(units) else tuple(units)

    def record(self) -> dict:
        """What our run record says about the layout (``G.attrs["patchworks"]``)."""
        scale0 = next((t["scale"] for t in self.transforms[0] if t.get("type") == "scale"), None)
        return {"output_format": "ngff", "label_axes": list(self.embed),
                # per spatial axis of the labels, for readers of the record (the object table's physical units)
                "voxel_size": None if scale0 is None else [scale0[i] for i in self.embed],
                "units": [self.axes[i].get("unit") for i in self.embed],
                "levels": [{"path": str(k), "shape": list(self.array_shape(k)),
                            "factors": list(level.factors)} for k, level in enumerate(self.levels)]}

    # -- layout ------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.axes)

    def _place(self, values, fill) -> tuple:
        """A per-spatial-axis tuple placed into the arrays' axes (``fill`` on the others)."""
        out = [fill] * self.ndim
        for ax, v in zip(self.embed, values):
            out[ax] = v
        return tuple(out)

    def array_shape(self, level: int) -> tuple:
        return self._place(self.levels[level].shape, 1)

    def attributes(self, record: dict) -> dict:
        """The group's attributes: NGFF metadata plus our run record."""
        version = NGFF_VERSIONS[self.zarr_format]
        multiscale = {"name": self.name, "axes": self.axes,
                      "datasets": [{"path": str(k), "coordinateTransformations": t}
                                   for k, t in enumerate(self.transforms)]}
        if self.multiscale_transforms:
            multiscale["coordinateTransformations"] = self.multiscale_transforms
        label = {"version": version}
        if self.source_image is not None:
            label["source"] = {"image": self.source_image}
        if self.zarr_format == 2:
            return {"multiscales": [{"version": version, **multiscale}], "image-label": label, "patchworks": record}
        return {"ome": {"version": version, "multiscales": [multiscale], "image-label": label},
                "patchworks": record}

    def create(self, record: dict) -> None:
        """Create the group (replacing one there) and its level arrays, all zeros.

        The metadata is drafted in memory and written in one concurrent batch
        (``io._zarr_nodes``): creating the levels through the group sent ~10
        requests one after the other on an object store.
        """
        from ._sources import output_compressors

        draft = draft_group(self.zarr_format, self.attributes(record))
        names = [a["name"] for a in self.axes]
        levels = {}
        for k, level in enumerate(self.levels):
            place = self._place
            extra = {}
            if self.zarr_format == 3:
                extra["dimension_names"] = names
            if level.inner is not None:
                extra["shards"], chunks = place(level.chunks, 1), place(level.inner, 1)
            else:
                chunks = place(level.chunks, 1)
            levels[str(k)] = draft.create_array(
                str(k), shape=self.array_shape(k), chunks=chunks, dtype=self.dtype, fill_value=0,
                compressors=output_compressors(self.zarr_format, self.dtype), **extra).metadata
        store = self._store("w")
        sync(store.delete_dir(self.path))  # what was there: no chunk of an older label image survives
        ensure_parents(store, self.path, self.zarr_format)  # e.g. an image's "labels" group, left alone if there
        write_nodes(store, draft.metadata, levels, self.path)
        self._metadata = levels

    def arrays(self) -> list:
        if self._arrays is None:
            # the run-time config is not stored with the array: without it zarr scans every chunk for
            # all-zero content before writing it (measured ~35 % of the relabel)
            config = {"write_empty_chunks": True}
            if self._metadata is not None:  # known from create(): opened without a read
                store = self._store("r+")
                self._arrays = [open_array_from(store, posixpath.join(self.path, str(k)), self._metadata[str(k)],
                                                config=config) for k in range(len(self.levels))]
            else:
                group = zarr.open_group(store=self._store("r+"), path=self.path, mode="r+",
                                        zarr_format=self.zarr_format)  # known: no probing of both formats' keys
                self._arrays = [group[str(k)].with_config(config) for k in range(len(self.levels))]
        return self._arrays

    def group(self, mode="r"):
        return zarr.open_group(store=self._store(mode), path=self.path, mode=mode, zarr_format=self.zarr_format)

    def _key(self, spatial_slices):
        return self._place(spatial_slices, slice(0, 1))

    def _put(self, level: int, spatial_slices, data) -> None:
        array = self.arrays()[level]
        write_region(array, self._key(spatial_slices), data.reshape(self._place(data.shape, 1)))

    # -- writing -----------------------------------------------------------------------
    def write_tile(self, linear_index: int, core, final: np.ndarray) -> list:
        """Write one tile's final labels to every level (``core``: its spatial slices in level 0).

        Returns the tile's parts of the inline levels, ``[(level, level slices, labels), ...]``, which
        :meth:`write_inline` writes once every tile has sent its own.
        """
        self._put(0, core, final)
        pieces = {}  # parts of chunks shared with other tiles, all levels in one file per tile
        inline = []
        for k in range(1, len(self.levels)):
            level = self.levels[k]
            if level.derive:  # built from level k - 1 once that is finished
                continue
            segs, picks, ranges = [], [], []
            for sl, q, c, n in zip(core, level.factors, level.chunks, level.shape):
                s, e = _level_range(sl.start, sl.stop, q, n)
                segs.append(_segments(s, e, c, n))
                picks.append(slice(s * q - sl.start, (e - 1) * q - sl.start + 1 if e > s else 0, q))
                ranges.append(slice(s, e))
            if not all(segs):
                continue
            sub = final[tuple(picks)]  # level k's voxels of this tile: exact strided subsampling
            if level.inline:  # a copy: a view would keep the whole tile alive in the task's result
                inline.append((k, tuple(ranges), np.ascontiguousarray(sub)))
                continue
            starts = [seg[0][0] for seg in segs]
            for box in itertools.product(*segs):
                local = tuple(slice(b[0] - s, b[1] - s) for b, s in zip(box, starts))
                where = tuple(slice(b[0], b[1]) for b in box)
                if all(b[2] for b in box):
                    self._put(k, where, sub[local])
                else:
                    name = f"L{k}_" + "_".join(f"{b[0]}-{b[1]}" for b in box)
                    pieces[name] = np.ascontiguousarray(sub[local])
        if pieces:
            buffer = io.BytesIO()
            np.savez(buffer, **pieces)
            self.scratch.put(self._piece_key(linear_index), buffer.getvalue())
        return inline

    @property
    def inline_levels(self) -> list[int]:
        return [k for k, level in enumerate(self.levels) if level.inline]

    def write_inline(self, parts, threads: int = 4) -> None:
        """Write every chunk of the inline levels that the tiles' ``parts`` reach, each assembled from the parts
        that meet it; a chunk left all background is not written (the group was created empty, so it reads as
        the fill value). Memory: the parts plus one chunk per thread. ``threads`` write chunks concurrently."""
        from concurrent.futures import ThreadPoolExecutor

        meeting: dict = {}  # (level, chunk index) -> the parts that meet that chunk
        for k, ranges, data in parts:
            chunks = self.levels[k].chunks
            reach = [range(r.start // c, _ceil_div(r.stop, c)) for r, c in zip(ranges, chunks)]
            for index in itertools.product(*reach):
                meeting.setdefault((k, index), []).append((ranges, data))

        def write(item):
            (k, index), found = item
            level = self.levels[k]
            box = [(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, level.chunks, level.shape)]
            out = np.zeros([e - b for b, e in box], self.dtype)
            for ranges, data in found:
                _paste(out, box, [(r.start, r.stop) for r in ranges], data)
            if out.any():
                self._put(k, tuple(slice(b, e) for b, e in box), out)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(write, meeting.items()))

    @staticmethod
    def _piece_key(linear_index: int) -> str:
        return f"tile{linear_index}.npz"

    def shared_chunks(self, grid) -> list[tuple[int, tuple]]:
        """``(level, chunk index)`` of every chunk no tile writes alone, coarser levels after finer ones.

        Those are the chunks that hold voxels of more than one tile, and every
        chunk of a derived level; write them level by level, in this order.
        """
        found = []
        for k in range(1, len(self.levels)):
            level = self.levels[k]
            if level.inline:  # written by the driver from the parts the tiles sent back
                continue
            per_axis = [(_level_cuts(b, q, n, c), _ceil_div(n, c))
                        for b, q, c, n in zip(grid.boundaries, level.factors, level.chunks, level.shape)]
            if not level.derive and not any(shared for shared, _ in per_axis):
                continue
            ranges = [range(n_chunks) for _, n_chunks in per_axis]
            shared_sets = [set(s) for s, _ in per_axis]
            for index in itertools.product(*ranges):
                if level.derive or any(i in s for i, s in zip(index, shared_sets)):
                    found.append((k, index))
        return found

    def write_shared_chunk(self, grid, level_index: int, chunk_index: tuple) -> None:
        """Write one chunk no tile writes alone: from the finished finer level, or from the tiles' parts."""
        level = self.levels[level_index]
        box = [(i * c, min((i + 1) * c, n)) for i, c, n in zip(chunk_index, level.chunks, level.shape)]
        target = tuple(slice(s, e) for s, e in box)
        if level.derive:
            finer = self.levels[level_index - 1]
            ratio = [q // p for q, p in zip(level.factors, finer.factors)]
            read = tuple(slice(s * r, (e - 1) * r + 1) for (s, e), r in zip(box, ratio))
            if self._unwritten(level_index - 1, read) and self._unwritten(level_index, target):
                return  # background under a sparse image's empty tiles: the fill value already
            # the finer level's chunks straight from their files (zarr's machinery costs ~3 ms per chunk)
            data = read_region(self.arrays()[level_index - 1], self._key(read)).reshape([x.stop - x.start for x in read])
            self._put(level_index, target, data[tuple(slice(None, None, r) for r in ratio)])
            return
        out = np.zeros([e - s for s, e in box], dtype=self.dtype)
        rows = []  # the tiles whose level range meets this chunk, per axis
        for (s, e), b, q, n in zip(box, grid.boundaries, level.factors, level.shape):
            rows.append([r for r in range(len(b) - 1)
                         if max(s, min(_ceil_div(int(b[r]), q), n)) < min(e, min(_ceil_div(int(b[r + 1]), q), n))])
        found = False
        for index in itertools.product(*rows):
            try:
                raw = self.scratch.get(self._piece_key(grid.tile(index).linear_index))
            except FileNotFoundError:
                continue  # a tile without labels: zeros
            found = True
            prefix = f"L{level_index}_"
            pieces = load_npz(io.BytesIO(raw), prefix)  # only this level's pieces are decoded
            for name in pieces:
                bounds = [tuple(int(v) for v in part.split("-")) for part in name[len(prefix):].split("_")]
                _paste(out, box, bounds, pieces[name])
        if not found and self._unwritten(level_index, target):
            return  # no tile with labels meets this chunk
        self._put(level_index, target, out)

    def _unwritten(self, level_index: int, spatial_slices) -> bool:
        """Whether no chunk of ``level_index`` under ``spatial_slices`` was written (known without a read)."""
        return blank_value(self.arrays()[level_index], self._key(spatial_slices)) is not None


def register_label(image, name: str, *, remove: bool = False, storage_options: dict | None = None) -> None:
    """Add ``name`` to (or remove it from) the ``labels`` list of the OME-Zarr ``image``, under a lock.

    The lock is an exclusive ``flock`` on the ``labels`` directory itself, so
    two runs adding label images to one image never lose each other's entry
    and no lock file is left in the user's store. An object store has no
    ``flock``: there the lock is an object ``.patchworks-labels-lock`` in the image
    created with an exclusive write (S3's ``If-None-Match: *``), held for
    the read-modify-write of ``labels``'s metadata and deleted after; the
    write is read back and checked. A lock older than ``_LOCK_STALE_S``
    (its holder crashed) is taken over.
    """
    if is_remote(image):
        _register_remote(str(image).rstrip("/"), name, remove=remove, storage_options=storage_options)
        return

    import fcntl

    root = zarr.open_group(store=str(image), mode="r")
    fmt = root.metadata.zarr_format
    labels_dir = Path(image) / "labels"
    if not labels_dir.exists():
        if remove:
            return
        labels_dir.mkdir(exist_ok=True)
    fd = os.open(labels_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _update_labels_list(str(image), fmt, name, remove)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_LOCK_STALE_S = 120.0  # a list update takes milliseconds; a lock this old belongs to a crashed run


def _update_labels_list(store, fmt: int, name: str, remove: bool) -> bool:
    """Add ``name`` to / remove it from ``labels``'s list (the caller holds the lock); False when already so."""
    try:
        group = zarr.open_group(store=store, path="labels", mode="r+", zarr_format=fmt)
    except FileNotFoundError:
        if remove:
            return False
        group = zarr.open_group(store=store, path="labels", mode="w-", zarr_format=fmt)
    attrs = group.attrs.asdict()
    holder = attrs.get("ome", {}) if fmt == 3 else attrs
    if (name in holder.get("labels", [])) != remove:
        return False  # already as asked: a finished run re-run rewrites nothing
    names = [n for n in holder.get("labels", []) if n != name]
    if not remove:
        names.append(name)
    if fmt == 3:
        group.attrs["ome"] = {**holder, "version": holder.get("version", NGFF_VERSIONS[3]), "labels": names}
    else:
        group.attrs["labels"] = names
    return True


def _listed(store, fmt: int) -> list:
    try:
        attrs = zarr.open_group(store=store, path="labels", mode="r", zarr_format=fmt).attrs.asdict()
    except FileNotFoundError:
        return []
    return (attrs.get("ome", {}) if fmt == 3 else attrs).get("labels", [])


def _register_remote(image: str, name: str, *, remove: bool, storage_options, timeout: float = 60.0) -> None:
    """:func:`register_label` on an object store: an exclusive lock object around a read-modify-write."""
    store = zarr_store(image, storage_options, read_only=False, parameter="labels_into")
    fmt = zarr.open_group(store=store, mode="r").metadata.zarr_format
    lock = Scratch(image, storage_options)  # beside labels/, not in it: the group may not exist yet
    me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                     "nonce": os.urandom(8).hex()}).encode()
    deadline, wait = time.monotonic() + timeout, 0.02
    while not lock.create(".patchworks-labels-lock", me):
        try:
            held = json.loads(lock.get(".patchworks-labels-lock"))
        except (FileNotFoundError, ValueError):
            continue  # released meanwhile (or half-read): try again at once
        if time.time() - float(held.get("time", 0)) > _LOCK_STALE_S:
            lock.remove(".patchworks-labels-lock")
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"labels_into={image!r}: another run has held {lock}/.patchworks-labels-lock for "
                               f"{timeout:.0f} s; if no other run is writing labels into this image, delete "
                               f"that object and re-run")
        time.sleep(wait)
        wait = min(wait * 2, 0.5)
    try:
        _update_labels_list(store, fmt, name, remove)
        if (name in _listed(store, fmt)) == remove:  # read back: the entry must be as asked
            raise RuntimeError(f"labels_into={image!r}: the labels list does not show {name!r} after the update; "
                               f"another writer ignored the lock")
    finally:
        lock.remove(".patchworks-labels-lock")


def resolve_voxel_size(voxel_size, source, spatial_axes, ndim):
    """``(sizes, units)`` per spatial axis: ``voxel_size=`` if given, else the source's, else 1 and no unit.

    ``voxel_size`` is a number (every spatial axis), or one entry per
    spatial axis (or per axis of the image), each a number or a
    ``(number, unit)`` pair, e.g. ``((2, "micrometer"), 0.5, 0.5)``.

    Examples
    --------
    >>> resolve_voxel_size(((2, "um"), 0.5, 0.5), None, (0, 1, 2), 3)
    ((2.0, 0.5, 0.5), ('micrometer', None, None))
    """
    n = len(spatial_axes)
    if voxel_size is None:
        own = getattr(source, "voxel_size", None)
        if own is None:
            return (1.0,) * n, (None,) * n
        units = getattr(source, "units", None) or (None,) * len(own)
        return tuple(own[i] for i in spatial_axes), tuple(units[i] for i in spatial_axes)
    entries = [voxel_size] * n if isinstance(voxel_size, (int, float, np.number)) and \
        not isinstance(voxel_size, bool) else list(voxel_size) if isinstance(voxel_size, (list, tuple)) else None
    if entries is not None and len(entries) == ndim != n:
        entries = [entries[i] for i in spatial_axes]
    problem = entries is None or len(entries) != n
    sizes, units = [], []
    for entry in entries or ():
        value, unit = (entry if isinstance(entry, (list, tuple)) and len(entry) == 2 else (entry, None))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
            problem = True
            break
        named = ngff_unit(unit)
        if unit is not None and named is None:
            raise ValueError(f"voxel_size={voxel_size!r}: unit {unit!r} is not a length unit NGFF knows; use "
                             f"e.g. 'micrometer', 'nanometer' (or 'um', 'nm')")
        sizes.append(float(value))
        units.append(named)
    if problem:
        raise ValueError(f"voxel_size={voxel_size!r}: give one positive number per spatial axis ({n}), each "
                         f"optionally with its unit, e.g. voxel_size={tuple([1.0] * n)!r} or "
                         f"{tuple([(1.0, 'micrometer')] * n)!r}")
    return tuple(sizes), tuple(units)


def _spatial_names(axes, spatial_axes) -> str:
    n = len(spatial_axes)
    if axes:
        names = "".join(axes[i] for i in spatial_axes).lower()
        # unknown letters (tifffile's 'q', 'i', ...) say nothing: the spatial axes are then z, y, x
        if len(set(names)) == n and set(names) <= set("tzyx"):
            return names
    return "zyx"[-n:] if n <= 3 else ""


def check_ngff_labels(axes, spatial_axes) -> str | None:
    """Why labels on these axes cannot be an NGFF image (None when they can)."""
    n = len(spatial_axes)
    names = _spatial_names(axes, spatial_axes)
    spaces = sum(_axis_type(a) == "space" for a in names)
    if not names or any(_axis_type(a) is None for a in names) or not 2 <= spaces <= 3:
        return (f"labels with {n} spatial axes {names or '(unnamed)'!r} are not an OME-NGFF image (it needs 2 or 3 "
                f"space axes named from z, y, x, plus optionally t)")
    return None


def build_label_image(store, path, *, grid, source, dtype, zarr_format, scratch, voxel_size=None,
                      pyramid_levels=None, shard=None, into=None, name="labels",
                      storage_options=None, boundaries=None) -> LabelImageWriter:
    """The writer of a standalone label image, or of ``into/labels/<name>`` matching that image's levels.

    Parameters
    ----------
    grid : TileGrid
        The run's tiles (level 0 is chunked by their cores).
    boundaries : sequence of int arrays, optional
        Where the run's tasks cut the image, per spatial axis, when one task
        writes a block of tiles (level 0 is chunked by those blocks
        instead); default the grid's tile boundaries.
    source : the opened input (its axes and voxel size), or None
    into : path, optional
        An OME-Zarr image to write the labels into: its levels, shapes and
        scales are followed and ``image-label.source`` points back at it.
    """
    spatial_axes = grid.spatial_axes
    names = _spatial_names(getattr(source, "axes", None) or grid.axes, spatial_axes)
    if shard is None:
        shard = zarr_format == 3 and (zarrs_pipeline() if SHARDING is None else bool(SHARDING))
    level_shapes = multiscale_transforms = source_image = None
    if into is None:
        why = check_ngff_labels(getattr(source, "axes", None) or grid.axes, spatial_axes)
        if why:
            raise ValueError(f"{why}; pass output_format='array' for a plain zarr array")
        sizes, units = resolve_voxel_size(voxel_size, source, spatial_axes, len(grid.shape))
        base = tuple(2 if a in "yx" else 1 for a in names)
        n_levels = default_level_count(grid.spatial_shape, base) if pyramid_levels is None else \
            _check_levels(pyramid_levels)
        factors = [tuple(f ** k for f in base) for k in range(n_levels)]
        axes = []
        for a, u in zip(names, units):
            entry = {"name": a, "type": _axis_type(a)}
            if u is not None:
                entry["unit"] = u
            axes.append(entry)
        embed = tuple(range(len(names)))
        transforms = [[{"type": "scale", "scale": [s * f for s, f in zip(sizes, fk)]}] for fk in factors]
    else:
        axes, embed, factors, level_shapes, transforms, multiscale_transforms = _follow_image(
            into, names, grid, pyramid_levels, storage_options)
        source_image = "../../"
    plans = plan_levels(grid.spatial_shape, grid.boundaries if boundaries is None else boundaries,
                        factors=factors, level_shapes=level_shapes,
                        shard=shard, plane_axes=tuple(i for i, a in enumerate(names) if a not in "yx"))
    physical = into is not None or voxel_size is not None or getattr(source, "voxel_size", None) is not None
    return LabelImageWriter(store, path, levels=plans, zarr_format=zarr_format, dtype=dtype, axes=axes,
                            embed=embed, transforms=transforms, scratch=scratch, name=name,
                            source_image=source_image, multiscale_transforms=multiscale_transforms,
                            storage_options=storage_options, physical=physical)


def _check_levels(pyramid_levels) -> int:
    if isinstance(pyramid_levels, bool) or not isinstance(pyramid_levels, (int, np.integer)) or pyramid_levels < 1:
        raise ValueError(f"pyramid_levels={pyramid_levels!r}: use an int >= 1 (1 = level 0 only), or None for "
                         f"levels down to about {COARSEST} pixels in y and x")
    return int(pyramid_levels)


def image_multiscales(image, storage_options: dict | None = None):
    """``(zarr format, Multiscales, level shapes)`` of an OME-Zarr image, with errors naming ``labels_into``."""
    from ._ngff import parse_multiscales

    try:
        store = zarr_store(str(image), storage_options, read_only=True, parameter="labels_into") \
            if is_remote(image) else str(image)
        group = zarr.open_group(store=store, mode="r")
    except Exception as exc:
        raise ValueError(f"labels_into={str(image)!r} is not an OME-Zarr image (no zarr group there: "
                         f"{type(exc).__name__}); pass the path of an .ome.zarr image") from exc
    ms = parse_multiscales(group.attrs)
    if ms is None:
        raise ValueError(f"labels_into={str(image)!r} has no 'multiscales' metadata, so it is not an OME-Zarr "
                         f"image; labels go into an OME-Zarr image only (use write_to= for a standalone one)")
    return group.metadata.zarr_format, ms, [tuple(group[p].shape) for p in ms.paths]


def _follow_image(image, names, grid, pyramid_levels, storage_options=None):
    """Axes, placement, factors, shapes and transforms of labels that follow ``image``'s levels."""
    _, ms, shapes = image_multiscales(image, storage_options)
    raw_axes = [dict(a) for a in ms.raw.get("axes") or []]
    image_names = [a.get("name", "").lower() for a in raw_axes] if raw_axes else list(ms.axes or "")
    if not image_names or len(image_names) != len(shapes[0]):
        raise ValueError(f"labels_into={str(image)!r}: its multiscales metadata names no axes, so the labels' "
                         f"axes cannot be matched to it")
    if not raw_axes:  # NGFF 0.3: names only
        raw_axes = [{"name": a} for a in image_names]
    if not set(names) <= set(image_names):
        space = [a for a in image_names if _axis_type(a) == "space"]
        names = "".join(space[-len(names):]) if len(space) >= len(names) else names
    missing = [a for a in names if a not in image_names]
    if missing:
        raise ValueError(f"labels_into={str(image)!r}: the labels' axes {names!r} are not all axes of the image "
                         f"({''.join(image_names)!r}); label the image itself (or one of its channels)")
    embed = tuple(image_names.index(a) for a in names)
    level0 = tuple(shapes[0][i] for i in embed)
    if level0 != tuple(grid.spatial_shape):
        raise ValueError(f"labels_into={str(image)!r}: the labels have shape {tuple(grid.spatial_shape)} but the "
                         f"image's level 0 has {level0} on axes {names!r}; label level 0 of that image (level=0)")
    n = len(shapes)
    if pyramid_levels is not None and _check_levels(pyramid_levels) != n:
        raise ValueError(f"pyramid_levels={pyramid_levels!r}: labels written into {str(image)!r} get the image's "
                         f"{n} levels; leave pyramid_levels=None")
    factors, level_shapes = [], []
    for k in range(n):
        fk = []
        for i in embed:
            if ms.scales is not None:
                ratio = ms.scales[k][i] / ms.scales[0][i]
            else:
                ratio = shapes[0][i] / shapes[k][i]
            q = int(round(ratio))
            if q < 1 or abs(ratio - q) > 1e-6 * max(1.0, ratio) and ms.scales is not None or \
                    shapes[k][i] not in (shapes[0][i] // q, _ceil_div(shapes[0][i], q)):
                raise ValueError(f"labels_into={str(image)!r}: level {k} is not level 0 subsampled by a whole "
                                 f"factor on axis {image_names[i]!r} (shape {shapes[k][i]} of {shapes[0][i]}, "
                                 f"scale ratio {ratio:g}); labels need integer factors")
            fk.append(q)
        factors.append(tuple(fk))
        level_shapes.append(tuple(shapes[k][i] for i in embed))
    transforms = [list(d.get("coordinateTransformations") or []) for d in ms.raw.get("datasets")]
    return raw_axes, embed, factors, level_shapes, transforms, ms.raw.get("coordinateTransformations")
