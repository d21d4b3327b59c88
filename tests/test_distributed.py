"""The same run on a real two-process LocalCluster gives the identical result."""

import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, WorkerPlugin, get_task_stream

from patchworks import label_components, merge_tile_labels, threshold, tile_process
from patchworks.testing import assert_labels_equivalent, random_blobs


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def _record_pid(path):
    def fn(tile):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return label_components(tile > 0.5)
    return fn


def test_cluster_run_is_identical_to_threaded_run(tmp_path, client):
    image = random_blobs((40, 36, 30), seed=21, sigma=1.5)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(10, 12, 10))
    pids = tmp_path / "pids.txt"
    with get_task_stream(client) as stream:
        on_cluster = tile_process(str(src), _record_pid(pids), tile_shape=(10, 12, 10), overlap=2,
                                  write_to=tmp_path / "cluster.zarr", client=client, sequential_labels=True)
    threaded = tile_process(str(src), threshold(0.5), tile_shape=(10, 12, 10), overlap=2,
                            write_to=tmp_path / "threads.zarr", client=False, sequential_labels=True)
    np.testing.assert_array_equal(on_cluster.compute(scheduler="threads"), threaded.compute(scheduler="threads"))
    workers = {int(p) for p in pids.read_text().split()}
    assert os.getpid() not in workers and len(workers) >= 1
    assert len(pids.read_text().split()) == 4 * 3 * 3, "fn runs once per tile on the cluster"
    names = {t["key"] if isinstance(t["key"], str) else t["key"][0] for t in stream.data}
    assert any(n.startswith("patchworks-stage-") for n in names)
    assert any(n.startswith("patchworks-relabel-") for n in names)


def test_iou_stitching_on_the_cluster_is_identical_to_threads(client):
    from patchworks.testing import TissueOracle, dense_tissue

    stack = dense_tissue((6, 48, 40), 8, seed=4)  # plane-by-plane tiles and bands: both seam tasks run there
    kwargs = dict(tile_shape=(1, 24, 20), overlap=(0, 10, 10), stitch="iou", compute=True)
    on_cluster = tile_process(stack, TissueOracle(), client=client, **kwargs)
    threaded = tile_process(stack, TissueOracle(), client=False, **kwargs)
    np.testing.assert_array_equal(on_cluster, threaded)


def test_numpy_and_dask_inputs_on_the_cluster(client):
    image = random_blobs((48, 40), seed=22)
    truth = tile_process(image, threshold(0.5), tile_shape=(12, 10), compute=True, client=False)
    from_numpy = tile_process(image, threshold(0.5), tile_shape=(12, 10), compute=True, client=client)
    from_dask = tile_process(da.from_array(image, chunks=(20, 20)), threshold(0.5), tile_shape=(12, 10),
                             compute=True, client=client)
    np.testing.assert_array_equal(from_numpy, truth)
    np.testing.assert_array_equal(from_dask, truth)


def test_active_client_is_used_by_default_and_merge_runs_there(client):
    mask = random_blobs((30, 30), seed=23) > 0.5
    labeled = da.from_array(mask, chunks=10).map_blocks(lambda b: label_components(b), dtype=np.uint32)
    with get_task_stream(client) as stream:
        merged = merge_tile_labels(labeled, compute=True)  # no client= : the active one is used
    assert any(str(t["key"]).startswith("patchworks-relabel-") for t in stream.data)
    from scipy import ndimage
    assert_labels_equivalent(merged, ndimage.label(mask)[0])


class _KillOnce(WorkerPlugin):
    """Worker plugin: the first worker to start a task whose key has ``prefix`` dies on the spot.

    A flag file makes it once per cluster; the nanny then restarts the worker
    and the scheduler reruns what it lost.
    """

    def __init__(self, prefix, flag):
        self.prefix, self.flag = prefix, flag

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)


@pytest.mark.parametrize("phase", ["patchworks-stage-", "patchworks-relabel-"])
def test_a_worker_killed_mid_run_changes_nothing(tmp_path, phase):
    image = random_blobs((48, 48, 40), seed=24, sigma=1.5)
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(12, 12, 10))
    undisturbed = tile_process(str(src), threshold(0.5), tile_shape=(12, 12, 10), compute=True, client=False,
                               sequential_labels=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        c.register_plugin(_KillOnce(phase, str(tmp_path / "killed")), name="kill-once")
        before = set(c.scheduler_info()["workers"])
        out = tile_process(str(src), threshold(0.5), tile_shape=(12, 12, 10), write_to=tmp_path / "out.zarr",
                           client=c, sequential_labels=True)
        result = out.compute(scheduler="threads")
        assert (tmp_path / "killed").exists(), "a worker was killed"
        c.wait_for_workers(2, timeout=30)
        assert set(c.scheduler_info()["workers"]) != before, "the killed worker was replaced"
    np.testing.assert_array_equal(result, undisturbed)
    assert len(np.unique(result)) - 1 == undisturbed.max(), "no duplicated or missing objects"


def test_auto_tile_shape_follows_the_smallest_worker(tmp_path):
    image = np.zeros((8192, 8192), np.uint8)
    image[100:3000:50, 2000:7000] = 255   # rails crossing every tile seam
    image[:, 4090:4100] = 255
    src = tmp_path / "image.zarr"
    zarr.create_array(store=src, data=image, chunks=(1024, 1024))
    # the limit only sizes the tiles here: never let a worker pause or die on it (a paused worker would hang)
    relaxed = {"distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False,
               "distributed.worker.memory.spill": False, "distributed.worker.memory.target": False}
    with dask.config.set(relaxed), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                 memory_limit="256MiB", dashboard_address=None) as cluster, \
            Client(cluster) as c:
        out = tile_process(str(src), threshold(127), tile_shape="auto", client=c)
        labels = out.compute(scheduler="threads")
    assert out.chunks[0][0] < 8192, "256 MiB workers get tiles smaller than the image"
    assert out.chunks[0][0] % 1024 == 0, "auto tiles are whole input chunks"
    from scipy import ndimage
    assert_labels_equivalent(labels, ndimage.label(image > 127)[0])


def test_calling_from_inside_a_task_is_refused_up_front(client):
    def nested():
        from distributed import get_client
        return tile_process(np.zeros((8, 8)), threshold(0.5), tile_shape=4, compute=True, client=get_client())

    with pytest.raises(RuntimeError, match="called from inside a dask task"):
        client.submit(nested).result()
