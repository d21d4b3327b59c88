"""Where staged tiles wait between the tile tasks and the relabel tasks.

One file per tile in the run's scratch directory, ``tile-<i>.bin``, written
atomically (our own format, which skips zarr's machinery), also for an empty
or skipped tile, so that the file's presence means "this tile is staged" and
an interrupted run can resume:

1. a header of five uint64: the tile's label count ``n``, the lengths of the
   two blobs of 3., the size of the look-up table and the length of 4.;
2. when ``n > 0``, what the seam scan needs, raw uint32, captured while the
   tile is in memory so the scan reads only the head of the file, never the
   volume; the shapes follow from the grid:

   - ``stitch="touch"``: the seam planes in local ids, one tiled axis after
     the other, first then last core plane along that axis, each contiguous
     so that a seam task reads just the one it needs;
   - ``stitch="iou"``: the tile's own view of each band it shares with a
     face neighbour (``2 * overlap`` thick across the seam, the whole window
     along the other axes; one plane for plane-by-plane tiles), in local ids
     with the labels seen only in the halo numbered after the core's. Bands
     of 3-D tiles are big (a 64x512x512 tile with overlap 32 has six of
     64x576x576), so each is lz4-compressed, after a table of their lengths;
3. the core ids, Blosc-lz4 compressed, as uint16 when every id fits (half
   the bytes to compress, write, read and decompress; the decompressed
   length tells the reader which), and the tile's local look-up table
   when the ids are not yet ``1..n``; the relabel task composes that table
   with the final one and rewrites the tile in a single pass;
4. the tile's table partials (a ``.npy``, when the run measures a table):
   the relabel task that reads the tile anyway maps them to final ids, so
   they cost no object, PUT or GET of their own.

Files rather than memory keep the driver's and the workers' memory flat
whatever the volume (the OS page cache makes them about as fast for a run
that fits in RAM), let cluster workers share staging through the file system,
and make a staged tile a durable fact of the run. The files are objects of a
:class:`~patchworks.io._scratch.Scratch`: a local directory, or a prefix in an
object store that workers sharing no file system all reach. Reads are
batched for the object-store case: resume lists the tiles once, a seam task
reads each tile's seam planes in one ranged GET (one batch for all the tiles
of its slabs), a relabel task reads its tile (and its partials) in one GET,
a band read is two ranged GETs.
"""

from __future__ import annotations

import itertools

import numpy as np
from numcodecs import Blosc

from ..grid import Tile, TileGrid
from ..io._scratch import Scratch

# lz4 level 1 without shuffle: label ids are runs of one value, which lz4 finds in the
# raw bytes (a byte shuffle costs 1.8 -> 1.2 ms to encode and 1.9 -> 0.9 ms to decode a
# 128^3 uint16 tile for the same ratio, ~37x); scratch is read once, so speed beats ratio.
# Bumped whenever the file layout changes: part of every run's fingerprint, so a run
# interrupted under an older layout is never resumed from files this code misreads.
STAGING_FORMAT = 4

_HEAD = 40  # the header's five uint64

_UINT16_MAX = 65535

_CODEC = Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE)


