"""GridSampler + Aggregator against oracles: the input itself, np.pad, a numpy run."""

import logging

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchworks.grid import EDGE_POLICIES, TileGrid
from patchworks.patches._grid_sampler import PAD_MODES, Aggregator, GridSampler


@st.composite
def patch_grids(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 17), min_size=ndim, max_size=ndim)))
    edge = draw(st.sampled_from(EDGE_POLICIES))
    hi = [s + 4 if edge == "pad" else s for s in shape]
    patch = tuple(draw(st.integers(1, h)) for h in hi)
    overlap = tuple(draw(st.integers(0, p - 1)) for p in patch)
    return shape, patch, overlap, edge


@settings(max_examples=200, deadline=None)
@given(patch_grids())
def test_patch_cores_partition_the_image_for_every_edge_policy(case):
    shape, patch, overlap, edge = case
    grid = TileGrid.for_patches(shape, patch, overlap=overlap, edge=edge)
    owner = np.zeros(shape, dtype=np.int32)
    for i in range(grid.n_tiles):
        spec = grid.patch(i)
        owner[spec.core] += 1
        if edge == "adaptive":  # cut at the image end, never padded
            assert spec.size == tuple(min(p, n - a) for p, n, a in zip(grid.patch_size, shape, spec.start))
        else:
            assert spec.size == grid.patch_size
        for a, p, n, (b, e), cs, ce in zip(spec.start, spec.size, shape, spec.pad_width, spec.core_start,
                                           spec.core_stop):
            assert a <= cs < ce <= a + p  # the core lies in the patch
            assert b == max(0, -a) and e == max(0, a + p - n)
            if edge != "pad":
                assert b == e == 0  # shift / squeeze: every patch inside the image
        t = grid.tile(i)  # the tile view agrees: window = patch clipped, crop = core inside it
        assert t.spatial_core == spec.core and t.spatial_window == spec.window
    assert np.all(owner == 1)
    for starts, p, s, o in zip(grid.patch_starts, grid.patch_size, grid.step, grid.overlap):
        steps = np.diff(starts)
        assert np.all(steps >= 1) and np.all(steps <= s)  # no gaps, never more than the step
        if edge == "squeeze":
            assert steps.size == 0 or steps.max() - steps.min() <= 1


def _identity(sampler, agg, batch=3, channel_last=False):
    specs = sampler.specs
    for i in range(0, len(specs), batch):
        chunk = specs[i:i + batch]
        if len({s.size for s in chunk}) > 1:  # edge="adaptive": patches of unequal size go one by one
            for s in chunk:
                agg.add(sampler.read(s), s)
            continue
        preds = np.stack([sampler.read(s) for s in chunk])
        if channel_last:
            preds = np.moveaxis(preds, 1, -1)
        agg.add(preds, chunk)
    return agg.result()


@pytest.mark.parametrize("edge", EDGE_POLICIES)
@pytest.mark.parametrize("channels", [None, 3])
def test_crop_identity_is_bit_exact(edge, channels):
    rng = np.random.default_rng(1)
    shape = (23, 18) if channels is None else (channels, 23, 18)
    img = rng.integers(0, 60000, shape, dtype=np.uint16)
    sampler = GridSampler(img, (7, 6), overlap=(3, 5), edge=edge, pad_mode="reflect",
                          channel_axis=None if channels is None else 0)
    out = _identity(sampler, Aggregator(sampler, window="crop"))
    assert out.dtype == img.dtype and out.shape == img.shape  # padded margin removed
    np.testing.assert_array_equal(out, img)


def test_crop_identity_3d_channel_last_odd_overlaps():
    img = np.random.default_rng(2).random((9, 11, 7, 2)).astype(np.float32)
    sampler = GridSampler(img, (4, 5, 3), overlap=(1, 3, 1), edge="pad", channel_axis=-1, pad_mode="symmetric")
    agg = Aggregator(sampler, window="crop", channel_last=True, out_channels=2)
    # patches come out in the image's layout (channel last); feed them as (B, *patch, C)
    for i, spec in enumerate(sampler.specs):
        agg.add(sampler.read(spec)[None], [spec])
    np.testing.assert_array_equal(agg.result(), img)


