"""Where the windows of a dense run lie, and which output blocks each one reaches.

Two geometries share one description:

* ``edge="clip"`` (the tile grid): each window is a core plus ``overlap``
  voxels per side, clipped at the image edge, so edge windows are smaller;
  the output blocks are the cores.
* fixed-size windows (``edge="shift" | "pad" | "squeeze"``, what a network
  with a fixed input size needs): windows of exactly ``patch`` voxels on a
  :meth:`TileGrid.for_patches` grid -- the last one shifted inward, or the
  outside padded -- and the output blocks a regular grid of chunks.

Either way window ``i`` is tile ``i`` of ``grid`` (raster order), its full
window (the weights' frame) starts at ``starts[axis][i]``, what is read is
``tile.spatial_window`` and what it owns in crop mode is ``tile.spatial_core``.
The window/block relation is a product over axes of 1-D interval overlaps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..grid import TileGrid, normalize_per_axis

__all__ = ["EDGES", "Layout", "make_layout"]

#: Edge policies of :func:`patchworks.tile_map`.
EDGES = ("clip", "shift", "pad", "squeeze")


@dataclass
class Layout:
    grid: TileGrid                  # one tile per window, raster order
    blocks: TileGrid                # output blocks (spatial axes only): the output's chunks
    full: tuple[int, ...]           # shape of a full window (the weights)
    starts: tuple[np.ndarray, ...]  # per axis, per window: start of its full window (< 0 when padded)
    edge: str
    crop: bool                      # contributions are cores (copied), not windows (weighted)
    reach: tuple = field(init=False)    # per axis, per block: windows contributing (sorted)
    touches: tuple = field(init=False)  # per axis, per window: blocks it contributes to (sorted)

    def __post_init__(self):
        reach, touches = [], []
        for ax, (b, size) in enumerate(zip(self.blocks.boundaries, self.grid.spatial_shape)):
            if self.crop:
                lo, hi = self.grid.boundaries[ax][:-1], self.grid.boundaries[ax][1:]
            else:
                lo = np.maximum(self.starts[ax], 0)
                hi = np.minimum(self.starts[ax] + self.full[ax], size)
            hit = (lo[:, None] < b[None, 1:]) & (hi[:, None] > b[None, :-1])  # windows x blocks
            reach.append(tuple(tuple(int(i) for i in np.flatnonzero(col)) for col in hit.T))
            touches.append(tuple(tuple(int(j) for j in np.flatnonzero(row)) for row in hit))
        self.reach, self.touches = tuple(reach), tuple(touches)

    @property
    def fixed(self) -> bool:
        """Every window has exactly ``full`` voxels (fn may take them in batches)."""
        return self.edge != "clip"

    @property
    def n_windows(self) -> int:
        return self.grid.n_tiles

    def full_window(self, tile) -> tuple[slice, ...]:
        """The full window of ``tile`` in image coordinates (may pass the image edge)."""
        return tuple(slice(int(s[i]), int(s[i]) + f) for s, i, f in zip(self.starts, tile.index, self.full))

    def region(self, tile) -> tuple[slice, ...]:
        """What ``tile`` contributes: its core (crop) or its window clipped to the image."""
        return tile.spatial_core if self.crop else tile.spatial_window

    def contributors(self, block_index) -> list[tuple[int, ...]]:
        """Windows contributing to block ``block_index``, in raster (fold) order."""
        return list(itertools.product(*(r[i] for r, i in zip(self.reach, block_index))))

    def blocks_of(self, tile_index) -> list[tuple[int, ...]]:
        return list(itertools.product(*(t[i] for t, i in zip(self.touches, tile_index))))


def _fraction_or_int(overlap, patch):
    """MONAI's ``overlap=0.5`` (a fraction of the window) or voxels, per axis."""
    out = []
    for ax, (o, p) in enumerate(zip(overlap, patch)):
        if isinstance(o, (float, np.floating)) and not float(o).is_integer():
            if not 0 < o < 1:
                raise ValueError(f"overlap={o!r}: a fraction of the window must be in [0, 1), e.g. 0.5")
            o = p - max(int(p * (1 - o)), 1)  # MONAI's scan interval: int(roi * (1 - overlap))
        o = int(o or 0) if p > 1 else 0
        if not 0 <= o < p or (p == 1 and o):
            raise ValueError(f"overlap={tuple(overlap)!r}: axis {ax} overlap {o} must be >= 0 and smaller than "
                             f"the patch size {p}; use an overlap in 0..{p - 1} or a fraction such as 0.5")
        out.append(o)
    return tuple(out)


def make_layout(shape, *, tile_shape, overlap, patch_size, edge, crop, channel_axis=None, axes=None) -> Layout:
    """The windows and blocks of one run (see the module docstring)."""
    if edge not in EDGES:
        raise ValueError(f"edge={edge!r} is unknown; use one of {', '.join(map(repr, EDGES))}")
    if patch_size is None:
        tiles = TileGrid(shape, tile_shape, overlap, channel_axis=channel_axis, axes=axes)
        if edge == "clip":
            starts = tuple(b[:-1] - h for b, h in zip(tiles.boundaries, tiles.overlap))
            full = tuple(t + 2 * h for t, h in zip(tiles.tile_shape, tiles.overlap))
            return Layout(tiles, TileGrid(tiles.spatial_shape, tiles.tile_shape), full, starts, edge, crop)
        # fixed windows of core + 2 * halo, one per core step: tile 32 + 16 per side -> MONAI's roi 64, overlap 0.5
        patch = tuple(t + 2 * h for t, h in zip(tiles.tile_shape, tiles.overlap))
        step = tiles.tile_shape
    else:
        if edge == "clip":
            raise ValueError("edge='clip' clips windows at the image edge, which a fixed patch_size forbids; "
                             "use edge='shift' (windows moved inward) or edge='pad'")
        probe = TileGrid(shape, 1, channel_axis=channel_axis, axes=axes)
        n = len(probe.spatial_axes)
        letters = "".join(axes[i] for i in probe.spatial_axes).lower() if axes else None
        patch = tuple(s if not p else int(p) for p, s in
                      zip(normalize_per_axis(patch_size, n, "patch_size", default=0, axes=letters),
                          probe.spatial_shape))
        ov = overlap if isinstance(overlap, dict) else (
            (overlap,) * n if isinstance(overlap, (int, float, np.integer, np.floating)) else tuple(overlap))
        if isinstance(ov, dict):
            ov = normalize_per_axis(ov, n, "overlap", default=0, axes=letters)
        if len(ov) != n:
            raise ValueError(f"overlap={overlap!r}: give one value per spatial axis ({n})")
        ov = _fraction_or_int(ov, patch)
        step = tuple(p - o if p > 1 else 1 for p, o in zip(patch, ov))
    grid = TileGrid.for_patches(shape, patch, step=step, edge=edge, channel_axis=channel_axis, axes=axes)
    # blocks: whole steps covering a window, so an aligned window reaches few blocks
    block = tuple(min(size, s * -(-p // s)) for s, p, size in zip(grid.step, grid.patch_size, grid.spatial_shape))
    return Layout(grid, TileGrid(grid.spatial_shape, block), grid.patch_size, grid.patch_starts, edge, crop)
