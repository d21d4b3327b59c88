"""Built-in segmenters with their defaults on real nuclei, against a hand annotation.

Run from the repository root::

    python benchmarks/bench_segmenters.py                       # the 256² crop shipped in tests/data
    python benchmarks/bench_segmenters.py IMAGE.tif MASK.tif    # any image and its annotated labels

The whole image of the issue is the 512² Data Science Bowl 2018 nuclei image
with its 125 hand-annotated nuclei that the ``stardist`` wheel ships
(``stardist/data/images/img2d.tif`` and ``mask2d.tif``; ``pip download
--no-deps stardist`` and unzip them, nothing needs installing).

For each setting the table gives the number of objects found, the matches
at IoU > 0.5 (one to one by construction) and F1 = 2 TP / (truth + found).
``log_blobs`` is a spot detector: its rows count detections whose centre lies
in an annotated nucleus (``hit``), one per nucleus at most.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from patchworks import log_blobs, watershed

CROP = Path(__file__).resolve().parent.parent / "tests" / "data" / "dsb2018_nuclei_crop.npz"


def matches(truth, labels, iou=0.5):
    t, p = truth.ravel().astype(np.int64), labels.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    pairs, counts = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    union = np.bincount(t)[pairs[0]] + np.bincount(p)[pairs[1]] - counts
    return int((counts / union > iou).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="image (TIFF); default: the crop in tests/data")
    parser.add_argument("mask", nargs="?", help="its annotated labels (TIFF)")
    args = parser.parse_args(argv)
    if args.image:
        import tifffile

        image, truth = tifffile.imread(args.image), tifffile.imread(args.mask)
    else:
        data = np.load(CROP)
        image, truth = data["image"], data["labels"]
    n_true = len(np.unique(truth[truth > 0]))
    print(f"image {image.shape} {image.dtype}, {n_true} annotated objects")
    print(f"{'setting':<48} {'found':>6} {'TP':>5} {'F1':>6}")
    rows = [("watershed(image)  [defaults]", watershed(image)),
            ("watershed(image, sigma=0, min_distance=5)  [old]", watershed(image, sigma=0, min_distance=5)),
            ("watershed(image, sigma=1, min_distance=5)", watershed(image, sigma=1, min_distance=5))]
    for name, fn in rows:
        labels = fn(image)
        found = len(np.unique(labels[labels > 0]))
        tp = matches(truth, labels)
        print(f"{name:<48} {found:>6} {tp:>5} {2 * tp / (n_true + found):>6.3f}")
    fn = watershed(image)
    print(f"  defaults chose: threshold {fn.threshold:.4g} (Otsu), diameter {fn.diameter:.3g}, "
          f"min_distance {fn.min_distance}, sigma {fn.sigma:.3g}")
    print(f"{'spots (nucleus scale min_sigma=4, max_sigma=10)':<48} {'found':>6} {'hit':>5} {'F1':>6}")
    values = image.astype(np.float64)
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    for name, fn in (("log_blobs(image)  [noise from neighbours]", log_blobs(image, min_sigma=4, max_sigma=10)),
                     ("log_blobs(threshold=3 x value spread)  [old]",
                      log_blobs(threshold=3 * spread, min_sigma=4, max_sigma=10))):
        blobs = fn.blobs(image)
        hit = truth[tuple(np.round(blobs[:, :2]).astype(int).T)]
        n_hit = len(np.unique(hit[hit > 0]))
        print(f"{name:<48} {len(blobs):>6} {n_hit:>5} {2 * n_hit / (n_true + len(blobs)):>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
