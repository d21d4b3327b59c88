"""``np.load`` under one lock, for the .npy/.npz files tile tasks read on threads.

numpy parses every .npy header with ``ast.literal_eval``; on CPython 3.11.7
two threads doing that at once can raise a spurious ``SystemError: AST
constructor recursion depth mismatch`` (seen in this suite). The files read
here are small or memory-mapped, so serialising the reads costs nothing
measurable.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCK = threading.Lock()


def load_npy(path, **kwargs) -> np.ndarray:
    """``np.load`` of one .npy file (``mmap_mode=`` passed through)."""
    with _LOCK:
        return np.load(path, **kwargs)


def load_npz(path, prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays of an .npz file whose names start with ``prefix`` (the others are not read)."""
    with _LOCK, np.load(path) as archive:
        return {name: archive[name] for name in archive.files if name.startswith(prefix)}
