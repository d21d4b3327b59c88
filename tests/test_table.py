"""The object table: exact against skimage.measure.regionprops_table on the whole image."""

import os
import tracemalloc

import dask.array as da
import dask
import numpy as np
import pytest
import tifffile
import zarr

from _probes import assert_partials_geometry
from patchworks.io._scratch import Scratch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops_table

import patchworks
from patchworks import measure, merge_tile_labels, read_table, threshold, tile_process, write_table_file
from patchworks.grid import TileGrid
from patchworks.labels._merge import plan_relabel
from patchworks.labels._table import Partials
from patchworks.labels._table_merge import TableJob, group_rows, tile_rows, write_object_table

PROPS = ("label", "area", "bbox", "centroid")
INTENSITY = ("intensity_mean", "intensity_min", "intensity_max", "intensity_std")


def oracle(labels, image=None):
    props = PROPS + (INTENSITY if image is not None else ())
    if image is not None and image.ndim == labels.ndim + 1:
        image = np.moveaxis(image, 0, -1)  # skimage wants channels last
    return regionprops_table(np.asarray(labels), None if image is None else np.asarray(image, float),
                             properties=props)


def assert_table_matches(table, labels, image=None):
    """Every oracle column equal (ints exactly, floats to 1e-10 relative); rows in label order."""
    ref = oracle(labels, image)
    assert table.index.tolist() == ref["label"].tolist()
    for name, values in ref.items():
        if name == "label":
            continue
        ours = table[name].to_numpy()
        if np.issubdtype(np.asarray(values).dtype, np.integer):
            np.testing.assert_array_equal(ours, values, err_msg=name)
        else:
            np.testing.assert_allclose(ours, values, rtol=1e-10, atol=1e-12, err_msg=name)
    shape = np.asarray(labels.shape)
    d = labels.ndim
    lo = table[[f"bbox-{a}" for a in range(d)]].to_numpy()
    hi = table[[f"bbox-{a + d}" for a in range(d)]].to_numpy()
    np.testing.assert_array_equal(table["touches_border"].to_numpy(), ((lo == 0) | (hi == shape)).any(axis=1))


def blobs(shape, seed, density=0.55):
    rng = np.random.default_rng(seed)
    return rng.random(shape) * (rng.random(shape) < density)


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(2, 16 if ndim == 2 else 8), min_size=ndim, max_size=ndim)))
    tile = tuple(draw(st.integers(1, s)) for s in shape)
    return shape, tile, draw(st.integers(0, 2**16)), draw(st.integers(1, ndim)), draw(st.booleans())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_touch_table_equals_regionprops(tmp_path_factory, case):
    shape, tile, seed, connectivity, sequential = case
    image = blobs(shape, seed)
    out = tmp_path_factory.mktemp("t") / "labels.zarr"
    labels = tile_process(image, threshold(0.0), tile_shape=tile, connectivity=connectivity, write_to=out,
                          sequential_labels=sequential)
    assert_table_matches(read_table(out), np.asarray(labels), image)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases(), st.integers(1, 3))
def test_iou_table_equals_regionprops(tmp_path_factory, case, overlap):
    shape, tile, seed, _, sequential = case
    image = blobs(shape, seed, density=0.7)
    out = tmp_path_factory.mktemp("t") / "labels.zarr"
    overlap = tuple(min(overlap, t - 1) for t in tile)  # 1-thick tiles: stitched plane by plane
    labels = tile_process(image, threshold(0.0), tile_shape=tile, overlap=overlap, stitch="iou", write_to=out,
                          sequential_labels=sequential)
    assert_table_matches(read_table(out), np.asarray(labels), image)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
@pytest.mark.parametrize("sequential", [True, False])
def test_table_finished_in_batches_of_tiles_equals_regionprops(tmp_path, monkeypatch, chunk_rows, sequential):
    """The driver reduces the rows of several tiles at once (batches of the table's chunk): objects owned by
    one tile and seen by many, tiles that own nothing, batches ending inside a tile's rows."""
    import patchworks.io._table_store as store

    monkeypatch.setattr(store, "_CHUNK_ROWS", chunk_rows)
    image = blobs((30, 41), 5, density=0.6)
    image[10:13, :] = 1.0   # one object across every tile of a row
    image[20:30, 30:41] = 0.0  # tiles without objects
    out = tmp_path / "labels.zarr"
    labels = tile_process(image, threshold(0.0), tile_shape=(7, 6), write_to=out, sequential_labels=sequential)
    table = read_table(out)
    assert zarr.open_array(str(out / "table" / "label"), mode="r").chunks == (chunk_rows,)
    assert_table_matches(table, np.asarray(labels), image)


