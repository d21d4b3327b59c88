"""Where a path or URL points: a local path, or an fsspec filesystem and a path on it.

Every place that accepts a path also accepts ``s3://``, ``gs://``, ``az://``,
``http(s)://`` (read-only) and ``file://`` URLs. This module is the one place
that tells them apart, finds the fsspec backend (naming the patchworks extra
when it is missing) and builds zarr stores for them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ._objstore import BulkDeleteObjectStore, s3_object_store

__all__ = [
    "READ_ONLY_PROTOCOLS",
    "explain_remote_error",
    "filesystem",
    "hides_connection_error",
    "is_remote",
    "join",
    "local_path",
    "protocol_of",
    "read_options",
    "zarr_store",
]

# protocol -> the patchworks extra that installs its fsspec backend
_EXTRAS = {
    "s3": "s3", "s3a": "s3",
    "gs": "gcs", "gcs": "gcs",
    "az": "azure", "abfs": "azure", "abfss": "azure", "adl": "azure",
    "http": "http", "https": "http",
}
READ_ONLY_PROTOCOLS = frozenset({"http", "https"})


def protocol_of(location: Any) -> str | None:
    """The URL scheme of ``location`` (``"s3"``, ``"file"``, ...), or None for a plain path / non-string."""
    if isinstance(location, os.PathLike) or not isinstance(location, str):
        return None
    head, sep, _ = location.partition("://")
    if not sep or not head or not head.replace("+", "").replace("-", "").isalnum():
        return None
    return head.lower()


def is_remote(location: Any) -> bool:
    """True for a URL that is not ``file://`` (``s3://``, ``gs://``, ``http(s)://``, ...)."""
    protocol = protocol_of(location)
    return protocol is not None and protocol not in ("file", "local")


def local_path(location: Any) -> Path | None:
    """A plain path or ``file://`` URL as a :class:`~pathlib.Path`; None for a remote URL or a non-path."""
    if isinstance(location, os.PathLike):
        return Path(location)
    if not isinstance(location, str):
        return None
    protocol = protocol_of(location)
    if protocol is None:
        return Path(location)
    if protocol in ("file", "local"):
        return Path(location.split("://", 1)[1])
    return None


def _missing_backend(location: str, parameter: str, exc: Exception) -> ImportError:
    protocol = protocol_of(location) or "?"
    extra = _EXTRAS.get(protocol)
    fix = f"pip install 'patchworks[{extra}]'" if extra else f"install the fsspec implementation for {protocol!r}"
    return ImportError(f"{parameter}={location!r}: reading {protocol}:// URLs needs its fsspec backend ({exc}); {fix}")


@contextlib.contextmanager
def _backend_errors(location: str, parameter: str):
    """Turn fsspec's "no backend for this protocol" errors into an ImportError naming the patchworks extra."""
    try:
        yield
    except ImportError as exc:
        raise _missing_backend(location, parameter, exc) from exc
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise _missing_backend(location, parameter, exc) from exc
        raise


def filesystem(location: str, storage_options: dict | None = None, *, parameter: str = "path"):
    """``(fs, path)`` for a URL through fsspec, with ``storage_options`` passed to the backend.

    Raises an ImportError naming the patchworks extra when the backend is not installed.
    """
    import fsspec

    with _backend_errors(location, parameter):
        return fsspec.core.url_to_fs(location, **(storage_options or {}))


def read_options(location, storage_options: dict | None = None) -> dict | None:
    """``storage_options`` for reading ``location``, with defaults that save requests.

    s3fs (>= 2025) sends a HEAD before every whole-object GET to decide
    whether to fetch it in parallel parts (``max_concurrency`` > 1); zarr
    chunks are far below its part size, so that HEAD doubled the requests
    per chunk read. ``max_concurrency=1`` skips it, unless the caller chose
    (for writes it only bounds the parts of a multipart upload, which zarr
    chunks never need either).
    """
    if protocol_of(location) in ("s3", "s3a") and "max_concurrency" not in (storage_options or {}):
        return {**(storage_options or {}), "max_concurrency": 1}
    return storage_options


