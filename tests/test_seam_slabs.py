"""The touch seam scan by runs of tile slabs: exact whatever the run length, and one read per tile.

A slab task scans every seam of a run of tile rows along axis 0 from one
ranged read per tile; seam by seam (the fallback when one slab's planes do
not fit ``SLAB_PLANE_BYTES``) reads every tile once per seam. Both are
checked against whole-image ``scipy.ndimage.label``; the reads are pinned
in tests/test_remote_requests.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from patchworks import threshold, tile_process
from patchworks.grid import TileGrid
from patchworks.labels import _process
from patchworks.labels._merge import slab_plane_bytes
from patchworks.testing import assert_labels_equivalent, random_blobs


def _oracle(mask, connectivity):
    return ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, connectivity))[0]


def _budgets(shape, tile):
    """``SLAB_PLANE_BYTES`` for: one slab per task, the default (two tasks at least), seam by seam."""
    per_slab = slab_plane_bytes(TileGrid(shape, tile))
    return {"one slab per task": per_slab, "default": _process.SLAB_PLANE_BYTES, "seam by seam": per_slab - 1}


CASES = [((40, 36, 30), (8, 10, 7), 1.5), ((45, 50), (7, 11), 1.2), ((30, 20, 24, 9), (7, 6, 5, 4), 1.0),
         ((13, 40, 40), (1, 16, 12), 1.5)]


@pytest.mark.parametrize("shape, tile, sigma", CASES, ids=["3d", "2d", "4d", "z-planes"])
@pytest.mark.parametrize("budget", ["one slab per task", "default", "seam by seam"])
def test_slab_scan_equals_whole_image_labels(shape, tile, sigma, budget, monkeypatch):
    mask = random_blobs(shape, seed=len(shape), sigma=sigma) > 0.5
    monkeypatch.setattr(_process, "SLAB_PLANE_BYTES", _budgets(shape, tile)[budget])
    for connectivity in range(1, len(shape) + 1):
        out = tile_process(mask.astype(np.uint8), threshold(0.5), tile_shape=tile, connectivity=connectivity,
                           compute=True)
        assert_labels_equivalent(out, _oracle(mask, connectivity))


def test_slabs_with_empty_tiles_and_a_single_tile_row():
    mask = np.zeros((24, 30, 20), bool)
    mask[3:9, 2:28, 4:6] = True           # crosses the axis-1 seams of the first slab only
    mask[15:22, 9:12, 1:19] = True        # crosses axis-0 and axis-2 seams; other tiles stay empty
    for tile in [(8, 10, 10), (24, 7, 6), (5, 30, 20)]:  # axis 0 in several rows, in one, the only one cut
        for connectivity in (1, 3):
            out = tile_process(mask.astype(np.uint8), threshold(0.5), tile_shape=tile,
                               connectivity=connectivity, compute=True)
            assert_labels_equivalent(out, _oracle(mask, connectivity))
