"""What a run asks of an object store: batched reads, tables in one batch, counted by the S3 server itself.

The moto server on 127.0.0.1 counts every request it answers by kind and by
key (tests/_servers.py); these tests pin the request budgets that make a
remote run cost little more than a local one, and check that the batched
paths return exactly what the one-by-one reads return.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from skimage.measure import label, regionprops_table

from patchworks import read_table, threshold, tile_process
from patchworks.grid import TileGrid
from patchworks.io import _scratch
from patchworks.io._scratch import Scratch
from patchworks.io._table_store import TableWriter
from patchworks.io._urls import zarr_store
from patchworks.labels import _process, _table_merge
from patchworks.labels._merge import slab_plane_bytes
from patchworks.testing import random_blobs

pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _scratches(s3_server, s3_bucket, tmp_path):
    return [Scratch(tmp_path / "scratch"), Scratch(f"s3://{s3_bucket}/scratch", s3_server.storage_options)]


def test_get_many_equals_get_one_by_one_and_is_one_get_per_key(s3_server, s3_bucket, tmp_path):
    rng = np.random.default_rng(0)
    blobs = {f"k{i}": rng.bytes(int(rng.integers(0, 3000))) for i in range(7)}
    for scratch in _scratches(s3_server, s3_bucket, tmp_path):
        for key, data in blobs.items():
            scratch.put(key, data)
        keys = ["k3", "missing", *blobs]
        s3_server.requests.reset()
        got = scratch.get_many(keys)
        assert got == [scratch.get(k) if k in blobs else None for k in keys]
        if scratch.remote:  # one GET per key, no HEAD before it, no listing
            seen = s3_server.requests.snapshot()
            assert (seen["read"], seen["head"], seen["list"]) == (2 * len(keys) - 1, 0, 0)
        assert scratch.get_many([]) == []


def _columns(n):
    return {"label": np.arange(1, n + 1, dtype=np.uint64), "area": np.arange(n, dtype=np.int64),
            **{f"m{j}": np.linspace(0, 1, n) + j for j in range(6)}}


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_a_table_on_s3_is_one_write_per_node_and_chunk(s3_server, s3_bucket, zarr_format):
    so = s3_server.storage_options
    url = f"s3://{s3_bucket}/out.zarr/table"
    columns = _columns(10)
    dtypes = {k: v.dtype for k, v in columns.items()}
    for attempt in range(2):  # the second replaces the first: nothing of the first may survive
        s3_server.requests.reset()
        writer = TableWriter(url, 10, dtypes, record={"n": attempt}, zarr_format=zarr_format, storage_options=so,
                             chunk_rows=6)
        writer.append({k: v + attempt for k, v in columns.items()})
        writer.close()
        seen = s3_server.requests.snapshot()
        docs = 1 if zarr_format == 3 else 2             # zarr.json, or .zarray / .zgroup + .zattrs
        # the group (twice: created, then marked complete), every column's metadata, two chunks per column
        assert seen["write"] == 2 * docs + len(columns) * (docs + 2)
        # no existence checks per column (they were ~5 requests each): a few for the store and the clearing
        assert seen["read"] == 0 and seen["head"] + seen["list"] <= 5 < len(columns)
        group = zarr.open_group(store=zarr_store(url, so, read_only=True), mode="r")
        assert group.attrs["patchworks"] == {"n": attempt, "complete": True}
        assert group.attrs["column-order"] == list(columns)[1:]
        for name, values in columns.items():
            assert np.array_equal(group[name][...], values + attempt)
            assert group[name].attrs["encoding-type"] == "array"
    fs = s3_server.filesystem()
    assert sorted(k.rsplit("/", 1)[-1] for k in fs.ls(f"{s3_bucket}/out.zarr/table")) == sorted(
        [*columns, *(["zarr.json"] if zarr_format == 3 else [".zattrs", ".zgroup"])])


def _per_object(s3_server) -> dict:
    """``{(kind, key pattern): requests}`` under a run's scratch (``/tiles/`` and ``rows-``)."""
    return {(kind, pattern.rsplit("/", 1)[-1]): n for kind, pattern, n in s3_server.requests.by_path()
            if "/.patchworks-" in pattern}


