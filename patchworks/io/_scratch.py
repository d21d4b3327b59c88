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
  (on obstore's own runtime for S3, on the async fsspec filesystem otherwise),
  so a seam task that needs one plane from each of several tiles pays one
  round trip, not one per tile.
- ``create`` is an exclusive write (``O_EXCL`` locally, ``If-None-Match: *``
  on S3), the building block of the run lock.
- A remote scratch made with ``keep_recent=True`` (the staged tiles: each
  key written once per run, read back soon after by the seam scan and the
  relabel) keeps what this process wrote in :data:`RECENT_BYTES` of memory
  and serves reads from it. On threads every read-back is then free; on a
  cluster those of tiles that the same worker staged. A local disk has the
  OS page cache for that.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import uuid
from pathlib import Path

from ._objstore import ObstoreKeys, s3_object_store
from ._urls import filesystem, is_remote, join, local_path, protocol_of

__all__ = ["FsspecKeys", "RECENT_BYTES", "Scratch"]

# what one process keeps of the write-once objects it put remotely (least recently used dropped first)
RECENT_BYTES = 128 << 20


class _Recent:
    """Bytes by full URL, at most :data:`RECENT_BYTES` in all; thread-safe, one per process."""

    def __init__(self):
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def add(self, url: str, data: bytes) -> None:
        with self._lock:
            self._drop(url)
            if len(data) > RECENT_BYTES:
                return
            self._items[url] = data
            self._size += len(data)
            while self._size > RECENT_BYTES:
                self._size -= len(self._items.popitem(last=False)[1])

    def get(self, url: str) -> bytes | None:
        with self._lock:
            data = self._items.get(url)
            if data is not None:
                self._items.move_to_end(url)
            return data

    def _drop(self, url: str) -> None:
        data = self._items.pop(url, None)
        if data is not None:
            self._size -= len(data)

    def drop(self, url: str) -> None:
        with self._lock:
            self._drop(url)

    def drop_under(self, root: str) -> None:
        with self._lock:
            for url in [u for u in self._items if u.startswith(root)]:
                self._drop(url)


_RECENT = _Recent()


class Scratch:
    """Keyed bytes under ``location`` (a path, a ``file://`` URL or an object-store URL); picklable.

    Parameters
    ----------
    location : path or str
        The scratch root: a local directory, or a prefix such as
        ``"s3://bucket/.patchworks-out.zarr-1234"``.
    storage_options : dict, optional
        Passed to the backend of a URL (credentials, endpoint).
    keep_recent : bool, default False
        For keys written once and read back by this run (its staged tiles):
        a remote scratch serves this process's own writes from memory.
    """

    def __init__(self, location, storage_options: dict | None = None, keep_recent: bool = False):
        self.storage_options = storage_options or None
        path = local_path(location)
        self.path = path                      # local root, or None
        self.url = None if path is not None else str(location).rstrip("/")
        self.keep_recent = bool(keep_recent) and path is None
        self._remote = None

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
        state["_remote"] = None               # rebuilt in each process from the URL and options
        return state

    def __eq__(self, other) -> bool:
        return isinstance(other, Scratch) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def child(self, name: str, keep_recent: bool = False) -> "Scratch":
        """The scratch one level down (``tiles``, ``pyramid``)."""
        return Scratch(join(self.location, name), self.storage_options, keep_recent=keep_recent)

    def _recent(self, key: str) -> bytes | None:
        return _RECENT.get(f"{self.url}/{key}") if self.keep_recent else None

    @property
    def _keys(self):
        """The object-store backend: obstore for S3 where it can (``io/_objstore.py``), fsspec otherwise."""
        if self._remote is None:
            store = s3_object_store(self.url, self.storage_options)
            self._remote = ObstoreKeys(store) if store is not None else FsspecKeys(self.url, self.storage_options)
        return self._remote

    def _file(self, key: str) -> str:
        # plain strings: pathlib's joins cost ~20 us each, and a run makes several per tile under the GIL
        return f"{self.path}{os.sep}{key}"

    # -- writing ---------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, atomically (replacing what was there)."""
        if self.remote:
            if self.keep_recent:
                data = bytes(data)
                _RECENT.add(f"{self.url}/{key}", data)
            self._keys.put(key, data)
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
        if self.remote:
            return self._keys.create(key, data)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._file(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def remove(self, key: str) -> None:
        """Remove one key (nothing happens when it is absent)."""
        if self.remote:
            _RECENT.drop(f"{self.url}/{key}")
            self._keys.remove(key)
            return
        try:
            os.unlink(self._file(key))
        except OSError:
            pass

    def remove_all(self) -> None:
        """Remove the whole scratch (every key under it)."""
        if self.remote:
            _RECENT.drop_under(f"{self.url}/")
            self._keys.remove_all()
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The bytes under ``key``; FileNotFoundError when absent."""
        if self.remote:
            held = self._recent(key)
            return held if held is not None else self._keys.get(key)
        with open(self._file(key), "rb") as f:
            return f.read()

    def get_ranges(self, keys, starts, stops) -> list[bytes | None]:
        """``data[start:stop]`` of each key in one batch; None for a key that is absent.

        A range that runs past the end of an object gives what there is; a ``stop`` of None reads to the end.
        """
        keys, starts, stops = list(keys), list(starts), list(stops)
        if not keys:
            return []
        if self.remote:
            held = [self._recent(k) for k in keys]
            asked = [j for j, h in enumerate(held) if h is None]
            got = iter(self._keys.get_ranges([keys[j] for j in asked], [starts[j] for j in asked],
                                             [stops[j] for j in asked]) if asked else [])
            return [next(got) if h is None else h[a:b] for h, a, b in zip(held, starts, stops)]
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
        if self.remote:
            return self.get_ranges(keys, [0] * len(keys), [None] * len(keys)) if keys else []
        out = []
        for key in keys:
            try:
                out.append(self.get(key))
            except FileNotFoundError:
                out.append(None)
        return out

    def keys(self, prefix: str = "") -> dict[str, int]:
        """``{key: size}`` of every key directly under the scratch starting with ``prefix`` (one listing)."""
        if self.remote:
            return self._keys.keys(prefix)
        try:
            with os.scandir(self.path) as it:
                return {e.name: e.stat().st_size for e in it
                        if e.is_file() and e.name.startswith(prefix) and not e.name.endswith(".part")}
        except FileNotFoundError:
            return {}


class FsspecKeys:
    """The remote half of :class:`Scratch` on an fsspec filesystem (s3fs, gcsfs, adlfs, ...)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.fs, root = filesystem(url, storage_options, parameter="scratch_dir")
        self.root = root.rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data) -> None:
        self.fs.pipe_file(self._full(key), bytes(data))

    def create(self, key: str, data: bytes) -> bool:
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
        try:
            self.fs.rm_file(self._full(key))
        except OSError:
            pass

    def remove_all(self) -> None:
        try:
            self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self.root)

    def get(self, key: str) -> bytes:
        # a ranged GET from 0: s3fs answers a plain cat_file with a HEAD (for its size) and then a GET
        return self.fs.cat_file(self._full(key), start=0)

    def get_ranges(self, keys, starts, stops) -> list[bytes | None]:
        # ranges from 0 to the end for whole objects: s3fs sends a plain whole-object read as a HEAD and a GET
        out = self.fs.cat_ranges([self._full(k) for k in keys], starts, stops, on_error="return")
        result = []
        for item in out:
            if isinstance(item, FileNotFoundError):
                result.append(None)
            elif isinstance(item, BaseException):
                raise item
            else:
                result.append(bytes(item))
        return result

    def keys(self, prefix: str = "") -> dict[str, int]:
        self.fs.invalidate_cache(self.root)       # another process wrote them: never trust a cached listing
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            if e.get("type") == "file" and name.startswith(prefix):
                out[name] = int(e.get("size") or 0)
        return out


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
