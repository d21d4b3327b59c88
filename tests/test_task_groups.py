"""Task groups: every phase makes at most MAX_TASKS tasks, with the labels, tables and resume of one item per task."""

import math
import pickle

import cc3d
import dask
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import patchworks.io._ngff_write as _ngff_write
import patchworks.labels._batch as batch
import patchworks.labels._process as process
import patchworks.run._execute as execute
from patchworks import TileGrid, merge_tile_labels, read_table, threshold, tile_process
from patchworks.labels._groups import stage_group, tiles_per_item
from patchworks.labels._merge import plan_relabel
from patchworks.labels._stage_store import TileStaging
from patchworks.labels._tile_task import StageJob
from patchworks.testing import assert_labels_equivalent, random_blobs

from _probes import relabel_task_arguments

LIMIT = 3  # tasks per phase in these tests: tiny images then make groups of several items


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(execute, "MAX_TASKS", LIMIT)
    monkeypatch.setattr(execute, "MIN_GROUP_VOXELS", 1)  # groups as MAX_TASKS makes them: LIMIT per phase


@pytest.fixture
def per_item(monkeypatch):
    """No grouping by work: groups only as MAX_TASKS asks (one item per task below it)."""
    monkeypatch.setattr(execute, "MIN_GROUP_VOXELS", 1)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(batch, "MIN_BATCH_VOXELS", 64)
    monkeypatch.setattr(batch, "MIN_BATCHES", 2)


@pytest.fixture
def phase_tasks(monkeypatch):
    """The number of tasks each phase hands to the real ``run_tasks`` (keys of its real graph)."""
    seen = {}

    def spy(real):
        def run_tasks(tasks, **kw):
            keys = tasks[1] if isinstance(tasks, tuple) else [t.key for t in tasks]
            for key in keys:  # patchworks-<phase>-<token>[-level]; the relabel tasks map the table's rows too
                prefix = key.rsplit("-", 1)[0]
                seen[prefix] = seen.get(prefix, 0) + 1
            return real(tasks, **kw)
        return run_tasks

    monkeypatch.setattr(process, "run_tasks", spy(process.run_tasks))
    return seen


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def whole(mask, connectivity=1):
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))


# -- the rule -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 50_000, 50_001, 6 * 10**5, 4.8e6])
def test_no_phase_exceeds_max_tasks_and_small_runs_keep_a_task_per_item(n):
    n = int(n)
    size = execute.group_size(n)
    groups = execute.task_groups(np.arange(n), size)
    assert len(groups) <= execute.MAX_TASKS
    if n <= execute.MAX_TASKS:
        assert size == 1, "large items: one per task"
    else:
        assert len(groups) >= execute.MAX_TASKS // 2
    small = execute.group_size(n, 32 * 32)            # 32^2 tiles: about 2^20 voxels per task ...
    assert math.ceil(n / small) <= execute.MAX_TASKS
    assert small * 32 * 32 <= max(execute.MIN_GROUP_VOXELS, size * 32 * 32)
    assert n < execute.MIN_GROUPS or math.ceil(n / small) >= execute.MIN_GROUPS, "... and work for every worker"
    if n:
        np.testing.assert_array_equal(np.concatenate(groups), np.arange(n))  # each item once, in order


@pytest.mark.parametrize("tile", [512, 128, 64])
def test_ten_terabytes_make_at_most_max_tasks_per_phase(tile):
    side = round(1e13 ** (1 / 3))                       # 10^13 voxels
    grid = TileGrid((side,) * 3, tile)
    items = batch.batch_grid(grid, batch.batch_block(grid)).n_tiles
    assert math.ceil(items / execute.group_size(items)) <= execute.MAX_TASKS
    iou = grid.n_tiles                                  # stitch="iou": one tile per item
    assert math.ceil(iou / execute.group_size(iou)) <= execute.MAX_TASKS


def test_a_plan_piece_gives_each_item_its_own_plan():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 6, 40)
    total = int(counts.sum())
    pairs = rng.integers(1, total + 1, (60, 2)).astype(np.uint64)
    for sequential in (False, True):
        plans = plan_relabel(counts, pairs, sequential=sequential).tiles
        items = np.array([0, 3, 4, 5, 17, 39])
        piece = plans.piece(items)
        for k, t in enumerate(items):
            local = np.arange(counts[t] + 1)
            np.testing.assert_array_equal(piece[k].final_ids(local), plans[t].final_ids(local))
            assert piece[k].n_absorbed == plans[t].n_absorbed
        assert len(plans.piece(np.array([], np.int64))) == 0