@pytest.fixture
def no_recent(monkeypatch):
    """Every staged tile read from the server, as on a cluster worker that did not stage it."""
    monkeypatch.setattr(_scratch, "RECENT_BYTES", 0)


def _run_3x3x3(s3_server, s3_bucket, name, **kw):
    """A 24^3 image in 27 tiles of 8^3 (too few to batch: one staged object per tile), S3 to S3."""
    mask = random_blobs((24, 24, 24), seed=3, sigma=1.5) > 0.5
    s3_server.requests.reset()
    tile_process(mask.astype(np.uint8), threshold(0.5), tile_shape=8, write_to=f"s3://{s3_bucket}/{name}.zarr",
                 storage_options=s3_server.storage_options, pyramid_levels=1, **kw)
    return _per_object(s3_server)


@pytest.mark.parametrize("by", ["slabs", "seam by seam"])
def test_seam_planes_cost_one_read_per_tile(s3_server, s3_bucket, by, monkeypatch, no_recent):
    if by == "seam by seam":  # the fallback when one slab's planes exceed SLAB_PLANE_BYTES
        monkeypatch.setattr(_process, "SLAB_PLANE_BYTES", slab_plane_bytes(TileGrid((24,) * 3, 8)) - 1)
    seen = _run_3x3x3(s3_server, s3_bucket, f"seams-{by.replace(' ', '-')}", table=False)
    reads = seen[("read", "tile-#.bin")] - 27        # less each relabel task's one read of its tile
    if by == "slabs":  # tasks of slabs 0-1 and 2: every tile once, slab 2 once more for the seam before it
        assert reads == 27 + 9                        # was 6 seams x 18 tiles = 108
    else:
        assert reads == 6 * 18
    assert seen[("write", "tile-#.bin")] == 27


@pytest.mark.parametrize("own_rows", ["sent back", "side files"])
def test_table_partials_travel_inside_the_staged_tile(s3_server, s3_bucket, own_rows, monkeypatch, no_recent):
    if own_rows == "side files":  # a run whose groups' own rows exceed their share of the inline budget
        monkeypatch.setattr(_table_merge, "INLINE_ROWS_BYTES", 0)
    seen = _run_3x3x3(s3_server, s3_bucket, f"partials-{own_rows.replace(' ', '-')}", table=True)
    # no object of their own: one PUT per staged tile, read back once by its relabel task (+ the seam reads)
    assert not [k for k in seen if k[1].startswith("table-")], seen
    assert seen[("write", "tile-#.bin")] == 27 and seen[("read", "tile-#.bin")] == 27 + 27 + 9
    if own_rows == "sent back":  # with the relabel results: no request at all
        assert not [k for k in seen if k[1].startswith("rows-")], seen
    else:  # one PUT by the relabel task of each tile that owns objects, one GET by the driver
        assert 0 < seen[("write", "rows-#.npy")] == seen[("read", "rows-#.npy")] < 27
    table = read_table(f"s3://{s3_bucket}/partials-{own_rows.replace(' ', '-')}.zarr",
                       storage_options=s3_server.storage_options)
    mask = random_blobs((24, 24, 24), seed=3, sigma=1.5) > 0.5
    expected = regionprops_table(label(mask, connectivity=1), properties=("label", "area"))
    assert sorted(table["area"].tolist()) == sorted(expected["area"].tolist())  # labels up to renaming


def test_staged_tiles_written_here_are_read_back_from_memory(s3_server, s3_bucket, tmp_path):
    """On threads the seam scan and the relabel read no staged tile from the server; the labels do not change."""
    seen = _run_3x3x3(s3_server, s3_bucket, "recent", table=True)
    assert seen[("write", "tile-#.bin")] == 27 and ("read", "tile-#.bin") not in seen, seen
    mask = random_blobs((24, 24, 24), seed=3, sigma=1.5) > 0.5
    local = tile_process(mask.astype(np.uint8), threshold(0.5), tile_shape=8, write_to=tmp_path / "local.zarr",
                         pyramid_levels=1, compute=True)
    so = s3_server.storage_options
    remote = zarr.open_group(store=zarr_store(f"s3://{s3_bucket}/recent.zarr", so, read_only=True), mode="r")["0"]
    assert np.array_equal(remote[...], local)
    assert not _scratch._RECENT._items          # the finished run's scratch left nothing behind


