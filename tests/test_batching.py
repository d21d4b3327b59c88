"""Batches of small tiles: the same labels as whole-image labelling, bounded tasks and bytes per task."""

import pickle

import cc3d
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table

import patchworks
import patchworks.labels._batch as batch
import patchworks.run._execute as execute
from patchworks import TileGrid, merge_tile_labels, read_table, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs

from _probes import relabel_task_arguments


@pytest.fixture
def small_batches(monkeypatch):
    """Batch tiny test images as the real size rule batches 32^2 tiles of a large one."""
    monkeypatch.setattr(batch, "MIN_BATCH_VOXELS", 256)
    monkeypatch.setattr(batch, "MIN_BATCHES", 2)


def whole(mask, connectivity):
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))


# -- the size rule -----------------------------------------------------------------------------------------

def test_batch_rule_small_tiles_grouped_large_tiles_alone_iou_alone():
    small = TileGrid((8192, 8192), 32)                     # 65,536 tiles of 32^2
    block = batch.batch_block(small)
    assert np.prod(block) * 32 * 32 >= batch.MIN_BATCH_VOXELS, "each task does at least a few ms of work"
    assert batch.batch_grid(small, block).n_tiles <= 256
    assert batch.batch_block(TileGrid((8192, 8192), 2048)) == (1, 1), "large tiles: one per task"
    assert batch.batch_block(small, "iou") == (1, 1)
    huge = TileGrid((10**6, 10**6), 128)                   # 6.1e7 tiles of 128^2
    assert batch.batch_grid(huge, batch.batch_block(huge)).n_tiles <= 2 * batch.MAX_TASKS


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3), st.data())
def test_batch_cores_partition_the_image_into_unions_of_tile_cores(shape, data):
    tile = tuple(data.draw(st.integers(1, s)) for s in shape)
    grid = TileGrid(tuple(shape), tile)
    block = tuple(data.draw(st.integers(1, g)) for g in grid.grid_shape)
    batches = batch.batch_grid(grid, block)
    cover = np.zeros(shape, np.int64)
    for b in range(batches.n_tiles):
        core = batches.tile(b).spatial_core
        cover[core] += 1
        members = [grid.tile(t) for t in batch.tiles_of(grid, block, batches.tile(b).index)]
        assert sum(np.prod(t.core_shape) for t in members) == np.prod(batches.tile(b).core_shape)
        for t in members:
            assert all(c.start <= s.start and s.stop <= c.stop for c, s in zip(core, t.spatial_core))
    assert (cover == 1).all()


# -- labels: the oracle is whole-image labelling ----------------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([2, 3]), st.integers(0, 2**16), st.data())
def test_touch_equals_whole_image_labelling(small_batches, ndim, seed, data):
    shape = tuple(data.draw(st.integers(8, 40 if ndim == 2 else 14)) for _ in range(ndim))
    tile = tuple(data.draw(st.integers(1, 6)) for _ in range(ndim))
    connectivity = data.draw(st.integers(1, ndim))
    image = random_blobs(shape, density=0.45, sigma=1.5, seed=seed)
    ref, n = whole(image > 0.5, connectivity)
    out, count = tile_process(image, threshold(0.5), tile_shape=tile, connectivity=connectivity, compute=True,
                              return_count=True, sequential_labels=data.draw(st.booleans()), progress=False)
    assert_labels_equivalent(out, ref)
    assert count == n


def test_many_tiny_tiles_in_3d_match_cc3d(small_batches):
    image = random_blobs((24, 30, 28), density=0.4, sigma=1.5, seed=5)
    assert batch.batch_block(TileGrid(image.shape, 3)) != (1, 1, 1)
    for connectivity, cc in ((1, 6), (2, 18), (3, 26)):
        out = tile_process(image, threshold(0.5), tile_shape=3, connectivity=connectivity, compute=True,
                           sequential_labels=True, progress=False)
        ref = cc3d.connected_components(image > 0.5, connectivity=cc)
        assert_labels_equivalent(out, ref)
        assert out.max() == ref.max(), "sequential: 1..n"


def test_skip_empty_table_and_pyramid(small_batches, tmp_path):
    image = np.zeros((64, 80))
    image[8:40, 8:40] = random_blobs((32, 32), density=0.5, sigma=1.5, seed=2)
    image[50:60, 60:78] = 1.0                               # one object across several tiles
    out = tmp_path / "l.zarr"
    labels = tile_process(image, threshold(0.5), tile_shape=4, skip_empty=True, empty_threshold=0.0,
                          write_to=out, pyramid_levels=3, progress=False)
    ref, _ = whole(image > 0.5, 1)
    level0 = np.asarray(labels)
    assert_labels_equivalent(level0, ref)
    group = zarr.open_group(str(out), mode="r")
    record = group.attrs["patchworks"]
    assert record["n_skipped"] > 0 and record["tiles_per_task"] != [1, 1]
    for k in range(3):
        np.testing.assert_array_equal(group[str(k)][...], level0[::2 ** k, ::2 ** k])
    table = read_table(out)
    props = regionprops_table(level0, image, properties=("label", "area", "bbox", "intensity_mean"))
    assert table.index.tolist() == props["label"].tolist()
    np.testing.assert_array_equal(table["area"], props["area"])
    np.testing.assert_allclose(table["intensity_mean"], props["intensity_mean"], rtol=1e-10)


