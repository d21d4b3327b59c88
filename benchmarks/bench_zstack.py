"""A 2-D segmenter on z-stacks: how well are the planes joined into 3-D objects?

Two stacks with their ground truth: separated ellipsoidal nuclei (z radius
0.6x the lateral one, ``patchworks.testing.separated_nuclei``) and a dense
convex tissue (``dense_tissue``). Each plane is "segmented" by a perfect
per-plane oracle (the true labels of the plane, renumbered), or by a noisy
one (``noisy_planes``: walls jittered by 2 px, 5 % of objects missing, 2 %
split, 2 % fused, in each plane), and the planes are joined by:

- ``patchworks``: ``stitch_planes``, the rule ``tile_process`` uses on
  1-plane tiles (whole planes here);
- ``tiled``: ``tile_process`` itself, 1-plane tiles with in-plane seams
  (perfect segmenter only; the same result up to the in-plane seams);
- ``pairwise 0.5``: the previous rule (mutual best IoU >= 0.5 between two
  planes), for the time ratio;
- ``cellpose 0.5 / 0.25 / 0.1``: Cellpose's ``stitch3D`` (``pip install
  'patchworks[bench]'``; rows say "cellpose not installed" without it).

Every error comes from joining planes. Run::

    python benchmarks/bench_zstack.py            # >= 10^4 objects per stack (minutes)
    python benchmarks/bench_zstack.py --small    # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
import warnings

import numpy as np

from patchworks import tile_process
from patchworks.labels._iou import stitch_planes
from patchworks.testing import (TissueOracle, dense_tissue, noisy_planes, pairwise_planes, separated_nuclei,
                                stitching_errors)


def cellpose_stitch():
    try:
        from cellpose.utils import stitch3D
    except ImportError:
        return None
    logging.getLogger("cellpose").setLevel(logging.ERROR)
    return stitch3D


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny stacks: a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Cellpose divides 0 by 0 on empty planes
    if args.small:
        shapes = {"nuclei": (12, 96, 96), "tissue": (10, 96, 96)}
        tile = (1, 48, 48)
    else:
        shapes = {"nuclei": (144, 512, 512), "tissue": (128, 512, 512)}  # >= 10^4 objects each
        tile = (1, 256, 256)
    stitch3D = cellpose_stitch()
    t0 = time.perf_counter()
    stacks = {"nuclei": separated_nuclei(shapes["nuclei"], seed=args.seed),
              "tissue": dense_tissue(shapes["tissue"], 14, seed=args.seed)}
    print(f"stacks built in {time.perf_counter() - t0:.1f} s; tiles {tile}, in-plane overlap 16; "
          f"the machine may be shared: compare times within one run")
    print(f"{'stack':<14}{'objects':>8}  {'method':<16}{'false merges':>13}{'splits':>8}{'merges %':>9}"
          f"{'splits %':>9}{'mismatched vox':>15}{'time s':>8}")
    ratios, against = [], []
    for name, truth in stacks.items():
        for noisy in (False, True):
            planes = (noisy_planes(truth, seed=args.seed + 1) if noisy
                      else np.stack([TissueOracle(seed=args.seed)(p) for p in truth]))
            case = name + (" noisy" if noisy else "")
            rows = []
            ours, t_ours = timed(stitch_planes, planes)
            rows.append(("patchworks", ours, t_ours))
            if not noisy:
                tiled, t_tiled = timed(tile_process, truth, TissueOracle(seed=args.seed), tile_shape=tile,
                                       overlap=(0, 16, 16), stitch="iou", compute=True, client=False)
                rows.append(("tiled", tiled, t_tiled))
            old, t_old = timed(pairwise_planes, planes)
            rows.append(("pairwise 0.5", old, t_old))
            ratios.append((case, t_ours / t_old))
            for threshold in (0.5, 0.25, 0.1):
                if stitch3D is None:
                    rows.append((f"cellpose {threshold}", None, None))
                    continue
                with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
                    masks, t_cp = timed(stitch3D, planes.astype(np.uint32), threshold)
                rows.append((f"cellpose {threshold}", masks, t_cp))
            errors = {}
            for method, labels, seconds in rows:
                if labels is None:
                    print(f"{case:<14}{'':>8}  {method:<16}cellpose not installed (pip install 'patchworks[bench]')")
                    continue
                e = errors[method] = stitching_errors(labels, truth)
                print(f"{case:<14}{e.n_truth:>8}  {method:<16}{e.false_merges:>13}{e.splits:>8}"
                      f"{100 * e.false_merges / e.n_truth:>9.2f}{100 * e.splits / e.n_truth:>9.2f}"
                      f"{e.mismatched_voxels:>15}{seconds:>8.2f}")
            cellpose = {m: e for m, e in errors.items() if m.startswith("cellpose")}
            if cellpose:  # Cellpose at its best threshold for this data, by merges + splits
                best = min(cellpose, key=lambda m: cellpose[m].false_merges + cellpose[m].splits)
                ours, theirs = (errors["patchworks"].false_merges + errors["patchworks"].splits,
                                cellpose[best].false_merges + cellpose[best].splits)
                against.append(f"{case}: {ours} vs {theirs} ({best}), {ours / max(theirs, 1):.2f}x")
    if against:
        print("merges + splits, patchworks vs Cellpose at its best threshold: " + "; ".join(against))
    print("patchworks / pairwise 0.5 time: " + ", ".join(f"{c} {r:.2f}x" for c, r in ratios))
    print("targets (perfect segmenter): nuclei <= 2 % merges and <= 2 % splits; tissue <= 1 % merges, <= 10 % splits")


if __name__ == "__main__":
    main()