@pytest.mark.parametrize("edge", EDGE_POLICIES)
@pytest.mark.parametrize("window", ["mean", "hann", "gaussian"])
def test_blended_identity_and_constant(edge, window):
    img = np.random.default_rng(3).random((2, 15, 13)).astype(np.float32)
    sampler = GridSampler(img, (6, 5), overlap=(3, 2), edge=edge, channel_axis=0, pad_mode="edge")
    out = _identity(sampler, Aggregator(sampler, window=window))
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, img, rtol=2e-6, atol=1e-6)
    const = np.full((15, 13), 7.25, np.float32)
    cs = GridSampler(const, (6, 5), overlap=(3, 2), edge=edge, pad_mode="edge")
    out = _identity(cs, Aggregator(cs, window=window))
    np.testing.assert_allclose(out, 7.25, rtol=1e-6)  # everywhere, corners included
    assert out[0, 0] == pytest.approx(7.25) and out[-1, -1] == pytest.approx(7.25)


def test_weights_stay_finite_and_positive_with_300_overlaps():
    img = np.linspace(0, 1, 600, dtype=np.float32)
    sampler = GridSampler(img, 300, step=1)
    agg = Aggregator(sampler, window="gaussian")
    for i in range(0, len(sampler), 64):
        chunk = sampler.specs[i:i + 64]
        agg.add(np.stack([sampler.read(s) for s in chunk]), chunk)
    out = agg.result()
    assert agg.weight_sum.dtype == np.float32
    assert np.all(np.isfinite(agg.weight_sum)) and np.all(agg.weight_sum > 0)
    assert len(sampler) == 301  # the middle voxel is seen by 300 patches
    np.testing.assert_allclose(out, img, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("patch", [(5, 4), (13, 11)])  # the second is larger than the image: repeated padding
def test_padding_equals_np_pad(mode, patch):
    img = np.arange(3 * 8 * 6, dtype=np.int32).reshape(3, 8, 6)
    sampler = GridSampler(img, patch, overlap=(2, 3), edge="pad", pad_mode=mode, constant_values=-5,
                          channel_axis=0)
    before = [max(0, -min(s.start[k] for s in sampler.specs)) for k in range(2)]
    after = [max(0, max(s.stop[k] for s in sampler.specs) - img.shape[k + 1]) for k in range(2)]
    extra = {"constant_values": -5} if mode == "constant" else {}
    padded = np.pad(img, [(0, 0)] + list(zip(before, after)), mode=mode, **extra)
    assert any(any(b or e for b, e in s.pad_width) for s in sampler.specs)
    for patch_arr, spec in sampler:
        sl = tuple(slice(a + b, a + b + p) for a, b, p in zip(spec.start, before, spec.size))
        np.testing.assert_array_equal(patch_arr, padded[(slice(None),) + sl])
    out = _identity(sampler, Aggregator(sampler, window="hann"))
    assert out.shape == img.shape  # the padded margin is removed on output
    np.testing.assert_allclose(out, img, rtol=1e-6)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("window", ["crop", "gaussian"])
def test_zarr_output_equals_numpy(tmp_path, zarr_format, window):
    img = np.random.default_rng(4).random((2, 19, 14)).astype(np.float32)
    sampler = GridSampler(img, (8, 6), overlap=(3, 2), edge="shift", channel_axis=0)
    ref = _identity(sampler, Aggregator(sampler, window=window))
    out = _identity(sampler, Aggregator(sampler, window=window, output=tmp_path / "o.zarr", zarr_format=zarr_format,
                                        chunks=(5, 5)))
    assert isinstance(out, zarr.Array) and out.metadata.zarr_format == zarr_format
    np.testing.assert_array_equal(out[...], ref)
    # into an existing array too
    arr = zarr.create_array(store=str(tmp_path / "e.zarr"), shape=img.shape, chunks=(2, 7, 7), dtype="f4",
                            zarr_format=zarr_format)
    out = _identity(sampler, Aggregator(sampler, window=window, output=arr))
    np.testing.assert_array_equal(out[...], ref)


def test_reads_only_the_patch_chunks():
    from zarr.storage import LoggingStore, MemoryStore

    store = LoggingStore(MemoryStore(), log_handler=logging.NullHandler())
    arr = zarr.create_array(store=store, shape=(40, 40), chunks=(10, 10), dtype="f4")
    arr[:] = np.arange(1600, dtype=np.float32).reshape(40, 40)
    sampler = GridSampler(arr, (10, 10), overlap=0)
    store.counter.clear()
    patch, spec = sampler[5]
    assert store.counter["get"] == 1  # one chunk, not the image
    np.testing.assert_array_equal(patch, arr[spec.window])
    padded = GridSampler(arr, (12, 12), overlap=4, edge="pad", pad_mode="wrap")
    store.counter.clear()
    padded[0]  # wraps: reads the window plus the wrapped planes, not the whole image
    assert 0 < store.counter["get"] < 16


def test_errors_name_parameter_value_and_fix():
    img = np.zeros((10, 10))
    with pytest.raises(ValueError, match=r"overlap=.*must be >= 0 and smaller than the patch size 4"):
        GridSampler(img, 4, overlap=4)
    with pytest.raises(ValueError, match="both given"):
        GridSampler(img, 4, overlap=1, step=2)
    with pytest.raises(ValueError, match=r"step=.*must be in 1\.\.4"):
        GridSampler(img, 4, step=5)
    with pytest.raises(ValueError, match="larger than the image axis.*edge='pad'"):
        GridSampler(img, 12)
    with pytest.raises(ValueError, match="edge='wobble' is unknown"):
        GridSampler(img, 4, edge="wobble")
    with pytest.raises(ValueError, match="pad_mode='mean' is not supported"):
        GridSampler(img, 4, pad_mode="mean")
    sampler = GridSampler(img, 4, overlap=1)
    agg = Aggregator(sampler, window="mean")
    with pytest.raises(ValueError, match="spatial shape"):
        agg.add(np.zeros((1, 3, 3)), [sampler.spec(0)])
    with pytest.raises(ValueError, match="2 predictions but 1 specs"):
        agg.add(np.zeros((2, 4, 4)), [sampler.spec(0)])
    agg.add(np.zeros((1, 4, 4)), [sampler.spec(0)])
    with pytest.raises(RuntimeError, match="never added.*allow_missing=True"):
        agg.result()
    assert agg.result(allow_missing=True).shape == (10, 10)
    with pytest.raises(ValueError, match="out_channels=2"):
        Aggregator(sampler, out_channels=2).add(np.zeros((1, 3, 4, 4)), [sampler.spec(0)])
    with pytest.raises(IndexError, match="out of range"):
        sampler[len(sampler)]


def test_specs_round_trip_and_pickle():
    import pickle

    sampler = GridSampler(np.zeros((9, 9)), 4, overlap=1, edge="pad")
    for spec in sampler.specs:
        assert type(spec).from_dict(spec.to_dict()) == spec
        assert pickle.loads(pickle.dumps(spec)) == spec
    again = pickle.loads(pickle.dumps(sampler))
    assert again.specs == sampler.specs


def test_torch_batches_and_dataloader():
    torch = pytest.importorskip("torch", reason="PyTorch adapter is optional (patchworks[torch])")
    from torch.utils.data import DataLoader

    from patchworks.patches._torch import PatchDataset

    img = np.random.default_rng(5).random((2, 17, 12)).astype(np.float32)
    sampler = GridSampler(img, (6, 5), overlap=(2, 1), edge="pad", channel_axis=0, pad_mode="reflect")
    for workers in (0, 2):
        for window in ("crop", "hann"):
            agg = Aggregator(sampler, window=window)
            loader = DataLoader(PatchDataset(sampler), batch_size=4, num_workers=workers)
            with torch.no_grad():
                for x, specs in loader:
                    agg.add(x * 1, specs)  # a torch tensor and a collated dict of specs
            np.testing.assert_allclose(agg.result(), img, rtol=1e-6)
    # channel-last tensors
    agg = Aggregator(sampler, window="crop", channel_last=True)
    for x, specs in DataLoader(PatchDataset(sampler), batch_size=5):
        agg.add(x.permute(0, 2, 3, 1), specs)
    np.testing.assert_array_equal(agg.result(), np.moveaxis(img, 0, -1))


def test_blended_result_twice_is_the_same_and_add_after_it_is_refused():
    img = np.random.default_rng(11).random((2, 20, 17), dtype=np.float32)
    sampler = GridSampler(img, (8, 8), overlap=4, channel_axis=0)
    agg = Aggregator(sampler, window="gaussian")
    for patch, spec in sampler:
        agg.add(patch, spec)
    first = agg.result().copy()
    np.testing.assert_allclose(first, img, rtol=1e-6)
    np.testing.assert_array_equal(agg.result(), first)
    patch, spec = sampler[0]
    with pytest.raises(RuntimeError, match=r"add\(\) after result\(\)"):
        agg.add(patch, spec)


def _blend_batches(sampler, agg, batch, fn):
    specs = sampler.specs
    for k in range(0, len(specs), batch):
        chunk = specs[k:k + batch]
        agg.add(fn(np.stack([sampler.read(s) for s in chunk])), chunk)
    return agg.result()


@pytest.mark.parametrize("case", [
    # (image shape, channel axis, patch, overlap, edge, patches per add)
    ((40, 37, 33), None, 16, 8, "shift", 7),          # a batch's patches overlap each other, on axis 0 too
    ((3, 30, 29), 0, (20, 12), (10, 5), "adaptive", 1),  # smaller edge patches, channels first
    ((30, 29, 2), 2, (17, 9), (8, 4), "pad", 5),         # channels last, padded edges
])
def test_threaded_blend_equals_one_thread_bit_for_bit(case):
    """Slabs of one patch on several threads add the same values in the same order as one thread does."""
    shape, channel_axis, patch, overlap, edge, batch = case
    img = np.random.default_rng(11).random(shape).astype(np.float32)
    sampler = GridSampler(img, patch, overlap=overlap, edge=edge, channel_axis=channel_axis)
    # no channel axis in the image: three made-up channels; else the patches as read (the image's layout)
    fn = (lambda b: np.stack([b, 2 * b, b * b], axis=1)) if channel_axis is None else (lambda b: b)
    outs = []
    for threads in (1, 2, 3):
        agg = Aggregator(sampler, window="gaussian", threads=threads, channel_last=channel_axis == 2)
        outs.append(_blend_batches(sampler, agg, batch, fn))
        assert agg._pool is None  # result() stopped the helpers
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])
    ref = img if channel_axis is not None else fn(img[None])[0]
    np.testing.assert_allclose(outs[0], ref, rtol=2e-6, atol=1e-6)


