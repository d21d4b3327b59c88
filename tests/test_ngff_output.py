"""Label results as OME-NGFF label images: pyramid, voxel size, labels inside the user's image, validators."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from patchworks import TileGrid, merge_tile_labels, open_image, tile_process, threshold
from patchworks.io import _ngff_write
from patchworks.io._ngff_write import LabelImageWriter, register_label
from patchworks.testing import assert_labels_equivalent, random_blobs, write_ome_zarr

ome_zarr_models = pytest.importorskip("ome_zarr_models")
yaozarrs = pytest.importorskip("yaozarrs")
from ome_zarr_models import v04, v05  # noqa: E402

IMG2 = random_blobs((70, 90), seed=1)
IMG3 = random_blobs((10, 40, 52), seed=2, sigma=1.5)


def truth(image):
    return ndimage.label(image > 0.5)[0]


def levels_of(path):
    group = zarr.open_group(str(path), mode="r")
    return group, [np.asarray(group[str(k)][...]) for k in range(len(group.attrs["patchworks"]["levels"]))]


def ome(group):
    attrs = group.attrs.asdict()
    return attrs["ome"] if "ome" in attrs else attrs


def multiscale(group):
    meta = ome(group)
    return meta["multiscales"][0]


def scales(group):
    return [d["coordinateTransformations"][0]["scale"] for d in multiscale(group)["datasets"]]


def tree_hash(path: Path, skip=()):
    """sha256 of every file's bytes under ``path`` (the arrays' chunks and every JSON), by relative name."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# -- the pyramid ---------------------------------------------------------------------------


@pytest.mark.parametrize("image,tile_shape,levels", [
    (IMG2, (16, 16), 4),         # cores multiples of every factor; the image not a multiple of the tile
    (IMG2, (10, 14), 4),         # cores not multiples of 4 and 8: chunks shared between tiles
    (IMG2, (9, 90), 3),          # odd cores
    (IMG2, (1, 90), 3),          # plane-by-plane tiles along y
    (IMG3, (1, 20, 26), 3),      # plane-by-plane along z, y and x halved
    (IMG3, (4, 13, 16), 3),
])
@pytest.mark.parametrize("min_chunk", [1, 128 * 128], ids=["chunks-per-tile", "chunks-across-tiles"])
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "parts-and-derived"])
def test_every_level_is_strided_subsampling_of_level_0(tmp_path, monkeypatch, image, tile_shape, levels, min_chunk,
                                                        inline):
    import patchworks.io._ngff_write as W

    # 1: coarse chunks of core / factor, written by their tile (or derived from the finer level where
    # cores are not multiples of the factor); 128^2: chunks spanning several tiles' parts. Inline: the
    # levels from the first shared one on assembled by the driver from the tiles' parts; else part files
    # and a task per shared chunk, derived levels read from the finer one
    monkeypatch.setattr(W, "MIN_CHUNK_VOXELS", min_chunk)
    if not inline:
        monkeypatch.setattr(W, "INLINE_LEVEL_VOXELS", 0)
    seen = {"inline parts": 0, "shared chunks": 0}
    write_inline, write_shared = W.LabelImageWriter.write_inline, W.LabelImageWriter.write_shared_chunk

    def count_inline(self, parts, **kw):
        seen["inline parts"] += len(parts)
        return write_inline(self, parts, **kw)

    def count_shared(self, *args):
        seen["shared chunks"] += 1
        return write_shared(self, *args)

    monkeypatch.setattr(W.LabelImageWriter, "write_inline", count_inline)
    monkeypatch.setattr(W.LabelImageWriter, "write_shared_chunk", count_shared)
    out = tmp_path / "labels.zarr"
    lazy = tile_process(image, threshold(0.5), tile_shape=tile_shape, write_to=out, pyramid_levels=levels)
    group, data = levels_of(out)
    assert len(data) == levels
    np.testing.assert_array_equal(lazy.compute(), data[0])
    assert_labels_equivalent(data[0], truth(image))
    for k, level in enumerate(data):
        f = 2 ** k
        expected = data[0][(slice(None),) * (image.ndim - 2) + (slice(None, None, f), slice(None, None, f))]
        np.testing.assert_array_equal(level, expected)
    assert not list(tmp_path.glob(".patchworks-*")), "scratch left behind"
    if inline:  # whatever tiles could not write alone went through the driver
        assert seen["shared chunks"] == 0
    else:
        assert seen["inline parts"] == 0


