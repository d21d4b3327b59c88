"""Helpers for testing tile functions and tiled results (public).

``assert_labels_equivalent`` compares two label images up to renaming: the
check every tiled-versus-whole-image test in this project, and in yours,
should use.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["assert_labels_equivalent", "label_mismatches", "random_blobs"]


def label_mismatches(a, b) -> dict:
    """Compare two label images up to renaming.

    Returns a dict with ``background`` (voxels that are 0 in one and not in
    the other), ``merged`` (labels of ``a`` that map to several labels of
    ``b``... i.e. ``a`` split in ``b``) and ``split`` the other way round,
    each a list of example ids.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} != {b.shape}")
    fa, fb = a != 0, b != 0
    background = int(np.count_nonzero(fa != fb))
    both = fa & fb
    pairs = np.unique(np.stack([a[both].astype(np.uint64), b[both].astype(np.uint64)]), axis=1)
    ua, ca = np.unique(pairs[0], return_counts=True)
    ub, cb = np.unique(pairs[1], return_counts=True)
    return {
        "background": background,
        "split_in_b": ua[ca > 1][:10].tolist(),   # one label of a -> several of b
        "merged_in_b": ub[cb > 1][:10].tolist(),  # several labels of a -> one of b
    }


def assert_labels_equivalent(a, b) -> None:
    """Assert that ``a`` and ``b`` are the same partition up to renaming.

    Same shape, same background (0), and a one-to-one correspondence between
    the labels of ``a`` and those of ``b``.

    Examples
    --------
    >>> assert_labels_equivalent([[1, 1, 0, 2]], [[7, 7, 0, 3]])
    >>> assert_labels_equivalent([[1, 1, 0, 2]], [[7, 7, 0, 7]])
    Traceback (most recent call last):
    ...
    AssertionError: labels differ: several labels of a are one label in b (e.g. [7])
    """
    report = label_mismatches(a, b)
    problems = []
    if report["background"]:
        problems.append(f"{report['background']} voxels are background in one and labelled in the other")
    if report["split_in_b"]:
        problems.append(f"labels of a are split in b (e.g. {report['split_in_b']})")
    if report["merged_in_b"]:
        problems.append(f"several labels of a are one label in b (e.g. {report['merged_in_b']})")
    if problems:
        raise AssertionError("labels differ: " + "; ".join(problems))


def random_blobs(shape, *, density: float = 0.3, sigma: float = 2.0, seed: int = 0,
                 dtype=np.float32) -> np.ndarray:
    """Smooth random image whose ``> 0.5`` mask has blobs covering about ``density``.

    Blobs of a few ``sigma`` across cross tile seams in every direction,
    which makes it a good test image for tiled labelling.

    Examples
    --------
    >>> img = random_blobs((32, 32), seed=1)
    >>> img.shape, img.dtype
    ((32, 32), dtype('float32'))
    """
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    cut = np.quantile(noise, 1 - density) if noise.size else 0.0
    # map so that the cut sits at 0.5 and values stay in [0, 1]
    scale = float(np.abs(noise - cut).max()) or 1.0
    return np.clip(0.5 + 0.5 * (noise - cut) / scale, 0, 1).astype(dtype)
