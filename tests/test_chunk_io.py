"""Direct whole-chunk I/O (patchworks.io._chunk_io) against zarr itself, the oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from patchworks.io._chunk_io import chunk_files, read_region, write_region
from patchworks.io._sources import create_output, open_image


def _boxes(shape, chunks):
    """Every chunk of the grid as a tuple of slices, clipped by the array's end."""
    for index in np.ndindex(*[-(-s // c) for s, c in zip(shape, chunks)]):
        yield tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 23), min_size=1, max_size=3),
       chunk=st.integers(1, 9), dtype=st.sampled_from(["uint8", "uint16", "uint32", "int64", "float32"]),
       seed=st.integers(0, 2**16))
def test_direct_writes_and_reads_equal_zarr(tmp_path_factory, shape, chunk, dtype, seed):
    shape = tuple(shape)
    chunks = tuple(min(chunk + k, s) for k, s in enumerate(shape))
    data = np.random.default_rng(seed).integers(0, 7, shape).astype(dtype)
    root = tmp_path_factory.mktemp("direct")
    ours = create_output(root / "ours.zarr", shape=shape, dtype=dtype, chunks=chunks)
    theirs = create_output(root / "theirs.zarr", shape=shape, dtype=dtype, chunks=chunks)
    assert chunk_files(ours) is not None
    for box in _boxes(shape, chunks):
        write_region(ours, box, data[box])
        theirs[box] = data[box]
    np.testing.assert_array_equal(zarr.open_array(root / "ours.zarr", mode="r")[...], data)
    # the same bytes as zarr writes, chunk for chunk
    for path in sorted((root / "theirs.zarr").rglob("c/**/*")):
        if path.is_file():
            assert (root / "ours.zarr" / path.relative_to(root / "theirs.zarr")).read_bytes() == path.read_bytes()
    # reads of any box, inside one chunk or across several, and with an int on one axis
    reader = zarr.open_array(root / "theirs.zarr", mode="r")
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        start = [int(rng.integers(0, s)) for s in shape]
        stop = [int(rng.integers(a + 1, s + 1)) for a, s in zip(start, shape)]
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        assert chunk_files(reader).read(box) is not None  # read directly, not through zarr
        got = read_region(reader, box)
        np.testing.assert_array_equal(got, data[box])
        assert got.dtype == data.dtype and got.flags.writeable
        axis = int(rng.integers(0, len(shape)))
        picked = box[:axis] + (int(rng.integers(-shape[axis], shape[axis])),) + box[axis + 1:]
        np.testing.assert_array_equal(read_region(reader, picked), data[picked])


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 23), min_size=1, max_size=3), chunk=st.integers(1, 9),
       dtype=st.sampled_from(["uint8", "uint32", "float32"]), seed=st.integers(0, 2**16))
