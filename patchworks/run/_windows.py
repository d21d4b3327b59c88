"""Blending windows: spatial float32 weights for overlapping tiles or patches.

Every window is strictly positive, so dividing an accumulated weighted sum by
the accumulated weight is defined everywhere and gives a constant input back
as the same constant, whatever the overlap. Weights carry no channel axis.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WINDOWS", "make_window", "window_for_region"]

#: Window names understood by :func:`make_window` (``"crop"`` needs no weights; callers handle it).
WINDOWS = ("mean", "hann", "gaussian")


def _shape(shape, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{name}={shape!r}: expected a tuple of ints, one per spatial axis") from None
    if not out or any(s < 1 for s in out):
        raise ValueError(f"{name}={out!r}: every axis of a window must be at least 1 voxel long")
    return out


def _hann_1d(n: int) -> np.ndarray:
    # sample sin^2 at voxel centres (i + 0.5) / n: symmetric, peak ~1, never 0 at the edges
    i = np.arange(n, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / n) ** 2


def _gauss_1d(n: int, sigma_scale: float) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    sigma = sigma_scale * n
    return np.exp(-0.5 * ((i - (n - 1) / 2) / sigma) ** 2)


def _outer(profiles) -> np.ndarray:
    out = np.ones((), dtype=np.float64)
    for p in profiles:
        out = np.multiply.outer(out, p)
    return out


def make_window(kind, shape, *, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Blending weights of a window of ``shape`` voxels (spatial axes only).

    Parameters
    ----------
    kind : {"mean", "hann", "gaussian"} or array-like
        * ``"mean"``: all ones (plain average of the overlapping tiles).
        * ``"hann"``: separable product over axes of
          ``w(i) = sin(pi * (i + 0.5) / n) ** 2`` for ``i = 0..n-1`` -- the
          Hann window sampled at voxel centres, so no weight is 0 (the edge
          value is ``sin(pi / (2 n)) ** 2 > 0``) and the peak is 1 for odd
          ``n``, just below 1 for even ``n``.
        * ``"gaussian"``: separable product of
          ``exp(-((i - (n - 1) / 2) / sigma) ** 2 / 2)`` with
          ``sigma = sigma_scale * n`` per axis, scaled to a peak of exactly 1,
          then clipped from below at ``floor`` (as MONAI does) so that tile
          corners still count.
        * an array of exactly ``shape``: user weights, which must be finite
          and > 0; returned as float32.
    shape : int or tuple of int
        Window size per spatial axis.
    sigma_scale : float, default 0.125
        Gaussian sigma as a fraction of the window size on each axis.
    floor : float, default 1e-3
        Smallest Gaussian weight, in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        float32 weights of ``shape``, all finite and > 0.

    Examples
    --------
    >>> make_window("hann", 4).round(3)
    array([0.146, 0.854, 0.854, 0.146], dtype=float32)
    >>> w = make_window("gaussian", (5, 5))
    >>> float(w.max()), float(w.min()) >= 1e-3
    (1.0, True)
    """
    shape = _shape(shape)
    if isinstance(kind, str):
        if kind == "mean":
            return np.ones(shape, dtype=np.float32)
        if kind == "hann":
            return _outer(_hann_1d(n) for n in shape).astype(np.float32)
        if kind == "gaussian":
            if not (np.isfinite(sigma_scale) and sigma_scale > 0):
                raise ValueError(f"sigma_scale={sigma_scale!r}: use a positive fraction of the window, e.g. 0.125")
            if not (np.isfinite(floor) and 0 < floor <= 1):
                raise ValueError(f"floor={floor!r}: use a value in (0, 1], e.g. 1e-3")
            w = _outer(_gauss_1d(n, sigma_scale) for n in shape)
            w /= w.max()
            return np.maximum(w, floor).astype(np.float32)
        if kind == "crop":
            raise ValueError("window='crop' has no weights: each voxel is taken from its own tile's core; "
                             "handle it without an accumulator")
        raise ValueError(f"window={kind!r} is unknown; use one of 'crop', {', '.join(map(repr, WINDOWS))} "
                         f"or an array of weights of the window's shape")
    return _check_user_window(kind, shape)


def _check_user_window(weights, shape) -> np.ndarray:
    try:
        w = np.asarray(weights)
    except Exception:  # noqa: BLE001 - anything that is not array-like
        w = None
    if w is None or w.dtype == object or not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_):
        raise TypeError(f"window={type(weights).__name__}: expected 'mean', 'hann', 'gaussian', 'crop' "
                        f"or a numeric array of weights of shape {shape}")
    if np.iscomplexobj(w):
        raise TypeError("window: complex weights are not supported; pass real weights > 0")
    if w.shape != shape:
        raise ValueError(f"window array has shape {w.shape}; expected the full window shape {shape} "
                         f"(tile core + 2 * overlap per spatial axis, no channel axis)")
    w = w.astype(np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("window array holds NaN or infinite weights; every weight must be finite and > 0")
    if not np.all(w > 0):
        raise ValueError(f"window array has weights <= 0 (min {float(w.min())!r}); every weight must be > 0 "
                         f"so that every voxel is covered, e.g. np.maximum(weights, 1e-3)")
    return w


def window_for_region(kind, full_shape, region) -> np.ndarray:
    """Weights of the part ``region`` of a full window of ``full_shape``.

    A window clipped at the image edge takes the weights of the full window
    cropped to the part that lies inside the image (``region``, slices
    relative to the full window), so a voxel's weight depends only on its
    position relative to its tile, not on where the image ends.

    Parameters
    ----------
    kind : str or array-like
        As for :func:`make_window`.
    full_shape : tuple of int
        Shape of the unclipped window.
    region : tuple of slice
        Part of the full window to keep, one slice per axis.

    Examples
    --------
    >>> window_for_region("hann", (4,), (slice(2, 4),)).round(3)
    array([0.854, 0.146], dtype=float32)
    """
    full = make_window(kind, full_shape) if isinstance(kind, str) else _check_user_window(kind, _shape(full_shape))
    return np.ascontiguousarray(full[tuple(region)])


def unit_weights(weights) -> bool:
    """Whether ``weights`` are all ones (``"mean"``, or a user's): a prediction then enters a blend as it is,
    with no product first."""
    return weights is not None and bool((np.asarray(weights) == 1).all())
