"""Sparse images: empty tiles cost no read, no seam read and no pyramid write, and the labels stay exact."""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from patchworks import TileGrid, open_image, threshold, tile_process
from patchworks.io._chunk_io import chunk_files
from patchworks.labels._batch import batch_block
from patchworks.testing import assert_labels_equivalent

_OPENS = {"root": None, "paths": [], "lock": threading.Lock()}


def _audit(event, args):
    # counts real file opens under one directory while a test watches it (an audit hook cannot be removed)
    root = _OPENS["root"]
    if root is not None and event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).startswith(root):
        with _OPENS["lock"]:
            _OPENS["paths"].append(str(args[0]))


sys.addaudithook(_audit)


class opens_under:
    """The files opened under ``root`` inside the ``with`` block."""

    def __init__(self, root):
        self.root, self.paths = str(root), []

    def __enter__(self):
        _OPENS["paths"], _OPENS["root"] = [], self.root
        return self

    def __exit__(self, *exc):
        _OPENS["root"] = None
        self.paths = list(_OPENS["paths"])


def _sparse_zarr(path, image, chunks, fill_value=0):
    """``image`` as a zarr v3 array whose all-fill chunks are never written (what a sparse image looks like)."""
    arr = zarr.create_array(store=path, shape=image.shape, chunks=chunks, dtype=image.dtype, fill_value=fill_value)
    for index in np.ndindex(*[-(-n // c) for n, c in zip(image.shape, chunks)]):
        box = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))
        if (image[box] != fill_value).any():
            arr[box] = image[box]
    return arr


def test_blank_knows_unwritten_chunks_only(tmp_path):
    arr = zarr.create_array(store=tmp_path / "a.zarr", shape=(32, 32), chunks=(8, 8), dtype=np.uint8, fill_value=3)
    arr[8:16, 8:16] = 0                 # written, although every value is below the fill value
    files = chunk_files(arr)
    assert files.blank((slice(0, 8), slice(0, 32))) == 3
    assert files.blank((slice(0, 9), slice(0, 9))) is None      # touches the written chunk
    assert files.blank((slice(20, 21), 5)) == 3                  # ints on an axis
    source = open_image(tmp_path / "a.zarr")
    assert source.blank((slice(24, 32), slice(0, 32))) == 3
    assert source.blank((slice(8, 16), slice(8, 16))) is None
    np.testing.assert_array_equal(source[0:8, 0:8], 3)           # and the read agrees


@pytest.mark.parametrize("tile_shape", [16, 4], ids=["one tile per task", "batches of small tiles"])
def test_empty_tiles_of_a_sparse_zarr_are_skipped_unread(tmp_path, tile_shape):
    image = np.zeros((64, 64), np.uint8)
    image[3:9, 3:13] = 200
    image[14:20, 30:34] = 200     # across the seam at y = 16
    image[44:52, 46:50] = 200     # across x = 48
    path = tmp_path / "in.zarr"
    _sparse_zarr(path, image, (tile_shape, tile_shape))
    written = {str(p) for p in (path / "c").rglob("*") if p.is_file()}
    with opens_under(path / "c") as opened:
        labels = tile_process(str(path), threshold(100), tile_shape=tile_shape, skip_empty=True, empty_threshold=0,
                              compute=True, progress=False)
    assert_labels_equivalent(labels, ndimage.label(image > 100)[0])
    # chunks = tiles; a batch reads its block of tiles in one go, so a chunk is opened only when a written
    # chunk shares its batch (one tile per task: only the written chunks themselves)
    block = batch_block(TileGrid(image.shape, tile_shape))
    batch_of = lambda p: tuple(int(i) // b for i, b in zip(Path(p).relative_to(path / "c").parts, block))
    assert written <= set(opened.paths)
    assert {batch_of(p) for p in opened.paths} == {batch_of(p) for p in written}, "empty batches are never read"
    if block == (1, 1):
        assert set(opened.paths) == written


def test_a_fill_value_above_the_threshold_is_not_skipped(tmp_path):
    image = np.full((32, 32), 200, np.uint8)
    image[10:12, :] = 0           # one background band: two objects
    path = tmp_path / "in.zarr"
    _sparse_zarr(path, image, (16, 16), fill_value=200)
    labels = tile_process(str(path), threshold(100), tile_shape=16, skip_empty=True, empty_threshold=0,
                          compute=True, progress=False)
    assert_labels_equivalent(labels, ndimage.label(image > 100)[0])


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([4, 8]), st.sampled_from([1, 2]))
def test_sparse_images_label_exactly_with_empty_tiles_everywhere(tmp_path_factory, seed, tile, connectivity):
    rng = np.random.default_rng(seed)
    image = np.zeros((48, 40), np.uint8)
    for _ in range(4):            # a few small objects, often on seams and corners, most tiles empty
        y, x = rng.integers(0, 44), rng.integers(0, 36)
        image[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = 255
    path = tmp_path_factory.mktemp("sparse") / "in.zarr"
    _sparse_zarr(path, image, (tile, tile))
    labels = tile_process(str(path), threshold(100), tile_shape=tile, skip_empty=True, empty_threshold=0,
                          connectivity=connectivity, compute=True, progress=False)
    structure = ndimage.generate_binary_structure(2, connectivity)
    assert_labels_equivalent(labels, ndimage.label(image > 100, structure)[0])


def test_pyramid_chunks_over_empty_tiles_are_never_written(tmp_path):
    image = np.zeros((2048, 2048), np.uint8)  # level 1 in two chunks even when inline (up to 512^2 voxels each)
    image[5:20, 7:30] = 255        # one object in the first tile
    path = tmp_path / "in.zarr"
    _sparse_zarr(path, image, (64, 64))
    out = tmp_path / "labels.zarr"
    tile_process(str(path), threshold(100), tile_shape=64, write_to=out, skip_empty=True, empty_threshold=0,
                 pyramid_levels=6, progress=False)
    group = zarr.open_group(out, mode="r")
    level0 = group["0"][...]
    shared = 0
    for k in range(6):
        level = group[str(k)]
        np.testing.assert_array_equal(level[...], level0[::2 ** k, ::2 ** k])
        files = {str(p.relative_to(out / str(k))) for p in (out / str(k) / "c").rglob("*") if p.is_file()}
        # the object's chunk only: background chunks stay unwritten (at level 5 the object falls between the
        # samples: nothing is written there at all)
        assert files == ({"c/0/0"} if level[...].any() else set()), (k, files)
        shared += level.nchunks > 1 and k > 0
    assert shared, "some coarse level has several chunks (else this test shows nothing)"
