"""Scale benchmark: a 10^4-tile run, threads against a 2-worker LocalCluster; and a tile-count sweep.

    python benchmarks/bench_scale.py            # 51200^2 sparse image, 512^2 tiles (10^4 tiles)
    python benchmarks/bench_scale.py --smoke    # 4096^2, 256^2 tiles (CI)
    python benchmarks/bench_scale.py --tiles 1e3,1e4,6.5e4,2.6e5   # 32^2 tiles, numpy in, compute=True
    python benchmarks/bench_scale.py --tiles 1e3,6.5e4 --stitch iou  # the same with IoU stitching, overlap 4

The sweep runs ``threshold`` on threads over a sparse uint8 numpy image of
about N tiles of 32^2 and prints per size: tiles/s end to end, the graph
build on the driver (task lists + union-find plan), tiles per CPU second of
this process (steadier than wall time on a shared machine), the number of
tasks of all phases and of the largest phase (then the tasks of each phase),
the driver's peak RSS above its baseline less the returned array
(which ``compute=True`` must hold: 4 bytes per voxel), and that per tile.

The image is sparse (blobs in a few percent of the tiles, many of them
crossing seams), stored as a uint8 zarr v3 array whose empty chunks are never
written. Printed per scheduler: tiles/s, wall time per phase, the graph build
(task lists + union-find plan on the driver; target < 1 s) and the driver's
peak RSS above its start, with the number of boundary labels that bounds the
driver's memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import patchworks  # noqa: E402
import patchworks.labels._process as labels_module  # noqa: E402
import patchworks.labels._table_merge as table_module  # noqa: E402
from patchworks.testing import random_blobs  # noqa: E402


def make_input(path: Path, size: int, tile: int, occupied: float, seed: int = 0) -> None:
    """Blobs in a random ``occupied`` fraction of 2x2-tile windows, centred on tile corners."""
    arr = zarr.create_array(store=path, shape=(size, size), chunks=(tile, tile), dtype=np.uint8,
                            overwrite=True)
    rng = np.random.default_rng(seed)
    n_tiles = size // tile
    corners = [(i, j) for i in range(1, n_tiles) for j in range(1, n_tiles) if rng.random() < occupied]
    patch = (random_blobs((tile, tile), density=0.3, sigma=tile / 40, seed=seed) * 255).astype(np.uint8)
    for i, j in corners:  # a tile-sized patch centred on a tile corner: its blobs cross both seams
        y, x = i * tile - tile // 2, j * tile - tile // 2
        arr[y:y + tile, x:x + tile] = patch
    return len(corners)


def sparse_image(n_tiles: int, tile: int, occupied: float = 0.03, seed: int = 0) -> np.ndarray:
    """A square uint8 image of about ``n_tiles`` tiles of ``tile``^2, blob patches on a fraction of tile corners."""
    side = max(1, int(round(np.sqrt(n_tiles))))
    img = np.zeros((side * tile, side * tile), np.uint8)
    rng = np.random.default_rng(seed)
    patch = (random_blobs((tile, tile), density=0.3, sigma=2.0, seed=seed) * 255).astype(np.uint8)
    ii, jj = np.nonzero(rng.random((side - 1, side - 1)) < occupied)
    for i, j in zip(ii + 1, jj + 1):  # centred on a tile corner: its blobs cross both seams
        y, x = i * tile - tile // 2, j * tile - tile // 2
        img[y:y + tile, x:x + tile] = patch
    return img


class GraphClock:
    """Driver-side graph work (task lists and plan) and the tasks of each phase, by wrapping the pipeline's hooks."""

    _MODULES = (labels_module, table_module)

    def __init__(self):
        self.seconds, self.phases = 0.0, {}
        self._hooks = [(m, name, getattr(m, name)) for m in self._MODULES
                       for name in ("graph_tasks", "plan_relabel", "run_tasks") if hasattr(m, name)]

    @property
    def tasks(self) -> int:
        return sum(self.phases.values())

    def __enter__(self):
        def timed(f):
            def inner(*a, **kw):
                t = time.perf_counter()
                try:
                    return f(*a, **kw)
                finally:
                    self.seconds += time.perf_counter() - t
            return inner

        def counted(f):
            def run_tasks(tasks, **kw):
                keys = tasks[1] if isinstance(tasks, tuple) else [t.key for t in tasks]
                if keys:  # patchworks-<phase>-<token>-...: the phase's name
                    key = keys[0] if isinstance(keys[0], str) else keys[0][0]
                    parts = key.split("-")
                    phase = parts[1] + (f" {parts[3]}" if parts[1] == "pyramid" and len(parts) > 4 else "")
                    self.phases[phase] = self.phases.get(phase, 0) + len(keys)
                return f(tasks, **kw)
            return run_tasks

        for m, name, f in self._hooks:
            setattr(m, name, counted(f) if name == "run_tasks" else timed(f))
        return self

    def __exit__(self, *exc):
        for m, name, f in self._hooks:
            setattr(m, name, f)