def test_objects_spanning_many_tiles_and_multichannel(tmp_path):
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 50), bool)
    mask[5:35, 3:47] = True          # one object across 4x5 tiles
    mask[2, :] = True                # a line across a whole row of tiles
    mask[38, 10:12] = True
    image = np.stack([rng.random(mask.shape) * mask + mask, rng.normal(1e6, 1.0, mask.shape) * mask])
    out = tmp_path / "cells.zarr"
    labels = tile_process(image, lambda w: patchworks.label_components(w[0] > 0.5, connectivity=1),
                          tile_shape=(9, 11), channel_axis=0, write_to=out, sequential_labels=True)
    table = read_table(out)
    ref = oracle(np.asarray(labels), image)
    assert len(table) == 3
    for c in range(2):
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(table[f"intensity_{stat}-{c}"], ref[f"intensity_{stat}-{c}"], rtol=1e-10)


def test_skip_empty_and_no_table(tmp_path):
    image = np.zeros((30, 30))
    image[2:6, 2:9] = 1
    image[20:28, 18:30] = 2
    out = tmp_path / "a.zarr"
    labels = tile_process(image, threshold(0.5), tile_shape=(8, 8), skip_empty=True, empty_threshold=0,
                          write_to=out)
    assert_table_matches(read_table(out), np.asarray(labels), image)
    tile_process(image, threshold(0.5), tile_shape=(8, 8), write_to=out, table=False, overwrite=True)
    with pytest.raises(FileNotFoundError, match="holds no object table"):
        read_table(out)


def test_merge_tile_labels_table_and_group_output(tmp_path):
    rng = np.random.default_rng(5)
    mask = rng.random((24, 24)) > 0.5
    per_tile = da.from_array(mask.astype(np.uint8), chunks=(8, 8)).map_blocks(
        lambda b: patchworks.label_components(b, connectivity=1).astype(np.uint32), dtype=np.uint32)
    out = tmp_path / "g.zarr"
    merged = merge_tile_labels(per_tile, write_to=out, output_component="labels", sequential_labels=True)
    assert (out / "labels" / "table").is_dir()  # inside the label image g.zarr/labels
    table = read_table(out / "labels")
    assert_table_matches(table, np.asarray(merged))
    assert "intensity_mean" not in table


def test_stale_table_is_refused(tmp_path):
    image = np.zeros((16, 16))
    image[3:9, 3:9] = 1
    out = tmp_path / "l.zarr"
    tile_process(image, threshold(0.5), tile_shape=8, write_to=out)
    read_table(out)
    arr = zarr.open_array(out / "0", mode="r+")  # level 0 of the label image
    arr[0, 0] = 7  # an edit of the labels the table describes
    with pytest.raises(ValueError, match="stale.*check=False"):
        read_table(out)
    assert len(read_table(out, check=False)) == 1


def test_rerun_is_a_noop_and_overwrite_replaces_the_table(tmp_path):
    image = blobs((20, 20), 1)
    out = tmp_path / "l.zarr"
    tile_process(image, threshold(0.0), tile_shape=7, write_to=out)
    before = read_table(out)
    mtime = os.stat(out / "table" / "zarr.json").st_mtime_ns
    tile_process(image, threshold(0.0), tile_shape=7, write_to=out)  # finished: nothing rewritten
    assert os.stat(out / "table" / "zarr.json").st_mtime_ns == mtime
    other = blobs((20, 20), 2)
    labels = tile_process(other, threshold(0.0), tile_shape=7, write_to=out, overwrite=True)
    assert_table_matches(read_table(out), np.asarray(labels), other)
    assert not read_table(out).equals(before)


