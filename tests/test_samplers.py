"""Training samplers: reproducibility across processes, frequencies by chi-square / binomial tests."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import zarr
from scipy import stats

from patchworks.grid import PatchSpec
from patchworks.patches._samplers import (FixedRandomSampler, FixedSampler, LabelSampler, SequentialSampler,
                                  StratifiedSampler, UniformSampler, WeightedSampler, WholeSampler)

_P = 1e-3  # tests are deterministic (fixed seeds); this only says how surprising a pass/fail would be


def _build(kind):
    imgs = [np.zeros((20, 16)), np.zeros((12, 30))]
    prob = [np.arange(320, dtype=float).reshape(20, 16), np.ones((12, 30))]
    lab = [np.eye(20, 16, dtype=int), (np.arange(360).reshape(12, 30) % 3)]
    return {
        "uniform": lambda: UniformSampler(imgs, 4, seed=11),
        "weighted": lambda: WeightedSampler(imgs, 4, prob, seed=11, block=5),
        "label": lambda: LabelSampler(imgs, 4, lab, {0: 0.3, 1: 0.7}, seed=11),
        "stratified": lambda: StratifiedSampler(imgs, 4, seed=11),
    }[kind]()


_KINDS = ["uniform", "weighted", "label", "stratified"]
_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_samplers import _KINDS, _build
out = {{}}
for kind in _KINDS:
    s = _build(kind)
    order = list(range(len(s)))[::-1]  # another order, another process
    out[kind] = {{i: s.spec(i, epoch=3).to_dict() for i in order}}
print(json.dumps(out))
"""


def test_specs_are_the_same_in_another_process_and_any_order():
    import os

    code = _CHILD.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there = json.loads(out.stdout)
    for kind in _KINDS:
        s = _build(kind)
        here = {str(i): s.spec(i, epoch=3) for i in range(len(s))}
        assert {k: PatchSpec.from_dict(v) for k, v in there[kind].items()} == here, kind
        if kind != "stratified":  # stratified: one patch per region, but the position changes too
            assert any(s.spec(i, epoch=3) != s.spec(i, epoch=4) for i in range(len(s)))


def test_uniform_positions_chi_square():
    s = UniformSampler(np.zeros(20), 5, seed=0, patches_per_image=3200)
    starts = np.array([s.spec(i).start[0] for i in range(len(s))])
    counts = np.bincount(starts, minlength=16)
    assert counts.size == 16  # every valid origin 0..15, nothing else
    assert stats.chisquare(counts).pvalue > _P


def test_weighted_frequencies_and_zero_weight_never_drawn():
    prob = np.zeros((6, 7))
    prob[0, :] = 1.0
    prob[5, 6] = 4.0  # a corner voxel: the patch must shift inward, not drop it
    prob[2:4, 2:5] = np.arange(1, 7).reshape(2, 3)
    s = WeightedSampler(np.zeros((6, 7)), (3, 3), prob, seed=2, patches_per_image=4000, block=(2, 3))
    anchors = [s.spec(i).anchor for i in range(len(s))]
    counts = np.zeros_like(prob)
    for a in anchors:
        counts[a] += 1
    assert np.all(counts[prob == 0] == 0)
    nz = prob > 0
    expected = prob[nz] / prob.sum() * len(anchors)
    assert stats.chisquare(counts[nz], expected).pvalue > _P
    for i in range(50):
        sp = s.spec(i)
        assert all(a <= v < a + p for a, v, p in zip(sp.start, sp.anchor, sp.size))
        assert sp.pad_width == ((0, 0), (0, 0))


def test_label_frequencies_hold_when_a_class_touches_the_border():
    lab = np.zeros((16, 16), dtype=np.int32)
    lab[:, 0] = 1  # class 1 only on the border column
    lab[15, :] = 1
    lab[7:9, 7:9] = 2
    s = LabelSampler(np.zeros((16, 16)), 6, lab, {0: 0.2, 1: 0.5, 2: 0.3}, seed=4, patches_per_image=3000)
    classes = []
    for i in range(len(s)):
        sp = s.spec(i)
        assert all(a <= v < a + p for a, v, p in zip(sp.start, sp.anchor, sp.size))
        assert all(0 <= a and a + p <= 16 for a, p in zip(sp.start, sp.size))
        classes.append(int(lab[sp.anchor]))
    counts = np.bincount(classes, minlength=3)
    assert stats.chisquare(counts, np.array([0.2, 0.5, 0.3]) * len(classes)).pvalue > _P
    # and within the border class, every border voxel is drawn (uniformly)
    border = [sp.anchor for sp in map(s.spec, range(len(s))) if lab[sp.anchor] == 1]
    assert len(set(border)) == int((lab == 1).sum())
    assert stats.binomtest(int(counts[1]), len(classes), 0.5).pvalue > _P


