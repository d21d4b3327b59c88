"""Inputs behind URLs: S3 (a moto server on 127.0.0.1) and HTTP (http.server on 127.0.0.1).

Every remote run is compared with the same run on the local copy of its
input (the oracle), and every S3 input prefix is listed with sizes and
ETags before and after, so a write to the input would fail the test.
"""

import json
import os
import pickle
import socket
import sys

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from patchworks import (measure, merge_tile_labels, open_image, read_table, seam_report, threshold, tile_map,
                        tile_process)
from patchworks.cli import main
from patchworks.testing import assert_labels_equivalent, random_blobs, write_ome_zarr

SHAPE = (24, 40, 40)


@pytest.fixture(scope="module")
def blobs():
    return random_blobs(SHAPE, seed=3)


def _listing(fs, prefix) -> dict:
    """Every object under ``prefix`` with its size and ETag (fresh, not from fsspec's cache)."""
    fs.invalidate_cache()
    return {k: (v["size"], v.get("ETag")) for k, v in fs.find(prefix, detail=True).items()}


def _upload(s3_server, local, bucket, name) -> str:
    fs = s3_server.filesystem()
    fs.put(str(local), f"{bucket}/{name}", recursive=local.is_dir())
    return f"s3://{bucket}/{name}"


def _levels(path) -> dict:
    group = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(a[...]) for k, a in group.arrays() if k.isdigit()}


def _same_output(a, b):
    """Two label images written by patchworks: identical levels and tables."""
    la, lb = _levels(a), _levels(b)
    assert la.keys() == lb.keys() and len(la) >= 2
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k])
    pd.testing.assert_frame_equal(read_table(a), read_table(b))


# -- HTTP: an OME-Zarr served by http.server ------------------------------------------


@pytest.mark.parametrize("stitch", ["touch", "iou"])
def test_http_ome_zarr_equals_local_run(tmp_path, http_root, blobs, stitch):
    root, url = http_root
    write_ome_zarr(root / "img.ome.zarr", blobs, axes="zyx", scale=(2.0, 0.5, 0.5), chunks=(12, 20, 20))
    src = open_image(f"{url}/img.ome.zarr")
    assert src.voxel_size == (2.0, 0.5, 0.5) and src.axes == "zyx"
    kw = dict(tile_shape=(12, 20, 20), overlap=4 if stitch == "iou" else 0, stitch=stitch, pyramid_levels=2)
    local = tile_process(root / "img.ome.zarr", threshold(0.5), write_to=tmp_path / "local.zarr", **kw)
    remote = tile_process(f"{url}/img.ome.zarr", threshold(0.5), write_to=tmp_path / "remote.zarr", **kw)
    assert_labels_equivalent(np.asarray(local), ndimage.label(blobs > 0.5)[0]) if stitch == "touch" else None
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    _same_output(tmp_path / "local.zarr", tmp_path / "remote.zarr")


def test_http_missing_path_named(http_root):
    _, url = http_root
    with pytest.raises(FileNotFoundError, match=f"image='{url}/nothing.zarr'"):
        open_image(f"{url}/nothing.zarr")


# -- S3 inputs of every kind ----------------------------------------------------------


def _write_input(kind, tmp_path, blobs):
    """(local path, open_image kwargs) of ``blobs`` stored as ``kind``."""
    import tifffile

    if kind in ("zarr2", "zarr3"):
        path = tmp_path / f"{kind}.zarr"
        z = zarr.create_array(str(path), shape=blobs.shape, chunks=(12, 20, 20), dtype=blobs.dtype,
                              zarr_format=int(kind[-1]))
        z[...] = blobs
        return path, {}
    if kind == "ome":  # two channels, level 1, channel 1
        path = tmp_path / "img.ome.zarr"
        data = np.stack([1 - blobs, blobs])
        write_ome_zarr(path, data, axes="czyx", scale=(1.0, 2.0, 0.5, 0.5), chunks=(1, 12, 20, 20))
        return path, {"level": 1, "channel": 1}
    if kind == "tiff":
        path = tmp_path / "img.tif"
        tifffile.imwrite(path, blobs, tile=(16, 16), imagej=True, resolution=(2.0, 2.0),
                         metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
        return path, {}
    path = tmp_path / f"img.{kind}"
    if kind == "npy":
        np.save(path, blobs)
    else:
        import h5py
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=blobs, chunks=(8, 20, 20))
    return path, {}


