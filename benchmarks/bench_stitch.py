"""Benchmark of instance-safe stitching: ``stitch="iou"`` against ``stitch="touch"`` on a dense tissue.

Run from the repository root::

    python benchmarks/bench_stitch.py            # 8192^2 tissue, 512^2 tiles, overlap 32
    python benchmarks/bench_stitch.py --smoke    # 1024^2, a few seconds (CI)

The image is a synthetic tissue of touching cells (``patchworks.testing.dense_tissue``,
a Voronoi tessellation, every pixel in a cell), written to a zarr v3 store with
chunks = tiles, outside all timings. The tile function is an oracle
(``patchworks.testing.TissueOracle``): it returns the ground truth inside its
window, renumbered, as a perfect segmenter would. So every error in the output
comes from stitching:

* touch -- every pair of labels touching across a seam is joined: touching cells
           pressed against a seam fuse (thousands of false merges);
* iou   -- labels are joined only when they are each other's best IoU match in the
           band the two tiles share (overlap 32 on each side), one to one.

For each it prints false merges, splits and mismatched pixels
(``patchworks.testing.stitching_errors``), the best-of-N end-to-end time, the
iou / touch time ratio and the peak RSS of this process during the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("patchworks") is None and (_ROOT / "patchworks").is_dir():
    sys.path.insert(0, str(_ROOT))

import zarr  # noqa: E402

from patchworks import tile_process  # noqa: E402
from patchworks.testing import TissueOracle, dense_tissue, stitching_errors  # noqa: E402

RATIO_TARGET = 1.3      # iou end-to-end / touch end-to-end


class PeakRSS:
    """Largest resident memory of this process while the block runs, sampled every 10 ms."""

    def __enter__(self):
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self.peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self._base) / 2**20


def run_case(image_path, truth, stitch, tile, overlap, repeats, workdir):
    best, peak, out = float("inf"), 0.0, None
    for r in range(repeats):
        target = Path(workdir) / f"{stitch}-{r}.zarr"
        with PeakRSS() as rss:
            start = time.perf_counter()
            tile_process(image_path, TissueOracle(), tile_shape=tile, overlap=overlap, stitch=stitch,
                         write_to=str(target), client=False, progress=False)
            best = min(best, time.perf_counter() - start)
        peak = max(peak, rss.mb)
        out = target
    errors = stitching_errors(zarr.open_array(str(out / "0"), mode="r")[...], truth)  # level 0 of the label image
    return best, peak, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny image for CI")
    parser.add_argument("--size", type=int, help="image side (default 8192; 1024 with --smoke)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--cell", type=int, default=20, help="mean cell diameter in pixels (default 20)")
    parser.add_argument("--repeats", type=int, default=None, help="best of N (default 3; 1 with --smoke)")
    args = parser.parse_args(argv)
    size = args.size or (1024 if args.smoke else 8192)
    tile = min(args.tile, 256) if args.smoke else args.tile
    repeats = args.repeats or (1 if args.smoke else 3)

    with tempfile.TemporaryDirectory(prefix="bench-stitch-") as workdir:
        truth = dense_tissue((size, size), args.cell, seed=0)
        image_path = str(Path(workdir) / "tissue.zarr")
        zarr.create_array(image_path, shape=truth.shape, chunks=(tile, tile), dtype=truth.dtype)[...] = truth
        print(f"tissue {size}x{size}, {int(truth.max())} cells of about {args.cell} px, tiles {tile}^2, "
              f"overlap {args.overlap}, oracle tile function, best of {repeats}")
        rows = {}
        for stitch, overlap in (("touch", args.overlap), ("iou", args.overlap)):
            rows[stitch] = run_case(image_path, truth, stitch, tile, overlap, repeats, workdir)

    print(f"{'stitch':<8}{'false merges':>14}{'splits':>8}{'mismatched px':>15}{'time s':>9}{'peak MB':>9}")
    for stitch, (seconds, peak, errors) in rows.items():
        print(f"{stitch:<8}{errors.false_merges:>14}{errors.splits:>8}{errors.mismatched_voxels:>15}"
              f"{seconds:>9.2f}{peak:>9.0f}")
    ratio = rows["iou"][0] / rows["touch"][0]
    iou_errors = rows["iou"][2]
    exact = iou_errors.false_merges == 0 and iou_errors.splits == 0
    print(f"iou / touch time: {ratio:.2f}x (target <= {RATIO_TARGET}x: {'met' if ratio <= RATIO_TARGET else 'MISSED'})")
    print(f"iou false merges and splits: {iou_errors.false_merges} / {iou_errors.splits} "
          f"(target 0 / 0: {'met' if exact else 'MISSED'})")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
