"""tile_map's fixed-size windows (shift / pad), batches, channels from the first result, torch in and out."""

import threading

import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st

from patchworks import TileGrid, make_window, tile_map


def monai_starts(size, roi, step):
    """MONAI's window origins on one axis (dense_patch_slices): regular steps, the last one shifted inward."""
    n = -(-(size - roi) // step) + 1 if size > roi else 1
    return [min(i * step, size - roi) for i in range(n)]


def loop_oracle(image, fn, starts, roi, window, channels=None, pad=None):
    """Direct loop over full windows in raster order: acc += w * fn(window), wsum += w, divided."""
    w = make_window(window, roi)
    padded = image if pad is None else np.pad(image, pad)
    off = (0,) * image.ndim if pad is None else tuple(b for b, _ in pad)
    lead = () if channels is None else (channels,)
    acc = np.zeros(lead + padded.shape, np.float32)
    wsum = np.zeros(padded.shape, np.float32)
    for origin in np.ndindex(*(len(s) for s in starts)):
        sl = tuple(slice(s[i] + o, s[i] + o + r) for s, i, o, r in zip(starts, origin, off, roi))
        acc[(Ellipsis, *sl)] += np.asarray(fn(padded[sl]), np.float32) * w
        wsum[sl] += w
    inner = tuple(slice(o, o + n) for o, n in zip(off, image.shape))
    acc, wsum = acc[(Ellipsis, *inner)], wsum[inner]
    return acc / wsum


def affine(w):
    return w * 1.5 - 0.25


def test_monai_geometry_five_windows_per_axis_of_the_full_size():
    shapes, lock = [], threading.Lock()

    def fn(w):
        with lock:
            shapes.append(w.shape)
        return w

    image = np.random.default_rng(0).random((192, 192), dtype=np.float32)
    out = tile_map(image, fn, patch_size=64, overlap=0.5, window="gaussian", compute=True, client=False)
    assert len(shapes) == 25 and set(shapes) == {(64, 64)}
    starts = [monai_starts(192, 64, 32)] * 2
    assert starts[0] == [0, 32, 64, 96, 128]
    np.testing.assert_array_equal(out, loop_oracle(image, lambda w: w, starts, (64, 64), "gaussian"))
    # the same windows from the core + halo spelling
    np.testing.assert_array_equal(tile_map(image, fn, tile_shape=32, overlap=16, edge="shift", compute=True), out)


@settings(max_examples=20, deadline=None)
@given(st.tuples(st.integers(5, 30), st.integers(5, 30)), st.integers(2, 5), st.integers(0, 3),
       st.sampled_from(["mean", "hann", "gaussian"]))
def test_shift_equals_a_direct_loop_over_monai_windows_bit_for_bit(shape, roi, overlap, window):
    overlap = min(overlap, roi - 1)
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    out = tile_map(image, affine, patch_size=roi, overlap=overlap, window=window, compute=True, client=False)
    starts = [monai_starts(n, roi, roi - overlap) for n in shape]
    np.testing.assert_array_equal(out, loop_oracle(image, affine, starts, (roi, roi), window))
    np.testing.assert_allclose(out, affine(image), rtol=1e-5, atol=1e-5)


def test_pad_windows_are_full_size_and_equal_np_pad_then_loop():
    image = np.random.default_rng(1).random((21, 17), dtype=np.float32)
    seen = set()
    out = tile_map(image, lambda w: seen.add(w.shape) or affine(w), patch_size=8, overlap=4, edge="pad",
                   window="hann", compute=True, client=False)
    assert seen == {(8, 8)}
    grid = TileGrid.for_patches(image.shape, 8, overlap=4, edge="pad")
    lo = [-int(a[0]) for a in grid.patch_starts]
    hi = [int(a[-1]) + 8 - n for a, n in zip(grid.patch_starts, image.shape)]
    expected = loop_oracle(image, affine, [list(a) for a in grid.patch_starts], (8, 8), "hann",
                           pad=list(zip(lo, hi)))
    np.testing.assert_array_equal(out, expected)


def test_batches_give_the_same_map_with_fewer_calls():
    image = np.random.default_rng(2).random((40, 36), dtype=np.float32)
    batches, lock = [], threading.Lock()

    def batch_fn(b):
        with lock:
            batches.append(b.shape)
        return np.stack([b, 1 - b], axis=1)  # (B, 2, *window)

    kw = dict(patch_size=16, overlap=8, window="gaussian", compute=True, client=False)
    one = tile_map(image, lambda w: np.stack([w, 1 - w]), **kw)
    batched = tile_map(image, batch_fn, batch_size=3, **kw)
    n = len(monai_starts(40, 16, 8)) * len(monai_starts(36, 16, 8))
    sizes = sorted(shape[0] for shape in batches)  # batches run on threads: any order
    assert len(batches) == -(-n // 3) and all(shape[1:] == (16, 16) for shape in batches)
    assert sizes == sorted([3] * (len(batches) - 1) + [n - 3 * (len(batches) - 1)])
    np.testing.assert_array_equal(batched, one)


def test_streamed_and_crop_fixed_windows(tmp_path):
    image = np.random.default_rng(3).random((2, 30, 26), dtype=np.float32)
    kw = dict(patch_size=10, overlap=4, channel_axis=0, client=False)
    mem = tile_map(image, affine, window="gaussian", compute=True, **kw)
    streamed = tile_map(image, affine, window="gaussian", write_to=tmp_path / "g.zarr", memory_budget=1, **kw)
    np.testing.assert_array_equal(streamed.compute(), mem)
    for target in (None, tmp_path / "c.zarr"):  # crop: each voxel from the window whose core owns it
        out = tile_map(image, lambda w: w, window="crop", out_dtype="float32", write_to=target, compute=True, **kw)
        np.testing.assert_array_equal(out, image)


def test_channels_are_taken_from_the_first_result(tmp_path):
    image = np.random.default_rng(4).integers(0, 1000, (3, 20, 18)).astype(np.uint16)
    out = tile_map(image, lambda w: w, channel_axis=0, window="crop", tile_shape=8, overlap=2, out_dtype="uint16",
                   compute=True, client=False)
    np.testing.assert_array_equal(out, image)
    blended = tile_map(image.astype(np.float32), lambda w: w, channel_axis=0, tile_shape=8, overlap=2,
                       write_to=tmp_path / "o.zarr", client=False)
    assert blended.shape == image.shape
    np.testing.assert_allclose(blended.compute(), image, rtol=1e-6)
    assert tile_map(image[0], lambda w: w, tile_shape=8, compute=True).shape == (20, 18)  # none: no channel axis


def test_errors_name_parameter_value_and_fix():
    image = np.zeros((20, 20), np.float32)
    with pytest.raises(ValueError, match=r"batch_size=2 needs windows of one size, but edge='clip'"):
        tile_map(image, lambda b: b, tile_shape=5, overlap=1, batch_size=2)
    with pytest.raises(ValueError, match=r"tile_shape=5 and patch_size=8 were both given"):
        tile_map(image, lambda w: w, tile_shape=5, patch_size=8)
    with pytest.raises(ValueError, match=r"overlap=1.5: a fraction of the window must be in \[0, 1\)"):
        tile_map(image, lambda w: w, patch_size=8, overlap=1.5)
    with pytest.raises(ValueError, match=r"axis 0 overlap 8 must be >= 0 and smaller than the patch size 8"):
        tile_map(image, lambda w: w, patch_size=8, overlap=8)
    with pytest.raises(ValueError, match=r"edge='wrap' is unknown; use one of 'clip', 'shift', 'pad'"):
        tile_map(image, lambda w: w, patch_size=8, edge="wrap")
    with pytest.raises(ValueError, match=r"edge='clip' clips windows .* use edge='shift'"):
        tile_map(image, lambda w: w, patch_size=8, edge="clip")
    with pytest.raises(ValueError, match=r"batch_size=0: use None"):
        tile_map(image, lambda w: w, patch_size=8, batch_size=0)
    with pytest.raises(ValueError, match=r"fn returned \(3, 8, 8\) for a batch of 4 windows"):
        tile_map(image, lambda b: b[:3], patch_size=8, overlap=4, batch_size=4)
    with pytest.raises(ValueError, match=r"pad_mode='nearest' is not supported"):
        tile_map(image, lambda w: w, patch_size=8, edge="pad", pad_mode="nearest")


def test_torch_tensor_in_and_a_torch_network_called_as_monai_calls_it():
    torch = pytest.importorskip("torch")

    class Repeat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def forward(self, x):
            self.shapes.append(tuple(x.shape))
            return x.repeat(1, 2, 1, 1) * torch.tensor([1.0, 2.0])[None, :, None, None]

    image = np.random.default_rng(5).random((24, 20), dtype=np.float32)
    net = Repeat()
    out = tile_map(torch.from_numpy(image), net, patch_size=8, overlap=0.5, batch_size=4, compute=True,
                   client=False)
    assert net.shapes[0] == (4, 1, 8, 8)  # (B, C, *window) as MONAI's predictor gets it
    expected = tile_map(image, lambda w: np.stack([w, 2 * w]), patch_size=8, overlap=4, compute=True, client=False)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(out[1], 2 * image, rtol=1e-5)


def test_against_monai_sliding_window_inference():
    torch = pytest.importorskip("torch")
    monai_inferers = pytest.importorskip("monai.inferers")
    image = np.random.default_rng(6).random((48, 40, 36), dtype=np.float32)

    def net(x):
        return torch.cat([x, x * x], dim=1)

    for mode, window in (("gaussian", "gaussian"), ("constant", "mean")):
        with torch.inference_mode():
            ref = monai_inferers.sliding_window_inference(torch.from_numpy(image)[None, None], (16, 16, 16), 4, net,
                                                          overlap=0.5, mode=mode, sigma_scale=0.125)[0].numpy()
        ours = tile_map(image, lambda w: np.stack([w, w * w]), patch_size=16, overlap=0.5, window=window,
                        compute=True, client=False)
        np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-6)


def test_overlapping_windows_decode_each_input_chunk_once(tmp_path):
    from patchworks import open_image
    from patchworks.dense._input import ChunkCache

    image = np.random.default_rng(7).random((40, 36), dtype=np.float32)
    zarr.create_array(store=tmp_path / "in.zarr", data=image, chunks=(8, 8))
    source = open_image(str(tmp_path / "in.zarr"))
    cache = ChunkCache(source, source.chunks, budget=1 << 20)
    grid = TileGrid.for_patches(image.shape, 16, overlap=8)
    for tile in grid:
        np.testing.assert_array_equal(cache.read(tile.window), image[tile.window])
    assert cache.reads == 5 * 5, "every chunk decoded once although each window overlaps its neighbours by half"
    small = ChunkCache(source, source.chunks, budget=1)  # a front that does not fit: re-read, never hoarded
    for tile in grid:
        np.testing.assert_array_equal(small.read(tile.window), image[tile.window])
    assert small.reads > 25 and len(small._lru) == 1
    out = tile_map(str(tmp_path / "in.zarr"), affine, patch_size=16, overlap=8, compute=True, client=False)
    np.testing.assert_array_equal(out, tile_map(image, affine, patch_size=16, overlap=8, compute=True, client=False))
