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

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from ._urls import filesystem, is_remote, join, zarr_store

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


def _chunk_digest(array_dir: Path) -> str | None:
    """Digest of the names, sizes and modification times of an array's chunk files (local stores)."""
    if not array_dir.is_dir():
        return None
    entries = []
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
                    entries.append(f"{os.path.relpath(e.path, array_dir)}:{st.st_size}:{st.st_mtime_ns}")
    entries.sort()
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def _remote_digest(url: str, storage_options) -> str | None:
    """Digest of the names, sizes and ETags of an array's chunk objects (one recursive listing)."""
    fs, root = filesystem(url, storage_options, parameter="write_to")
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return None
    entries = []
    nodes = {k.rsplit("/", 1)[0] for k in found if k.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zgroup")}
    nodes.discard(root)
    for key, info in found.items():
        name = key.rsplit("/", 1)[-1]
        rel = key[len(root) + 1:]
        if name in _META_FILES or any(key.startswith(n + "/") for n in nodes) or ".patchworks" in rel:
            continue
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        entries.append(f"{rel}:{info.get('size')}:{tag}")
    entries.sort()
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def labels_stamp(labels_path, storage_options: dict | None = None) -> dict:
    """What makes a table stale: the labels' run fingerprint, level-0 metadata and chunk files.

    ``labels_path`` is a zarr array directory (level 0 of a label image).
    Any rewrite of a chunk (a new run, an edit in a viewer) changes the
    chunk digest; a different run also changes the fingerprint.
    """
    if is_remote(labels_path):
        url = str(labels_path).rstrip("/")
        arr = zarr.open_array(store=zarr_store(url, storage_options, read_only=True), mode="r")
        parent = url.rsplit("/", 1)[0]
        open_parent = lambda: zarr.open_group(store=zarr_store(parent, storage_options, read_only=True),  # noqa: E731
                                              mode="r")
        digest = _remote_digest(url, storage_options)
    else:
        path = Path(os.fspath(labels_path))
        arr = zarr.open_array(str(path), mode="r")
        open_parent = lambda: zarr.open_group(str(path.parent), mode="r")  # noqa: E731
        digest = _chunk_digest(path)
    record = dict(arr.attrs).get("patchworks") or {}
    if not record.get("fingerprint"):  # an NGFF label image keeps the run record on its group
        try:
            record = dict(open_parent().attrs).get("patchworks") or {}
        except Exception:
            record = {}
    return {"fingerprint": record.get("fingerprint"), "shape": list(arr.shape), "dtype": str(arr.dtype),
            "chunks": list(arr.chunks), "chunk_digest": digest}


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
                 chunk_rows: int = _CHUNK_ROWS, storage_options: dict | None = None):
        if is_remote(path):  # mode="w" below clears the prefix of an object store
            self.path = str(path)
            store = zarr_store(self.path, storage_options, read_only=False, parameter="write_to")
        else:
            self.path = Path(os.fspath(path))
            if self.path.exists():
                shutil.rmtree(self.path)
            store = str(self.path)
        names = list(dtypes)
        self.index = names[0]
        self.group = zarr.open_group(store=store, mode="w", zarr_format=zarr_format)
        self.group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": self.index,
                                 "column-order": names[1:],
                                 "patchworks": {**record, "complete": False}})
        self.n_rows, self.chunk = int(n_rows), int(max(1, min(chunk_rows, max(n_rows, 1))))
        self.arrays = {}
        for name, dtype in dtypes.items():
            # attributes at creation: one metadata write per column, not two (each a request remotely)
            a = self.group.create_array(name, shape=(self.n_rows,), chunks=(self.chunk,), dtype=np.dtype(dtype),
                                        fill_value=0, attributes=_array_attrs())
            self.arrays[name] = a
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
        start = self.written
        for name, a in self.arrays.items():
            data = np.concatenate(self.buffer[name])
            a[start:start + n] = data[:n]
            self.buffer[name] = [data[n:]] if data.size > n else []
        self.written += n
        self.buffered -= n

    def close(self) -> None:
        """Write the last rows and mark the table complete (last of all writes)."""
        if self.buffered:
            self._flush(self.buffered)
        if self.written != self.n_rows:
            raise RuntimeError(f"table {self.path}: {self.written} rows written, {self.n_rows} announced")
        self.group.attrs["patchworks"] = {**self.record, "complete": True}


def _find_table(path: Path) -> Path:
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


def read_table(path, *, check: bool = True):
    """Read the object table of a label image as a pandas DataFrame indexed by label.

    Parameters
    ----------
    path : path
        A label image written by patchworks (or its ``table`` group).
    check : bool, default True
        Refuse a table whose labels changed since it was written (a new run
        over them, an edit). ``False`` reads it anyway.

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

    table = _find_table(Path(os.fspath(path)))
    group = zarr.open_group(str(table), mode="r")
    attrs = dict(group.attrs)
    record = attrs.get("patchworks") or {}
    if record and not record.get("complete"):
        raise ValueError(f"the table at {str(table)!r} is incomplete (its run was interrupted); re-run the call "
                         f"that wrote it to resume, or compute it again with patchworks.measure")
    if check and record.get("stamp") is not None and record.get("labels") is not None:
        labels = (table / record["labels"]).resolve()
        now = labels_stamp(labels) if labels.exists() else None
        if now != record["stamp"]:
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


def table_columns_of(path) -> list[str]:
    """Column names of a stored table (for ``patchworks info``), index first."""
    group = zarr.open_group(str(_find_table(Path(os.fspath(path)))), mode="r")
    attrs = dict(group.attrs)
    return [attrs.get("_index", "label"), *attrs.get("column-order", [])]

