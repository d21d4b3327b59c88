"""Plumbing shared by the segmenter plugins.

Lazy imports with an install hint, one model per worker process (loaded on
first use, never pickled with the tile function), a retry after a GPU
out-of-memory error, the channels-last layout both libraries want, and the
plane-by-plane run of a 2-D model on a stack.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
from dataclasses import dataclass

import numpy as np

from patchworks._iou import stitch_planes

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
    """Run a 2-D ``segment_plane`` on each plane of ``stack`` (axis 0) and join planes by one-to-one IoU."""
    planes = np.stack([segment_plane(stack[z]) for z in range(stack.shape[0])])
    return stitch_planes(planes, iou_threshold)


def check_iou_threshold(iou_threshold) -> float:
    value = float(iou_threshold)
    if not 0 < value <= 1:
        raise ValueError(f"iou_threshold={iou_threshold!r}: give a number in (0, 1], e.g. 0.5")
    return value