@pytest.mark.parametrize("shard", [False, True])
def test_small_levels_go_inline_in_chunks_of_512_squared(shard):
    """The plan of the benchmarks' cases: levels whose chunks would be small, or shared, from the first that fits
    the budget on, are inline with chunks grown to 512^2 voxels (or the level); big 3-D levels stay with their
    tiles; sharded inner chunks follow the grown chunks."""
    from patchworks.io._ngff_write import INLINE_CHUNK_VOXELS, plan_levels

    def plan(shape, core, factor_axes):
        bounds = [np.arange(0, n + 1, c) for n, c in zip(shape, core)]
        factors = [tuple(2 ** k if a in factor_axes else 1 for a in range(len(shape))) for k in range(7)]
        return plan_levels(shape, bounds, factors=factors, shard=shard, plane_axes=())

    levels = plan((16384, 16384), (1024, 1024), (0, 1))  # 512^2 tiles in batches of 2 x 2
    assert [lv.inline for lv in levels] == [False] * 3 + [True] * 4
    assert [lv.chunks for lv in levels] == [(1024, 1024), (512, 512), (256, 256), (512, 512), (512, 512),
                                           (512, 512), (256, 256)]  # levels 5 and 6 in one chunk each
    assert all(np.prod(lv.chunks) <= INLINE_CHUNK_VOXELS for lv in levels[3:])
    if shard:
        assert [lv.inner for lv in levels[3:]] == [(256, 256)] * 4
    levels = plan((512, 512, 512), (128, 128, 128), (1, 2))[:2]  # level 1: 2^25 voxels, over the budget
    assert [(lv.chunks, lv.inline) for lv in levels] == [((128, 128, 128), False), ((128, 64, 64), False)]


def test_default_levels_stop_near_256_pixels_and_z_is_never_subsampled(tmp_path):
    image = np.zeros((3, 600, 1100), np.float32)
    image[:, 100:130, 900:1000] = 1
    tile_process(image, threshold(0.5), tile_shape=(3, 256, 256), write_to=tmp_path / "l.zarr")
    group = zarr.open_group(str(tmp_path / "l.zarr"), mode="r")
    shapes = [group[d["path"]].shape for d in multiscale(group)["datasets"]]
    assert shapes == [(3, 600, 1100), (3, 300, 550), (3, 150, 275), (3, 75, 138)]  # halved until <= 256
    assert scales(group) == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0], [1.0, 8.0, 8.0]]
    # chunks: level 0 the core; levels 1-3 are small (inline: the driver writes them) and their y and x
    # grow together up to 512^2 voxels or the level's extent
    assert [group[str(k)].chunks for k in range(4)] == [(3, 256, 256), (3, 300, 512), (3, 150, 275), (3, 75, 138)]
    assert group["0"].shards is None


def test_sharded_levels_are_exact_and_valid(tmp_path, monkeypatch):
    import patchworks.io._ngff_write as W

    monkeypatch.setattr(W, "SHARDING", True)  # shard = one task's share (a batch of small tiles), inner chunks one plane
    from patchworks.labels._batch import batch_block
    out = tmp_path / "s.zarr"
    tile_process(IMG3, threshold(0.5), tile_shape=(4, 16, 16), write_to=out, pyramid_levels=3)
    group, data = levels_of(out)
    block = batch_block(TileGrid(IMG3.shape, (4, 16, 16)))
    share = tuple(t * b for t, b in zip((4, 16, 16), block))
    assert group["0"].shards == share and group["0"].chunks == (1,) + share[1:]
    for k in range(3):
        np.testing.assert_array_equal(data[k], data[0][:, ::2 ** k, ::2 ** k])
    v05.ImageLabel.from_zarr(group)
    yaozarrs.validate_zarr_store(str(out))


