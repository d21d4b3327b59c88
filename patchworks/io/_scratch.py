"""A run's scratch: keyed objects in a local directory or under an object-store prefix.

Every scratch writer (staged tiles and their seam planes or IoU bands, table
partials, pyramid pieces, the run record and its lock) goes through
:class:`Scratch`, so the same code runs on one machine and on workers that
share no file system. Its rules:

- ``put`` is atomic: a local file is written aside and renamed; an object
  store's PUT is atomic by itself. The presence of a key means its whole
  content is there (a staged tile is "staged").
- ``keys`` lists once (one request per 1000 keys on S3): a resumed run lists
  its staged tiles, it never asks tile by tile.
- ``get_ranges`` reads many byte ranges of many keys in one call, concurrently
  on an async filesystem (s3fs, gcsfs, adlfs), so a seam task that needs one
  plane from each of several tiles pays one round trip, not one per tile.
- ``create`` is an exclusive write (``O_EXCL`` locally, ``If-None-Match: *``
  on S3), the building block of the run lock.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ._urls import filesystem, is_remote, join, local_path, protocol_of

__all__ = ["Scratch"]


class Scratch:
    """Keyed bytes under ``location`` (a path, a ``file://`` URL or an object-store URL); picklable.

    Parameters
    ----------
    location : path or str
        The scratch root: a local directory, or a prefix such as
        ``"s3://bucket/.patchworks-out.zarr-1234"``.
    storage_options : dict, optional
        Passed to the fsspec backend of a URL (credentials, endpoint).
    """

    def __init__(self, location, storage_options: dict | None = None):
        self.storage_options = storage_options or None
        path = local_path(location)
        self.path = path                      # local root, or None
        self.url = None if path is not None else str(location).rstrip("/")
        self._fs = None

    # -- identity --------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return self.path is None

    @property
    def location(self):
        return self.path if self.path is not None else self.url

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"Scratch({str(self.location)!r})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fs"] = None                   # rebuilt in each process from the URL and options
        return state

    def __eq__(self, other) -> bool:
        return isinstance(other, Scratch) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def child(self, name: str) -> "Scratch":
        """The scratch one level down (``tiles``, ``pyramid``)."""
        return Scratch(join(self.location, name), self.storage_options)

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, self.storage_options, parameter="scratch_dir")
        return self._fs

    def _full(self, key: str) -> str:
        self.fs  # noqa: B018 -- sets _root
        return f"{self._root.rstrip('/')}/{key}"

    def _file(self, key: str) -> str:
        # plain strings: pathlib's joins cost ~20 us each, and a run makes several per tile under the GIL
        return f"{self.path}{os.sep}{key}"

    # -- writing ---------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, atomically (replacing what was there)."""
        if self.remote:
            self.fs.pipe_file(self._full(key), bytes(data))
            return
        target = self._file(key)
        # a name of its own per writer: a retried task and the ghost of the first try may put one key at once
        tmp = f"{target}.{uuid.uuid4().hex[:12]}.part"
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.write(data)
        os.replace(tmp, target)

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if nothing is there; False when something is.

        Exclusive on local disks and on backends that honour a conditional
        PUT (S3's ``If-None-Match: *``); elsewhere a write followed by a
        read-back check, which loses a race only when two writers land within
        one round trip.
        """
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self._file(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        full = self._full(key)
        try:
            self.fs.pipe_file(full, bytes(data), mode="create")
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):  # a backend without exclusive writes
            if self.fs.exists(full):
                return False
            self.fs.pipe_file(full, bytes(data))
            return self.fs.cat_file(full) == bytes(data)

    def remove(self, key: str) -> None:
        """Remove one key (nothing happens when it is absent)."""
        try:
            if self.remote:
                self.fs.rm_file(self._full(key))
            else:
                os.unlink(self._file(key))
        except (FileNotFoundError, OSError):
            pass

    def remove_all(self) -> None:
        """Remove the whole scratch (every key under it)."""
        if not self.remote:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        root = self._full("").rstrip("/")
        try:
            self.fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(root)

    # -- reading ---------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The bytes under ``key``; FileNotFoundError when absent."""
        if self.remote:
            # a ranged GET from 0: s3fs answers a plain cat_file with a HEAD (for its size) and then a GET
            return self.fs.cat_file(self._full(key), start=0)
        with open(self._file(key), "rb") as f:
            return f.read()

    def get_ranges(self, keys, starts, stops) -> list[bytes | None]:
        """``data[start:stop]`` of each key in one batch; None for a key that is absent.

        A range past the end of an object gives what there is (maybe ``b""``).
        """
        keys, starts, stops = list(keys), list(starts), list(stops)
        if not keys:
            return []
        if self.remote:
            out = self.fs.cat_ranges([self._full(k) for k in keys], starts, stops, on_error="return")
            result = []
            for key, item in zip(keys, out):
                if isinstance(item, FileNotFoundError):
                    result.append(None)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    result.append(bytes(item))
            return result
        result = []
        for key, start, stop in zip(keys, starts, stops):
            try:
                with open(self._file(key), "rb") as f:
                    f.seek(start)
                    result.append(f.read(max(0, stop - start)))
            except FileNotFoundError:
                result.append(None)
        return result

    def get_many(self, keys) -> list[bytes | None]:
        """The whole bytes of each key in one batch (concurrent on an object store); None for a key that is absent."""
        keys = list(keys)
        if not self.remote:
            out = []
            for key in keys:
                try:
                    out.append(self.get(key))
                except FileNotFoundError:
                    out.append(None)
            return out
        # ranges from 0 to the end: s3fs sends a plain whole-object read as a HEAD and a GET
        return self.get_ranges(keys, [0] * len(keys), [None] * len(keys))

    def keys(self, prefix: str = "") -> dict[str, int]:
        """``{key: size}`` of every key directly under the scratch starting with ``prefix`` (one listing)."""
        if not self.remote:
            try:
                with os.scandir(self.path) as it:
                    return {e.name: e.stat().st_size for e in it
                            if e.is_file() and e.name.startswith(prefix) and not e.name.endswith(".part")}
            except FileNotFoundError:
                return {}
        root = self._full("").rstrip("/")
        self.fs.invalidate_cache(root)       # another process wrote them: never trust a cached listing
        try:
            entries = self.fs.ls(root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            if e.get("type") == "file" and name.startswith(prefix):
                out[name] = int(e.get("size") or 0)
        return out

    def exists(self) -> bool:
        """True when anything is stored under the scratch."""
        if not self.remote:
            return self.path.is_dir()
        return bool(self.keys()) or bool(self._subdirs())

    def _subdirs(self) -> list[str]:
        root = self._full("").rstrip("/")
        try:
            return [e["name"] for e in self.fs.ls(root, detail=True) if e.get("type") == "directory"]
        except FileNotFoundError:
            return []


def parent_and_name(location) -> tuple:
    """``(parent, name)`` of a path or URL (``s3://b/x/out.zarr`` -> ``("s3://b/x", "out.zarr")``)."""
    path = local_path(location)
    if path is not None:
        return path.absolute().parent, path.name
    text = str(location).rstrip("/")
    scheme = protocol_of(text)
    head, _, name = text[len(scheme) + 3:].rpartition("/")
    if not head:  # a bucket itself: its scratch goes inside it
        return text, name
    return f"{scheme}://{head}", name


def same_remote(a, b) -> bool:
    """True when two URLs name the same object-store location or one lies inside the other."""
    if not (is_remote(a) and is_remote(b)):
        return False
    x, y = str(a).rstrip("/") + "/", str(b).rstrip("/") + "/"
    return x.startswith(y) or y.startswith(x)