def test_recent_objects_stay_within_their_budget(monkeypatch):
    monkeypatch.setattr(_scratch, "RECENT_BYTES", 100)
    recent = _scratch._Recent()
    for i in range(5):
        recent.add(f"s3://b/x/{i}", bytes(30))
    assert recent._size == 90 and list(recent._items) == [f"s3://b/x/{i}" for i in (2, 3, 4)]
    assert recent.get("s3://b/x/2") is not None     # used: now the last to go
    recent.add("s3://b/x/5", bytes(30))
    assert list(recent._items) == ["s3://b/x/4", "s3://b/x/2", "s3://b/x/5"]  # 3 went first
    recent.add("s3://b/y/big", bytes(101))          # larger than the budget: not kept
    recent.drop_under("s3://b/x/")
    assert recent._size == 0 and not recent._items


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_a_label_image_on_s3_is_created_in_one_batch_and_opened_without_reads(s3_server, s3_bucket, zarr_format):
    """Creating the group and its levels: one write per metadata document, sent together; the levels then open
    from the metadata in hand. Through zarr's group, the same was ~10 requests one after the other."""
    from patchworks.io._ngff_write import build_label_image

    so = s3_server.storage_options
    url = f"s3://{s3_bucket}/created-{zarr_format}.zarr"
    grid = TileGrid((64, 48), 16)
    for attempt in range(2):  # the second replaces the first
        writer = build_label_image(url, "", grid=grid, source=None, dtype=np.uint32, zarr_format=zarr_format,
                                   scratch=f"s3://{s3_bucket}/scratch-{zarr_format}", pyramid_levels=3)
        writer.locate(url, "", writer.scratch, np.uint32, storage_options=so)
        s3_server.requests.reset()
        writer.create({"complete": False, "attempt": attempt})
        seen = s3_server.requests.snapshot()
        docs = 1 if zarr_format == 3 else 2  # zarr.json, or .zgroup/.zarray + .zattrs
        assert seen["write"] == docs * (1 + len(writer.levels)) and seen["read"] == 0
        assert seen["list"] + seen["delete"] <= 2  # clearing what was there: one listing, one bulk delete
        s3_server.requests.reset()
        arrays = writer.arrays()
        assert sum(s3_server.requests.snapshot().values()) == 0
        # third parties see the same levels: opened from the store, not from our metadata
        group = zarr.open_group(store=zarr_store(url, so, read_only=True), mode="r", zarr_format=zarr_format)
        assert group.attrs["patchworks"]["attempt"] == attempt
        assert [group[str(k)].shape for k in range(len(writer.levels))] == [a.shape for a in arrays]
        assert sorted(group.array_keys()) == [str(k) for k in range(len(writer.levels))]
    arrays[0][0:16, 0:16] = 7  # writes through the arrays opened from the metadata land in the store
    assert (group["0"][0:16, 0:16] == 7).all() and (group["0"][16:, :] == 0).all()


def test_other_scratches_are_found_with_one_listing_of_their_stem_only(s3_server, s3_bucket):
    """A run looks for unfinished runs of the same output (scratches named after it) with one listing that
    the server filters by their common stem: a bucket root with many other keys is never paged through."""
    from patchworks.run._rundir import _siblings

    so = s3_server.storage_options
    fs = s3_server.filesystem()
    for i in range(30):
        fs.pipe(f"{s3_bucket}/other-{i}.bin", b"x")
    fs.pipe(f"{s3_bucket}/.patchworks-out.zarr-0123/run.json", b"{}")
    fs.pipe(f"{s3_bucket}/.patchworks-out.zarr-4567/tiles/tile-0.bin", b"x")
    fs.pipe(f"{s3_bucket}/.patchworks-outer.zarr-89ab/run.json", b"{}")  # another output's: not a sibling
    s3_server.requests.reset()
    found = _siblings(f"s3://{s3_bucket}", ".patchworks-out.zarr-", so)
    assert sorted(found) == [f"s3://{s3_bucket}/.patchworks-out.zarr-{n}" for n in ("0123", "4567")]
    lists = [(pattern, n) for kind, pattern, n in s3_server.requests.by_path() if kind == "list"]
    assert sum(n for _, n in lists) == 1 and "prefix=.patchworks-out.zarr-" in lists[0][0], lists
    assert sum(s3_server.requests.snapshot().values()) == 1
