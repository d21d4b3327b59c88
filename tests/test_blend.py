"""Dense tile processing (``tile_map`` / ``tile_blend``) against plain numpy oracles."""

import gc
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
import zarr
from hypothesis import given, settings, strategies as st

from patchworks import TileGrid, make_window, tile_blend, tile_map

WINDOWS = ["mean", "hann", "gaussian"]


def reference(image, fn, tile_shape, overlap, window, out_channels=None, channel_axis=None):
    """Whole-output numpy accumulation over the tiles in raster order (the oracle)."""
    grid = TileGrid(image.shape, tile_shape, overlap, channel_axis=channel_axis)
    full = tuple(t + 2 * h for t, h in zip(grid.tile_shape, grid.overlap))
    w = window if isinstance(window, np.ndarray) else make_window(window, full)
    lead = () if out_channels is None else (out_channels,)
    acc = np.zeros(lead + grid.spatial_shape, np.float32)
    wsum = np.zeros(grid.spatial_shape, np.float32)
    for tile in grid:
        pred = np.asarray(fn(image[tile.window]), np.float32)
        tw = w[tuple(slice(s.start - c.start + h, s.stop - c.start + h)
                     for s, c, h in zip(tile.spatial_window, tile.spatial_core, grid.overlap))]
        acc[(Ellipsis, *tile.spatial_window)] += pred * tw
        wsum[tile.spatial_window] += tw
    return acc / wsum


def affine(w):
    return w * 1.5 - 0.25


geometry = st.tuples(st.integers(1, 23), st.integers(1, 19)).flatmap(
    lambda shape: st.tuples(st.just(shape),
                            st.tuples(st.integers(2, max(2, shape[0])), st.integers(2, max(2, shape[1])))).flatmap(
        lambda st_: st.tuples(st.just(st_[0]), st.just(st_[1]),
                              st.tuples(st.integers(0, min(st_[1][0], st_[0][0]) - 1 if min(st_[1][0], st_[0][0]) > 1 else 0),
                                        st.integers(0, min(st_[1][1], st_[0][1]) - 1 if min(st_[1][1], st_[0][1]) > 1 else 0)))))


@settings(max_examples=25, deadline=None)
@given(geometry, st.sampled_from(WINDOWS))
def test_blend_equals_numpy_accumulation_bit_for_bit(geom, window):
    shape, tile, overlap = geom
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    out = tile_map(image, affine, tile_shape=tile, overlap=overlap, window=window, compute=True, client=False)
    if any(TileGrid(shape, tile, overlap).overlap):
        np.testing.assert_array_equal(out, reference(image, affine, tile, overlap, window))
    np.testing.assert_allclose(out, affine(image), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(geometry)
def test_crop_identity_is_bit_for_bit(geom):
    shape, tile, overlap = geom
    image = np.random.default_rng(7).random(shape)  # float64 in, float64 out
    out = tile_map(image, lambda w: w, tile_shape=tile, overlap=overlap, window="crop", out_dtype="float64",
                   compute=True, client=False)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, image)


def test_crop_identity_with_channels_and_odd_halo():
    image = np.random.default_rng(1).integers(0, 60000, (3, 13, 11, 9), dtype=np.uint16)  # c z y x
    out = tile_map(image, lambda w: w, tile_shape=(4, 5, 3), overlap=(3, 1, 2), window="crop", channel_axis=0,
                   out_channels=3, out_dtype="uint16", compute=True, client=False)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("window", WINDOWS)
def test_identity_with_channels_within_float32_tolerance(window):
    image = np.random.default_rng(2).random((2, 17, 14), dtype=np.float32)
    out = tile_map(image, lambda w: w, tile_shape=(6, 5), overlap=(3, 1), window=window, channel_axis=0,
                   out_channels=2, compute=True, client=False)
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out, reference(image, lambda w: w, (6, 5), (3, 1), window, 2, channel_axis=0))


@pytest.mark.parametrize("window", WINDOWS + ["user"])
def test_constant_comes_back_constant_everywhere(window):
    if window == "user":
        window = np.random.default_rng(3).uniform(0.01, 5, (7 + 6, 8 + 4, 5 + 2)).astype(np.float32)
    image = np.full((19, 21, 12), 7.25, np.float32)
    out = tile_map(image, lambda w: w, tile_shape=(7, 8, 5), overlap=(3, 2, 1), window=window, compute=True,
                   client=False)
    np.testing.assert_allclose(out, 7.25, rtol=2e-7)
    for corner in [(0, 0, 0), (-1, -1, -1), (0, -1, 0), (-1, 0, -1)]:
        assert abs(out[corner] - 7.25) <= 7.25 * 2e-7


def test_fn_runs_once_per_tile_and_blends_float32():
    calls, lock = [], threading.Lock()

    def fn(w):
        with lock:
            calls.append(w.shape)
        return w.astype(np.float64)  # any real dtype: accumulation is float32

    image = np.random.default_rng(4).random((20, 18))
    out = tile_map(image, fn, tile_shape=(6, 7), overlap=(2, 3), window="gaussian", compute=True)
    assert len(calls) == TileGrid(image.shape, (6, 7)).n_tiles == 12
    assert out.dtype == np.float32


