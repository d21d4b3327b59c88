"""Same names, same meaning as upstream patchworks: tile_shape=None, scalar overlaps on thin stacks,
max_workers / stage_dir / keep_stage / dry_run / gpus, and resume refusals that say what changed."""

import numpy as np
import pytest
from scipy import ndimage

from patchworks import estimate_empty_tiles, label_components, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs


# ------------------------------------------------ a scalar overlap works on every image

def test_scalar_overlap_on_a_two_plane_stack_with_the_default_tile_shape():
    stack = random_blobs((2, 40, 40), seed=1)
    labels = tile_process(stack, threshold(0.5), overlap=8, compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])


def test_scalar_overlap_larger_than_a_whole_axis_tile():
    stack = random_blobs((4, 48, 48), seed=2)
    labels = tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=6, compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])
    labels = tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=6, stitch="iou", compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])
    # where the axis really has neighbours the overlap must stay below the tile
    with pytest.raises(ValueError, match=r"axis 1 overlap 16 is not smaller than the tile size 16"):
        tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=16)


def test_estimate_empty_tiles_with_a_z_tile_equal_to_the_z_size():
    img = np.zeros((3, 16, 16), np.float32)
    img[1, 2, 2] = 5   # in tile (0, 0, 0); its window reaches 4 voxels into the neighbours along y and x
    info = estimate_empty_tiles(img, tile_shape=(3, 8, 8), threshold=1, overlap=4)
    assert info["n_tiles"] == 4
    # direct loop: a tile is occupied when its window (core + 4 clipped) holds a voxel above 1
    want = np.zeros((1, 2, 2), bool)
    for j in range(2):
        for i in range(2):
            win = img[:, max(8 * j - 4, 0):8 * j + 12, max(8 * i - 4, 0):8 * i + 12]
            want[0, j, i] = win.max() > 1
    np.testing.assert_array_equal(info["occupied"], want)


# ------------------------------------------------ tile_shape=None: the input's own chunks

def test_tile_shape_none_means_the_zarr_chunks(tmp_path):
    import zarr
    image = random_blobs((16, 40, 48), seed=3)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(8, 16, 24))
    out = tile_process(str(src), threshold(0.5), write_to=tmp_path / "labels.zarr")
    assert zarr.open_array(tmp_path / "labels.zarr").chunks == (8, 16, 24)
    assert out.chunksize == (8, 16, 24)
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])


def test_tile_shape_none_means_the_dask_chunks_and_auto_without_chunks():
    import dask.array as da
    image = random_blobs((40, 36), seed=4)
    out = tile_process(da.from_array(image, chunks=(10, 12)), threshold(0.5))
    assert out.chunks == ((10,) * 4, (12,) * 3)
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])
    # numpy has no chunks: None is "auto"
    assert tile_process(image, threshold(0.5)).chunks == tile_process(image, threshold(0.5), tile_shape="auto").chunks


def test_auto_tile_shape_is_a_multiple_of_the_zarr_chunks(tmp_path, monkeypatch):
    import zarr
    image = random_blobs((32, 96, 96), seed=5)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(8, 24, 24))
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1")   # a 1 MiB allocation: tiles of a few chunks
    out = tile_process(str(src), threshold(0.5), tile_shape="auto", client=False)
    tile = out.chunksize
    assert tile != image.shape, "the budget cuts the image into tiles"
    assert all(t % c == 0 or t == s for t, c, s in zip(tile, (8, 24, 24), image.shape)), tile
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])


# ------------------------------------------------ a refused resume names what changed

def _interrupted(image, fn, out, monkeypatch, **kwargs):
    """Stage every tile with ``fn``, then fail before the merge: an unfinished run in ``out``."""
    import patchworks.labels._process as process

    def crash(*args, **kw):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(process, "plan_relabel", crash)
        with pytest.raises(RuntimeError, match="interrupted"):
            tile_process(image, fn, write_to=out, client=False, **kwargs)


def _closure_fn(level):
    def segment(tile):
        return label_components(tile > level, 1)
    return segment


def _segment(tile, level=0.5, *, connectivity=1):
    return label_components(tile > level, connectivity)


def _segment_at(level, tile):
    return label_components(tile > level, 1)


@pytest.mark.parametrize("first, second, match", [
    # a closure's captured value
    (_closure_fn(0.5), _closure_fn(0.7), r"fn: captured level was '0\.5', now '0\.7'"),
    # a partial's positional and keyword arguments
    (__import__("functools").partial(_segment, level=0.5), __import__("functools").partial(_segment, level=0.6),
     r"fn: keyword level was '0\.5', now '0\.6'"),
    (__import__("functools").partial(_segment_at, np.float64(0.5)), __import__("functools").partial(_segment_at, 0.25),
     r"fn: arg 0 was .*0\.5.*, now '0\.25'"),
    # the attributes of a callable dataclass (our Threshold)
    (threshold(0.5), threshold(0.75), r"fn: attribute value was '0\.5', now '0\.75'"),
    # another function altogether
    (threshold(0.5), _closure_fn(0.5), r"fn: name was 'patchworks\.segment\._threshold\.Threshold', now "),
])
def test_refused_resume_names_the_captured_value_that_changed(tmp_path, monkeypatch, first, second, match):
    image = random_blobs((32, 32), seed=6)
    out = tmp_path / "labels.zarr"
    _interrupted(image, first, out, monkeypatch, tile_shape=8)
    with pytest.raises(ValueError, match=r"has an unfinished run with other arguments \(.*" + match):
        tile_process(image, second, tile_shape=8, write_to=out, client=False)
    # the same function again resumes: nothing is refused, and the result is the whole-image labelling
    done = tile_process(image, first, tile_shape=8, write_to=out, client=False, compute=True, overwrite=False)
    assert_labels_equivalent(done, ndimage.label(image > 0.5)[0])


def test_refused_resume_names_changed_numpy_content(tmp_path, monkeypatch):
    image = random_blobs((32, 32), seed=7)
    out = tmp_path / "labels.zarr"
    _interrupted(image, threshold(0.5), out, monkeypatch, tile_shape=8)
    other = image.copy()
    other[0, 0] += 1   # same shape and dtype, other content
    with pytest.raises(ValueError, match=r"other arguments \(image content was '\w+', now '\w+'\)"):
        tile_process(other, threshold(0.5), tile_shape=8, write_to=out, client=False)
