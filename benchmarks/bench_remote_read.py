"""The read side of remote storage: a labelling run whose input is in S3 (a local moto server) vs on disk.

Run from the repository root::

    python benchmarks/bench_remote_read.py            # 512^3 uint8, 64 tiles of 128^3 (zarr v3 chunks 128^3)
    python benchmarks/bench_remote_read.py --smoke    # 128^3, 64 tiles of 32^3 (CI)

Setup (untimed): a blob volume is written as zarr v3 to a temporary directory
and copied into a bucket of a moto S3 server on 127.0.0.1 (``tests/_servers.py``,
which counts the requests the server answers, by kind). Both runs write their
labels to local disk: only the input differs. Timed, alternately, ``--repeat``
times each: ``tile_process(input, threshold(0.5), write_to=local, table=False)``
on local threads, tile shape = the input's chunks. Printed: the median time of
each, the ratio S3 / local, and the requests per input tile of an S3 run
(reads = GET of an object, heads, lists) with what opening the input costs.
The moto server runs in this process (threads), so its own work shares the
cores with the run: the ratio is an upper bound of what a real object store
close to the workers costs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "tests"))


def _volume(shape, seed=0) -> np.ndarray:
    """Blobs crossing the seams: coarse noise zoomed 8x (a smoothed 512^3 at full size would take a while)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    small = ndimage.zoom(rng.standard_normal(tuple(max(2, s // 8) for s in shape)).astype(np.float32), 8, order=1)
    return (small[tuple(slice(0, s) for s in shape)] > 0.6).astype(np.uint8) * 200


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import zarr

    from _servers import start_s3
    from patchworks import open_image, threshold, tile_process

    shape, chunks = ((128,) * 3, (32,) * 3) if args.smoke else ((512,) * 3, (128,) * 3)
    n_tiles = int(np.prod([s // c for s, c in zip(shape, chunks)]))
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-read-"))
    server = start_s3()
    try:
        data = _volume(shape)
        local = tmp / "in.zarr"
        zarr.create_array(str(local), shape=shape, chunks=chunks, dtype=data.dtype)[...] = data
        bucket = server.make_bucket()
        server.filesystem().put(str(local), f"{bucket}/in.zarr", recursive=True)
        url, so = f"s3://{bucket}/in.zarr", server.storage_options

        server.requests.reset()
        open_image(url, storage_options=so)
        opening = server.requests.snapshot()

        results = {}

        def run(source, name, **kw):
            out = tmp / "out.zarr"
            t0 = time.perf_counter()
            tile_process(source, threshold(100), write_to=out, table=False, overwrite=True, **kw)
            dt = time.perf_counter() - t0
            results[name] = zarr.open_array(str(out / "0"), mode="r")[...]
            shutil.rmtree(out)
            return dt

        times = {"local": [], "s3": []}
        counts = None
        for _ in range(args.repeat):
            times["local"].append(run(local, "local"))
            server.requests.reset()
            times["s3"].append(run(url, "s3", storage_options=so))
            counts = server.requests.snapshot()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    t_local, t_s3 = statistics.median(times["local"]), statistics.median(times["s3"])
    print(f"input {shape} uint8, zarr v3 chunks {chunks}: {n_tiles} tiles, threshold, threads, local output")
    print(f"{'input':<8}{'median s':>10}{'tiles/s':>10}   runs")
    for name, t in (("local", t_local), ("s3", t_s3)):
        print(f"{name:<8}{t:>10.2f}{n_tiles / t:>10.1f}   {', '.join(f'{v:.2f}' for v in times[name])}")
    print(f"ratio s3 / local: {t_s3 / t_local:.2f}")
    counts = {k: v for k, v in counts.items() if v}  # the kinds this run made
    opening = {k: v for k, v in opening.items() if v}
    per_tile = {k: v / n_tiles for k, v in sorted(counts.items())}
    print(f"requests of one S3 run: {dict(sorted(counts.items()))} = "
          + ", ".join(f"{k} {v:.2f}/tile" for k, v in per_tile.items()))
    print(f"of which opening the input (open_image): {dict(sorted(opening.items()))}")
    same = np.array_equal(results["local"], results["s3"])
    print(f"identical labels: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