def test_tiles_per_item_counts_the_tiles_of_edge_batches():
    grid = TileGrid((10, 7), 2)                          # 5 x 4 tiles, blocks of 2 x 3
    n = tiles_per_item(grid, (2, 3), np.arange(6))
    assert n.tolist() == [6, 2, 6, 2, 3, 1] and n.sum() == grid.n_tiles


# -- labels: every phase bounded, labels as the oracle's --------------------------------------------------

@pytest.mark.parametrize("batched", [False, True])
def test_touch_grouped_equals_whole_image_labelling(small_groups, small_batches, phase_tasks, batched, monkeypatch,
                                                    tmp_path):
    image = random_blobs((40, 36), density=0.45, sigma=1.5, seed=11)
    tile = 4
    # the coarse levels through tasks per shared chunk (a phase of its own), not assembled by the driver
    monkeypatch.setattr(_ngff_write, "INLINE_LEVEL_VOXELS", 0)
    if not batched:
        monkeypatch.setattr(batch, "MIN_BATCH_VOXELS", 1)
    assert (batch.batch_block(TileGrid(image.shape, tile)) != (1, 1)) == batched
    for connectivity in (1, 2):
        out, count = tile_process(image, threshold(0.5), tile_shape=tile, connectivity=connectivity,
                                  write_to=tmp_path / f"c{connectivity}.zarr", pyramid_levels=3, return_count=True,
                                  progress=False, client=False)
        ref, n = whole(image > 0.5, connectivity)
        assert_labels_equivalent(np.asarray(out), ref)
        assert count == n
        phases = {k.split("-")[1] for k in phase_tasks}
        assert {"stage", "seam", "relabel", "pyramid"} <= phases
        assert max(phase_tasks.values()) <= LIMIT, phase_tasks
        phase_tasks.clear()


def test_touch_grouped_3d_matches_cc3d(small_groups, phase_tasks):
    image = random_blobs((14, 15, 13), density=0.4, sigma=1.5, seed=5)
    for connectivity, cc in ((1, 6), (3, 26)):
        out = tile_process(image, threshold(0.5), tile_shape=3, connectivity=connectivity, compute=True,
                           sequential_labels=True, progress=False, client=False)
        ref = cc3d.connected_components(image > 0.5, connectivity=cc)
        assert_labels_equivalent(out, ref)
        assert out.max() == ref.max()
        assert max(phase_tasks.values()) <= LIMIT


def _iou_runs(monkeypatch, image, **kw):
    """The same iou run ungrouped, then grouped (MAX_TASKS = LIMIT); the grouped run's tasks per phase."""
    seen = {}
    real = process.run_tasks

    def spy(tasks, **k):
        keys = tasks[1] if isinstance(tasks, tuple) else [t.key for t in tasks]
        if keys:
            seen[keys[0].rsplit("-", 1)[0]] = len(keys)
        return real(tasks, **k)

    monkeypatch.setattr(execute, "MIN_GROUP_VOXELS", 1)
    ungrouped = tile_process(image, threshold(0.5), stitch="iou", compute=True, progress=False, **kw)
    monkeypatch.setattr(execute, "MAX_TASKS", LIMIT)
    monkeypatch.setattr(process, "run_tasks", spy)
    grouped = tile_process(image, threshold(0.5), stitch="iou", compute=True, progress=False, **kw)
    return ungrouped, grouped, seen


def test_iou_grouped_is_identical_to_ungrouped(monkeypatch):
    image = random_blobs((48, 44), density=0.4, sigma=2, seed=9)
    ungrouped, grouped, seen = _iou_runs(monkeypatch, image, tile_shape=8, overlap=3, client=False)
    np.testing.assert_array_equal(grouped, ungrouped)
    assert_labels_equivalent(grouped, whole(image > 0.5)[0])  # blobs apart: IoU joins what touch joins
    assert {k.split("-")[1] for k in seen} >= {"stage", "seam", "relabel"} and max(seen.values()) <= LIMIT


def test_iou_plane_by_plane_grouped_is_identical_to_ungrouped(monkeypatch):
    stack = random_blobs((6, 30, 28), density=0.4, sigma=2, seed=4)
    ungrouped, grouped, seen = _iou_runs(monkeypatch, stack, tile_shape=(1, 10, 10), overlap=(0, 3, 3),
                                         client=False)
    np.testing.assert_array_equal(grouped, ungrouped)
    assert max(seen.values()) <= LIMIT