def sweep(sizes, tile: int = 32, stitch: str = "touch", overlap: int = 0) -> None:
    """End-to-end runs at each tile count (see the module docstring)."""
    print(f"patchworks scale sweep: {tile}^2 tiles, threshold, stitch={stitch!r}, overlap={overlap}, threads, "
          f"compute=True, sparse uint8 numpy image; {os.cpu_count()} cores", flush=True)
    print(f"{'tiles':>8s} {'tiles/s':>8s} {'total s':>8s} {'tiles/cpu-s':>9s} {'graph s':>8s} {'tasks':>7s} "
          f"{'max/phase':>9s} {'driver MB':>9s} {'B/tile':>7s} {'objects':>8s}  tasks per phase")
    for n in sizes:
        img = sparse_image(n, tile)
        n_tiles = (img.shape[0] // tile) ** 2
        cpu = sum(psutil.Process().cpu_times()[:2])
        with GraphClock() as clock:
            (labels, count), seconds, rss = peak_rss(lambda: patchworks.tile_process(
                img, patchworks.threshold(127.5), tile_shape=tile, overlap=overlap, stitch=stitch, compute=True,
                progress=False, return_count=True, client=False))
        cpu = sum(psutil.Process().cpu_times()[:2]) - cpu  # a shared machine: CPU seconds drift less than wall
        driver = rss - labels.nbytes / 2**20  # the returned labels are the caller's, not overhead
        phases = " ".join(f"{k}={v}" for k, v in clock.phases.items())
        print(f"{n_tiles:8d} {n_tiles / seconds:8.0f} {seconds:8.2f} {n_tiles / cpu:9.0f} {clock.seconds:8.3f} "
              f"{clock.tasks:7d} {max(clock.phases.values(), default=0):9d} {driver:9.1f} "
              f"{driver * 2**20 / n_tiles:7.0f} {count:8d}  {phases}", flush=True)
        del labels, img


class PhaseClock:
    """Wall time of each pipeline phase and of the driver's plan, by wrapping the library's hooks."""

    def __init__(self):
        self.phases, self.plan_seconds, self.boundary = {}, 0.0, 0
        self._run, self._plan = labels_module.run_tasks, labels_module.plan_relabel

    def __enter__(self):
        def run_tasks(tasks, **kw):
            t = time.perf_counter()
            out = self._run(tasks, **kw)
            self.phases[kw.get("desc", "seams")] = time.perf_counter() - t
            return out

        def plan_relabel(*a, **kw):
            t = time.perf_counter()
            plan = self._plan(*a, **kw)
            self.plan_seconds = time.perf_counter() - t
            self.boundary = plan.n_boundary_labels
            return plan

        labels_module.run_tasks, labels_module.plan_relabel = run_tasks, plan_relabel
        return self

    def __exit__(self, *exc):
        labels_module.run_tasks, labels_module.plan_relabel = self._run, self._plan


def peak_rss(fn, *, children: bool = False, above_start: bool = True):
    """Run ``fn`` and return (result, seconds, peak RSS in MB).

    The RSS is this process's (plus its children's with ``children=True``, e.g. a cluster's
    workers), sampled every 20 ms, above its value at the start unless ``above_start=False``.
    """
    proc = psutil.Process()

    def rss():
        total = proc.memory_info().rss
        for child in proc.children(recursive=True) if children else ():
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a worker that ended meanwhile
                pass
        return total

    base = rss()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t
        stop.set()
        thread.join()
    return result, seconds, (peak[0] - (base if above_start else 0)) / 2**20


def graph_build_seconds(path, tile) -> float:
    """Time to build the stage graph for every tile, as the pipeline does (one task per tile)."""
    from patchworks.run._execute import graph_tasks
    from patchworks.labels._tile_task import stage_tile

    source = patchworks.open_image(str(path))
    grid = patchworks.TileGrid(source.shape, tile)
    t = time.perf_counter()
    graph_tasks("stage", stage_tile, object(), [(i,) for i in range(grid.n_tiles)])
    return time.perf_counter() - t


def run_case(label, path, out, tile, client):
    with PhaseClock() as clock:
        (_, n), seconds, rss = peak_rss(lambda: patchworks.tile_process(
            str(path), patchworks.threshold(127.5), tile_shape=tile, write_to=out, overwrite=True,
            skip_empty=True, empty_threshold=0, client=client, progress=False, return_count=True))
    return dict(label=label, seconds=seconds, n=n, rss=rss, phases=clock.phases, plan=clock.plan_seconds,
                boundary=clock.boundary)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny size for CI")
    ap.add_argument("--no-cluster", action="store_true", help="threads only")
    ap.add_argument("--tiles", help="comma-separated tile counts for the 32^2-tile sweep, e.g. 1e3,1e4,6.5e4")
    ap.add_argument("--stitch", choices=("touch", "iou"), default="touch", help="the sweep's stitch (iou: overlap 4)")
    ap.add_argument("--overlap", type=int, default=None, help="the sweep's overlap (default 0 touch, 4 iou)")
    args = ap.parse_args(argv)
    if args.tiles:
        overlap = args.overlap if args.overlap is not None else (4 if args.stitch == "iou" else 0)
        sweep([int(float(v)) for v in args.tiles.split(",")], stitch=args.stitch, overlap=overlap)
        return 0
    size, tile, occupied = (4096, 256, 0.1) if args.smoke else (51200, 512, 0.03)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    path = work / "input.zarr"
    t = time.perf_counter()
    n_blobs = make_input(path, size, tile, occupied)
    n_tiles = (size // tile) ** 2
    print(f"patchworks scale benchmark: {size}^2 uint8, {tile}^2 tiles = {n_tiles} tiles, blob patches on "
          f"{n_blobs} tile corners; input written in {time.perf_counter() - t:.1f} s (not timed); "
          f"{os.cpu_count()} cores", flush=True)
    build = graph_build_seconds(path, tile)
    rows = [run_case("threads", path, work / "threads.zarr", tile, False)]
    if not args.no_cluster:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            rows.append(run_case("LocalCluster 2x1", path, work / "cluster.zarr", tile, client))
        a = zarr.open_array(work / "threads.zarr" / "0", mode="r")  # level 0 of each label image
        b = zarr.open_array(work / "cluster.zarr" / "0", mode="r")
        same = all(np.array_equal(a[i:i + 4096], b[i:i + 4096]) for i in range(0, size, 4096))
    print()
    print(f"{'scheduler':18s} {'tiles/s':>8s} {'total s':>8s} {'stage s':>8s} {'seams s':>8s} {'relabel s':>9s} "
          f"{'plan s':>7s} {'objects':>8s} {'boundary':>9s} {'driver MB':>9s}")
    for r in rows:
        ph = r["phases"]
        print(f"{r['label']:18s} {n_tiles / r['seconds']:8.0f} {r['seconds']:8.2f} "
              f"{ph.get('staging tiles', 0):8.2f} {ph.get('seams', 0):8.2f} {sum(v for k, v in ph.items() if k.startswith('relabel')):9.2f} "
              f"{r['plan']:7.3f} {r['n']:8d} {r['boundary']:9d} {r['rss']:9.0f}")
    graph = build + rows[0]["plan"]
    print()
    print(f"graph build (task list for {n_tiles} tiles {build:.3f} s + union-find plan {rows[0]['plan']:.3f} s) "
          f"= {graph:.3f} s   target < 1 s   {'PASS' if graph < 1 else 'MISS'}")
    if len(rows) > 1:
        print(f"cluster / threads wall time = {rows[1]['seconds'] / rows[0]['seconds']:.2f}; "
              f"identical labels: {'yes' if same else 'NO'}")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
