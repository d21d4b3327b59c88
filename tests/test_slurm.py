"""patchworks on a real SLURM: jobs submitted by ``slurm_cluster``, cancelled with ``scancel``, resumed.

The ``slurm`` fixture (tests/conftest.py, tests/_slurm.py) starts a one-node
SLURM as root and skips elsewhere; ``pytest -m slurm`` selects these tests.
Every directory here is seen by every job, as a cluster's shared file
system is.
"""

import functools
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

pytest.importorskip("dask_jobqueue")
import dask  # noqa: E402
from distributed import Client  # noqa: E402

from _slurm_tiles import calls, slow_label  # noqa: E402
from patchworks import merge_tile_labels, slurm_cluster, threshold, tile_map, tile_process  # noqa: E402
from patchworks.testing import TissueOracle, assert_labels_equivalent, dense_tissue, random_blobs  # noqa: E402

pytestmark = pytest.mark.slurm

TESTS = Path(__file__).resolve().parent
QUIET = {"dashboard_address": ":0", "host": "127.0.0.1"}


def make_cluster(slurm, **kwargs):
    """``slurm_cluster`` as a user would call it, with logs and the tile functions' module where jobs see them."""
    options = dict(cores=1, memory=slurm.job_memory(), walltime="00:10:00", queue=slurm.partition,
                   log_directory=str(slurm.root / "job-logs"), scheduler_options=QUIET,
                   job_script_prologue=[f"export PYTHONPATH={TESTS}${{PYTHONPATH:+:$PYTHONPATH}}"])
    options.update(kwargs)
    return slurm_cluster(**options)


def job_ids(client) -> set[str]:
    return set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())


def wait_for(predicate, what: str, timeout: float = 90.0, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def scratch_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".patchworks-")]


def staged(parent: Path) -> int:
    return sum(len(list((d / "tiles").glob("tile-*"))) for d in scratch_dirs(parent))


@pytest.fixture(scope="class")
def two_jobs(slurm):
    """A client on two running SLURM jobs of one single-threaded worker each (gone before the next tests,
    which need the node's CPUs for jobs of their own)."""
    cluster = make_cluster(slurm)
    cluster.scale(jobs=2)
    client = Client(cluster)
    try:
        client.wait_for_workers(2, timeout=120)
        yield client
    finally:
        client.close()
        cluster.close()
        slurm.wait_no_jobs()


# ---------------------------------------------------------------- equal to the threaded run

class TestOnTwoJobs:
    """Results on two SLURM jobs equal the threaded run's."""

    def test_two_jobs_are_real_slurm_jobs(self, slurm, two_jobs):
        ids = job_ids(two_jobs)
        assert len(ids) == 2 and ids == set(slurm.running())
        pids = two_jobs.run(os.getpid)
        assert os.getpid() not in pids.values()

    def test_tile_process_touch_on_slurm_equals_threads(self, two_jobs, tmp_path):
        image = random_blobs((96, 80), seed=7)
        kwargs = dict(tile_shape=(24, 20), connectivity=2, sequential_labels=True)
        out = tile_process(image, threshold(0.5), client=two_jobs, write_to=tmp_path / "labels.zarr", **kwargs)
        result = out.compute()
        threaded = tile_process(image, threshold(0.5), client=False, compute=True, **kwargs)
        np.testing.assert_array_equal(result, threaded)
        oracle, _ = ndimage.label(image > 0.5, structure=np.ones((3, 3)))
        assert_labels_equivalent(result, oracle)
        assert not scratch_dirs(tmp_path), "the run's scratch is removed when it completes"

    def test_tile_process_iou_on_slurm_equals_threads(self, two_jobs, tmp_path):
        truth = dense_tissue((96, 96), cell_size=12, seed=3)
        kwargs = dict(tile_shape=32, overlap=12, stitch="iou")
        result = tile_process(truth, TissueOracle(seed=1), client=two_jobs, write_to=tmp_path / "cells.zarr",
                              **kwargs).compute()
        threaded = tile_process(truth, TissueOracle(seed=1), client=False, compute=True, **kwargs)
        np.testing.assert_array_equal(result, threaded)
        assert_labels_equivalent(result, truth)

    def test_merge_tile_labels_zarr_store_on_slurm(self, two_jobs, tmp_path):
        image = random_blobs((64, 64), seed=11)
        store = zarr.open_array(tmp_path / "per_tile.zarr", mode="w", shape=image.shape, chunks=(16, 16),
                                dtype="uint32")
        for i in range(0, 64, 16):  # per-tile labels computed "elsewhere", unique within each chunk only
            for j in range(0, 64, 16):
                store[i:i + 16, j:j + 16] = ndimage.label(image[i:i + 16, j:j + 16] > 0.5)[0]
        before = store[...]
        merged = merge_tile_labels(str(tmp_path / "per_tile.zarr"), write_to=tmp_path / "merged.zarr",
                                   client=two_jobs, sequential_labels=True).compute()
        assert_labels_equivalent(merged, ndimage.label(image > 0.5)[0])
        assert merged.max() == ndimage.label(image > 0.5)[1]
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "per_tile.zarr", mode="r")[...], before)

    def test_tile_map_on_slurm_equals_threads(self, two_jobs, tmp_path):
        image = np.random.default_rng(5).random((72, 60), dtype=np.float32)
        kwargs = dict(tile_shape=(24, 20), overlap=4, window="hann")
        result = tile_map(image, np.sqrt, client=two_jobs, write_to=tmp_path / "map.zarr", **kwargs).compute()
        threaded = tile_map(image, np.sqrt, client=False, compute=True, **kwargs)
        np.testing.assert_allclose(result, threaded, rtol=0, atol=0)
        np.testing.assert_allclose(result, np.sqrt(image), rtol=1e-6)



