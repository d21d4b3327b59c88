"""StarDist as a tile function: ``tile_process(image, stardist_fn(...), ...)``.

2-D (``StarDist2D``) and 3-D (``StarDist3D``) models, registered by name
(``"2D_versatile_fluo"``, ``"2D_versatile_he"``, ``"3D_demo"``, ...) or a
model folder of your own. Needs ``pip install "patchworks[stardist]"``.

**Normalisation.** StarDist expects intensities scaled so that the 1st and
99.8th percentiles map to 0 and 1. Computed per tile, that range changes
from tile to tile and objects change size at the seams. Fix it once for the
whole image instead::

    fn = stardist_fn("2D_versatile_fluo", image="slide.ome.tif")    # percentiles of a sample of the image
    fn = stardist_fn("2D_versatile_fluo", intensity_range=(90, 2400))  # or values you know

**Stacks.** A 2-D model on a z-stack runs plane by plane and joins the planes
by one-to-one IoU (``iou_threshold``). The recommended way is one plane per
tile and ``stitch="iou"`` in ``tile_process``, with an overlap of about one
object diameter so that touching nuclei stay distinct across seams::

    labels = tile_process("stack.zarr", fn, tile_shape=(1, 2048, 2048), overlap=(0, 48, 48),
                          stitch="iou", write_to="nuclei.zarr")
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._common import (as_labels, cached_model, channels_last, check_iou_threshold, check_percentiles,
                      check_range, image_intensity_range, plane_by_plane, require, retry_out_of_memory,
                      scale_to_range)

__all__ = ["StarDistTile", "image_intensity_range", "stardist_fn"]

logger = logging.getLogger(__name__)

_RESERVED = {
    "axes": "patchworks passes the window's axes itself (set channel_axis for a channel axis)",
    "normalizer": "patchworks normalises the window itself; use normalize=, intensity_range= or image=",
    "return_predict": "the tile function returns labels only",
}


def _resolve(model: str):
    """(number of spatial axes, registered?) of a model name or folder, without loading it."""
    models = require("stardist.models", "stardist")  # fail here, not on the cluster, when StarDist is missing
    path = Path(model)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ValueError(f"model={model!r} is a folder without config.json; give a StarDist model folder "
                             f"(config.json + weights_best.h5) or a registered name such as '2D_versatile_fluo'")
        cfg = json.loads(config.read_text())
        ndim = cfg.get("n_dim") or len(str(cfg.get("axes", "")).upper().replace("C", ""))
        if ndim not in (2, 3):
            raise ValueError(f"model={model!r}: its config.json describes a {ndim}-D model; StarDist models are "
                             f"2-D or 3-D")
        return int(ndim), False
    pretrained = require("csbdeep.models.pretrained", "stardist")
    known = []
    for ndim, cls in ((2, models.StarDist2D), (3, models.StarDist3D)):
        keys, aliases = pretrained.get_registered_models(cls)
        if model in keys or any(model in names for names in aliases.values()):
            return ndim, True
        known.extend(keys)
    raise ValueError(f"model={model!r} is neither a StarDist model folder nor a registered model "
                     f"({', '.join(known)}); give one of those names or the folder of a trained model")


def _load(models, ndim: int, model: str, registered: bool):
    cls = models.StarDist2D if ndim == 2 else models.StarDist3D
    if registered:
        loaded = cls.from_pretrained(model)
        if loaded is None:  # from_pretrained prints its problem and returns None
            raise ValueError(f"model={model!r}: StarDist could not load this registered model")
        return loaded
    path = Path(model)
    return cls(None, name=path.name, basedir=str(path.parent))


@dataclass(frozen=True)
class StarDistTile:
    """Tile function running a StarDist model; build it with :func:`stardist_fn`.

    Holds only the model's description, so it pickles small; each worker
    process loads the model once and reuses it.
    """

    model: str = "2D_versatile_fluo"
    ndim: int = 2
    registered: bool = True
    percentiles: tuple[float, float] | None = (1.0, 99.8)
    intensity_range: tuple[tuple[float, float], ...] | None = None
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    n_tiles: tuple[int, ...] | None = None
    channel_axis: int | None = None
    iou_threshold: float = 0.5
    predict_kwargs: dict = field(default_factory=dict)

    def normalized(self, image: np.ndarray, has_channels: bool) -> np.ndarray:
        """float32 window scaled like csbdeep's ``normalize`` (channels last, each channel on its own)."""
        x = image.astype(np.float32, copy=False)
        if self.intensity_range is not None:
            return scale_to_range(x, self.intensity_range, has_channels, "stardist_fn")
        if self.percentiles is not None:
            spatial = tuple(range(image.ndim - 1 if has_channels else image.ndim))
            lo, hi = np.percentile(x, self.percentiles, axis=spatial)
            lo, hi = np.float32(lo), np.float32(hi)
        else:
            return x
        return (x - lo) / (hi - lo + np.float32(1e-20))

    def __call__(self, window) -> np.ndarray:
        models = require("stardist.models", "stardist")
        entry = cached_model(("stardist", self.ndim, self.model),
                             lambda: _load(models, self.ndim, self.model, self.registered))
        image, spatial, has_channels = channels_last(window, self.channel_axis, "stardist_fn")
        if len(spatial) not in (2, 3) or len(spatial) < self.ndim:
            raise ValueError(f"stardist_fn: a {self.ndim}-D model got a window with {len(spatial)} spatial axes "
                             f"(shape {np.shape(window)}); pass channel_axis for a channel axis, and give a "
                             f"{'2-D or 3-D' if self.ndim == 2 else '3-D'} image")
        x = self.normalized(image, has_channels)  # over the whole tile: every plane of a stack on one scale
        options = dict(self.predict_kwargs)
        options.setdefault("show_tile_progress", False)  # one bar per tile would flood the log

        def run(img):
            shape = img.shape[:-1] if has_channels else img.shape
            axes = "ZYX"[-len(shape):] + ("C" if has_channels else "")
            n_tiles = None if self.n_tiles is None else self.n_tiles + ((1,) if has_channels else ())

            def call():
                with entry.lock:
                    labels, _details = entry.model.predict_instances(
                        img, axes=axes, n_tiles=n_tiles, prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh,
                        **options)
                return labels

            return as_labels(retry_out_of_memory(call, what=f"stardist ({self.model})", shape=shape), shape,
                             "stardist")

        if len(spatial) == self.ndim:
            return run(x)
        return plane_by_plane(run, x, self.iou_threshold)  # a 2-D model on a stack


