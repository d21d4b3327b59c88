"""Ground-truth tools of patchworks.testing: dense tissue, the tissue oracle, stitching errors."""

import pickle
from collections import Counter, defaultdict

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from patchworks import tile_process
from patchworks.testing import (StitchingErrors, TissueOracle, assert_labels_equivalent, dense_tissue,
                                largest_cell_extent, stitching_errors)
from patchworks.testing import _voronoi


def n_components(labels):
    """Face-connected components of a multi-label image (each label's pieces counted apart)."""
    return cc3d.connected_components(labels, connectivity=2 * labels.ndim, return_N=True)[1]


# -- dense_tissue ------------------------------------------------------------------------


@pytest.mark.parametrize("shape, cell_size", [((128, 128), 8), ((96, 80), 12), ((48, 48, 48), 8), ((30, 41, 23), 5)])
def test_dense_tissue_cells_are_connected_and_sized(shape, cell_size):
    cells = dense_tissue(shape, cell_size, seed=3)
    n = int(cells.max())
    assert cells.shape == shape and cells.dtype == np.uint32
    assert cells.min() == 1  # no background
    assert np.array_equal(np.unique(cells), np.arange(1, n + 1))
    assert n == round(np.prod(shape) / cell_size ** len(shape))
    assert n_components(cells) == n  # every cell one face-connected piece
    sizes = np.bincount(cells.ravel())[1:]
    assert sizes.mean() == pytest.approx(cell_size ** len(shape), rel=0.05)
    assert max(largest_cell_extent(cells)) < 5 * cell_size


def test_dense_tissue_connected_per_cell_with_scipy():
    cells = dense_tissue((64, 64), 6, seed=11)
    for i, box in enumerate(ndimage.find_objects(cells), start=1):
        assert ndimage.label(cells[box] == i)[1] == 1, i


def test_stray_voxels_are_reattached():
    # the raw digital Voronoi leaves stray pieces for these seeds; dense_tissue must not
    shape, cell_size, seed = (128, 128), 8, 0
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(128 * 128, 256, replace=False))
    seeds = np.stack(np.unravel_index(flat, shape), axis=1)
    raw = _voronoi(shape, seeds, block=4)
    assert n_components(raw) > 256
    cells = dense_tissue(shape, cell_size, seed=seed)
    assert n_components(cells) == 256
    assert np.count_nonzero(cells != raw) < 50  # only the strays moved


@pytest.mark.parametrize("shape, block", [((37, 45), 2), ((37, 45), 8), ((13, 17, 11), 4), ((30,), 3)])
def test_voronoi_is_the_nearest_seed_with_ties_to_the_lower_index(shape, block):
    rng = np.random.default_rng(5)
    n = max(2, int(np.prod(shape)) // 30)
    flat = np.sort(rng.choice(int(np.prod(shape)), n, replace=False))
    seeds = np.stack(np.unravel_index(flat, shape), axis=1)
    voxels = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, len(shape))
    d2 = ((voxels[:, None, :] - seeds[None]) ** 2).sum(-1)
    expected = (d2.argmin(1) + 1).reshape(shape)  # argmin: first (lowest) index on ties
    assert np.array_equal(_voronoi(shape, seeds, block=block), expected)


def test_dense_tissue_is_deterministic():
    a = dense_tissue((64, 64), 8, seed=1)
    assert np.array_equal(a, dense_tissue((64, 64), 8, seed=1))
    assert not np.array_equal(a, dense_tissue((64, 64), 8, seed=2))
    assert dense_tissue((64, 64), 8, seed=1, dtype=np.uint16).dtype == np.uint16


def test_dense_tissue_errors():
    with pytest.raises(ValueError, match="cell_size=0"):
        dense_tissue((32, 32), 0)
    with pytest.raises(ValueError, match="dtype=uint8: 1024 cells"):
        dense_tissue((64, 64), 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="shape="):
        dense_tissue((32, -1))


def test_largest_cell_extent():
    labels = np.zeros((10, 12), int)
    labels[2:5, 1:9] = 4
    labels[6:10, 3] = 9
    assert largest_cell_extent(labels) == (4, 8)


# -- TissueOracle ------------------------------------------------------------------------


