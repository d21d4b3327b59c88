"""Clusters on Dask's own machinery, and the up-front client check, against real clusters."""

import asyncio
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
from distributed import Client, LocalCluster, worker_client  # noqa: E402

import patchworks.run._cluster as pc  # noqa: E402
from patchworks.run._cluster import check_client, dask_setup, make_local_cluster, slurm_cluster  # noqa: E402
from patchworks.run._resources import ResourceBudget  # noqa: E402

GiB = 2**30
QUIET = dict(dashboard_address=":0", silence_logs=50)


@pytest.fixture(scope="module")
def inproc():
    """One in-process cluster (one single-threaded worker) shared by the check_client tests."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit=0, **QUIET) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture
def fake_budget(monkeypatch):
    budget = ResourceBudget(memory_bytes=2 * GiB, cores=2)
    monkeypatch.setattr(pc, "resource_budget", lambda **kw: budget)
    return budget


# ---------------------------------------------------------------- make_local_cluster

def test_make_local_cluster_processes_sized_from_budget(fake_budget):
    client, cluster = make_local_cluster(**QUIET)
    try:
        assert isinstance(cluster, LocalCluster)
        assert client.nthreads() and sorted(client.nthreads().values()) == [1, 1]
        limits = {w.memory_limit for w in client.cluster.scheduler.workers.values()}
        assert limits == {GiB}
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()  # real processes
        assert client.submit(lambda x: x + 1, 41).result() == 42
    finally:
        client.close()
        cluster.close()


def test_make_local_cluster_threads_per_worker_divides_cores(monkeypatch):
    monkeypatch.setattr(pc, "resource_budget", lambda **kw: ResourceBudget(memory_bytes=8 * GiB, cores=8))
    client, cluster = make_local_cluster(threads_per_worker=4, processes=False, **QUIET)
    try:
        assert sorted(client.nthreads().values()) == [4, 4]
        assert {w.memory_limit for w in cluster.scheduler.workers.values()} == {4 * GiB}
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(threads_per_worker=0), "threads_per_worker=0"),
    (dict(n_workers=-1), "n_workers=-1"),
])
def test_make_local_cluster_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_local_cluster(**kwargs)


def test_gpu_worker_specs_one_device_each():
    specs = pc._gpu_worker_specs(["1", "GPU-abc"], memory_limit=GiB)
    opts = [s["options"] for s in specs.values()]
    assert [o["env"] for o in opts] == [{"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}]
    assert all(o["nthreads"] == 1 and o["memory_limit"] == GiB and o["resources"] == {"GPU": 1} for o in opts)


def test_make_local_cluster_gpu_one_process_per_fake_gpu(monkeypatch, fake_budget):
    monkeypatch.setattr(pc, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # force the SpecCluster fallback
    client, cluster = make_local_cluster(use_gpu=True, **QUIET)
    try:
        envs = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(envs.values()) == ["0", "1"]
        assert sorted(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        workers = client.cluster.scheduler.workers.values()
        assert {w.memory_limit for w in workers} == {GiB}
        assert all(w.resources == {"GPU": 1} for w in workers)
        assert client.submit(lambda: os.environ["CUDA_VISIBLE_DEVICES"], resources={"GPU": 1}).result() in "01"
    finally:
        client.close()
        cluster.close()


def test_make_local_cluster_gpu_prefers_dask_cuda(monkeypatch, fake_budget):
    seen = {}

    class FakeLocalCUDACluster(LocalCluster):
        def __init__(self, CUDA_VISIBLE_DEVICES, **kwargs):
            seen.update(kwargs, devices=CUDA_VISIBLE_DEVICES)
            super().__init__(processes=False, **kwargs)

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeLocalCUDACluster))
    monkeypatch.setattr(pc, "visible_gpus", lambda: ["GPU-a", "GPU-b", "GPU-c"])
    client, cluster = make_local_cluster(use_gpu=True, n_workers=2, **QUIET)
    try:
        assert isinstance(cluster, FakeLocalCUDACluster)
        assert seen["devices"] == ["GPU-a", "GPU-b"]
        assert (seen["n_workers"], seen["threads_per_worker"], seen["memory_limit"]) == (2, 1, GiB)
    finally:
        client.close()
        cluster.close()


def test_make_local_cluster_gpu_errors(monkeypatch, fake_budget):
    monkeypatch.setattr(pc, "visible_gpus", lambda: [])
    with pytest.raises(RuntimeError, match="no GPU is visible.*use_gpu=False"):
        make_local_cluster(use_gpu=True)
    monkeypatch.setattr(pc, "visible_gpus", lambda: ["0"])
    with pytest.raises(ValueError, match="n_workers=2: only 1 GPU"):
        make_local_cluster(use_gpu=True, n_workers=2)


# ---------------------------------------------------------------- SLURM recipe

needs_jobqueue = pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is None,
                                    reason='needs dask-jobqueue (pip install "patchworks[hpc]")')


@needs_jobqueue
def test_slurm_cluster_cpu_job_script():
    cluster = slurm_cluster(cores=8, memory="32GB", walltime="01:30:00", queue="short",
                            job_extra_directives=["--account=lab"], interface=None)
    try:
        script = cluster.job_script()
        for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH -t 01:30:00",
                     "#SBATCH -p short", "#SBATCH --account=lab"):
            assert line in script, line
        assert "gres" not in script
        assert "-m distributed.cli.dask_worker" in script
        assert "--nthreads 1" in script and "--nworkers 8" in script and "--memory-limit 3.73GiB" in script
    finally:
        cluster.close()


@needs_jobqueue
def test_slurm_cluster_gpu_job_script():
    cluster = slurm_cluster(cores=16, memory="128GB", walltime="04:00:00", queue="gpu", gpus=4)
    try:
        script = cluster.job_script()
        for line in ("#SBATCH --cpus-per-task=16", "#SBATCH -p gpu", "#SBATCH --gres=gpu:4",
                     "#SBATCH -t 04:00:00"):
            assert line in script, line
        assert "--nthreads 1" in script and "--nworkers 4" in script
        assert "--preload patchworks.run._cluster" in script and "--resources GPU=1" in script
    finally:
        cluster.close()


@needs_jobqueue
@pytest.mark.parametrize("kwargs, match", [
    (dict(cores=0), "cores=0"),
    (dict(gpus=-1), "gpus=-1"),
    (dict(gpus=9), "gpus=9 > cores=8"),
    (dict(threads_per_worker=16), "threads_per_worker=16"),
    (dict(job_extra_directives="--account=lab"), "job_extra_directives="),
])
def test_slurm_cluster_bad_args(kwargs, match):
    args = dict(cores=8, memory="8GB", walltime="00:10:00")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        slurm_cluster(**args)


@pytest.mark.parametrize("name, visible, expected", [
    ("job-0", "4,5", "4"), ("job-1", "4,5", "5"), ("job-3", None, "3"), ("solo", "4,5", "4,5"),
])
def test_dask_setup_pins_one_gpu_per_worker(monkeypatch, name, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    dask_setup(type("W", (), {"name": name})())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


# ---------------------------------------------------------------- check_client

def test_check_client_accepts_a_good_client(inproc, tmp_path):
    assert check_client(inproc) is None
    assert check_client(inproc, shared_paths=[tmp_path]) is None


def test_single_threaded_in_process_worker_runs_two_phase_pipeline(inproc):
    """Not a deadlock: the driver gathers phase 1 and submits phase 2 from outside the worker."""
    from patchworks import threshold, tile_process
    img = np.zeros((12, 12), dtype=np.float32)
    img[2:10, 5:7] = 1
    out = tile_process(img, threshold(0.5), tile_shape=4, client=inproc, compute=True, progress=False)
    assert out.max() == 1 and (out > 0).sum() == 16


def test_check_client_inside_a_task(inproc):
    def task():
        from distributed import get_client
        try:
            check_client(get_client())
        except RuntimeError as exc:
            return str(exc)
        return "no error"
    message = inproc.submit(task, pure=False).result(timeout=30)
    assert "inside a dask task" in message and "worker_client" in message


def test_check_client_inside_worker_client_is_fine(inproc):
    def task():
        with worker_client() as client:
            check_client(client)
            return "ok"
    assert inproc.submit(task, pure=False).result(timeout=30) == "ok"


def test_check_client_asynchronous(inproc):
    async def main():
        async with Client(inproc.scheduler.address, asynchronous=True) as client:
            with pytest.raises(RuntimeError, match="asynchronous.*run_in_executor"):
                check_client(client)
    asyncio.run(main())


def test_check_client_closed(inproc):
    client = Client(inproc.scheduler.address)
    client.close()
    with pytest.raises(RuntimeError, match="client is closed.*new"):
        check_client(client)


def test_check_client_no_workers_and_none_coming():
    with LocalCluster(n_workers=0, processes=False, **QUIET) as cluster, Client(cluster) as client:
        with pytest.raises(RuntimeError, match="no workers.*cluster.scale"):
            check_client(client)
        cluster.adapt(minimum=0, maximum=1)
        check_client(client)  # adaptive: workers will come


def test_check_client_in_process_workers_paused_by_driver_memory():
    with LocalCluster(n_workers=1, processes=False, memory_limit="32MB", **QUIET) as cluster, \
            Client(cluster) as client:
        with pytest.raises(RuntimeError, match="inside this process.*pause.*processes=True"):
            check_client(client)


def test_check_client_shared_paths(inproc, tmp_path):
    missing = tmp_path / "not-there"
    with pytest.raises(RuntimeError, match="cannot see.*not-there.*shared"):
        check_client(inproc, shared_paths=[tmp_path, missing])
