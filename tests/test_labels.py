"""Exactness of tiled labelling against whole-image scipy.ndimage.label, and the API around it."""

import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from patchworks import label_components, merge_tile_labels, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs


def whole_image_labels(mask, connectivity):
    labels, _ = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, connectivity))
    return labels


def check_exact(mask, tile_shape, connectivity, overlap=0, **kwargs):
    out = tile_process(mask.astype(np.uint8), threshold(0.5), tile_shape=tile_shape, overlap=overlap,
                       connectivity=connectivity, compute=True, **kwargs)
    assert_labels_equivalent(out, whole_image_labels(mask, connectivity))
    return out


@st.composite
def masks(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, 14 if ndim == 2 else 8), min_size=ndim, max_size=ndim)))
    density = draw(st.sampled_from([0.2, 0.45, 0.6, 0.8]))
    seed = draw(st.integers(0, 2**16))
    mask = np.random.default_rng(seed).random(shape) < density
    tile = tuple(draw(st.integers(1, s)) for s in shape)
    overlap = tuple(draw(st.integers(0, max(0, t - 1))) for t in tile)
    connectivity = draw(st.integers(1, ndim))
    sequential = draw(st.booleans())
    return mask, tile, overlap, connectivity, sequential


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks())
def test_tiled_labels_equal_whole_image_labels(case):
    mask, tile, overlap, connectivity, sequential = case
    out = check_exact(mask, tile, connectivity, overlap, sequential_labels=sequential)
    if sequential:
        assert np.unique(out[out > 0]).tolist() == list(range(1, out.max() + 1))


@pytest.mark.parametrize("shape, tile", [((50,), 7), ((5, 6, 4, 7), (2, 3, 3, 4))])
def test_exact_in_1d_and_4d(shape, tile):
    mask = np.random.default_rng(len(shape)).random(shape) > 0.45
    for connectivity in range(1, len(shape) + 1):
        check_exact(mask, tile, connectivity)


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("tile", [(16, 16), (13, 9), (1, 64), (1, 1)])
def test_exact_2d_on_blobs(tile, connectivity):
    shape = (16, 20) if tile == (1, 1) else (48, 64)  # one task per voxel: keep it small
    mask = random_blobs(shape, seed=4) > 0.5
    check_exact(mask, tile, connectivity)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("tile", [(8, 8, 8), (5, 7, 6), (1, 12, 12)])
def test_exact_3d_on_blobs(tile, connectivity, sequential):
    mask = random_blobs((16, 24, 24), seed=5, sigma=1.5) > 0.5
    check_exact(mask, tile, connectivity, overlap=(0 if tile[0] == 1 else 1, 2, 2), sequential_labels=sequential)


def test_empty_image_and_empty_tiles():
    mask = np.zeros((20, 20), bool)
    assert check_exact(mask, 5, 1).max() == 0
    mask[0:3, 0:3] = True  # one object, 15 empty tiles
    out = check_exact(mask, 5, 1)
    assert np.unique(out).tolist() == [0, 1]


def test_no_background_at_all_is_one_object():
    out = check_exact(np.ones((9, 10, 11), bool), (4, 3, 5), 1)
    assert np.unique(out).tolist() == [1]


def test_one_object_through_every_tile():
    mask = np.zeros((30, 30), bool)
    mask[::4, :] = True          # rails
    mask[:, 0] = True            # one spine joins them
    out = check_exact(mask, (7, 7), 1)
    assert len(np.unique(out)) == 2


@pytest.mark.parametrize("connectivity, expected", [(1, 2), (2, 1)])
def test_diagonal_contact_where_four_tiles_meet(connectivity, expected):
    mask = np.zeros((8, 8), bool)
    mask[3, 3] = mask[4, 4] = True   # only a corner touch, across the corner of four tiles
    out = check_exact(mask, 4, connectivity)
    assert len(np.unique(out)) - 1 == expected


@pytest.mark.parametrize("connectivity, expected", [(1, 2), (2, 2), (3, 1)])
def test_diagonal_contact_where_eight_tiles_meet(connectivity, expected):
    mask = np.zeros((8, 8, 8), bool)
    mask[3, 3, 3] = mask[4, 4, 4] = True
    out = check_exact(mask, 4, connectivity)
    assert len(np.unique(out)) - 1 == expected


def test_edge_contact_across_a_tile_edge_in_3d():
    mask = np.zeros((8, 8, 8), bool)
    mask[3, 3, 2] = mask[4, 4, 2] = True   # differ in two axes: joined from connectivity 2
    assert len(np.unique(check_exact(mask, 4, 1))) - 1 == 2
    assert len(np.unique(check_exact(mask, 4, 2))) - 1 == 1


