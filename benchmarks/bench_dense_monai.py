"""Dense sliding-window inference: patchworks against MONAI's ``sliding_window_inference``.

Run from the repository root (MONAI comes with ``pip install -e ".[bench]"``)::

    python benchmarks/bench_dense_monai.py             # 192^3 and 384^3, gaussian and mean
    python benchmarks/bench_dense_monai.py --small     # 40^3, gaussian only, one round (CI smoke test)

Same windows and steps for everyone: 64^3 windows, overlap 0.5 (step 32, MONAI's
layout: the last window shifted inward, 5 per axis at 192^3), 4 output channels,
an identity "network" (the input repeated on 4 channels into a new array, in
numpy for us and in torch for MONAI, so the table measures the blending). Rows:

* ``monai``        -- ``sliding_window_inference(tensor (1, 1, *vol), roi 64, sw_batch_size=4,
                      overlap=0.5, mode=...)``, numpy in, numpy out;
* ``tile_map mem`` -- ``tile_map(numpy, fn, patch_size=64, overlap=0.5, compute=True)``;
* ``stream np``    -- the same streamed to a zarr store (numpy in);
* ``stream zarr``  -- the same from a zarr input (chunks 64^3) to a zarr store;
* ``sampler``      -- ``GridSampler`` + ``Aggregator`` loop, batches of 4, numpy out;
* ``sampler torch`` -- the same loop with the network in torch (its output a tensor, as a PyTorch
                      user's), which the Aggregator folds with torch's kernels (only with torch installed).

Each job runs in a fresh subprocess that samples its own resident memory every
5 ms (``peak MB`` = peak minus the RSS just before the job; the input volume is
made before that). Jobs are interleaved over ``--repeats`` rounds and the best
time is kept; ratios are to MONAI's time and peak in the same run. ``err`` is the
largest |output - input| over all channels. 2 threads for everyone
(``torch.set_num_threads(2)``, dask ``num_workers=2``).
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

C = 4          # output channels
ROI = 64
THREADS = 2
BATCH = 4


def identity4(w):
    """(B, *win) -> (B, C, *win), or (*win) -> (C, *win): the input on 4 channels, a new array (as a network's)."""
    return np.repeat(w[:, None] if w.ndim == 4 else w[None], C, axis=1 if w.ndim == 4 else 0)


def _volume(side: int) -> np.ndarray:
    return np.random.default_rng(side).random((side,) * 3, dtype=np.float32)


def _job(spec: dict) -> dict:
    import dask
    import psutil
    kind, side, mode = spec["kind"], spec["side"], spec["mode"]
    roi = spec["roi"]
    image = _volume(side)
    if kind == "stream zarr":
        import zarr
        src = zarr.open_array(spec["src"], mode="r")
    proc = psutil.Process()
    peak, stop = [proc.memory_info().rss], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.005)

    if kind == "monai":
        import torch
        from monai.inferers import sliding_window_inference
        torch.set_num_threads(THREADS)

        def net(x):
            return x.repeat(1, C, 1, 1, 1)  # a new tensor, as a network's output

        def job():
            with torch.inference_mode():
                return sliding_window_inference(torch.from_numpy(image)[None, None], (roi,) * 3, BATCH, net,
                                                overlap=0.5, mode=mode, sigma_scale=0.125)[0].numpy()
    elif kind in ("sampler", "sampler torch"):
        from patchworks import Aggregator, GridSampler

        net = identity4
        if kind == "sampler torch":  # the loop of a PyTorch user: the network and its output in torch
            import torch
            torch.set_num_threads(THREADS)

            def net(batch):
                with torch.inference_mode():
                    return torch.from_numpy(batch)[:, None].repeat(1, C, 1, 1, 1)

        def job():
            sampler = GridSampler(image, roi, overlap=roi // 2, edge="shift")
            agg = Aggregator(sampler, window="gaussian" if mode == "gaussian" else "mean", out_channels=C)
            specs = sampler.specs
            for k in range(0, len(specs), BATCH):
                batch = np.stack([sampler.read(s) for s in specs[k:k + BATCH]])
                agg.add(net(batch), specs[k:k + BATCH])
            return agg.result()
    else:
        from patchworks import tile_map
        window = "gaussian" if mode == "gaussian" else "mean"
        kw = dict(patch_size=roi, overlap=0.5, window=window, out_channels=C, batch_size=BATCH, client=False,
                  progress=False)

        def job():
            if kind == "tile_map mem":
                return tile_map(image, identity4, compute=True, **kw)
            import zarr
            tile_map(src if kind == "stream zarr" else image, identity4, write_to=spec["out"], overwrite=True, **kw)
            return zarr.open_array(spec["out"], mode="r")

    base = proc.memory_info().rss
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=THREADS):
        out = job()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    err = max(float(np.abs(np.asarray(out[c]) - image).max()) for c in range(C))
    return {"seconds": seconds, "peak_mb": (max(peak) - base) / 2**20, "err": err}