def test_grouped_on_a_local_cluster_equals_threads(small_groups, small_batches, cluster_client, phase_tasks):
    image = random_blobs((36, 40), density=0.45, sigma=1.5, seed=2)
    threads = tile_process(image, threshold(0.5), tile_shape=4, connectivity=2, compute=True, progress=False,
                           client=False)
    on_cluster = tile_process(image, threshold(0.5), tile_shape=4, connectivity=2, compute=True, progress=False,
                              client=cluster_client)
    np.testing.assert_array_equal(on_cluster, threads)
    assert_labels_equivalent(on_cluster, whole(image > 0.5, 2)[0])
    iou_threads = tile_process(image, threshold(0.5), tile_shape=8, overlap=3, stitch="iou", compute=True,
                               progress=False, client=False)
    iou_cluster = tile_process(image, threshold(0.5), tile_shape=8, overlap=3, stitch="iou", compute=True,
                               progress=False, client=cluster_client)
    np.testing.assert_array_equal(iou_cluster, iou_threads)
    assert max(phase_tasks.values()) <= LIMIT


@pytest.mark.parametrize("sequential", [False, True])
def test_iou_on_a_cluster_plans_by_the_reduction_with_the_same_ids(small_groups, cluster_client, monkeypatch,
                                                                   sequential):
    from distributed import get_task_stream

    import patchworks.labels._reduce as reduce
    image = random_blobs((48, 40), density=0.4, sigma=2, seed=21)
    kw = dict(tile_shape=8, overlap=3, stitch="iou", sequential_labels=sequential, compute=True, progress=False)
    threads = tile_process(image, threshold(0.5), client=False, **kw)
    monkeypatch.setattr(reduce, "REDUCE_MIN_TILES", 1)
    monkeypatch.setattr(reduce, "BLOCK_TILES", 4)        # 30 tiles: 8 blocks, a tree 2 levels deep
    with get_task_stream(cluster_client) as stream:
        reduced = tile_process(image, threshold(0.5), client=cluster_client, **kw)
    names = {t["key"] if isinstance(t["key"], str) else t["key"][0] for t in stream.data}
    assert any(n.startswith("patchworks-reduce-") for n in names), "the plan was made by the reduction"
    np.testing.assert_array_equal(reduced, threads)      # the same ids, not just the same objects


def test_merge_tile_labels_own_stage_is_grouped(small_groups, phase_tasks, tmp_path):
    import zarr
    mask = random_blobs((32, 36), density=0.45, sigma=1.5, seed=6) > 0.5
    per_tile = np.zeros(mask.shape, np.uint32)
    for y in range(0, 32, 4):
        for x in range(0, 36, 4):
            per_tile[y:y + 4, x:x + 4] = ndimage.label(mask[y:y + 4, x:x + 4])[0]
    z = zarr.create_array(store=tmp_path / "tiles.zarr", shape=mask.shape, chunks=(4, 4), dtype=np.uint32)
    z[...] = per_tile
    merged, count = merge_tile_labels(str(tmp_path / "tiles.zarr"), compute=True, return_count=True, client=False)
    ref, n = whole(mask)
    assert_labels_equivalent(merged, ref)
    assert count == n and max(phase_tasks.values()) <= LIMIT


# -- the table ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stitch", ["touch", "iou"])
def test_grouped_table_equals_ungrouped(monkeypatch, small_batches, stitch, tmp_path):
    image = random_blobs((40, 44), density=0.35, sigma=1.2, seed=8)
    kw = dict(tile_shape=4 if stitch == "touch" else 8, overlap=0 if stitch == "touch" else 3, stitch=stitch,
              table=True, progress=False, client=False)
    monkeypatch.setattr(execute, "MIN_GROUP_VOXELS", 1)
    tile_process(image, threshold(0.5), write_to=tmp_path / "a.zarr", **kw)
    monkeypatch.setattr(execute, "MAX_TASKS", LIMIT)
    tile_process(image, threshold(0.5), write_to=tmp_path / "b.zarr", **kw)
    a, b = read_table(tmp_path / "a.zarr"), read_table(tmp_path / "b.zarr")
    assert len(a) > 10
    pd.testing.assert_frame_equal(a, b)


# -- resume and retries --------------------------------------------------------------------------------------

