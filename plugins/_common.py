"""Plumbing shared by the segmenter plugins.

Lazy imports with an install hint, one model per worker process (loaded on
first use, never pickled with the tile function), a retry after a GPU
out-of-memory error, the channels-last layout both libraries want, the
plane-by-plane run of a 2-D model on a stack, and one intensity range taken
from the whole image so that no tile is normalised on its own.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
from dataclasses import dataclass

import numpy as np

from patchworks.labels._iou import stitch_planes

logger = logging.getLogger(__name__)


def require(module: str, extra: str):
    """Import ``module`` or raise an ImportError that names the pip command."""
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as err:
        # csbdeep (under StarDist) raises RuntimeError("Please install TensorFlow ...")
        if isinstance(err, RuntimeError) and "install" not in str(err).lower():
            raise
        raise ImportError(f"{module} could not be imported ({err}); install it with: "
                          f'pip install "patchworks[{extra}]"') from err


@dataclass
class _Loaded:
    model: object
    lock: threading.Lock  # one call at a time per model: the network already fills the GPU / the cores


_MODELS: dict = {}
_LOAD_LOCK = threading.Lock()  # threads of one worker must not load the same model twice


def cached_model(key, load) -> _Loaded:
    """The model for ``key`` in this process, loading it with ``load()`` the first time."""
    with _LOAD_LOCK:
        entry = _MODELS.get(key)
        if entry is None:
            logger.info("loading model %s", key)
            entry = _MODELS[key] = _Loaded(load(), threading.Lock())
    return entry


def clear_model_cache() -> None:
    """Forget every model loaded in this process (tests; freeing GPU memory)."""
    with _LOAD_LOCK:
        _MODELS.clear()
    free_memory()


_OOM_TYPES = {"OutOfMemoryError", "ResourceExhaustedError"}  # torch.cuda's, TensorFlow's


def is_out_of_memory(err: BaseException) -> bool:
    if any(cls.__name__ in _OOM_TYPES for cls in type(err).__mro__):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "oom when allocating" in text)


def free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # only when already in use: importing it just to empty a cache is waste
    if torch is not None:
        try:
            torch.cuda.empty_cache()
        except Exception:  # no CUDA build / no device: nothing cached to free
            pass


def retry_out_of_memory(call, *, what: str, shape):
    """``call()``, retried once after freeing cached memory if it runs out of GPU memory."""
    for attempt in (1, 2):
        try:
            return call()
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            if attempt == 2:
                raise RuntimeError(
                    f"{what} ran out of GPU memory on a window of shape {tuple(shape)}, again after freeing "
                    f"cached memory ({type(err).__name__}: {err}); use a smaller tile_shape (and overlap) in "
                    f"tile_process, or a smaller batch_size") from err
            logger.warning("%s ran out of GPU memory on a window of shape %s; freeing cached memory and retrying once",
                           what, tuple(shape))
        # outside the except block: the failed call's frames, and the tensors they hold, are released by now
        free_memory()


def channels_last(window, channel_axis, what: str):
    """The window with its channel axis (if any) moved last, and its spatial shape."""
    window = np.asarray(window)
    if channel_axis is None:
        return window, window.shape, False
    if not -window.ndim <= channel_axis < window.ndim:
        raise ValueError(f"{what}: channel_axis={channel_axis} is out of range for a window of shape {window.shape}; "
                         f"pass the channel axis of the image (the same channel_axis as tile_process), or None")
    moved = np.moveaxis(window, channel_axis, -1)
    return moved, moved.shape[:-1], True


def as_labels(masks, shape, what: str) -> np.ndarray:
    """uint32 labels of exactly ``shape`` (the libraries squeeze length-1 axes away)."""
    masks = np.asarray(masks)
    if masks.shape != tuple(shape):
        if masks.size != int(np.prod(shape)):
            raise ValueError(f"{what} returned labels of shape {masks.shape} for an input of spatial shape "
                             f"{tuple(shape)}")
        masks = masks.reshape(shape)
    if masks.dtype.kind not in "iub":
        raise TypeError(f"{what} returned {masks.dtype} labels; expected integers")
    if masks.size and masks.dtype.kind == "i" and masks.min() < 0:
        raise ValueError(f"{what} returned negative labels")
    if masks.size and int(masks.max()) > np.iinfo(np.uint32).max:
        return masks.astype(np.uint64)
    return masks.astype(np.uint32, copy=False)


def plane_by_plane(segment_plane, stack: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Run a 2-D ``segment_plane`` on each plane of ``stack`` (axis 0) and join the planes (``stitch_planes``)."""
    planes = np.stack([segment_plane(stack[z]) for z in range(stack.shape[0])])
    return stitch_planes(planes, iou_threshold)


