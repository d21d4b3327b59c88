"""``np.load`` under one lock, for the .npy/.npz files tile tasks read on threads.

numpy parses every .npy header with ``ast.literal_eval``; on CPython 3.11.7
two threads doing that at once can raise a spurious ``SystemError: AST
constructor recursion depth mismatch`` (seen in this suite). The files read
here are small or memory-mapped, so serialising the reads costs nothing
measurable.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

logger = logging.getLogger("patchworks")

_LOCK = threading.Lock()


def load_npy(path, **kwargs) -> np.ndarray:
    """``np.load`` of one .npy file (``mmap_mode=`` passed through)."""
    with _LOCK:
        return np.load(path, **kwargs)


def load_npz(path, prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays of an .npz file whose names start with ``prefix`` (the others are not read)."""
    with _LOCK, np.load(path) as archive:
        return {name: archive[name] for name in archive.files if name.startswith(prefix)}


class RemoteNpy:
    """Window reads of a ``.npy`` object behind a URL: one ranged request per window, never the whole file.

    The header is read once; a window then fetches the contiguous byte range
    that holds its rows along the slowest axis (the first for C order, the
    last for Fortran order) and slices the rest in memory.
    """

    def __init__(self, fs, path):
        self.fs, self.path = fs, path
        self._warned = False
        with fs.open(path, "rb", block_size=1 << 16) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names) has no public reader
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)
            self.offset = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{path}: a .npy of Python objects cannot be read in windows")
        self.shape, self.dtype, self.fortran = tuple(shape), np.dtype(dtype), bool(fortran)

    def _range(self, start: int, end: int) -> bytes:
        raw = self.fs.cat_file(self.path, start=start, end=end)
        if len(raw) == end - start:
            return raw
        if len(raw) >= end:  # a server that ignores Range sends the whole object (Python's http.server)
            if not self._warned:
                self._warned = True
                logger.warning("%s: the server ignores Range requests; every window reads the whole file",
                               self.path)
            return raw[start:end]
        raise ValueError(f"{self.path}: asked for bytes {start}..{end}, the server sent {len(raw)}")

    def __getitem__(self, key) -> np.ndarray:
        """``key``: one int or normalised slice (``slice(*s.indices(n))``) per axis."""
        if not self.shape:
            raw = self._range(self.offset, self.offset + self.dtype.itemsize)
            return np.frombuffer(raw, self.dtype).reshape(())
        axis = len(self.shape) - 1 if self.fortran else 0
        k = key[axis]
        if isinstance(k, int):
            lo, hi = k, k + 1
        else:
            span = range(k.start, k.stop, k.step)
            lo, hi = (min(span), max(span) + 1) if len(span) else (0, 0)
        rest = [n for a, n in enumerate(self.shape) if a != axis]
        plane = int(np.prod(rest, dtype=np.int64)) * self.dtype.itemsize
        if hi == lo:
            block = np.empty(self.shape[:axis] + (0,) + self.shape[axis + 1:], self.dtype)
        else:
            raw = self._range(self.offset + lo * plane, self.offset + hi * plane)
            sub = list(self.shape)
            sub[axis] = hi - lo
            block = np.frombuffer(raw, self.dtype).reshape(sub, order="F" if self.fortran else "C")
        # a normalised negative-step slice may stop at -1, which numpy reads as "the last element"
        local = [slice(q.start, None if q.stop < 0 else q.stop, q.step) if isinstance(q, slice) else q for q in key]
        if isinstance(k, int):
            local[axis] = 0
        elif hi > lo:
            stop = k.stop - lo
            local[axis] = slice(k.start - lo, stop if stop >= 0 else None, k.step)
        else:
            local[axis] = slice(0, 0)
        return np.array(block[tuple(local)])
