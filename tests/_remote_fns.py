"""Tile functions and worker plugins for tests/test_remote_write.py, importable by cluster workers.

Their state lives in the S3 test server (objects under a prefix), never in a
local file, so they behave the same on threads and on workers that share no
directory with the test.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi


def _scratch(url, storage_options):
    from patchworks.io._scratch import Scratch

    return Scratch(url, storage_options)


@dataclass
class CountingLabel:
    """Labels ``tile > 0.5`` (faces), recording each call as an object under ``calls_url``.

    ``fail_after``: once that many calls are recorded and the object ``<calls_url>/fail`` exists,
    raise (an interrupted run). ``kill_once``: the first call on a dask worker kills that worker's
    process (``os._exit``) after creating ``<calls_url>/killed-stage`` (so it happens once).
    """

    calls_url: str
    storage_options: dict = field(default_factory=dict)
    fail_after: int = -1
    kill_once: bool = False

    def __call__(self, tile):
        s = _scratch(self.calls_url, self.storage_options)
        if self.kill_once and _on_worker() and s.create("killed-stage", b"1"):
            os._exit(17)  # the worker process dies mid-staging; its nanny starts another
        if self.fail_after >= 0 and s.keys("fail") and len(s.keys("call-")) >= self.fail_after:
            raise RuntimeError("interrupted on purpose")
        s.put(f"call-{uuid.uuid4().hex}", b"1")
        return ndi.label(tile > 0.5)[0].astype(np.uint32)


def calls(calls_url, storage_options) -> int:
    return len(_scratch(calls_url, storage_options).keys("call-"))


def _on_worker() -> bool:
    try:
        from distributed import get_worker
        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def label_faces(tile):
    return ndi.label(tile > 0.5)[0].astype(np.uint32)


def double(tile):
    return (2 * np.asarray(tile, dtype=np.float32))


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object


class ForbidPaths(WorkerPlugin):
    """Make the worker refuse to open, list or create anything under ``prefixes`` (an audit hook).

    The test's own temporary directories are on this very machine, so without this a worker could
    silently use the driver's disk; with it, any hidden use of a driver-local path fails the run.
    """

    name = "forbid-driver-paths"

    def __init__(self, prefixes):
        self.prefixes = tuple(str(p) for p in prefixes)

    def setup(self, worker):
        prefixes = self.prefixes

        def hook(event, args, prefixes=prefixes):
            if event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove") and args:
                path = args[0]
                if isinstance(path, (str, bytes, os.PathLike)):
                    text = os.fsdecode(path)
                    if text.startswith(prefixes):
                        raise PermissionError(f"worker may not touch the driver's {text}")

        sys.addaudithook(hook)  # for the life of this worker process


class KillOnRelabel(WorkerPlugin):
    """Kill the worker process when it starts its first relabel task (once per flag object)."""

    name = "kill-on-relabel"

    def __init__(self, flag_url, storage_options):
        self.flag_url, self.storage_options = flag_url, storage_options

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "executing" and str(name).startswith("patchworks-relabel"):
            if _scratch(self.flag_url, self.storage_options).create("killed-relabel", b"1"):
                os._exit(18)