def check_iou_threshold(iou_threshold) -> float:
    value = float(iou_threshold)
    if not 0 < value <= 1:
        raise ValueError(f"iou_threshold={iou_threshold!r}: give a number in (0, 1], e.g. 0.5")
    return value


# -- one intensity range for the whole image (per-tile normalisation draws seams) ------


class _ChannelView:
    """One channel of an array-like, without reading the others (for sampling)."""

    def __init__(self, source, axis: int, index: int):
        self.source, self.axis, self.index = source, axis, index
        self.shape = tuple(s for i, s in enumerate(source.shape) if i != axis)

    def __getitem__(self, key):
        key = list(key)
        key.insert(self.axis, slice(self.index, self.index + 1))
        return np.squeeze(np.asarray(self.source[tuple(key)]), axis=self.axis)


def image_intensity_range(image, percentiles=(1, 99.8), *, channel_axis=None, n_voxels: int = 1 << 22,
                          **open_kwargs) -> tuple[tuple[float, float], ...]:
    """Intensities at ``percentiles`` of a sample of the whole image, one ``(lo, hi)`` per channel.

    Reads a reproducible sample spread over the image, not the whole image.

    Examples
    --------
    >>> img = np.arange(1000.0).reshape(10, 100)
    >>> image_intensity_range(img, (0, 100))
    ((0.0, 999.0),)
    >>> image_intensity_range(np.stack([img, 2 * img]), (0, 100), channel_axis=0)
    ((0.0, 999.0), (0.0, 1998.0))
    """
    from patchworks import open_image
    from patchworks.segment._threshold import sample_values

    source = open_image(image, **open_kwargs)
    axes = getattr(source, "axes", None) or ""
    if channel_axis is None and "c" in axes.lower():
        raise ValueError(f"image has a channel axis (axes {axes!r}); pass channel_axis={axes.lower().index('c')} "
                         f"(and the same to tile_process), or pick one channel with channel=N")
    if channel_axis is None:
        views = [source]
    else:
        if not -len(source.shape) <= channel_axis < len(source.shape):
            raise ValueError(f"channel_axis={channel_axis} is out of range for image of shape {tuple(source.shape)}; "
                             f"pass the image's channel axis, or None")
        axis = channel_axis % len(source.shape)
        views = [_ChannelView(source, axis, c) for c in range(source.shape[axis])]
    pmin, pmax = check_percentiles(percentiles, "percentiles")
    ranges = []
    for view in views:
        values = sample_values(view, n_voxels=n_voxels)
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        lo, hi = np.percentile(values, [pmin, pmax])
        ranges.append((float(lo), float(hi)))
    return tuple(ranges)


def check_percentiles(value, name: str = "normalize"):
    if value is True:
        value = (1, 99.8)
    try:
        pmin, pmax = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: give (low, high) percentiles such as (1, 99.8), or None when the "
                         f"image is already normalised") from None
    if not 0 <= pmin < pmax <= 100:
        raise ValueError(f"{name}={value!r}: percentiles must satisfy 0 <= low < high <= 100, e.g. (1, 99.8)")
    return pmin, pmax


def check_range(value):
    pairs = np.asarray(value, dtype=float)
    if pairs.shape == (2,):
        pairs = pairs[None]
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.isfinite(pairs).all() or (pairs[:, 1] <= pairs[:, 0]).any():
        raise ValueError(f"intensity_range={value!r}: give (lo, hi) with lo < hi, or one (lo, hi) per channel")
    return tuple((float(lo), float(hi)) for lo, hi in pairs)


def scale_to_range(x: np.ndarray, intensity_range, has_channels: bool, who: str) -> np.ndarray:
    """float32 ``(x - lo) / (hi - lo)`` with one fixed range, or one per channel (channels last)."""
    pairs = np.asarray(intensity_range, dtype=np.float32)
    n_channels = x.shape[-1] if has_channels else 1
    if len(pairs) not in (1, n_channels):
        raise ValueError(f"{who}: intensity_range has {len(pairs)} (lo, hi) pairs but the window has "
                         f"{n_channels} channel(s); give one pair, or one per channel")
    lo, hi = (pairs[:, 0], pairs[:, 1]) if has_channels else (pairs[0, 0], pairs[0, 1])
    return (x.astype(np.float32, copy=False) - lo) / (hi - lo + np.float32(1e-20))