def test_iou_keeps_one_tile_per_task_and_its_labels(small_batches):
    image = random_blobs((48, 48), density=0.4, sigma=2, seed=9)
    grid = TileGrid(image.shape, 8, overlap=3)
    assert batch.batch_block(grid, "iou") == (1, 1)
    out = tile_process(image, threshold(0.5), tile_shape=8, overlap=3, stitch="iou", compute=True,
                       progress=False)
    ref, _ = whole(image > 0.5, 1)
    assert_labels_equivalent(out, ref)  # blobs that do not touch each other: IoU joins what touch joins


def test_dask_input_and_merge_tile_labels(small_batches):
    image = random_blobs((40, 44), density=0.45, sigma=1.5, seed=4)
    ref, n = whole(image > 0.5, 2)
    lazy = da.from_array(image, chunks=4)
    out = tile_process(lazy, threshold(0.5), tile_shape=4, connectivity=2, compute=True, progress=False)
    assert_labels_equivalent(out, ref)
    per_tile = da.from_array(image > 0.5, chunks=4).map_blocks(
        lambda b: ndimage.label(b)[0].astype(np.uint32), dtype=np.uint32)
    merged, count = merge_tile_labels(per_tile, connectivity=1, compute=True, return_count=True)
    ref1, n1 = whole(image > 0.5, 1)
    assert_labels_equivalent(merged, ref1)
    assert count == n1


def test_progress_counts_tiles_not_tasks(small_batches, capsys):
    image = random_blobs((32, 32), seed=1)
    tile_process(image, threshold(0.5), tile_shape=2, progress=True, compute=True)
    err = capsys.readouterr().err
    assert "256/256" in err, "the staging bar counts every tile of its batches"


# -- what the driver sends a relabel task -------------------------------------------------------------------

def test_bytes_sent_per_relabel_task_stay_bounded(monkeypatch):
    monkeypatch.setattr(batch, "MIN_BATCH_VOXELS", 16 * 16)   # 16 tiles per batch at both sizes
    monkeypatch.setattr(execute, "MIN_GROUP_VOXELS", 1)       # one batch per task (groups: test_task_groups.py)
    small = relabel_task_arguments(monkeypatch, 24)     # 576 tiles
    large = relabel_task_arguments(monkeypatch, 80)     # 6,400 tiles
    assert len(large) > 5 * len(small)
    size = lambda args: max(len(pickle.dumps(a)) for a in args)  # noqa: E731
    assert size(large) < 1.5 * size(small), "a task gets its own batch's plan pieces, not the run's"


def test_the_graph_stays_bounded_as_tiles_grow():
    tasks = [batch.batch_grid(g, batch.batch_block(g)).n_tiles
             for g in (TileGrid((2**13, 2**13), 32), TileGrid((2**15, 2**15), 32), TileGrid((2**17, 2**17), 32))]
    assert tasks[-1] <= 2 * batch.MAX_TASKS and tasks == sorted(tasks)



def test_channels_and_halo_come_whole_into_each_tile_of_a_batch(small_batches, tmp_path):
    rng = np.random.default_rng(7)
    mask = random_blobs((36, 40), density=0.4, sigma=1.5, seed=7) > 0.5
    image = np.stack([mask + rng.random(mask.shape) * mask, rng.random(mask.shape)])
    seen = []

    def fn(window):
        seen.append(window.shape)
        return patchworks.label_components(window[0] > 0.5)

    out = tmp_path / "c.zarr"
    labels = tile_process(image, fn, tile_shape=4, overlap=1, channel_axis=0, write_to=out, progress=False)
    assert len(seen) == 90 and all(s[0] == 2 for s in seen), "fn once per tile, channels carried whole"
    assert max(s[1:] for s in seen) == (6, 6), "each tile still gets its own halo"
    level0 = np.asarray(labels)
    assert_labels_equivalent(level0, whole(mask, 1)[0])
    props = regionprops_table(level0, np.moveaxis(image, 0, -1), properties=("label", "intensity_mean"))
    np.testing.assert_allclose(read_table(out)["intensity_mean-1"], props["intensity_mean-1"], rtol=1e-10)
