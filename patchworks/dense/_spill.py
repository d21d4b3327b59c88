"""Block accumulators of a streaming blend, in memory up to a budget, on disk beyond it.

Tiles are folded in raster order, so the blocks still waiting for
contributions form a slab across the image: its size grows with the image's
cross-section. Beyond ``budget`` bytes the accumulators whose next
contribution comes last are written to scratch files (Belady's rule: the one
needed furthest in the future goes first) and read back when their next tile
arrives, so memory stays bounded by the budget whatever the image.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from ..io._npy import load_npy


class SpillingAccumulators:
    """``take`` / ``put`` float32 accumulators by block; spills beyond ``budget`` bytes."""

    def __init__(self, budget: int, scratch_parent=None):
        self.budget = int(budget)
        self._parent = scratch_parent
        self._dir: Path | None = None
        self._memory: dict[int, np.ndarray] = {}
        self._next_use: dict[int, int] = {}
        self._on_disk: set[int] = set()
        self.bytes = 0
        self.peak_bytes = 0
        self.n_spilled = 0
        self._lock = threading.Lock()  # blocks are folded on several threads

    def _path(self, block: int) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=".patchworks-spill-", dir=self._parent))
        return self._dir / f"{block}.npy"

    def take(self, block: int) -> np.ndarray | None:
        """Remove and return the accumulator of ``block`` (None before its first contribution)."""
        with self._lock:
            return self._take(block)

    def _take(self, block: int) -> np.ndarray | None:
        if block in self._memory:
            acc = self._memory.pop(block)
            self._next_use.pop(block, None)
            self.bytes -= acc.nbytes
            return acc
        if block in self._on_disk:
            self._on_disk.remove(block)
            path = self._path(block)
            acc = load_npy(path)
            path.unlink()
            return acc
        return None

    def put(self, block: int, acc: np.ndarray, next_use: int) -> None:
        """Keep ``acc`` until tile ``next_use`` contributes to ``block`` again."""
        with self._lock:
            self._put(block, acc, next_use)

    def _put(self, block: int, acc: np.ndarray, next_use: int) -> None:
        self._memory[block] = acc
        self._next_use[block] = next_use
        self.bytes += acc.nbytes
        while self.bytes > self.budget and len(self._memory) > 1:
            latest = max(self._next_use, key=self._next_use.__getitem__)
            spilled = self._memory.pop(latest)
            del self._next_use[latest]
            np.save(self._path(latest), spilled, allow_pickle=False)
            self._on_disk.add(latest)
            self.bytes -= spilled.nbytes
            self.n_spilled += 1
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
