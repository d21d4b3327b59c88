"""patchly's ``GridSampler`` and ``Aggregator``, on our grid and aggregator.

Change one import line::

    from patchworks.compat.patchly import GridSampler, Aggregator, SamplingMode

and code written for patchly runs unchanged: same signatures, same
``(patch, bbox)`` iteration (``bbox`` an ``(n_spatial, 2)`` int array of
``[start, stop)`` per spatial axis), same ``append`` / ``get_output`` and the
same border modes, including the *adaptive* mode whose last patches are
smaller. The geometry is :meth:`patchworks.TileGrid.for_patches` and the
blending is :class:`patchworks.Aggregator`; see ``docs/compat.md`` for where
we differ on purpose (squeeze positions, gaussian weights with adaptive
patches, missing patches, chunked aggregation).
"""

from __future__ import annotations

import enum
import math

import numpy as np

from .. import Aggregator as _Aggregator
from .. import GridSampler as _GridSampler
from .. import TileGrid

__all__ = ["Aggregator", "GridSampler", "SamplingMode"]


class SamplingMode(enum.Enum):
    """patchly's border modes (what happens where the last step would pass the image end).

    * ``SAMPLE_SQUEEZE`` (default): as many full-size patches as ``SAMPLE_EDGE``, origins
      spread evenly from 0 to ``size - patch`` (our ``edge="squeeze"``).
    * ``SAMPLE_EDGE``: regular steps, the last patch moved inward to end at the image end
      (our ``edge="shift"``).
    * ``SAMPLE_ADAPTIVE``: a patch at every step inside the image, the last ones cut at the
      image end, so smaller (our ``edge="adaptive"``).
    * ``SAMPLE_CROP``: only the patches that fit at regular steps; the rest of the image is
      never sampled and aggregates to 0.
    * ``PAD_UNKNOWN``: not supported (as in patchly); padding is ``patchworks.GridSampler(...,
      edge="pad", pad_mode=...)``.
    """

    SAMPLE_EDGE = 1
    SAMPLE_ADAPTIVE = 2
    SAMPLE_CROP = 3
    SAMPLE_SQUEEZE = 4
    PAD_UNKNOWN = 5


_EDGE = {SamplingMode.SAMPLE_EDGE: "shift", SamplingMode.SAMPLE_SQUEEZE: "squeeze",
         SamplingMode.SAMPLE_ADAPTIVE: "adaptive", SamplingMode.SAMPLE_CROP: "shift"}


def _mode(mode) -> SamplingMode:
    if isinstance(mode, str):
        try:
            mode = SamplingMode[mode.upper()]
        except KeyError:
            mode = None
    if not isinstance(mode, SamplingMode):
        raise ValueError(f"mode={mode!r} is unknown; use one of "
                         f"{', '.join('SamplingMode.' + m.name for m in SamplingMode if m.name != 'PAD_UNKNOWN')}")
    if mode is SamplingMode.PAD_UNKNOWN:
        raise ValueError("mode=SamplingMode.PAD_UNKNOWN is not supported (nor in patchly); to pad the image use "
                         "patchworks.GridSampler(image, patch_size, edge='pad', pad_mode='reflect')")
    return mode


def _ints(value, n, name) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in np.asarray(value).ravel())
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r}: expected a sequence of {n} ints") from None
    if len(out) != n:
        raise ValueError(f"{name}={tuple(out)!r} has {len(out)} entries but spatial_size has {n}; give one per "
                         "spatial axis")
    return out


