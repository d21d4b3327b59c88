"""Same names, same meaning as upstream patchworks: tile_shape=None, scalar overlaps on thin stacks,
max_workers / stage_dir / keep_stage / dry_run / gpus, and resume refusals that say what changed."""

import numpy as np
import pytest
from scipy import ndimage

from patchworks import estimate_empty_tiles, label_components, merge_tile_labels, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs


# ------------------------------------------------ a scalar overlap works on every image

def test_scalar_overlap_on_a_two_plane_stack_with_the_default_tile_shape():
    stack = random_blobs((2, 40, 40), seed=1)
    labels = tile_process(stack, threshold(0.5), overlap=8, compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])


def test_scalar_overlap_larger_than_a_whole_axis_tile():
    stack = random_blobs((4, 48, 48), seed=2)
    labels = tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=6, compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])
    labels = tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=6, stitch="iou", compute=True)
    assert_labels_equivalent(labels, ndimage.label(stack > 0.5)[0])
    # where the axis really has neighbours the overlap must stay below the tile
    with pytest.raises(ValueError, match=r"axis 1 overlap 16 is not smaller than the tile size 16"):
        tile_process(stack, threshold(0.5), tile_shape=(4, 16, 16), overlap=16)


def test_estimate_empty_tiles_with_a_z_tile_equal_to_the_z_size():
    img = np.zeros((3, 16, 16), np.float32)
    img[1, 2, 2] = 5   # in tile (0, 0, 0); its window reaches 4 voxels into the neighbours along y and x
    info = estimate_empty_tiles(img, tile_shape=(3, 8, 8), threshold=1, overlap=4)
    assert info["n_tiles"] == 4
    # direct loop: a tile is occupied when its window (core + 4 clipped) holds a voxel above 1
    want = np.zeros((1, 2, 2), bool)
    for j in range(2):
        for i in range(2):
            win = img[:, max(8 * j - 4, 0):8 * j + 12, max(8 * i - 4, 0):8 * i + 12]
            want[0, j, i] = win.max() > 1
    np.testing.assert_array_equal(info["occupied"], want)


# ------------------------------------------------ tile_shape=None: the input's own chunks

def test_tile_shape_none_means_the_zarr_chunks(tmp_path):
    import zarr
    image = random_blobs((16, 40, 48), seed=3)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(8, 16, 24))
    out = tile_process(str(src), threshold(0.5), write_to=tmp_path / "labels.zarr")
    assert zarr.open_array(tmp_path / "labels.zarr" / "0").chunks == (8, 16, 24)  # level 0 of the label image
    assert out.chunksize == (8, 16, 24)
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])


def test_tile_shape_none_means_the_dask_chunks_and_auto_without_chunks():
    import dask.array as da
    image = random_blobs((40, 36), seed=4)
    out = tile_process(da.from_array(image, chunks=(10, 12)), threshold(0.5))
    assert out.chunks == ((10,) * 4, (12,) * 3)
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])
    # numpy has no chunks: None is "auto"
    assert tile_process(image, threshold(0.5)).chunks == tile_process(image, threshold(0.5), tile_shape="auto").chunks


def test_auto_tile_shape_is_a_multiple_of_the_zarr_chunks(tmp_path, monkeypatch):
    import zarr
    image = random_blobs((32, 96, 96), seed=5)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(8, 24, 24))
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1")   # a 1 MiB allocation: tiles of a few chunks
    out = tile_process(str(src), threshold(0.5), tile_shape="auto", client=False)
    tile = out.chunksize
    assert tile != image.shape, "the budget cuts the image into tiles"
    assert all(t % c == 0 or t == s for t, c, s in zip(tile, (8, 24, 24), image.shape)), tile
    assert_labels_equivalent(out.compute(), ndimage.label(image > 0.5)[0])


# ------------------------------------------------ a refused resume names what changed