def test_resume_after_interrupted_table_step(tmp_path, monkeypatch):
    image = blobs((24, 24), 4)
    out = tmp_path / "l.zarr"
    import patchworks.labels._table_merge as tm
    real = tm.TableWriter.close

    def crash(self):
        raise RuntimeError("killed while writing the table")
    monkeypatch.setattr(tm.TableWriter, "close", crash)
    with pytest.raises(RuntimeError, match="killed"):
        tile_process(image, threshold(0.0), tile_shape=7, write_to=out)
    with pytest.raises(ValueError, match="incomplete"):
        read_table(out)
    monkeypatch.setattr(tm.TableWriter, "close", real)
    labels = tile_process(image, threshold(0.0), tile_shape=7, write_to=out)
    assert_table_matches(read_table(out), np.asarray(labels), image)


def test_anndata_reads_the_table(tmp_path):
    anndata = pytest.importorskip("anndata")
    image = blobs((20, 20), 7)
    out = tmp_path / "l.zarr"
    tile_process(image, threshold(0.0), tile_shape=6, write_to=out, zarr_format=2)
    df = anndata.io.read_elem(zarr.open_group(out / "table", mode="r"))
    ours = read_table(out)
    assert list(df.columns) == list(ours.columns)
    np.testing.assert_array_equal(df.index.to_numpy().astype(np.int64), ours.index.to_numpy().astype(np.int64))
    np.testing.assert_allclose(df["intensity_mean"].to_numpy(), ours["intensity_mean"].to_numpy())


def test_csv_and_parquet_export(tmp_path):
    import pandas as pd
    table = measure(np.array([[1, 1, 0], [0, 2, 2]]), np.array([[1.0, 3.0, 0], [0, 5.0, 5.0]]))
    write_table_file(table, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv", index_col="label"), table, check_dtype=False,
                                  check_index_type=False)
    pytest.importorskip("pyarrow")
    write_table_file(table, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)
    with pytest.raises(ValueError, match="unknown table format '.xls'"):
        write_table_file(table, tmp_path / "t.xls")


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr", "tiff"])
def test_measure_any_label_array(tmp_path, kind):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, (13, 17, 9)).astype(np.uint16) * 1000  # ids reused far apart: not connected
    image = rng.random((2, 13, 17, 9))
    if kind == "dask":
        src = da.from_array(labels, chunks=(5, 6, 4))
    elif kind == "zarr":
        src = tmp_path / "l.zarr"
        zarr.create_array(src, data=labels, chunks=(4, 8, 9))
    elif kind == "tiff":
        src = tmp_path / "l.tif"
        tifffile.imwrite(src, labels)
    else:
        src = labels
    table = measure(src, image, tile_shape=(4, 5, 9) if kind != "dask" else None)
    assert_table_matches(table, labels, image)


def test_measure_writes_a_table_read_table_checks(tmp_path):
    labels = np.zeros((10, 10), np.uint32)
    labels[2:5, 2:5] = 3
    src = tmp_path / "l.zarr"
    zarr.create_array(src, data=labels, chunks=(5, 5))
    measure(src, out=tmp_path / "t.zarr", voxel_size=(0.5, 2.0))
    table = read_table(tmp_path / "t.zarr")
    assert table["area_physical"].tolist() == [9.0]
    assert table["centroid_physical-1"].tolist() == [6.0]
    arr = zarr.open_array(src, mode="r+")
    arr[9, 9] = 1
    with pytest.raises(ValueError, match="stale"):
        read_table(tmp_path / "t.zarr")


def test_measure_errors():
    with pytest.raises(ValueError, match=r"image has spatial shape \(4, 4\) but labels \(3, 3\)"):
        measure(np.zeros((3, 3), int), np.zeros((4, 4)))
    with pytest.raises(TypeError, match="integer labels"):
        measure(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="voxel_size=.*one size per spatial axis"):
        measure(np.ones((3, 3), int), voxel_size=(1, 2, 3))


def test_voxel_size_from_the_source(tmp_path):
    class WithScale(np.ndarray):
        pass
    labels = np.zeros((6, 6), np.uint8)
    labels[1:3, 1:4] = 1
    src = labels.view(WithScale)
    src.voxel_size, src.units = (0.25, 0.5), ("micrometer", "micrometer")
    table = measure(np.asarray(labels), src.astype(float))
    assert "area_physical" not in table  # a plain array carries no voxel size
    from patchworks.labels._table_merge import spatial_voxel_size
    assert spatial_voxel_size(src, TileGrid((6, 6), 3)) == ((0.25, 0.5), ("micrometer", "micrometer"))
    assert spatial_voxel_size(np.zeros((2, 6, 6)), TileGrid((2, 6, 6), 3, channel_axis=0),
                              voxel_size=(9, 1, 2)) == ((1.0, 2.0), None)


