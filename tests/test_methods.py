"""Built-in tile functions: threshold and otsu, labelled with cc3d."""

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.filters import threshold_otsu

from patchworks import label_components, otsu, otsu_threshold, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**16), st.sampled_from([0.3, 0.5, 0.7]), st.data())
def test_label_components_matches_scipy(ndim, seed, density, data):
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    connectivity = data.draw(st.integers(1, ndim))
    mask = np.random.default_rng(seed).random(shape) < density
    expected, _ = ndimage.label(mask, ndimage.generate_binary_structure(ndim, connectivity))
    got = label_components(mask, connectivity)
    assert got.dtype == np.uint32
    assert_labels_equivalent(got, expected)


def test_cc3d_bool_regression_2d_8_connectivity():
    # cc3d 4.1 labels stray background pixels on this bool input; our wrapper must not
    mask = random_blobs((100, 77), seed=2)[16:32, 39:52] > 0.5
    assert np.array_equal(label_components(mask, 2) != 0, mask)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 3, 1), (3, 1, 1), (2, 2, 2), (3, 3), (1, 4)])
def test_every_tiny_mask_is_labelled_as_scipy_labels_it(shape):
    """Degenerate tiles (a 1-thick window, a corner block): cc3d's binary mode raised on (1, 1, 3) [1, 0, 1]
    with 26-connectivity, so every mask of these shapes is checked against scipy at every connectivity."""
    n = int(np.prod(shape))
    for bits in range(2 ** n):
        mask = ((bits >> np.arange(n)) & 1).astype(bool).reshape(shape)
        for connectivity in range(1, len(shape) + 1):
            expected, _ = ndimage.label(mask, ndimage.generate_binary_structure(len(shape), connectivity))
            assert_labels_equivalent(label_components(mask, connectivity), expected)


def test_otsu_threshold_agrees_with_scikit_image():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(10, 2, 5000), rng.normal(30, 4, 3000)]
    assert otsu_threshold(values) == pytest.approx(threshold_otsu(values), abs=1e-9)
    ints = rng.integers(0, 4000, 10000).astype(np.uint16)
    assert otsu_threshold(ints) == pytest.approx(threshold_otsu(ints), rel=1e-6)
    assert otsu_threshold(np.full(10, 3.0)) == 3.0
    with pytest.raises(ValueError, match="empty sample"):
        otsu_threshold(np.array([]))


def test_otsu_is_estimated_once_for_the_whole_image_so_tiles_agree(tmp_path):
    # left half dim, right half bright: a per-tile Otsu would cut each half differently
    rng = np.random.default_rng(1)
    image = rng.normal(100, 5, (64, 64)).astype(np.float32)
    image[:, 32:] += 50
    image[10:20, 5:60] += 200
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(16, 16))
    fn = otsu(str(src))
    assert fn.method == "otsu"
    # same split of the voxels as scikit-image (the value itself sits mid-gap, not at its lower end)
    assert np.array_equal(image > fn.value, image > threshold_otsu(image))
    out = tile_process(str(src), fn, tile_shape=16, compute=True)
    assert_labels_equivalent(out, ndimage.label(image > fn.value)[0])


def test_otsu_samples_large_images_without_reading_them_whole():
    big = random_blobs((256, 256), seed=3)
    reads = []

    class Counting:
        shape, dtype, ndim = big.shape, big.dtype, big.ndim

        def __getitem__(self, key):
            out = big[key]
            reads.append(out.size)
            return out

    from patchworks.segment._threshold import sample_values
    sample = sample_values(Counting(), n_voxels=4096, n_blocks=16)
    assert sum(reads) == sample.size <= 4096 and len(reads) == 16


def test_threshold_rejects_non_finite_and_follows_merge_connectivity():
    with pytest.raises(ValueError, match="threshold=nan: give a finite number"):
        threshold(float("nan"))
    mask = np.zeros((8, 8))
    mask[3, 3] = mask[4, 4] = 1
    out = tile_process(mask, threshold(0.5), tile_shape=4, connectivity=2, compute=True)
    assert len(np.unique(out)) == 2  # the built-in took connectivity 2 from tile_process


def test_builtins_refuse_images_with_channels(tmp_path):
    import tifffile
    path = tmp_path / "multi.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint8), metadata={"axes": "CYX"}, ome=True)
    with pytest.raises(ValueError, match="channel axis .* choose a channel with channel=N"):
        otsu(str(path))
    assert otsu(str(path), channel=1).value == 0.0
    with pytest.raises(ValueError, match="threshold: image has a channel axis .* choose a channel with channel=N"):
        threshold(str(path), value=0.5)  # the image first, as for otsu: checked before any tile runs
    assert threshold(str(path), value=0.5, channel=0) == threshold(0.5)
    with pytest.raises(ValueError, match="fn=threshold labels a single-channel image .* channel=N"):
        tile_process(np.zeros((2, 8, 8)), threshold(0.5), tile_shape=4, channel_axis=0)


def test_threshold_labels_are_gap_free_and_staged_without_a_count(monkeypatch):
    # threshold declares its ids 1..n without gaps; the tiled result is the same with and without trusting it
    import patchworks.labels._tile_task as tile_task

    image = random_blobs((96, 80), density=0.4, seed=5)
    fn = threshold(0.5)
    assert fn.gap_free
    labels = fn(image)
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))
    for tile_shape in (32, (16, 80)):      # one tile per task, and batches of small tiles
        trusted = tile_process(image, fn, tile_shape=tile_shape, compute=True, sequential_labels=True)
        monkeypatch.setattr(tile_task, "gap_free", lambda *a: False)
        monkeypatch.setattr("patchworks.labels._batch.gap_free", lambda *a: False)
        counted = tile_process(image, fn, tile_shape=tile_shape, compute=True, sequential_labels=True)
        monkeypatch.undo()
        np.testing.assert_array_equal(trusted, counted)
        assert_labels_equivalent(trusted, ndimage.label(image > 0.5)[0])