def _interrupted(image, fn, out, monkeypatch, **kwargs):
    """Stage every tile with ``fn``, then fail before the merge: an unfinished run in ``out``."""
    import patchworks.labels._process as process

    def crash(*args, **kw):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(process, "plan_relabel", crash)
        with pytest.raises(RuntimeError, match="interrupted"):
            tile_process(image, fn, write_to=out, client=False, **kwargs)


def _closure_fn(level):
    def segment(tile):
        return label_components(tile > level, 1)
    return segment


def _segment(tile, level=0.5, *, connectivity=1):
    return label_components(tile > level, connectivity)


def _segment_at(level, tile):
    return label_components(tile > level, 1)


@pytest.mark.parametrize("first, second, match", [
    # a closure's captured value
    (_closure_fn(0.5), _closure_fn(0.7), r"fn: captured level was '0\.5', now '0\.7'"),
    # a partial's positional and keyword arguments
    (__import__("functools").partial(_segment, level=0.5), __import__("functools").partial(_segment, level=0.6),
     r"fn: keyword level was '0\.5', now '0\.6'"),
    (__import__("functools").partial(_segment_at, np.float64(0.5)), __import__("functools").partial(_segment_at, 0.25),
     r"fn: arg 0 was .*0\.5.*, now '0\.25'"),
    # the attributes of a callable dataclass (our Threshold)
    (threshold(0.5), threshold(0.75), r"fn: attribute value was '0\.5', now '0\.75'"),
    # another function altogether
    (threshold(0.5), _closure_fn(0.5), r"fn: name was 'patchworks\.segment\._threshold\.Threshold', now "),
])
def test_refused_resume_names_the_captured_value_that_changed(tmp_path, monkeypatch, first, second, match):
    image = random_blobs((32, 32), seed=6)
    out = tmp_path / "labels.zarr"
    _interrupted(image, first, out, monkeypatch, tile_shape=8)
    with pytest.raises(ValueError, match=r"has an unfinished run with other arguments \(.*" + match):
        tile_process(image, second, tile_shape=8, write_to=out, client=False)
    # the same function again resumes: nothing is refused, and the result is the whole-image labelling
    done = tile_process(image, first, tile_shape=8, write_to=out, client=False, compute=True, overwrite=False)
    assert_labels_equivalent(done, ndimage.label(image > 0.5)[0])


def test_refused_resume_names_changed_numpy_content(tmp_path, monkeypatch):
    image = random_blobs((32, 32), seed=7)
    out = tmp_path / "labels.zarr"
    _interrupted(image, threshold(0.5), out, monkeypatch, tile_shape=8)
    other = image.copy()
    other[0, 0] += 1   # same shape and dtype, other content
    with pytest.raises(ValueError, match=r"other arguments \(image content was '\w+', now '\w+'\)"):
        tile_process(other, threshold(0.5), tile_shape=8, write_to=out, client=False)


# ------------------------------------------------ max_workers, stage_dir / keep_stage, dry_run, gpus

def _concurrency_spy(delay=0.03):
    import threading
    import time
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def fn(tile):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(delay)
        with lock:
            state["now"] -= 1
        return label_components(tile > 0.5, 1)
    return fn, state


@pytest.mark.parametrize("max_workers", [1, 2])
def test_max_workers_bounds_the_tiles_processed_at_once(max_workers):
    image = random_blobs((48, 48), seed=8)
    fn, state = _concurrency_spy()
    labels = tile_process(image, fn, tile_shape=12, max_workers=max_workers, client=False, compute=True)
    assert_labels_equivalent(labels, ndimage.label(image > 0.5)[0])
    assert state["peak"] == max_workers   # 16 tiles of 30 ms: the pool fills up, never more