# ---------------------------------------------------------------- jobs that go away

def test_scancel_a_worker_job_while_staging(slurm, tmp_path):
    """The cluster keeps two jobs: a cancelled one is replaced, its tiles rerun, and the result is the same."""
    image = random_blobs((48, 48), seed=13)
    log = tmp_path / "calls.txt"
    fn = functools.partial(slow_label, delay=0.3, log=str(log))
    out = tmp_path / "labels.zarr"
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        cluster = make_cluster(slurm)
        cluster.adapt(minimum_jobs=2, maximum_jobs=2, interval="500ms")
        client = Client(cluster)
        try:
            client.wait_for_workers(2, timeout=120)
            first = job_ids(client)
            result = {}
            run = threading.Thread(target=lambda: result.update(
                labels=tile_process(image, fn, tile_shape=8, client=client, write_to=out).compute()))
            run.start()
            wait_for(lambda: staged(tmp_path) >= 6, "6 of 36 tiles staged")
            victim = sorted(first)[0]
            slurm.scancel(victim)
            run.join(timeout=180)
            assert not run.is_alive(), "the run did not finish after a job was cancelled"
            # the cluster asked SLURM for a job in place of the cancelled one (running or still queued)
            replaced = wait_for(lambda: (set(slurm.jobs()) - first) or None, "a replacement job")
            assert victim not in slurm.jobs() and replaced
        finally:
            client.close()
            cluster.close()
    slurm.wait_no_jobs()
    assert_labels_equivalent(result["labels"], ndimage.label(image > 0.5)[0])
    done = calls(log)
    assert victim in done and len(set(done)) >= 2, "both first jobs ran tiles before one was cancelled"
    assert 36 <= len(done) <= 36 + 2, "only the tiles in flight on the cancelled job ran twice"
    assert not scratch_dirs(tmp_path)


def test_adapt_scales_up_for_a_run_and_back_down(slurm, tmp_path):
    image = random_blobs((48, 48), seed=17)
    fn = functools.partial(slow_label, delay=0.3)
    cluster = make_cluster(slurm)
    cluster.adapt(minimum=0, maximum=2, interval="500ms", wait_count=2, target_duration="2s")
    client = Client(cluster)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(len(slurm.running()))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    try:
        assert slurm.jobs() == {}, "nothing is submitted before there is work"
        watcher.start()
        labels = tile_process(image, fn, tile_shape=8, client=client, write_to=tmp_path / "labels.zarr").compute()
        assert_labels_equivalent(labels, ndimage.label(image > 0.5)[0])
        wait_for(lambda: not slurm.jobs(), "adapt to cancel the idle jobs", timeout=90)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        client.close()
        cluster.close()
    assert max(seen) == 2, f"running jobs seen during the run: {sorted(set(seen))}"


# ---------------------------------------------------------------- GPUs (stand-ins: no GPU here)