def test_oracle_renumbers_in_a_shuffled_window_dependent_order():
    truth = dense_tissue((48, 48), 8)
    oracle = TissueOracle()
    out = oracle(truth)
    assert out.dtype == np.uint32
    assert np.array_equal(np.unique(out), np.arange(1, truth.max() + 1))
    assert_labels_equivalent(out, truth)
    assert not np.any(out == truth)  # no tile id equals its truth id
    assert np.array_equal(out, oracle(truth))  # deterministic: a retried tile gives the same answer
    other = oracle(truth[:, :47])
    assert_labels_equivalent(other, truth[:, :47])
    assert not np.array_equal(other, out[:, :47])  # another window, another order
    assert not np.array_equal(TissueOracle(seed=1)(truth), out)


def test_oracle_keeps_background_and_avoids_fixed_points():
    truth = np.array([[0, 1, 1, 2], [0, 0, 3, 3]], np.uint16)
    for seed in range(20):
        out = TissueOracle(seed=seed)(truth)
        assert_labels_equivalent(out, truth)
        assert not np.any((out == truth) & (truth != 0))


def test_oracle_pickles():
    fn = TissueOracle(noise=2, noise_width=3, seed=7)
    clone = pickle.loads(pickle.dumps(fn))
    assert clone == fn
    truth = dense_tissue((40, 40), 8)
    assert np.array_equal(clone(truth), fn(truth))


def test_oracle_noise_stays_near_the_window_edge():
    truth = dense_tissue((64, 64), 8, seed=4)
    noise, width = 2, 3
    out = TissueOracle(noise=noise, noise_width=width)(truth)
    assert np.array_equal(out, TissueOracle(noise=noise, noise_width=width)(truth))
    inner = (slice(width, -width),) * 2
    assert_labels_equivalent(out[inner], truth[inner])  # untouched away from the edge
    # back to truth ids through the interior correspondence
    to_truth = dict(zip(out[inner].ravel().tolist(), truth[inner].ravel().tolist()))
    back = np.vectorize(lambda v: to_truth.get(v, -1))(out)
    changed = np.argwhere((back != truth) & (back != -1))  # -1: a cell seen only in the noisy frame
    assert len(changed), "noise moved no wall"
    for y, x in changed:
        near = truth[max(0, y - noise):y + noise + 1, max(0, x - noise):x + noise + 1]
        assert back[y, x] in near  # a wall moves by at most `noise` voxels
        assert min(y, x, 63 - y, 63 - x) < width


def test_oracle_noise_ignores_one_voxel_thick_axes():
    truth = dense_tissue((1, 40, 40), 8)
    out = TissueOracle(noise=2)(truth)
    assert_labels_equivalent(out[:, 2:-2, 2:-2], truth[:, 2:-2, 2:-2])


def test_oracle_errors():
    with pytest.raises(ValueError, match="noise=-1"):
        TissueOracle(noise=-1)
    with pytest.raises(TypeError, match="ground-truth label image"):
        TissueOracle()(np.zeros((4, 4), np.float32))


def test_touch_stitching_of_the_oracle_fuses_cells():
    truth = dense_tissue((64, 64), 8)
    out = tile_process(truth, TissueOracle(), tile_shape=32, overlap=0, compute=True, client=False)
    errors = stitching_errors(out, truth)
    assert errors.false_merges > 0 and errors.splits == 0 and not errors.exact


# -- stitching_errors --------------------------------------------------------------------


def reference_errors(result, truth, min_overlap=0.5):
    """The definitions, spelled out with a dense loop."""
    inter = Counter(zip(truth.ravel().tolist(), result.ravel().tolist()))
    size_t = Counter(truth.ravel().tolist())
    size_r = Counter(result.ravel().tolist())
    counting = [(t, r) for (t, r), w in inter.items()
                if t and r and w >= min_overlap * min(size_t[t], size_r[r])]
    per_r, per_t = defaultdict(set), defaultdict(set)
    for t, r in counting:
        per_r[r].add(t)
        per_t[t].add(r)
    used_t, used_r, matched = set(), set(), inter.get((0, 0), 0)
    for (t, r), w in sorted(((p, w) for p, w in inter.items() if p[0] and p[1]),
                            key=lambda item: (-item[1], item[0][0], item[0][1])):
        if t not in used_t and r not in used_r:
            used_t.add(t)
            used_r.add(r)
            matched += w
    return StitchingErrors(false_merges=sum(len(s) - 1 for s in per_r.values()),
                           splits=sum(len(s) - 1 for s in per_t.values()),
                           mismatched_voxels=truth.size - matched, n_truth=len(set(size_t) - {0}),
                           n_result=len(set(size_r) - {0}), n_voxels=truth.size)