@pytest.mark.parametrize("kind", ["zarr2", "zarr3", "ome", "tiff", "npy", "h5"])
def test_s3_input_equals_local_run(tmp_path, s3_server, s3_bucket, blobs, kind):
    local, kw = _write_input(kind, tmp_path, blobs)
    url = _upload(s3_server, local, s3_bucket, local.name)
    fs, so = s3_server.filesystem(), s3_server.storage_options
    before = _listing(fs, s3_bucket)
    src = open_image(url, storage_options=so, **kw)
    ref = open_image(local, **kw)
    assert (src.shape, src.dtype, src.axes, src.voxel_size, src.units) == \
        (ref.shape, ref.dtype, ref.axes, ref.voxel_size, ref.units)
    opts = dict(tile_shape=(12, 20, 20), pyramid_levels=2, **kw)
    a = tile_process(local, threshold(0.5), write_to=tmp_path / "a.zarr", **opts)
    b = tile_process(url, threshold(0.5), write_to=tmp_path / "b.zarr", storage_options=so, **opts)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    _same_output(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert _listing(fs, s3_bucket) == before  # the input is never written to


def test_lazy_source_pickles_as_strings(s3_server, s3_bucket, tmp_path, blobs):
    local, _ = _write_input("zarr3", tmp_path, blobs)
    url = _upload(s3_server, local, s3_bucket, "in.zarr")
    src = open_image(url, storage_options=s3_server.storage_options)
    src[0:2, 0:2, 0:2]  # an open store is not pickled
    blob = pickle.dumps(src)
    assert len(blob) < 2000
    again = pickle.loads(blob)
    assert again._handle is None and again.storage_options == s3_server.storage_options
    np.testing.assert_array_equal(again[3:9, 5:30, :], blobs[3:9, 5:30, :])
    # a zarr.Array opened on an FsspecStore becomes the same: URL and the filesystem's options
    from zarr.storage import FsspecStore
    arr = zarr.open_array(store=FsspecStore.from_url(url, storage_options=s3_server.storage_options,
                                                     read_only=True), mode="r")
    wrapped = open_image(arr)
    assert wrapped.kind == "zarr" and wrapped.remote and len(pickle.dumps(wrapped)) < 2000
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(wrapped))[...], blobs)


def test_env_vars_without_storage_options(monkeypatch, s3_server, s3_bucket, tmp_path, blobs):
    local, _ = _write_input("zarr2", tmp_path, blobs)
    url = _upload(s3_server, local, s3_bucket, "in.zarr")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    np.testing.assert_array_equal(open_image(url)[...], blobs)


def test_file_url_is_a_local_path(tmp_path, blobs):
    local, _ = _write_input("zarr3", tmp_path, blobs)
    src = open_image(f"file://{local}")
    assert not src.remote
    np.testing.assert_array_equal(src[...], blobs)


# -- the other entry points ------------------------------------------------------------


def test_merge_tile_labels_from_s3(tmp_path, s3_server, s3_bucket, blobs):
    mask = blobs > 0.5
    tiles = np.zeros(SHAPE, np.uint32)
    for z in range(0, SHAPE[0], 12):  # each 12x20x20 block labelled on its own
        for y in range(0, SHAPE[1], 20):
            for x in range(0, SHAPE[2], 20):
                block = (slice(z, z + 12), slice(y, y + 20), slice(x, x + 20))
                tiles[block] = ndimage.label(mask[block])[0]
    path = tmp_path / "tiles.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(12, 20, 20), dtype=np.uint32)[...] = tiles
    url = _upload(s3_server, path, s3_bucket, "tiles.zarr")
    fs, before = s3_server.filesystem(), _listing(s3_server.filesystem(), s3_bucket)
    merged = merge_tile_labels(url, write_to=tmp_path / "m.zarr", storage_options=s3_server.storage_options,
                               pyramid_levels=2)
    assert_labels_equivalent(np.asarray(merged), ndimage.label(mask)[0])
    merge_tile_labels(path, write_to=tmp_path / "ref.zarr", pyramid_levels=2)
    _same_output(tmp_path / "ref.zarr", tmp_path / "m.zarr")
    assert _listing(fs, s3_bucket) == before