# 10**7 (the size) takes ~90 s on a shared 2-core machine: PATCHWORKS_SYNTH_OBJECTS=10000000
N_SYNTH = int(os.environ.get("PATCHWORKS_SYNTH_OBJECTS", 10**6))


def test_synthetic_merge_memory_grows_with_boundary_objects_only(tmp_path):
    """10**7 objects on 10**3 tiles, one object per tile on a seam: the driver never holds all rows."""
    n_tiles = 1000
    per_tile = N_SYNTH // n_tiles
    grid = TileGrid((n_tiles * 4, 4), (4, 4))
    scratch = Scratch(tmp_path)
    counts = np.full(n_tiles, per_tile)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    # the last label of tile t joins the first of tile t+1
    pairs = np.stack([offsets[1:-1], offsets[1:-1] + 1], axis=1).astype(np.uint64)
    plan = plan_relabel(counts, pairs, sequential=True)
    job, results = TableJob(scratch, 2, 0), []
    for t in range(n_tiles):  # partials of per_tile one-voxel objects, mapped as a relabel task would
        local = np.arange(1, per_tile + 1, dtype=np.uint64)
        n = local.size
        coords = np.zeros((n, 2), np.int64)
        coords[:, 0] = 4 * t + 3 * (local == per_tile)   # the last label sits on the tile's seam
        raw = Partials(local, np.ones(n, np.int64), coords, coords, coords + 1, *(np.zeros((n, 0)),) * 4).to_bytes()
        results.append(group_rows(job, [t], [tile_rows(job, t, plan.tiles[t], raw)]))
    labels = tmp_path / "labels.zarr"
    zarr.create_array(labels, shape=(4, 4), chunks=(4, 4), dtype=np.uint32)
    # one thread: CPython 3.11's AST validator can raise a spurious SystemError when threads compile
    # while tracemalloc traces (seen once here); the driver's memory is what is measured either way
    tracemalloc.start()
    with dask.config.set(scheduler="synchronous"):
        n_rows = write_object_table(scratch=scratch, grid=grid, plan=plan, table_path=tmp_path / "table",
                                    labels_path=labels, labels_rel="../labels.zarr", n_channels=0, results=results)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n_rows == N_SYNTH - (n_tiles - 1)
    all_rows = n_rows * 10 * 8  # ten 8-byte columns
    print(f"driver peak {peak / 2**20:.1f} MiB for {n_rows} rows ({all_rows / 2**20:.0f} MiB of columns)")
    assert peak < max(all_rows / 20, 40 * 2**20), (peak, all_rows)
    area = zarr.open_array(tmp_path / "table" / "area", mode="r")
    assert area[per_tile - 1] == 2 and area[0] == 1 and int(area[...].sum()) == N_SYNTH