def test_gpu_job_script_and_two_pinned_workers(slurm):
    """``gpus=2``: the script asks for ``--gres=gpu:2``; the job starts two single-threaded workers, one per GPU."""
    cluster = make_cluster(slurm, cores=2, gpus=2)
    try:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:2" in script and "#SBATCH --cpus-per-task=2" in script
        assert "--nworkers 2" in script and "--nthreads 1" in script
        assert "--preload patchworks.run._cluster" in script and "--resources GPU=1" in script
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(job_ids(client)) == 1 and sorted(client.nthreads().values()) == [1, 1]
            devices = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
            assert sorted(devices.values()) == ["0", "1"], devices  # SLURM gave "0,1"; each worker kept one
            info = client.scheduler_info()["workers"].values()
            assert all(w["resources"] == {"GPU": 1} for w in info)
    finally:
        cluster.close()
    slurm.wait_no_jobs()


# ---------------------------------------------------------------- a driver job killed and resubmitted

DRIVER = textwrap.dedent("""\
    import functools, sys
    from distributed import Client
    from patchworks import slurm_cluster, tile_process
    from _slurm_tiles import slow_label

    shared, memory, partition, prologue = sys.argv[1:5]
    image = shared + "/image.zarr"
    cluster = slurm_cluster(cores=1, memory=memory, walltime="00:10:00", queue=partition,
                            log_directory=shared + "/logs", job_script_prologue=[prologue],
                            scheduler_options={{"host": "127.0.0.1", "dashboard_address": ":0"}})
    cluster.scale(jobs=1)
    with Client(cluster) as client:
        fn = functools.partial(slow_label, delay={delay}, log=shared + "/calls.txt")
        tile_process(image, fn, tile_shape=8, client=client, write_to=shared + "/labels.zarr")
    cluster.close()
    print("done")
""")


def test_resume_after_the_whole_allocation_is_cancelled(slurm, tmp_path):
    """The driver runs as a SLURM job (as on a cluster); cancelling it and its worker job, then resubmitting it,
    finishes the run with only the tiles not yet staged computed again."""
    image = random_blobs((48, 48), seed=19)
    zarr.create_array(tmp_path / "image.zarr", data=image, chunks=(24, 24))
    prologue = f"export PYTHONPATH={TESTS}${{PYTHONPATH:+:$PYTHONPATH}}"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(delay=0.15))
    memory = slurm.job_memory()

    def submit():
        return slurm.sbatch(f"{prologue}; {sys.executable} {driver} {tmp_path} {memory} {slurm.partition} "
                            f"'{prologue}'", cores=1, memory=memory, output=tmp_path / "driver-%j.out")

    first = submit()
    wait_for(lambda: staged(tmp_path) >= 8, "8 of 36 tiles staged by the first allocation", timeout=120)
    slurm.scancel(*slurm.jobs())  # walltime, pre-emption, a node failure: every job of the run is gone
    slurm.wait_no_jobs()
    before = len(calls(tmp_path / "calls.txt"))
    kept = staged(tmp_path)
    assert 8 <= kept < 36 and before >= kept
    assert not (tmp_path / "labels.zarr").exists() or \
        not zarr.open_group(tmp_path / "labels.zarr", mode="r").attrs["patchworks"]["complete"]

    second = submit()
    wait_for(lambda: not slurm.jobs(), "the resubmitted run to finish", timeout=180, step=0.5)
    out = (tmp_path / f"driver-{second}.out").read_text()
    assert "done" in out, out + slurm.logs()
    after = len(calls(tmp_path / "calls.txt")) - before
    assert after <= 36 - kept + 1, f"{after} tiles recomputed, {kept} were staged: the run did not resume"
    labels = zarr.open_group(tmp_path / "labels.zarr", mode="r")  # the label image; level 0 at "0"
    assert labels.attrs["patchworks"]["complete"]
    assert_labels_equivalent(labels["0"][...], ndimage.label(image > 0.5)[0])
    assert not scratch_dirs(tmp_path), "nothing left behind after completion"
    assert first != second


def test_skip_reason_says_how_to_run(monkeypatch):
    import _slurm
    monkeypatch.delenv(_slurm.ENV_SWITCH, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _slurm.why_not() == "not running as root"
    monkeypatch.setenv(_slurm.ENV_SWITCH, "0")
    assert _slurm.why_not() == f"{_slurm.ENV_SWITCH}=0"
    assert "pytest -m slurm" in _slurm.HOW_TO_RUN and ".ci/run" in _slurm.HOW_TO_RUN