def test_regions_of_whole_chunks_write_directly_with_zarrs_bytes(tmp_path_factory, shape, chunk, dtype, seed):
    """A region of several whole chunks (a batch's core) is written chunk by chunk, each as zarr writes it;
    a region that cuts a chunk is left to zarr."""
    shape = tuple(shape)
    chunks = tuple(min(chunk + k, s) for k, s in enumerate(shape))
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 7, shape).astype(dtype)
    root = tmp_path_factory.mktemp("regions")
    ours = create_output(root / "ours.zarr", shape=shape, dtype=dtype, chunks=chunks)
    theirs = create_output(root / "theirs.zarr", shape=shape, dtype=dtype, chunks=chunks)
    files = chunk_files(ours)
    # aligned cuts along each axis: chunk boundaries and the array's end
    cuts = [sorted({0, s} | {int(c) for c in rng.choice(np.arange(0, s, k), size=min(2, -(-s // k)))})
            for s, k in zip(shape, chunks)]
    for box in itertools.product(*[[slice(a, b) for a, b in zip(c[:-1], c[1:])] for c in cuts]):
        assert files.write(box, data[box])  # every region: whole chunks
        theirs[box] = data[box]
    np.testing.assert_array_equal(zarr.open_array(root / "ours.zarr", mode="r")[...], data)
    for path in sorted((root / "theirs.zarr").rglob("c/**/*")):
        if path.is_file():
            assert (root / "ours.zarr" / path.relative_to(root / "theirs.zarr")).read_bytes() == path.read_bytes()
    cut = next((a for a, (s, k) in enumerate(zip(shape, chunks)) if k > 1 and s > 1), None)
    if cut is not None:  # a region ending inside a chunk: not ours to write
        box = tuple(slice(0, 1) if a == cut else slice(0, s) for a, s in enumerate(shape))
        assert not files.write(box, data[box])


@pytest.mark.parametrize("compressors", [ZstdCodec(level=0), ZstdCodec(level=3, checksum=True), None],
                         ids=["zstd (zarr's default)", "zstd checksum", "none"])
def test_zstd_and_uncompressed_arrays_read_and_write_directly(tmp_path, compressors):
    """zarr-python's default codec and no compressor: the same bytes as zarr writes, the same reads."""
    data = np.random.default_rng(5).integers(0, 9, (10, 13)).astype(np.uint16)
    made = [zarr.create_array(tmp_path / f"{name}.zarr", shape=data.shape, chunks=(4, 5), dtype="uint16",
                              compressors=compressors) for name in ("ours", "theirs")]
    ours, theirs = made
    assert chunk_files(ours) is not None
    for box in _boxes(data.shape, (4, 5)):
        write_region(ours, box, data[box])
        theirs[box] = data[box]
    for path in sorted((tmp_path / "theirs.zarr").rglob("c/**/*")):
        if path.is_file():
            assert (tmp_path / "ours.zarr" / path.relative_to(tmp_path / "theirs.zarr")).read_bytes() == path.read_bytes()
    np.testing.assert_array_equal(chunk_files(theirs).read((slice(1, 9), slice(2, 12))), data[1:9, 2:12])


def test_missing_chunk_reads_as_fill_value(tmp_path):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(8, 8), chunks=(4, 4), dtype="int16", fill_value=-3,
                            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
    files = chunk_files(arr)
    assert files is not None
    np.testing.assert_array_equal(files.read((slice(4, 8), slice(0, 3))), np.full((4, 3), -3, np.int16))


def test_unsupported_layouts_go_through_zarr(tmp_path):
    """Sharding, another codec, zarr v2 and strided keys are zarr's job: same results."""
    data = np.arange(64, dtype=np.uint16).reshape(8, 8)
    sharded = zarr.create_array(tmp_path / "s.zarr", shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="uint16")
    gzip = zarr.create_array(tmp_path / "z.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint16",
                             compressors=GzipCodec(level=1))
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint16", zarr_format=2)
    for arr in (sharded, gzip, v2):
        assert chunk_files(arr) is None
        write_region(arr, (slice(0, 4), slice(4, 8)), data[:4, 4:])
        np.testing.assert_array_equal(read_region(arr, (slice(0, 4), slice(4, 8))), data[:4, 4:])
    plain = create_output(tmp_path / "p.zarr", shape=(8, 8), dtype="uint16", chunks=(4, 4))
    files = chunk_files(plain)
    assert files.write((slice(0, 2), slice(0, 4)), data[:2, :4]) is False  # part of a chunk
    assert files.read((slice(0, 8, 2), slice(0, 4))) is None                 # a step: zarr's job
    write_region(plain, (slice(0, 8), slice(0, 8)), data)                  # through zarr
    np.testing.assert_array_equal(read_region(plain, (slice(2, 6), slice(1, 7))), data[2:6, 1:7])


def test_direct_io_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHWORKS_ZARR_DIRECT", "0")
    arr = create_output(tmp_path / "a.zarr", shape=(4, 4), dtype="uint8", chunks=(2, 2))
    assert chunk_files(arr) is None


def test_lazy_source_reads_one_chunk_directly(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (20, 30), dtype=np.uint8)
    arr = create_output(tmp_path / "img.zarr", shape=data.shape, dtype=data.dtype, chunks=(8, 16))
    arr[...] = data
    src = open_image(tmp_path / "img.zarr")
    assert chunk_files(src._get()) is not None
    for box in [(slice(16, 20), slice(16, 30)), (slice(0, 8), slice(0, 16)), (slice(3, 19), slice(2, 29))]:
        out = src[box]
        np.testing.assert_array_equal(out, data[box])
        out[...] = 0  # a copy: the caller may write into it
    np.testing.assert_array_equal(src[:, :], data)


def test_partial_edge_chunk_is_stored_padded_like_zarr(tmp_path):
    arr = create_output(tmp_path / "a.zarr", shape=(5, 3), dtype="uint32", chunks=(4, 4))
    write_region(arr, (slice(4, 5), slice(0, 3)), np.array([[7, 8, 9]], np.uint32))
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr", mode="r")[4], [7, 8, 9])
    np.testing.assert_array_equal(read_region(arr, (slice(4, 5), slice(0, 3))), [[7, 8, 9]])
    assert read_region(arr, (slice(0, 4), slice(0, 3))).sum() == 0  # a chunk never written: its fill value


def test_window_across_written_and_missing_chunks(tmp_path, monkeypatch):
    """A window over chunks some of which were never written: those read as the fill value, without a file."""
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(12, 12), chunks=(4, 4), dtype="uint16", fill_value=5,
                            compressors=BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"))
    data = np.full((12, 12), 5, np.uint16)
    data[4:8, 4:8] = np.arange(16, dtype=np.uint16).reshape(4, 4) + 100
    arr[4:8, 4:8] = data[4:8, 4:8]
    files = chunk_files(arr)
    got = files.read((slice(2, 11), slice(1, 9)))
    np.testing.assert_array_equal(got, data[2:11, 1:9])
    np.testing.assert_array_equal(files.read((slice(0, 4), slice(8, 12))), data[0:4, 8:12])  # nothing written
    monkeypatch.setattr("patchworks.io._chunk_io.MAX_DIRECT_READ_VOXELS", 16)
    assert files.read((slice(0, 5), slice(0, 4))) is None  # a big read goes through zarr
    np.testing.assert_array_equal(read_region(arr, (slice(0, 5), slice(0, 4))), data[0:5, 0:4])


@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 23), min_size=1, max_size=3), chunk=st.integers(1, 9),
       dtype=st.sampled_from(["uint8", "uint32", "float32"]), seed=st.integers(0, 2**16))
def test_boxes_across_chunks_read_as_zarr_reads_them(tmp_path_factory, shape, chunk, dtype, seed):
    """Boxes across chunks are assembled from the chunk files, chunks never written holding the fill value."""
    shape = tuple(shape)
    chunks = tuple(min(chunk + k, s) for k, s in enumerate(shape))
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 7, shape).astype(dtype)
    arr = zarr.create_array(tmp_path_factory.mktemp("box") / "a.zarr", shape=shape, chunks=chunks, dtype=dtype,
                            fill_value=5, compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"))
    for box in _boxes(shape, chunks):
        if rng.random() < 0.7:  # the others are never written: fill value
            arr[box] = data[box]
    expected = arr[...]
    assert chunk_files(arr) is not None
    for _ in range(5):
        start = [int(rng.integers(0, s)) for s in shape]
        stop = [int(rng.integers(a + 1, s + 1)) for a, s in zip(start, shape)]
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        assert chunk_files(arr).read(box) is not None  # the direct path, not zarr's
        got = read_region(arr, box)
        np.testing.assert_array_equal(got, expected[box])
        assert got.dtype == expected.dtype


@pytest.mark.parametrize("tile_shape,min_chunk", [((16, 16), 1), ((16, 16), 16 * 16), ((10, 14), 1)],
                         ids=["by-tiles", "derived", "shared-parts"])
def test_every_pyramid_level_has_zarrs_own_bytes(tmp_path, monkeypatch, tile_shape, min_chunk):
    """Coarse levels (written by tiles, assembled from parts, or derived) hold the chunk bytes zarr writes."""
    import patchworks.io._ngff_write as W
    from patchworks import threshold, tile_process
    from patchworks.testing import random_blobs

    monkeypatch.setattr(W, "MIN_CHUNK_VOXELS", min_chunk)
    out = tmp_path / "labels.zarr"
    tile_process(random_blobs((70, 90), seed=4), threshold(0.5), tile_shape=tile_shape, write_to=out,
                 pyramid_levels=4, table=False)
    group = zarr.open_group(str(out), mode="r")
    for k in range(4):
        ours = group[str(k)]
        assert chunk_files(ours) is not None  # the layout of the direct path
        twin = zarr.create_array(tmp_path / f"twin{k}.zarr", shape=ours.shape, chunks=ours.chunks, dtype=ours.dtype,
                                 compressors=ours.compressors, fill_value=0, config={"write_empty_chunks": True})
        twin[...] = ours[...]
        theirs = sorted(p.relative_to(tmp_path / f"twin{k}.zarr") for p in (tmp_path / f"twin{k}.zarr").rglob("c/**/*")
                        if p.is_file())
        assert theirs and theirs == sorted(p.relative_to(out / str(k)) for p in (out / str(k)).rglob("c/**/*")
                                           if p.is_file())
        for rel in theirs:
            assert (out / str(k) / rel).read_bytes() == (tmp_path / f"twin{k}.zarr" / rel).read_bytes(), (k, rel)
