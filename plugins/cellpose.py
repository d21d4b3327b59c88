"""Cellpose as a tile function: ``tile_process(image, cellpose_fn(...), ...)``.

Works with Cellpose 3 (``cyto3``, ``nuclei``, ... and your own models) and
Cellpose 4 (cellpose-SAM). Needs ``pip install "patchworks[cellpose]"``.

Recommended use on a z-stack with a 2-D model: one plane per tile, and let
``tile_process`` join planes and seams by one-to-one IoU, like Cellpose's own
``stitch_threshold``::

    fn = cellpose_fn(diameter=30, gpu=True)
    labels = tile_process("stack.zarr", fn, tile_shape=(1, 2048, 2048), overlap=(0, 64, 64),
                          stitch="iou", write_to="cells.zarr")

``stitch="iou"`` keeps touching cells distinct across seams; give an overlap
of about one cell diameter. Thicker tiles work too: their planes are joined
inside the tile by the same rule (``iou_threshold``).

Two Cellpose habits would draw seams between tiles: the diameter is never
estimated per tile here (``diameter=None`` is the model's own size), and
Cellpose scales each image it gets between its own 1st and 99th
percentiles, so every tile would be scaled differently. Fix that range once
for the whole image (patchworks scales each tile with it and tells Cellpose
not to normalise again)::

    fn = cellpose_fn("cyto3", diameter=30, image="stack.zarr")      # percentiles of a sample of the image
    fn = cellpose_fn("cyto3", diameter=30, intensity_range=(100, 4000))  # or values you know
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._common import (as_labels, cached_model, channels_last, check_iou_threshold, check_range,
                      image_intensity_range, plane_by_plane, require, retry_out_of_memory, scale_to_range)

logger = logging.getLogger(__name__)

# eval options patchworks sets itself, with the reason given to a user who passes them
_RESERVED = {
    "z_axis": "patchworks passes the window's axes itself (z is the first spatial axis)",
    "stitch_threshold": "patchworks joins planes itself by one-to-one IoU; set iou_threshold instead",
    "x": "the window is the image",
}


def _version(cellpose, models) -> int:
    """Major version of the installed Cellpose (a source checkout reports 'unknown')."""
    text = getattr(cellpose, "version", None)
    if not isinstance(text, str) or not re.match(r"\d", text):
        try:
            text = importlib.metadata.version("cellpose")
        except importlib.metadata.PackageNotFoundError:
            text = ""
    match = re.match(r"(\d+)", text)
    if match:
        return int(match.group(1))
    return 3 if hasattr(models, "Cellpose") else 4  # Cellpose 4 dropped the size-model wrapper


def _import():
    cellpose = require("cellpose", "cellpose")
    models = require("cellpose.models", "cellpose")
    return models, _version(cellpose, models)


def _check_model(models, major: int, model) -> None:
    """Refuse a name the installed Cellpose does not know: it would silently fall back to its default."""
    if model is None or os.path.exists(model):
        return
    names = list(getattr(models, "MODEL_NAMES", []))
    if not names:  # an unusual build: let Cellpose decide
        return
    user = getattr(models, "get_user_models", None)
    known = list(dict.fromkeys(names + (list(user()) if user else [])))
    if model in known:
        return
    hint = ("Cellpose 4 runs cellpose-SAM: use model=None (its default) or 'cpsam'; for Cellpose 3 models "
            "pip install 'cellpose<4'" if major >= 4 else
            "use a Cellpose 3 model such as 'cyto3' or 'nuclei', or pip install 'cellpose>=4' for cellpose-SAM")
    raise ValueError(f"model={model!r} is neither a file nor a model of the installed Cellpose {major} "
                     f"(known: {', '.join(known)}); {hint}")


def _load(models, major: int, model, gpu: bool):
    if major >= 4:
        # None: the library's own default (cpsam in 4.0, cpsam_v2 later)
        return models.CellposeModel(gpu=gpu) if model is None else models.CellposeModel(gpu=gpu, pretrained_model=model)
    if model is None:
        model = "cyto3"
    if os.path.exists(model):
        return models.CellposeModel(gpu=gpu, pretrained_model=model)
    return models.CellposeModel(gpu=gpu, model_type=model)


@dataclass(frozen=True)
class CellposeTile:
    """Tile function running a Cellpose model; build it with :func:`cellpose_fn`.

    Holds only the model's description, so it pickles small; each worker
    process loads the model once and reuses it.
    """

    model: str | None = None
    gpu: bool = False
    diameter: float | None = None
    do_3D: bool = False
    channels: tuple[int, int] | None = None
    channel_axis: int | None = None
    iou_threshold: float = 0.5
    eval_kwargs: dict = field(default_factory=dict)
    intensity_range: tuple[tuple[float, float], ...] | None = None   # one range for the whole image

    def __call__(self, window) -> np.ndarray:
        models, major = _import()
        entry = cached_model(("cellpose", major, self.model, bool(self.gpu)),
                             lambda: _load(models, major, self.model, self.gpu))
        image, spatial, has_channels = channels_last(window, self.channel_axis, "cellpose_fn")
        options = dict(self.eval_kwargs, diameter=self.diameter)
        if self.intensity_range is not None:  # scaled here with the image's range; Cellpose must not rescale
            image = scale_to_range(image, self.intensity_range, has_channels, "cellpose_fn")
            options["normalize"] = False
        if major < 4:
            # Cellpose 3 picks [cytoplasm, nucleus] (1-based, 0 = grayscale); None keeps the first two channels
            options["channels"] = list(self.channels) if self.channels is not None else (
                None if has_channels else [0, 0])

        def run(img, do_3D):
            shape = img.shape[:-1] if has_channels else img.shape
            kwargs = dict(options, do_3D=do_3D, z_axis=0 if do_3D else None,
                          channel_axis=img.ndim - 1 if has_channels else None)

            def call():
                with entry.lock:
                    out = entry.model.eval(img, **kwargs)
                # CellposeModel.eval returns (masks, flows, styles); Cellpose 3's Cellpose.eval adds diams
                return out[0] if isinstance(out, tuple) else out

            return as_labels(retry_out_of_memory(call, what=f"cellpose ({self.model or 'default model'})",
                                                 shape=shape), shape, "cellpose")

        if len(spatial) == 2:
            if self.do_3D:
                raise ValueError(f"cellpose_fn(do_3D=True) got a window with 2 spatial axes {spatial}; "
                                 f"use do_3D=False for 2-D images (or check channel_axis)")
            return run(image, False)
        if len(spatial) == 3:
            if self.do_3D and spatial[0] > 1:
                return run(image, True)
            # a 2-D model on a stack (or a single plane, which Cellpose cannot run in 3-D)
            return plane_by_plane(lambda plane: run(plane, False), image, self.iou_threshold)
        raise ValueError(f"cellpose_fn got a window with {len(spatial)} spatial axes (shape {np.shape(window)}); "
                         f"Cellpose segments 2-D or 3-D images: pass channel_axis for a channel axis, and carry "
                         f"other non-spatial axes with channel=N")


def cellpose_fn(model: str | os.PathLike | None = None, *, gpu: bool = False, diameter: float | None = None,
                do_3D: bool = False, channels=None, channel_axis: int | None = None, iou_threshold: float = 0.5,
                image=None, intensity_range=None, percentiles=(1, 99), open_kwargs: dict | None = None,
                **eval_kwargs) -> CellposeTile:
    """Tile function that segments each tile with Cellpose.

    Parameters
    ----------
    model : str or path, optional
        A built-in model name (Cellpose 3: ``"cyto3"``, ``"nuclei"``, ...;
        Cellpose 4: ``"cpsam"``) or the path of a trained model file.
        ``None``: ``"cyto3"`` on Cellpose 3, cellpose-SAM on Cellpose 4.
    gpu : bool
        Run on the GPU when one is available.
    diameter : float, optional
        Cell diameter in pixels. ``None`` uses the model's own size (30);
        it is never estimated per tile, which would differ from tile to tile.
    do_3D : bool
        Segment 3-D windows in 3-D. Otherwise a 3-D window is segmented plane
        by plane and its planes are joined by one-to-one IoU.
    channels : (int, int), optional
        Cellpose 3: ``[cytoplasm, nucleus]`` channel numbers, 1-based
        (0 = grayscale / none). ``None``: grayscale, or the first two channels.
        Cellpose 4 reads every channel of the image and ignores this, with a
        warning.
    channel_axis : int, optional
        Axis of the window holding channels: the same ``channel_axis`` you
        give ``tile_process`` (which carries it whole into every tile).
    iou_threshold : float
        Planes of one tile are joined when their labels are each other's best
        match with at least this IoU.
    image : path or array, optional
        The image that will be processed: its intensity range at
        ``percentiles`` is taken once from a sample of it, and every tile is
        scaled with that range (Cellpose's own per-image normalisation is
        turned off). Recommended: per-tile normalisation draws seams.
    intensity_range : (lo, hi) or one (lo, hi) per channel, optional
        The same with values you know.
    percentiles : (low, high), default (1, 99)
        Cellpose's own percentiles, used with ``image``.
    open_kwargs : dict, optional
        ``component``, ``level``, ``channel`` to open ``image`` with.
    **eval_kwargs
        Passed to ``CellposeModel.eval``: ``flow_threshold``,
        ``cellprob_threshold``, ``min_size``, ``batch_size``, ``anisotropy``,
        ``normalize`` (not with ``image`` / ``intensity_range``) ...

    Returns
    -------
    CellposeTile
        ``fn(window) -> uint32 labels`` of the window's spatial shape; picklable.

    Examples
    --------
    >>> from patchworks import tile_process
    >>> fn = cellpose_fn(diameter=17, channels=[2, 1], channel_axis=0)     # doctest: +SKIP
    >>> labels = tile_process("cells.ome.zarr", fn, tile_shape=(1024, 1024), overlap=32,
    ...                       channel_axis=0, stitch="iou")                 # doctest: +SKIP
    """
    models, major = _import()  # fail here, not on the cluster, when Cellpose is missing
    model = None if model is None else os.fspath(model)
    _check_model(models, major, model)
    if diameter is not None:
        diameter = float(diameter)
        if not np.isfinite(diameter) or diameter <= 0:
            raise ValueError(f"diameter={diameter!r}: give the cell diameter in pixels (> 0), or None for the "
                             f"model's own size")
    if channels is not None:
        if isinstance(channels, (str, bytes)) or len(channels) != 2 or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in channels):
            raise ValueError(f"channels={channels!r}: give [cytoplasm, nucleus] channel numbers, 1-based with "
                             f"0 = grayscale / none, e.g. [2, 3]")
        channels = (int(channels[0]), int(channels[1]))
        if major >= 4:
            warnings.warn(f"channels={list(channels)} is ignored by Cellpose {major}, which reads the image's "
                          f"channels in order (the first three) along channel_axis", UserWarning, stacklevel=2)
            channels = None
    if channel_axis is not None and (isinstance(channel_axis, bool)
                                     or not isinstance(channel_axis, (int, np.integer))):
        raise TypeError(f"channel_axis={channel_axis!r}: give one int (the image's channel axis) or None")
    for key in eval_kwargs:
        if key in _RESERVED:
            raise ValueError(f"{key}={eval_kwargs[key]!r}: {_RESERVED[key]}")
    if image is not None and intensity_range is not None:
        raise ValueError("image= and intensity_range= both fix the normalisation range; give one of them")
    if (image is not None or intensity_range is not None) and "normalize" in eval_kwargs:
        raise ValueError(f"normalize={eval_kwargs['normalize']!r} conflicts with image= / intensity_range=, which "
                         f"scale every tile with one range and turn Cellpose's normalisation off; give one of them")
    if intensity_range is not None:
        intensity_range = check_range(intensity_range)
    elif image is not None:
        intensity_range = image_intensity_range(image, percentiles, channel_axis=channel_axis, **(open_kwargs or {}))
        logger.info("cellpose_fn: normalisation range from the image: %s", intensity_range)
    return CellposeTile(model=model, gpu=bool(gpu), diameter=diameter, do_3D=bool(do_3D), channels=channels,
                        channel_axis=None if channel_axis is None else int(channel_axis),
                        iou_threshold=check_iou_threshold(iou_threshold), eval_kwargs=dict(eval_kwargs),
                        intensity_range=intensity_range)
