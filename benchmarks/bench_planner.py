"""The planner alone (union-find over seam pairs, then the per-tile plans) on synthetic counts and pairs.

    python benchmarks/bench_planner.py                          # 1e5, 1e6, 1e7 tiles
    python benchmarks/bench_planner.py --tiles 1e3 --block-tiles 256   # a quick look (CI smoke size)

Each tile has 100 labels and 20 seam pairs with the next tile (random local
ids), the shape used in the scale issue. Two planners per size:

* ``single``: :func:`plan_relabel` in this process, on pairs made here
  (sizes above ``--single-max`` are skipped: at 1e7 tiles the pairs alone
  take 3.2 GB);
* ``reduce``: the tree reduction (``labels/_reduce.py``) on a
  ``LocalCluster`` of ``--workers`` processes, the pairs drawn on the
  workers, the answer left there (the driver never holds pairs nor
  boundary labels).

Printed per size: seconds, the driver's peak RSS above its start (for
``reduce`` it includes the scheduler, which lives in this process), the
largest worker's peak RSS (whole process), the tree depth and the object
count (both planners must agree).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import peak_rss  # noqa: E402  (the same RSS sampler as the scale benchmark)
from patchworks.labels import _reduce  # noqa: E402
from patchworks.labels._merge import plan_relabel  # noqa: E402

PER_TILE = 100


def single(n_tiles: int, block_tiles: int):
    counts, pairs = np.full(n_tiles, PER_TILE, np.uint64), _reduce.synthetic_pairs(n_tiles, block_tiles)

    def plan_and_one_lookup():
        plan = plan_relabel(counts, pairs, sequential=True)
        plan.tiles[n_tiles - 1].lookup(np.uint32)  # a plan is made on demand: take one
        return plan

    plan, seconds, mb = peak_rss(plan_and_one_lookup)
    return len(pairs), seconds, mb / 2**10, plan.n_objects


def _sample_rss(dask_worker):
    """In a worker: sample this process's RSS until asked (state on the worker: this function travels by value)."""
    proc, stop = psutil.Process(), threading.Event()
    state = dask_worker.patchworks_rss = {"peak": proc.memory_info().rss, "stop": stop}

    def loop():
        while not stop.is_set():
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True).start()


def _stop_sampling(dask_worker):
    dask_worker.patchworks_rss["stop"].set()
    return dask_worker.patchworks_rss["peak"]


def reduce(client, n_tiles: int, block_tiles: int, fanout: int):
    client.run(_sample_rss)
    reduced, seconds, mb = peak_rss(lambda: _reduce.reduce_synthetic(client, n_tiles, block_tiles=block_tiles,
                                                                        fanout=fanout))
    worker_peak = max(client.run(_stop_sampling).values())
    n_objects = n_tiles * PER_TILE - int(reduced.n_absorbed.sum())
    depth = reduced.depth
    del reduced
    return seconds, mb / 2**10, worker_peak / 2**30, depth, n_objects


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", default="1e5,1e6,1e7", help="comma list of tile counts (default 1e5,1e6,1e7)")
    ap.add_argument("--single-max", type=float, default=3e6, help="largest size for the single-process planner")
    ap.add_argument("--block-tiles", type=int, default=_reduce.BLOCK_TILES, help="tiles per leaf block")
    ap.add_argument("--fanout", type=int, default=_reduce.FANOUT, help="children per node of the tree")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (one thread each)")
    ap.add_argument("--worker-memory", default="6GiB", help="memory limit per worker")
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    print(f"{'tiles':>9} {'pairs':>10} | {'single s':>8} {'+GiB':>5} | {'reduce s':>8} {'driver+GiB':>10} "
          f"{'worker GiB':>10} {'depth':>5} | {'objects':>11}", flush=True)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=args.worker_memory) as cluster, Client(cluster) as client:
        for text in args.tiles.split(","):
            n = int(float(text))
            n_pairs = (n - 1) * 20
            s_sec = s_gib = s_obj = None
            if n <= args.single_max:
                n_pairs, s_sec, s_gib, s_obj = single(n, args.block_tiles)
            r_sec, r_gib, w_gib, depth, r_obj = reduce(client, n, args.block_tiles, args.fanout)
            if s_obj is not None and s_obj != r_obj:
                raise SystemExit(f"the planners disagree at {n} tiles: {s_obj} vs {r_obj} objects")
            single_cols = f"{s_sec:>8.2f} {s_gib:>5.2f}" if s_sec is not None else f"{'skipped':>8} {'':>5}"
            print(f"{n:>9} {n_pairs:>10} | {single_cols} | {r_sec:>8.2f} {r_gib:>10.2f} {w_gib:>10.2f} "
                  f"{depth:>5} | {r_obj:>11}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
