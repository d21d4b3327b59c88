"""stitch="iou": instance-safe seams, checked against a ground-truth tissue of touching cells."""

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchworks import merge_tile_labels, tile_process
from patchworks.labels._iou import match_labels, stitch_planes
from patchworks.testing import (TissueOracle, assert_labels_equivalent, dense_tissue, largest_cell_extent,
                                stitching_errors)


def largest_extent(labels) -> int:
    """The largest cell side on any axis: an overlap this large shows every seam cell whole to both tiles."""
    return max(largest_cell_extent(labels))


def run(truth, stitch, tile, overlap, fn=None, **kwargs):
    return tile_process(truth, fn or TissueOracle(), tile_shape=tile, overlap=overlap, stitch=stitch,
                        compute=True, client=False, **kwargs)


@pytest.mark.parametrize("shape, cell, tile", [((96, 112), 10, 32), ((40, 44, 36), 8, (16, 16, 12))])
def test_iou_recovers_the_tissue_exactly_and_touch_fuses_it(shape, cell, tile):
    truth = dense_tissue(shape, cell, seed=3)
    overlap = largest_extent(truth)
    overlap = tuple(min(overlap, t - 1) for t in np.broadcast_to(tile, len(shape)))
    exact = run(truth, "iou", tile, overlap)
    assert_labels_equivalent(exact, truth)  # zero false merges and zero splits, corners included
    fused = run(truth, "touch", tile, 0)
    errors = stitching_errors(fused, truth)
    assert errors.false_merges > 10 and errors.splits == 0  # the trade-off, pinned


def test_a_noisy_segmenter_still_gives_no_false_merges():
    truth = dense_tissue((128, 128), 10, seed=5)
    out = run(truth, "iou", 40, 16, fn=TissueOracle(noise=2, seed=1))
    errors = stitching_errors(out, truth)
    assert errors.false_merges == 0
    assert errors.splits == 0


def test_cells_reaching_into_a_diagonal_tile_only_are_joined():
    # a cell that crosses the corner where four tiles meet through one diagonal step
    truth = np.ones((8, 8), np.uint32)
    truth[:4, 4:] = 2
    truth[4:, :4] = 3
    truth[4:, 4:] = 5
    truth[3, 3] = truth[4, 4] = 4  # one cell in the top-left and bottom-right tiles only
    out = run(truth, "iou", 4, 2, iou_threshold=0.5)
    assert out[3, 3] == out[4, 4]
    assert_labels_equivalent(out, truth)


@st.composite
def tissues(draw):
    ndim = draw(st.sampled_from([2, 3]))
    cell = draw(st.integers(4, 8))
    shape = tuple(draw(st.integers(12, 48 if ndim == 2 else 20)) for _ in range(ndim))
    tile = tuple(draw(st.integers(6, s)) for s in shape)
    return shape, cell, tile, draw(st.integers(0, 2**16)), draw(st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tissues())
def test_iou_with_an_overlap_of_the_largest_cell_is_exact(case):
    shape, cell, tile, seed, sequential = case
    truth = dense_tissue(shape, cell, seed=seed)
    extent = largest_extent(truth)
    if any(extent >= t for t, s in zip(tile, shape) if t < s):
        tile = tuple(min(s, max(t, extent + 1)) for t, s in zip(tile, shape))
    overlap = tuple(min(extent, t - 1) for t in tile)
    out = run(truth, "iou", tile, overlap, sequential_labels=sequential)
    assert_labels_equivalent(out, truth)
    if sequential:
        assert out.max() == len(np.unique(truth))


def test_matching_is_one_to_one():
    # tile view a sees two cells where b sees one fused label: at most one of them joins it
    a = np.array([[1, 1, 1, 2, 2, 2]])
    b = np.array([[7, 7, 7, 7, 7, 7]])
    assert match_labels(a, b, 0.3).tolist() == [[1, 7]]
    assert match_labels(a, b, 0.6).tolist() == []


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.05, 1.0))
def test_no_label_is_matched_twice(seed, threshold):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, (6, 6))
    b = rng.integers(0, 5, (6, 6))
    pairs = match_labels(a, b, threshold)
    assert len(set(pairs[:, 0].tolist())) == len(pairs) == len(set(pairs[:, 1].tolist()))


def test_a_tile_that_fused_two_cells_does_not_fuse_them_in_the_output():
    # the right-hand tile's segmenter sees the two cells crossing the seam as one object
    truth = np.zeros((8, 12), np.uint32)
    truth[:, :6] = 1
    truth[:4, 6:] = 2
    truth[4:, 6:] = 3
    truth[:4, 4:8] = 2   # cell 2 and 3 cross the seam at x = 6
    truth[4:, 4:8] = 3

    def block_fn(block, block_info=None):
        labels = TissueOracle()(block)
        if block_info[0]["chunk-location"][1] == 1:  # right tile: fuse whatever crosses its left edge
            labels[np.isin(labels, np.unique(labels[:, 0]))] = labels[0, 0]
        return labels

    blocks = da.from_array(truth, chunks=(8, 6)).map_overlap(block_fn, depth=(0, 2), trim=False,
                                                             boundary="none", dtype=np.uint32)
    out = merge_tile_labels(blocks, overlap=(0, 2), stitch="iou", compute=True, client=False)
    assert out[0, 5] != out[7, 5]  # cells 2 and 3 stay apart on the left of the seam
    touch = merge_tile_labels(blocks, overlap=(0, 2), compute=True, client=False)
    assert touch[0, 5] == touch[7, 5]


def test_merge_tile_labels_of_map_overlap_blocks():
    truth = dense_tissue((100, 100), 9, seed=2)
    blocks = da.from_array(truth, chunks=25).map_overlap(TissueOracle(), depth=20, trim=False,
                                                         boundary="none", dtype=np.uint32)
    out = merge_tile_labels(blocks, overlap=20, stitch="iou", compute=True, client=False)
    assert_labels_equivalent(out, truth)