def test_measure_seams_info_table_on_s3(tmp_path, s3_server, s3_bucket, blobs, capsys):
    so = s3_server.storage_options
    img, _ = _write_input("zarr3", tmp_path, blobs)
    tile_process(img, threshold(0.5), tile_shape=(12, 20, 20), write_to=tmp_path / "cells.zarr")
    img_url = _upload(s3_server, img, s3_bucket, "img.zarr")
    lab_url = _upload(s3_server, tmp_path / "cells.zarr", s3_bucket, "cells.zarr")
    fs, before = s3_server.filesystem(), _listing(s3_server.filesystem(), s3_bucket)

    ref = measure(tmp_path / "cells.zarr", img)
    pd.testing.assert_frame_equal(measure(lab_url, img_url, storage_options=so), ref)
    assert seam_report(lab_url, storage_options=so).to_dict() == seam_report(tmp_path / "cells.zarr").to_dict()
    # the table travels with its label image: checked there by its chunks' names and sizes
    pd.testing.assert_frame_equal(read_table(lab_url, storage_options=so), read_table(tmp_path / "cells.zarr"))
    assert main(["info", lab_url, "--storage-options", json.dumps(so)]) == 0
    out = capsys.readouterr().out
    assert f"shape:   {SHAPE}" in out and f"objects: {len(ref)}" in out and "table:" in out
    assert _listing(fs, s3_bucket) == before

    # a chunk rewritten in the bucket makes the table stale
    chunk = next(k for k in fs.find(f"{s3_bucket}/cells.zarr/0") if "/c/" in k)
    fs.pipe(chunk, fs.cat(chunk) + b"\0")
    with pytest.raises(ValueError, match="is stale"):
        read_table(lab_url, storage_options=so)


def test_seams_and_info_over_http(tmp_path, http_root, blobs, capsys):
    root, url = http_root
    tile_process(blobs, threshold(0.5), tile_shape=(12, 20, 20), write_to=root / "cells.zarr")
    assert seam_report(f"{url}/cells.zarr").to_dict() == seam_report(root / "cells.zarr").to_dict()
    assert main(["info", f"{url}/cells.zarr"]) == 0
    assert "levels:" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_table(f"{url}/cells.zarr"), read_table(root / "cells.zarr"))


def test_tile_map_from_s3(tmp_path, s3_server, s3_bucket, blobs):
    local, _ = _write_input("zarr3", tmp_path, blobs)
    url = _upload(s3_server, local, s3_bucket, "in.zarr")
    kw = dict(tile_shape=(12, 20, 20), overlap=2, window="hann", compute=True)
    remote = tile_map(url, lambda w: w * 2, storage_options=s3_server.storage_options, **kw)
    np.testing.assert_array_equal(remote, tile_map(local, lambda w: w * 2, **kw))
    np.testing.assert_allclose(remote, blobs * 2, rtol=1e-5)


def test_cli_label_measure_seams_from_s3(tmp_path, s3_server, s3_bucket, blobs, capsys):
    local, _ = _write_input("zarr2", tmp_path, blobs)
    url = _upload(s3_server, local, s3_bucket, "in.zarr")
    so = s3_server.storage_options
    pairs = (f"key={so['key']},secret={so['secret']},client_kwargs.endpoint_url={s3_server.endpoint},"
             f"client_kwargs.region_name={s3_server.region}")
    assert main(["label", url, str(tmp_path / "out.zarr"), "--threshold", "0.5", "--tile", "12,20,20",
                 "--storage-options", pairs]) == 0
    assert_labels_equivalent(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[...],
                             ndimage.label(blobs > 0.5)[0])
    lab_url = _upload(s3_server, tmp_path / "out.zarr", s3_bucket, "out.zarr")
    assert main(["measure", lab_url, "--image", url, "--storage-options", json.dumps(so)]) == 0
    assert main(["seams", lab_url, "--storage-options", json.dumps(so)]) == 0
    assert main(["label", f"s3://{s3_bucket}/missing.zarr", str(tmp_path / "x.zarr"), "--threshold", "0.5",
                 "--storage-options", json.dumps(so)]) == 2
    assert f"s3://{s3_bucket}/missing.zarr" in capsys.readouterr().err


