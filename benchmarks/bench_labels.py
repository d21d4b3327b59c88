"""Benchmark of ``patchworks.tile_process`` labelling against a no-merge floor and whole-image cc3d.

Run from the repository root::

    python benchmarks/bench_labels.py            # full: 256^3 / 512^3 (128^3 tiles), 8192^2 / 16384^2 (512^2 tiles)
    python benchmarks/bench_labels.py --smoke    # tiny sizes, a few seconds (CI)

For every case it writes a smooth random blob image (uint8 zarr v3, chunks =
tiles) to a temporary directory, outside all timings, then runs each timed job
in a fresh subprocess of this script while this process samples the child's
resident memory (process + children, every ~20 ms):

* floor       -- the tile function on every tile and its raw output written, no
                 merge: dask delayed, one task per tile, threaded scheduler,
                 output made with ``patchworks.create_output`` (same codec).
* end-to-end  -- ``patchworks.tile_process(path, threshold(T), tile_shape=..., write_to=out)``;
                 its phases (stage / seams / plan / relabel) are timed by wrapping the
                 library's internal calls in the worker process only.
* whole       -- ``cc3d.connected_components(vol > T)`` on the image loaded in memory
                 (load not timed); afterwards, untimed, the tiled output is checked to
                 be the same partition (``patchworks.testing.assert_labels_equivalent``).
* phases      -- one extra, untimed-for-the-table run with per-operation wrappers that
                 sums task-seconds (over both worker threads) per operation.

``--pyramid`` adds the cost of the OME-NGFF pyramid (a second table): labels
alone (``output_format="array"``), the label image with its pyramid written
from each final tile (the default, zarr v3 sharded, and unsharded), and
"labels first, pyramid afterwards": the bare array, then every level
subsampled from level 0 read back (dask, the same codec), the way a
separate pyramid step (upstream patchworks, ome-zarr-py) builds it.

Times are the best of N repeats; peak memory is the largest over the repeats,
minus the child's RSS at the moment its timed section starts.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil

_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("patchworks") is None and (_ROOT / "patchworks").is_dir():
    sys.path.insert(0, str(_ROOT))  # run from a checkout without installing (PYTHONPATH wins)

HEADER = ("case", "fn", "image", "tile", "tiles", "objects", "floor s", "e2e s", "overhead", "labels s", "overhead",
          "whole fn s", "whole+io s", "cores", "tiled/whole+io", "labels/whole+io", "peak MB", "whole peak MB", "equal")

# targets (DESIGN.md section 6)
OVERHEAD_TARGET = 0.25      # (e2e - floor) / floor, for a cheap tile function
TILED_WHOLE_TARGET = 0.75   # e2e / whole+io: the whole-image pass uses one core, we have two
PEAK_GROWTH_TARGET = 1.5    # peak(large) / peak(small): memory must not follow the volume

THRESHOLD = 127.5           # the uint8 images put the blob cut at 127.5


class SmoothThreshold:
    """A less trivial tile function (``--fn smooth``): Gaussian smoothing, then threshold + cc3d.

    Shows the merge's fixed cost against a tile function that does some real
    work, as any segmenter does. Not compared with whole-image cc3d.
    """

    connectivity = 1

    def __init__(self, sigma: float = 2.0):
        self.sigma = sigma

    def __call__(self, tile):
        from scipy import ndimage

        from patchworks import label_components

        return label_components(ndimage.gaussian_filter(tile.astype(np.float32), self.sigma) > THRESHOLD)


class ScipyLabel:
    """``--fn scipy``: ``scipy.ndimage.label`` of the binary mask ``tile > 127.5`` (face connectivity).

    The tile function of the issue's "whole image vs tiled" comparison; unlike
    cc3d, scipy's labelling lets other threads run meanwhile.
    """

    connectivity = 1

    def __call__(self, tile):
        from scipy import ndimage

        return ndimage.label(np.asarray(tile) > THRESHOLD, output=np.uint32)[0]


FNS = ("threshold", "scipy", "smooth")


def make_fn(kind: str):
    from patchworks import threshold

    if kind == "smooth":
        return SmoothThreshold()
    if kind == "scipy":
        return ScipyLabel()
    return threshold(THRESHOLD, connectivity=1)

# name, image shape, tile shape, (upsampling factor, coarse sigma, foreground fraction)
# 3-D uses a lower foreground fraction: a 3-D gaussian field percolates (one giant
# object) near 15 %; at 8 % blobs are ~20-30 voxels across, in 2-D at 30 % as well.
FULL_CASES = [
    ("3d-256", (256,) * 3, (128,) * 3, (8, 1.2, 0.08)),
    ("3d-512", (512,) * 3, (128,) * 3, (8, 1.2, 0.08)),
    ("2d-8192", (8192,) * 2, (512,) * 2, (8, 1.0, 0.30)),
    ("2d-16384", (16384,) * 2, (512,) * 2, (8, 1.0, 0.30)),
]
SMOKE_CASES = [
    ("3d-64", (64,) * 3, (32,) * 3, (8, 1.2, 0.08)),
    ("3d-128", (128,) * 3, (32,) * 3, (8, 1.2, 0.08)),
    ("2d-256", (256,) * 2, (64,) * 2, (8, 1.0, 0.30)),
    ("2d-512", (512,) * 2, (64,) * 2, (8, 1.0, 0.30)),
]


# ---------------------------------------------------------------------------------------------
# data


def _upsample_linear(coarse: np.ndarray, factor: int, shape) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` to ``shape`` (cheaper than ndimage.zoom)."""
    out = coarse
    for ax, size in enumerate(shape):
        x = (np.arange(size, dtype=np.float32) + 0.5) / factor
        i0 = np.floor(x).astype(np.intp)
        w = (x - i0).astype(np.float32).reshape([size if a == ax else 1 for a in range(out.ndim)])
        lo = np.take(out, i0, axis=ax)
        hi = np.take(out, i0 + 1, axis=ax)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return out