def zarr_store(location, storage_options: dict | None = None, *, read_only: bool, parameter: str = "path"):
    """A zarr v3 store for a path or URL: ``LocalStore`` locally, ``ObjectStore`` for S3 where obstore can, else ``FsspecStore``."""
    from zarr.storage import FsspecStore, LocalStore

    path = local_path(location)
    if path is not None:
        return LocalStore(path, read_only=read_only)
    protocol = protocol_of(location)
    if not read_only and protocol in READ_ONLY_PROTOCOLS:
        raise ValueError(
            f"{parameter}={location!r}: {protocol}:// is read-only; write to a local path or an object store "
            "(s3://, gs://, az://) instead")
    store = s3_object_store(location, storage_options)
    if store is not None:  # obstore: a fraction of s3fs's CPU per request (io/_objstore.py)
        return BulkDeleteObjectStore(store, read_only=read_only)
    # an output store reads too (pyramid levels derived from the finer one, partial chunk writes)
    storage_options = read_options(location, storage_options)
    with _backend_errors(location, parameter):
        return FsspecStore.from_url(location, storage_options=storage_options or None, read_only=read_only)


def join(location, *parts: str) -> str | Path:
    """``location / part / ...`` for a path (a Path) or a URL (a string with ``/``)."""
    path = local_path(location)
    if path is not None:
        return path.joinpath(*parts)
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


# exception class names (anywhere in the MRO) that mean "the endpoint could not be reached":
# botocore's, aiohttp's and the standard library's, matched by name so no backend is imported here
_CONNECTION_ERRORS = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
    "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError", "ConnectionError", "TimeoutError",
})


def hides_connection_error(exc: BaseException) -> bool:
    """True for a FileNotFoundError raised over a refused connection (fsspec's HTTP ``info`` does that)."""
    cause = exc.__cause__ or exc.__context__
    return cause is not None and bool({cls.__name__ for cls in type(cause).__mro__} & _CONNECTION_ERRORS)


def _endpoint(storage_options: dict | None) -> str | None:
    """The endpoint a URL's requests go to, when ``storage_options`` names one (never the credentials)."""
    so = storage_options or {}
    return so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")


def explain_remote_error(location: str, exc: BaseException, storage_options: dict | None = None, *,
                         parameter: str = "path") -> BaseException | None:
    """An error naming ``location`` and the fix for what went wrong reaching it; None if ``exc`` is not such a failure.

    Missing objects keep FileNotFoundError, refused access PermissionError and
    an unreachable endpoint becomes ConnectionError, so callers that catch
    OSError still do. The message never shows ``storage_options``' values.
    """
    protocol = protocol_of(location) or "file"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, FileNotFoundError) and hides_connection_error(exc):
        exc = exc.__cause__ or exc.__context__
        names = {cls.__name__ for cls in type(exc).__mro__}
    where = f"{parameter}={location!r}"
    endpoint = _endpoint(storage_options)
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"{where}: not found ({exc or 'no such object'}); check the bucket and the key, "
                                 f"and that the URL is spelled as the store lists it")
    if isinstance(exc, PermissionError) or "NoCredentialsError" in names or "InvalidAccessKeyId" in str(exc):
        creds = {"s3": "storage_options={'key': ..., 'secret': ...} (or 'profile': ...), or AWS_ACCESS_KEY_ID / "
                       "AWS_SECRET_ACCESS_KEY / AWS_PROFILE in the environment of the driver and of every worker",
                 "gs": "storage_options={'token': ...}, or GOOGLE_APPLICATION_CREDENTIALS",
                 "az": "storage_options={'account_name': ..., 'account_key': ...} (or 'sas_token'), or "
                       "AZURE_STORAGE_CONNECTION_STRING"}
        fix = creds.get({"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(protocol, protocol),
                        "storage_options with the credentials the server expects")
        return PermissionError(f"{where}: access denied ({type(exc).__name__}: {exc}); check the credentials: {fix}")
    if names & _CONNECTION_ERRORS:
        at = f" at {endpoint}" if endpoint else ""
        return ConnectionError(f"{where}: cannot reach the {protocol}:// endpoint{at} ({type(exc).__name__}: {exc}); "
                               "check the endpoint URL (storage_options={'client_kwargs': {'endpoint_url': ...}} "
                               "or AWS_ENDPOINT_URL for S3), the network and any proxy")
    return None
