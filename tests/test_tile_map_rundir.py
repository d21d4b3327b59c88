"""tile_map on the run directory: the rules labels already had, now for dense maps too."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from patchworks import tile_map

KW = dict(tile_shape=6, overlap=2, window="hann", client=False)


class Counting:
    def __init__(self):
        self.calls, self._lock = 0, threading.Lock()

    def __call__(self, w):
        with self._lock:
            self.calls += 1
        return w * 2


def _image():
    return np.random.default_rng(0).random((18, 16), dtype=np.float32)


def test_named_output_inside_a_group_is_complete_and_fingerprinted(tmp_path):
    out = tile_map(_image(), lambda w: w * 2, write_to=tmp_path / "maps.zarr", output_component="probs", **KW)
    stored = zarr.open_array(tmp_path / "maps.zarr" / "probs", mode="r")
    info = stored.attrs["patchworks"]
    assert info["complete"] is True and info["fingerprint"] and info["window"] == "hann"
    np.testing.assert_allclose(out.compute(), _image() * 2, rtol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".patchworks-")], "scratch removed"


def test_refuses_to_write_into_its_input(tmp_path):
    zarr.create_array(store=tmp_path / "in.zarr", data=_image(), chunks=(8, 8))
    with pytest.raises(ValueError, match=r"write_to='.*in.zarr' is the input; patchworks never writes to its input"):
        tile_map(str(tmp_path / "in.zarr"), lambda w: w, write_to=tmp_path / "in.zarr", overwrite=True, **KW)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "in.zarr")[...], _image())


def test_finished_run_rerun_is_a_no_op(tmp_path):
    fn = Counting()
    first = tile_map(_image(), fn, write_to=tmp_path / "o.zarr", compute=True, **KW)
    n = fn.calls
    assert n == 9
    again = tile_map(_image(), fn, write_to=tmp_path / "o.zarr", compute=True, **KW)
    assert fn.calls == n, "a finished run re-run must not call fn again"
    np.testing.assert_array_equal(again, first)
    tile_map(_image(), fn, write_to=tmp_path / "o.zarr", overwrite=True, **KW)
    assert fn.calls == 2 * n, "overwrite=True starts over"


def test_other_arguments_on_a_finished_output_are_refused_unless_overwrite(tmp_path):
    tile_map(_image(), lambda w: w * 2, write_to=tmp_path / "o.zarr", **KW)
    with pytest.raises(FileExistsError, match=r"write_to='.*o.zarr' already exists.*other arguments.*pass "
                                              r"overwrite=True"):
        tile_map(_image(), lambda w: w * 2, write_to=tmp_path / "o.zarr", **{**KW, "window": "mean"})
    out = tile_map(_image(), lambda w: w * 3, write_to=tmp_path / "o.zarr", overwrite=True, compute=True, **KW)
    np.testing.assert_allclose(out, _image() * 3, rtol=1e-6)


def test_an_interrupted_output_of_the_same_call_is_redone(tmp_path):
    fn = Counting()
    tile_map(_image(), fn, write_to=tmp_path / "o.zarr", **KW)
    stored = zarr.open_array(tmp_path / "o.zarr", mode="r+")
    stored.attrs["patchworks"] = {**stored.attrs["patchworks"], "complete": False}  # as a killed run leaves it
    stored[:4] = 0
    out = tile_map(_image(), fn, write_to=tmp_path / "o.zarr", compute=True, **KW)
    assert fn.calls == 18
    np.testing.assert_allclose(out, _image() * 2, rtol=1e-6)
    assert zarr.open_array(tmp_path / "o.zarr").attrs["patchworks"]["complete"] is True


def test_failure_leaves_no_output_and_no_scratch(tmp_path):
    def boom(w):
        if w.mean() > 0:  # not the first window: the output exists by then
            raise RuntimeError("model crashed")
        return w

    image = np.zeros((18, 16), np.float32)
    image[10:] = 1
    with pytest.raises(RuntimeError, match="model crashed"):
        tile_map(image, boom, write_to=tmp_path / "o.zarr", memory_budget=1, **KW)
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_run_on_the_same_output_is_refused(tmp_path):
    """A second process runs the same call with a slow fn; this one must refuse while it holds the lock."""
    release = tmp_path / "release"
    fn_source = textwrap.dedent(f"""
        import time
        from pathlib import Path

        def slow(w):
            while not Path({str(release)!r}).exists():
                time.sleep(0.05)
            return w * 2
    """)
    script = fn_source + textwrap.dedent(f"""
        import numpy as np
        from patchworks import tile_map
        image = np.random.default_rng(0).random((18, 16), dtype=np.float32)
        tile_map(image, slow, write_to={str(tmp_path / "o.zarr")!r}, tile_shape=6, overlap=2, window="hann",
                 client=False)
    """)
    namespace = {"__name__": "__main__"}
    exec(fn_source, namespace)  # the very function the other process runs: the same run, the same fingerprint
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    other = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".patchworks-o.zarr-*/lock")):
            assert other.poll() is None and time.monotonic() < deadline, "the other run did not start"
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match=rf"another patchworks run \(pid {other.pid}\) is writing "
                                               r"'.*o.zarr' right now"):
            tile_map(_image(), namespace["slow"], write_to=tmp_path / "o.zarr", **KW)
    finally:
        release.touch()
        assert other.wait(timeout=120) == 0
    np.testing.assert_allclose(zarr.open_array(tmp_path / "o.zarr")[...], _image() * 2, rtol=1e-6)