def test_sequential_labels_are_1_to_n():
    mask = random_blobs((40, 40), seed=6) > 0.5
    out = check_exact(mask, 9, 1, sequential_labels=True)
    assert np.unique(out).tolist() == list(range(out.max() + 1))


def test_fn_is_called_exactly_once_per_tile_with_its_window():
    image = random_blobs((20, 30), seed=7)
    seen, lock = [], threading.Lock()

    def fn(tile):
        with lock:
            seen.append(tile.shape)
        return label_components(tile > 0.5)

    out = tile_process(image, fn, tile_shape=(8, 8), overlap=2, compute=True)
    assert len(seen) == 3 * 4
    # interior tiles see core + halo on both sides, edge tiles are clipped
    assert sorted(set(seen)) == sorted({(h, w) for h in (10, 12, 6) for w in (10, 12, 8)})
    assert_labels_equivalent(out, whole_image_labels(image > 0.5, 1))


def test_halo_is_context_only_and_cores_come_from_their_own_tile():
    image = random_blobs((24, 24), seed=8)
    out = tile_process(image, threshold(0.5), tile_shape=8, overlap=3, compute=True)
    assert_labels_equivalent(out, whole_image_labels(image > 0.5, 1))


def test_channels_are_carried_whole():
    image = np.stack([random_blobs((20, 20), seed=9), np.zeros((20, 20), np.float32)])

    def fn(tile):
        assert tile.shape[0] == 2
        return label_components(tile[0] > 0.5)

    out = tile_process(image, fn, tile_shape=(6, 6), channel_axis=0, compute=True)
    assert out.shape == (20, 20)
    assert_labels_equivalent(out, whole_image_labels(image[0] > 0.5, 1))


def test_dask_and_zarr_inputs_and_lazy_output(tmp_path):
    image = random_blobs((30, 40), seed=10)
    truth = whole_image_labels(image > 0.5, 1)
    lazy = tile_process(da.from_array(image, chunks=(7, 11)), threshold(0.5), tile_shape=(10, 10))
    assert isinstance(lazy, da.Array) and lazy.chunks[0][0] == 10
    assert_labels_equivalent(lazy.compute(), truth)

    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(16, 16))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in src.rglob("*"))
    out = tile_process(str(src), threshold(0.5), tile_shape=(10, 10), write_to=tmp_path / "labels.zarr")
    stored = zarr.open_array(tmp_path / "labels.zarr" / "0", mode="r")  # level 0 of the label image
    assert stored.chunks == (10, 10) and stored.dtype == np.uint32
    assert stored.metadata.zarr_format == 3
    assert zarr.open_group(tmp_path / "labels.zarr", mode="r").attrs["patchworks"]["complete"] is True
    assert_labels_equivalent(out.compute(), truth)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in src.rglob("*")) == before, "input was touched"
    # no scratch left behind
    assert [p.name for p in tmp_path.iterdir()] == sorted(["image.zarr", "labels.zarr"]) or \
        sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr", "labels.zarr"]


def test_zarr_v2_output_and_output_component(tmp_path):
    image = random_blobs((20, 20), seed=11)
    tile_process(image, threshold(0.5), tile_shape=8, write_to=tmp_path / "v2.zarr", zarr_format=2)
    assert zarr.open_array(tmp_path / "v2.zarr" / "0", mode="r").metadata.zarr_format == 2
    tile_process(image, threshold(0.5), tile_shape=8, write_to=tmp_path / "group.zarr", output_component="labels")
    stored = zarr.open_array(tmp_path / "group.zarr" / "labels" / "0", mode="r")
    assert_labels_equivalent(stored[...], whole_image_labels(image > 0.5, 1))


def test_write_to_exists_needs_overwrite(tmp_path):
    image = random_blobs((10, 10), seed=12)
    target = tmp_path / "out.zarr"
    tile_process(image, threshold(0.5), tile_shape=5, write_to=target)
    with pytest.raises(FileExistsError, match=r"write_to=.*out.zarr' already exists \(it holds the labels of a "
                                              r"call with other arguments\); pass overwrite=True"):
        tile_process(image, threshold(0.5), tile_shape=4, write_to=target)
    tile_process(image, threshold(0.5), tile_shape=4, write_to=target, overwrite=True)
    zarr.create_array(store=tmp_path / "theirs.zarr", shape=(10, 10), dtype=np.uint8)
    with pytest.raises(FileExistsError, match=r"theirs.zarr' already exists; pass overwrite=True"):
        tile_process(image, threshold(0.5), tile_shape=5, write_to=tmp_path / "theirs.zarr")


