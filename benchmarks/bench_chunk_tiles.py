"""Tiles in whole input chunks against tiles that cut chunks: what ``tile_shape="auto"`` gains on zarr inputs.

Run from the repository root::

    python benchmarks/bench_chunk_tiles.py            # 96 x 1024 x 1024 uint8, chunks 32 x 256 x 256
    python benchmarks/bench_chunk_tiles.py --smoke    # 48 x 384 x 384, chunks 16 x 64 x 64, under a minute

For one zarr input and one per-tile memory budget it takes the tile shape
``auto_tile_shape`` picks without the input's chunks (what ``"auto"`` did
before) and with them (whole multiples of the chunks, what it does now), and
times ``tile_process(path, threshold(T), tile_shape=..., write_to=...)`` with
each, best of N, on local threads, with no overlap and with one. It also
counts the chunk reads each tiling makes: with a halo, windows reach into the
neighbouring chunks whatever the cores, so whole-chunk cores pay off mostly
without one. The two results are checked to be the same partition.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from patchworks import auto_tile_shape, threshold, tile_process
from patchworks.grid import TileGrid
from patchworks.testing import assert_labels_equivalent, random_blobs


def chunk_reads(shape, tile, overlap, chunks) -> int:
    """Chunks decoded over all tile windows (a chunk read by two windows counts twice)."""
    total = 0
    for t in TileGrid(shape, tile, overlap):
        n = 1
        for sl, c in zip(t.spatial_window, chunks):
            n *= (sl.stop - 1) // c - sl.start // c + 1
        total += n
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape, chunks, budget, overlap = ((48, 384, 384), (16, 64, 64), 2**22, 4) if args.smoke else \
        ((96, 1024, 1024), (32, 256, 256), 2**26, 8)
    repeats = 1 if args.smoke else args.repeats
    root = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    try:
        image = (random_blobs(shape, seed=0, sigma=3) * 255).astype(np.uint8)
        src = root / "image.zarr"
        zarr.create_array(store=src, data=image, chunks=chunks)
        del image
        print(f"input {shape} uint8, chunks {chunks}, {budget / 2**20:.0f} MiB per tile, best of {repeats}, "
              "local threads")
        print("| overlap | tiling | tile shape | tiles | chunk reads | time s |\n|---|---|---|---|---|---|")
        for h in (0, overlap):
            before = auto_tile_shape(shape, "uint8", budget=budget, overlap=h)
            now = auto_tile_shape(shape, "uint8", budget=budget, overlap=h, chunks=chunks)
            rows, results = [], {}
            for name, tile in (("cuts chunks (before)", before), ("whole chunks (now)", now)):
                best = np.inf
                for r in range(repeats):
                    out = root / f"{name[:5]}-{h}-{r}.zarr"
                    start = time.perf_counter()
                    tile_process(str(src), threshold(127), tile_shape=tile, overlap=h, write_to=out, client=False,
                                 progress=False)
                    best = min(best, time.perf_counter() - start)
                    results[name] = out
                rows.append((name, tile, TileGrid(shape, tile).n_tiles, chunk_reads(shape, tile, h, chunks), best))
            a, b = (np.asarray(zarr.open_array(p)[...]) for p in results.values())
            assert_labels_equivalent(a, b)
            for name, tile, n, reads, t in rows:
                print(f"| {h} | {name} | {tile} | {n} | {reads} | {t:.2f} |")
            print(f"| {h} | ratio now / before | | | {rows[1][3] / rows[0][3]:.2f} | {rows[1][4] / rows[0][4]:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
