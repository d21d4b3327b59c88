"""The write side of remote storage: outputs, scratch and the labels list in an object store.

All on real components started here: the moto S3 API server on 127.0.0.1
(``s3_server`` / ``s3_bucket``), and for the cluster tests two worker
processes (``Nanny``) on one scheduler, each with its own ``TMPDIR`` and
``local_directory``, that may not touch any file under the test's temporary
directories (an audit hook in every worker): any hidden use of a
driver-local path fails the test.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from patchworks import merge_tile_labels, read_table, tile_map, tile_process
from patchworks.io._ngff_write import register_label
from patchworks.io._urls import zarr_store
from patchworks.testing import assert_labels_equivalent, random_blobs, write_ome_zarr

from _probes import run_on_threads
from _remote_fns import CountingLabel, ForbidPaths, KillOnRelabel, calls, double, label_faces

pytest.importorskip("s3fs")
pytest.importorskip("moto")

IMG = random_blobs((64, 64), seed=5)


def _group(url, so):
    return zarr.open_group(store=zarr_store(url, so, read_only=True), mode="r")


def _remote_table(url, so) -> dict:
    g = _group(url, so)["table"]
    return {name: np.asarray(g[name][...]) for name in ["label", *g.attrs["column-order"]]}


def _hidden(fs, bucket) -> list:
    """Every object under a hidden .patchworks prefix of the bucket (scratch, probes, locks)."""
    return [k for k in fs.find(bucket) if "/.patchworks" in "/" + k]


@pytest.mark.parametrize("stitch", ["touch", "iou"])
def test_tile_process_to_s3_equals_the_local_run(s3_server, s3_bucket, tmp_path, stitch):
    so, fs = s3_server.storage_options, s3_server.filesystem()
    url = f"s3://{s3_bucket}/cells.zarr"
    kw = dict(tile_shape=16, overlap=4 if stitch == "iou" else 0, stitch=stitch, pyramid_levels=2, client=False)
    remote = tile_process(IMG, label_faces, write_to=url, storage_options=so, **kw)
    local = tile_process(IMG, label_faces, write_to=tmp_path / "cells.zarr", **kw)
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))  # same plan, same ids
    g, lg = _group(url, so), zarr.open_group(tmp_path / "cells.zarr", mode="r")
    np.testing.assert_array_equal(g["1"][...], lg["1"][...])
    assert g.attrs["patchworks"]["complete"] and g.attrs["patchworks"]["n_objects"] > 5
    assert g.attrs["ome"] == lg.attrs["ome"]
    table, expected = _remote_table(url, so), read_table(tmp_path / "cells.zarr")
    np.testing.assert_array_equal(table["label"], expected.index.to_numpy())
    for column in expected.columns:
        np.testing.assert_allclose(table[column], expected[column].to_numpy())
    assert _hidden(fs, s3_bucket) == [], "nothing left under the scratch prefix"
    # a finished run re-run is a no-op, read from the bucket
    again = tile_process(IMG, label_faces, write_to=url, storage_options=so, compute=True, **kw)
    np.testing.assert_array_equal(again, np.asarray(local))


def test_merge_tile_labels_writes_to_s3(s3_server, s3_bucket, tmp_path):
    so = s3_server.storage_options
    tiles = da.from_array(IMG, chunks=16).map_blocks(label_faces, dtype=np.uint32)
    url = f"s3://{s3_bucket}/merged.zarr"
    out = merge_tile_labels(tiles, url, storage_options=so, client=False, compute=True)
    local = merge_tile_labels(tiles, tmp_path / "m.zarr", client=False, compute=True)
    np.testing.assert_array_equal(out, local)
    from scipy import ndimage
    assert_labels_equivalent(out, ndimage.label(IMG > 0.5)[0])
    assert _group(url, so).attrs["patchworks"]["complete"]
    assert _hidden(s3_server.filesystem(), s3_bucket) == []


def _upload_image(s3_server, bucket, tmp_path, name="img.ome.zarr") -> str:
    write_ome_zarr(tmp_path / name, IMG.astype(np.float32), axes="yx")
    s3_server.filesystem().put(str(tmp_path / name), f"{bucket}/{name}", recursive=True)
    return f"s3://{bucket}/{name}"


def _listing(fs, prefix) -> dict:
    return {k: (v["size"], v.get("ETag")) for k, v in fs.find(prefix, detail=True).items()}


def test_two_runs_add_labels_to_one_s3_image(s3_server, s3_bucket, tmp_path):
    so, fs = s3_server.storage_options, s3_server.filesystem()
    image = _upload_image(s3_server, s3_bucket, tmp_path)
    before = {k: v for k, v in _listing(fs, f"{s3_bucket}/img.ome.zarr").items() if "/labels" not in k}
    for name in ("cells", "nuclei"):
        # the input is the image's pixels in memory (reading from S3 is the read side's business)
        tile_process(IMG, label_faces, tile_shape=16, labels_into=image, name=name, storage_options=so,
                     client=False)
    labels = _group(f"{image}/labels", so)
    assert labels.attrs["ome"]["labels"] == ["cells", "nuclei"]
    np.testing.assert_array_equal(_group(f"{image}/labels/cells", so)["0"][...] > 0, IMG > 0.5)
    after = {k: v for k, v in _listing(fs, f"{s3_bucket}/img.ome.zarr").items() if "/labels" not in k}
    assert after == before, "the image's own objects are untouched (names, sizes, ETags)"
    assert _hidden(fs, s3_bucket) == [], "no lock object is left behind"


def test_concurrent_label_registrations_on_s3_lose_nothing(s3_server, s3_bucket, tmp_path):
    so = s3_server.storage_options
    image = _upload_image(s3_server, s3_bucket, tmp_path)
    names = [f"l{i}" for i in range(6)]
    assert not run_on_threads(lambda n: register_label(image, n, storage_options=so), names)
    assert sorted(_group(f"{image}/labels", so).attrs["ome"]["labels"]) == names


def test_tile_map_writes_to_s3(s3_server, s3_bucket, tmp_path):
    so = s3_server.storage_options
    url = f"s3://{s3_bucket}/map.zarr"
    out = tile_map(IMG, double, tile_shape=16, overlap=4, write_to=url, storage_options=so, client=False)
    expected = tile_map(IMG, double, tile_shape=16, overlap=4, write_to=tmp_path / "map.zarr", client=False)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), 2 * IMG, rtol=1e-5)
    assert _hidden(s3_server.filesystem(), s3_bucket) == []


def test_resume_on_s3_skips_the_staged_tiles(s3_server, s3_bucket, tmp_path):
    so, fs = s3_server.storage_options, s3_server.filesystem()
    url, counter = f"s3://{s3_bucket}/out.zarr", f"s3://{s3_bucket}/calls"
    fn = CountingLabel(counter, so, fail_after=5)
    fs.pipe(f"{s3_bucket}/calls/fail", b"1")
    kw = dict(tile_shape=16, write_to=url, storage_options=so, client=False, max_workers=1)
    with pytest.raises(RuntimeError, match="interrupted on purpose"):
        tile_process(IMG, fn, **kw)
    staged = [k for k in fs.find(s3_bucket) if "/.patchworks-out.zarr-" in k and k.endswith(".bin")]
    assert len(staged) == calls(counter, so) == 5, "tiles 0..4 of 16 staged, one object each"
    fs.rm(f"{s3_bucket}/calls/fail")
    result = tile_process(IMG, fn, **kw)
    assert calls(counter, so) == 16, "the resumed run called fn on the 11 other tiles only"
    expected = tile_process(IMG, label_faces, tile_shape=16, client=False, compute=True)
    np.testing.assert_array_equal(np.asarray(result), expected)
    assert _hidden(fs, s3_bucket) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_write_to_fails_before_any_tile_runs_naming_the_url(s3_server, s3_bucket, monkeypatch):
    so = s3_server.storage_options
    counter = f"s3://{s3_bucket}/calls"
    fn = CountingLabel(counter, so)
    missing = "s3://no-such-bucket-pw/out.zarr"
    with pytest.raises(ValueError, match=r"write_to='s3://no-such-bucket-pw/out.zarr'.*bucket does not exist"):
        tile_process(IMG, fn, tile_shape=16, write_to=missing, storage_options=so, client=False)
    dead = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                                                          "region_name": "us-west-2"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    unreachable = f"s3://{s3_bucket}/dead.zarr"
    with pytest.raises(ValueError, match=rf"write_to='{unreachable}'.*endpoint does not answer"):
        tile_process(IMG, fn, tile_shape=16, write_to=unreachable, storage_options=dead, client=False)
    import moto.settings
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys now
    wrong = {**so, "key": "AKIAWRONGWRONGWRONG1", "secret": "wrong"}
    denied = f"s3://{s3_bucket}/denied.zarr"
    with pytest.raises(ValueError, match=rf"write_to='{denied}'.*credentials"):
        tile_process(IMG, fn, tile_shape=16, write_to=denied, storage_options=wrong, client=False)
    monkeypatch.undo()
    assert calls(counter, so) == 0, "no tile ran"


def test_http_write_to_is_refused():
    with pytest.raises(ValueError, match=r"write_to='https://example.org/x.zarr': https:// is read-only"):
        tile_process(IMG, label_faces, tile_shape=16, write_to="https://example.org/x.zarr", client=False)


# -- a cluster whose workers share no directory with the driver ---------------------------------------


@pytest.fixture(scope="module")
def isolated_client(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    from distributed import Client, Nanny, Scheduler, SpecCluster

    tests_dir = str(Path(__file__).resolve().parent)
    homes = [tempfile.mkdtemp(prefix=f"pw-worker{i}-") for i in range(2)]
    env_path = os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])
    # LocalCluster(n_workers=2, processes=True) is this SpecCluster of two Nannies; written out so
    # that each worker gets its own TMPDIR and local_directory
    workers = {f"w{i}": {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0, "local_directory": home,
                                                    "env": {"TMPDIR": home, "PYTHONPATH": env_path}}}
               for i, home in enumerate(homes)}
    cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                          silence_logs=40)
    client = Client(cluster)
    forbidden = [str(tmp_path_factory.getbasetemp()), os.path.join(tempfile.gettempdir(), "patchworks-")]
    client.register_plugin(ForbidPaths(forbidden))
    homes_seen = client.run(lambda: os.environ["TMPDIR"])
    assert sorted(homes_seen.values()) == sorted(homes), "each worker has its own temporary directory"
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        for home in homes:
            import shutil
            shutil.rmtree(home, ignore_errors=True)
    del distributed


def test_cluster_refuses_a_scratch_its_workers_cannot_see(isolated_client, s3_server, s3_bucket, tmp_path):
    so = s3_server.storage_options
    counter = f"s3://{s3_bucket}/calls"
    with pytest.raises(ValueError, match=r"scratch_dir: the run's scratch .* is not shared by 2 of 2 workers"
                                         r".*object store"):
        tile_process(IMG, CountingLabel(counter, so), tile_shape=16, write_to=f"s3://{s3_bucket}/o.zarr",
                     scratch_dir=tmp_path / "scratch", storage_options=so, client=isolated_client)
    assert calls(counter, so) == 0, "refused before any tile ran"
    # the default (no write_to): the output and scratch would sit in the driver's temp dir
    with pytest.raises(ValueError, match="not shared by 2 of 2 workers"):
        tile_process(IMG, label_faces, tile_shape=16, client=isolated_client)


def test_cluster_run_to_s3_equals_local_and_survives_killed_workers(isolated_client, s3_server, s3_bucket,
                                                                     tmp_path):
    so, fs = s3_server.storage_options, s3_server.filesystem()
    flags = f"s3://{s3_bucket}/flags"
    expected = tile_process(IMG, label_faces, tile_shape=16, client=False, compute=True)
    url = f"s3://{s3_bucket}/c.zarr"
    out = tile_process(IMG, label_faces, tile_shape=16, write_to=url, storage_options=so,
                       client=isolated_client, compute=True)
    np.testing.assert_array_equal(out, expected)
    # a worker killed while staging (by fn, once) and one killed as it starts relabelling (plugin, once)
    isolated_client.register_plugin(KillOnRelabel(flags, so))
    try:
        killed = tile_process(IMG, CountingLabel(flags, so, kill_once=True), tile_shape=16,
                              write_to=f"s3://{s3_bucket}/k.zarr", storage_options=so, client=isolated_client,
                              compute=True, table=True)
    finally:
        isolated_client.unregister_worker_plugin("kill-on-relabel")
    assert fs.exists(f"{s3_bucket}/flags/killed-stage") and fs.exists(f"{s3_bucket}/flags/killed-relabel")
    np.testing.assert_array_equal(killed, expected)
    assert len(_remote_table(f"s3://{s3_bucket}/k.zarr", so)["label"]) == int(expected.max() > 0) * len(
        np.unique(expected[expected > 0]))
    assert _hidden(fs, s3_bucket) == []