def test_max_workers_errors_and_cluster_warning(caplog):
    from distributed import Client, LocalCluster
    image = random_blobs((24, 24), seed=9)
    with pytest.raises(ValueError, match=r"max_workers=0: use a positive int \(tiles processed at once"):
        tile_process(image, threshold(0.5), tile_shape=12, max_workers=0)
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        with caplog.at_level("WARNING", logger="patchworks"):
            labels = tile_process(image, threshold(0.5), tile_shape=12, max_workers=3, client=c, compute=True)
    assert "max_workers=3 is not used on a distributed client" in caplog.text
    assert "make_local_cluster(n_workers=3)" in caplog.text
    assert_labels_equivalent(labels, ndimage.label(image > 0.5)[0])


def _stages(parent):
    return sorted(p for p in parent.iterdir() if p.name.startswith(".patchworks-"))


def test_stage_dir_and_keep_stage(tmp_path):
    import json
    image = random_blobs((32, 32), seed=10)
    stage = tmp_path / "stage"
    out = tmp_path / "labels.zarr"
    truth = ndimage.label(image > 0.5)[0]
    labels = tile_process(image, threshold(0.5), tile_shape=8, write_to=out, stage_dir=stage, keep_stage=True)
    assert_labels_equivalent(labels.compute(), truth)
    kept, = _stages(stage)
    assert len(list((kept / "tiles").glob("tile-*.bin"))) == 16      # every staged tile is still there
    assert json.loads((kept / "run.json").read_text())["complete"] is True
    assert not (kept / "lock").exists()
    # a kept stage of a finished run is no unfinished run: another call on the same output is not refused
    again = tile_process(image, threshold(0.5), tile_shape=16, write_to=out, stage_dir=stage, overwrite=True,
                         compute=True)
    assert_labels_equivalent(again, truth)
    import shutil
    shutil.rmtree(out)
    third = tile_process(image, threshold(0.6), tile_shape=8, write_to=out, scratch_dir=stage, compute=True)
    assert_labels_equivalent(third, ndimage.label(image > 0.6)[0])
    # without keep_stage the scratch goes when the run completes
    assert all(json.loads((p / "run.json").read_text()).get("complete") for p in _stages(stage))
    with pytest.raises(ValueError, match=r"stage_dir='a' and scratch_dir='b' were both given; they are the same"):
        tile_process(image, threshold(0.5), tile_shape=8, stage_dir="a", scratch_dir="b")


def test_keep_stage_without_write_to_keeps_it_where_it_is_logged(caplog):
    import re
    from pathlib import Path
    image = random_blobs((16, 16), seed=11)
    with caplog.at_level("INFO", logger="patchworks"):
        labels = tile_process(image, threshold(0.5), tile_shape=8, keep_stage=True, compute=True)
    assert_labels_equivalent(labels, ndimage.label(image > 0.5)[0])
    path = Path(re.search(r"stage kept in (\S+)", caplog.text).group(1))
    assert len(list((path / "tiles").glob("tile-*.bin"))) == 4
    import shutil
    shutil.rmtree(path.parent)


def _never(tile):
    raise AssertionError("dry_run called fn")


def test_dry_run_prints_and_returns_the_plan_without_calling_fn(tmp_path, capsys):
    from patchworks import RunPlan
    img = np.zeros((3, 50, 40), np.uint16)
    img[:, 5, 5] = 100        # only tile (0, 0, 0)'s window holds anything (the next windows start at 12)
    out = tmp_path / "labels.zarr"
    plan = tile_process(img, _never, tile_shape=(3, 16, 16), overlap=4, write_to=out, skip_empty=True,
                        empty_threshold=10, max_workers=2, dry_run=True)
    printed = capsys.readouterr().out
    assert isinstance(plan, RunPlan)
    assert str(plan) in printed
    assert not out.exists() and _stages(tmp_path) == []
    # against direct computations of the geometry
    assert plan.grid_shape == (1, 4, 3) and plan.n_tiles == 12
    assert plan.tile_shape == (3, 16, 16) and plan.overlap == (0, 4, 4)   # z: one tile, halo clipped
    assert plan.window_shape == (3, 24, 24)
    assert plan.window_bytes == 3 * 24 * 24 * 2
    assert plan.memory_per_task == 3 * 24 * 24 * 4 * 8
    assert plan.workers == "2 local thread(s)"
    info = estimate_empty_tiles(img, (3, 16, 16), 10, overlap=4)
    assert plan.n_empty == info["n_tiles"] - info["n_occupied"] == 11
    assert plan.empty_threshold == 10
    for key in ("tiles:        12 = 1 x 4 x 3", "window shape: (3, 24, 24)", "empty tiles:  11 of 12 skipped"):
        assert key in printed
    # without skip_empty there is no empty count, and merge_tile_labels plans its blocks the same way
    import dask.array as da
    plan = tile_process(img, _never, tile_shape=(3, 16, 16), dry_run=True)
    assert plan.n_empty is None and "empty tiles" not in str(plan)
    from patchworks import merge_tile_labels
    blocks = da.from_array(np.zeros((40, 30), np.uint32), chunks=(10, 15))
    plan = merge_tile_labels(blocks, dry_run=True)
    assert plan.grid_shape == (4, 2) and plan.window_shape == (10, 15)


