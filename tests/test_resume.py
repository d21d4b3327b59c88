"""Resume after an exception or a killed process; refuse to mix two runs; skip empty tiles."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from scipy import ndimage

from patchworks import TileGrid, estimate_empty_tiles, threshold, tile_process
from patchworks.labels._batch import batch_block, batch_grid, tiles_of
from patchworks.testing import assert_labels_equivalent, random_blobs


def _scratch_dirs(parent):
    return [p for p in parent.iterdir() if p.name.startswith(".patchworks-")]


def _staged(parent, shape=None, tile=16):
    """Tiles staged so far: a staged file holds one batch of neighbouring tiles (one tile when ``shape`` is None)."""
    files = [p for d in _scratch_dirs(parent) for p in (d / "tiles").glob("tile-*.bin")]
    if shape is None:
        return len(files)
    grid = TileGrid(shape, tile)
    block = batch_block(grid)
    batches = batch_grid(grid, block)
    return sum(len(list(tiles_of(grid, block, batches.tile(int(p.stem[5:])).index))) for p in files)


@pytest.fixture
def flaky_module(tmp_path, monkeypatch):
    """A tile function in a real module, failing on one tile while a flag file exists."""
    module = tmp_path / "mods" / "flaky_fn.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent('''
        import os, time
        import numpy as np
        from patchworks import label_components

        FLAG = os.environ.get("FLAKY_FLAG", "")
        CALLS = os.environ.get("FLAKY_CALLS", "")

        def segment(tile):
            with open(CALLS, "a") as f:
                f.write("1\\n")
            if os.path.exists(FLAG) and (tile > 0.5).mean() > 0.4:
                raise RuntimeError("transient failure")
            if os.environ.get("FLAKY_SLOW"):
                time.sleep(0.05)
            return label_components(tile > 0.5)
    '''))
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.setenv("FLAKY_FLAG", str(tmp_path / "flag"))
    monkeypatch.setenv("FLAKY_CALLS", str(tmp_path / "calls.txt"))
    import importlib
    import flaky_fn
    importlib.reload(flaky_fn)
    return flaky_fn, tmp_path


def _calls(tmp_path):
    path = tmp_path / "calls.txt"
    n = len(path.read_text().split()) if path.exists() else 0
    path.write_text("")
    return n


def test_resume_after_an_exception_skips_staged_tiles(flaky_module, tmp_path):
    mod, _ = flaky_module
    image = random_blobs((64, 64), seed=31)
    out = tmp_path / "labels.zarr"
    kwargs = dict(tile_shape=16, overlap=2, write_to=out, client=False)
    (tmp_path / "flag").touch()
    with pytest.raises(RuntimeError, match="transient failure"):
        tile_process(image, mod.segment, **kwargs)
    first = _calls(tmp_path)
    staged = _staged(tmp_path, (64, 64))
    assert 0 < staged < 16 and not (out.exists() and zarr.open_group(out).attrs["patchworks"]["complete"])
    (tmp_path / "flag").unlink()
    resumed = tile_process(image, mod.segment, **kwargs)
    assert _calls(tmp_path) == 16 - staged, "fn runs only on the tiles that were not staged"
    assert first >= staged
    expected = tile_process(image, mod.segment, tile_shape=16, overlap=2, compute=True)
    _calls(tmp_path)
    np.testing.assert_array_equal(resumed.compute(), expected)
    assert _scratch_dirs(tmp_path) == [], "scratch removed once complete"
    # a finished run re-run is a no-op
    again = tile_process(image, mod.segment, **kwargs)
    assert _calls(tmp_path) == 0
    np.testing.assert_array_equal(again.compute(), expected)
    # overwrite=True means: compute it again
    tile_process(image, mod.segment, overwrite=True, **kwargs)
    assert _calls(tmp_path) == 16


def test_resume_after_the_process_is_killed(flaky_module, tmp_path):
    _, _ = flaky_module
    image = random_blobs((96, 96), seed=32)
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "labels.zarr"
    script = textwrap.dedent(f'''
        import flaky_fn
        from patchworks import tile_process
        tile_process({str(tmp_path / "image.npy")!r}, flaky_fn.segment, tile_shape=16, write_to={str(out)!r})
    ''')
    env = {**os.environ, "FLAKY_SLOW": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 60
    while _staged(tmp_path, (96, 96)) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = _staged(tmp_path, (96, 96))
    assert 0 < staged < 36, "killed in the middle of staging"
    _calls(tmp_path)
    resumed = tile_process(str(tmp_path / "image.npy"), __import__("flaky_fn").segment, tile_shape=16,
                           write_to=out, client=False)
    assert _calls(tmp_path) == 36 - staged
    truth, _ = ndimage.label(image > 0.5)
    assert_labels_equivalent(resumed.compute(), truth)


def test_changed_arguments_are_refused_instead_of_mixing_runs(flaky_module, tmp_path):
    mod, _ = flaky_module
    image = random_blobs((48, 48), seed=33)
    out = tmp_path / "labels.zarr"
    (tmp_path / "flag").touch()
    with pytest.raises(RuntimeError):
        tile_process(image, mod.segment, tile_shape=16, write_to=out, client=False)
    (tmp_path / "flag").unlink()
    with pytest.raises(ValueError, match=r"has an unfinished run with other arguments \(tile_shape was "
                                         r"\[16, 16\], now \[12, 12\]\); re-run it with the same arguments"):
        tile_process(image, mod.segment, tile_shape=12, write_to=out)
    with pytest.raises(ValueError, match="unfinished run with other arguments"):
        tile_process(image * 0.5, mod.segment, tile_shape=16, write_to=out)   # other input
    with pytest.raises(ValueError, match="unfinished run with other arguments"):
        tile_process(image, threshold(0.5), tile_shape=16, write_to=out)       # other function
    # resume=False discards the unfinished run and starts this one
    done = tile_process(image, threshold(0.5), tile_shape=12, write_to=out, resume=False, compute=True)
    assert_labels_equivalent(done, ndimage.label(image > 0.5)[0])
    assert _scratch_dirs(tmp_path) == []


def test_two_runs_in_one_directory_never_share_scratch(tmp_path):
    image = random_blobs((32, 32), seed=34)
    seen = []

    def spy(tile):
        seen.append(sorted(p.name for p in _scratch_dirs(tmp_path)))
        return (tile > 0.5).astype(np.uint8)

    tile_process(image, spy, tile_shape=16, write_to=tmp_path / "a.zarr", client=False)
    tile_process(image, spy, tile_shape=16, write_to=tmp_path / "b.zarr", client=False)
    names = {n for names in seen for n in names}
    assert len(names) == 2 and any("a.zarr" in n for n in names) and any("b.zarr" in n for n in names)


# -- skip_empty ----------------------------------------------------------------------

def _sparse_image():
    image = np.zeros((64, 64), np.float32)
    image[3:9, 3:13] = 1.0      # inside tile (0, 0)
    image[14:20, 30:34] = 1.0   # touches the seam between tile rows 0 and 1 at row 16
    image[40:44, 47:50] = 1.0   # ends one voxel before a tile seam (x=48 would be the next tile)
    return image


def test_skip_empty_never_cuts_an_object_and_skips_only_empty_windows():
    image = _sparse_image()
    calls = []

    def fn(tile):
        calls.append(tile.shape)
        return (tile > 0.5).astype(np.uint8) * 1

    from patchworks import label_components
    full = tile_process(image, lambda t: label_components(t > 0.5), tile_shape=16, overlap=2, compute=True)
    skipped, n = tile_process(image, lambda t: (calls.append(1), label_components(t > 0.5))[1], tile_shape=16,
                              overlap=2, skip_empty=True, empty_threshold=0.5, compute=True, return_count=True)
    np.testing.assert_array_equal(skipped, full)
    assert n == 3
    info = estimate_empty_tiles(image, tile_shape=16, overlap=2, threshold=0.5)
    assert info["n_tiles"] == 16 and len(calls) == info["n_occupied"] < 16
    # a tile is skipped only when its whole window (halo included) is background
    occupied = info["occupied"]
    assert occupied[1, 1] and occupied[0, 2], "objects in the halo make the neighbour occupied"


def test_skip_empty_threshold_defaults_to_otsu_not_zero():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 2, (64, 64)).astype(np.float32)   # background noise, not zero
    image[5:12, 5:12] = 200
    info = estimate_empty_tiles(image, tile_shape=16)
    assert 100 < info["threshold"] < 200
    assert info["n_occupied"] == 1 and info["empty_fraction"] == pytest.approx(15 / 16)
    out = tile_process(image, threshold(150), tile_shape=16, skip_empty=True, compute=True)
    assert len(np.unique(out)) == 2


def test_progress_bar_counts_tiles_and_skips(capsys):
    image = _sparse_image()
    tile_process(image, threshold(0.5), tile_shape=16, skip_empty=True, empty_threshold=0.5, progress=True,
                 compute=True)
    err = capsys.readouterr().err
    assert "staging tiles" in err and "16/16" in err and "skipped=" in err


def test_library_logger_installs_no_handlers():
    import logging
    import patchworks  # noqa: F401
    assert logging.getLogger("patchworks").handlers == []


def test_two_writers_of_one_scratch_key_never_leave_half_a_file(tmp_path):
    """A retried task and the ghost of its first try may put one key at once: each write stays whole."""
    from _probes import run_on_threads

    from patchworks.io._scratch import Scratch

    scratch = Scratch(tmp_path / "scratch")
    payloads = [bytes([k]) * (1 << 20) for k in (1, 2)]
    seen = set()

    def writer(data):
        for _ in range(40):
            scratch.put("tile-0.bin", data)
            seen.add(scratch.get("tile-0.bin"))

    errors = run_on_threads(writer, payloads)
    assert not errors
    assert seen <= set(payloads)
    assert scratch.keys() == {"tile-0.bin": 1 << 20}  # no temporary file listed or left behind
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["tile-0.bin"]
