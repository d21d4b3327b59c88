"""CPU time per tile of the object table's partials (``tile_partials``) on the label benchmark's tiles.

Run from the repository root (at two commits to compare them; CPU time, best of the rounds)::

    python benchmarks/bench_partials.py            # 512^2 (30 % foreground) and 128^3 (8 %) uint8 tiles
    python benchmarks/bench_partials.py --rounds 3

Each tile is labelled with cc3d (untimed); the image is measured as uint8
(the exact integer path), as float32 (the float path) and not at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_labels import THRESHOLD, make_blobs  # noqa: E402

CASES = {"512^2 uint8, 30 % foreground": ((2048, 2048), 512, (8, 1.0, 0.30)),
         "128^3 uint8, 8 % foreground": ((256, 256, 256), 128, (8, 1.2, 0.08))}


def tiles(shape, tile, params):
    import cc3d

    image = make_blobs(shape, *params)
    out = []
    for index in np.ndindex(*(s // tile for s in shape)):
        block = image[tuple(slice(i * tile, (i + 1) * tile) for i in index)]
        labels = cc3d.connected_components(block > THRESHOLD, connectivity=2 * block.ndim).astype(np.uint32)
        out.append((labels, int(labels.max()), block))
    return out


def per_tile_ms(blocks, kind: str, rounds: int) -> float:
    from patchworks.labels._table import tile_partials

    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for labels, n, block in blocks:
            image = None if kind == "none" else block[None].astype(kind, copy=False)
            tile_partials(labels, n, (0,) * labels.ndim, image)
        best = min(best, (time.process_time() - t0) / len(blocks))
    return best * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="best of N rounds over the tiles (default 5)")
    args = ap.parse_args(argv)
    import patchworks

    print(f"tile_partials of {Path(patchworks.__file__).parent}, CPU ms per tile, best of {args.rounds}")
    for name, (shape, tile, params) in CASES.items():
        blocks = tiles(shape, tile, params)
        row = [f"{kind} {per_tile_ms(blocks, kind, args.rounds):6.2f}" for kind in ("uint8", "float32", "none")]
        print(f"  {name:30s}  " + "   ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
