"""The object table on disk: anndata's dataframe layout inside the label image.

A table is a zarr group (``<label image>/table``) holding one 1-D array per
column, with the attributes anndata's on-disk spec asks of a dataframe
(``encoding-type: dataframe``, ``encoding-version: 0.2.0``, ``_index``,
``column-order``; every column ``encoding-type: array``), so that
``anndata.io.read_elem`` reads it as well as :func:`read_table` does. Our own
record sits under the ``"patchworks"`` key: where the labels it describes
are (a path relative to the table), a stamp of those labels, voxel size and
units, and ``complete``, written last. A table whose labels no longer match
the stamp is refused as stale.

Rows are streamed to disk chunk by chunk (:class:`TableWriter`), so writing
a table of 10**7 objects needs memory for one chunk of rows only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from ._urls import READ_ONLY_PROTOCOLS, filesystem, is_remote, join, protocol_of, zarr_store
from ._zarr_nodes import draft_group, write_nodes

__all__ = ["TableWriter", "labels_stamp", "read_table", "table_location", "write_table_file"]

_CHUNK_ROWS = 1 << 16
_META_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def table_location(write_to, output_component=None) -> tuple:
    """Where :func:`patchworks.tile_process` writes the table of a label output, and the labels seen from it.

    Returns ``(table group path, labels path relative to the table)``. The
    one place that decides it: an NGFF label image group ``G`` keeps it at
    ``G/table``; a bare array keeps it in its own directory.
    """
    root = write_to if is_remote(write_to) else Path(os.fspath(write_to))
    if output_component:
        parent, _, name = output_component.strip("/").rpartition("/")
        group = join(root, parent) if parent else root
        return join(group, "table"), f"../{name}"
    return join(root, "table"), ".."


def _is_node(path: Path) -> bool:
    return any((path / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))


def _local_chunks(array_dir: Path) -> tuple[list[str], list[str]] | None:
    """``(name:size:mtime, name:size)`` of every chunk file of a local array, one walk for both; None if absent."""
    if not array_dir.is_dir():
        return None
    full, sizes = [], []
    stack = [array_dir]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    sub = Path(e.path)
                    if not _is_node(sub) and not e.name.startswith(".patchworks"):  # child nodes are not chunks
                        stack.append(sub)
                elif e.name not in _META_FILES and not e.name.endswith(".part"):
                    st = e.stat(follow_symlinks=False)
                    rel = os.path.relpath(e.path, array_dir)
                    full.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
                    sizes.append(f"{rel}:{st.st_size}")
    return sorted(full), sorted(sizes)


def _digest(entries: list[str]) -> str:
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def _remote_chunks(url, storage_options) -> tuple[list[str], list[str]]:
    """``(name:size:etag, name:size)`` of every chunk object of a remote array, one listing for all."""
    fs, root = filesystem(url, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # a listing cached before the run wrote its chunks would stamp the old ones
    children = set()  # child nodes (their own zarr.json / .zarray) are not chunks
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    for name in found:
        rel = name[len(root) + 1:]
        head, _, tail = rel.rpartition("/")
        if head and tail in ("zarr.json", ".zarray", ".zgroup"):
            children.add(head + "/")
    full, sizes = [], []
    for name, info in found.items():
        rel = name[len(root) + 1:]
        tail = rel.rpartition("/")[2]
        if tail in _META_FILES or tail.endswith(".part") or rel.startswith(".patchworks") \
                or any(rel.startswith(c) for c in children):
            continue
        size = info.get("size")
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or ""
        full.append(f"{rel}:{size}:{str(tag).strip(chr(34))}")
        sizes.append(f"{rel}:{size}")
    return sorted(full), sorted(sizes)


def labels_stamp(labels_path, storage_options: dict | None = None, zarr_format: int | None = None) -> dict:
    """What makes a table stale: the labels' run fingerprint, level-0 metadata and chunk files.

    ``labels_path`` is a zarr array directory or URL (level 0 of a label
    image). Any rewrite of a chunk (a new run, an edit in a viewer) changes
    the chunk digest (of names, sizes and modification times locally, of
    names, sizes and ETags in an object store); a different run also changes
    the fingerprint. ``chunk_sizes`` (names and sizes only) lets a table
    whose label image was copied to another store be checked there.
    ``zarr_format``: the array's, when known (spares zarr probing both
    formats' keys: 3 requests remotely).
    """
    remote = is_remote(labels_path)
    if remote:
        arr = zarr.open_array(store=zarr_store(labels_path, storage_options, read_only=True), mode="r",
                              zarr_format=zarr_format)
        parent = str(labels_path).rstrip("/").rpartition("/")[0]
        parent_store = lambda: zarr_store(parent, storage_options, read_only=True)  # noqa: E731
    else:
        path = Path(os.fspath(labels_path))
        arr = zarr.open_array(str(path), mode="r", zarr_format=zarr_format)
        parent_store = lambda: str(path.parent)  # noqa: E731
    record = dict(arr.attrs).get("patchworks") or {}
    if not record.get("fingerprint"):  # an NGFF label image keeps the run record on its group
        try:
            # the array's format is the group's: naming it spares zarr probing both (3 requests remotely)
            record = dict(zarr.open_group(store=parent_store(), mode="r", zarr_format=arr.metadata.zarr_format
                                          ).attrs).get("patchworks") or {}
        except Exception:
            record = {}
    listable = protocol_of(labels_path) not in READ_ONLY_PROTOCOLS
    if remote and not listable:  # HTTP servers need not list anything: the run record decides
        digest = sizes_digest = None
    elif remote:
        full, sizes = _remote_chunks(labels_path, storage_options)
        digest, sizes_digest = _digest(full), _digest(sizes)
    else:
        found = _local_chunks(path)
        digest, sizes_digest = (None, None) if found is None else (_digest(found[0]), _digest(found[1]))
    return {"fingerprint": record.get("fingerprint"), "shape": list(arr.shape), "dtype": str(arr.dtype),
            "chunks": list(arr.chunks), "chunk_digest": digest, "chunk_sizes": sizes_digest,
            "digest_of": "mtime" if not remote else "etag" if listable else "unlisted"}


def stamp_matches(recorded: dict, now: dict | None) -> bool:
    """Whether labels stamped ``now`` are those ``recorded``.

    Stamps taken on the same kind of store compare whole. Across kinds (a
    label image copied from disk to a bucket, or back) modification times
    and ETags mean nothing: the chunk names and sizes decide. Over HTTP,
    which lists nothing, the run fingerprint and the array's metadata do.
    """
    if now is None:
        return False
    keys = ("fingerprint", "shape", "dtype", "chunks")
    if now.get("digest_of") == "unlisted":  # over HTTP: no listing to digest, the run's fingerprint decides
        return all(recorded.get(k) == now.get(k) for k in keys)
    if recorded.get("digest_of", "mtime") == now.get("digest_of"):
        return all(recorded.get(k) == now.get(k) for k in recorded)
    return all(recorded.get(k) == now.get(k) for k in keys) and \
        recorded.get("chunk_sizes", now.get("chunk_sizes")) == now.get("chunk_sizes")


def _array_attrs():
    return {"encoding-type": "array", "encoding-version": "0.2.0"}


class TableWriter:
    """Stream rows into a new table group: ``append`` columns in row order, then ``close``.

    Parameters
    ----------
    path : path
        The table group to create (replaced if it exists).
    n_rows : int
        Total number of rows that will be appended.
    dtypes : dict
        ``{column: dtype}``; the first column is the index (``label``).
    record : dict
        Stored under ``attrs["patchworks"]`` (``complete`` is added by :meth:`close`).
    zarr_format : {3, 2}
    """

    def __init__(self, path, n_rows: int, dtypes: dict, *, record: dict, zarr_format: int = 3,
                 chunk_rows: int | None = None, storage_options: dict | None = None):
        if is_remote(path):
            self.path = str(path)
        else:
            self.path = Path(os.fspath(path))
            if self.path.exists():
                shutil.rmtree(self.path)
        store = zarr_store(self.path, storage_options, read_only=False, parameter="write_to")
        names = list(dtypes)
        self.index = names[0]
        chunk_rows = _CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.n_rows, self.chunk = int(n_rows), int(max(1, min(chunk_rows, max(n_rows, 1))))
        # Every node's metadata is drafted in memory, then written in one concurrent batch: one PUT per node.
        # Creating the columns one by one in the store sent ~5 requests each (existence checks of the array
        # and its parents, then the write), one after the other: 2/3 of the table's time on S3.
        draft = draft_group(zarr_format)
        # v3 chunk keys "c.0", as v2's "0": a column's chunks sit next to its metadata, with no "c/" directory
        # (on local disk one mkdir less per column; creating one costs as much as a file)
        keys = {"chunk_key_encoding": {"name": "default", "separator": "."}} if zarr_format == 3 else {}
        nodes = {name: draft.create_array(name, shape=(self.n_rows,), chunks=(self.chunk,), dtype=np.dtype(dtype),
                                          fill_value=0, attributes=_array_attrs(), **keys).metadata
                 for name, dtype in dtypes.items()}
        draft.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": self.index,
                            "column-order": names[1:], "patchworks": {**record, "complete": False}})
        if is_remote(path):  # a table written before over the same prefix: none of its chunks may survive
            sync(store.delete_dir(""))
        self.group, self.arrays = write_nodes(store, draft.metadata, nodes)
        self.buffer = {name: [] for name in names}
        self.buffered = 0
        self.written = 0
        self.record = record

    def append(self, columns: dict) -> None:
        n = len(next(iter(columns.values()))) if columns else 0
        if n == 0:
            return
        for name in self.arrays:
            self.buffer[name].append(np.asarray(columns[name]))
        self.buffered += n
        while self.buffered >= self.chunk:
            self._flush(self.chunk)

    def _flush(self, n: int) -> None:
        start, writes = self.written, []
        for name, a in self.arrays.items():
            data = np.concatenate(self.buffer[name])
            writes.append(a._async_array.setitem(slice(start, start + n), data[:n]))
            self.buffer[name] = [data[n:]] if data.size > n else []

        async def write_all():  # one chunk per column: sent together, not one column after the other
            await asyncio.gather(*writes)

        sync(write_all())
        self.written += n
        self.buffered -= n

    def close(self) -> None:
        """Write the last rows and mark the table complete (last of all writes)."""
        if self.buffered:
            self._flush(self.buffered)
        if self.written != self.n_rows:
            raise RuntimeError(f"table {self.path}: {self.written} rows written, {self.n_rows} announced")
        self.group.attrs["patchworks"] = {**self.record, "complete": True}


def _open_group(location, storage_options=None):
    if is_remote(location):
        return zarr.open_group(store=zarr_store(location, storage_options, read_only=True), mode="r")
    return zarr.open_group(str(location), mode="r")


def _find_remote_table(url: str, storage_options) -> str:
    for candidate in (url.rstrip("/"), join(url, "table")):
        try:
            attrs = dict(_open_group(candidate, storage_options).attrs)
        except Exception:
            continue
        if attrs.get("encoding-type") == "dataframe":
            return candidate
    raise FileNotFoundError(
        f"path={url!r} holds no object table (looked for a dataframe group there and at {join(url, 'table')!r}); "
        f"label images written with table=False or by other tools have none: compute one with "
        f"patchworks.measure(labels, image=...)")


def _resolve_against(table: str, rel: str) -> str:
    """The labels a remote table describes: ``rel`` (``..``, ``../0``) against its URL, or an absolute URL."""
    if is_remote(rel):
        return rel
    protocol, _, rest = table.partition("://")
    return f"{protocol}://" + posixpath.normpath(posixpath.join(rest, rel))


def _find_table(path, storage_options=None):
    if is_remote(path):
        return _find_remote_table(str(path), storage_options)
    path = Path(os.fspath(path))
    for candidate in (path, path / "table"):
        if _is_node(candidate):
            try:
                attrs = dict(zarr.open_group(str(candidate), mode="r").attrs)
            except Exception:
                continue
            if attrs.get("encoding-type") == "dataframe":
                return candidate
    raise FileNotFoundError(
        f"path={str(path)!r} holds no object table (looked for a dataframe group there and at "
        f"{str(path / 'table')!r}); label images written with table=False or by other tools have none: "
        f"compute one with patchworks.measure(labels, image=...)")


def read_table(path, *, check: bool = True, storage_options=None):
    """Read the object table of a label image as a pandas DataFrame indexed by label.

    Parameters
    ----------
    path : path or URL
        A label image written by patchworks (or its ``table`` group), on
        disk or behind a URL (``s3://``, ``http(s)://``, ...).
    check : bool, default True
        Refuse a table whose labels changed since it was written (a new run
        over them, an edit). ``False`` reads it anyway. A label image copied
        to another kind of store is checked by its chunks' names and sizes.
    storage_options : dict, optional
        Options of the fsspec backend of a URL (credentials, endpoint).

    Returns
    -------
    pandas.DataFrame
        One row per object, index ``label``; ``df.attrs`` holds
        ``voxel_size``, ``units`` and ``axes`` when known.

    Examples
    --------
    >>> import numpy as np, tempfile, os, patchworks
    >>> img = np.zeros((4, 6)); img[1:3, 1:5] = 1
    >>> out = os.path.join(tempfile.mkdtemp(), "cells.zarr")
    >>> _ = patchworks.tile_process(img, patchworks.threshold(0.5), tile_shape=(4, 3), write_to=out)
    >>> table = patchworks.read_table(out)
    >>> table.index.tolist(), table["area"].tolist(), table["bbox-1"].tolist(), table["bbox-3"].tolist()
    ([1], [8], [1], [5])
    """
    import pandas as pd

    remote = is_remote(path)
    table = _find_table(path, storage_options)
    group = _open_group(table, storage_options)
    attrs = dict(group.attrs)
    record = attrs.get("patchworks") or {}
    if record and not record.get("complete"):
        raise ValueError(f"the table at {str(table)!r} is incomplete (its run was interrupted); re-run the call "
                         f"that wrote it to resume, or compute it again with patchworks.measure")
    if check and record.get("stamp") is not None and record.get("labels") is not None:
        if remote or is_remote(record["labels"]):  # a table of remote labels keeps their URL
            labels = _resolve_against(str(table), record["labels"])
            try:
                now = labels_stamp(labels, storage_options=storage_options)
            except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
                now = None
        else:
            labels = (table / record["labels"]).resolve()
            now = labels_stamp(labels) if labels.exists() else None
        if not stamp_matches(record["stamp"], now):
            what = "are gone" if now is None else "changed since the table was written"
            raise ValueError(
                f"the table at {str(table)!r} is stale: the labels it describes ({str(labels)!r}) {what}; "
                f"compute it again with patchworks.measure({str(labels)!r}, ...) or pass check=False to read it anyway")
    index = attrs.get("_index", "label")
    columns = {name: np.asarray(group[name][...]) for name in attrs.get("column-order", [])}
    df = pd.DataFrame(columns, index=pd.Index(np.asarray(group[index][...]), name=index))
    df.attrs.update({k: record[k] for k in ("voxel_size", "units", "axes") if record.get(k) is not None})
    return df


def write_table_file(df, path) -> Path:
    """Export a table to CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, needs ``pyarrow``)."""
    path = Path(os.fspath(path))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        df.to_csv(path, sep="," if suffix == ".csv" else "\t")
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ImportError('writing Parquet needs pyarrow: pip install "patchworks[table]"') from exc
        df.to_parquet(path)
    else:
        raise ValueError(f"out={str(path)!r}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    return path


def table_columns_of(path, storage_options=None) -> list[str]:
    """Column names of a stored table (for ``patchworks info``), index first."""
    group = _open_group(_find_table(path, storage_options), storage_options)
    attrs = dict(group.attrs)
    return [attrs.get("_index", "label"), *attrs.get("column-order", [])]