def test_streaming_equals_in_memory_and_is_independent_of_tile_order(tmp_path):
    image = np.random.default_rng(5).random((33, 29), dtype=np.float32)

    def shuffled(w):  # random delays: tiles finish in a different order on every run
        time.sleep(random.random() * 0.004)
        return np.stack([np.sin(w), w * w])

    kw = dict(tile_shape=(8, 7), overlap=(3, 2), window="hann", out_channels=2)
    lazy = tile_map(image, shuffled, write_to=tmp_path / "a.zarr", **kw)
    assert isinstance(lazy, da.Array) and lazy.chunksize == (2, 8, 7)
    stored = zarr.open_array(tmp_path / "a.zarr")
    assert stored.chunks == (2, 8, 7) and stored.attrs["patchworks"]["complete"] is True
    with dask.config.set(scheduler="synchronous"):
        in_memory = tile_map(image, shuffled, compute=True, **kw)
    again = tile_map(image, shuffled, write_to=tmp_path / "b.zarr", **kw).compute()
    np.testing.assert_array_equal(lazy.compute(), in_memory)
    np.testing.assert_array_equal(again, in_memory)
    np.testing.assert_array_equal(in_memory, reference(image, shuffled, (8, 7), (3, 2), "hann", 2))


def test_blockwise_argmax_equals_argmax_of_whole_map():
    image = np.random.default_rng(6).random((26, 23), dtype=np.float32)

    def probs(w):
        return np.stack([w, np.roll(w, 1, 0), 1 - w])

    kw = dict(tile_shape=(7, 6), overlap=(3, 2), window="gaussian", out_channels=3, client=False)
    labels = tile_map(image, probs, finalize=lambda p: p.argmax(0), out_dtype="uint8", compute=True, **kw)
    whole = tile_map(image, probs, compute=True, **kw)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, whole.argmax(0))


def test_inputs_dask_and_zarr_path(tmp_path):
    image = np.random.default_rng(8).random((16, 15), dtype=np.float32)
    zarr.create_array(store=tmp_path / "in.zarr", data=image, chunks=(5, 5))
    kw = dict(tile_shape=5, overlap=2, window="mean", compute=True, client=False)
    expected = tile_map(image, affine, **kw)
    np.testing.assert_array_equal(tile_map(str(tmp_path / "in.zarr"), affine, **kw), expected)
    np.testing.assert_array_equal(tile_map(da.from_array(image, chunks=4), affine, **kw), expected)


def test_integer_out_dtype_saturates():
    image = np.linspace(-10, 300, 40, dtype=np.float32).reshape(5, 8)
    out = tile_map(image, lambda w: w, tile_shape=4, overlap=1, window="mean", out_dtype="uint8", compute=True)
    np.testing.assert_array_equal(out, np.clip(np.rint(image), 0, 255).astype(np.uint8))


def test_errors_name_parameter_value_and_fix(tmp_path):
    image = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match=r"window='box' is unknown; use one of 'crop', 'mean'"):
        tile_map(image, lambda w: w, tile_shape=5, overlap=1, window="box")
    with pytest.raises(ValueError, match=r"window array has shape \(5, 5\); expected the full window shape \(7, 7\)"):
        tile_map(image, lambda w: w, tile_shape=5, overlap=1, window=np.ones((5, 5)))
    with pytest.raises(ValueError, match="weights <= 0"):
        tile_map(image, lambda w: w, tile_shape=5, overlap=1, window=np.zeros((7, 7)))
    with pytest.raises(ValueError, match=r"overlap=\(5, 5\): axis 0 overlap 5 is not smaller than the tile size 5"):
        tile_map(image, lambda w: w, tile_shape=5, overlap=5)
    with pytest.raises(ValueError, match=r"returned shape \(2, 6, 6\) for tile \(\d, \d\) \(window \[\d:\d+, \d:\d+\]\); "
                                         r"expected \(3, 6, 6\); it has 2 channels but out_channels=3"):
        tile_map(image, lambda w: np.stack([w, w]), tile_shape=5, overlap=1, out_channels=3)
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)  # the first window alone holds 0: 2 channels, then 3
    with pytest.raises(ValueError, match=r"returned shape \(3, 6, 6\) for tile \(\d, \d\) .*expected \(2, 6, 6\); it has 3 "
                                         r"channels but out_channels=2 \(taken from the first window's result\)"):
        tile_map(ramp, lambda w: np.stack([w] * (2 if w.min() == 0 else 3)), tile_shape=5, overlap=1, client=False)
    with pytest.raises(ValueError, match=r"returned shape \(3, 3\) for tile \(\d, \d\) \(window \[\d+:\d+, \d+:\d+\]\); expected \(6, 6\)"):
        tile_map(image, lambda w: w[:3, :3], tile_shape=5, overlap=1, window="crop")
    with pytest.raises(TypeError, match="returned list for tile"):
        tile_map(image, lambda w: [1], tile_shape=5, overlap=1)
    with pytest.raises(ValueError, match="out_channels=0"):
        tile_map(image, lambda w: w, tile_shape=5, out_channels=0)
    with pytest.raises(TypeError, match="fn=3 is not callable"):
        tile_map(image, 3, tile_shape=5)
    (tmp_path / "out.zarr").mkdir()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        tile_map(image, lambda w: w, tile_shape=5, write_to=tmp_path / "out.zarr")
    tile_map(image, lambda w: w, tile_shape=5, write_to=tmp_path / "out.zarr", overwrite=True)