# -- a 2-D segmenter on a z-stack: plane-by-plane tiles -------------------------------------


def columns(seed=4):
    """Prism cells: one tessellation for planes 0-5, a finer one for planes 6-10."""
    upper = dense_tissue((60, 60), 14, seed=seed)
    lower = dense_tissue((60, 60), 7, seed=seed + 1) + upper.max()
    return np.concatenate([np.broadcast_to(upper, (6, 60, 60)), np.broadcast_to(lower, (5, 60, 60))])


@pytest.mark.parametrize("tile", [(1, 60, 60), (1, 30, 24)])
def test_plane_by_plane_tiles_are_stitched_like_whole_planes(tile):
    stack = columns()
    overlap = (0, 12, 12) if tile[1] < 60 else 0
    out = run(stack, "iou", tile, overlap)
    per_plane = np.stack([TissueOracle()(plane) for plane in stack])  # what a 2-D model returns per plane
    assert_labels_equivalent(out, stitch_planes(per_plane, 0.5))  # Cellpose's stitch_threshold rule
    assert stitching_errors(out, stack).splits == 0
    touch = run(stack, "touch", tile, overlap)
    assert touch.max() == 1 or len(np.unique(touch)) == 1  # any overlap joins: everything fuses


def test_plane_by_plane_is_never_regrouped():
    stack = columns()
    calls = []

    def fn(window):
        calls.append(window.shape)
        return TissueOracle()(window)

    run(stack, "iou", (1, 60, 60), 0, fn=fn)
    assert set(calls) == {(1, 60, 60)} and len(calls) == 11


# -- errors -------------------------------------------------------------------------------


def test_iou_without_overlap_on_a_thick_axis_says_which_overlap_to_set():
    truth = dense_tissue((32, 32), 6)
    with pytest.raises(ValueError, match=r"spatial axis 0 has overlap 0 with tiles 16 thick; set overlap=\(4, 4\)"):
        tile_process(truth, TissueOracle(), tile_shape=16, overlap=(0, 4), stitch="iou", compute=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"stitch": "overlap"}, "stitch='overlap': use 'touch'"),
    ({"stitch": "iou", "iou_threshold": 0}, r"iou_threshold=0: use a number in \(0, 1\]"),
    ({"stitch": "iou", "iou_threshold": 1.5}, r"iou_threshold=1.5"),
])
def test_bad_stitch_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tile_process(np.ones((8, 8), np.uint32), TissueOracle(), tile_shape=4, overlap=2, compute=True, **kwargs)


def test_iou_on_a_zarr_of_cores_explains_how_to_get_a_halo(tmp_path):
    path = str(tmp_path / "tiles.zarr")
    zarr.create_array(path, shape=(16, 16), chunks=(8, 8), dtype="uint32")[...] = dense_tissue((16, 16), 4)
    with pytest.raises(ValueError, match="a zarr input holds cores only.*map_overlap"):
        merge_tile_labels(path, stitch="iou", compute=True)


def test_a_finished_touch_run_is_not_reused_for_iou(tmp_path):
    truth = dense_tissue((32, 32), 6)
    out = str(tmp_path / "labels.zarr")
    tile_process(truth, TissueOracle(), tile_shape=16, overlap=6, write_to=out)
    with pytest.raises(FileExistsError):
        tile_process(truth, TissueOracle(), tile_shape=16, overlap=6, stitch="iou", write_to=out)
    again = tile_process(truth, TissueOracle(), tile_shape=16, overlap=6, stitch="iou", write_to=out,
                         overwrite=True, compute=True)
    assert_labels_equivalent(again, truth)
    assert zarr.open_group(out).attrs["patchworks"]["stitch"] == "iou"


def test_per_plane_masks_saved_to_zarr_are_stitched_in_z(tmp_path):
    # e.g. Cellpose 2-D masks written plane by plane, each plane numbered 1..n on its own
    stack = columns()
    per_plane = np.stack([TissueOracle()(plane) for plane in stack])
    path = str(tmp_path / "masks.zarr")
    zarr.create_array(path, shape=per_plane.shape, chunks=(1, 60, 60), dtype="uint32")[...] = per_plane
    out = merge_tile_labels(path, stitch="iou", compute=True, client=False)
    assert_labels_equivalent(out, stitch_planes(per_plane, 0.5))


def test_bands_are_staged_compressed_and_read_back_exactly(tmp_path):
    from patchworks import TileGrid
    from patchworks.labels._tile_task import band_ids
    from patchworks.labels._stage_store import TileStaging

    truth = dense_tissue((48, 48, 48), 8, seed=1)
    grid = TileGrid(truth.shape, 16, overlap=6)
    staging = TileStaging(grid, tmp_path, bands=True)
    tile = grid.tile((1, 1, 1))  # an inner tile: six bands
    boxes = staging.band_boxes(tile)
    assert len(boxes) == 6
    ids, lut, n, bands = band_ids(TissueOracle()(truth[tile.spatial_window]), tile, boxes.values())
    bands = list(bands)
    staging.put(tile, ids, lut, n, bands)
    raw = sum(b.nbytes for b in bands)
    assert (tmp_path / f"tile-{tile.linear_index}.bin").stat().st_size < raw / 3
    back = staging.read_bands(tile)
    for key, band in zip(boxes, bands):
        np.testing.assert_array_equal(back[key], band)
    assert set(staging.read_bands(tile, [(0, 1)])) == {(0, 1)}
    staged_ids, staged_lut, _ = staging.take(tile)
    np.testing.assert_array_equal(staged_lut[staged_ids], lut[ids])
