"""A 2-D segmenter on z-stacks: planes joined into 3-D objects (issue 12).

The oracle is the ground truth itself, segmented plane by plane (each
plane's labels renumbered in a shuffled order), so every error comes from
joining planes. ``stitch_planes`` is the rule; tiles one plane thick in
``tile_process`` and 1-plane chunks in ``merge_tile_labels`` must give the
same objects.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchworks import merge_tile_labels, tile_process
from patchworks.labels._iou import stitch_planes
from patchworks.testing import (TissueOracle, assert_labels_equivalent, dense_tissue, noisy_planes, pairwise_planes,
                                separated_nuclei, stitching_errors)


def per_plane(truth, seed=0):
    """What a perfect 2-D model returns, plane by plane."""
    return np.stack([TissueOracle(seed=seed)(plane) for plane in truth])


def tiled(stack, tile=(1, 48, 48), overlap=(0, 12, 12)):
    return tile_process(stack, TissueOracle(), tile_shape=tile, overlap=overlap, stitch="iou", compute=True,
                        client=False)


def ball(shape, centre, radii):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1


# -- the two stacks of the issue, with their bounds ----------------------------------------


def test_separated_nuclei_keep_their_caps():
    truth = separated_nuclei((24, 128, 128), seed=2)
    e = stitching_errors(tiled(truth, (1, 64, 64), (0, 16, 16)), truth)
    assert e.n_truth > 100
    assert e.false_merges <= 0.02 * e.n_truth and e.splits <= 0.02 * e.n_truth, e
    old = stitching_errors(pairwise_planes(per_plane(truth)), truth)
    assert old.splits > 10 * max(e.splits, 1)  # what the two-plane IoU rule did: caps cut off


def test_dense_tissue_bounds():
    truth = dense_tissue((24, 128, 128), 14, seed=1)
    e = stitching_errors(tiled(truth, (1, 64, 64), (0, 16, 16)), truth)
    assert e.false_merges <= 0.01 * e.n_truth and e.splits <= 0.10 * e.n_truth, e


def test_dense_tissue_keeps_its_tips_in_a_deep_stack():
    # deep enough that most cells end inside the stack at both ends: their last cross-sections
    # (tips of a few voxels, often under the next cell's first one) are where splits came from
    # (the rule before: 57 splits of 382 here, 15 %)
    truth = dense_tissue((64, 128, 128), 14, seed=1)
    e = stitching_errors(stitch_planes(per_plane(truth, 1)), truth)
    assert e.n_truth > 300
    assert e.false_merges <= 0.01 * e.n_truth and e.splits <= 0.10 * e.n_truth, e


@pytest.mark.parametrize("make", [lambda: separated_nuclei((20, 128, 128), seed=4),
                                  lambda: dense_tissue((20, 128, 128), 14, seed=4)], ids=["nuclei", "tissue"])
def test_a_noisy_segmenter_does_no_worse_than_the_pairwise_rule(make):
    truth = make()
    planes = noisy_planes(truth, seed=5)
    ours = stitching_errors(stitch_planes(planes), truth)
    best_pairwise = min((stitching_errors(pairwise_planes(planes, t), truth) for t in (0.5, 0.25, 0.1)),
                        key=lambda e: e.false_merges + e.splits)
    assert ours.false_merges + ours.splits <= best_pairwise.false_merges + best_pairwise.splits


# -- named cases ----------------------------------------------------------------------------


def test_a_cap_only_object_is_one_object():
    # a nucleus whose centre lies above the stack: only its growing bottom cap is imaged
    truth = ball((5, 40, 40), (8, 20, 20), (8, 15, 15)).astype(np.uint32)
    assert (np.diff([int(truth[z].sum()) for z in range(5)]) > 0).all()  # growing all the way
    out = stitch_planes(per_plane(truth))
    assert_labels_equivalent(out, truth)
    assert pairwise_planes(per_plane(truth)).max() > 1  # the two-plane rule cuts it


def test_two_nuclei_touching_in_z_stay_two():
    shape = (16, 40, 40)
    lower = ball(shape, (4, 20, 20), (4.2, 10, 10))
    upper = ball(shape, (12.4, 20, 20), (4.2, 10, 10)) & ~lower
    truth = lower.astype(np.uint32) + 2 * upper
    z_low, z_up = np.flatnonzero(lower.any((1, 2))).max(), np.flatnonzero(upper.any((1, 2))).min()
    assert z_up == z_low + 1  # caps in consecutive planes, one above the other
    out = stitch_planes(per_plane(truth))
    e = stitching_errors(out, truth)
    assert e.false_merges == 0 and e.splits == 0, e  # two objects, each one object
    # the lower one's last cap (29 voxels) lies wholly inside both its neighbours, and the square
    # root of the area stays concave whichever it joins (17.1 15.5 12.0 5.4 or 5.4 10.4 14.6 16.6):
    # nothing in the areas or overlaps decides; it goes with the more similar neighbour, the upper one
    cap = out[z_low][lower[z_low]]
    assert (cap == out[z_up + 1][upper[z_up + 1]][0]).all()
    assert e.mismatched_voxels == int(lower[z_low].sum()) == 29
    assert stitching_errors(pairwise_planes(per_plane(truth), 0.1), truth).false_merges == 1  # a low threshold fuses


def test_a_nucleus_spanning_every_plane():
    truth = ball((9, 40, 40), (4, 20, 20), (6, 12, 12)).astype(np.uint32)
    assert truth.any((1, 2)).all()
    assert_labels_equivalent(tiled(truth, (1, 24, 24), (0, 8, 8)), truth)


def test_an_object_seen_in_a_single_plane():
    truth = np.zeros((5, 30, 30), np.uint32)
    truth[2, 10:15, 10:15] = 1                     # one plane only
    truth[1:4, 20:26, 20:26] = 2                   # a neighbour through three planes
    out = stitch_planes(per_plane(truth))
    assert_labels_equivalent(out, truth)


def test_two_labels_of_one_plane_are_never_joined():
    # a cell split by the segmenter in one plane: at most one half joins the object
    truth = np.zeros((3, 20, 20), np.uint32)
    truth[:, 5:15, 5:15] = 1
    planes = per_plane(truth)
    planes[1, 5:15, 10:15] = 7
    out = stitch_planes(planes)
    assert len(np.unique(out[1])) == 3  # background and two objects in the middle plane


def test_an_object_missed_in_one_plane_is_bridged():
    truth = ball((9, 40, 40), (4, 20, 20), (5, 12, 12)).astype(np.uint32)
    planes = per_plane(truth)
    planes[4] = 0                                  # the segmenter found nothing at the equator
    out = stitch_planes(planes)
    assert len(np.unique(out)) == 2
    # in a dense tissue there is no hole to bridge through: nothing is joined over a plane
    tissue = dense_tissue((8, 48, 48), 12, seed=3)
    e = stitching_errors(stitch_planes(per_plane(tissue)), tissue)
    assert e.false_merges <= 1


def test_2d_tiles_with_in_plane_seams_match_whole_planes():
    truth = separated_nuclei((10, 96, 96), (6, 10), seed=7)
    out = tiled(truth, (1, 40, 36), (0, 24, 24))  # seams through many nuclei in every plane
    assert_labels_equivalent(out, stitch_planes(per_plane(truth)))
    assert_labels_equivalent(out, truth)


def test_merge_tile_labels_on_1_plane_chunks(tmp_path):
    truth = separated_nuclei((12, 64, 64), seed=8)
    planes = per_plane(truth)
    path = str(tmp_path / "masks.zarr")
    zarr.create_array(path, shape=planes.shape, chunks=(1, 64, 64), dtype="uint32")[...] = planes
    out = merge_tile_labels(path, stitch="iou", compute=True, client=False)
    assert_labels_equivalent(out, truth)


def test_every_path_joins_planes_by_the_one_rule(tmp_path):
    # a noisy segmenter gives the rule real choices to make: 1-plane tiles, 1-plane chunks and
    # the plugins' plane-by-plane helper must all make the same ones as stitch_planes
    from patchworks.plugins._common import plane_by_plane

    truth = dense_tissue((10, 64, 64), 10, seed=6)
    planes = noisy_planes(truth, seed=6)
    expected = stitch_planes(planes)
    assert not stitching_errors(expected, truth).exact
    stack = iter(planes)
    assert_labels_equivalent(plane_by_plane(lambda plane: next(stack), truth, 0.5), expected)
    path = str(tmp_path / "noisy.zarr")
    zarr.create_array(path, shape=planes.shape, chunks=(1, 64, 64), dtype="uint32")[...] = planes
    assert_labels_equivalent(merge_tile_labels(path, stitch="iou", compute=True, client=False), expected)
    by_plane = {truth[z].tobytes(): planes[z] for z in range(len(truth))}
    out = tile_process(truth, lambda window: by_plane[window[0].tobytes()][None], tile_shape=(1, 64, 64),
                       stitch="iou", compute=True, client=False)
    assert_labels_equivalent(out, expected)


def test_stitch_planes_leaves_its_input_alone_and_keeps_big_ids():
    truth = separated_nuclei((8, 48, 48), seed=9)
    planes = per_plane(truth).astype(np.uint64) * np.uint64(10**12)
    before = planes.copy()
    out = stitch_planes(planes)
    assert (planes == before).all() and out.dtype == np.uint32
    assert_labels_equivalent(out, truth)


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), low=st.floats(4, 7), spread=st.floats(0, 4), anisotropy=st.floats(0.4, 1.2),
       count=st.integers(1, 30))
def test_separated_ellipsoids_are_recovered(seed, low, spread, anisotropy, count):
    truth = separated_nuclei((14, 64, 64), (low, low + spread), anisotropy=anisotropy, count=count, seed=seed)
    e = stitching_errors(stitch_planes(per_plane(truth, seed)), truth)
    assert e.false_merges == 0
    assert e.splits <= max(1, 0.05 * e.n_truth), e


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), cell=st.integers(10, 16))
def test_dense_tissue_is_recovered_within_bounds(seed, cell):
    truth = dense_tissue((12, 64, 64), cell, seed=seed)
    planes = per_plane(truth, seed)
    out = stitch_planes(planes)
    e = stitching_errors(out, truth)
    assert e.false_merges <= max(1, 0.01 * e.n_truth) and e.splits <= max(3, 0.10 * e.n_truth), e
    # one to one: no object takes two labels of one plane
    for z in range(len(planes)):
        pairs = np.unique(np.stack([planes[z].ravel(), out[z].ravel()]), axis=1)
        assert len(np.unique(pairs[1])) == pairs.shape[1]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), cell=st.integers(8, 16), jitter=st.floats(0, 3),
       missing=st.floats(0, 0.2), split=st.floats(0, 0.1), fuse=st.floats(0, 0.1))
def test_a_noisy_segmenter_never_gets_two_labels_of_a_plane_joined(seed, cell, jitter, missing, split, fuse):
    truth = dense_tissue((8, 40, 40), cell, seed=seed)
    planes = noisy_planes(truth, jitter=jitter, missing=missing, split=split, fuse=fuse, seed=seed)
    out = stitch_planes(planes)
    assert ((out == 0) == (planes == 0)).all()
    for z in range(len(planes)):
        pairs = np.unique(np.stack([planes[z].ravel(), out[z].ravel()]), axis=1)
        assert len(np.unique(pairs[1])) == pairs.shape[1]  # each object takes at most one label per plane


# -- the generators -------------------------------------------------------------------------


def test_separated_nuclei_are_separated_and_deterministic():
    from scipy import ndimage

    nuclei = separated_nuclei((16, 64, 64), (4, 7), seed=3)
    n = int(nuclei.max())
    assert n > 10 and (np.unique(nuclei) == np.arange(n + 1)).all()
    assert ndimage.label(nuclei > 0, np.ones((3, 3, 3)))[1] == n  # no two touch, even diagonally
    assert (separated_nuclei((16, 64, 64), (4, 7), seed=3) == nuclei).all()
    assert separated_nuclei((16, 64, 64), (4, 7), count=5, seed=3).max() == 5


@pytest.mark.parametrize("kwargs, match", [
    ({"radius": (9, 5)}, r"radius=\(9, 5\): need 0 < smallest <= largest"),
    ({"radius": 5}, r"radius=5: give \(smallest, largest\)"),
    ({"anisotropy": 0}, r"anisotropy=0: use a number > 0"),
    ({"gap": -1}, r"gap=-1: use an int >= 0"),
])
def test_separated_nuclei_refuses_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        separated_nuclei((8, 32, 32), **kwargs)


def test_noisy_planes_is_a_per_plane_segmenter_with_mistakes():
    truth = dense_tissue((4, 64, 64), 10, seed=2)
    before = truth.copy()
    noisy = noisy_planes(truth, jitter=0, missing=0.2, split=0, fuse=0, seed=1)
    assert (truth == before).all()
    for z in range(4):  # some objects gone, the others exact
        lost = np.unique(truth[z][noisy[z] == 0])
        assert 0 < len(lost) < len(np.unique(truth[z]))
        kept = noisy[z] != 0
        assert_labels_equivalent(noisy[z][kept], truth[z][kept])
    split = noisy_planes(truth, jitter=0, missing=0, split=0.3, fuse=0, seed=1)
    assert all(len(np.unique(split[z])) > len(np.unique(truth[z])) for z in range(4))
    fused = noisy_planes(truth, jitter=0, missing=0, split=0, fuse=0.3, seed=1)
    assert all(len(np.unique(fused[z])) < len(np.unique(truth[z])) for z in range(4))
    with pytest.raises(ValueError, match=r"missing=2: use a fraction in \[0, 1\]"):
        noisy_planes(truth, missing=2)
