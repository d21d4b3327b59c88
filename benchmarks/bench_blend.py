"""Benchmark of ``patchworks.tile_map`` (dense blending) against an in-memory numpy accumulation.

Run from the repository root::

    python benchmarks/bench_blend.py            # 192^3 x 4 channels, and a 384^3 x 4 channel "large" case
    python benchmarks/bench_blend.py --smoke    # tiny sizes, a few seconds (CI)

Setup (untimed): a random float32 volume is written as zarr v3 (chunks 32^3) to a
temporary directory. The "network" is the identity repeated on 4 output channels
(``np.broadcast_to``, so fn itself costs nothing and the table measures patchworks).
Patches are 64^3 windows overlapping their neighbours by 32 voxels, i.e.
``tile_shape=32, overlap=16`` in patchworks terms (core 32 + 16 per side).

Each timed job runs in a fresh subprocess of this script, which samples its own
resident memory every 5 ms; ``peak MB`` is the peak minus the RSS just before the
job starts (the interpreter and imports are not counted).

* patchworks -- ``tile_map(path, fn, window=..., write_to=out.zarr)`` on 2 threads;
* numpy      -- the reference: load the volume, then ``acc[window] += w * fn(tile)``
                and ``wsum[window] += w`` over all tiles in one float32 array of the
                whole output, divide, write to zarr (Gaussian weights).
``check`` compares every output with the input (identity) and with the reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("patchworks") is None and (_ROOT / "patchworks").is_dir():
    sys.path.insert(0, str(_ROOT))

C = 4  # output channels


def identity4(w):
    return np.broadcast_to(w, (C, *w.shape))


def _make_input(path: Path, side: int, chunk: int):
    import zarr
    arr = zarr.create_array(store=str(path), shape=(side,) * 3, chunks=(chunk,) * 3, dtype="float32")
    rng = np.random.default_rng(0)
    for z in range(0, side, chunk):
        arr[z:z + chunk] = rng.random((min(chunk, side - z), side, side), dtype=np.float32)


def _numpy_reference(src, out, tile, overlap):
    import zarr
    from patchworks import TileGrid, create_output, make_window
    image = zarr.open_array(src)[...]
    grid = TileGrid(image.shape, tile, overlap)
    w = make_window("gaussian", tuple(t + 2 * h for t, h in zip(grid.tile_shape, grid.overlap)))
    acc = np.zeros((C, *image.shape), np.float32)
    wsum = np.zeros(image.shape, np.float32)
    for t in grid:
        tw = w[tuple(slice(s.start - c.start + h, s.stop - c.start + h)
                     for s, c, h in zip(t.spatial_window, t.spatial_core, grid.overlap))]
        acc[(slice(None), *t.spatial_window)] += identity4(image[t.window]) * tw
        wsum[t.spatial_window] += tw
    acc /= wsum
    dst = create_output(out, shape=acc.shape, dtype="float32", chunks=(C, *grid.tile_shape), overwrite=True)
    dst[...] = acc


def _job(spec: dict) -> dict:
    """Run one job in this (fresh) process; return seconds and peak RSS growth."""
    import dask
    import psutil
    proc = psutil.Process()
    peak, stop = [proc.memory_info().rss], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.005)

    if spec["kind"] == "numpy":
        job = lambda: _numpy_reference(spec["src"], spec["out"], spec["tile"], spec["overlap"])  # noqa: E731
    else:
        from patchworks import tile_map
        job = lambda: tile_map(spec["src"], identity4, tile_shape=spec["tile"], overlap=spec["overlap"],  # noqa: E731
                               window=spec["kind"], out_channels=C, write_to=spec["out"], overwrite=True,
                               client=False, progress=False, memory_budget=spec.get("budget"))
    base = proc.memory_info().rss
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        job()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    return {"seconds": seconds, "peak_mb": (max(peak) - base) / 2**20}


def _run_job(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT),
                                                                                     os.environ.get("PYTHONPATH")]))})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(src, out, ref) -> str:
    import zarr
    image = zarr.open_array(src)[...]
    got = zarr.open_array(out)
    worst = max(float(np.abs(got[c] - image).max()) for c in range(C))
    vs_ref = "" if ref is None else f", vs numpy {float(np.abs(got[...] - zarr.open_array(ref)[...]).max()):.1e}"
    return ("ok" if worst <= 1e-5 else "MISMATCH") + f" (|out-in| {worst:.1e}{vs_ref})"


BUDGET = 64 * 2**20         # accumulators' memory budget for the large case (its output is 864 MiB)
BUDGET_SMOKE = 256 * 2**10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(_job(json.loads(args.job))))
        return
    tile, overlap = (16, 4) if args.smoke else (32, 16)
    cases = [("192^3", 32 if args.smoke else 192, ["crop", "mean", "hann", "gaussian", "numpy"]),
             ("large", 48 if args.smoke else 384, ["gaussian", "numpy"])]
    print(f"patches {tile + 2 * overlap}^3 overlapping by {2 * overlap} (tile_shape={tile}, overlap={overlap}), "
          f"{C} output channels, identity network, 2 threads; 'large' runs with memory_budget="
          f"{(BUDGET_SMOKE if args.smoke else BUDGET) / 2**20:g} MiB for the accumulators")
    header = f"{'case':<7} {'volume':>8} {'out MB':>7} {'window':<9} {'time s':>7} {'peak MB':>8} " \
             f"{'peak/out':>8}  check"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-blend-") as tmp:
        tmp = Path(tmp)
        for name, side, kinds in cases:
            src = tmp / f"in-{side}.zarr"
            _make_input(src, side, 64 if not args.smoke else tile)
            out_mb = C * side ** 3 * 4 / 2**20
            ref = tmp / f"ref-{side}.zarr"
            results = {}
            for kind in ["numpy"] + [k for k in kinds if k != "numpy"]:
                out = ref if kind == "numpy" else tmp / f"{kind}-{side}.zarr"
                # the large case streams an output bigger than the accumulators' memory budget
                budget = (BUDGET_SMOKE if args.smoke else BUDGET) if name == "large" else None
                results[kind] = _run_job({"kind": kind, "src": str(src), "out": str(out), "tile": tile,
                                          "overlap": overlap, "budget": budget})
                results[kind]["check"] = _check(src, out, None if kind == "numpy" else ref)
            for kind in kinds:
                r = results[kind]
                print(f"{name:<7} {side:>5}^3 {out_mb:>7.0f} {kind:<9} {r['seconds']:>7.2f} {r['peak_mb']:>8.0f} "
                      f"{r['peak_mb'] / out_mb:>8.2f}  {r['check']}")


if __name__ == "__main__":
    main()
