"""URL resolution (patchworks.io._urls) against real servers on 127.0.0.1."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from patchworks.io._urls import is_remote, join, local_path, protocol_of, zarr_store


def test_paths_and_urls_are_told_apart(tmp_path):
    assert protocol_of("s3://b/k") == "s3" and protocol_of(tmp_path) is None and protocol_of("a/b") is None
    assert is_remote("s3://b/k") and is_remote("https://h/x") and not is_remote("file:///tmp/x")
    assert not is_remote(str(tmp_path)) and not is_remote(tmp_path)
    assert local_path("file:///tmp/x.zarr") == Path("/tmp/x.zarr") and local_path("s3://b/k") is None
    assert join("s3://b/k/", "a", "/b") == "s3://b/k/a/b" and join(tmp_path, "a") == tmp_path / "a"


def test_missing_backend_names_the_extra():
    with pytest.raises(ImportError, match=r"gs://.*pip install 'patchworks\[gcs\]'"):
        zarr_store("gs://bucket/x.zarr", read_only=True, parameter="image")


def test_http_is_read_only(http_root):
    root, url = http_root
    zarr.create_array(str(root / "a.zarr"), shape=(6,), chunks=(4,), dtype="u1")[:] = np.arange(6)
    np.testing.assert_array_equal(zarr.open_array(zarr_store(f"{url}/a.zarr", read_only=True))[:], np.arange(6))
    with pytest.raises(ValueError, match=r"write_to=.*http:// is read-only"):
        zarr_store(f"{url}/b.zarr", read_only=False, parameter="write_to")


def test_s3_round_trip(s3_server, s3_bucket):
    url = f"s3://{s3_bucket}/a.zarr"
    out = zarr.create_array(zarr_store(url, s3_server.storage_options, read_only=False),
                            shape=(5, 7), chunks=(2, 4), dtype="u4")
    out[:] = np.arange(35).reshape(5, 7)
    back = zarr.open_array(zarr_store(url, s3_server.storage_options, read_only=True))
    np.testing.assert_array_equal(back[:], np.arange(35).reshape(5, 7))