def test_label_default_is_non_zero_labels_equally_and_absent_classes_renormalised():
    lab = [np.zeros((10, 10), int), np.zeros((10, 10), int)]
    lab[0][2, 3] = 1
    lab[0][5, 5] = 2
    lab[1][4, 4] = 2  # image 1 has no class 1: its patches all come from class 2
    s = LabelSampler([np.zeros((10, 10))] * 2, 3, lab, seed=0, patches_per_image=400)
    c0 = [int(lab[0][s.spec(i).anchor]) for i in s.indices_for(0)]
    c1 = [int(lab[1][s.spec(i).anchor]) for i in s.indices_for(1)]
    assert set(c1) == {2} and set(c0) == {1, 2}
    assert stats.binomtest(c0.count(1), len(c0), 0.5).pvalue > _P


def test_bad_maps_are_rejected():
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match="negative weights.*np.clip"):
        WeightedSampler(img, 2, np.full((8, 8), -1.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        WeightedSampler(img, 2, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="zero everywhere"):
        WeightedSampler(img, 2, np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"shape \(8, 7\).*spatial shape is \(8, 8\)"):
        WeightedSampler(img, 2, np.ones((8, 7)))
    with pytest.raises(ValueError, match="one map per image"):
        WeightedSampler([img, img], 2, [np.ones((8, 8))])
    with pytest.raises(TypeError, match="must hold integers"):
        LabelSampler(img, 2, np.ones((8, 8)) * 0.5, {1: 1.0})
    with pytest.raises(ValueError, match="every probability is 0"):
        LabelSampler(img, 2, np.ones((8, 8), int), {1: 0.0})
    with pytest.raises(ValueError, match="none of the labels"):
        LabelSampler(img, 2, np.ones((8, 8), int), {3: 1.0})
    with pytest.raises(ValueError, match="does not fit image 0"):
        UniformSampler(img, 9)
    with pytest.raises(ValueError, match="seed=-1"):
        UniformSampler(img, 2, seed=-1)


def test_stratified_exclusions_are_never_sampled():
    s = StratifiedSampler([np.zeros((18, 16)), np.zeros((9, 9))], (4, 3), seed=5)
    n0 = len(s)
    excluded = [(1, 1), (2, 3), (4, 5)]  # (4, 5) is a partial cell at the image end
    s.exclude_patches(0, excluded)
    assert len(s) == n0 - 2  # regions (1, 1) and (2, 3) are gone; (4, 5) is not a region
    assert (1, 1) not in s.included_grid_coords(0)
    seen = set()
    for epoch in range(30):
        for i in s.indices_for(0):
            sp = s.spec(i, epoch=epoch)
            seen.add(sp.start)
            for e in excluded:
                lo = [c * p for c, p in zip(e, (4, 3))]
                overlaps = all(a < lo_k + p and lo_k < a + p for a, lo_k, p in zip(sp.start, lo, (4, 3)))
                assert not overlaps, (sp, e)
    assert len(seen) > 3 * len(s.indices_for(0))  # positions vary inside the regions
    with pytest.raises(ValueError, match="outside image 0's grid"):
        s.exclude_patches(0, [(9, 9)])


def test_stratified_region_probs():
    s = StratifiedSampler(np.zeros((16, 16)), 4, seed=1)
    s.set_region_probs(0, {(0, 0): 1.0, (2, 2): 3.0})
    regions = [tuple(a // 4 for a in s.spec(i, epoch=e).start) for e in range(40) for i in range(len(s))]
    assert set(regions) == {(0, 0), (2, 2)}
    assert stats.binomtest(regions.count((2, 2)), len(regions), 0.75).pvalue > _P
    with pytest.raises(ValueError, match="every included region has weight 0"):
        s.set_region_probs(0, {(1, 1): 0.0})


def test_fixed_random_is_fixed_and_uniform_is_not():
    img = np.zeros((32, 32))
    f = FixedRandomSampler(img, 4, seed=3)
    u = UniformSampler(img, 4, seed=3)
    assert all(f.spec(i, epoch=0) == f.spec(i, epoch=9) for i in range(len(f)))
    assert any(u.spec(i, epoch=0) != u.spec(i, epoch=1) for i in range(len(u)))
    u.set_epoch(1)
    assert u.spec(2) == u.spec(2, epoch=1)


def test_several_images_of_different_shapes():
    rng = np.random.default_rng(0)
    imgs = [rng.random((2, 10, 12)), rng.random((2, 7, 20)), rng.random((2, 30, 5))]
    s = UniformSampler(imgs, (4, 5), seed=0, channel_axis=0)
    assert len(s) == 9 + 8 + 8
    for d in range(3):
        for k, i in enumerate(s.indices_for(d)):
            patch, sp = s[i]
            assert (sp.data_idx, sp.sample_idx) == (d, k)
            assert patch.shape == (2, 4, 5)
            np.testing.assert_array_equal(patch, imgs[d][(slice(None),) + sp.window])


def test_sequential_whole_and_fixed():
    img = np.arange(100).reshape(10, 10)
    seq = SequentialSampler([img, img[:6]], 4, overlap=1)
    assert len(seq) == 9 + 6 and list(seq.indices_for(1)) == list(range(9, 15))
    owner = np.zeros((10, 10), int)
    for i in seq.indices_for(0):
        owner[seq.spec(i).core] += 1
    assert np.all(owner == 1)
    whole = WholeSampler([img, img[:3]])
    np.testing.assert_array_equal(whole[1][0], img[:3])
    specs = [seq.spec(4), seq.spec(10)]
    fixed = FixedSampler([img, img[:6]], [sp.to_dict() for sp in specs])
    assert [fixed.spec(i) for i in range(2)] == specs and fixed.indices_for(1) == [1]
    np.testing.assert_array_equal(fixed[0][0], seq[4][0])


def test_out_of_core_reads_only_the_patch():
    from zarr.storage import LoggingStore, MemoryStore

    store = LoggingStore(MemoryStore(), log_handler=logging.NullHandler())
    arr = zarr.create_array(store=store, shape=(64, 64), chunks=(8, 8), dtype="u2")
    arr[:] = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    s = UniformSampler(arr, 8, seed=0)
    for i in range(5):
        store.counter.clear()
        patch, sp = s[i]
        assert store.counter["get"] <= 4  # an 8x8 patch touches at most 4 chunks of 8x8
        np.testing.assert_array_equal(patch, arr[sp.window])


def test_dataloader_workers_do_not_change_patches():
    torch = pytest.importorskip("torch", reason="PyTorch adapter is optional (patchworks[torch])")
    from torch.utils.data import DataLoader

    from patchworks.patches._torch import PatchDataset

    img = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    ds = PatchDataset(UniformSampler(img, 6, seed=9))
    ds.set_epoch(2)
    runs = []
    for workers in (0, 2):
        starts = []
        for x, spec in DataLoader(ds, batch_size=3, num_workers=workers, shuffle=False):
            assert isinstance(x, torch.Tensor) and x.shape[1:] == (6, 6)
            starts += list(zip(*(v.tolist() for v in spec["start"])))
        runs.append(starts)
    assert runs[0] == runs[1]
    assert runs[0] == [ds.sampler.spec(i, epoch=2).start for i in range(len(ds))]


def test_stratified_absolute_rates_change_the_count_and_hit_the_rates():
    # CAREamics' meaning: a region of rate r gives r patches per epoch on average, and n_patches follows
    s = StratifiedSampler(np.zeros((16, 16)), 4, seed=2)
    regions = s.included_grid_coords(0)
    s.set_region_rates(0, {g: 0.1 for g in regions})
    assert len(s) == 2  # ceil(16 * 0.1); relative weights of 0.1 everywhere would change nothing
    half = regions[::2]
    s.set_region_rates(0, {g: (0.5 if g in half else 1.0) for g in regions})
    s.set_region_rates(0, {(3, 3): 0.0})  # later calls update only the named regions
    assert len(s) == 8 * 0.5 + 7 + 0  # a whole number: no partial bin, every rate holds exactly
    epochs = 400
    counts = {g: 0 for g in regions}
    for e in range(epochs):
        for i in range(len(s)):
            counts[tuple(a // 4 for a in s.spec(i, epoch=e).start)] += 1
    assert counts[(3, 3)] == 0
    rate = {g: 0.0 if g == (3, 3) else (0.5 if g in half else 1.0) for g in regions}
    obs = np.array([counts[g] for g in regions if rate[g] > 0])
    exp = np.array([rate[g] * epochs for g in regions if rate[g] > 0])
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > _P
    assert s.region_rates(0) == pytest.approx(rate)


def test_stratified_rates_with_a_partial_last_bin_and_exclusions():
    s = StratifiedSampler(np.zeros((12, 12)), 3, seed=4)
    s.exclude_patches(0, [(1, 1)])
    s.set_region_rates(0, {(0, 0): 0.3, (2, 2): 0.2, (1, 1): 0.9})  # (1, 1) is excluded: its rate is moot
    n = int(np.ceil(13 + 0.3 + 0.2))
    assert len(s) == n
    expected = s.region_rates(0)
    assert sum(expected.values()) == pytest.approx(n)  # every index gives one patch
    assert (1, 1) not in expected
    # regions before the last bin keep their rate exactly; the last bin is filled up to one patch
    assert expected[(0, 0)] == pytest.approx(0.3) and expected[(2, 2)] == pytest.approx(0.2)
    epochs = 300
    counts = {g: 0 for g in expected}
    for e in range(epochs):
        for i in range(len(s)):
            sp = s.spec(i, epoch=e)
            assert not all(3 < a + 3 and a < 6 for a in sp.start)  # never over the excluded cell
            counts[tuple(a // 3 for a in sp.start)] += 1
    obs = np.array([counts[g] for g in expected])
    exp = np.array([expected[g] * epochs for g in expected])
    assert stats.chisquare(obs, exp).pvalue > _P
    with pytest.raises(ValueError, match=r"rate -0.5 of region \(0, 0\) must be a finite number >= 0"):
        s.set_region_rates(0, {(0, 0): -0.5})
    s.set_region_rates(0, None)
    assert len(s) == 15


def test_sampler_streams_are_default_rng_of_seed_epoch_index():
    # the documented contract, whatever shortcut builds the generator
    s = UniformSampler(np.zeros((8, 8)), 2, seed=123)
    for epoch, index in [(0, 0), (5, 7), (2**31, 3)]:
        np.testing.assert_array_equal(s.rng(index, epoch).random(4),
                                      np.random.default_rng([123, epoch, index]).random(4))
    big = UniformSampler(np.zeros((8, 8)), 2, seed=2**40)
    np.testing.assert_array_equal(big.rng(1, 2).random(2), np.random.default_rng([2**40, 2, 1]).random(2))


def test_stratified_rates_expected_counts_property():
    # oracle: a direct sum over the bins of the systematic draw, per region
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0, 1.5]), min_size=9, max_size=9),
           st.sets(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=3))
    def check(rates, excluded):
        s = StratifiedSampler(np.zeros((9, 9)), 3, seed=0)
        s.exclude_patches(0, sorted(excluded))
        grid = s.grid_coords(0)
        s.set_region_rates(0, dict(zip(grid, rates)))
        inc = s.included_grid_coords(0)
        r = np.array([dict(zip(grid, rates))[g] for g in inc])
        total = r.sum()
        n = int(np.ceil(total - 1e-9)) if total > 0 else 0
        assert len(s) == n
        expected = s.region_rates(0)
        hi = np.cumsum(r)
        lo = hi - r
        for j, g in enumerate(inc):  # bins [k, k+1) for k < n-1 count as laid out; the last one is scaled to 1
            want = 0.0
            for k in range(n):
                top = min(k + 1, total)
                part = max(0.0, min(hi[j], top) - max(lo[j], k))
                want += part / (top - k) if top > k else 0.0
            assert expected[g] == pytest.approx(want, abs=1e-9)
            if r[j] == 0:
                assert want == 0
        assert sum(expected.values()) == pytest.approx(n)
        drawn = {tuple(a // 3 for a in s.spec(i).start) for i in range(len(s))}
        assert drawn <= {g for g, v in zip(inc, r) if v > 0}  # never an excluded or zero-rate region

    check()