def test_cli_label_info_measure(tmp_path, capsys):
    import pandas as pd
    from patchworks.cli import main
    image = blobs((12, 14), 9)
    src = tmp_path / "img.zarr"
    zarr.create_array(src, data=image, chunks=(6, 7))
    out = tmp_path / "cells.zarr"
    assert main(["label", str(src), str(out), "--tile", "6,7", "--method", "threshold", "--threshold", "0"]) == 0
    assert "read_table" in capsys.readouterr().out
    assert main(["info", str(out), "--no-count"]) == 0
    printed = capsys.readouterr().out
    assert "columns: label, area, centroid-0" in printed and "intensity_mean" in printed
    assert main(["measure", str(out), "--image", str(src), "--out", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv", index_col="label")
    assert_table_matches(table, zarr.open_array(out / "0", mode="r")[...], image)
    assert main(["label", str(src), str(tmp_path / "bare.zarr"), "--tile", "6,7", "--method", "threshold",
                 "--threshold", "0", "--no-table"]) == 0
    assert not (tmp_path / "bare.zarr" / "table").exists()
    assert main(["measure", str(out), "--out", str(tmp_path / "t.xls")]) == 2
    assert "unknown table format" in capsys.readouterr().err


def test_partials_in_slabs(monkeypatch):
    import cc3d
    import patchworks.labels._table as table_mod
    from patchworks.labels._table import reduce_partials, table_columns, tile_partials
    monkeypatch.setattr(table_mod, "_SLAB_VOXELS", 100)
    rng = np.random.default_rng(0)
    image = rng.random((20, 30, 40))
    labels = cc3d.connected_components(image > 0.6).astype(np.uint32)
    n = int(labels.max())
    parts = [tile_partials(labels[a:b, :, c:e], n, (a, 0, c), image[None, a:b, :, c:e])
             for a, b in ((0, 7), (7, 20)) for c, e in ((0, 13), (13, 40))]
    cols = table_columns(reduce_partials(Partials.concat(parts)), labels.shape)
    import pandas as pd
    table = pd.DataFrame({k: v for k, v in cols.items() if k != "label"}, index=cols["label"])
    assert_table_matches(table, labels, image)


# -- voxel size reaches the table's physical columns, whatever says it --------------------------


def _physical(table):
    """``(area, centroid y, centroid x)`` of the first object, physical, flat (pytest.approx refuses nesting)."""
    return (table["area_physical"].iloc[0], *(table[f"centroid_physical-{a}"].iloc[0] for a in range(2)))


def _two_squares():
    image = np.zeros((12, 16))
    image[2:5, 3:7] = 1  # area 12, centroid (3, 4.5)
    image[8:10, 10:12] = 1
    return image


def test_voxel_size_by_hand_reaches_the_table(tmp_path):
    image = _two_squares()
    out = tmp_path / "l.zarr"
    tile_process(image, threshold(0.5), tile_shape=(6, 8), write_to=out, voxel_size=((0.5, "um"), (2.0, "um")))
    table = read_table(out)
    assert _physical(table) == (12 * 0.5 * 2.0, 3 * 0.5, 4.5 * 2.0)
    assert table.attrs["voxel_size"] == [0.5, 2.0] and table.attrs["units"] == ["micrometer"] * 2
    tile_process(image, threshold(0.5), tile_shape=(6, 8), write_to=out, overwrite=True)
    assert "area_physical" not in read_table(out)  # numpy, no voxel size: voxel columns only


@pytest.mark.parametrize("kind", ["ome-zarr", "ome-tiff", "imagej-tiff"])
def test_voxel_size_by_hand_overrides_the_sources_in_the_table(tmp_path, kind):
    from patchworks.testing import write_ome_zarr

    image = _two_squares()
    src = tmp_path / "img"
    if kind == "ome-zarr":
        write_ome_zarr(src, image, axes="yx", scale=(3.0, 3.0))
    elif kind == "ome-tiff":
        src = tmp_path / "img.ome.tif"
        tifffile.imwrite(src, image.astype(np.float32), metadata={"axes": "YX", "PhysicalSizeX": 3.0,
                                                                   "PhysicalSizeY": 3.0})
    else:
        src = tmp_path / "img.tif"
        tifffile.imwrite(src, image.astype(np.float32), imagej=True, resolution=(1 / 3.0, 1 / 3.0),
                         metadata={"unit": "micron", "axes": "YX"})
    out = tmp_path / "l.zarr"
    tile_process(src, threshold(0.5), tile_shape=(6, 8), write_to=out)
    assert _physical(read_table(out)) == pytest.approx((12 * 9.0, 9.0, 13.5))  # the file's own size
    tile_process(src, threshold(0.5), tile_shape=(6, 8), write_to=out, overwrite=True, voxel_size=(0.5, 2.0))
    table = read_table(out)
    assert _physical(table) == (12 * 0.5 * 2.0, 1.5, 9.0)
    assert table.attrs["voxel_size"] == [0.5, 2.0]


def test_voxel_size_by_hand_reaches_merge_tile_labels_table(tmp_path):
    labels = tmp_path / "tiles.zarr"
    zarr.create_array(labels, data=(_two_squares() > 0).astype(np.uint32), chunks=(6, 8))
    out = tmp_path / "l.zarr"
    merge_tile_labels(labels, write_to=out, voxel_size=(0.5, 2.0))
    assert _physical(read_table(out)) == (12 * 0.5 * 2.0, 1.5, 9.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**16), st.booleans(), st.booleans())
def test_tile_partials_equal_a_direct_loop(ndim, seed, gaps, strided):
    """Runs of equal labels in any dimension, any ids (gaps, long runs, single voxels), any memory layout."""
    from patchworks.labels._table import tile_partials
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 7, ndim))
    n = int(rng.integers(1, 6))
    coarse = rng.integers(0, n + 1, shape)  # mixes long runs (repeated below) with isolated voxels
    ids = np.repeat(coarse, 2, axis=ndim - 1)[..., : shape[-1] + 1].astype(np.uint32)
    if gaps:
        ids = ids * 3  # labels 3, 6, ... up to 3n: the absent ones get no row
    if strided:
        ids = ids[..., ::2]
    image = rng.normal(100, 5, (2,) + ids.shape)
    origin = tuple(int(o) for o in rng.integers(0, 50, ndim))
    parts = tile_partials(ids, int(ids.max()), origin, image)
    present = assert_partials_geometry(parts, ids, origin)
    for row, v in enumerate(present):
        values = image[:, ids == v]
        np.testing.assert_allclose(parts.isum[row], values.sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(parts.im2[row], ((values - values.mean(axis=1, keepdims=True)) ** 2).sum(axis=1),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(parts.imin[row], values.min(axis=1))
        np.testing.assert_array_equal(parts.imax[row], values.max(axis=1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**16), st.sampled_from(["uint8", "int8", "uint16", "int16", "bool"]))
def test_tile_partials_of_integer_images_are_exact(ndim, seed, dtype):
    """8/16-bit images are reduced per run in int64: sums, extremes and M2 exactly (0 on a constant object)."""
    from patchworks.labels._table import tile_partials
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 9, ndim))
    ids = rng.integers(0, 4, shape).astype(np.uint32)
    if dtype == "bool":
        image = rng.random((2,) + shape) > 0.5
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, (2,) + shape, endpoint=True).astype(dtype)
    image[1] = image[1].flat[0]  # a constant channel: its M2 is exactly 0
    parts = tile_partials(ids, int(ids.max()), (0,) * ndim, image)
    present = [v for v in np.unique(ids) if v]
    assert parts.label.tolist() == present
    for row, v in enumerate(present):
        for ch in range(2):
            values = [int(x) for x in image[ch][ids == v]]
            n, s, q = len(values), sum(values), sum(x * x for x in values)
            assert parts.isum[row, ch] == s
            assert parts.im2[row, ch] == (n * q - s * s) / n  # Python's int / int: correctly rounded
            assert (parts.imin[row, ch], parts.imax[row, ch]) == (min(values), max(values))
        assert parts.im2[row, 1] == 0


