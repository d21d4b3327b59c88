"""S3 through obstore: which options it takes, and that it behaves as the s3fs path does, on a real S3 server."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from patchworks import read_table, threshold, tile_process
from patchworks.io._objstore import BulkDeleteObjectStore, ObstoreKeys, _config, s3_object_store
from patchworks.io._scratch import FsspecKeys, Scratch
from patchworks.io._urls import zarr_store
from patchworks.testing import random_blobs

pytest.importorskip("obstore")
pytest.importorskip("moto")

ENDPOINT = "http://127.0.0.1:9000"
_NO_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "PATCHWORKS_S3_CLIENT")


@pytest.fixture
def no_aws_env(monkeypatch):
    for name in _NO_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_s3fs_options_translate_to_obstores(no_aws_env):
    so = {"key": "K", "secret": "S", "token": "T", "max_concurrency": 1, "skip_instance_cache": True,
          "client_kwargs": {"endpoint_url": ENDPOINT, "region_name": "eu-west-1"}}
    assert _config(so) == {"access_key_id": "K", "secret_access_key": "S", "session_token": "T",
                           "endpoint": ENDPOINT, "region": "eu-west-1", "client_options": {"allow_http": True}}
    assert _config({"anon": True, "endpoint_url": "https://example.org"}) == {
        "skip_signature": True, "endpoint": "https://example.org"}
    assert _config({"key": "K", "secret": "S", "requester_pays": True, "client_kwargs": {"region_name": "us-east-1"}}) \
        == {"access_key_id": "K", "secret_access_key": "S", "request_payer": True, "region": "us-east-1"}


@pytest.mark.parametrize("so", [
    {"profile": "lab", "client_kwargs": {"region_name": "us-east-1"}},          # a profile file: botocore's
    {"key": "K", "secret": "S", "config_kwargs": {"s3": {"addressing_style": "virtual"}}},
    {"key": "K", "secret": "S", "client_kwargs": {"endpoint_url": ENDPOINT, "verify": False}},
    {"client_kwargs": {"endpoint_url": ENDPOINT}},                             # no credentials: botocore's chain
    {"key": "K", "secret": "S"},                                               # no region: s3fs finds it
])
def test_options_only_botocore_knows_keep_s3fs(no_aws_env, so):
    assert _config(so) is None
    assert s3_object_store("s3://bucket/x", so) is None
    assert isinstance(Scratch("s3://bucket/x", so)._keys, FsspecKeys)


def test_credentials_and_endpoint_from_the_environment(no_aws_env):
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", "K")
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "S")
    no_aws_env.setenv("AWS_ENDPOINT_URL", ENDPOINT)
    assert _config(None) == {"endpoint": ENDPOINT, "client_options": {"allow_http": True}}
    assert s3_object_store("s3://bucket/a/b/", None).prefix == "a/b"
    # one store (one connection pool) per bucket, prefix and settings in a process
    assert s3_object_store("s3://bucket/a/b", None) is s3_object_store("s3://bucket/a/b/", None)
    assert s3_object_store("s3://bucket/a/b", {"key": "K2", "secret": "S2"}) is not s3_object_store("s3://bucket/a/b")
    assert s3_object_store("gs://bucket/a", None) is None and s3_object_store("/local/path", None) is None
    no_aws_env.setenv("PATCHWORKS_S3_CLIENT", "fsspec")
    assert s3_object_store("s3://bucket/a", None) is None


def _backends(s3_server, s3_bucket, monkeypatch, name):
    """Two scratches on one prefix: obstore's and s3fs's (``PATCHWORKS_S3_CLIENT=fsspec``)."""
    url, so = f"s3://{s3_bucket}/{name}", s3_server.storage_options
    fast = Scratch(url, so)
    monkeypatch.setenv("PATCHWORKS_S3_CLIENT", "fsspec")
    slow = Scratch(url, so)
    slow._keys  # noqa: B018 -- built now, while the variable is set
    monkeypatch.delenv("PATCHWORKS_S3_CLIENT")
    assert isinstance(fast._keys, ObstoreKeys) and isinstance(slow._keys, FsspecKeys)
    return fast, slow


@pytest.mark.parametrize("writer", ["obstore", "s3fs"])
def test_scratch_answers_the_same_on_both_clients(s3_server, s3_bucket, monkeypatch, writer):
    fast, slow = _backends(s3_server, s3_bucket, monkeypatch, f"both-{writer}")
    w = fast if writer == "obstore" else slow
    rng = np.random.default_rng(1)
    blobs = {f"k{i}": rng.bytes(int(rng.integers(0, 5000))) for i in range(6)}
    for key, data in blobs.items():
        w.put(key, data)
    w.put("sub/deeper", b"x")
    w.put("view", memoryview(np.arange(10, dtype=np.uint16)))  # buffers, not only bytes
    for scratch in (fast, slow):
        assert scratch.get("k2") == blobs["k2"] and scratch.get("view") == np.arange(10, dtype=np.uint16).tobytes()
        with pytest.raises(FileNotFoundError):
            scratch.get("missing")
        keys = ["k1", "missing", "k4", "k0"]
        starts, stops = [0, 0, 3, 2], [10, 5, 10**6, None]  # past the end: what there is; None: to the end
        assert scratch.get_ranges(keys, starts, stops) == [blobs["k1"][:10], None, blobs["k4"][3:], blobs["k0"][2:]]
        assert scratch.get_many(["k3", "missing"]) == [blobs["k3"], None]
        assert scratch.keys() == {**{k: len(v) for k, v in blobs.items()}, "view": 20}
        assert scratch.keys("k") == {k: len(v) for k, v in blobs.items()}
    assert fast.create("lock", b"a") and not slow.create("lock", b"b") and not fast.create("lock", b"c")
    assert slow.get("lock") == b"a"
    fast.remove("k0")
    slow.remove("k1")
    fast.remove("never there")
    assert set(fast.keys()) == set(slow.keys()) == {"k2", "k3", "k4", "k5", "view", "lock"}
    w.remove_all()
    assert fast.keys() == slow.keys() == {}
    assert s3_server.filesystem().find(f"{s3_bucket}/both-{writer}") == []  # "sub/deeper" too: nothing left


def test_zarr_store_on_obstore_replaces_a_group_in_bulk(s3_server, s3_bucket):
    url, so = f"s3://{s3_bucket}/bulk.zarr", s3_server.storage_options
    store = zarr_store(url, so, read_only=False)
    assert isinstance(store, BulkDeleteObjectStore)
    group = zarr.open_group(store=store, mode="w")
    arr = group.create_array("a", shape=(40, 40), chunks=(4, 4), dtype=np.uint8)
    arr[...] = 1                                      # 100 chunk objects
    s3_server.requests.reset()
    zarr.open_group(store=zarr_store(url, so, read_only=False), mode="w")
    assert s3_server.requests.snapshot()["delete"] == 1   # one DeleteObjects, not one DELETE per chunk
    assert list(zarr.open_group(store=zarr_store(url, so, read_only=True), mode="r").keys()) == []


def test_s3fs_and_obstore_runs_write_the_same_label_image(s3_server, s3_bucket, monkeypatch):
    mask = (random_blobs((48, 40), seed=5, sigma=2.0) > 0.5).astype(np.uint8)
    so = s3_server.storage_options
    out = {}
    for client in ("obstore", "fsspec"):
        if client == "fsspec":
            monkeypatch.setenv("PATCHWORKS_S3_CLIENT", "fsspec")
        url = f"s3://{s3_bucket}/run-{client}.zarr"
        tile_process(mask, threshold(0.5), tile_shape=16, write_to=url, storage_options=so, client=False)
        group = zarr.open_group(store=zarr_store(url, so, read_only=True), mode="r")
        out[client] = ([group[k][...] for k in sorted(group.array_keys())],
                       read_table(url, storage_options=so).reset_index())
    (levels_a, table_a), (levels_b, table_b) = out["obstore"], out["fsspec"]
    assert len(levels_a) == len(levels_b) and all(np.array_equal(a, b) for a, b in zip(levels_a, levels_b))
    assert table_a.equals(table_b)
    assert not s3_server.filesystem().glob(f"{s3_bucket}/.patchworks-*")   # both cleaned their scratch


def test_a_run_that_waits_on_an_object_store_gets_two_threads_per_core(s3_server, s3_bucket, tmp_path):
    from patchworks.run._resources import available_cores

    img = np.zeros((32, 32), np.uint8)
    so = s3_server.storage_options
    remote = tile_process(img, _never, tile_shape=16, write_to=f"s3://{s3_bucket}/plan.zarr", storage_options=so,
                          dry_run=True, client=False)
    assert remote.workers == f"{2 * available_cores()} local thread(s)"
    local = tile_process(img, _never, tile_shape=16, write_to=tmp_path / "plan.zarr", dry_run=True, client=False)
    assert local.workers == f"{available_cores()} local thread(s)"
    chosen = tile_process(img, _never, tile_shape=16, write_to=f"s3://{s3_bucket}/plan.zarr", storage_options=so,
                          dry_run=True, client=False, max_workers=3)
    assert chosen.workers == "3 local thread(s)"          # the user's choice stands


def _never(tile):
    raise AssertionError("dry_run called fn")


def test_batched_reads_work_inside_a_running_event_loop(s3_server, s3_bucket):
    """A Jupyter cell runs in an event loop: the scratch's batched reads must not need one of their own."""
    import asyncio

    scratch = Scratch(f"s3://{s3_bucket}/in-a-loop", s3_server.storage_options)
    for i in range(4):
        scratch.put(f"k{i}", bytes([i]) * 10)

    async def cell():
        return scratch.get_many(["k0", "k3", "missing"]), scratch.get_ranges(["k1", "k2"], [2, 0], [4, None])

    assert asyncio.run(cell()) == ([b"\x00" * 10, b"\x03" * 10, None], [b"\x01" * 2, b"\x02" * 10])