# -- clear errors naming the URL, before any tile runs ---------------------------------


class _Recorder:
    def __init__(self):
        self.calls = 0

    def __call__(self, window):
        self.calls += 1
        return (window > 0.5).astype(np.uint32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_input(tmp_path, s3_server, s3_bucket, blobs):
    local, _ = _write_input("zarr3", tmp_path, blobs)
    return _upload(s3_server, local, s3_bucket, "in.zarr")


@pytest.mark.parametrize("case", ["missing bucket", "missing key", "unreachable", "wrong credentials"])
def test_errors_name_the_url_before_any_tile(tmp_path, s3_server, s3_input, case):
    from moto.core.authorization import enable_iam_authentication

    so = s3_server.storage_options
    url, expected, auth = s3_input, None, False
    if case == "missing bucket":
        url, expected = "s3://no-such-bucket-pw/in.zarr", (FileNotFoundError, "does not exist")
    elif case == "missing key":
        url, expected = s3_input.replace("in.zarr", "out.zarr"), (FileNotFoundError, "no zarr store")
    elif case == "unreachable":  # a port with nothing listening
        endpoint = f"http://127.0.0.1:{_free_port()}"
        so = {**so, "client_kwargs": {**so["client_kwargs"], "endpoint_url": endpoint}}
        expected = (ConnectionError, f"cannot reach the s3:// endpoint at {endpoint}")
    else:
        so, expected, auth = {**so, "key": "wrong", "secret": "wrong"}, (PermissionError, "access denied"), True
    fn = _Recorder()
    with enable_iam_authentication() if auth else _nothing():
        with pytest.raises(expected[0], match=rf"image='{url}'.*{expected[1]}|{expected[1]}.*image='{url}'"):
            tile_process(url, fn, tile_shape=(12, 20, 20), write_to=tmp_path / "o.zarr", storage_options=so)
    assert fn.calls == 0 and not (tmp_path / "o.zarr").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("url, extra", [("gs://bucket/img.zarr", "gcs"), ("az://container/img.zarr", "azure")])
def test_missing_backend_names_the_extra(url, extra, monkeypatch):
    # hidden even where the backend is installed: importing it then fails as on a machine without it
    monkeypatch.setitem(sys.modules, {"gcs": "gcsfs", "azure": "adlfs"}[extra], None)
    with pytest.raises(ImportError, match=rf"image='{url}'.*patchworks\[{extra}\]"):
        open_image(url)


def test_http_is_read_only_for_outputs(http_root):
    _, url = http_root
    from patchworks.io._urls import zarr_store
    with pytest.raises(ValueError, match="read-only"):
        zarr_store(f"{url}/out.zarr", read_only=False, parameter="write_to")


# -- a real cluster: the source travels and reopens on the workers -----------------------


class _PidThreshold:
    """``window > 0.5`` labelled, noting the process it ran in."""

    def __init__(self, log):
        self.log = log

    def __call__(self, window):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return ndimage.label(window > 0.5)[0].astype(np.uint32)


def test_local_cluster_reads_s3_input(tmp_path, s3_server, s3_input, blobs):
    from distributed import Client, LocalCluster

    fs = s3_server.filesystem()
    bucket = s3_input.split("/")[2]
    before = _listing(fs, bucket)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        labels = tile_process(s3_input, _PidThreshold(str(tmp_path / "pids")), tile_shape=(12, 20, 20),
                              write_to=tmp_path / "c.zarr", storage_options=s3_server.storage_options,
                              client=client, compute=True)
        workers = set(client.run(os.getpid).values())
    # the tiles ran in the worker processes, which read their windows from the URL themselves
    # (a LazySource is read inside its task; it travelled as a URL and options and reopened there)
    ran = set(map(int, (tmp_path / "pids").read_text().split()))
    assert ran and ran <= workers and os.getpid() not in ran
    assert_labels_equivalent(labels, ndimage.label(blobs > 0.5)[0])
    assert _listing(fs, bucket) == before


# -- what a run costs in requests, counted by the servers ---------------------------------


def test_one_get_per_chunk_read_from_s3(tmp_path, s3_server, s3_input):
    # tiles = the input's chunks (12x20x20 over 24x40x40: 8 tiles); counted on the server, by kind
    s3_server.requests.reset()
    tile_process(s3_input, threshold(0.5), write_to=tmp_path / "o.zarr", storage_options=s3_server.storage_options)
    counts = s3_server.requests.snapshot()
    assert counts.get("list", 0) == 0 and counts.get("write", 0) == 0
    assert counts.get("head", 0) <= 2                # opening: zarr.json looked up once, not once per tile
    assert 8 <= counts["read"] <= 8 + 4              # one GET per chunk, plus the metadata


def test_one_get_per_chunk_read_over_http(tmp_path, http_server, blobs):
    write_ome_zarr(http_server.root_path / "img.ome.zarr", blobs, axes="zyx", chunks=(12, 20, 20))
    http_server.requests.reset()
    tile_process(f"{http_server.url}/img.ome.zarr", threshold(0.5), write_to=tmp_path / "o.zarr")
    counts = http_server.requests.snapshot()
    assert 8 <= counts["read"] <= 8 + 3 and counts.get("head", 0) <= 3  # zarr.json twice, level 0 once


def test_unreachable_http_endpoint_named():
    url = f"http://127.0.0.1:{_free_port()}/img.zarr"
    with pytest.raises(ConnectionError, match=f"image='{url}': cannot reach the http:// endpoint"):
        open_image(url)


def test_same_location_of_urls(s3_server, s3_input):
    from patchworks.io._sources import same_location

    src = open_image(s3_input, storage_options=s3_server.storage_options)
    assert same_location(src, s3_input + "/")                        # one spelling
    assert same_location(s3_input, s3_input.replace("s3://", "S3://") + "/labels/cells")  # inside it
    assert not same_location(s3_input, s3_input + "2")
    assert not same_location(s3_input, "in.zarr")                     # a URL is never a local path


def test_bench_remote_read_smoke():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_remote_read.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--repeat", "1"], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio s3 / local" in proc.stdout and "identical labels: yes" in proc.stdout
    assert "list" not in proc.stdout.split("requests of one S3 run:")[1].splitlines()[0]


def test_measure_remote_labels_into_a_local_table(tmp_path, s3_server, s3_bucket, blobs):
    so = s3_server.storage_options
    tile_process(blobs, threshold(0.5), tile_shape=(12, 20, 20), write_to=tmp_path / "cells.zarr", table=False)
    url = _upload(s3_server, tmp_path / "cells.zarr", s3_bucket, "cells.zarr")
    table = measure(url, storage_options=so, out=tmp_path / "t.zarr")
    # the local table remembers its labels by URL and checks them there
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.zarr", storage_options=so), table)
    s3_server.filesystem().rm(f"{s3_bucket}/cells.zarr", recursive=True)
    with pytest.raises(ValueError, match="are gone"):
        read_table(tmp_path / "t.zarr", storage_options=so)


def _presigned(s3_server, bucket, key):
    import boto3

    options = s3_server.storage_options
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=options["key"],
                          aws_secret_access_key=options["secret"], region_name="us-east-1")
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)


def test_a_signed_url_of_a_tiff_reads_and_labels(tmp_path, s3_server, s3_bucket, blobs):
    # a presigned GET URL: its token is the query, which names no format and must reach every ranged read
    import tifffile

    image = (blobs * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    s3_server.filesystem().put(str(tmp_path / "img.tif"), f"{s3_bucket}/img.tif")
    url = _presigned(s3_server, s3_bucket, "img.tif")
    assert "?" in url and url.startswith("http://127.0.0.1")
    source = open_image(url)
    assert source.kind == "tiff" and source.shape == image.shape
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[...], image)   # as a worker reopens it
    labels = tile_process(url, threshold(127), tile_shape=32, compute=True, progress=False)
    assert_labels_equivalent(labels, ndimage.label(image > 127)[0])


def test_a_signed_url_of_a_zarr_store_is_refused_with_the_way_out(s3_server, s3_bucket):
    url = _presigned(s3_server, s3_bucket, "img.zarr/zarr.json").replace("/zarr.json", "")
    with pytest.raises(ValueError, match=r"image=.*a signed URL\) must name one image file.*s3://"):
        open_image(url)