def test_exact_result_has_no_errors():
    truth = dense_tissue((96, 96), 8)
    renamed = TissueOracle()(truth).astype(np.uint64) * 1000
    errors = stitching_errors(renamed, truth)
    assert errors == StitchingErrors(0, 0, 0, int(truth.max()), int(truth.max()), truth.size)
    assert errors.exact


def test_fused_cells_are_false_merges():
    truth = dense_tissue((96, 96), 8)
    fused = np.where(truth % 10 == 1, 1, truth)  # cells 1, 11, 21, ... become one label
    n_fused = len(np.unique(truth[truth % 10 == 1]))
    errors = stitching_errors(fused, truth)
    assert errors.false_merges == n_fused - 1
    assert errors.splits == 0
    assert errors.mismatched_voxels == np.count_nonzero(truth % 10 == 1) - np.bincount(truth.ravel())[
        np.unique(truth[truth % 10 == 1])].max()
    assert errors == reference_errors(fused, truth)


def test_cut_cells_are_splits():
    truth = dense_tissue((96, 96), 8)
    cut = truth.astype(np.int64)
    cut[:, 48:] += 10_000  # every cell crossing x = 48 is cut in two
    crossing = len(np.intersect1d(truth[:, 47], truth[:, 48]))
    errors = stitching_errors(cut, truth)
    assert errors.false_merges == 0
    assert errors.splits == crossing
    assert errors == reference_errors(cut, truth)


def test_shifted_labels_are_mismatched_voxels_only():
    truth = dense_tissue((96, 96), 12)
    shifted = np.roll(truth, 1, axis=1)
    errors = stitching_errors(shifted, truth)
    assert errors.false_merges == 0 and errors.splits == 0
    assert 0 < errors.mismatched_voxels <= np.count_nonzero(shifted != truth)
    assert errors == reference_errors(shifted, truth)


def test_background_disagreements_count():
    truth = np.array([[1, 1, 0, 2, 2]])
    errors = stitching_errors([[5, 5, 5, 0, 6]], truth)
    assert (errors.false_merges, errors.splits, errors.mismatched_voxels) == (0, 0, 2)
    assert (errors.n_truth, errors.n_result) == (2, 2)


def test_agrees_with_assert_labels_equivalent_and_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(rng.integers(1, 9, size=rng.integers(1, 4)))
        truth = rng.integers(0, 4, size=shape)
        result = rng.permutation(5)[truth] if rng.random() < 0.4 else rng.integers(0, 4, size=shape)
        errors = stitching_errors(result, truth)
        try:
            assert_labels_equivalent(result, truth)
            equivalent = True
        except AssertionError:
            equivalent = False
        assert errors.exact == equivalent
        assert errors == reference_errors(result, truth)


def test_blocks_and_large_ids():
    truth = dense_tissue((64, 64), 8).astype(np.uint64) + np.uint64(2**40)
    result = np.roll(truth, 2, axis=0) * np.uint64(3)
    from patchworks.testing import _overlaps

    whole = _overlaps(truth, result)
    blocked = _overlaps(truth, result, block_voxels=100)  # one row per block and runs across them
    for a, b in zip(whole, blocked):
        assert np.array_equal(a, b)
    assert stitching_errors(result, truth) == reference_errors(result, truth)


def test_stitching_errors_errors():
    with pytest.raises(ValueError, match="shape"):
        stitching_errors(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(TypeError, match="result: dtype float64"):
        stitching_errors(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="min_overlap=0"):
        stitching_errors(np.zeros((3, 3), int), np.zeros((3, 3), int), min_overlap=0)
