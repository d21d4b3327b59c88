"""patchworks.compat.careamics against CAREamics' documented behaviour; oracles are direct loops and the image."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from patchworks.compat.careamics import (FixedPatching, FixedRandomPatching, RandomPatching, SequentialPatching,
                                         StratifiedPatching, TiledPatching, WholeSamplePatching, create_patching,
                                         is_tile_specs)

SHAPES = [(2, 1, 10, 12), (1, 3, 7, 9)]  # SC(Z)YX stacks: 2 samples, then 1


def _all(strategy):
    return [strategy.get_patch_spec(i) for i in range(strategy.n_patches)]


def _inside(spec, shapes):
    sp = shapes[spec["data_idx"]][2:]
    return all(0 <= c and c + p <= n for c, p, n in zip(spec["coords"], spec["patch_size"], sp))


@pytest.mark.parametrize("cls", [RandomPatching, FixedRandomPatching])
def test_random_counts_indices_and_positions(cls):
    p = cls(SHAPES, (4, 4), seed=1)
    # per sample: as many patches as non-overlapping patches cover it
    per_sample = [math.prod(-(-s // 4) for s in sh[2:]) for sh in SHAPES]
    assert p.n_patches == sum(n * sh[0] for n, sh in zip(per_sample, SHAPES))
    assert p.get_patch_indices(0) == list(range(0, 18)) and p.get_patch_indices(1) == list(range(18, 24))
    specs = _all(p)
    assert [(s["data_idx"], s["sample_idx"]) for s in specs] == [(0, 0)] * 9 + [(0, 1)] * 9 + [(1, 0)] * 6
    assert all(_inside(s, SHAPES) and s["patch_size"] == (4, 4) for s in specs)
    json.dumps(specs)  # plain ints: collatable and serialisable
    again = cls(SHAPES, (4, 4), seed=1)
    assert _all(again) == specs  # same seed, same draws


def test_random_draws_anew_at_each_call_fixed_random_does_not():
    r, f = RandomPatching(SHAPES, (4, 4), seed=2), FixedRandomPatching(SHAPES, (4, 4), seed=2)
    assert _all(f) == _all(f)
    first, second = _all(r), _all(r)
    assert first != second
    r.set_epoch(0)  # reproducible per epoch: the first call after set_epoch(e) is epoch e's patch
    assert _all(r) == first
    # uniform over the valid origins (direct count over many calls)
    p = RandomPatching([(1, 1, 6, 6)], (3, 3), seed=0)
    counts = np.zeros((4, 4), int)
    for _ in range(500):
        for s in _all(p):
            counts[s["coords"]] += 1
    assert stats.chisquare(counts.ravel()).pvalue > 1e-3


def test_sequential_is_a_regular_grid_with_the_last_patch_moved_inward():
    p = SequentialPatching(SHAPES, (4, 4), overlaps=(1, 2))
    for d, sh in enumerate(SHAPES):
        axes = []
        for n, step in zip(sh[2:], (3, 2)):
            starts = list(range(0, n - 4, step)) + [n - 4]  # oracle: steps of patch - overlap, last at the end
            axes.append(sorted(set(starts)))
        expected = [(d, s, (a, b)) for s in range(sh[0]) for a in axes[0] for b in axes[1]]
        got = [(x["data_idx"], x["sample_idx"], x["coords"]) for x in map(p.get_patch_spec, p.get_patch_indices(d))]
        assert got == expected
    assert SequentialPatching(SHAPES, (4, 4)).n_patches == RandomPatching(SHAPES, (4, 4)).n_patches


@pytest.mark.parametrize("shape,patch,overlaps", [((2, 1, 10, 12), (4, 4), (2, 2)), ((1, 2, 9, 13, 11), (4, 6, 5), (1, 3, 2)),
                                                  ((1, 1, 7, 9), (4, 4), (3, 1))])
def test_tiles_stitch_back_the_image_exactly(shape, patch, overlaps):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    p = TiledPatching([shape], patch, overlaps)
    out = np.full(shape, np.nan, np.float32)
    owners = np.zeros((shape[0],) + shape[2:], int)
    for spec in _all(p):
        assert is_tile_specs(spec) and _inside(spec, [shape])
        assert spec["total_tiles"] == p.n_patches
        tile = img[(spec["sample_idx"], slice(None)) + tuple(slice(c, c + s) for c, s in zip(spec["coords"], patch))]
        crop = tile[(slice(None),) + tuple(slice(c, c + s) for c, s in zip(spec["crop_coords"], spec["crop_size"]))]
        region = tuple(slice(c, c + s) for c, s in zip(spec["stitch_coords"], spec["crop_size"]))
        out[(spec["sample_idx"], slice(None)) + region] = crop
        owners[(spec["sample_idx"],) + region] += 1
        # the stitch position is the crop inside the tile, in image coordinates
        assert all(s == c + k for s, c, k in zip(spec["stitch_coords"], spec["coords"], spec["crop_coords"]))
    assert np.all(owners == 1)  # the crops partition every sample
    np.testing.assert_array_equal(out, img)
    # neighbouring tiles overlap by the requested amount (the last one more, moved inward)
    coords = sorted({s["coords"][-1] for s in _all(p)})
    assert all(b - a == patch[-1] - overlaps[-1] for a, b in zip(coords[:-2], coords[1:-1]))


def test_whole_sample_and_fixed():
    w = WholeSamplePatching(SHAPES)
    assert _all(w) == [{"data_idx": 0, "sample_idx": 0, "coords": (0, 0), "patch_size": (10, 12)},
                       {"data_idx": 0, "sample_idx": 1, "coords": (0, 0), "patch_size": (10, 12)},
                       {"data_idx": 1, "sample_idx": 0, "coords": (0, 0), "patch_size": (7, 9)}]
    assert w.get_patch_indices(1) == [2]
    specs = [{"data_idx": 1, "sample_idx": 0, "coords": (1, 2), "patch_size": (3, 3)},
             {"data_idx": 0, "sample_idx": 1, "coords": (0, 0), "patch_size": (2, 2)}]
    f = FixedPatching(specs)
    assert _all(f) == specs and f.get_patch_indices(0) == [1]
    with pytest.raises(ValueError, match=r"fixed_patch_specs\[0\] lacks \['coords'\]"):
        FixedPatching([{"data_idx": 0, "sample_idx": 0, "patch_size": (2, 2)}])


def test_stratified_exclusions_and_grid_coords():
    p = StratifiedPatching([(2, 1, 16, 12)], (4, 4), seed=3)
    assert p.n_patches == 2 * 12
    grid = p.get_all_grid_coords()
    assert grid[(0, 1)] == [(y, x) for y in range(4) for x in range(3)]
    p.exclude_patches(0, 1, [(1, 1), (3, 0)])
    assert p.n_patches == 2 * 12 - 2
    inc = p.get_included_grid_coords()
    assert (1, 1) not in inc[(0, 1)] and (1, 1) in inc[(0, 0)]
    for _ in range(30):
        for i in p.get_patch_indices(0):
            s = p.get_patch_spec(i)
            if s["sample_idx"] != 1:
                continue
            for gy, gx in [(1, 1), (3, 0)]:  # never overlaps an excluded cell
                y, x = s["coords"]
                assert not (y < 4 * gy + 4 and 4 * gy < y + 4 and x < 4 * gx + 4 and 4 * gx < x + 4)
    with pytest.raises(IndexError, match=r"\(data_idx, sample_idx\)=\(0, 2\)"):
        p.exclude_patches(0, 2, [(0, 0)])


def test_stratified_region_probs_are_absolute():
    # CAREamics: 0.1 = the region is sampled in 10 % of epochs, and n_patches shrinks
    p = StratifiedPatching([(1, 1, 16, 16)], (4, 4), seed=5)
    regions = p.get_all_grid_coords()[(0, 0)]
    p.set_region_probs(0, 0, {g: 0.1 for g in regions})
    assert p.n_patches == 2
    p = StratifiedPatching([(1, 1, 16, 16)], (4, 4), seed=5)
    p.set_region_probs(0, 0, {(0, 0): 0.25, (0, 1): 0.75, (3, 3): 0.0})  # the 13 others keep 1: 14 in all
    assert p.n_patches == 14
    epochs = 400
    counts = {g: 0 for g in regions}
    for _ in range(epochs):  # every call draws anew, as a CAREamics dataset sees it epoch after epoch
        for i in range(p.n_patches):
            counts[tuple(c // 4 for c in p.get_patch_spec(i)["coords"])] += 1
    assert counts[(3, 3)] == 0
    rate = {g: {(0, 0): 0.25, (0, 1): 0.75}.get(g, 1.0) for g in regions if g != (3, 3)}
    assert stats.binomtest(counts[(0, 0)], epochs, 0.25).pvalue > 1e-3
    assert stats.binomtest(counts[(0, 1)], epochs, 0.75).pvalue > 1e-3
    obs = np.array([counts[g] for g in rate])
    assert stats.chisquare(obs, np.array(list(rate.values())) * epochs).pvalue > 1e-3


def test_factory_and_errors():
    t = create_patching(SHAPES, {"name": "tiled", "patch_size": (4, 4), "overlaps": (2, 2)})
    assert isinstance(t, TiledPatching) and is_tile_specs(t.get_patch_spec(0))
    assert not is_tile_specs(create_patching(SHAPES, {"name": "whole"}).get_patch_spec(0))
    with pytest.raises(ValueError, match="name='grid' is unknown"):
        create_patching(SHAPES, {"name": "grid"})
    with pytest.raises(ValueError, match=r"data_shapes\[0\]=\(10, 12\): expected an SC\(Z\)YX shape"):
        RandomPatching([(10, 12)], (4, 4))
    with pytest.raises(ValueError, match=r"patch_size=\(4, 4, 4\) has 3 entries but the data has 2"):
        RandomPatching(SHAPES, (4, 4, 4))
    with pytest.raises(ValueError, match="does not fit image"):
        RandomPatching(SHAPES, (8, 8))  # (7, 9) is smaller than the patch
    with pytest.raises(IndexError, match="data_idx=5 is out of range"):
        RandomPatching(SHAPES, (4, 4)).get_patch_indices(5)
