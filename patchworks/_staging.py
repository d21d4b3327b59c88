"""Where staged tiles wait between the tile tasks and the relabel tasks.

Two stores with one interface:

- :class:`MemoryStaging` keeps each tile's raw core and its small local
  look-up table in this process's memory. The relabel then composes the
  look-up tables and writes the tile once: no scratch write, no re-read, no
  second renumbering pass. Used on the threaded scheduler when the staged
  volume fits the memory budget.
- :class:`DiskStaging` writes local ids to a scratch zarr array (chunks =
  tile cores) and the seam planes to small side arrays. It pickles, so
  cluster workers share it through the file system, and its size is not
  limited by memory.

Seam planes (first and last core plane of a tile along each tiled axis) are
kept while the tile is in memory, so the seam scan never reads the volume.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np

from ._grid import Tile, TileGrid
from ._io import create_output


def _both_planes(local: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate([local.take([0], axis=axis), local.take([-1], axis=axis)], axis=axis)


class MemoryStaging:
    """Staged tiles held in this process (threads only; never pickled)."""

    kind = "memory"

    def __init__(self, grid: TileGrid):
        self.grid = grid
        self._cores: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._planes: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __reduce__(self):
        raise TypeError("MemoryStaging lives in one process; use DiskStaging on a cluster")

    def put(self, tile: Tile, ids: np.ndarray, lut: np.ndarray | None) -> None:
        """Keep the core ``ids``; ``lut[ids]`` are its local ids (``ids`` already are when ``lut`` is None)."""
        planes = {}
        for a, n_rows in enumerate(self.grid.grid_shape):
            if n_rows > 1:
                both = _both_planes(ids, a)
                planes[(tile.linear_index, a)] = both if lut is None else lut[both]
        with self._lock:
            self._cores[tile.linear_index] = (ids, lut)
            self._planes.update(planes)

    def take(self, tile: Tile):
        with self._lock:
            return self._cores.pop(tile.linear_index, (None, None))

    def read_plane(self, axis: int, plane_index: int, lo: int, hi: int) -> np.ndarray:
        """Local ids of one global seam plane, rows ``lo:hi`` of its first in-plane axis."""
        grid = self.grid
        row, which = divmod(plane_index, 2)
        in_plane = [a for a in range(len(grid.grid_shape)) if a != axis]
        shape = [grid.spatial_shape[a] for a in in_plane]
        if shape:
            shape[0] = hi - lo
        out = np.zeros(shape, dtype=np.uint32)
        first = in_plane[0] if in_plane else None
        for tile in _row_tiles(grid, axis, row):
            if first is not None:
                core = tile.spatial_core[first]
                a, b = max(core.start, lo), min(core.stop, hi)
                if a >= b:
                    continue
            planes = self._planes.get((tile.linear_index, axis))
            if planes is None:
                continue  # empty tile
            piece = planes.take([which], axis=axis).squeeze(axis)
            dst = [tile.spatial_core[k] for k in in_plane]
            if first is not None:
                piece = piece[(slice(a - core.start, b - core.start),)]
                dst[0] = slice(a - lo, b - lo)
            out[tuple(dst)] = piece
        return out

    def discard(self) -> None:
        self._cores.clear()
        self._planes.clear()


def _row_tiles(grid: TileGrid, axis: int, row: int):
    ranges = [range(g) if a != axis else range(row, row + 1) for a, g in enumerate(grid.grid_shape)]
    for index in itertools.product(*ranges):
        yield grid.tile(index)


class DiskStaging:
    """Staged local ids and seam planes in scratch zarr arrays (picklable)."""

    kind = "disk"

    def __init__(self, grid: TileGrid, scratch: Path):
        self.grid = grid
        chunks = grid.chunks
        self.cores = create_output(Path(scratch) / "staging.zarr", shape=grid.spatial_shape, dtype=np.uint32,
                                   chunks=chunks)
        self.planes = {}
        for a, n_rows in enumerate(grid.grid_shape):
            if n_rows > 1:
                shape, plane_chunks = list(grid.spatial_shape), list(chunks)
                shape[a], plane_chunks[a] = 2 * n_rows, 2  # row i: first plane at 2i, last at 2i+1
                self.planes[a] = create_output(Path(scratch) / f"planes_axis{a}.zarr", shape=tuple(shape),
                                               dtype=np.uint32, chunks=tuple(plane_chunks))

    def put(self, tile: Tile, ids: np.ndarray, lut: np.ndarray | None) -> None:
        local = ids if lut is None else lut[ids]
        self.cores[tile.spatial_core] = local
        for a, arr in self.planes.items():
            region = list(tile.spatial_core)
            region[a] = slice(2 * tile.index[a], 2 * tile.index[a] + 2)
            arr[tuple(region)] = _both_planes(local, a)

    def take(self, tile: Tile):
        return np.asarray(self.cores[tile.spatial_core]), None

    def read_plane(self, axis: int, plane_index: int, lo: int, hi: int) -> np.ndarray:
        key = [slice(None)] * len(self.grid.grid_shape)
        key[axis] = plane_index
        in_plane = [a for a in range(len(self.grid.grid_shape)) if a != axis]
        if in_plane:
            key[in_plane[0]] = slice(lo, hi)
        return np.asarray(self.planes[axis][tuple(key)])

    def discard(self) -> None:
        pass  # the scratch directory is removed by the caller
