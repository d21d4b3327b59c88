"""Tests for patchworks.io._sources: lazy image sources and zarr output creation."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr

from patchworks.io._sources import LazySource, create_output, open_image, same_location
from patchworks.io._ngff import parse_multiscales

h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(0)
IMG3 = RNG.integers(0, 1000, (6, 40, 50), dtype=np.uint16)
CZYX = RNG.integers(0, 255, (3, 4, 64, 64), dtype=np.uint8)
WINDOW3 = (slice(1, 4), slice(5, 30), slice(10, 45))


def check_source(src, oracle, key, *, axes=None):
    """shape, dtype, window read, pickle round-trip, then read again."""
    assert isinstance(src, LazySource)
    assert src.shape == oracle.shape
    assert src.dtype == oracle.dtype
    assert src.ndim == oracle.ndim
    if axes is not None:
        assert src.axes == axes
    np.testing.assert_array_equal(src[key], oracle[key])
    blob = pickle.dumps(src)
    assert len(blob) < 4000, "LazySource must pickle as a location, not data"
    clone = pickle.loads(blob)
    assert clone._handle is None
    np.testing.assert_array_equal(clone[key], oracle[key])
    assert clone.shape == src.shape and clone.axes == src.axes
    assert "LazySource(" in repr(clone)


# ---------------------------------------------------------------------------- zarr


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_array(tmp_path, fmt):
    p = tmp_path / "img.zarr"
    z = zarr.create_array(store=str(p), shape=IMG3.shape, chunks=(2, 16, 16), dtype=IMG3.dtype, zarr_format=fmt)
    z[:] = IMG3
    src = open_image(p)
    check_source(src, IMG3, WINDOW3)
    assert src.chunks == (2, 16, 16)
    assert f"zarr v{fmt}" in src.description
    # ints, Ellipsis and negative indices
    np.testing.assert_array_equal(src[2, ..., 3:7], IMG3[2, ..., 3:7])
    np.testing.assert_array_equal(src[-1], IMG3[-1])
    np.testing.assert_array_equal(src[..., -5:], IMG3[..., -5:])
    # also accept str and an already-opened zarr.Array
    check_source(open_image(str(p)), IMG3, WINDOW3)
    check_source(open_image(zarr.open_array(str(p), mode="r")), IMG3, WINDOW3)


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_group_component(tmp_path, fmt):
    p = tmp_path / "g.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=fmt)
    g.create_array("raw", shape=IMG3.shape, chunks=(3, 20, 25), dtype=IMG3.dtype)[:] = IMG3
    g.create_array("a/b", shape=(5, 5), chunks=(5, 5), dtype="f4")[:] = np.eye(5, dtype="f4")
    check_source(open_image(p, component="raw"), IMG3, WINDOW3)
    src = open_image(p, component="a/b")
    np.testing.assert_array_equal(src[1:3, :], np.eye(5, dtype="f4")[1:3])
    assert "a/b" in src.description
    with pytest.raises(ValueError, match=r"2 arrays.*raw.*component="):
        open_image(p)
    with pytest.raises(ValueError, match=r"component='nope' not found.*raw"):
        open_image(p, component="nope")


def test_zarr_group_single_array(tmp_path):
    p = tmp_path / "one.zarr"
    g = zarr.open_group(str(p), mode="w")
    g.create_array("only", shape=IMG3.shape, chunks=IMG3.shape, dtype=IMG3.dtype)[:] = IMG3
    check_source(open_image(p), IMG3, WINDOW3)


def test_zarr_dimension_names_and_channel(tmp_path):
    p = tmp_path / "dims.zarr"
    z = zarr.create_array(
        store=str(p), shape=CZYX.shape, chunks=(1, 2, 32, 32), dtype=CZYX.dtype, dimension_names=["c", "z", "y", "x"]
    )
    z[:] = CZYX
    assert open_image(p).axes == "czyx"
    src = open_image(p, channel=2)
    check_source(src, CZYX[2], (slice(0, 2), slice(3, 40), slice(None)), axes="zyx")
    assert src.chunks == (2, 32, 32)


def write_ome_zarr(path, data, version):
    """Two-level OME-Zarr with czyx axes, metadata written by hand."""
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    levels = [data, data[:, :, ::2, ::2]]
    for i, lev in enumerate(levels):
        g.create_array(str(i), shape=lev.shape, chunks=(1, 2, 16, 16), dtype=lev.dtype)[:] = lev
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2**i, 2**i]}]}
        for i in range(2)
    ]
    ms = {"axes": axes, "datasets": datasets, "name": "img"}
    if version == "0.4":
        g.attrs.put({"multiscales": [{"version": "0.4", **ms}]})
        assert (path / ".zattrs").exists()
    else:
        g.attrs.put({"ome": {"version": "0.5", "multiscales": [ms]}})
        assert "ome" in json.loads((path / "zarr.json").read_text())["attributes"]
    return levels


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels_and_channel(tmp_path, version):
    p = tmp_path / "img.ome.zarr"
    levels = write_ome_zarr(p, CZYX, version)
    key = (slice(None), slice(1, 3), slice(5, 30), slice(2, 20))
    check_source(open_image(p), levels[0], key, axes="czyx")
    check_source(open_image(p, level=1), levels[1], key, axes="czyx")
    src = open_image(p, level=1, channel=1)
    check_source(src, levels[1][1], key[1:], axes="zyx")
    assert src.chunks == (2, 16, 16)
    with pytest.raises(ValueError, match=r"level=2 out of range.*0\.\.1"):
        open_image(p, level=2)
    with pytest.raises(ValueError, match=r"channel=3 out of range.*0\.\.2"):
        open_image(p, channel=3)


def test_ngff_parse_variants():
    assert parse_multiscales({}) is None
    ms = parse_multiscales({"multiscales": [{"axes": ["t", "c", "Y", "X"], "datasets": [{"path": "s0"}]}]})
    assert ms.axes == "tcyx" and ms.paths == ("s0",)
    ms = parse_multiscales({"multiscales": [{"version": "0.2", "datasets": [{"path": "0"}, {"path": "1"}]}]})
    assert ms.axes is None and ms.paths == ("0", "1") and ms.version == "0.2"
    with pytest.raises(ValueError, match="datasets"):
        parse_multiscales({"multiscales": [{"datasets": []}]})


def test_channel_without_c_axis(tmp_path):
    p = tmp_path / "img.zarr"
    zarr.create_array(store=str(p), shape=(4, 4), chunks=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match=r"channel=0 given but .* no channel axis"):
        open_image(p, channel=0)
    with pytest.raises(ValueError, match=r"level=1 .*single resolution level.*level=0"):
        open_image(p, level=1)


def _snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            fp = os.path.join(d, f)
            st = os.stat(fp)
            out[fp] = (st.st_mtime_ns, st.st_size, hashlib.md5(open(fp, "rb").read()).hexdigest())
    out["__dirs__"] = sorted(d for d, _, _ in os.walk(root))
    return out


@pytest.mark.parametrize("fmt", [2, 3])
def test_open_never_modifies_input(tmp_path, fmt):
    p = tmp_path / "img.ome.zarr"
    write_ome_zarr(p, CZYX, "0.4" if fmt == 2 else "0.5")
    before = _snapshot(p)
    src = open_image(p, level=1, channel=0)
    src[0:2, :8, :8]
    pickle.loads(pickle.dumps(src))[1, 3:5, :]
    open_image(zarr.open_array(str(p / "0"), mode="r"))[0, 0, :3, :3]
    assert _snapshot(p) == before


# ---------------------------------------------------------------------------- TIFF


def test_tiff_tiled_2d(tmp_path):
    img = RNG.integers(0, 60000, (100, 130), dtype=np.uint16)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, img, tile=(32, 32))
    src = open_image(p)
    check_source(src, img, (slice(10, 70), slice(33, 129)), axes="yx")
    assert src.chunks == (32, 32)
    assert "TIFF" in src.description


def test_ome_tiff_channel(tmp_path):
    p = tmp_path / "a.ome.tiff"
    tifffile.imwrite(p, CZYX, tile=(32, 32), ome=True, metadata={"axes": "CZYX"})
    src = open_image(p)
    check_source(src, CZYX, (slice(None), 2, slice(3, 50), slice(40, 64)), axes="czyx")
    check_source(open_image(p, channel=1), CZYX[1], (slice(1, 3), slice(0, 33), slice(31, 33)), axes="zyx")
    with pytest.raises(ValueError, match=r"level=1 out of range.*0\.\.0"):
        open_image(p, level=1)


def test_tiff_rgb_samples_axis(tmp_path):
    rgb = RNG.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rgb, photometric="rgb")
    assert open_image(p).axes == "yxc"
    check_source(open_image(p, channel=2), rgb[..., 2], (slice(5, 20), slice(0, 40)), axes="yx")


def test_tiff_pyramid_level(tmp_path):
    base = RNG.integers(0, 255, (2, 128, 128), dtype=np.uint8)
    p = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(base, tile=(32, 32), subifds=1, metadata={"axes": "CYX"})
        tw.write(base[:, ::2, ::2], tile=(32, 32), subfiletype=1)
    check_source(open_image(p, level=1), base[:, ::2, ::2], (slice(None), slice(5, 40), slice(20, 64)), axes="cyx")
    check_source(open_image(p, level=1, channel=0), base[0, ::2, ::2], (slice(5, 40), slice(20, 64)), axes="yx")


def test_tiff_zstack_multipage(tmp_path):
    p = tmp_path / "stack.tiff"
    tifffile.imwrite(p, IMG3)  # one page per z plane
    with tifffile.TiffFile(p) as t:
        assert len(t.pages) == IMG3.shape[0]
    check_source(open_image(p), IMG3, WINDOW3)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_tiled_tiff_is_not_loaded_whole(tmp_path):
    img = np.random.default_rng(1).integers(0, 60000, (4096, 4096), dtype=np.uint16)  # 32 MiB
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, img, tile=(256, 256))
    src = open_image(p)
    src[:1, :1]  # open the file, warm up zarr outside the measurement
    key = (slice(1024, 1280), slice(2048, 2304))
    out = {}
    peak = _peak_bytes(lambda: out.setdefault("w", src[key]))
    np.testing.assert_array_equal(out["w"], img[key])
    assert peak < 4 * 2**20, f"window read allocated {peak / 2**20:.1f} MiB"
    # also after unpickling (reopen happens inside the measured read)
    clone = pickle.loads(pickle.dumps(src))
    assert _peak_bytes(lambda: clone[key]) < 4 * 2**20


def test_large_striped_zstack_reads_one_plane(tmp_path):
    stack = np.random.default_rng(2).integers(0, 60000, (16, 1024, 1024), dtype=np.uint16)  # 32 MiB
    p = tmp_path / "bigstack.tif"
    tifffile.imwrite(p, stack)  # striped, one page per plane
    src = open_image(p)
    src[0, :1, :1]
    key = (9, slice(100, 300), slice(500, 700))
    out = {}
    peak = _peak_bytes(lambda: out.setdefault("w", src[key]))
    np.testing.assert_array_equal(out["w"], stack[key])
    assert peak < 4 * 2**20, f"plane window read allocated {peak / 2**20:.1f} MiB"


def test_tiff_threaded_reads(tmp_path):
    img = RNG.integers(0, 60000, (256, 256), dtype=np.uint16)
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, img, tile=(32, 32), compression="zlib")
    src = pickle.loads(pickle.dumps(open_image(p)))  # first read happens concurrently
    errors = []

    def work(i):
        try:
            for j in range(8):
                k = (slice(8 * i, 8 * i + 40), slice(8 * j, 8 * j + 100))
                np.testing.assert_array_equal(src[k], img[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------- HDF5 / npy


def test_hdf5_single_dataset(tmp_path):
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("grp/data", data=IMG3, chunks=(1, 20, 25))
    src = open_image(p)
    check_source(src, IMG3, WINDOW3)
    assert src.chunks == (1, 20, 25)
    assert "HDF5" in src.description


def test_hdf5_component_and_dataset_object(tmp_path):
    p = tmp_path / "a.hdf5"
    with h5py.File(p, "w") as f:
        f["raw"] = IMG3
        f["seg/labels"] = IMG3.astype(np.uint32) * 2
    check_source(open_image(p, component="seg/labels"), IMG3.astype(np.uint32) * 2, WINDOW3)
    with pytest.raises(ValueError, match=r"2 datasets.*raw.*seg/labels.*component="):
        open_image(p)
    with pytest.raises(ValueError, match=r"component='seg' is not a dataset"):
        open_image(p, component="seg")
    with h5py.File(p, "r") as f:
        src = open_image(f["raw"])
    check_source(src, IMG3, WINDOW3)  # works after the user's file is closed


def test_hdf5_threaded_reads(tmp_path):
    p = tmp_path / "t.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=IMG3, chunks=(1, 8, 8), compression="gzip")
    src = open_image(p)
    results = [None] * 6

    def work(i):
        results[i] = src[i, :, :]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(results[i], IMG3[i])


def test_npy(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, IMG3)
    src = open_image(p)
    check_source(src, IMG3, WINDOW3)
    w = src[WINDOW3]
    assert type(w) is np.ndarray and w.flags.writeable  # a copy, not a view of the memmap
    assert src.chunks is None


def test_arrays_returned_unchanged():
    da = pytest.importorskip("dask.array")
    a = np.zeros((3, 3))
    assert open_image(a) is a
    d = da.zeros((4, 4), chunks=2)
    assert open_image(d) is d
    with pytest.raises(ValueError, match="channel="):
        open_image(a, channel=0)


def test_memmap_returned_unchanged(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype="u1", shape=(4, 4))
    assert open_image(mm) is mm


# ---------------------------------------------------------------------------- errors


def test_unknown_suffix(tmp_path):
    p = tmp_path / "x.xyz"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"unknown format \(suffix '\.xyz'\); patchworks reads zarr"):
        open_image(p)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.zarr"):
        open_image(tmp_path / "nothere.zarr")
    with pytest.raises(FileNotFoundError, match="nothere.tif"):
        open_image(str(tmp_path / "nothere.tif"))


def test_non_zarr_directory(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a zarr store"):
        open_image(d)


@pytest.mark.parametrize("bad", [3, [1, 2], None, {"a": 1}])
def test_wrong_type(bad):
    with pytest.raises(TypeError, match=r"expected a path .*numpy array"):
        open_image(bad)


@pytest.mark.parametrize("content", [b"this is not a tiff at all" * 10, b""])
def test_corrupt_tiff(tmp_path, content):
    p = tmp_path / "x.tif"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=r"could not read image=.*x\.tif") as info:
        open_image(p)
    assert info.value.__cause__ is not None


def test_corrupt_npy_and_h5(tmp_path):
    for name in ("x.npy", "x.h5"):
        p = tmp_path / name
        p.write_bytes(b"garbage" * 5)
        with pytest.raises(ValueError, match=rf"could not read image=.*{name}"):
            open_image(p)


def test_bad_index(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, IMG3)
    src = open_image(p)
    with pytest.raises(IndexError):
        src[0, 0, 0, 0]
    with pytest.raises(IndexError):
        src[10]
    with pytest.raises(TypeError):
        src[[1, 2]]
    assert not hasattr(src, "__array__")


# ---------------------------------------------------------------------------- output


def test_create_output_v3_default(tmp_path):
    p = tmp_path / "out.zarr"
    z = create_output(p, shape=(10, 64, 64), dtype=np.uint32, chunks=(5, 32, 32), attributes={"k": 1})
    assert z.metadata.zarr_format == 3
    assert z.chunks == (5, 32, 32) and z.dtype == np.uint32 and z.shape == (10, 64, 64)
    assert z.attrs["k"] == 1
    z[:] = 7
    codecs = json.loads((p / "zarr.json").read_text())["codecs"]
    assert [c["configuration"]["level"] for c in codecs if c["name"] == "zstd"] == [1]  # no shuffle: see _sources
    np.testing.assert_array_equal(open_image(p)[0, :2, :2], 7)


def test_create_output_v2_and_component(tmp_path):
    p = tmp_path / "out.zarr"
    z = create_output(p, shape=(8, 8), dtype="u2", chunks=(4, 4), component="labels/cells", zarr_format=2)
    assert z.metadata.zarr_format == 2 and z.chunks == (4, 4)
    assert (p / "labels" / "cells" / ".zarray").exists()
    z[:] = 3
    np.testing.assert_array_equal(open_image(p, component="labels/cells")[:], 3)
    # a second component in the same store is fine, the existing one is kept
    create_output(p, shape=(2, 2), dtype="u1", chunks=(2, 2), component="other", zarr_format=2)
    np.testing.assert_array_equal(open_image(p, component="labels/cells")[:], 3)


def test_create_output_exists(tmp_path):
    p = tmp_path / "out.zarr"
    create_output(p, shape=(4, 4), dtype="u1", chunks=(2, 2))[:] = 5
    with pytest.raises(FileExistsError, match=r"out\.zarr.*pass overwrite=True to replace it, or choose another path"):
        create_output(p, shape=(4, 4), dtype="u1", chunks=(2, 2))
    z = create_output(p, shape=(6, 6), dtype="u2", chunks=(3, 3), overwrite=True)
    assert z.shape == (6, 6) and z.chunks == (3, 3)
    np.testing.assert_array_equal(z[:], 0)
    with pytest.raises(ValueError, match="chunks"):
        create_output(tmp_path / "o2.zarr", shape=(4, 4), dtype="u1", chunks=(2,))


def test_same_location(tmp_path):
    p = tmp_path / "img.zarr"
    g = zarr.open_group(str(p), mode="w")
    g.create_array("raw", shape=(4, 4), chunks=(4, 4), dtype="u1")
    os.symlink(p, tmp_path / "link.zarr")
    assert same_location(p, str(p))
    assert same_location(p, tmp_path / "link.zarr")
    assert same_location(str(tmp_path / "sub" / ".." / "img.zarr"), p)
    assert same_location(open_image(p, component="raw"), p)  # writing img.zarr destroys img.zarr/raw
    assert same_location(zarr.open_array(str(p / "raw"), mode="r"), p / "raw")
    assert not same_location(p, tmp_path / "other.zarr")
    assert not same_location(np.zeros(3), np.zeros(3))
    assert not same_location(np.zeros(3), p)
    # two arrays of one store are different locations
    g.create_array("labels", shape=(4, 4), chunks=(4, 4), dtype="u1")
    assert not same_location(open_image(p, component="raw"), zarr.open_array(str(p / "labels"), mode="r"))
