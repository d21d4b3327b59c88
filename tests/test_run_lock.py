"""The run lock: one run per scratch, a heartbeat while it runs, and takeover of a lock whose holder went silent."""

import json
import threading
import time

import numpy as np
import pytest

import patchworks.run._rundir as rundir
from patchworks import threshold, tile_process
from patchworks.io._scratch import Scratch
from patchworks.testing import assert_labels_equivalent, random_blobs

IMAGE = random_blobs((64, 64), density=0.4, seed=3)


class _FailAt:
    """A tile function that fails on its ``k``-th call (an interrupted run), labels otherwise."""

    def __init__(self, k):
        self.k, self.calls, self.lock = k, 0, threading.Lock()

    def __call__(self, tile):
        with self.lock:
            self.calls += 1
            if self.calls == self.k:
                raise RuntimeError("interrupted")
        return threshold(0.5)(tile)


def _interrupted_run(tmp_path):
    """An unfinished run's scratch directory (its lock released by the failure), and the output path."""
    out = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError, match="interrupted"):
        tile_process(IMAGE, _FailAt(3), tile_shape=32, write_to=out, output_format="array", progress=False,
                     max_workers=1)
    (scratch,) = tmp_path.glob(".patchworks-o.zarr-*")
    assert not (scratch / "lock").exists()
    return scratch, out


def _foreign_lock(scratch, age_s):
    (scratch / "lock").write_text(json.dumps({"host": "another-machine", "pid": 4242, "nonce": "ab",
                                              "time": time.time() - age_s}))


def test_a_silent_lock_of_another_host_is_taken_over(tmp_path, caplog):
    scratch, out = _interrupted_run(tmp_path)
    _foreign_lock(scratch, rundir.LOCK_STALE_S + 60)
    with caplog.at_level("WARNING", logger="patchworks"):
        labels = tile_process(IMAGE, _FailAt(0), tile_shape=32, write_to=out, output_format="array",
                              compute=True, progress=False)
    assert "taking over" in caplog.text and "another-machine" in caplog.text
    assert_labels_equivalent(labels, threshold(0.5)(IMAGE))
    assert not list(tmp_path.glob(".patchworks-o.zarr-*")), "the finished run leaves no scratch and no lock"


def test_a_beating_lock_of_another_host_is_refused(tmp_path):
    scratch, out = _interrupted_run(tmp_path)
    _foreign_lock(scratch, 5)
    with pytest.raises(RuntimeError, match=r"pid 4242 on host 'another-machine'.*heartbeat 5 s ago.*wait 11\d s"):
        tile_process(IMAGE, _FailAt(0), tile_shape=32, write_to=out, output_format="array", progress=False)
    assert json.loads((scratch / "lock").read_text())["host"] == "another-machine", "the holder's lock is kept"


def test_the_lock_beats_while_the_run_works(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "LOCK_HEARTBEAT_S", 0.05)
    out, seen, stop = tmp_path / "o.zarr", [], threading.Event()

    def watch():
        while not stop.is_set():
            for lock in tmp_path.glob(".patchworks-o.zarr-*/lock"):
                try:
                    seen.append(json.loads(lock.read_text())["time"])
                except (OSError, ValueError):
                    pass
            time.sleep(0.01)

    def slow(tile):
        time.sleep(0.1)
        return threshold(0.5)(tile)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        tile_process(IMAGE, slow, tile_shape=16, write_to=out, output_format="array", progress=False)
    finally:
        stop.set()
        watcher.join()
    assert len(set(seen)) >= 3, "the lock's time is rewritten while the run works"
    assert not list(tmp_path.glob(".patchworks-o.zarr-*"))
    assert not any(t.name == "patchworks-lock" for t in threading.enumerate()), "the heartbeat stops with the run"


def test_a_heartbeat_stops_when_its_lock_was_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "LOCK_HEARTBEAT_S", 0.02)
    scratch = Scratch(tmp_path / "s")
    (tmp_path / "s").mkdir()
    me = {"host": "here", "pid": 1, "nonce": "mine"}
    scratch.put("lock", rundir._lock_bytes(me))
    beat = rundir._Heartbeat(scratch, me)
    time.sleep(0.1)
    scratch.put("lock", json.dumps({"host": "there", "pid": 2, "nonce": "theirs", "time": 1.0}).encode())
    beat._thread.join(timeout=2)
    assert not beat._thread.is_alive(), "it stops instead of rewriting the other run's lock"
    assert json.loads(scratch.get("lock"))["nonce"] == "theirs"
    beat.stop()