@pytest.mark.parametrize("tile_shape", [(4, 16, 16), (3, 13, 10)], ids=["aligned", "odd-cores"])
def test_zarrs_pipeline_shards_by_default_and_levels_stay_exact(tmp_path, tile_shape):
    pytest.importorskip("zarrs")
    out = tmp_path / "z.zarr"
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        lazy = tile_process(IMG3, threshold(0.5), tile_shape=tile_shape, write_to=out, pyramid_levels=3)
        group, data = levels_of(out)
    from patchworks.labels._batch import batch_block
    # a shard is one task's share: a batch of small tiles (the core of the last, clipped batch may be smaller)
    share = tuple(t * b for t, b in zip(tile_shape, batch_block(TileGrid(IMG3.shape, tile_shape))))
    assert group["0"].shards == share and group["0"].chunks == (1,) + share[1:]
    np.testing.assert_array_equal(lazy.compute(), data[0])
    assert_labels_equivalent(data[0], truth(IMG3))
    for k in range(3):
        np.testing.assert_array_equal(data[k], data[0][:, ::2 ** k, ::2 ** k])
    v05.ImageLabel.from_zarr(group)
    # without zarrs configured, the default pipeline writes unsharded levels (sharding would cost 2-5x)
    tile_process(IMG3, threshold(0.5), tile_shape=tile_shape, write_to=out, overwrite=True, pyramid_levels=3)
    assert levels_of(out)[0]["0"].shards is None


def test_merge_tile_labels_writes_the_same_label_image(tmp_path):
    import dask.array as da

    mask = IMG2 > 0.5
    per_tile = da.from_array(mask, chunks=(20, 30)).map_blocks(lambda b: ndimage.label(b)[0].astype(np.uint32),
                                                                dtype=np.uint32)
    merge_tile_labels(per_tile, write_to=tmp_path / "m.zarr", pyramid_levels=3, voxel_size=(0.5, 0.25))
    group, data = levels_of(tmp_path / "m.zarr")
    assert_labels_equivalent(data[0], truth(IMG2))
    np.testing.assert_array_equal(data[2], data[0][::4, ::4])
    assert scales(group)[2] == [2.0, 1.0]


# -- layout and metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("image", [IMG2, IMG3], ids=["2d", "3d"])
def test_standalone_label_image_passes_third_party_validators(tmp_path, fmt, image):
    out = tmp_path / "cells.ome.zarr"
    tile_process(image, threshold(0.5), tile_shape=16, write_to=out, zarr_format=fmt, pyramid_levels=2,
                 voxel_size=[(2.0, "um")] * (image.ndim - 2) + [(0.5, "micrometer"), (0.5, "micrometer")])
    group = zarr.open_group(str(out), mode="r")
    meta = ome(group)
    label = meta["image-label"]
    assert label == {"version": "0.5" if fmt == 3 else "0.4"}, "no colors, no properties, no source image"
    axes = multiscale(group)["axes"]
    assert [a["name"] for a in axes] == list("zyx"[-image.ndim:])
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in axes)
    assert scales(group)[1][-2:] == [1.0, 1.0]
    assert group.attrs["patchworks"]["complete"] is True
    if fmt == 3:
        assert "multiscales" not in group.attrs  # 0.5: everything NGFF under "ome", never mixed
        assert all(group[str(k)].metadata.dimension_names == tuple("zyx"[-image.ndim:]) for k in range(2))
        v05.ImageLabel.from_zarr(group)
        yaozarrs.validate_zarr_store(str(out))
    else:
        assert "ome" not in group.attrs and group["0"].metadata.zarr_format == 2
        v04.ImageLabel.from_zarr(group)


def test_output_format_array_is_a_bare_array(tmp_path):
    tile_process(IMG2, threshold(0.5), tile_shape=16, write_to=tmp_path / "a.zarr", output_format="array")
    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert array.chunks == (16, 16) and array.attrs["patchworks"]["complete"] is True
    assert_labels_equivalent(array[...], truth(IMG2))


# -- voxel size ------------------------------------------------------------------------------


def _label_scales(tmp_path, source, **kwargs):
    out = tmp_path / "l.zarr"
    tile_process(source, threshold(0.5), tile_shape=16, write_to=out, pyramid_levels=2, overwrite=True, **kwargs)
    group = zarr.open_group(str(out), mode="r")
    return scales(group), [a.get("unit") for a in multiscale(group)["axes"]]


