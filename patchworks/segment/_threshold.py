"""Built-in tile functions: label the connected components of a thresholded tile.

They are small picklable objects (not closures) so a cluster ships them
cheaply, and they carry their ``connectivity`` so ``tile_process`` can check
that labelling and merging agree.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, replace
from typing import ClassVar

import cc3d
import numpy as np
from scipy import ndimage

# skimage-style connectivity (number of axes a neighbour may differ in) -> cc3d's neighbour count
_CC3D_CONNECTIVITY = {(2, 1): 4, (2, 2): 8, (3, 1): 6, (3, 2): 18, (3, 3): 26}


def label_components(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Label the connected components of ``mask`` (uint32, 0 = background).

    ``connectivity`` follows scikit-image: 1 joins face neighbours,
    ``mask.ndim`` joins every neighbour of the 3x3(x3) block.

    Examples
    --------
    >>> label_components(np.array([[1, 0], [0, 1]], bool), connectivity=2).tolist()
    [[1, 0], [0, 1]]
    """
    mask = np.asarray(mask, dtype=bool)
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise ValueError(f"connectivity={connectivity!r}: use 1..{mask.ndim} for a {mask.ndim}-D tile")
    key = (mask.ndim, connectivity)
    if key in _CC3D_CONNECTIVITY:
        # cc3d 4.1 mislabels some *bool* 2-D inputs with 8-connectivity (stray
        # labels in background rows); the zero-copy uint8 view is labelled right.
        # Its binary mode (binary_image=True, what a bool input takes) is a quarter
        # faster on 512^2 masks but mislabels there too, and with 26-connectivity
        # raises on a (1, 1, 3) mask [1, 0, 1] ("Label 2 cannot be mapped to
        # union-find array of length 2"): values mode everywhere.
        return cc3d.connected_components(np.ascontiguousarray(mask).view(np.uint8),
                                         connectivity=_CC3D_CONNECTIVITY[key], out_dtype=np.uint32)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, _ = ndimage.label(mask, structure=structure, output=np.uint32)
    return labels


@dataclass(frozen=True)
class Threshold:
    """Tile function: foreground is ``tile > value``, labelled as connected components.

    ``connectivity=None`` takes the one ``tile_process`` merges with.
    Its labels are always ``1..n`` without gaps (``gap_free``), so a tile
    staged whole needs no count of the ids present.
    """

    value: float
    connectivity: int | None = None
    method: str = "threshold"
    gap_free: ClassVar[bool] = True

    def with_connectivity(self, connectivity: int) -> "Threshold":
        return replace(self, connectivity=connectivity)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        return label_components(np.asarray(tile) > self.value, self.connectivity or 1)