def _shape_only(shape):
    # a stand-in image of the right shape for the geometry, never read: a lazy dask array of zeros,
    # which (unlike a broadcast numpy array) pickles small for DataLoader workers
    import dask.array as da

    return da.zeros(tuple(shape), dtype=np.uint8, chunks=-1)


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class GridSampler:
    """patchly's grid sampler: patches of ``image`` on a regular grid, with their bounding boxes.

    Parameters
    ----------
    image : array-like or None
        numpy / dask / zarr array, torch tensor (patches come out as numpy),
        or anything :func:`patchworks.open_image` accepts; read lazily, patch
        by patch. ``None``: only the bounding boxes are produced
        (``sampler[i]`` is then the bbox alone).
    spatial_size : sequence of int
        Size of the spatial axes. With ``spatial_first=True`` they are the
        leading axes of ``image`` (e.g. ``(H, W, C)``), else the trailing ones
        (``(C, H, W)``).
    patch_size : sequence of int
        Patch size per spatial axis.
    step_size : sequence of int, optional
        Distance between patch origins (default ``patch_size``: no overlap).
        ``patch_offset`` is the same thing under patchly's older name.
    chunk_size : None
        patchly's chunked sampling is not offered here; see ``ValueError``.
    spatial_first : bool, default True
        Whether the spatial axes come first in ``image``.
    mode : SamplingMode, default SAMPLE_SQUEEZE
        Border handling, see :class:`SamplingMode`.
    pad_kwargs : dict, optional
        Accepted for compatibility; nothing is padded in these modes.
    patch_offset : sequence of int, optional
        Old name of ``step_size``.

    Examples
    --------
    >>> img = np.arange(10 * 7).reshape(10, 7)
    >>> sampler = GridSampler(img, (10, 7), (4, 3), step_size=(4, 3), mode=SamplingMode.SAMPLE_ADAPTIVE)
    >>> len(sampler), sampler[-1][1].tolist(), sampler[-1][0].shape
    (9, [[8, 10], [6, 7]], (2, 1))
    """

    def __init__(self, image, spatial_size, patch_size, step_size=None, chunk_size=None, spatial_first=True,
                 mode=SamplingMode.SAMPLE_SQUEEZE, pad_kwargs=None, *, patch_offset=None):
        if chunk_size is not None:
            raise ValueError(f"chunk_size={chunk_size!r}: chunked sampling is not offered by the patchly drop-in; "
                             "for outputs larger than memory aggregate into a zarr store with "
                             "patchworks.Aggregator(sampler, output='out.zarr'), or use patchworks.tile_map")
        if step_size is not None and patch_offset is not None:
            raise ValueError(f"step_size={step_size!r} and patch_offset={patch_offset!r} were both given; they are "
                             "the same thing (patch_offset is patchly's older name): give one")
        step_size = patch_offset if step_size is None else step_size
        self.mode = _mode(mode)
        try:
            n = len(spatial_size)
        except TypeError:
            raise TypeError(f"spatial_size={spatial_size!r}: expected a sequence of ints, one per spatial axis") from None
        self.spatial_size = _ints(spatial_size, n, "spatial_size")
        self.patch_size = _ints(patch_size, n, "patch_size")
        self.step_size = self.patch_size if step_size is None else _ints(step_size, n, "step_size")
        self.spatial_first = bool(spatial_first)
        self.pad_kwargs = pad_kwargs
        for ax, (p, st, s) in enumerate(zip(self.patch_size, self.step_size, self.spatial_size)):
            if p < 1 or not 1 <= st:
                raise ValueError(f"patch_size={self.patch_size!r}, step_size={self.step_size!r}: axis {ax} needs a "
                                 "patch size and a step of at least 1")
            if st > p:
                raise ValueError(f"step_size={self.step_size!r}: axis {ax} step {st} is larger than the patch "
                                 f"({p}), which leaves voxels no patch covers; use a step <= {p}")
            if p > s and self.mode is not SamplingMode.SAMPLE_ADAPTIVE:
                raise ValueError(f"patch_size={self.patch_size!r}: axis {ax} patch {p} is larger than the image "
                                 f"({s}); use a patch_size <= {s} or mode=SamplingMode.SAMPLE_ADAPTIVE")

        if image is not None and type(image).__module__.startswith("torch"):
            image = image.detach().cpu().numpy()  # shares memory on the CPU; patches come out as numpy
        self.image = image
        if image is not None:
            shape = tuple(int(v) for v in image.shape)
            sp = shape[:n] if self.spatial_first else shape[len(shape) - n:]
            if len(shape) < n or sp != self.spatial_size:
                where = "leading" if self.spatial_first else "trailing"
                raise ValueError(f"spatial_size={self.spatial_size!r} but the image has shape {shape}, whose {n} "
                                 f"{where} axes are {sp}; pass the image's spatial size (spatial_first="
                                 f"{self.spatial_first})")
            full = shape
        else:
            full = self.spatial_size
        nd = len(full)
        self._channel_axes = (tuple(range(n, nd)) if self.spatial_first else tuple(range(nd - n))) or None
        edge = _EDGE[self.mode]
        if self.mode is SamplingMode.SAMPLE_CROP:
            # only the extent regular steps cover is sampled (and aggregated); the rest stays 0
            self.covered_size = tuple(((s - p) // st) * st + p
                                      for s, p, st in zip(self.spatial_size, self.patch_size, self.step_size))
        else:
            self.covered_size = self.spatial_size
        geom_shape = list(full)
        sp_axes = range(n) if self.spatial_first else range(nd - n, nd)
        for ax, c in zip(sp_axes, self.covered_size):
            geom_shape[ax] = c
        # the geometry (and the Aggregator) work on the covered extent; patches are read from the image itself
        self._geometry = _GridSampler(_shape_only(geom_shape), self.patch_size, step=self.step_size, edge=edge,
                                      channel_axis=self._channel_axes)
        # only its read() is used (for the geometry's specs): one whole-image patch keeps it cheap
        self._reader = (None if image is None else
                        _GridSampler(image, self.spatial_size, channel_axis=self._channel_axes))
        self.specs = self._geometry.specs
        self._by_start = {s.start: s for s in self.specs}

    def __len__(self) -> int:
        return len(self.specs)

    def get_bbox(self, idx: int) -> np.ndarray:
        """Bounding box of patch ``idx``: ``[[start, stop], ...]`` per spatial axis."""
        s = self._geometry.spec(idx)
        return np.array([[a, a + p] for a, p in zip(s.start, s.size)], dtype=np.int64).reshape(-1, 2)

    def __getitem__(self, idx):
        bbox = self.get_bbox(idx)
        if self._reader is None:
            return bbox
        return self._reader.read(self._geometry.spec(idx)), bbox

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def spec_for(self, bbox):
        """Our :class:`patchworks.PatchSpec` of the patch with this bbox."""
        b = np.asarray(bbox).reshape(-1, 2)
        start = tuple(int(v) for v in b[:, 0])
        spec = self._by_start.get(start)
        if spec is None or tuple(int(v) for v in b[:, 1] - b[:, 0]) != spec.size:
            raise ValueError(f"patch_bbox={b.tolist()} is not a patch of this sampler; pass the bbox the sampler "
                             "gave with the patch")
        return spec

    def __repr__(self):
        return (f"GridSampler(spatial_size={self.spatial_size}, patch_size={self.patch_size}, "
                f"step_size={self.step_size}, mode={self.mode}, n_patches={len(self)})")


_WEIGHTS = {"avg": "mean", "gaussian": "gaussian"}


class Aggregator:
    """patchly's aggregator: put per-patch predictions back into one output.

    Parameters
    ----------
    sampler : GridSampler
        The sampler (from this module) whose patches were predicted.
    output_size : sequence of int, optional
        Shape of the output, non-spatial axes included, in the layout
        ``spatial_first`` says (e.g. ``(8, H, W)`` for 8 classes first).
    output : array, optional
        Array to write the result into (its shape is the output size). The
        finished output is written into it by :meth:`get_output`.
    weights : {"avg", "gaussian"} or array or callable
        ``"avg"``: plain mean of the overlapping patches; ``"gaussian"``: a
        Gaussian window (also allowed with adaptive patches: a smaller patch
        gets a window of its own size); an array of ``patch_size``; a
        callable ``f(patch_size) -> array``. Our own windows (``"hann"``,
        ``"mean"``, ``"crop"``) are accepted too.
    softmax_dim : int, optional
        Axis of ``output_size`` holding class scores: :meth:`get_output`
        returns their argmax (int64), without that axis.
    has_batch_dim : bool
        Predictions come as a batch ``(B, ...)`` with bboxes ``(B, n, 2)``.
    spatial_first : bool
        Layout of the predictions and of ``output_size``.
    chunk_postprocess_func : None
        Chunked aggregation is not offered; see ``ValueError``.
    device : str
        Accepted for compatibility; aggregation runs on the CPU in float32 and
        torch tensors are moved there.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((3, 9, 11)).astype(np.float32)
    >>> sampler = GridSampler(img, (9, 11), (4, 4), step_size=(3, 3), spatial_first=False)
    >>> aggregator = Aggregator(sampler, output_size=(3, 9, 11), spatial_first=False)
    >>> for patch, bbox in sampler:
    ...     aggregator.append(patch, bbox)
    >>> bool(np.allclose(aggregator.get_output(), img))
    True
    """

    def __init__(self, sampler, output_size=None, output=None, weights="avg", softmax_dim=None,
                 has_batch_dim=False, spatial_first=True, chunk_postprocess_func=None, device="cpu"):
        if not isinstance(sampler, GridSampler):
            raise TypeError(f"sampler={type(sampler).__name__}: expected a patchworks.compat.patchly.GridSampler")
        if chunk_postprocess_func is not None:
            raise ValueError("chunk_postprocess_func: chunked aggregation is not offered by the patchly drop-in; "
                             "aggregate into a zarr store with patchworks.Aggregator(sampler, output='out.zarr') "
                             "and post-process it block by block (or use patchworks.tile_map)")
        if output_size is None and output is None:
            raise ValueError("output_size=None and output=None: give the output's shape (non-spatial axes "
                             "included) or an array to write into")
        if output is not None:
            if output_size is not None and tuple(output_size) != tuple(output.shape):
                raise ValueError(f"output_size={tuple(output_size)!r} but output has shape {tuple(output.shape)}; "
                                 "give one of them")
            output_size = tuple(output.shape)
        self.sampler = sampler
        self.output_size = tuple(int(v) for v in output_size)
        self.output = output
        self.spatial_first = bool(spatial_first)
        self.has_batch_dim = bool(has_batch_dim)
        self.device = device
        n = len(sampler.spatial_size)
        nd = len(self.output_size)
        sp = self.output_size[:n] if self.spatial_first else self.output_size[nd - n:]
        if nd < n or tuple(sp) != sampler.spatial_size:
            raise ValueError(f"output_size={self.output_size!r} does not hold the sampler's spatial size "
                             f"{sampler.spatial_size} as its {'leading' if self.spatial_first else 'trailing'} "
                             f"axes (spatial_first={self.spatial_first}); fix output_size or spatial_first")
        self.non_spatial = self.output_size[n:] if self.spatial_first else self.output_size[:nd - n]
        if softmax_dim is not None:
            if not -nd <= softmax_dim < nd:
                raise ValueError(f"softmax_dim={softmax_dim} is out of range for output_size {self.output_size}")
            softmax_dim %= nd
            if (softmax_dim < n) if self.spatial_first else (softmax_dim >= nd - n):
                raise ValueError(f"softmax_dim={softmax_dim} is a spatial axis of output_size {self.output_size}; "
                                 "give the axis that holds the class scores")
        self.softmax_dim = softmax_dim
        self.weights = weights
        if isinstance(weights, str):
            window = _WEIGHTS.get(weights, weights)
        elif callable(weights):
            window = np.asarray(weights(sampler.patch_size))
        else:
            window = weights
        self._agg = _Aggregator(sampler._geometry, window=window, channel_last=self.spatial_first,
                                out_channels=math.prod(self.non_spatial) if self.non_spatial else None,
                                dtype=np.float32)

    def _flat(self, p: np.ndarray, spec) -> np.ndarray:
        # one prediction (no batch axis) in our layout: non-spatial axes folded into one channel axis
        n = len(spec.size)
        ns = p.shape[n:] if self.spatial_first else p.shape[:p.ndim - n]
        spatial = p.shape[:n] if self.spatial_first else p.shape[p.ndim - n:]
        if tuple(ns) != tuple(self.non_spatial) or tuple(spatial) != tuple(spec.size):
            raise ValueError(f"patch of shape {p.shape} does not fit bbox {[[a, a + s] for a, s in zip(spec.start, spec.size)]} "
                             f"with non-spatial axes {self.non_spatial} (output_size {self.output_size}, "
                             f"spatial_first={self.spatial_first}, has_batch_dim={self.has_batch_dim})")
        if not self.non_spatial:
            return p
        c = math.prod(self.non_spatial)
        return p.reshape(tuple(spatial) + (c,)) if self.spatial_first else p.reshape((c,) + tuple(spatial))

    def append(self, patch, patch_bbox) -> None:
        """Add the prediction for the patch at ``patch_bbox`` (a batch of them with ``has_batch_dim``)."""
        pred = _to_numpy(patch)
        bbox = _to_numpy(patch_bbox)
        if not self.has_batch_dim:
            pred, bbox = pred[None], bbox[None]
        if bbox.ndim != 3 or bbox.shape[0] != pred.shape[0]:
            raise ValueError(f"patch_bbox of shape {bbox.shape} for {pred.shape[0]} patches: give one "
                             f"(n_spatial, 2) bbox per patch (has_batch_dim={self.has_batch_dim})")
        for p, b in zip(pred, bbox):
            spec = self.sampler.spec_for(b)
            self._agg.add(self._flat(p, spec), spec)

    def get_output(self, inplace: bool = False):
        """The aggregated output (numpy), written into ``output`` when one was given.

        Raises if some patches were never appended. ``inplace`` is accepted
        for compatibility (the result is always a fresh array or ``output``).
        """
        res = self._agg.result()  # covered extent, spatial axes + one folded channel axis
        n = len(self.sampler.spatial_size)
        if self.non_spatial:
            cov = res.shape[:n] if self.spatial_first else res.shape[1:]
            res = res.reshape(tuple(cov) + self.non_spatial if self.spatial_first else self.non_spatial + tuple(cov))
        if self.sampler.covered_size != self.sampler.spatial_size:  # SAMPLE_CROP: the uncovered rest is 0
            full = np.zeros(self.output_size, dtype=res.dtype)
            key = tuple(slice(0, c) for c in self.sampler.covered_size)
            full[key if self.spatial_first else (Ellipsis,) + key] = res
            res = full
        if self.softmax_dim is not None:
            res = np.argmax(res, axis=self.softmax_dim)
        if self.output is not None and self.softmax_dim is None:
            self.output[...] = res
            return self.output
        return res

    def __repr__(self):
        return f"Aggregator(output_size={self.output_size}, weights={self.weights!r}, softmax_dim={self.softmax_dim})"