def make_blobs(shape, factor: int, sigma: float, density: float, seed: int = 0) -> np.ndarray:
    """uint8 image whose ``> 127.5`` mask is smooth random blobs covering about ``density``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse_shape = tuple(-(-s // factor) + 1 for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma, mode="wrap")
    field = _upsample_linear(coarse, factor, shape)
    sample = field.ravel()[:: max(1, field.size // (1 << 22))]
    cut = float(np.quantile(sample, 1 - density))
    scale = float(np.abs(sample - cut).max()) or 1.0
    field -= cut
    field *= 127.5 / scale
    field += 127.5
    np.clip(field, 0, 255, out=field)
    return field.astype(np.uint8)


def write_input(path: Path, shape, tile, params) -> None:
    from patchworks import create_output

    marker = path / "bench.json"
    meta = {"shape": list(shape), "tile": list(tile), "params": list(params), "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return  # reuse an input from an earlier run (--workdir)
    vol = make_blobs(shape, *params)
    arr = create_output(path, shape=shape, dtype=np.uint8, chunks=tile, overwrite=True)
    arr[...] = vol
    del vol, arr
    marker.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------
# worker side (runs in a fresh subprocess: ``bench_labels.py --worker JSON``)


def tree_rss(pid: int | None = None) -> int:
    """Resident memory of a process and all its children, in bytes."""
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _emit(tag: str, payload=None) -> None:
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


class _FloorJob:
    """What each floor task needs (shared once in the graph, like patchworks' StageJob)."""

    def __init__(self, grid, source, out, fn):
        self.grid, self.source, self.out, self.fn = grid, source, out, fn


def _floor_tile(job: _FloorJob, i: int) -> None:
    tile = job.grid.tile(i)
    window = np.asarray(job.source[tile.window])
    labels = job.fn(window)
    try:  # the floor writes the way the library writes (a whole chunk straight to its file where it can)
        from patchworks.io._chunk_io import write_region
    except ImportError:  # an older patchworks (the "before" column of a comparison)
        job.out[tile.spatial_core] = labels[tile.spatial_crop]
    else:
        write_region(job.out, tile.spatial_core, labels[tile.spatial_crop])


def run_floor(input_path, out_path, tile_shape, fn_kind="threshold") -> None:
    """fn on every tile, raw output written: the same execution machinery, no merge."""
    import dask

    from patchworks import TileGrid, create_output, open_image

    try:  # the same process settings as patchworks' own local runs (glibc's malloc thresholds)
        from patchworks.run._heap import settle_malloc
    except ImportError:  # an older patchworks (the "before" column of a comparison)
        pass
    else:
        settle_malloc()
    source = open_image(input_path)
    grid = TileGrid(source.shape, tile_shape)
    out = create_output(out_path, shape=grid.spatial_shape, dtype=np.uint32, chunks=grid.chunks, overwrite=True)
    job = dask.delayed(_FloorJob(grid, source, out, make_fn(fn_kind)),
                       name="floor-job", traverse=False)
    task = dask.delayed(_floor_tile, pure=False)
    dask.compute(*[task(job, i, dask_key_name=f"floor-{i}") for i in range(grid.n_tiles)], scheduler="threads")


def run_e2e(input_path, out_path, tile_shape, fn_kind="threshold", table=False, **options):
    import patchworks

    # no return_count: like the floor, the timed run does not count objects (an extra pass
    # over every tile); the untimed check against whole-image labelling covers the count.
    # Labels alone unless asked (--table measures the table's cost on its own)
    patchworks.tile_process(input_path, make_fn(fn_kind), tile_shape=tile_shape,
                            write_to=out_path, overwrite=True, progress=False, table=table, **options)


def run_labels_then_measure(input_path, out_path, tile_shape, fn_kind="threshold"):
    """The two-pass way: labels first, then the table from the written labels (and the image) again."""
    import patchworks

    run_e2e(input_path, out_path, tile_shape, fn_kind)
    patchworks.measure(out_path, input_path, tile_shape=tile_shape, progress=False)


def run_pyramid_after(input_path, out_path, tile_shape, fn_kind="threshold"):
    """Labels first (a bare array), then the pyramid from level 0 read back: the two-pass way."""
    run_e2e(input_path, out_path, tile_shape, fn_kind, output_format="array")
    _pyramid_from_level0(out_path)


# --cost: what the pyramid and the table add to labels alone, one pass and two
COST_JOBS = {
    "cost-labels": "labels alone (output_format='array', table=False)",
    "cost-pyramid": "label image with its pyramid, no table",
    "cost-table": "bare array with its table",
    "cost-both": "label image, pyramid and table (the default)",
    "cost-after": "labels first, then pyramid from level 0 and measure() reading labels + image again",
}


def _pyramid_from_level0(out_path) -> None:
    """Every coarser level subsampled from level 0 read back (dask, the same codec): a separate pyramid step."""
    import dask.array as da
    import zarr

    from patchworks.io._ngff_write import default_level_count
    from patchworks.io._sources import output_compressors

    level0 = zarr.open_array(out_path, mode="r")
    base = tuple(2 if k >= level0.ndim - 2 else 1 for k in range(level0.ndim))
    group = zarr.open_group(out_path + ".levels", mode="w")
    lazy = da.from_zarr(level0)
    for k in range(1, default_level_count(level0.shape, base)):
        sub = lazy[tuple(slice(None, None, f ** k) for f in base)]
        chunks = tuple(max(1, c // f ** k) for c, f in zip(level0.chunks, base))
        target = group.create_array(str(k), shape=sub.shape, chunks=chunks, dtype=level0.dtype,
                                    compressors=output_compressors(3), fill_value=0)
        da.to_zarr(sub.rechunk(chunks), target, compute=True)


def run_cost_job(job, input_path, out_path, tile_shape, fn_kind="threshold") -> None:
    import patchworks

    if job == "cost-labels":
        run_e2e(input_path, out_path, tile_shape, fn_kind, output_format="array", table=False)
    elif job == "cost-pyramid":
        run_e2e(input_path, out_path, tile_shape, fn_kind, table=False)
    elif job == "cost-table":
        run_e2e(input_path, out_path, tile_shape, fn_kind, output_format="array", table=True)
    elif job == "cost-both":
        run_e2e(input_path, out_path, tile_shape, fn_kind, table=True)
    elif job == "cost-after":
        run_e2e(input_path, out_path, tile_shape, fn_kind, output_format="array", table=False)
        _pyramid_from_level0(out_path)
        patchworks.measure(out_path, input_path, tile_shape=tile_shape, progress=False)


def _install_phase_timers(events: list) -> None:
    """Time the pipeline's phases by wrapping what ``labels._process`` calls (this process only)."""
    import patchworks.labels._process as L

    names = iter(["stage", "seams", "relabel"])  # run_tasks is called in this order
    run_tasks, plan_relabel = L.run_tasks, L.plan_relabel

    def timed_run_tasks(*a, **k):
        name = next(names, "tasks")
        t0 = time.perf_counter()
        try:
            return run_tasks(*a, **k)
        finally:
            events.append((name, t0, time.perf_counter()))

    def timed_plan(*a, **k):
        t0 = time.perf_counter()
        try:
            return plan_relabel(*a, **k)
        finally:
            events.append(("plan", t0, time.perf_counter()))

    L.run_tasks, L.plan_relabel = timed_run_tasks, timed_plan


def _install_op_timers(acc: dict) -> None:
    """Sum the seconds spent per operation inside tasks (over all threads): read, fn, renumber, writes..."""
    import zarr

    import patchworks.io._sources as io
    import patchworks.labels._merge as M
    import patchworks.segment._threshold as methods
    import patchworks.labels._tile_task as S

    lock = threading.Lock()

    def add(name, dt):
        with lock:
            acc[name][0] += dt
            acc[name][1] += 1

    def wrap(owner, attr, name):
        orig = getattr(owner, attr, None)
        if orig is None:  # the library moved on: time what exists
            return

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)

    def store_name(arr):
        try:
            n = Path(str(arr.store_path.store.root)).name
        except AttributeError:
            return "?"
        if n.startswith("planes"):
            return "seam planes"
        if "-input" in n:
            return "input"
        if "-labels" in n:
            return "output (floor)" if n.endswith(".floor") else "output"
        return n.replace(".zarr", "")

    get, set_ = zarr.Array.__getitem__, zarr.Array.__setitem__

    def timed_get(self, key):
        t0 = time.perf_counter()
        try:
            return get(self, key)
        finally:
            add(f"zarr read {store_name(self)}", time.perf_counter() - t0)

    def timed_set(self, key, value):
        t0 = time.perf_counter()
        try:
            return set_(self, key, value)
        finally:
            add(f"zarr write {store_name(self)}", time.perf_counter() - t0)

    zarr.Array.__getitem__, zarr.Array.__setitem__ = timed_get, timed_set
    wrap(io.LazySource, "__getitem__", "read input window (LazySource, incl. zarr read)")
    wrap(methods.Threshold, "__call__", "fn: threshold + cc3d")
    wrap(S, "validate_labels", "stage: validate_labels")
    wrap(S, "renumber_local", "stage: renumber_local")
    wrap(S, "write_seam_planes", "stage: write_seam_planes (incl. zarr write)")
    import patchworks.labels._process as L

    import patchworks.labels._groups as G

    wrap(G, "stage_tile", "stage: stage_tile total")  # a staging task runs its group's tiles through it
    wrap(L, "touch_pairs_for_seam", "seams: touch_pairs_for_seam total")
    wrap(L, "relabel_tile", "relabel: relabel_tile total")
    wrap(M.TilePlan, "lookup", "relabel: TilePlan.lookup")
    wrap(M.TilePlan, "apply", "relabel: TilePlan.apply")
    # what the pyramid and the table add (the default output), to find where their cost goes
    import patchworks.io._chunk_io as C
    import patchworks.io._ngff_write as W
    import patchworks.labels._batch as BA
    import patchworks.labels._table as T
    import patchworks.labels._table_merge as TM

    wrap(BA, "tile_partials", "table: tile_partials (batched tiles)")  # before the two shared core_partials
    wrap(S, "tile_partials", "table: tile_partials (tiles and batches)")
    wrap(T.Partials, "save", "table: Partials.save (staged partials, own rows)")
    wrap(TM, "table_task", "table: table_task (map partials through the plan)")
    wrap(L, "write_object_table", "table: write_object_table total (driver)")
    wrap(W.LabelImageWriter, "write_tile", "relabel: write_tile, every level (incl. direct chunk writes)")
    wrap(W.LabelImageWriter, "write_shared_chunk", "pyramid: write_shared_chunk (chunks no tile writes alone)")
    wrap(C.ChunkFiles, "write", "direct chunk write (ChunkFiles.write)")


def _apply_config(spec: dict) -> None:
    """Settings a job runs under (before anything is timed): zarr's codec pipeline."""
    if spec.get("zarrs"):
        import zarr

        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def worker_main(specs) -> None:
    """Run one job (full mode) or several in a row (smoke mode), each framed by START/STOP/RESULT."""
    for spec in specs if isinstance(specs, list) else [specs]:
        _one_job(spec)


def _one_job(spec: dict) -> None:
    job = spec["job"]
    # imports and opening happen before the timed section
    import cc3d  # noqa: F401
    import dask  # noqa: F401
    import zarr

    import patchworks  # noqa: F401

    _apply_config(spec)
    result: dict = {}
    vol = labels = None
    events: list = []
    ops: dict = defaultdict(lambda: [0.0, 0])
    if job in ("e2e", "phases"):
        _install_phase_timers(events)
    if job == "phases":
        _install_op_timers(ops)
    gc.collect()
    _emit("START", {"rss": tree_rss()})
    t0, cpu0 = time.perf_counter(), time.process_time()
    if job == "floor":
        run_floor(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"))
    elif job == "labels-only":
        run_e2e(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"), output_format="array")
    elif job == "pyramid-unsharded":
        import patchworks.io._ngff_write as W

        W.SHARDING = False
        run_e2e(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"))
    elif job == "pyramid-after":
        run_pyramid_after(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"))
    elif job in ("e2e", "phases"):
        if job == "phases":  # floor first, same wrappers, for a like-for-like breakdown
            run_floor(spec["input"], spec["out"] + ".floor", spec["tile"], spec.get("fn", "threshold"))
            result["floor_ops"] = {k: list(v) for k, v in ops.items()}
            ops.clear()
            t0 = time.perf_counter()
        run_e2e(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"), **spec.get("options", {}))
    elif job == "table":
        run_e2e(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"), table=True)
    elif job == "then-measure":
        run_labels_then_measure(spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"))
    elif job in COST_JOBS:
        run_cost_job(job, spec["input"], spec["out"], spec["tile"], spec.get("fn", "threshold"))
    elif job == "whole":  # whole+io: read the whole zarr input, the same fn once, write the same kind of output
        t_load = time.perf_counter()
        vol = np.asarray(zarr.open_array(spec["input"], mode="r")[...])
        t_fn = time.perf_counter()
        labels = make_fn(spec.get("fn", "threshold"))(vol)
        t_write = time.perf_counter()
        # level 0 as a plain array, patchworks' codec, chunks = tiles (the tiled run writes this and more)
        patchworks.create_output(spec["out"] + ".whole", shape=labels.shape, dtype=labels.dtype,
                                 chunks=spec["tile"], overwrite=True)[...] = labels
        t_end = time.perf_counter()
        result.update(load_seconds=t_fn - t_load, fn_seconds=t_write - t_fn, write_seconds=t_end - t_write)
    else:
        raise SystemExit(f"unknown job {job!r}")
    elapsed = time.perf_counter() - t0
    _emit("STOP")
    result["seconds"] = elapsed
    result["cpu_seconds"] = time.process_time() - cpu0  # all threads: steadier than wall time on a shared machine
    if events:
        result["phases"] = {name: b - a for name, a, b in events}
        result["phases"]["other (open, create stores, cleanup)"] = elapsed - sum(result["phases"].values())
    if ops:
        result["ops"] = {k: list(v) for k, v in ops.items()}
    if job == "whole":
        import fastremap

        values = fastremap.unique(labels)
        result["n_objects"] = int(values.size - (values.size > 0 and values[0] == 0))
    if job == "whole" and spec.get("verify"):
        from patchworks.testing import assert_labels_equivalent

        tiled = np.asarray(zarr.open_array(spec["verify"] + "/0", mode="r")[...])  # level 0 of the label image
        try:
            assert_labels_equivalent(labels, tiled)
            result["equal"] = True
        except AssertionError as exc:
            result["equal"] = False
            result["equal_error"] = str(exc)[:300]
    _emit("RESULT", result)


# ---------------------------------------------------------------------------------------------
# parent side


def run_jobs(specs: list[dict], *, interval: float = 0.02) -> list[dict]:
    """Run jobs in one fresh subprocess and sample its process tree's RSS meanwhile.

    Each job reports the peak above the RSS at its own START (the worker's
    process tree), sampled by this process every ``interval`` seconds.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(specs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic(), tree_rss(proc.pid)))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    windows, results = [], []
    for line in proc.stdout:
        if not line.startswith("@@"):
            sys.stdout.write(line)
            continue
        tag, _, payload = line[2:].partition(" ")
        payload = json.loads(payload)
        if tag == "START":
            windows.append([time.monotonic(), None, payload["rss"]])
        elif tag == "STOP":
            windows[-1][1] = time.monotonic()
        elif tag == "RESULT":
            results.append(payload)
    rc = proc.wait()
    done.set()
    sampler.join()
    if rc != 0 or len(results) != len(specs):
        raise RuntimeError(f"worker for jobs {[s['job'] for s in specs]} failed (exit {rc})")
    for result, (start, stop, base) in zip(results, windows):
        inside = [r for t, r in samples if start <= t <= (stop if stop is not None else t)]
        result["peak_mb"] = max(0, max(inside, default=base) - base) / 2 ** 20
        result["base_mb"] = base / 2 ** 20
    return results


def run_job(spec: dict) -> dict:
    return run_jobs([spec])[0]


def _fmt_shape(shape) -> str:
    return f"{shape[0]}^{len(shape)}" if len(set(shape)) == 1 else "x".join(map(str, shape))


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(rows: list[dict]) -> None:
    cells = [HEADER]
    for r in rows:
        cells.append((r["name"], r["fn"], _fmt_shape(r["shape"]), _fmt_shape(r["tile"]), str(r["n_tiles"]),
                      str(r["n_objects"]), f"{r['floor']:.2f}", f"{r['e2e']:.2f}", f"{100 * r['overhead']:+.1f} %",
                      f"{r['labels']:.2f}", f"{100 * r['labels_overhead']:+.1f} %",
                      f"{r['whole']:.2f}", f"{r['whole_io']:.2f}", f"{r['whole_cores']:.2f}", f"{r['ratio']:.2f}",
                      f"{r['labels_ratio']:.2f}", f"{r['peak']:.0f}",
                      f"{r['whole_peak']:.0f}", {True: "yes", False: "NO", None: "-"}[r["equal"]]))
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for k, c in enumerate(cells):
        print("  ".join(s.rjust(w) if i >= 4 else s.ljust(w) for i, (s, w) in enumerate(zip(c, widths))))
        if k == 0:
            print(line)
    print(line)


def print_targets(rows: list[dict]) -> None:
    print("\ntargets")
    out = []
    for r in rows:
        tag = f"{r['name']} {r['fn']}"
        out.append((f"{tag} overhead (e2e - floor) / floor", f"{100 * r['overhead']:+.1f} %",
                    f"<= {100 * OVERHEAD_TARGET:.0f} %", _mark(r["overhead"] <= OVERHEAD_TARGET)))
        out.append((f"{tag} tiled / whole+io", f"{r['ratio']:.2f}",
                    f"<= {TILED_WHOLE_TARGET:.2f}", _mark(r["ratio"] <= TILED_WHOLE_TARGET)))
        out.append((f"{tag} labels overhead, same output (labels - floor) / floor", f"{100 * r['labels_overhead']:+.1f} %",
                    f"<= {100 * OVERHEAD_TARGET:.0f} %", _mark(r["labels_overhead"] <= OVERHEAD_TARGET)))
        out.append((f"{tag} tiled / whole+io, same output (level 0 only)", f"{r['labels_ratio']:.2f}",
                    f"<= {TILED_WHOLE_TARGET:.2f}", _mark(r["labels_ratio"] <= TILED_WHOLE_TARGET)))
    by_dim = defaultdict(list)
    for r in rows:
        by_dim[(len(r["shape"]), r["fn"])].append(r)
    for (ndim, fn), rs in sorted(by_dim.items()):
        rs = sorted(rs, key=lambda r: np.prod(r["shape"]))
        if len(rs) < 2:
            continue
        small, large = rs[0], rs[-1]
        growth = large["peak"] / max(small["peak"], 1.0)
        vol = np.prod(large["shape"]) / np.prod(small["shape"])
        out.append((f"{ndim}-D {fn} peak {large['name']} / {small['name']} (volume x{vol:.0f})", f"{growth:.2f}x",
                    f"<= {PEAK_GROWTH_TARGET}x", _mark(growth <= PEAK_GROWTH_TARGET)))
    for r in rows:
        if r["equal"] is not None:
            out.append((f"{r['name']} {r['fn']} tiled == whole-image labels (up to renaming)",
                        "yes" if r["equal"] else "NO", "yes", _mark(r["equal"])))
    w = [max(len(o[i]) for o in out) for i in range(4)]
    for o in out:
        print(f"  {o[0]:<{w[0]}}  {o[1]:>{w[1]}}  {o[2]:<{w[2]}}  {o[3]}")


def print_notes() -> None:
    print("\nnotes: whole+io s = one process: read the whole zarr input, the same fn on the whole image, write"
          "\n       level 0 with patchworks' codec (chunks = tiles); whole fn s = its fn part alone; tiled/whole+io"
          "\n       = e2e / whole+io (e2e = tile_process's default output, an NGFF label image with its pyramid);"
          "\n       labels s = the same run with output_format='array' (level 0 only, the output the floor and"
          "\n       whole+io write); cores = whole+io's CPU s / wall s (zarr decodes and encodes on a thread pool);"
          "\n       peak MB = max RSS of the worker's process tree above its RSS at start.")


def print_pyramid(rows: list[dict]) -> None:
    print("\npyramid cost (best of the repeats; ratios to labels alone, i.e. output_format='array')")
    cells = [("case", "labels s", "+pyramid s", "ratio", "unsharded s", "ratio", "labels, then pyramid s", "ratio",
              "peak MB +pyr", "peak MB labels")]
    for r in rows:
        p = r.get("pyramid")
        if not p:
            continue
        lab = p["labels-only"]
        cells.append((r["name"], f"{lab:.2f}", f"{p['e2e']:.2f}", f"{p['e2e'] / lab:.3f}",
                      f"{p['pyramid-unsharded']:.2f}", f"{p['pyramid-unsharded'] / lab:.3f}",
                      f"{p['pyramid-after']:.2f}", f"{p['pyramid-after'] / lab:.3f}",
                      f"{p['peak_e2e']:.0f}", f"{p['peak_labels']:.0f}"))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for c in cells:
        print("  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))))


def print_phases(rows: list[dict]) -> None:
    print("\nend-to-end breakdown (wall seconds per phase, best e2e run; threaded, 1 task per tile)")
    for r in rows:
        ph = r["phases"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in ph.items())
        print(f"  {r['name'] + ' ' + r['fn']:<18} total {r['e2e']:.2f}: {parts}")
    if not any(r.get("ops") for r in rows):
        return
    print("\nper-operation task-seconds (summed over worker threads; separate 'phases' run with wrappers)")
    for r in rows:
        if not r.get("ops"):
            continue
        print(f"  {r['name']} {r['fn']}  [floor run: "
              + ", ".join(f"{k} {v[0]:.2f}" for k, v in sorted(r["floor_ops"].items())) + "]")
        for k, (sec, calls) in sorted(r["ops"].items(), key=lambda kv: kv[0]):
            print(f"    {k:<52} {sec:8.2f} s  {calls:6d} calls")


def _select_cases(args):
    cases = SMOKE_CASES if args.size == "small" else FULL_CASES
    if args.cases:
        keep = set(args.cases.split(","))
        cases = [c for c in cases if c[0] in keep]
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("small", "full"), default="full",
                    help="small: tiny images, one repeat, a few seconds (CI smoke test); full: the sizes above")
    ap.add_argument("--smoke", action="store_true", help="the same as --size small")
    ap.add_argument("--repeats", type=int, default=None, help="best of N (default 2, 1 with --size small)")
    ap.add_argument("--cases", default=None, help="comma-separated case names to run")
    ap.add_argument("--workdir", default=None, help="keep inputs/outputs here (reused across runs)")
    ap.add_argument("--no-phases", action="store_true", help="skip the per-operation 'phases' run")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--fn", default="threshold,scipy",
                    help="comma-separated tile functions: threshold (patchworks.threshold: cc3d), scipy "
                         "(scipy.ndimage.label of the mask), smooth (Gaussian sigma 2 first: the merge's cost "
                         "against a function doing real work)")
    ap.add_argument("--zarrs", action="store_true", help="every job with zarrs' Rust codec pipeline")
    ap.add_argument("--table", action="store_true", help="the object table's cost over labels alone, and "
                    "against labelling first and measuring afterwards")
    ap.add_argument("--pyramid", action="store_true", help="also time labels alone, the label image's pyramid "
                    "(sharded, unsharded) and labels-then-pyramid from level 0 (a second table)")
    ap.add_argument("--cost", action="store_true", help="pyramid and table together over labels alone, each "
                    "alone, and labels first then pyramid + measure() from level 0 (the two-pass way)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.size = "small"
    args.smoke = args.size == "small"
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    fns = args.fn.split(",")
    bad = [f for f in fns if f not in FNS]
    if bad:
        ap.error(f"--fn {args.fn}: unknown {bad}; choose from {FNS}")
    args.fn = fns[0]
    if args.table:
        return table_cost(args)
    if args.cost:
        return pyramid_table_cost(args)

    cases = _select_cases(args)
    repeats = args.repeats or (1 if args.smoke else 2)
    do_phases = not (args.no_phases or args.smoke)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-labels-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import patchworks

    print(f"patchworks {patchworks.__version__} from {Path(patchworks.__file__).parent}")
    print(f"patchworks labelling benchmark ({args.size}): {os.cpu_count()} cores, best of {repeats}, "
          f"fn {','.join(fns)}, threshold {THRESHOLD}, connectivity 1, zarrs {args.zarrs}, data in {workdir}",
          flush=True)
    rows = []
    try:
        planned = []
        for name, shape, tile, params in cases:
            inp = workdir / f"{name}-input.zarr"
            t0 = time.perf_counter()
            write_input(inp, shape, tile, params)
            print(f"[{name}] input {_fmt_shape(shape)} ready ({time.perf_counter() - t0:.1f} s, not timed)",
                  flush=True)
            for fn in fns:
                specs = [{**s, "tile": list(tile)} for s in
                         _case_specs(args, inp, workdir / f"{name}-{fn}-labels.zarr", fn, repeats)]
                planned.append(((name, shape, tile, fn), specs))
                if not args.smoke:  # one fresh subprocess per job: no peak carries over
                    rows.append(_case_row(args, name, shape, tile, fn, specs, [run_job(s) for s in specs],
                                          do_phases))
        if args.smoke:  # one subprocess for everything: start-up costs more than the jobs
            results = iter(run_jobs([s for _, specs in planned for s in specs]))
            for (name, shape, tile, fn), specs in planned:
                rows.append(_case_row(args, name, shape, tile, fn, specs, [next(results) for _ in specs],
                                      do_phases))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_table(rows)
    print_notes()
    print_targets(rows)
    if args.pyramid:
        print_pyramid(rows)
    print_phases(rows)
    correct = all(r["equal"] is not False for r in rows)
    missed = any(r["overhead"] > OVERHEAD_TARGET or r["ratio"] > TILED_WHOLE_TARGET for r in rows)
    if not correct:
        return 1
    return 1 if (args.strict and missed) else 0


def _case_specs(args, inp, out, fn, repeats) -> list[dict]:
    """The jobs of one tile function on one image: floor, e2e and whole+io, interleaved repeats."""
    spec = {"input": str(inp), "out": str(out), "tile": None, "fn": fn, "zarrs": args.zarrs}
    specs = []
    for k in range(repeats):  # interleaved so that drift hits all alike
        specs += [{**spec, "job": "floor", "out": str(out) + ".floor"}, {**spec, "job": "e2e"},
                  {**spec, "job": "labels-only", "out": str(out) + ".labels-only"},
                  {**spec, "job": "whole", "verify": str(out) if k == repeats - 1 and fn != "smooth" else None}]
    for _ in range(repeats if args.pyramid else 0):
        specs += [{**spec, "job": j, "out": f"{out}.{j}"} for j in PYRAMID_JOBS if j != "labels-only"]
    return specs


PYRAMID_JOBS = ("labels-only", "pyramid-unsharded", "pyramid-after")


def _case_row(args, name, shape, tile, fn, specs, results, do_phases) -> dict:
    """One row of the table from the jobs' results (and the per-operation run when asked)."""
    spec = next(s for s in specs if s["job"] == "e2e")
    out = spec["out"]
    pyramid_jobs = PYRAMID_JOBS if args.pyramid else ()

    def of(job):
        return [r for s, r in zip(specs, results) if s["job"] == job]

    floor, e2e, whole = of("floor"), of("e2e"), of("whole")
    best_e2e = min(e2e, key=lambda r: r["seconds"])
    checked = next((r for s, r in zip(specs, results) if s["job"] == "whole" and s.get("verify")), {})
    row = dict(
        name=name, fn=fn, shape=shape, tile=tile,
        n_tiles=int(np.prod([-(-s // t) for s, t in zip(shape, tile)])),
        n_objects=whole[0]["n_objects"],
        floor=min(r["seconds"] for r in floor), e2e=best_e2e["seconds"],
        whole=min(r["fn_seconds"] for r in whole),
        whole_io=min(r["seconds"] for r in whole),
        labels=min(r["seconds"] for r in of("labels-only")),
        # CPU seconds per wall second of the best whole+io: zarr decodes and encodes its chunks on a thread
        # pool, so the "single-threaded" whole-image pass is not one core in its read and write
        whole_cores=(lambda r: r["cpu_seconds"] / r["seconds"])(min(whole, key=lambda r: r["seconds"])),
        whole_parts={k: min(r[f"{k}_seconds"] for r in whole) for k in ("load", "fn", "write")},
        peak=max(r["peak_mb"] for r in e2e), floor_peak=max(r["peak_mb"] for r in floor),
        whole_peak=max(r["peak_mb"] for r in whole),
        equal=checked.get("equal"), phases=best_e2e["phases"],
    )
    if args.pyramid:
        row["pyramid"] = {j: min(r["seconds"] for r in of(j)) for j in pyramid_jobs}
        row["pyramid"]["e2e"] = row["e2e"]
        row["pyramid"]["peak_e2e"] = row["peak"]
        row["pyramid"]["peak_labels"] = max(r["peak_mb"] for r in of("labels-only"))
    if row["equal"] is False:
        print(f"[{name} {fn}] MISMATCH: {checked.get('equal_error', 'object counts differ')}", flush=True)
    row["overhead"] = (row["e2e"] - row["floor"]) / row["floor"]
    row["ratio"] = row["e2e"] / row["whole_io"]
    # like for like: the floor and whole+io write level 0 only, as output_format="array" does
    row["labels_overhead"] = (row["labels"] - row["floor"]) / row["floor"]
    row["labels_ratio"] = row["labels"] / row["whole_io"]
    if do_phases:
        ph = run_job({**spec, "job": "phases", "out": str(out) + ".phases"})
        row["ops"], row["floor_ops"] = ph["ops"], ph["floor_ops"]
    print(f"[{name} {fn}] floor {row['floor']:.2f} s, e2e {row['e2e']:.2f} s, whole+io {row['whole_io']:.2f} s "
          f"(read {row['whole_parts']['load']:.2f}, fn {row['whole_parts']['fn']:.2f}, "
          f"write {row['whole_parts']['write']:.2f}), peak {row['peak']:.0f} MB", flush=True)
    return row


def table_cost(args) -> int:
    """``--table``: labels alone vs labels + table in one pass vs labels then ``measure`` (two passes)."""
    cases = _select_cases(args)
    repeats = args.repeats or (1 if args.smoke else 2)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-table-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"object table cost: {os.cpu_count()} cores, best of {repeats}, fn {args.fn}", flush=True)
    jobs = ("e2e", "table", "then-measure")
    rows = []
    try:
        for name, shape, tile, params in cases:
            inp, out = workdir / f"{name}-input.zarr", workdir / f"{name}-labels.zarr"
            write_input(inp, shape, tile, params)
            spec = {"input": str(inp), "out": str(out), "tile": list(tile), "fn": args.fn}
            specs = [{**spec, "job": j} for _ in range(repeats) for j in jobs]  # interleaved against drift
            results = run_jobs(specs) if args.smoke else [run_job(s) for s in specs]
            best = {j: min(r["seconds"] for s, r in zip(specs, results) if s["job"] == j) for j in jobs}
            peak = {j: max(r["peak_mb"] for s, r in zip(specs, results) if s["job"] == j) for j in jobs}
            rows.append((name, _fmt_shape(shape), best, peak))
            print(f"[{name}] " + ", ".join(f"{j} {best[j]:.2f} s" for j in jobs), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'case':<10} {'image':<14} {'labels s':>9} {'+table s':>9} {'table cost':>11} {'then measure s':>15} "
          f"{'2-pass cost':>12} {'peak MB labels/+table':>22}")
    for name, shape, best, peak in rows:
        base = best["e2e"]
        print(f"{name:<10} {shape:<14} {base:>9.2f} {best['table']:>9.2f} {best['table'] / base - 1:>+10.0%} "
              f"{best['then-measure']:>15.2f} {best['then-measure'] / base - 1:>+11.0%} "
              f"{peak['e2e']:>10.0f}/{peak['table']:<10.0f}")
    print("table cost = (labels + table) / labels alone - 1; 2-pass cost: labels, then patchworks.measure "
          "reading labels and image again (the upstream way). Target: table + pyramid <= +15 %.")
    return 0


def pyramid_table_cost(args) -> int:
    """``--cost``: what the pyramid and the table add to labels alone (target: both together <= +15 %)."""
    cases = SMOKE_CASES if args.smoke else [c for c in FULL_CASES if c[0] in ("3d-512", "2d-16384")]
    if args.cases:
        keep = set(args.cases.split(","))
        cases = [c for c in SMOKE_CASES + FULL_CASES if c[0] in keep]
    repeats = args.repeats or (1 if args.smoke else 2)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import patchworks

    print(f"pyramid + table cost: patchworks from {Path(patchworks.__file__).parent}, {os.cpu_count()} cores, "
          f"best of {repeats}, fn {args.fn}", flush=True)
    jobs = tuple(COST_JOBS)
    rows = []
    try:
        for name, shape, tile, params in cases:
            inp, out = workdir / f"{name}-input.zarr", workdir / f"{name}-cost.zarr"
            if not inp.exists():
                write_input(inp, shape, tile, params)
            spec = {"input": str(inp), "tile": list(tile), "fn": args.fn}
            specs = [{**spec, "job": j, "out": f"{out}.{j}"} for _ in range(repeats) for j in jobs]  # interleaved
            results = run_jobs(specs) if args.smoke else [run_job(s) for s in specs]
            best = {j: min(r["seconds"] for s, r in zip(specs, results) if s["job"] == j) for j in jobs}
            cpu = {j: min(r["cpu_seconds"] for s, r in zip(specs, results) if s["job"] == j) for j in jobs}
            peak = {j: max(r["peak_mb"] for s, r in zip(specs, results) if s["job"] == j) for j in jobs}
            rows.append((name, _fmt_shape(shape), _fmt_shape(tile), best, peak, cpu))
            print(f"[{name}] " + ", ".join(f"{j[5:]} {best[j]:.2f} s" for j in jobs), flush=True)
            for p in workdir.glob(f"{name}-cost.zarr.*"):
                shutil.rmtree(p, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    head = ("case", "image", "tile", "labels s", "+pyramid", "+table", "+both", "2-pass after", "peak MB labels/both")
    print(f"{head[0]:<10} {head[1]:<12} {head[2]:<10} {head[3]:>12} {head[4]:>7} {head[5]:>9} {head[6]:>9} "
          f"{head[7]:>13} {head[8]:>20}")
    for name, shape, tile, best, peak, cpu in rows:
        for what, t in (("wall", best), ("cpu", cpu)):
            base = t["cost-labels"]
            rel = {j: t[j] / base - 1 for j in jobs}
            print(f"{name:<10} {shape:<12} {tile:<10} {base:>7.2f} {what:<4} {rel['cost-pyramid']:>+7.0%} "
                  f"{rel['cost-table']:>+9.0%} {rel['cost-both']:>+9.0%} {rel['cost-after']:>+13.0%} "
                  f"{peak['cost-labels']:>9.0f}/{peak['cost-both']:<9.0f}")
    print("each column: best time / labels alone - 1 (one run, jobs interleaved; wall = elapsed, cpu = CPU "
          "seconds of all the job's threads, steadier on a shared machine). " +
          "; ".join(f"{j[5:]}: {d}" for j, d in COST_JOBS.items()) + ". Target: +both <= +15 %.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
