"""Read overlapping windows of a chunked source without decoding a chunk again for every window.

Windows of a sliding-window run overlap (by half, for MONAI's layout), so a
64^3 window on 64^3 chunks touches up to 8 chunks and every chunk is decoded
by up to 8 windows. Windows are read in raster order, so the chunks still
needed form a front; keeping decoded chunks in a byte-bounded LRU reads each
input voxel once while the front fits, and degrades to re-reading (never to
unbounded memory) when it does not.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np


class ChunkCache:
    """``read(window_key)`` of ``source`` assembled from whole decoded chunks kept in an LRU."""

    def __init__(self, source, chunks, budget: int):
        self.source, self.chunks, self.budget = source, tuple(int(c) for c in chunks), int(budget)
        self._lru: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.reads = 0

    def __getstate__(self):  # a worker process starts with an empty cache of its own
        return {"source": self.source, "chunks": self.chunks, "budget": self.budget}

    def __setstate__(self, state):
        self.__init__(state["source"], state["chunks"], state["budget"])

    def _chunk(self, index) -> np.ndarray:
        with self._lock:
            hit = self._lru.get(index)
            if hit is not None:
                self._lru.move_to_end(index)
                return hit
        key = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.source.shape))
        data = np.asarray(self.source[key])
        with self._lock:
            self.reads += 1
            if index not in self._lru:
                self._lru[index] = data
                self._bytes += data.nbytes
            while self._bytes > self.budget and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._bytes -= old.nbytes
        return data

    def read(self, key) -> np.ndarray:
        """The window ``key`` (one slice per axis, inside the source)."""
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(key, self.chunks)]
        out = None
        for index in itertools.product(*ranges):
            chunk = self._chunk(index)
            if out is None:
                out = np.empty(tuple(s.stop - s.start for s in key), chunk.dtype)
            lo = [i * c for i, c in zip(index, self.chunks)]
            part = tuple(slice(max(s.start, a), min(s.stop, a + n)) for s, a, n in zip(key, lo, chunk.shape))
            out[tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, key))] = \
                chunk[tuple(slice(p.start - a, p.stop - a) for p, a in zip(part, lo))]
        return out
