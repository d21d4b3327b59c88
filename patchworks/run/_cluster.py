"""Dask clusters sized to this process's budget, and a guard against clients that would hang.

Everything here is Dask's own machinery (``LocalCluster``, ``SpecCluster``
with per-worker ``Nanny(env=...)``, dask-cuda's ``LocalCUDACluster``,
dask-jobqueue's ``SLURMCluster``); patchworks only chooses the sizes: one
tile per worker thread, memory split evenly, one worker per GPU.
"""

from __future__ import annotations

import logging
import os

from ._resources import resource_budget, visible_gpus

logger = logging.getLogger("patchworks")

_HPC_EXTRA = 'pip install "patchworks[hpc]"'


def _positive_int(value, name: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: {fix}")
    return value


def _gpu_worker_specs(devices, *, memory_limit, host="127.0.0.1") -> dict:
    """``SpecCluster`` worker specs: one single-threaded nanny per device, that device only visible."""
    from distributed import Nanny
    return {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "memory_limit": memory_limit,
                "env": {"CUDA_VISIBLE_DEVICES": str(device)},
                "resources": {"GPU": 1},
                "host": host,
            },
        }
        for i, device in enumerate(devices)
    }


def gpu_devices(gpus, *, env=None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries that ``gpus=`` names: one worker per entry.

    ``gpus`` is an int (the first N visible GPUs) or a sequence of device
    indices / ``GPU-`` / ``MIG-`` UUIDs as ``nvidia-smi -L`` lists them.
    When ``CUDA_VISIBLE_DEVICES`` is set, only its entries may be listed (a
    SLURM job must not use a GPU it was not given).

    Examples
    --------
    >>> gpu_devices([0, 1], env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
    ['0', '1']
    >>> gpu_devices(2, env={"CUDA_VISIBLE_DEVICES": "3,1,2"})
    ['3', '1']
    """
    env = os.environ if env is None else env
    if isinstance(gpus, bool) or gpus is None:
        raise TypeError(f"gpus={gpus!r}: give the number of GPUs or a list of devices, e.g. gpus=[0, 1]")
    try:
        visible = visible_gpus(env=env)
    except (ImportError, RuntimeError):  # no NVML to ask: take the listed devices as they are
        visible = None
    if isinstance(gpus, int):
        if gpus < 1:
            raise ValueError(f"gpus={gpus}: give a positive number of GPUs, or a list of devices")
        if visible is None:
            return [str(i) for i in range(gpus)]
        if gpus > len(visible):
            raise ValueError(f"gpus={gpus}: only {len(visible)} GPU(s) are visible ({visible}); use gpus<={len(visible)}")
        return visible[:gpus]
    if isinstance(gpus, str):
        gpus = [g for g in gpus.split(",") if g.strip()]
    devices = [str(g).strip() for g in gpus]
    if not devices or len(set(devices)) != len(devices):
        raise ValueError(f"gpus={gpus!r}: list distinct devices, e.g. gpus=[0, 1]")
    if visible is not None and "CUDA_VISIBLE_DEVICES" in env:
        hidden = [d for d in devices if d not in visible]
        if hidden:
            raise ValueError(f"gpus={gpus!r}: {hidden} not visible to this process (CUDA_VISIBLE_DEVICES="
                             f"{env['CUDA_VISIBLE_DEVICES']!r}); list entries of it, e.g. gpus={visible[:len(devices)]}")
    return devices


def make_local_cluster(*, use_gpu=False, n_workers=None, threads_per_worker=1, memory_limit=None, gpus=None,
                       **kwargs):
    """Start a cluster of worker processes on this machine sized to this process's budget.

    CPU: ``n_workers = available cores // threads_per_worker`` single-tile
    threads, each worker getting an equal share of the memory available to
    *this process* (cgroup / SLURM limits included, see
    :func:`resource_budget`) rather than the whole node's RAM.

    GPU (``use_gpu=True``): one worker process per visible GPU, each running
    one tile at a time; dask-cuda's ``LocalCUDACluster`` when installed,
    otherwise a ``distributed.SpecCluster`` of nannies whose
    ``CUDA_VISIBLE_DEVICES`` is that worker's device alone. Workers carry the
    resource ``{"GPU": 1}``.

    Parameters
    ----------
    use_gpu : bool, default False
        One worker per visible GPU instead of one per core.
    n_workers : int, optional
        Number of workers (with ``use_gpu``, the first ``n_workers`` GPUs).
    threads_per_worker : int, default 1
        Tiles each worker runs at once (CPU only; GPU workers run one).
    memory_limit : int or str, optional
        Per-worker memory limit; default the process's memory / n_workers.
    gpus : int or sequence, optional
        One worker per listed GPU (implies ``use_gpu``): an int for the
        first N visible GPUs, or device indices / UUIDs, e.g. ``[0, 2]``;
        see :func:`gpu_devices`.
    **kwargs
        Passed on to ``LocalCluster`` / ``LocalCUDACluster`` (e.g.
        ``dashboard_address``, ``processes``); for the GPU fallback, only
        ``dashboard_address``, ``silence_logs`` and ``name`` are used.

    Returns
    -------
    client : distributed.Client
    cluster : distributed.deploy.Cluster
        Close both when done (``client.close(); cluster.close()``).

    Raises
    ------
    RuntimeError
        ``use_gpu=True`` and no GPU is visible.

    Examples
    --------
    >>> client, cluster = make_local_cluster(n_workers=1, processes=False,
    ...                                      dashboard_address=":0")
    >>> client.submit(sum, [1, 2]).result()
    3
    >>> client.close(); cluster.close()
    """
    from distributed import Client, LocalCluster

    threads_per_worker = _positive_int(threads_per_worker, "threads_per_worker",
                                       "use a positive int (tiles each worker runs at once)")
    if n_workers is not None:
        _positive_int(n_workers, "n_workers", "use a positive int, or None for one per core (per GPU)")
    budget = resource_budget()
    if gpus is not None:
        if n_workers is not None:
            raise ValueError(f"n_workers={n_workers} and gpus={gpus!r} were both given; gpus= starts one worker "
                             "per listed GPU, so give only gpus=")
        use_gpu, devices = True, gpu_devices(gpus)
    elif use_gpu:
        devices = visible_gpus()
    if use_gpu:
        if not devices:
            raise RuntimeError(
                "make_local_cluster(use_gpu=True): no GPU is visible to this process "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check `nvidia-smi`, "
                "unset or fix CUDA_VISIBLE_DEVICES, or use make_local_cluster(use_gpu=False)")
        if n_workers is not None:
            if n_workers > len(devices):
                raise ValueError(f"n_workers={n_workers}: only {len(devices)} GPU(s) are visible ({devices}); "
                                 f"use n_workers<={len(devices)} or None")
            devices = devices[:n_workers]
        n = len(devices)
        if memory_limit is None:
            memory_limit = budget.memory_bytes // n
        logger.info("starting %d GPU worker(s) on devices %s, memory_limit=%s each", n, devices, memory_limit)
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=devices, n_workers=n, threads_per_worker=1,
                                       memory_limit=memory_limit, **kwargs)
        else:
            from distributed import Scheduler, SpecCluster
            scheduler = {"cls": Scheduler, "options": {
                "host": "127.0.0.1", "dashboard_address": kwargs.pop("dashboard_address", ":0")}}
            options = {k: kwargs[k] for k in ("silence_logs", "name") if k in kwargs}
            cluster = SpecCluster(workers=_gpu_worker_specs(devices, memory_limit=memory_limit),
                                  scheduler=scheduler, **options)
    else:
        n = n_workers if n_workers is not None else max(1, budget.cores // threads_per_worker)
        if memory_limit is None:
            memory_limit = budget.memory_bytes // n
        logger.info("starting %d worker(s) x %d thread(s), memory_limit=%s each (%s)",
                    n, threads_per_worker, memory_limit, "; ".join(budget.notes))
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                               **kwargs)
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def slurm_cluster(*, cores, memory, walltime, queue=None, gpus=0, threads_per_worker=1,
                  job_extra_directives=(), **kwargs):
    """A dask-jobqueue ``SLURMCluster`` whose jobs are sized for tile-by-tile work.

    Each SLURM job books ``cores`` CPUs and ``memory`` and runs
    ``cores // threads_per_worker`` worker processes (one tile per thread,
    memory split evenly), like :func:`make_local_cluster`. With ``gpus=N``
    the job asks for ``--gres=gpu:N`` and runs N single-threaded worker
    processes, one per GPU: each pins itself to its own GPU at start-up
    (``--preload patchworks.run._cluster``, see :func:`dask_setup`). No job is
    submitted until you call ``cluster.scale(jobs=...)`` or
    ``cluster.adapt(...)``.

    Parameters
    ----------
    cores : int
        CPUs per job (``#SBATCH --cpus-per-task``).
    memory : str
        Memory per job, e.g. ``"64GB"`` (``#SBATCH --mem``).
    walltime : str
        Time limit per job, e.g. ``"02:00:00"`` (``#SBATCH -t``).
    queue : str, optional
        Partition (``#SBATCH -p``).
    gpus : int, default 0
        GPUs per job (``#SBATCH --gres=gpu:N``); one worker per GPU.
    threads_per_worker : int, default 1
        Tiles each CPU worker runs at once.
    job_extra_directives : sequence of str
        More ``#SBATCH`` options, e.g. ``["--account=lab", "--constraint=a100"]``.
    **kwargs
        Passed on to ``dask_jobqueue.SLURMCluster`` (``interface``,
        ``log_directory``, ``job_script_prologue``, ``local_directory``, ...).

    Returns
    -------
    dask_jobqueue.SLURMCluster

    Examples
    --------
    >>> cluster = slurm_cluster(cores=8, memory="32GB", walltime="01:00:00")  # doctest: +SKIP
    >>> cluster.scale(jobs=4)                                                 # doctest: +SKIP
    >>> client = Client(cluster)                                              # doctest: +SKIP
    >>> tile_process(image, fn, client=client, write_to="out.zarr")           # doctest: +SKIP
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ImportError(f"slurm_cluster needs dask-jobqueue; install it with {_HPC_EXTRA}") from exc
    cores = _positive_int(cores, "cores", "give the CPUs per SLURM job as a positive int")
    threads_per_worker = _positive_int(threads_per_worker, "threads_per_worker", "use a positive int")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus={gpus!r}: give the GPUs per job as an int >= 0")
    if isinstance(job_extra_directives, str):
        raise TypeError(f"job_extra_directives={job_extra_directives!r}: give a list of strings, "
                        "e.g. ['--account=lab']")
    directives = list(job_extra_directives)
    extra_args = list(kwargs.pop("worker_extra_args", None) or [])
    if gpus:
        if gpus > cores:
            raise ValueError(f"gpus={gpus} > cores={cores}: each GPU worker needs a core; raise cores")
        directives.append(f"--gres=gpu:{gpus}")
        extra_args += ["--preload", __name__, "--resources", "GPU=1"]
        # dask sees `gpus` single-threaded workers; SLURM still books all `cores`
        options = dict(cores=gpus, processes=gpus, job_cpu=cores)
    else:
        if threads_per_worker > cores:
            raise ValueError(f"threads_per_worker={threads_per_worker} > cores={cores}: lower it or raise cores")
        options = dict(cores=cores, processes=cores // threads_per_worker)
        if cores % threads_per_worker:
            options.update(cores=options["processes"] * threads_per_worker, job_cpu=cores)
    return SLURMCluster(memory=memory, walltime=walltime, queue=queue, job_extra_directives=directives,
                        worker_extra_args=extra_args, **options, **kwargs)


def dask_setup(worker) -> None:
    """Worker preload hook: pin a GPU worker of a multi-GPU SLURM job to one GPU.

    ``dask worker --nworkers N --name job`` names its processes ``job-0`` …
    ``job-{N-1}``; worker ``i`` keeps entry ``i`` of the job's
    ``CUDA_VISIBLE_DEVICES`` (set by SLURM for ``--gres=gpu:N``; indices
    ``0..N-1`` when unset). It runs at worker start-up, before any task can
    initialise CUDA. Used by :func:`slurm_cluster` through
    ``--preload patchworks.run._cluster``.
    """
    name = str(getattr(worker, "name", ""))
    suffix = name.rsplit("-", 1)[-1]
    if not suffix.isdigit():
        return
    i = int(suffix)
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    device = devices[i % len(devices)] if devices else str(i)
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    logger.info("worker %s pinned to GPU %s", name, device)


def _in_process_workers(cluster) -> list:
    from distributed import Worker
    workers = getattr(cluster, "workers", None) or {}
    return [w for w in workers.values() if isinstance(w, Worker)]


def check_client(client, *, shared_paths=()) -> None:
    """Fail early, with the fix, for a client that would hang or lose a tile run's work.

    ``tile_process`` is a synchronous two-phase pipeline driven from the
    calling thread: it computes the staging tasks, *gathers* their small
    results, plans the relabel, then computes the relabel tasks. What can go
    wrong is therefore where the *driver* runs and whether the workers can
    run at all:

    * **inside a task on a worker** (``distributed.get_worker()`` works and
      the thread has not seceded): the driver would block one of the worker's
      threads waiting for other tasks; with one thread per worker (our
      default) and every worker doing the same, nothing is left to run them:
      deadlock. Fix: call it from the client side, or inside
      ``distributed.worker_client()``, which secedes the thread (allowed).
    * **an asynchronous client**, or the client's own event-loop thread: the
      blocking calls would return un-awaited coroutines (results lost) or
      block the loop the results arrive on. Fix: a synchronous ``Client``, or
      ``await loop.run_in_executor(None, lambda: tile_process(...))``.
    * **a closed or not yet started client**: nothing would run.
    * **no workers and none coming** (a ``SLURMCluster`` never scaled, a
      cluster with ``n_workers=0`` and no ``adapt``): it would wait forever.
      Fix: ``cluster.scale(...)`` or ``cluster.adapt(...)``.
    * **in-process workers** (``LocalCluster(processes=False)``) with a
      memory limit: each one measures the *whole process's* memory, driver
      included. When the driver already holds more than the pause threshold
      (``distributed.worker.memory.pause`` × ``memory_limit``), e.g. because
      it keeps the image in RAM, every worker pauses and the run never ends.
      Fix: ``processes=True``, ``memory_limit=0`` or a larger limit.
    * **workers that cannot see** ``shared_paths`` (the output and staging
      directories): staging would write tiles the relabel phase on another
      host cannot read. Fix: put them on a file system shared with the
      workers.

    Not an error: an in-process cluster with one single-threaded worker. The
    driver is not a worker thread, so gathering the stage results and then
    submitting the relabel tasks never waits on a busy slot; it is only
    slow for GIL-bound tile functions.

    Parameters
    ----------
    client : distributed.Client
    shared_paths : sequence of str or Path, optional
        Directories every worker must see (checked with ``client.run``).

    Raises
    ------
    RuntimeError
        One of the cases above, naming what is wrong and what to do.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=":0")
    >>> client = Client(cluster)
    >>> check_client(client)  # fine: returns None
    >>> client.close(); cluster.close()
    >>> check_client(client)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: the dask client is closed...
    """
    import asyncio

    import psutil
    from distributed import get_worker
    from distributed.threadpoolexecutor import thread_state

    try:
        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None and getattr(thread_state, "proceed", True):
        raise RuntimeError(
            f"tile_process was called from inside a dask task on worker {worker.address}; it would block "
            "this worker thread waiting for its own tile tasks and can deadlock the cluster. Call it from the "
            "client side, or inside `with distributed.worker_client() as client:` (which frees the thread)")
    if getattr(client, "asynchronous", False):
        raise RuntimeError(
            "the dask client is asynchronous (asynchronous=True); tile_process blocks until its tiles are done "
            "and cannot await. Use a synchronous Client, or run it in a thread: "
            "`await loop.run_in_executor(None, lambda: tile_process(...))`")
    status = str(getattr(client, "status", "running"))
    if status != "running":
        raise RuntimeError(
            f"the dask client is {status} (not running); nothing would run the tiles. Create a new "
            "distributed.Client(...) and pass it as client=, or client=False to run on threads")
    loop = getattr(getattr(client, "loop", None), "asyncio_loop", None)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and running is loop:
        raise RuntimeError(
            "tile_process was called from the dask client's own event-loop thread; blocking it would stop the "
            "results from arriving. Run it from another thread, e.g. loop.run_in_executor(None, ...)")

    cluster = getattr(client, "cluster", None)
    n_threads = client.nthreads()
    if not n_threads:
        adaptive = getattr(cluster, "_adaptive", None) is not None
        pending = bool(getattr(cluster, "worker_spec", None))
        if cluster is not None and not adaptive and not pending:
            raise RuntimeError(
                f"the dask cluster {type(cluster).__name__} has no workers and none are requested; "
                "tile_process would wait forever. Start some with cluster.scale(n) "
                "(SLURM: cluster.scale(jobs=n)) or cluster.adapt(minimum=1, maximum=n)")
        logger.warning("the dask cluster has no workers yet; tile_process will wait for them")

    pause = None
    for w in _in_process_workers(cluster):
        memory = getattr(w, "memory_manager", None)
        limit = getattr(memory, "memory_limit", None)
        fraction = getattr(memory, "memory_pause_fraction", False)
        if limit and fraction:
            pause = min(pause or limit * fraction, limit * fraction)
    if pause is not None:
        rss = psutil.Process().memory_info().rss
        if rss >= pause:
            raise RuntimeError(
                f"the dask workers run inside this process (LocalCluster(processes=False)) and count its whole "
                f"memory, {rss / 2**20:.0f} MiB, which is already past their pause threshold "
                f"({pause / 2**20:.0f} MiB = distributed.worker.memory.pause x memory_limit); they would pause "
                "and tile_process would wait forever. Use processes=True, memory_limit=0, or a larger "
                "memory_limit")
        if rss >= pause / 2:
            logger.warning("in-process dask workers pause at %.0f MiB of this process's memory and it already "
                           "uses %.0f MiB; the run may stall if the driver grows. Prefer processes=True",
                           pause / 2**20, rss / 2**20)

    paths = [os.fspath(p) for p in shared_paths]
    if paths and n_threads:
        def _missing(paths=paths):
            return [p for p in paths if not os.path.isdir(p)]
        missing = {addr: m for addr, m in client.run(_missing).items() if m}
        if missing:
            addr, m = next(iter(missing.items()))
            raise RuntimeError(
                f"{len(missing)} dask worker(s) cannot see {m} (e.g. worker {addr}); tiles staged there "
                "could not be read back for the merge. Put write_to and scratch_dir on a file system shared "
                "with the workers")


__all__ = ["check_client", "gpu_devices", "make_local_cluster", "slurm_cluster"]
