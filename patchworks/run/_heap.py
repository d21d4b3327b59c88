"""glibc's malloc thresholds set where its own heuristic ends up, before the first tile.

A tile task allocates its arrays fresh (window, labels, staged ids, a
batch's core) and frees them at the end. glibc starts a process with a
128 KiB mmap threshold and raises it (up to 32 MiB, trimming above twice
that) only as it sees large blocks freed; until then every large array is
a fresh mapping whose pages the kernel faults in and zeroes, then unmaps.
The first run in a process of ``benchmarks/bench_scale.py`` (10^4 sparse
512^2 tiles) took 0.96 million page faults and 3.4-4.0 s of system time;
with the thresholds at that ceiling from the start, 15,000 faults and
1.8 s, as a second run in the same process already had.

So the first local run of a process (and the first :class:`~patchworks.Aggregator`,
whose caller's loop allocates the same way) sets ``M_MMAP_THRESHOLD`` to 32 MiB and
``M_TRIM_THRESHOLD`` to 64 MiB, once, and leaves them: they are the values
glibc converges to on its own. Only on glibc (Linux); not when the user set
any ``MALLOC_*_`` tuning variable (their choice wins), nor with
``PATCHWORKS_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

MMAP_THRESHOLD = 32 << 20     # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 64 << 20     # twice that, as glibc's adaptive rule sets it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_lock = threading.Lock()
_state = {"checked": False, "set": False}


def _glibc_mallopt():
    """glibc's ``mallopt`` through ctypes, or None (another platform or libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def settle_malloc() -> bool:
    """Set the thresholds once per process (see the module docstring); whether they are set by us."""
    with _lock:
        if not _state["checked"]:
            _state["checked"] = True
            wanted = os.environ.get("PATCHWORKS_MALLOC", "1") != "0" and \
                not any(name in os.environ for name in _USER_TUNING)
            mallopt = _glibc_mallopt() if wanted else None
            if mallopt is not None:
                _state["set"] = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _state["set"]