def stardist_fn(model: str | os.PathLike = "2D_versatile_fluo", *, normalize=(1, 99.8), intensity_range=None,
                image=None, open_kwargs: dict | None = None, prob_thresh: float | None = None,
                nms_thresh: float | None = None, n_tiles=None, channel_axis: int | None = None,
                iou_threshold: float = 0.5, **predict_kwargs) -> StarDistTile:
    """Tile function that segments each tile with StarDist.

    Parameters
    ----------
    model : str or path
        A registered model (``"2D_versatile_fluo"``, ``"2D_versatile_he"``,
        ``"2D_paper_dsb2018"``, ``"3D_demo"``, ...) or the folder of a trained
        model (``config.json`` + weights); 2-D or 3-D is read from it.
    normalize : (float, float) or None
        Percentiles mapped to 0 and 1, per channel. Computed per tile unless
        ``image`` is given (per-tile ranges draw seams). ``None``: the image
        is already normalised.
    intensity_range : (lo, hi) or sequence of (lo, hi), optional
        Fixed intensities mapped to 0 and 1 for every tile: one pair, or one
        per channel.
    image : array-like or path, optional
        The image that will be processed: ``normalize``'s percentiles are
        taken once from a sample of it (:func:`image_intensity_range`), so
        every tile is scaled alike.
    open_kwargs : dict, optional
        ``component``, ``level``, ``channel`` for :func:`patchworks.open_image`
        when reading ``image``.
    prob_thresh, nms_thresh : float, optional
        StarDist's thresholds; ``None`` uses the model's own.
    n_tiles : tuple of int, optional
        StarDist's internal tiling of one window, per spatial axis of the
        model (2 or 3 numbers), to fit GPU memory.
    channel_axis : int, optional
        Axis of the window holding channels: the same ``channel_axis`` you
        give ``tile_process``. The model sees ``"YXC"`` / ``"ZYXC"``.
    iou_threshold : float
        A 2-D model on a stack: planes are joined when their labels are each
        other's best match with at least this IoU.
    **predict_kwargs
        Passed to ``predict_instances`` (``scale``, ``sparse``, ``nms_kwargs``, ...).

    Returns
    -------
    StarDistTile
        ``fn(window) -> uint32 labels`` of the window's spatial shape; picklable.

    Examples
    --------
    >>> from patchworks import tile_process
    >>> fn = stardist_fn("2D_versatile_fluo", image="nuclei.tif")          # doctest: +SKIP
    >>> labels = tile_process("nuclei.tif", fn, tile_shape=1024, overlap=48,
    ...                       stitch="iou", write_to="nuclei.zarr")          # doctest: +SKIP
    """
    model = os.fspath(model)
    ndim, registered = _resolve(model)
    if channel_axis is not None and (isinstance(channel_axis, bool)
                                     or not isinstance(channel_axis, (int, np.integer))):
        raise TypeError(f"channel_axis={channel_axis!r}: give one int (the image's channel axis) or None")
    percentiles = None if normalize is None or normalize is False else check_percentiles(normalize)
    if intensity_range is not None and image is not None:
        raise ValueError("intensity_range= and image= both fix the normalisation range; give one of them")
    if intensity_range is not None:
        intensity_range = check_range(intensity_range)
    elif image is not None:
        if percentiles is None:
            raise ValueError("image= computes the normalize percentiles once for the whole image, but "
                             "normalize=None; give normalize=(1, 99.8) or drop image=")
        intensity_range = image_intensity_range(image, percentiles, channel_axis=channel_axis,
                                                **(open_kwargs or {}))
        logger.info("stardist_fn: normalisation range from the image: %s", intensity_range)
    if n_tiles is not None:
        if isinstance(n_tiles, (int, np.integer)):
            n_tiles = (n_tiles,) * ndim
        n_tiles = tuple(n_tiles)
        if len(n_tiles) != ndim or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in n_tiles):
            raise ValueError(f"n_tiles={n_tiles!r}: give {ndim} positive ints, one per spatial axis of the "
                             f"{ndim}-D model, e.g. {(2,) * ndim}")
        n_tiles = tuple(int(n) for n in n_tiles)
    for key in predict_kwargs:
        if key in _RESERVED:
            raise ValueError(f"{key}={predict_kwargs[key]!r}: {_RESERVED[key]}")
    return StarDistTile(model=model, ndim=ndim, registered=registered, percentiles=percentiles,
                        intensity_range=intensity_range,
                        prob_thresh=None if prob_thresh is None else float(prob_thresh),
                        nms_thresh=None if nms_thresh is None else float(nms_thresh), n_tiles=n_tiles,
                        channel_axis=None if channel_axis is None else int(channel_axis),
                        iou_threshold=check_iou_threshold(iou_threshold), predict_kwargs=dict(predict_kwargs))