def test_output_onto_the_input_is_refused(tmp_path):
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=random_blobs((10, 10), seed=13), chunks=(5, 5))
    with pytest.raises(ValueError, match="is the input; patchworks never writes to its input"):
        tile_process(str(src), threshold(0.5), tile_shape=5, write_to=src, overwrite=True)


@pytest.mark.parametrize("fn, error, match", [
    (lambda t: np.zeros((3, 3), np.uint32), ValueError,
     r"fn returned shape \(3, 3\) for tile \(\d, \d\) \(window \[\d+:\d+, \d+:\d+\]\); expected the window's spatial shape \(6, 6\)"),
    (lambda t: t.astype(np.float32), TypeError, r"fn returned dtype float32 for tile \(\d, \d\) \(window \[\d+:\d+, \d+:\d+\]\); labels must be integers"),
    (lambda t: -np.ones(t.shape, np.int32), ValueError, r"fn returned negative labels \(min -1\) for tile \(\d, \d\) \(window"),
    (lambda t: [[1]], TypeError, r"fn returned list for tile \(\d, \d\) \(window \[\d+:\d+, \d+:\d+\]\); it must return a numpy array"),
    (lambda t: None, TypeError, r"fn returned NoneType for tile"),
])
def test_bad_tile_function_output_is_named(fn, error, match):
    with pytest.raises(error, match=match):
        tile_process(np.zeros((12, 12)), fn, tile_shape=6, overlap=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tile_shape=(4, 4, 4)), ValueError, r"tile_shape=\(4, 4, 4\) has 3 entries but the image has 2 spatial axes"),
    (dict(tile_shape=4, overlap=4), ValueError, r"overlap 4 is not smaller than the tile size 4"),
    (dict(tile_shape=4, connectivity=3), ValueError, r"connectivity=3: use an int from 1 .* to 2"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        tile_process(np.zeros((12, 12)), threshold(0.5), **kwargs)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        tile_process(str(tmp_path / "missing.zarr"), threshold(0.5), tile_shape=4)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="could not read"):
        tile_process(str(bad), threshold(0.5), tile_shape=4)
    with pytest.raises(TypeError, match="fn=3 is not callable"):
        tile_process(np.zeros((4, 4)), 3, tile_shape=4)


def test_fn_connectivity_must_match_the_merge():
    with pytest.raises(ValueError, match="fn labels with connectivity=1 but tile_process merges with connectivity=2"):
        tile_process(np.zeros((8, 8)), threshold(0.5, connectivity=1), tile_shape=4, connectivity=2)


# -- merge_tile_labels ---------------------------------------------------------

def _per_block_labels(mask, chunks, connectivity=1):
    return da.from_array(mask, chunks=chunks).map_blocks(
        lambda b: label_components(b, connectivity).astype(np.int64), dtype=np.int64)


def test_merge_tile_labels_dask_input_with_irregular_chunks():
    mask = random_blobs((30, 35), seed=14) > 0.5
    labeled = _per_block_labels(mask, ((7, 7, 10, 6), (12, 5, 18)))
    merged, n = merge_tile_labels(labeled, sequential_labels=True, return_count=True, compute=True)
    truth = whole_image_labels(mask, 1)
    assert_labels_equivalent(merged, truth)
    assert n == truth.max() == merged.max()


def test_merge_tile_labels_from_zarr_never_modifies_input(tmp_path):
    mask = random_blobs((24, 24, 24), seed=15, sigma=1.5) > 0.5
    staged = tmp_path / "staged.zarr"
    group = zarr.open_group(staged, mode="w")
    raw = group.create_array("raw_labels", shape=mask.shape, chunks=(8, 8, 8), dtype=np.uint16)
    raw[...] = _per_block_labels(mask, (8, 8, 8), connectivity=3).compute()
    before = raw[...].copy()
    merged = merge_tile_labels(str(staged), input_component="raw_labels", write_to=tmp_path / "merged.zarr",
                               connectivity=3)
    assert_labels_equivalent(merged.compute(), whole_image_labels(mask, 3))
    np.testing.assert_array_equal(zarr.open_group(staged, mode="r")["raw_labels"][...], before)