def test_resume_after_a_failure_inside_a_group_reruns_only_unstaged_tiles(small_groups, monkeypatch, tmp_path):
    monkeypatch.setattr(batch, "MIN_BATCH_VOXELS", 1)  # one tile per item
    image = random_blobs((24, 24), density=0.45, sigma=1.5, seed=12)
    calls, flag = [], tmp_path / "flag"             # 36 tiles of 4^2 in 3 groups of 12: the second group fails
    flag.touch()

    def fn(window):
        calls.append(1)
        if flag.exists() and len(calls) == 21:
            raise RuntimeError("transient failure")
        return ndimage.label(window > 0.5)[0].astype(np.uint32)

    kw = dict(tile_shape=4, write_to=tmp_path / "l.zarr", progress=False, client=False)
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="transient failure"):
        tile_process(image, fn, **kw)
    staged = len(list((tmp_path).glob(".patchworks-*/tiles/tile-*.bin")))
    assert staged == 20, "the tiles the failed group staged before the failure stay staged"
    calls.clear()
    flag.unlink()
    resumed = tile_process(image, fn, **kw)
    assert len(calls) == 36 - 20, "a resumed run regroups and runs only the tiles not staged"
    expected = tile_process(image, fn, tile_shape=4, compute=True, progress=False, client=False)
    np.testing.assert_array_equal(np.asarray(resumed), expected)


def test_a_retried_group_stages_its_items_again_identically(tmp_path):
    grid = TileGrid((24, 24), 4)
    image = random_blobs((24, 24), density=0.45, sigma=1.5, seed=13)
    staging = TileStaging(grid, tmp_path / "tiles")
    job = StageJob(grid=grid, staging=staging, fn=threshold(0.5), source=image)
    items = np.arange(5, 17)
    first = stage_group(job, items)
    files = {p.name: p.read_bytes() for p in (tmp_path / "tiles").glob("tile-*.bin")}
    again = stage_group(job, items)               # what a retry after a lost worker does
    assert {p.name: p.read_bytes() for p in (tmp_path / "tiles").glob("tile-*.bin")} == files
    np.testing.assert_array_equal(again.n_labels, first.n_labels)
    assert staging.staged_counts() == dict(zip(items.tolist(), first.n_labels.tolist()))
    assert first.n_tiles == 12


# -- what the driver sends a task, and the bar --------------------------------------------------------------

def _relabel_arguments(monkeypatch, n_side, max_tasks):
    monkeypatch.setattr(execute, "MAX_TASKS", max_tasks)
    return relabel_task_arguments(monkeypatch, n_side, stitch="iou", overlap=1, client=False)


def test_bytes_per_relabel_task_bounded_per_item_and_per_task(per_item, monkeypatch):
    small = _relabel_arguments(monkeypatch, 12, 16)      # 144 tiles in groups of 9
    large = _relabel_arguments(monkeypatch, 24, 64)      # 576 tiles in groups of 9
    assert max(len(a[0]) for a in small) == max(len(a[0]) for a in large) == 9
    assert len(large) > 3 * len(small)
    size = lambda args: max(len(pickle.dumps(a)) for a in args)  # noqa: E731
    assert size(large) < 1.5 * size(small), "a task gets its own items' plan pieces, not the run's"
    one = _relabel_arguments(monkeypatch, 24, 10**6)     # one item per task
    assert size(large) < 9 * size(one), "a group's bytes: its items' pieces, no more"


def test_small_iou_tiles_are_grouped_by_work_with_a_task_for_every_worker(phase_tasks):
    image = random_blobs((64, 64), density=0.4, sigma=2, seed=3)
    out = tile_process(image, threshold(0.5), tile_shape=4, overlap=1, stitch="iou", compute=True, progress=False,
                       client=False)                  # 256 tiles of 16 voxels
    assert_labels_equivalent(out, whole(image > 0.5)[0])
    stage = next(v for k, v in phase_tasks.items() if "-stage-" in k)
    assert stage == execute.MIN_GROUPS, "small tiles grouped, down to MIN_GROUPS tasks and no further"


def test_progress_counts_tiles_of_grouped_tasks(small_groups, capsys):
    image = random_blobs((32, 32), seed=1)
    tile_process(image, threshold(0.5), tile_shape=4, overlap=1, stitch="iou", progress=True, compute=True,
                 client=False)
    err = capsys.readouterr().err
    assert "staging tiles: 100%" in err and "64/64" in err, "the staging bar counts every tile of its groups"
