"""Options users bring from upstream patchworks and other tools: understood, or refused naming ours."""

from __future__ import annotations

import difflib
import logging

import numpy as np

logger = logging.getLogger("patchworks")

# names other tiling tools use for what we call otherwise; an option given under such a name is
# refused with ours, instead of Python's bare "unexpected keyword argument"
_EQUIVALENTS = {
    "depth": "overlap= (halo per side; dask's map_overlap calls it depth)",
    "halo": "overlap= (halo per side)",
    "chunks": "tile_shape= (tile_shape=None takes the input's own chunks)",
    "tile_size": "tile_shape=",
    "tiles": "tile_shape=",
    "n_workers": "max_workers= (local threads), or make_local_cluster(n_workers=...) for worker processes",
    "num_workers": "max_workers= (local threads), or make_local_cluster(n_workers=...) for worker processes",
    "scheduler": "client= (a distributed.Client), or client=False for local threads",
    "verbose": "progress=True, or logging.getLogger('patchworks').setLevel('INFO')",
    "output": "write_to=",
    "out": "write_to=",
    "output_path": "write_to=",
    "store": "write_to=",
    "relabel": "sequential_labels=",
    "sequential": "sequential_labels=",
    "cleanup": "keep_stage= (cleanup=False is keep_stage=True)",
    "temp_dir": "stage_dir= (or scratch_dir=)",
    "tmp_dir": "stage_dir= (or scratch_dir=)",
    "tempdir": "stage_dir= (or scratch_dir=)",
    "device": "gpus=[...] (one worker per GPU), or use_gpu=True to size tiles by GPU memory",
    "gpu": "use_gpu=True (size tiles by GPU memory) or gpus=[...] (one worker per GPU)",
    "boundary": "nothing: windows are clipped at the image edge (map_overlap's boundary='none'), never padded",
    "trim": "nothing: every output voxel comes from its own tile's core",
}


def refuse_unknown(func: str, unknown: dict, known) -> None:
    """Raise TypeError for keyword arguments ``func`` does not take, naming our equivalent."""
    if not unknown:
        return
    name = next(iter(unknown))
    if name in _EQUIVALENTS:
        raise TypeError(f"{func}() has no option {name}={unknown[name]!r}; use {_EQUIVALENTS[name]}")
    close = difflib.get_close_matches(name, list(known), n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise TypeError(f"{func}() got an unexpected keyword argument {name!r}{hint}")


def stage_dir_option(scratch_dir, stage_dir):
    """``stage_dir`` (upstream's name) and ``scratch_dir`` are one option."""
    if stage_dir is None:
        return scratch_dir
    if scratch_dir is not None and str(scratch_dir) != str(stage_dir):
        raise ValueError(f"stage_dir={str(stage_dir)!r} and scratch_dir={str(scratch_dir)!r} were both given; "
                         "they are the same option, give one")
    return stage_dir


# Threads per core of a local run whose tiles wait on an object store's requests (input, output or scratch
# remote): the waits overlap the other threads' work. Measured on bench_remote's 512^3 run (2 cores, moto):
# remote time -10 % with 4 threads against 2 (medians of 3); memory per tile is shared by the threads.
REMOTE_THREADS_PER_CORE = 2


def remote_threads(max_workers, cluster, remote: bool) -> int | None:
    """The local threads of a run when ``max_workers`` is not given: more than the cores when it is ``remote``."""
    if max_workers is not None or cluster is not None or not remote:
        return None
    from ._resources import available_cores

    return REMOTE_THREADS_PER_CORE * available_cores()


def max_workers_option(max_workers, cluster) -> int | None:
    """Tiles processed at once on local threads; a cluster sizes itself (warned, as upstream skips it)."""
    if max_workers is None:
        return None
    if isinstance(max_workers, bool) or not isinstance(max_workers, (int, np.integer)) or max_workers < 1:
        raise ValueError(f"max_workers={max_workers!r}: use a positive int (tiles processed at once on local "
                         "threads), or None for one per available core")
    if cluster is not None:
        logger.warning("max_workers=%d is not used on a distributed client, which runs as many tiles as its "
                       "workers have threads; size the cluster instead (make_local_cluster(n_workers=%d)), or "
                       "pass client=False to run on %d local threads", max_workers, max_workers, max_workers)
        return None
    return int(max_workers)


def workers_text(cluster, max_workers, gpus=None) -> str:
    """Where a run's tiles go, in words (for a plan)."""
    if gpus is not None:
        return f"{len(gpus)} GPU worker process(es), one per device {', '.join(gpus)} (one tile each at a time)"
    if cluster is not None:
        info = cluster.scheduler_info()
        threads = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
        return f"distributed cluster {cluster.scheduler.address}: {len(info.get('workers', {}))} worker(s), " \
               f"{threads} thread(s)"
    from ._execute import local_threads
    return f"{max_workers or local_threads()} local thread(s)"