def _run_job(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(THREADS)}
    out = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGETS = {"tile_map mem": (1.0, None), "stream np": (1.5, 0.5), "stream zarr": (1.5, 0.5), "sampler": (1.0, None),
           "sampler torch": (1.0, None)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes, one round (CI smoke test)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; best time kept")
    parser.add_argument("--sides", default=None, help="comma-separated volume sides (default 192,384)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(_job(json.loads(args.job))))
        return
    have_monai = importlib.util.find_spec("monai") is not None and importlib.util.find_spec("torch") is not None
    roi = 16 if args.small else ROI
    sides = [40] if args.small else [int(s) for s in (args.sides or "192,384").split(",")]
    repeats = 1 if args.small else args.repeats
    kinds = (["monai"] if have_monai else []) + ["tile_map mem", "stream np", "stream zarr", "sampler"] + \
        (["sampler torch"] if importlib.util.find_spec("torch") is not None else [])
    print(f"windows {roi}^3, overlap 0.5 (step {roi // 2}), {C} output channels, identity network, "
          f"batches of {BATCH}, {THREADS} threads, best of {repeats} interleaved rounds"
          + ("" if have_monai else "; MONAI not installed: its rows are skipped"))
    header = f"{'volume':>7} {'mode':<9} {'path':<14} {'time s':>7} {'vs monai':>8} {'peak MB':>8} " \
             f"{'peak/monai':>10} {'err':>8}  target"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-dense-") as tmp:
        tmp = Path(tmp)
        for side in sides:
            import zarr
            src = tmp / f"in-{side}.zarr"
            zarr.create_array(store=str(src), data=_volume(side), chunks=(roi,) * 3)
            for mode in ("gaussian",) if args.small else ("gaussian", "constant"):
                best: dict[str, dict] = {}
                for _ in range(repeats):
                    for kind in kinds:
                        r = _run_job({"kind": kind, "side": side, "mode": mode, "roi": roi, "src": str(src),
                                      "out": str(tmp / f"out-{side}.zarr")})
                        if kind not in best or r["seconds"] < best[kind]["seconds"]:
                            best[kind] = {**r, "peak_mb": min(r["peak_mb"], best.get(kind, r)["peak_mb"])}
                ref = best.get("monai")
                for kind in kinds:
                    r = best[kind]
                    t_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
                    m_ratio = f"{r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}" if ref else "-"
                    target = ""
                    if ref and kind in TARGETS:
                        tt, mt = TARGETS[kind]
                        ok = r["seconds"] <= tt * ref["seconds"] and (mt is None or r["peak_mb"] <= mt * ref["peak_mb"])
                        target = f"<= {tt}x time" + (f", <= {mt}x peak" if mt else "") + (" met" if ok else " MISSED")
                    flag = "" if r["err"] <= 1e-5 else "  MISMATCH"
                    print(f"{side:>5}^3 {'mean' if mode == 'constant' else mode:<9} {kind:<14} {r['seconds']:>7.2f} "
                          f"{t_ratio:>8} {r['peak_mb']:>8.0f} {m_ratio:>10} {r['err']:>8.1e}  {target}{flag}",
                          flush=True)


if __name__ == "__main__":
    main()