def test_exact_second_moment_beyond_int64():
    """Sums whose products overflow int64 fall back to Python ints, still exact."""
    from patchworks.labels._table import _exact_m2
    n, s = np.array([2 ** 21, 3]), np.array([2 ** 21 * 32767 - 5, 7])
    q = np.array([(2 ** 21 - 1) * 32767 ** 2 + 32762 ** 2, 25 + 1 + 1])  # all 32767 but one 32762; 5, 1, 1
    expected = [(int(a) * int(c) - int(b) ** 2) / int(a) for a, b, c in zip(n, s, q)]
    assert _exact_m2(n, s, q).tolist() == expected
    assert int(n[0]) * int(q[0]) >= 2 ** 63  # the case this test is about


def test_uint16_image_table_equals_regionprops(tmp_path):
    image = (blobs((40, 36), 4) * 60000).astype(np.uint16)
    out = tmp_path / "cells.zarr"
    labels = tile_process(image, threshold(0), tile_shape=(16, 12), write_to=out)
    assert_table_matches(read_table(out), np.asarray(labels), image)


@pytest.mark.parametrize("sequential", [True, False])
def test_owner_bounds_are_each_plans_own(sequential):
    """The table's owner search uses one array for all tiles: the same bound each TilePlan gives."""
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, 40)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64)
    tiles = rng.integers(0, 40, (30, 2))
    tiles = tiles[counts[tiles].min(axis=1) > 0]
    pairs = np.stack([offsets[t] + 1 + rng.integers(0, counts[t]) for t in tiles.T], axis=1).astype(np.uint64)
    plan = plan_relabel(counts, pairs, sequential=sequential)
    assert plan.tiles.own_lower().tolist() == [p.offset - p.base for p in plan.tiles]
    assert plan.n_boundary_labels > 0