def test_failed_run_leaves_no_output(tmp_path):
    def boom(w):
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        tile_map(np.zeros((8, 8)), boom, tile_shape=4, overlap=1, write_to=tmp_path / "o.zarr", client=False)
    assert not (tmp_path / "o.zarr").exists()


def test_tile_blend_is_tile_map():
    assert tile_blend is tile_map


def _peak_rss_during(job):
    proc = psutil.Process()
    peak, stop = [proc.memory_info().rss], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    gc.collect()
    base = proc.memory_info().rss
    thread.start()
    try:
        job()
    finally:
        stop.set()
        thread.join()
    return (max(peak) - base) / 2**20


def test_memory_stays_bounded_below_the_output_size(tmp_path):
    # 4096^2 x 2 channels float32 = 128 MiB of output; the run must stay far below holding it
    image = np.broadcast_to(np.float32(1.5), (4096, 4096))  # a 4-byte view: the input costs nothing
    budget_mb = 48
    grown = _peak_rss_during(lambda: tile_map(image, lambda w: np.stack([w, w + 1]), tile_shape=256, overlap=32,
                                              window="gaussian", out_channels=2, write_to=tmp_path / "big.zarr",
                                              client=False))
    out = zarr.open_array(tmp_path / "big.zarr")
    assert out.nbytes / 2**20 == 128 > 2 * budget_mb
    assert grown < budget_mb, f"peak RSS grew by {grown:.0f} MiB (budget {budget_mb} MiB)"
    np.testing.assert_allclose(out[:, ::511, ::509], np.array([1.5, 2.5])[:, None, None] + np.zeros((2, 9, 9)),
                               rtol=1e-6)


def _two_channel(w):  # module level: pickled to the cluster's worker processes
    return np.stack([w * 2, w - 1])


def test_two_process_cluster_is_identical_to_threads(tmp_path):
    from distributed import Client, LocalCluster

    image = np.random.default_rng(9).random((24, 22), dtype=np.float32)
    zarr.create_array(store=tmp_path / "in.zarr", data=image, chunks=(8, 8))
    kw = dict(tile_shape=(8, 7), overlap=(3, 2), window="gaussian", out_channels=2)
    threads = tile_map(str(tmp_path / "in.zarr"), _two_channel, client=False, compute=True, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_cluster = tile_map(str(tmp_path / "in.zarr"), _two_channel, client=client,
                              write_to=tmp_path / "out.zarr", **kw)
        from_numpy = tile_map(image, _two_channel, client=client, compute=True, **kw)
    np.testing.assert_array_equal(on_cluster.compute(scheduler="threads"), threads)
    np.testing.assert_array_equal(from_numpy, threads)


def test_benchmark_smoke():
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_blend.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bench.parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for window in ("crop", "mean", "hann", "gaussian", "numpy"):
        assert window in proc.stdout
    assert "MISMATCH" not in proc.stdout


def test_accumulators_beyond_the_budget_spill_to_disk_and_change_nothing(tmp_path, monkeypatch):
    """3-D: the slab of blocks waiting for tiles (8x8 blocks of 16^3) is far above a 64 KiB budget."""
    import patchworks.dense._tile_map as blend_module
    from patchworks.dense._spill import SpillingAccumulators

    stores = []

    class Recording(SpillingAccumulators):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            stores.append(self)

    image = np.random.default_rng(3).random((48, 128, 128), dtype=np.float32)
    kw = dict(tile_shape=16, overlap=4, window="gaussian", client=False, compute=True)
    unlimited = tile_map(image, lambda w: w * 3, **kw)
    monkeypatch.setattr(blend_module, "SpillingAccumulators", Recording)
    budget = 64 * 2**10
    # streamed to zarr (compute=True alone accumulates in the output array itself: nothing to spill)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spilled = tile_map(image, lambda w: w * 3, memory_budget=budget, scratch_dir=scratch,
                       write_to=tmp_path / "out.zarr", **kw)
    np.testing.assert_array_equal(spilled, unlimited)
    store = stores[-1]
    block = 16 ** 3 * 4
    assert store.n_spilled > 0
    assert store.peak_bytes <= budget + block, "in memory: never more than the budget and one block"
    assert list(scratch.iterdir()) == [], "spill files removed"
    np.testing.assert_allclose(spilled, image * 3, rtol=1e-5)
