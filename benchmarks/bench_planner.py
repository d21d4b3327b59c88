"""The planner alone (union-find over seam pairs, then the per-tile plans) on synthetic counts and pairs.

    python benchmarks/bench_planner.py                 # 1e5, 3e5, 1e6 tiles
    python benchmarks/bench_planner.py --tiles 1e4     # a quick look (CI smoke size)

Each tile has 100 labels and 20 seam pairs with the next tile (random local
ids), the shape used in the scale issue. Printed per size: seconds, the
process's peak RSS above the inputs, and the object count (a check that two
versions give the same plan).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import peak_rss  # noqa: E402  (the same RSS sampler as the scale benchmark)
from patchworks.labels._merge import plan_relabel  # noqa: E402


def synthetic(n_tiles: int, per_tile: int = 100, pairs_per_tile: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.full(n_tiles, per_tile, np.uint64)
    offsets = np.arange(n_tiles, dtype=np.uint64) * per_tile
    t = np.repeat(np.arange(n_tiles - 1, dtype=np.uint64), pairs_per_tile)
    a = offsets[t] + rng.integers(1, per_tile + 1, t.size).astype(np.uint64)
    b = offsets[t + 1] + rng.integers(1, per_tile + 1, t.size).astype(np.uint64)
    return counts, np.stack([a, b], 1)


def measure(n_tiles: int) -> tuple[float, float, int, int]:
    counts, pairs = synthetic(n_tiles)

    def plan_and_one_lookup():
        plan = plan_relabel(counts, pairs, sequential=True)
        plan.tiles[n_tiles - 1].lookup(np.uint32)  # a plan is made on demand: take one
        return plan

    plan, seconds, mb = peak_rss(plan_and_one_lookup)
    return seconds, mb / 2**10, len(pairs), plan.n_objects


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", default="1e5,3e5,1e6", help="comma list of tile counts (default 1e5,3e5,1e6)")
    args = ap.parse_args(argv)
    print(f"{'tiles':>9} {'pairs':>10} {'seconds':>8} {'+GiB':>6} {'objects':>11}")
    for text in args.tiles.split(","):
        n = int(float(text))
        seconds, gib, n_pairs, n_objects = measure(n)
        print(f"{n:>9} {n_pairs:>10} {seconds:>8.2f} {gib:>6.2f} {n_objects:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