def test_voxel_size_from_ome_zarr(tmp_path):
    write_ome_zarr(tmp_path / "img.ome.zarr", np.stack([IMG3, IMG3]), axes="czyx", scale=(1, 2.0, 0.3, 0.3))
    assert open_image(tmp_path / "img.ome.zarr", channel=1).voxel_size == (2.0, 0.3, 0.3)
    got, units = _label_scales(tmp_path, tmp_path / "img.ome.zarr", channel=1)
    assert got == [[2.0, 0.3, 0.3], [2.0, 0.6, 0.6]] and units == ["micrometer"] * 3
    assert open_image(tmp_path / "img.ome.zarr", level=1).voxel_size == (1.0, 2.0, 0.6, 0.6)


def test_voxel_size_from_ome_tiff(tmp_path):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, IMG3, metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                                           "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "nm"})
    source = open_image(path)
    assert source.voxel_size == (1.5, 0.25, 0.25) and source.units == ("nanometer", "micrometer", "micrometer")
    got, units = _label_scales(tmp_path, path)
    assert got[1] == [1.5, 0.5, 0.5] and units == ["nanometer", "micrometer", "micrometer"]


def test_voxel_size_from_imagej_tiff(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, IMG3, imagej=True, resolution=(1 / 0.2, 1 / 0.4),
                     metadata={"spacing": 3.0, "unit": "micron", "axes": "ZYX"})
    assert open_image(path).voxel_size == pytest.approx((3.0, 0.4, 0.2))
    got, units = _label_scales(tmp_path, path)
    assert got[0] == pytest.approx([3.0, 0.4, 0.2]) and units == ["micrometer"] * 3


def test_voxel_size_parameter_overrides_the_file(tmp_path):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, IMG2, metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    got, units = _label_scales(tmp_path, path, voxel_size=((1.0, "nm"), (2.0, "nm")))
    assert got == [[1.0, 2.0], [2.0, 4.0]] and units == ["nanometer", "nanometer"]
    got, units = _label_scales(tmp_path, IMG2)  # numpy: no voxel size, scale 1 and no unit
    assert got[0] == [1.0, 1.0] and units == [None, None]


# -- into the user's image -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("axes,channel", [("zyx", None), ("czyx", 0), ("yx", None), ("cyx", 1)])
def test_labels_into_image_follow_its_levels_and_touch_nothing_else(tmp_path, fmt, axes, channel):
    spatial = IMG3 if "z" in axes else IMG2
    data = np.stack([spatial, 1 - spatial]) if "c" in axes else spatial
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, data, axes=axes, scale=[1.0] * (data.ndim - 2) + [0.4, 0.4], levels=3, zarr_format=fmt)
    before = tree_hash(image)

    out = tile_process(image, threshold(0.5), tile_shape=16, channel=channel, labels_into=image, name="cells")
    assert out.shape == spatial.shape
    assert_labels_equivalent(out.compute(), truth(spatial if channel in (None, 0) else 1 - spatial))
    assert tree_hash(image, skip=("labels",)) == before, "the image's own arrays or metadata changed"
    assert not list(tmp_path.glob(".patchworks-*"))

    root = zarr.open_group(str(image), mode="r")
    labels = zarr.open_group(str(image / "labels" / "cells"), mode="r")
    assert ome(root["labels"])["labels"] == ["cells"]
    assert ome(labels)["image-label"]["source"] == {"image": "../../"}
    # our own check, which neither validator makes: each level has the image's level shape and scale
    image_ms, label_ms = multiscale(root), multiscale(labels)
    assert label_ms["axes"] == image_ms["axes"]
    for d_img, d_lab in zip(image_ms["datasets"], label_ms["datasets"], strict=True):
        shape = list(root[d_img["path"]].shape)
        if "c" in axes:
            shape[axes.index("c")] = 1
        assert list(labels[d_lab["path"]].shape) == shape
        assert d_lab["coordinateTransformations"] == d_img["coordinateTransformations"]
    level0 = labels["0"][...]
    for k in range(3):
        np.testing.assert_array_equal(labels[str(k)][...], level0[..., ::2 ** k, ::2 ** k])
    if fmt == 3:
        v05.Image.from_zarr(root)  # follows labels/ and checks each label image
        yaozarrs.validate_zarr_store(str(image))
        yaozarrs.validate_zarr_store(str(image / "labels" / "cells"))  # follows source.image back
    else:
        v04.Image.from_zarr(root)
        v04.ImageLabel.from_zarr(labels)