def test_gpus_runs_one_worker_per_listed_gpu(tmp_path, monkeypatch):
    # no GPU is needed to check the plumbing: each worker process sees only its own device entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    seen = tmp_path / "seen"
    seen.mkdir()

    def record(tile):
        import os
        (seen / f"{os.getpid()}-{os.environ['CUDA_VISIBLE_DEVICES']}").touch()
        return label_components(tile > 0.5, 1)

    image = random_blobs((48, 48), seed=12)
    labels = tile_process(image, record, tile_shape=12, gpus=[0, 2], compute=True)
    assert_labels_equivalent(labels, ndimage.label(image > 0.5)[0])
    devices = {p.name.split("-")[1] for p in seen.iterdir()}
    assert devices <= {"0", "2"} and devices, devices
    pids = {p.name.split("-")[0] for p in seen.iterdir()}
    assert len(pids) == len(devices)    # one process per device


def test_gpus_errors_and_plan(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    image = random_blobs((24, 24), seed=13)
    with pytest.raises(ValueError, match=r"gpus=\[3\]: \['3'\] not visible to this process \(CUDA_VISIBLE_DEVICES="):
        tile_process(image, threshold(0.5), tile_shape=12, gpus=[3])
    with pytest.raises(ValueError, match=r"gpus=3: only 2 GPU\(s\) are visible"):
        tile_process(image, threshold(0.5), tile_shape=12, gpus=3)
    with pytest.raises(ValueError, match=r"gpus=\[0\] starts a cluster .* client=False was given too"):
        tile_process(image, threshold(0.5), tile_shape=12, gpus=[0], client=False)
    plan = tile_process(image, _never, tile_shape=12, gpus=2, dry_run=True)
    assert plan.workers.startswith("2 GPU worker process(es), one per device 0, 1")


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=4), r"tile_process\(\) has no option depth=4; use overlap="),
    (dict(chunks=(8, 8)), r"has no option chunks=\(8, 8\); use tile_shape= \(tile_shape=None takes the input's"),
    (dict(n_workers=2), r"use max_workers= \(local threads\), or make_local_cluster\(n_workers=...\)"),
    (dict(cleanup=False), r"use keep_stage= \(cleanup=False is keep_stage=True\)"),
    (dict(overlapp=2), r"unexpected keyword argument 'overlapp'; did you mean overlap"),
])
def test_upstream_options_without_a_meaning_here_name_ours(kwargs, match):
    with pytest.raises(TypeError, match=match):
        tile_process(np.zeros((8, 8)), threshold(0.5), tile_shape=4, **kwargs)


def test_merge_refuses_gpus_naming_what_to_use():
    import dask.array as da
    with pytest.raises(TypeError, match=r"merge_tile_labels\(\) runs no model, so gpus= has no meaning"):
        merge_tile_labels(da.zeros((8, 8), chunks=4, dtype=np.uint32), gpus=[0])