def test_merge_tile_labels_crops_map_overlap_halos():
    mask = random_blobs((40, 40), seed=16) > 0.5
    depth = 3
    labeled = da.from_array(mask, chunks=10).map_overlap(
        lambda b: label_components(b).astype(np.int32), depth=depth, boundary="none", trim=False, dtype=np.int32)
    merged = merge_tile_labels(labeled, overlap=depth, compute=True)
    assert merged.shape == mask.shape
    assert_labels_equivalent(merged, whole_image_labels(mask, 1))


def test_merge_tile_labels_rejects_numpy_and_bad_counts():
    with pytest.raises(TypeError, match="numpy array, which has no tiles"):
        merge_tile_labels(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"label_counts must hold one count per tile \(4"):
        merge_tile_labels(da.zeros((4, 4), chunks=2, dtype=np.int32), label_counts=[1, 2])


def test_label_count_beyond_uint32_promotes_to_uint64_without_wrapping():
    # tile 0 claims 2**32 - 1 labels (label_counts), so tile 1's ids start at 2**32
    blocks = np.zeros((2, 4), np.uint32)
    blocks[0, :2] = [1, 2**32 - 1]
    blocks[1, 2:] = [1, 2]
    labeled = da.from_array(blocks, chunks=(1, 4))
    out, n = merge_tile_labels(labeled, label_counts=[[2**32 - 1], [2]], compute=True, return_count=True)
    assert out.dtype == np.uint64
    assert n == 2**32 + 1
    assert out[0, 1] == 2**32 - 1 and sorted(out[1, 2:].tolist()) == [2**32, 2**32 + 1]
    # the same data numbered 1..n fits uint32 again once the count allows it
    seq = merge_tile_labels(labeled, label_counts=[[2**32 - 1], [2]], compute=True, sequential_labels=True)
    assert seq.dtype == np.uint64  # 2**32 + 1 objects still need 64 bits
    assert len(np.unique(seq)) == 5



def test_threads_follow_the_cores_available_to_the_process(monkeypatch):
    import time

    import patchworks.run._execute as run_module
    monkeypatch.setattr(run_module, "available_cores", lambda: 1)  # e.g. SLURM_CPUS_PER_TASK=1
    running, peak, lock = [0], [0], threading.Lock()

    def fn(tile):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return label_components(tile > 0.5)

    tile_process(random_blobs((32, 32), seed=18), fn, tile_shape=8, compute=True, client=False)
    assert peak[0] == 1


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("overlap", [0, 6])
def test_the_object_count_is_exact_when_halo_labels_leave_gaps(overlap, sequential):
    # labels seen only in a tile's halo leave unused ids in that tile; they are not objects
    img = random_blobs((64, 64), seed=2)
    out, n = tile_process(img, threshold(0.5), tile_shape=24, overlap=overlap, sequential_labels=sequential,
                          compute=True, return_count=True)
    assert n == len(np.unique(out[out > 0])) == whole_image_labels(img > 0.5, 1).max()


def test_the_count_is_paid_for_only_when_asked(tmp_path):
    import zarr

    img = random_blobs((64, 64), seed=2)
    out = tmp_path / "labels.zarr"
    labels = tile_process(img, threshold(0.5), tile_shape=24, overlap=6, write_to=out, table=False)
    attrs = zarr.open_group(str(out)).attrs["patchworks"]
    assert attrs["n_objects"] is None and attrs["max_label"] >= labels.max().compute()
    # the same call again is a no-op; asked for the count, it counts the finished output
    _, n = tile_process(img, threshold(0.5), tile_shape=24, overlap=6, write_to=out, return_count=True,
                        table=False)
    assert n == whole_image_labels(img > 0.5, 1).max()
    # with the object table (the default with write_to) the count comes free: one row per object
    tile_process(img, threshold(0.5), tile_shape=24, overlap=6, write_to=out, overwrite=True)
    assert zarr.open_group(str(out)).attrs["patchworks"]["n_objects"] == n


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(0, 40), min_size=1, max_size=60),
       dtype=st.sampled_from(["uint8", "uint16", "uint32", "uint64", "int32"]))
def test_local_ids_number_a_tiles_labels_1_to_n_in_order(values, dtype):
    """local_ids against np.unique: labels 1..n in increasing order of their raw ids, 0 stays 0."""
    from patchworks.labels._tile_task import local_ids

    core = np.asarray(values, dtype=dtype).reshape(1, -1)
    ids, lut, n = local_ids(core, True)
    got = ids if lut is None else lut[ids]
    raw = np.unique(core[core != 0])
    expected = np.zeros(core.shape, np.int64)
    expected[core != 0] = np.searchsorted(raw, core[core != 0]) + 1
    np.testing.assert_array_equal(got, expected)
    assert n == raw.size