def test_without_labels_into_nothing_is_written_inside_the_input(tmp_path):
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG2, axes="yx")
    before = tree_hash(image)
    tile_process(image, threshold(0.5), tile_shape=16, write_to=tmp_path / "cells.zarr")
    assert tree_hash(image) == before and not (image / "labels").exists()
    with pytest.raises(ValueError, match="is the input; patchworks never writes to its input"):
        tile_process(image, threshold(0.5), tile_shape=16, write_to=image / "labels" / "x")


def test_a_second_label_image_is_appended_and_overwrite_replaces(tmp_path):
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG2, axes="yx")
    tile_process(image, threshold(0.5), tile_shape=16, labels_into=image, name="cells")
    tile_process(image, threshold(0.3), tile_shape=16, labels_into=image, name="nuclei")
    assert ome(zarr.open_group(str(image / "labels")))["labels"] == ["cells", "nuclei"]
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        tile_process(image, threshold(0.6), tile_shape=16, labels_into=image, name="cells")
    out = tile_process(image, threshold(0.6), tile_shape=16, labels_into=image, name="cells", overwrite=True)
    assert_labels_equivalent(out.compute(), ndimage.label(IMG2 > 0.6)[0])
    assert ome(zarr.open_group(str(image / "labels")))["labels"] == ["nuclei", "cells"]