def test_threads_option_is_checked_and_an_aggregator_pickles_mid_run():
    import pickle

    img = np.random.default_rng(5).random((32, 32)).astype(np.float32)
    sampler = GridSampler(img, 16, overlap=8)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"threads=.*positive int"):
            Aggregator(sampler, window="mean", threads=bad)
    agg = Aggregator(sampler, window="mean", threads=2)
    first = sampler.specs[:2]
    agg.add(np.stack([sampler.read(s) for s in first]), first)
    assert agg._pool is not None
    copy = pickle.loads(pickle.dumps(agg))  # the helper threads stay behind; the copy starts its own
    rest = sampler.specs[2:]
    for a in (agg, copy):
        a.add(np.stack([sampler.read(s) for s in rest]), rest)
    np.testing.assert_array_equal(copy.result(), agg.result())
    np.testing.assert_allclose(agg.result(), img, rtol=1e-6)


def _weight_sum_oracle(sampler, agg, times):
    """sum(w) by a direct loop in float64: every patch's window, as often as it was added."""
    total = np.zeros(sampler.spatial_shape)
    for spec, n in zip(sampler.specs, times):
        total[spec.window] += n * agg._window_for(spec)[spec.valid].astype(np.float64)
    return total


@settings(max_examples=150, deadline=None)
@given(patch_grids(), st.sampled_from(["mean", "hann", "gaussian"]), st.integers(0, 2**32 - 1))
def test_weight_sums_equal_a_direct_loop_over_the_added_patches(grid, window, seed):
    """result() makes sum(w) from the specs: spread along the axes for a full grid, else patch by patch
    (patches added twice or never, smaller edge patches); both equal the direct loop."""
    shape, patch, overlap, edge = grid
    rng = np.random.default_rng(seed)
    img = rng.random(shape).astype(np.float32)
    sampler = GridSampler(img, patch, overlap=overlap, edge=edge)
    times = rng.choice([1, 1, 1, 2, 0], size=len(sampler)) if rng.random() < 0.5 else np.ones(len(sampler), int)
    agg = Aggregator(sampler, window=window, threads=1)
    for spec, n in zip(sampler.specs, times):
        for _ in range(n):
            agg.add(sampler.read(spec), spec)
    if not times.any():
        return
    out = agg.result(allow_missing=True)
    expected = _weight_sum_oracle(sampler, agg, times)
    # float32 sums of n terms, in another order than the oracle's: n ulp apart at most
    adds = np.zeros(sampler.spatial_shape, np.int64)
    for spec, n in zip(sampler.specs, times):
        adds[spec.window] += n
    rtol = max(2e-6, int(adds.max()) * float(np.finfo(np.float32).eps))
    np.testing.assert_allclose(agg.weight_sum, expected, rtol=rtol, atol=1e-6)
    covered = expected > 0
    np.testing.assert_allclose(out[covered], img[covered], rtol=max(1e-5, 2 * rtol), atol=1e-6)
    assert not out[~covered].any()
    # a GridSampler's patches are always a grid: the fast path is there whenever they are of one size
    from patchworks.patches._grid_sampler import _grid_placements
    one_size = all(tuple(s.size) == tuple(patch) for s in sampler.specs)
    assert (_grid_placements(sampler.specs, patch) is not None) == one_size


