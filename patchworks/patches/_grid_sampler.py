"""Sliding-window inference in your own loop: :class:`GridSampler` and :class:`Aggregator`.

The sampler cuts an image into full-size patches on a :meth:`TileGrid.for_patches`
grid and reads each patch lazily (only the voxels it needs, padded with
``np.pad`` semantics past the image edge). The aggregator takes the model's
predictions batch by batch and puts them back together: crop mode writes each
patch's core straight to the output; blended modes (``"mean"``, ``"hann"``,
``"gaussian"`` or your own weights) accumulate ``sum(w * pred)`` in float32,
then make ``sum(w)`` from where the patches lie and divide at the end.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from patchworks.grid import PatchSpec, TileGrid
from patchworks.io._sources import create_output, open_image

__all__ = ["PAD_MODES", "Aggregator", "GridSampler", "read_patch"]

#: ``np.pad`` modes a patch can be padded with (those that copy voxels, so only the patch is read).
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _check_pad_mode(pad_mode):
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r} is not supported; use one of {', '.join(map(repr, PAD_MODES))} "
                         "(np.pad modes that copy voxels, so a patch is read without reading the whole image)")


def read_patch(image, spec: PatchSpec, spatial_axes, *, pad_mode="constant", constant_values=0) -> np.ndarray:
    """Read one patch of ``image``, padded exactly as ``np.pad(image, ..., mode=pad_mode)`` would be.

    Only the voxels the patch needs are read: its window, plus for
    ``"reflect"``, ``"symmetric"``, ``"edge"`` and ``"wrap"`` the few planes
    the padding copies (read as separate small blocks, never a bounding box
    of the whole axis).

    Parameters
    ----------
    image : array-like
        numpy / dask / zarr array or :class:`LazySource`.
    spec : PatchSpec
    spatial_axes : tuple of int
        Positions of the spatial axes in ``image``; other axes are read whole.
    pad_mode : str
        One of :data:`PAD_MODES`.
    constant_values : scalar
        Fill value for ``pad_mode="constant"``.

    Examples
    --------
    >>> spec = PatchSpec.inside((-2,), (5,), (4,))
    >>> read_patch(np.arange(4), spec, (0,), pad_mode="reflect")
    array([2, 1, 0, 1, 2])
    """
    _check_pad_mode(pad_mode)
    ndim = len(image.shape)
    key = [slice(None)] * ndim
    for ax, sl in zip(spatial_axes, spec.window):
        key[ax] = sl
    if not any(b or e for b, e in spec.pad_width):
        out = np.asarray(image[tuple(key)])
        # a numpy image gives a view: copy, so a model that edits its patch in place never reaches the input
        return out if out.flags.owndata else out.copy()
    runs, takes = [], []  # per axis: contiguous runs of image indices to read; gather map (or None)
    for ax in range(ndim):
        if ax not in spatial_axes:
            runs.append([(0, image.shape[ax])])
            takes.append(None)
            continue
        k = spatial_axes.index(ax)
        a, p, (b, e) = spec.start[k], spec.size[k], spec.pad_width[k]
        n = image.shape[ax]
        if not (b or e):
            runs.append([(a, a + p)])
            takes.append(None)
            continue
        extra = {"constant_values": -1} if pad_mode == "constant" else {}
        idx = np.pad(np.arange(n, dtype=np.int64), (b, e), mode=pad_mode, **extra)[a + b: a + b + p]
        u = np.unique(idx[idx >= 0])
        cuts = np.flatnonzero(np.diff(u) != 1) + 1
        runs.append([(int(r[0]), int(r[-1]) + 1) for r in np.split(u, cuts)])
        takes.append((np.searchsorted(u, np.maximum(idx, 0)), idx < 0))
    shape = [sum(hi - lo for lo, hi in r) for r in runs]
    compact = None
    for combo in _product(runs):
        block = np.asarray(image[tuple(slice(lo, hi) for lo, hi in combo)])
        if compact is None:
            compact = np.empty(shape, dtype=block.dtype)
        dest = []
        for ax, (lo, hi) in enumerate(combo):
            off = 0
            for r in runs[ax]:
                if r == (lo, hi):
                    break
                off += r[1] - r[0]
            dest.append(slice(off, off + hi - lo))
        compact[tuple(dest)] = block
    out = compact
    for ax, t in enumerate(takes):
        if t is None:
            continue
        out = np.take(out, t[0], axis=ax)
        if t[1].any():
            sel = [slice(None)] * ndim
            sel[ax] = t[1]
            out[tuple(sel)] = constant_values
    return out


def _product(runs):
    if not runs:
        yield ()
        return
    for first in runs[0]:
        for rest in _product(runs[1:]):
            yield (first,) + rest


class GridSampler:
    """Full-size patches of one image on a regular grid, for inference in your own loop.

    Indexable and iterable: ``sampler[i]`` and iteration give
    ``(patch, spec)`` with ``patch`` a numpy array (non-spatial axes whole, in
    the image's axis order) and ``spec`` a :class:`PatchSpec`. Patches are
    read lazily, so the image may be a zarr / TIFF / HDF5 path, a
    :class:`LazySource` or a dask array far larger than memory.

    Parameters
    ----------
    image : array-like or path
        Anything :func:`open_image` accepts.
    patch_size : int, tuple or dict
        Patch size per spatial axis.
    overlap, step : int, tuple or dict, optional
        Overlap between neighbouring patches, or the step between their
        origins (give one); default no overlap.
    edge : {"shift", "pad", "squeeze", "adaptive"}
        Edge policy, see :meth:`TileGrid.for_patches`; with ``"adaptive"``
        the last patches are smaller than ``patch_size``.
    pad_mode : str
        ``np.pad`` mode for the part of a patch outside the image (one of
        :data:`PAD_MODES`); only used with ``edge="pad"``.
    constant_values : scalar
        Fill value of ``pad_mode="constant"``.
    channel_axis : int or tuple of int, optional
        Non-spatial axes, carried whole.
    axes : str, optional
        Axis letters (``"czyx"``); ``c`` and ``t`` are carried whole.

    Examples
    --------
    >>> img = np.arange(20.0).reshape(4, 5)
    >>> sampler = GridSampler(img, (4, 3), overlap=(0, 1))
    >>> len(sampler)
    2
    >>> patch, spec = sampler[1]
    >>> patch.shape, spec.start, spec.core
    ((4, 3), (0, 2), (slice(0, 4, None), slice(2, 5, None)))
    """

    def __init__(self, image, patch_size, *, overlap=None, step=None, edge="shift", pad_mode="constant",
                 constant_values=0, channel_axis=None, axes=None):
        self.image = open_image(image)
        _check_pad_mode(pad_mode)
        self.grid = TileGrid.for_patches(self.image.shape, patch_size, overlap=overlap, step=step, edge=edge,
                                         channel_axis=channel_axis, axes=axes)
        self.pad_mode = pad_mode
        self.constant_values = constant_values
        self._specs = [self.grid.patch(i) for i in range(self.grid.n_tiles)]

    @property
    def shape(self):
        return tuple(self.image.shape)

    @property
    def spatial_axes(self):
        return self.grid.spatial_axes

    @property
    def spatial_shape(self):
        return self.grid.spatial_shape

    @property
    def patch_size(self):
        return self.grid.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid.n_tiles

    @property
    def specs(self) -> list[PatchSpec]:
        """All patch specs, in index order."""
        return list(self._specs)

    def __len__(self) -> int:
        return self.n_patches

    def spec(self, index: int) -> PatchSpec:
        """Geometry of patch ``index`` (no reading)."""
        return self._specs[_check_index(index, self.n_patches)]

    def read(self, spec: PatchSpec) -> np.ndarray:
        """Read the patch ``spec`` describes."""
        return read_patch(self.image, spec, self.spatial_axes, pad_mode=self.pad_mode,
                          constant_values=self.constant_values)

    def __getitem__(self, index):
        spec = self.spec(index)
        return self.read(spec), spec

    def __iter__(self):
        for spec in self._specs:
            yield self.read(spec), spec

    def __repr__(self):
        return (f"GridSampler(shape={self.shape}, patch_size={self.patch_size}, step={self.grid.step}, "
                f"edge={self.grid.edge!r}, n_patches={self.n_patches})")


def _check_index(index, n) -> int:
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise TypeError(f"index={index!r}: expected an int")
    i = int(index)
    if not -n <= i < n:
        raise IndexError(f"index={i} is out of range for {n} patches; valid: 0..{n - 1}")
    return i % n


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):  # a torch tensor; torch itself is never imported here
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _pick(value, i):
    if isinstance(value, (list, tuple)):
        return tuple(_pick(v, i) for v in value)
    return int(value[i])


def as_specs(specs) -> tuple[list[PatchSpec], bool]:
    """Normalise what ``Aggregator.add`` gets as specs; returns (list, was_single)."""
    if isinstance(specs, PatchSpec):
        return [specs], True
    if isinstance(specs, Mapping):
        d = specs["data_idx"]
        if isinstance(d, (int, np.integer)):
            return [PatchSpec.from_dict(specs)], True
        n = len(d)  # a batch collated by torch's default_collate: fields batched, tuples as lists
        return [PatchSpec.from_dict({k: _pick(v, i) for k, v in specs.items()}) for i in range(n)], False
    if isinstance(specs, Sequence) or isinstance(specs, np.ndarray):
        return [s if isinstance(s, PatchSpec) else PatchSpec.from_dict(s) for s in specs], False
    raise TypeError(f"specs={type(specs).__name__}: expected a PatchSpec, a list of them, or a (collated) dict")


# A blending slab has at least this many planes: thinner ones cost more in hand-offs than they save
_MIN_SLAB_PLANES = 8
_MAX_BLEND_THREADS = 8


def _grid_placements(specs, size) -> list | None:
    """Per spatial axis, where the patches lie: ``[(image start, stop, patch start, stop), ...]``, when the
    patches are all of ``size`` and are every combination of those placements once (a grid); else None."""
    if not specs or any(tuple(s.size) != tuple(size) for s in specs):
        return None
    places = [tuple((w.start, w.stop, v.start, v.stop) for w, v in zip(s.window, s.valid)) for s in specs]
    per_axis = [sorted(set(axis)) for axis in zip(*places)]
    if len(set(places)) != len(places) or len(places) != math.prod(len(a) for a in per_axis):
        return None
    return per_axis


def _spread_window(window: np.ndarray, places, shape) -> np.ndarray:
    """The sum of ``window`` placed at every combination of ``places`` (see :func:`_grid_placements`).

    The window is spread along the last axis first, then the one before...
    (the intermediates grow from the window's shape to ``shape``), each
    axis one slab add per placement: a 384^3 grid of 64^3 windows with
    step 32 takes 10^8 adds instead of 3.5 10^8 strided ones.
    """
    total = window.astype(np.float32)
    for a in reversed(range(len(shape))):
        spread = np.zeros(total.shape[:a] + (shape[a],) + total.shape[a + 1:], np.float32)
        lead = (slice(None),) * a
        for i0, i1, v0, v1 in places[a]:
            dst = spread[lead + (slice(i0, i1),)]
            np.add(dst, total[lead + (slice(v0, v1),)], out=dst)
        total = spread
    return total


def _blend_threads(threads) -> int:
    if threads is None:
        from patchworks.run._resources import available_cores

        return max(1, min(available_cores(), _MAX_BLEND_THREADS))
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: use a positive int (1 blends on the calling thread), or None "
                         "for the cores this process may use")
    return int(threads)


class Aggregator:
    """Put per-patch predictions of a :class:`GridSampler` back into one image.

    Parameters
    ----------
    sampler : GridSampler
        The sampler whose patches were predicted.
    window : {"crop", "mean", "hann", "gaussian"} or array
        ``"crop"``: each voxel is taken from the patch whose core owns it
        (exact: an identity model gives the input back bit for bit; nothing
        but the output is held). Otherwise predictions are blended with
        these weights (see :func:`patchworks.run._windows.make_window`, or an
        array of ``patch_size``): a float32 accumulator of the output's size
        is kept until :meth:`result`, which then makes the sum of the
        weights (float32, the spatial size) from where the patches lie:
        each :meth:`add` only adds ``w * prediction``. For outputs far
        larger than memory use the streaming blended writer
        (``tile_blend``) instead.
    out_channels : int, optional
        Number of prediction channels, checked against the first batch;
        ``None`` takes it from the first batch (no channel axis when the
        predictions have none).
    channel_last : bool
        Predictions are ``(batch, *patch, channels)`` instead of
        ``(batch, channels, *patch)``; the output uses the same layout.
    dtype : numpy dtype, optional
        Output dtype; default the predictions' dtype in crop mode, float32
        when blending.
    output : path or zarr.Array, optional
        Write to a new zarr store at this path (created on the first
        :meth:`add`) or into this existing array; default a numpy array.
    chunks : tuple of int, optional
        Spatial chunk shape of a new zarr output (default: the largest core).
    zarr_format : {3, 2}
    overwrite : bool
        Replace an existing store at ``output``.
    threads : int, optional
        Threads that blend each prediction into the accumulator (each takes
        a slab of the patch along the first spatial axis; numpy releases the
        GIL there). Default: the cores this process may use
        (:func:`patchworks.available_cores`, capped at 8); 1 blends on the
        calling thread. Crop mode always copies on the calling thread.
        Predictions that come as float32 torch tensors are blended by
        torch's own kernels on its threads (``torch.set_num_threads``)
        instead: the same sums bit for bit, about twice as fast.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((3, 9, 10), dtype=np.float32)
    >>> sampler = GridSampler(img, (4, 4), overlap=1, channel_axis=0)
    >>> agg = Aggregator(sampler, window="crop")
    >>> for patch, spec in sampler:
    ...     agg.add(patch, spec)  # one patch; batches (B, C, *patch) work the same
    >>> bool(np.array_equal(agg.result(), img))
    True
    """

    def __init__(self, sampler, *, window="crop", out_channels=None, channel_last=False, dtype=None,
                 output=None, chunks=None, zarr_format=3, overwrite=False, threads=None):
        from patchworks.run._heap import settle_malloc
        from patchworks.run._windows import make_window, unit_weights

        if not hasattr(sampler, "grid") or getattr(sampler.grid, "patch_size", None) is None:
            raise TypeError(f"sampler={type(sampler).__name__}: expected a GridSampler")
        self.sampler = sampler
        self.window = window
        self.crop = isinstance(window, str) and window == "crop"
        self.weights_window = None if self.crop else make_window(window, sampler.patch_size)
        self._unit_weights = unit_weights(self.weights_window)  # "mean": no product before each add
        self._small_windows = {}
        if out_channels is not None and (not isinstance(out_channels, (int, np.integer)) or out_channels < 1):
            raise ValueError(f"out_channels={out_channels!r}: use a positive int, or None to take it from the "
                             "first batch")
        self.out_channels = out_channels
        self.channel_last = bool(channel_last)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._output, self._chunks, self._zarr_format, self._overwrite = output, chunks, zarr_format, overwrite
        self._out = None  # final output (crop) or None
        self._acc = None  # float32 sum(w * pred) (blended)
        self.weight_sum = None  # float32 sum(w), spatial only (blended): made by result() from the specs
        self._has_channels = None
        self.threads = _blend_threads(threads)
        self._pool = None  # threads - 1 helpers; the calling thread blends one slab itself
        self._bufs = {}  # per slab: scratch for w * pred (blended)
        self._acc_t = None  # the accumulator seen by torch, once a batch came as a torch tensor
        self._result = None  # the divided accumulator, once result() was called (numpy output)
        self._seen = np.zeros(sampler.n_patches, dtype=np.int32)  # times each patch was added
        # the loop around us allocates a batch, its predictions and temporaries per call: with glibc's
        # starting thresholds each is a fresh mapping, faulted in and unmapped again (384^3 in 64^3
        # windows: 2-4 10^5 page faults; the loop 5.4-7.2 s, 4.5-4.8 s with the thresholds set)
        settle_malloc()

    # -- layout helpers --------------------------------------------------
    def _idx(self, spatial):
        if not self._has_channels:
            return tuple(spatial)
        return tuple(spatial) + (slice(None),) if self.channel_last else (slice(None),) + tuple(spatial)

    def _expand(self, w):
        if not self._has_channels:
            return w
        return w[..., None] if self.channel_last else w[None]

    def _allocate(self, pred):
        nsp = len(self.sampler.spatial_shape)
        self._has_channels = pred.ndim == nsp + 2
        c = None
        if self._has_channels:
            c = pred.shape[-1] if self.channel_last else pred.shape[1]
        if self.out_channels is not None and c != self.out_channels:
            raise ValueError(f"out_channels={self.out_channels} but the predictions have "
                             f"{'no channel axis' if c is None else f'{c} channels'} (batch shape {pred.shape}, "
                             f"channel_last={self.channel_last}); fix out_channels or channel_last")
        spatial = tuple(self.sampler.spatial_shape)
        shape = spatial if c is None else (spatial + (c,) if self.channel_last else (c,) + spatial)
        dtype = self.dtype if self.dtype is not None else (pred.dtype if self.crop else np.dtype(np.float32))
        if self._output is None:
            self._out = np.zeros(shape, dtype=dtype) if self.crop else None
        else:
            self._out = self._open_output(shape, dtype)
        if not self.crop:
            self._acc = np.zeros(shape, dtype=np.float32)
        self._shape, self._odtype = shape, dtype

    def _open_output(self, shape, dtype):
        out = self._output
        if isinstance(out, (str, os.PathLike)):
            sp = self._chunks or tuple(min(t, s) for t, s in zip(self.sampler.grid.tile_shape,
                                                                  self.sampler.spatial_shape))
            chunks = tuple(self._idx_shape(sp, shape))
            return create_output(out, shape=shape, dtype=dtype, chunks=chunks, zarr_format=self._zarr_format,
                                 overwrite=self._overwrite)
        if tuple(out.shape) != shape:
            raise ValueError(f"output has shape {tuple(out.shape)} but the aggregated image has shape {shape}; "
                             "create it with that shape, or pass a path to let the Aggregator create it")
        return out

    def _idx_shape(self, spatial, shape):
        if not self._has_channels:
            return spatial
        c = shape[-1] if self.channel_last else shape[0]
        return tuple(spatial) + (c,) if self.channel_last else (c,) + tuple(spatial)

    # -- public ----------------------------------------------------------
    def add(self, batch, specs):
        """Add predictions for the patches ``specs`` (a spec, a list, or a collated dict).

        ``batch`` is a numpy array or torch tensor of shape ``(B, C, *patch)``
        (``(B, *patch, C)`` with ``channel_last=True``, ``(B, *patch)``
        without channels), or one patch without the batch axis when
        ``specs`` is a single :class:`PatchSpec`.
        """
        if self._result is not None:
            raise RuntimeError("add() after result(): the blended accumulator was divided in place; "
                               "add every batch before calling result(), or start a new Aggregator")
        spec_list, single = as_specs(specs)
        is_tensor = type(batch).__module__.startswith("torch")
        pred = _to_numpy(batch)
        if single:
            pred = pred[None]
        if pred.shape[0] != len(spec_list):
            raise ValueError(f"batch has {pred.shape[0]} predictions but {len(spec_list)} specs were given; "
                             "pass one spec per prediction")
        nsp = len(self.sampler.spatial_shape)
        if pred.ndim not in (nsp + 1, nsp + 2):
            raise ValueError(f"batch shape {pred.shape}: expected (B, C, *patch) or (B, *patch) with "
                             f"{nsp} spatial axes (channel_last={self.channel_last})")
        if self._has_channels is None:
            self._allocate(pred)
        elif (pred.ndim == nsp + 2) != self._has_channels:
            raise ValueError(f"batch shape {pred.shape} disagrees with earlier batches about the channel axis")
        for p, spec in zip(pred, spec_list):
            sp = p.shape[:-1] if (self._has_channels and self.channel_last) else p.shape[-nsp:]
            if tuple(sp) != tuple(spec.size):
                raise ValueError(f"prediction of spatial shape {tuple(sp)} for a patch of size {spec.size}; the "
                                 "model must keep the patch size (check channel_last)")
            if spec.sample_idx >= self._seen.size or spec.data_idx != 0:
                raise ValueError(f"spec {spec} does not belong to this sampler")
            if self.crop:
                self._out[self._idx(spec.core)] = p[self._idx(spec.crop)]
            elif is_tensor and p.dtype == np.float32:
                self._fold_torch(p, spec)
            else:
                self._blend(p, spec)
            self._seen[spec.sample_idx] += 1

    def _blend(self, p, spec):
        """Add ``w * p`` into the accumulator, in slabs along the first spatial axis, one per thread.

        The slabs of one patch never overlap, and each patch is finished
        before the next starts (patches of a batch may overlap each other).
        """
        w = self._window_for(spec)[spec.valid]
        valid, window = spec.valid, spec.window
        n = valid[0].stop - valid[0].start
        k = max(1, min(self.threads, n // _MIN_SLAB_PLANES))
        cuts = [n * j // k for j in range(k + 1)]
        slabs = [((slice(valid[0].start + a, valid[0].start + b),) + tuple(valid[1:]),
                  (slice(window[0].start + a, window[0].start + b),) + tuple(window[1:]), w[a:b])
                 for a, b in zip(cuts[:-1], cuts[1:])]
        if k == 1:
            self._fold(0, p, *slabs[0])
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="patchworks-blend")
        futures = [self._pool.submit(self._fold, j, p, *slab) for j, slab in enumerate(slabs[1:], 1)]
        self._fold(0, p, *slabs[0])
        for f in futures:
            f.result()

    def _fold(self, j, p, valid, window, w):
        # only w * p: the weights' sum depends on the specs alone, result() makes it once (a fifth less
        # memory traffic per patch, where the adds into the accumulator are bound by memory)
        src = p[self._idx(valid)]
        dst = self._acc[self._idx(window)]
        if self._unit_weights:
            np.add(dst, src, out=dst, casting="unsafe")
            return
        # product into a reused buffer (one per slab), then one in-place add: no temporary per patch
        buf = self._bufs.get(j)
        if buf is None or buf.size < src.size:
            buf = self._bufs[j] = np.empty(src.size, np.float32)
        tmp = buf[:src.size].reshape(src.shape)
        np.multiply(src, self._expand(w), out=tmp, casting="unsafe")
        np.add(dst, tmp, out=dst)

    def _fold_torch(self, p, spec):
        """``acc += w * p`` with torch's kernels and its own threads, for predictions that came as float32
        tensors: the same float32 products and sums as :meth:`_fold` (bit for bit), about twice as fast
        into a strided slice of a large accumulator (64^3 x 4 channels into 384^3: 0.8 against 1.5 ms)."""
        import torch  # the batch was a tensor: torch is imported already

        if self._acc_t is None:
            self._acc_t = torch.from_numpy(self._acc)  # the same memory
        src = torch.from_numpy(p)[self._idx(spec.valid)]
        dst = self._acc_t[self._idx(spec.window)]
        if self._unit_weights:
            dst.add_(src)
            return
        dst.add_(src * self._expand(torch.from_numpy(self._window_for(spec))[spec.valid]))

    def _weight_sums(self) -> np.ndarray:
        """``sum(w)`` over the added patches (each as often as it was added), float32, spatial shape.

        A full grid of equal patches, each added once, is spread along one
        axis after the other (:func:`_spread_window`): a few adds of large
        slabs instead of one strided add per patch. Anything else adds each
        patch's window.
        """
        spatial = tuple(self.sampler.spatial_shape)
        specs = self.sampler.specs
        places = _grid_placements(specs, self.weights_window.shape) if (self._seen == 1).all() else None
        if places is not None:
            return _spread_window(self.weights_window, places, spatial)
        total = np.zeros(spatial, np.float32)
        for spec, times in zip(specs, self._seen):
            if times:
                dst = total[spec.window]
                w = self._window_for(spec)[spec.valid]
                np.add(dst, w if times == 1 else w * np.float32(times), out=dst)
        return total

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"], state["_bufs"], state["_acc_t"] = None, {}, None
        return state

    def close(self) -> None:
        """Stop the blending threads (:meth:`result` does; an Aggregator dropped unfinished needs nothing)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._bufs = {}
        self._acc_t = None

    def _window_for(self, spec):
        size = tuple(spec.size)
        if size == tuple(self.weights_window.shape):
            return self.weights_window
        # a smaller patch (edge="adaptive"): a named window of its own size, so its cut edge is
        # weighted down like any patch edge; user weights are the full patch's, cut like the patch
        w = self._small_windows.get(size)
        if w is None:
            from ..run._windows import make_window

            if isinstance(self.window, str):
                w = make_window(self.window, size)
            else:
                w = self.weights_window[tuple(slice(0, n) for n in size)]
            self._small_windows[size] = w
        return w

    @property
    def n_missing(self) -> int:
        """Patches of the sampler not added yet."""
        return int((self._seen == 0).sum())

    def result(self, *, allow_missing=False):
        """The aggregated image (numpy array, or the zarr array for ``output=``).

        Raises if some patches were never added, unless ``allow_missing``
        (their voxels are then 0).
        """
        if self._has_channels is None:
            raise RuntimeError("no predictions were added; call add(batch, specs) for the sampler's patches first")
        if self.n_missing and not allow_missing:
            raise RuntimeError(f"{self.n_missing} of {self._seen.size} patches were never added; add them, or "
                               "pass allow_missing=True to leave their voxels at 0")
        self.close()
        if self.crop:
            return self._out
        if self.weight_sum is None:
            self.weight_sum = self._weight_sums()
        if self._out is None:
            if self._result is None:  # divide in place: no full-size temporaries (result() may be called again)
                w = self._expand(self.weight_sum)
                np.divide(self._acc, w, out=self._acc, where=w > 0)
                self._result = self._acc.astype(self._odtype, copy=False)
            return self._result
        # blockwise along the output's chunk grid: each chunk written once
        out = self._out
        sp_chunks = [out.chunks[a] for a in range(out.ndim)]
        if self._has_channels:
            sp_chunks = sp_chunks[:-1] if self.channel_last else sp_chunks[1:]
        for t in TileGrid(self.weight_sum.shape, tuple(sp_chunks)):
            idx = self._idx(t.spatial_core)
            out[idx] = self._finish(self._acc[idx], self.weight_sum[t.spatial_core]).astype(self._odtype, copy=False)
        return out

    def _finish(self, acc, wsum):
        w = self._expand(wsum)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(w > 0, acc / np.where(w > 0, w, 1), 0).astype(np.float32)