class TileStaging:
    """Staged tiles of one run, one object per tile in ``scratch`` (a :class:`Scratch` or a path; picklable)."""

    def __init__(self, grid: TileGrid, scratch, bands: bool = False):
        self.grid = grid
        self.scratch = scratch if isinstance(scratch, Scratch) else Scratch(scratch)
        self.bands = bands           # stage IoU bands instead of seam planes
        self._planes = {}            # linear index -> (start, stop, bytes) of seam planes fetched ahead

    @property
    def root(self):
        return self.scratch.location

    @staticmethod
    def _key(i: int) -> str:
        return f"tile-{i}.bin"

    def _plane_shapes(self, tile: Tile) -> dict[int, tuple[int, ...]]:
        """``{axis: shape of one seam plane}`` for every tiled axis (two planes each in the file)."""
        return {a: tile.core_shape[:a] + tile.core_shape[a + 1:]
                for a, n_rows in enumerate(self.grid.grid_shape) if n_rows > 1}

    def band_boxes(self, tile: Tile) -> dict[tuple[int, int], tuple[slice, ...]]:
        """``{(axis, side): box}``: where the bands shared with face neighbours lie (absolute spatial slices).

        ``side`` 0 is the neighbour before the tile along ``axis``, 1 the one
        after it. Across the seam a band reaches ``overlap`` voxels into
        each tile (clipped to the window); along the other axes it spans
        the window. A plane-by-plane axis (no overlap) gives the tile's
        first or last plane.
        """
        grid, boxes = self.grid, {}
        for a, n_rows in enumerate(grid.grid_shape):
            h, win, core = grid.overlap[a], tile.spatial_window[a], tile.spatial_core[a]
            for side, has_neighbour in ((0, tile.index[a] > 0), (1, tile.index[a] < n_rows - 1)):
                if not has_neighbour:
                    continue
                seam = core.start if side == 0 else core.stop
                if h:
                    across = slice(max(seam - h, win.start), min(seam + h, win.stop))
                else:
                    across = slice(seam, seam + 1) if side == 0 else slice(seam - 1, seam)
                boxes[(a, side)] = tile.spatial_window[:a] + (across,) + tile.spatial_window[a + 1:]
        return boxes


    def put(self, tile: Tile, ids: np.ndarray | None, lut: np.ndarray | None, n: int, bands=None,
            partials: bytes = b"") -> None:
        """Stage a tile: ``n`` labels in its core ``ids``, ``lut[ids]`` local (``ids`` are when ``lut`` is None).

        ``bands``: the tile's views of its :meth:`band_boxes`, in that order
        (``stitch="iou"`` only). ``partials``: its table partials' bytes.
        """
        if n == 0:
            self.scratch.put(self._key(tile.linear_index), np.zeros(_HEAD // 8, np.uint64).tobytes())
            return
        ids = np.ascontiguousarray(ids, dtype=np.uint32)
        if self.bands:
            blobs = [_CODEC.encode(np.ascontiguousarray(b, dtype=np.uint32)) for b in bands]
            plane_bytes = np.array([len(b) for b in blobs], np.uint64).tobytes() + b"".join(blobs)
        else:
            planes = []
            for a in self._plane_shapes(tile):
                for end in (0, -1):
                    plane = ids.take(end, axis=a)
                    planes.append((plane if lut is None else lut[plane]).ravel())
            plane_bytes = np.concatenate(planes).astype(np.uint32).tobytes() if planes else b""
        top = n if lut is None else lut.size - 1  # the largest id the body may hold
        body = _CODEC.encode(ids.astype(np.uint16) if top <= _UINT16_MAX else ids)
        extra = b"" if lut is None else _CODEC.encode(np.ascontiguousarray(lut, dtype=np.uint32))
        header = np.array([n, len(body), len(extra), 0 if lut is None else lut.size, len(partials)], dtype=np.uint64)
        self.scratch.put(self._key(tile.linear_index),
                         b"".join([header.tobytes(), plane_bytes, body, extra, partials]))

    def staged_counts(self) -> dict[int, int]:
        """``{tile: n_labels}`` of every tile already staged (what a resumed run skips).

        One listing, then the 8-byte heads of the staged tiles in one batch.
        """
        found = [int(k[5:-4]) for k in self.scratch.keys("tile-") if k.endswith(".bin")]
        heads = self.scratch.get_ranges([self._key(i) for i in found], [0] * len(found), [8] * len(found))
        return {i: int(np.frombuffer(h, dtype=np.uint64)[0]) for i, h in zip(found, heads)
                if h is not None and len(h) == 8}

    def take(self, tile: Tile):
        """``(ids, lut, partials)`` of a staged tile, ``partials`` the bytes staged with it or None (one read)."""
        data = self.scratch.get(self._key(tile.linear_index))
        _, body_len, extra_len, lut_size, parts_len = (int(v) for v in np.frombuffer(data[:_HEAD], dtype=np.uint64))
        if self.bands:
            nb = len(self.band_boxes(tile))
            lengths = np.frombuffer(data[_HEAD:_HEAD + 8 * nb], dtype=np.uint64).astype(np.int64)
            head = _HEAD + 8 * nb + int(lengths.sum())
        else:
            head = _HEAD + 8 * sum(int(np.prod(s)) for s in self._plane_shapes(tile).values())
        body, extra = data[head:head + body_len], data[head + body_len:head + body_len + extra_len]
        tail = head + body_len + extra_len
        partials = data[tail:tail + parts_len] if parts_len else None
        voxels = int(np.prod(tile.core_shape))
        # staged as uint16 when every id fits: the Blosc header's uncompressed size (bytes 4-8) says which
        narrow = int.from_bytes(body[4:8], "little") == 2 * voxels
        # decoded into an array of our own: Blosc then runs without the GIL (no bytes object to make)
        ids = np.empty(tile.core_shape, dtype=np.uint16 if narrow else np.uint32)
        _CODEC.decode(body, out=ids)
        lut = np.frombuffer(_CODEC.decode(extra), dtype=np.uint32)[:lut_size] if extra_len else None
        return ids, lut, partials

    def _plane_range(self, tile: Tile, axis: int, which: int) -> tuple[int, int]:
        """Byte range of one staged seam plane of a tile (``which``: 0 first, 1 last)."""
        shapes = self._plane_shapes(tile)
        offset = _HEAD
        for a, shape in shapes.items():
            if a == axis:
                offset += 4 * which * int(np.prod(shape))
                break
            offset += 8 * int(np.prod(shape))
        return offset, offset + 4 * int(np.prod(shapes[axis]))

    def read_bands(self, tile: Tile, keys=None) -> dict[tuple[int, int], np.ndarray] | None:
        """The staged band views of a tile (``stitch="iou"``), or None for an empty tile.

        ``keys``: only these ``(axis, side)`` bands. Two ranged reads: the
        header with the band lengths, then the span of the bands asked for
        (a neighbour's other bands and the core are not read).
        """
        return self.read_bands_many([(tile, keys)])[0]

    def read_bands_many(self, requests) -> list:
        """:meth:`read_bands` for several ``(tile, keys)`` at once: two batched reads in all, not two per tile."""
        boxes = [self.band_boxes(tile) for tile, _ in requests]
        names = [self._key(tile.linear_index) for tile, _ in requests]
        heads = self.scratch.get_ranges(names, [0] * len(names), [_HEAD + 8 * len(b) for b in boxes])
        plans, spans = [], []
        for (tile, keys), box, head in zip(requests, boxes, heads):
            if head is None:
                raise FileNotFoundError(f"tile {tile.index} is not staged in {self.scratch}")
            if len(head) < _HEAD or int(np.frombuffer(head[:8], dtype=np.uint64)[0]) == 0:
                plans.append(None)
                continue
            nb = len(box)
            lengths = np.frombuffer(head[_HEAD:_HEAD + 8 * nb], dtype=np.uint64).astype(np.int64)
            starts = _HEAD + 8 * nb + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            wanted = [j for j, k in enumerate(box) if keys is None or k in keys]
            plans.append((lengths, starts, wanted))
            if wanted:
                spans.append((len(plans) - 1, int(starts[wanted[0]]),
                              int(starts[wanted[-1]] + lengths[wanted[-1]])))
        data = dict(zip((i for i, _, _ in spans),
                        self.scratch.get_ranges([names[i] for i, _, _ in spans], [a for _, a, _ in spans],
                                                [b for _, _, b in spans])))
        lows = {i: a for i, a, _ in spans}
        out = []
        for i, (plan, box) in enumerate(zip(plans, boxes)):
            if plan is None:
                out.append(None)
                continue
            lengths, starts, wanted = plan
            views = {}
            for j, (k, b) in enumerate(box.items()):
                if j in wanted:
                    shape = tuple(s.stop - s.start for s in b)
                    blob = data[i][int(starts[j]) - lows[i]:int(starts[j] + lengths[j]) - lows[i]]
                    views[k] = np.frombuffer(_CODEC.decode(blob), dtype=np.uint32).reshape(shape)
            out.append(views)
        return out

    def read_plane(self, axis: int, plane_index: int, lo: int, hi: int, occupied=None) -> np.ndarray:
        """Local ids of one global seam plane, rows ``lo:hi`` of its first in-plane axis.

        ``plane_index`` is ``2 * row`` for the first plane of tile row ``row``
        along ``axis`` and ``2 * row + 1`` for its last. ``occupied``: a
        boolean per tile (linear index); tiles staged without labels are not
        read (their object holds no planes).
        """
        grid = self.grid
        row, which = divmod(plane_index, 2)
        in_plane = [a for a in range(len(grid.grid_shape)) if a != axis]
        shape = [grid.spatial_shape[a] for a in in_plane]
        if shape:
            shape[0] = hi - lo
        out = np.zeros(shape, dtype=np.uint32)
        ranges = [range(g) if a != axis else range(row, row + 1) for a, g in enumerate(grid.grid_shape)]
        if in_plane:  # only the tile rows that intersect lo:hi on the first in-plane axis
            b = grid.boundaries[in_plane[0]]
            first = int(np.searchsorted(b, lo, side="right") - 1)
            last = int(np.searchsorted(b, hi, side="left"))
            ranges[in_plane[0]] = range(first, last)
        tiles = [grid.tile(index) for index in itertools.product(*ranges)]
        if occupied is not None:
            tiles = [t for t in tiles if occupied[t.linear_index]]
        spans = [self._plane_range(tile, axis, which) for tile in tiles]
        pieces = self._plane_pieces(tiles, spans)
        for tile, (a, b), raw in zip(tiles, spans, pieces):
            if raw is None or len(raw) < b - a:
                continue  # an empty or skipped tile has no planes (its object is the header alone)
            piece = np.frombuffer(raw, dtype=np.uint32).reshape(self._plane_shapes(tile)[axis])
            dst = [tile.spatial_core[k] for k in in_plane]
            if in_plane:
                core = dst[0]
                a, b = max(core.start, lo), min(core.stop, hi)
                piece = piece[a - core.start:b - core.start]
                dst[0] = slice(a - lo, b - lo)
            out[tuple(dst)] = piece
        return out

    def _plane_pieces(self, tiles, spans) -> list:
        """The bytes ``spans`` of ``tiles``' objects: from :meth:`with_planes`' cache, else one batched read."""
        held = [self._planes.get(t.linear_index) for t in tiles]
        if not all(h is not None and h[0] <= a and b <= h[1] for h, (a, b) in zip(held, spans)):
            # one batch for every tile of the plane: an object store answers them concurrently
            return self.scratch.get_ranges([self._key(t.linear_index) for t in tiles],
                                           [a for a, _ in spans], [b for _, b in spans])
        return [None if raw is None else raw[a - start:b - start] for (start, _, raw), (a, b) in zip(held, spans)]

    def with_planes(self, whole, first) -> "TileStaging":
        """A copy whose :meth:`read_plane` serves ``whole``'s seam planes and ``first``'s first axis-0 planes.

        One ranged GET per tile, all in one batch (the planes lie together
        at the head of a tile's object, the first one along axis 0 first):
        a task that scans every seam of a run of tile slabs reads each tile
        once instead of once per seam.
        """
        whole, first = list(whole), list(first)
        tiles = whole + first
        stops = [_HEAD + 4 * sum(2 * int(np.prod(s)) for s in self._plane_shapes(t).values()) for t in whole]
        stops += [self._plane_range(t, 0, 0)[1] for t in first]
        raws = self.scratch.get_ranges([self._key(t.linear_index) for t in tiles], [_HEAD] * len(tiles), stops)
        copy = TileStaging(self.grid, self.scratch, self.bands)
        copy._planes = {t.linear_index: (_HEAD, stop, raw) for t, stop, raw in zip(tiles, stops, raws)}
        return copy