def test_mean_window_adds_predictions_as_they_are():
    """All-ones weights skip the product: the sums are those of the predictions themselves."""
    img = np.arange(2 * 12 * 10, dtype=np.float64).reshape(2, 12, 10)
    sampler = GridSampler(img, (6, 4), overlap=(3, 2), channel_axis=0)
    agg = Aggregator(sampler, window="mean")
    assert agg._unit_weights and not Aggregator(sampler, window="hann")._unit_weights
    out = _blend_batches(sampler, agg, 3, lambda b: b)
    np.testing.assert_allclose(out, img, rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize("window", ["gaussian", "mean"])
@pytest.mark.parametrize("layout", ["channels-first", "channels-last", "no-channels"])
def test_torch_predictions_blend_bit_for_bit_as_numpy_ones(window, layout):
    """Float32 tensors are folded by torch's kernels: the same sums as numpy's, with padded edges too."""
    torch = pytest.importorskip("torch", reason="torch is not installed, so no tensor reaches the Aggregator's torch "
                                                "fold; run with pip install 'patchworks[torch]'")
    img = np.random.default_rng(2).random((23, 19, 21)).astype(np.float32)
    sampler = GridSampler(img, (8, 6, 7), overlap=(4, 3, 2), edge="pad")
    channel_last = layout == "channels-last"
    fn = {"channels-first": lambda b: np.stack([b, 2 * b], axis=1),
          "channels-last": lambda b: np.stack([b, 2 * b], axis=-1),
          "no-channels": lambda b: b}[layout]
    ref = _blend_batches(sampler, Aggregator(sampler, window=window, channel_last=channel_last), 3, fn)
    agg = Aggregator(sampler, window=window, channel_last=channel_last)
    with torch.inference_mode():
        out = _blend_batches(sampler, agg, 3, lambda b: torch.from_numpy(np.ascontiguousarray(fn(b))))
    assert agg._acc_t is None  # result() let go of the torch view
    np.testing.assert_array_equal(out, ref)