def _is_number(value) -> bool:
    """A real scalar (Python or numpy, 0-d array included): never an image, so it can only be a threshold."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes, os.PathLike)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"


def image_or_number(first, value, *, who: str, name: str):
    """Split a factory's first argument into ``(image, threshold)``.

    The built-in factories take the image first; a bare number in that place
    cannot be an image, so it is the threshold (the calling convention of
    earlier releases, kept). A number there *and* by keyword is ambiguous.
    """
    if not _is_number(first):
        return first, value
    if value is not None:
        raise ValueError(f"{who}({first!r}, {name}={value!r}): two thresholds; the first argument is the image "
                         f"the function will run on: give {who}(image, {name}={value!r}) or {who}({name}={value!r})")
    return None, float(first)


def _check_single_channel(source, who: str) -> None:
    axes = getattr(source, "axes", None) or ""
    if "c" in axes:
        raise ValueError(f"{who}: image has a channel axis (axes {axes!r}); one threshold over mixed channels "
                         f"means nothing: choose a channel with channel=N")


def threshold(image=None, *, value: float | None = None, connectivity: int | None = None,
              **open_kwargs) -> Threshold:
    """Tile function labelling the components of ``tile > value``.

    Like every built-in factory it takes the image first; a fixed threshold
    needs nothing from it, so the image is optional (given, it is checked to
    be single-channel before any tile runs). A number in first place is the
    value: ``threshold(0.5)`` is ``threshold(value=0.5)``.

    Parameters
    ----------
    image : array-like or path, optional
        The image that will be processed (anything :func:`patchworks.open_image` reads).
    value : float
        Foreground is ``tile > value``.
    connectivity : int, optional
        Labelling connectivity; ``None`` takes the one ``tile_process`` uses.
    **open_kwargs
        ``component``, ``level``, ``channel``: passed to :func:`patchworks.open_image`.

    Examples
    --------
    >>> fn = threshold(0.5)
    >>> fn(np.array([[0.9, 0.1, 0.8]])).tolist()
    [[1, 0, 2]]
    >>> threshold(np.zeros((4, 4)), value=0.5) == fn
    True
    """
    image, value = image_or_number(image, value, who="threshold", name="value")
    if value is None:
        hint = "threshold(image, value=0.5)" if image is not None else "threshold(value=0.5)"
        raise ValueError(f"threshold: value=None; give the cut, {hint}, or let otsu(image) estimate it "
                         f"from the whole image")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"threshold: value={value!r}: give a number (foreground is tile > value)") from None
    if not np.isfinite(value):
        raise ValueError(f"threshold={value!r}: give a finite number")
    if image is not None:
        from ..io._sources import open_image

        _check_single_channel(open_image(image, **open_kwargs), "threshold")
    return Threshold(value, connectivity)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a sample of intensities.

    The rule of scikit-image, except for ties: when a range of cuts separates
    the classes equally well (an empty gap in the histogram) the middle of the
    gap is returned rather than its lowest end.

    Examples
    --------
    >>> otsu_threshold(np.r_[np.full(50, 10), np.full(50, 20)])
    14.5
    """
    values = np.asarray(values).ravel()
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if values.size == 0:
        raise ValueError("cannot estimate an Otsu threshold from an empty sample")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return lo
    if values.dtype.kind in "iu" and hi - lo <= 1 << 16:
        # integers: one bin per value, so the cut falls between two integers as in scikit-image
        hist = np.bincount((values - values.min()).astype(np.int64))
        centers = np.arange(hist.size) + lo
    else:
        hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
        centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * centers) / w1
    m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    # Every cut inside an empty stretch of the histogram splits the classes the
    # same way; take the middle of that plateau, not its lowest end (which sits
    # on the tail of the lower class and lets its noise through).
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run_end = best[0] + np.argmax(np.diff(np.r_[best, best[-1] + 2]) != 1)
    return float((centers[best[0]] + centers[run_end]) / 2)


def sample_blocks(image, *, n_voxels: int = 1 << 22, n_blocks: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Reproducible windows of the image spread over all of it: the whole image when it is small.

    Reads ``n_blocks`` small windows at seeded random places rather than the
    whole image, so it is cheap for an out-of-core source. Windows keep their
    shape, so neighbours (noise from differences, object sizes) can be measured.
    """
    shape = tuple(image.shape)
    total = int(np.prod(shape))
    if total <= n_voxels:
        return [np.asarray(image[tuple(slice(None) for _ in shape)])]
    side = max(1, int((n_voxels / n_blocks) ** (1 / len(shape))))
    block = tuple(min(side, s) for s in shape)
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_blocks):
        start = [int(rng.integers(0, s - b + 1)) for s, b in zip(shape, block)]
        parts.append(np.asarray(image[tuple(slice(a, a + b) for a, b in zip(start, block))]))
    return parts


def sample_values(image, *, n_voxels: int = 1 << 22, n_blocks: int = 64, seed: int = 0) -> np.ndarray:
    """A reproducible sample of voxel values spread over the whole image (see :func:`sample_blocks`)."""
    return np.concatenate([b.ravel() for b in sample_blocks(image, n_voxels=n_voxels, n_blocks=n_blocks,
                                                             seed=seed)])


def otsu(image, *, connectivity: int | None = None, n_voxels: int = 1 << 22, **open_kwargs) -> Threshold:
    """Tile function thresholding at Otsu's value, estimated once for the whole image.

    A per-tile Otsu would put the cut at a different intensity in every tile
    and draw seams into the result; one value from a sample of the whole
    image keeps the tiled result equal to whole-image labelling.

    Parameters
    ----------
    image : array-like or path
        The image that will be processed (anything :func:`patchworks.open_image` reads).
    connectivity : int, optional
        Labelling connectivity; ``None`` takes the one ``tile_process`` uses.
    n_voxels : int
        Size of the sample the threshold is estimated from.
    **open_kwargs
        ``component``, ``level``, ``channel``: passed to :func:`patchworks.open_image`.
    """
    from ..io._sources import open_image

    if _is_number(image) or image is None:
        raise TypeError(f"otsu(image={image!r}): otsu estimates its threshold from the image, so it takes the image "
                        f"(array or path) first; for a fixed value use threshold({image if image is not None else 0.5!r})")
    source = open_image(image, **open_kwargs)
    _check_single_channel(source, "otsu")
    values = sample_values(source, n_voxels=n_voxels)
    return Threshold(otsu_threshold(values), connectivity, method="otsu")
