"""S3 through obstore (Rust): the bulk requests of a run, where s3fs costs several ms of CPU each.

A tile run makes a few requests per tile (input chunk, staged tile, seam
planes, output chunks). Measured against the test S3 server on this 2-core
machine (``benchmarks/bench_s3_floor.py``), s3fs/aiobotocore spends 3.2-6.2 ms
of client CPU per request under the GIL and obstore 0.4-1.4 ms outside it. So
the zarr stores and the scratch of an ``s3://`` URL go through obstore when
it is installed (``patchworks[s3]``) and the ``storage_options`` are ones it
understands; anything else keeps s3fs, which knows every botocore setting
(profiles, SSO, custom sessions). The few per-run checks (does the bucket
exist, may we write there) stay on fsspec either way, so their error messages
do not change.

``PATCHWORKS_S3_CLIENT=fsspec`` in the environment keeps s3fs for everything.
"""

from __future__ import annotations

import functools
import json
import os
import threading

from zarr.storage import ObjectStore

__all__ = ["BulkDeleteObjectStore", "ObstoreKeys", "s3_object_store"]

# s3fs options that only tune s3fs's own client-side caches and parallelism
_IGNORED = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_concurrency",
                      "default_block_size", "default_fill_cache", "default_cache_type", "max_paths"})
_CREDENTIALS = {"key": "access_key_id", "aws_access_key_id": "access_key_id",
                "secret": "secret_access_key", "aws_secret_access_key": "secret_access_key",
                "token": "session_token", "aws_session_token": "session_token"}


def _config(storage_options: dict | None) -> dict | None:
    """obstore's ``S3Store`` keywords for s3fs-style ``storage_options``; None when one has no obstore twin."""
    so = dict(storage_options or {})
    client_kwargs = dict(so.pop("client_kwargs", None) or {})
    config: dict = {}
    for name, value in so.items():
        if name in _IGNORED:
            continue
        if name in _CREDENTIALS:
            config[_CREDENTIALS[name]] = value
        elif name == "anon":
            if value:
                config["skip_signature"] = True
        elif name == "endpoint_url":
            config["endpoint"] = value
        elif name == "requester_pays":
            if value:
                config["request_payer"] = True
        else:  # profile, config_kwargs, session, ...: botocore settings obstore does not read
            return None
    for name, value in client_kwargs.items():
        if name == "endpoint_url":
            config["endpoint"] = value
        elif name == "region_name":
            config["region"] = value
        else:
            return None
    env = os.environ
    if "endpoint" not in config and (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")):
        config["endpoint"] = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not ("access_key_id" in config or config.get("skip_signature") or env.get("AWS_ACCESS_KEY_ID")):
        return None  # botocore's credential chain (profiles, SSO, instance roles) stays with s3fs
    if "region" not in config and "endpoint" not in config and not (env.get("AWS_REGION")
                                                                   or env.get("AWS_DEFAULT_REGION")):
        return None  # s3fs finds a bucket's region by itself; obstore would assume us-east-1
    if str(config.get("endpoint", "")).startswith("http://"):
        config["client_options"] = {"allow_http": True}
    return config


def s3_object_store(location, storage_options: dict | None = None):
    """An obstore ``S3Store`` rooted at ``location`` (``s3://bucket/prefix``), or None to use s3fs.

    None when obstore is not installed, ``location`` is not ``s3://``,
    ``PATCHWORKS_S3_CLIENT=fsspec`` is set, or ``storage_options`` hold a
    setting only botocore understands.
    """
    scheme, sep, rest = str(location).partition("://")
    if not sep or scheme.lower() not in ("s3", "s3a") or os.environ.get("PATCHWORKS_S3_CLIENT", "").lower() == "fsspec":
        return None
    config = _config(storage_options)
    if config is None:
        return None
    try:
        import obstore  # noqa: F401
    except ImportError:
        return None
    bucket, _, prefix = rest.partition("/")
    return _s3_store(bucket, prefix.strip("/") or None, json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _s3_store(bucket: str, prefix: str | None, config: str):
    """One store per bucket, prefix and settings in a process: a new one costs ~7 ms and its own connections."""
    from obstore.store import S3Store

    return S3Store(bucket, prefix=prefix, **json.loads(config))


def _delete_batches(paths: list) -> list:
    """``paths`` in lists of 1000: S3's DeleteObjects takes that many keys per request."""
    return [paths[i:i + 1000] for i in range(0, len(paths), 1000)]


class BulkDeleteObjectStore(ObjectStore):
    """zarr's ``ObjectStore``, except that a whole prefix is removed in bulk.

    zarr deletes a directory (``open_group(mode="w")`` over an old run) with
    one DELETE per key; S3's DeleteObjects takes 1000 keys per request, which
    obstore sends for a list of paths.
    """

    async def delete_dir(self, prefix: str) -> None:
        import obstore

        self._check_writable()
        if prefix != "" and not prefix.endswith("/"):
            prefix += "/"
        paths = [meta["path"] for meta in await obstore.list(self.store, prefix).collect_async()]
        for batch in _delete_batches(paths):
            await obstore.delete_async(self.store, batch)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """This process's threads for batched reads (as many requests in flight as s3fs's default batch)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(16, thread_name_prefix="patchworks-obstore")
        return _POOL


class ObstoreKeys:
    """The remote half of :class:`~patchworks.io._scratch.Scratch` on an obstore store (same methods, same rules)."""

    def __init__(self, store):
        self.store = store

    def put(self, key: str, data) -> None:
        import obstore

        obstore.put(self.store, key, memoryview(data).cast("B") if not isinstance(data, bytes) else data)

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.store, key, bytes(data), mode="create")
            return True
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            return False

    def remove(self, key: str) -> None:
        import obstore

        try:
            obstore.delete(self.store, key)
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        import obstore

        paths = [meta["path"] for batch in obstore.list(self.store, chunk_size=1000) for meta in batch]
        for batch in _delete_batches(paths):
            obstore.delete(self.store, batch)

    def get(self, key: str) -> bytes:
        import obstore

        return obstore.get(self.store, key).bytes().to_bytes()

    def get_ranges(self, keys, starts, stops) -> list[bytes | None]:
        """Whole objects (``stop`` None) or ranges of them, all at once on a pool of threads.

        obstore's sync calls release the GIL, so the requests overlap. Not
        asyncio: a caller in a running event loop (a Jupyter cell) could not
        start another one.
        """
        import obstore

        def one(item):
            key, start, stop = item
            try:
                if stop is None:
                    result = obstore.get(self.store, key, options={"range": {"offset": start}} if start else None)
                    return result.bytes().to_bytes()
                return obstore.get_range(self.store, key, start=start, end=stop).to_bytes()
            except FileNotFoundError:
                return None

        items = list(zip(keys, starts, stops))
        if len(items) == 1:
            return [one(items[0])]
        return list(_pool().map(one, items))

    def keys(self, prefix: str = "") -> dict[str, int]:
        import obstore

        listing = obstore.list_with_delimiter(self.store, None)
        return {meta["path"].rsplit("/", 1)[-1]: int(meta["size"]) for meta in listing["objects"]
                if meta["path"].rsplit("/", 1)[-1].startswith(prefix)}