def test_concurrent_registrations_never_lose_an_entry(tmp_path):
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG2, axes="yx")
    names = [f"run{i}" for i in range(12)]
    threads = [threading.Thread(target=register_label, args=(image, n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ome(zarr.open_group(str(image / "labels")))["labels"]) == sorted(names)


@pytest.mark.parametrize("coarse", ["inline", "shared chunks"])
def test_a_failed_run_leaves_no_entry_and_resumes_to_the_same_result(tmp_path, monkeypatch, coarse):
    """The pyramid step dies after a chunk or two, whether the coarse levels are written by the driver from the
    tiles' parts (inline) or by a task per chunk shared between tiles."""
    if coarse == "shared chunks":
        monkeypatch.setattr(_ngff_write, "INLINE_LEVEL_VOXELS", 0)
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG2, axes="yx", levels=3)  # level 1 (x2) shares chunks between (9, 18) tiles
    reference = tile_process(image, threshold(0.5), tile_shape=(9, 18), pyramid_levels=3,
                             write_to=tmp_path / "ref.zarr")
    calls = {"n": 0}
    original = LabelImageWriter.write_shared_chunk if coarse == "shared chunks" else LabelImageWriter._put

    def crash_midway(self, *args):  # the second write of the pyramid step raises
        if coarse == "inline" and args[0] == 0:  # level 0: the relabel tasks, before the pyramid step
            return original(self, *args)
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("killed during the pyramid")
        return original(self, *args)

    name = "write_shared_chunk" if coarse == "shared chunks" else "_put"
    monkeypatch.setattr(LabelImageWriter, name, crash_midway)
    with pytest.raises(RuntimeError, match="killed during the pyramid"):
        tile_process(image, threshold(0.5), tile_shape=(9, 18), labels_into=image, name="cells", client=False)
    assert calls["n"] == 2
    assert "cells" not in ome(zarr.open_group(str(image / "labels"))).get("labels", [])
    assert zarr.open_group(str(image / "labels" / "cells")).attrs["patchworks"]["complete"] is False
    monkeypatch.setattr(LabelImageWriter, name, original)

    out = tile_process(image, threshold(0.5), tile_shape=(9, 18), labels_into=image, name="cells")
    np.testing.assert_array_equal(out.compute(), reference.compute())
    ref_group = zarr.open_group(str(tmp_path / "ref.zarr"))
    group = zarr.open_group(str(image / "labels" / "cells"))
    for k in range(len(multiscale(group)["datasets"])):
        np.testing.assert_array_equal(group[str(k)][...], ref_group[str(k)][...])
    assert ome(zarr.open_group(str(image / "labels")))["labels"] == ["cells"]

    # a finished run re-run is a no-op: no byte of the label image is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (image / "labels").rglob("*") if p.is_file()}
    tile_process(image, threshold(0.5), tile_shape=(9, 18), labels_into=image, name="cells")
    assert {p: p.stat().st_mtime_ns for p in (image / "labels").rglob("*") if p.is_file()} == stamps


# -- errors ----------------------------------------------------------------------------------


def test_bad_options_are_named(tmp_path):
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG2, axes="yx", levels=2)
    fn = threshold(0.5)
    with pytest.raises(ValueError, match=r"output_format='zarr': use 'ngff'"):
        tile_process(IMG2, fn, output_format="zarr")
    with pytest.raises(ValueError, match=r"pyramid_levels=0: use an int >= 1"):
        tile_process(IMG2, fn, pyramid_levels=0)
    with pytest.raises(ValueError, match=r"voxel_size=\(1.0,\): give one positive number per spatial axis \(2\)"):
        tile_process(IMG2, fn, voxel_size=(1.0,))
    with pytest.raises(ValueError, match=r"unit 'parsec-ish' is not a length unit"):
        tile_process(IMG2, fn, voxel_size=[(1.0, "parsec-ish")] * 2)
    with pytest.raises(ValueError, match=r"name=None: labels_into= needs the label image's name"):
        tile_process(image, fn, labels_into=image)
    with pytest.raises(ValueError, match=r"zarr_format=2: .* is zarr v3 and its labels must be too"):
        tile_process(image, fn, labels_into=image, name="x", zarr_format=2)
    with pytest.raises(ValueError, match=r"pyramid_levels=3: labels written into .* get the image's 2 levels"):
        tile_process(image, fn, labels_into=image, name="x", pyramid_levels=3)
    zarr.create_array(store=tmp_path / "plain.zarr", shape=IMG2.shape, dtype="f4")
    with pytest.raises(ValueError, match=r"labels_into=.*plain.zarr' is not an OME-Zarr image"):
        tile_process(IMG2, fn, labels_into=tmp_path / "plain.zarr", name="x")
    zarr.open_group(tmp_path / "group.zarr", mode="w")
    with pytest.raises(ValueError, match=r"labels_into=.* has no 'multiscales' metadata"):
        tile_process(IMG2, fn, labels_into=tmp_path / "group.zarr", name="x")
    with pytest.raises(ValueError, match=r"the labels have shape \(35, 45\) but the image's level 0 has \(70, 90\)"):
        tile_process(image, fn, level=1, labels_into=image, name="x")
    with pytest.raises(ValueError, match=r"not an OME-NGFF image .* pass output_format='array'"):
        tile_process(np.zeros(20), fn, write_to=tmp_path / "line.zarr")
    assert not (image / "labels").exists()
    # a 1-D result without write_to stays possible: a temporary plain array
    assert np.unique(tile_process(np.r_[0, 1, 1, 0, 1], fn, tile_shape=2, compute=True)).size == 3


def test_label_image_json_is_abridged_as_documented(tmp_path):
    """The layout docs/ngff-output.md shows: keys present at each level of zarr.json."""
    tile_process(IMG3, threshold(0.5), tile_shape=16, write_to=tmp_path / "c.zarr", pyramid_levels=2)
    meta = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())
    assert sorted(meta["attributes"]) == ["ome", "patchworks"]
    assert sorted(meta["attributes"]["ome"]) == ["image-label", "multiscales", "version"]
    record = meta["attributes"]["patchworks"]
    assert {"complete", "fingerprint", "levels", "max_label", "n_objects", "tile_shape"} <= set(record)
    level = json.loads((tmp_path / "c.zarr" / "0" / "zarr.json").read_text())
    assert level["dimension_names"] == ["z", "y", "x"] and level["chunk_grid"]["configuration"]["chunk_shape"] == [
        10, 16, 16]
