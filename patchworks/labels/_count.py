"""Count the objects of a label image window by window: memory follows the labels, not the image."""

from __future__ import annotations

import fastremap
import numpy as np

from ..grid import TileGrid


def _scan_tile_shape(shape, chunks, target=1 << 22):
    """Whole on-disk chunks, grown to about ``target`` voxels so tiny chunks (TIFF strips) are not read one by one."""
    tile = list(chunks) if chunks else [1] * len(shape)
    while True:
        size = 1
        for t in tile:
            size *= t
        growable = [i for i, (t, s) in enumerate(zip(tile, shape)) if t < s]
        if size >= target or not growable:
            return tuple(tile)
        i = min(growable, key=lambda i: tile[i] / shape[i])  # the axis covered least so far
        tile[i] = min(tile[i] * 2, shape[i])


def count_labels(source) -> int:
    """Distinct non-zero values, read window by window: memory grows with the labels, not the image."""
    if 0 in source.shape:
        return 0
    grid = TileGrid(source.shape, tile_shape=_scan_tile_shape(source.shape, source.chunks))
    seen: set[int] = set()
    for tile in grid:
        values = fastremap.unique(np.asarray(source[tile.window]))
        seen.update(values[values != 0].tolist())
    return len(seen)
