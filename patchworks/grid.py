"""Tile geometry: pure integer arithmetic, no arrays and no I/O.

A :class:`TileGrid` cuts the *spatial* axes of an image into tiles. Each tile
has a **core** (the voxels it owns; the cores partition the image exactly) and
a **window** (core plus a halo of ``overlap`` voxels per side, clipped at the
image edge) that is what the tile function sees. Non-spatial axes (channels,
time) are carried whole and never tiled.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["EDGE_POLICIES", "PatchSpec", "Tile", "TileGrid", "normalize_per_axis"]

#: Edge policies of :meth:`TileGrid.for_patches`.
EDGE_POLICIES = ("shift", "pad", "squeeze", "adaptive")

_NON_SPATIAL_AXES = "ct"  # OME-NGFF axis letters that are carried whole


def normalize_per_axis(value, n_axes: int, name: str, *, default: int | None = None,
                       axes: str | None = None) -> tuple:
    """Turn ``int``, a sequence or ``{axis: int}`` into one value per spatial axis.

    This is the single normaliser for every per-axis option (tile shape,
    overlap, patch size, step), so they all accept the same spellings.

    Parameters
    ----------
    value : int, sequence of int, or mapping
        One value for all axes, one per spatial axis, or ``{axis: value}``
        where ``axis`` is a spatial-axis position or, when ``axes`` is given,
        an axis letter such as ``"z"``. Axes missing from a mapping take
        ``default``.
    n_axes : int
        Number of spatial axes.
    name : str
        Parameter name, used in error messages.
    default : int, optional
        Value for axes a mapping leaves out; without it a mapping must name
        every axis.
    axes : str, optional
        Letters of the spatial axes, e.g. ``"zyx"``.

    Examples
    --------
    >>> normalize_per_axis(4, 3, "overlap")
    (4, 4, 4)
    >>> normalize_per_axis({"z": 0}, 3, "overlap", default=8, axes="zyx")
    (0, 8, 8)
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r}: expected an int, a tuple of {n_axes} ints or a dict {{axis: int}}")
    if isinstance(value, (int, np.integer)) or value is None:
        return (value if value is None else int(value),) * n_axes
    if isinstance(value, Mapping):
        out = [default] * n_axes
        for key, item in value.items():
            if isinstance(key, str):
                if axes is None or key.lower() not in axes:
                    known = f"one of {list(axes)}" if axes else "an int axis position (no axes string was given)"
                    raise ValueError(f"{name}={value!r}: unknown axis {key!r}; use {known}")
                pos = axes.index(key.lower())
            else:
                pos = int(key)
                if not -n_axes <= pos < n_axes:
                    raise ValueError(f"{name}={value!r}: axis {key} is out of range for {n_axes} spatial axes")
                pos %= n_axes
            out[pos] = None if item is None else int(item)
        if default is None and any(v is None for v in out):
            raise ValueError(f"{name}={value!r}: give a value for every one of the {n_axes} spatial axes")
        return tuple(out)
    if isinstance(value, Sequence) or isinstance(value, np.ndarray):
        items = list(value)
        if len(items) != n_axes:
            hint = f" ({axes})" if axes else ""
            raise ValueError(
                f"{name}={tuple(items)!r} has {len(items)} entries but the image has {n_axes} spatial axes{hint}; "
                f"give one value per spatial axis, a single int, or a dict {{axis: int}}")
        return tuple(None if v is None else int(v) for v in items)
    raise TypeError(f"{name}={value!r}: expected an int, a tuple of {n_axes} ints or a dict {{axis: int}}")


def _spatial_axes(ndim: int, channel_axis, axes: str | None) -> tuple[int, ...]:
    if axes is not None:
        if len(axes) != ndim:
            raise ValueError(f"axes={axes!r} has {len(axes)} letters but the image has {ndim} axes; give one letter per axis")
        carried = {i for i, a in enumerate(axes.lower()) if a in _NON_SPATIAL_AXES}
    else:
        carried = set()
    if channel_axis is not None:
        chans = (channel_axis,) if isinstance(channel_axis, (int, np.integer)) else tuple(channel_axis)
        for c in chans:
            if not -ndim <= c < ndim:
                raise ValueError(f"channel_axis={channel_axis!r} is out of range for an image with {ndim} axes")
            carried.add(int(c) % ndim)
    spatial = tuple(i for i in range(ndim) if i not in carried)
    if not spatial:
        raise ValueError(f"the image has no spatial axis left to tile (ndim={ndim}, channel_axis={channel_axis!r}, axes={axes!r})")
    return spatial


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    ``index`` is the tile's position in the grid (one entry per spatial
    axis). ``core`` and ``window`` are tuples of slices into the full image
    (whole slices on non-spatial axes); ``crop`` selects the core inside the
    window. ``spatial_core`` and ``spatial_window`` hold the spatial axes
    only, which is the geometry of label outputs.
    """

    index: tuple[int, ...]
    linear_index: int
    core: tuple[slice, ...]
    window: tuple[slice, ...]
    crop: tuple[slice, ...]
    spatial_core: tuple[slice, ...]
    spatial_window: tuple[slice, ...]
    spatial_crop: tuple[slice, ...]

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.spatial_core)

    @property
    def window_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.spatial_window)


@dataclass(frozen=True)
class PatchSpec:
    """Where one patch lies: spatial geometry only, plain ints (picklable, collate-friendly).

    ``start`` may be negative and ``start + size`` may pass the image end on a
    grid with ``edge="pad"``; ``pad_width`` then says how many voxels of the
    patch lie outside the image before / after on each spatial axis. The
    **core** (``core_start`` .. ``core_stop``, image coordinates) is the part
    of the image this patch owns in crop-mode stitching; the cores of a grid
    partition the image. For training samplers the core is the whole patch.

    Attributes
    ----------
    data_idx : int
        Which image of the sampler (0 for a single image).
    sample_idx : int
        The patch's number among the patches of that image.
    start, size : tuple of int
        Patch origin and shape per spatial axis.
    pad_width : tuple of (int, int)
        Voxels outside the image per spatial axis (``np.pad`` order).
    core_start, core_stop : tuple of int
        Owned region, image coordinates.
    anchor : tuple of int
        The voxel the sampler drew (weighted / label samplers); otherwise the
        patch centre. Always inside the patch and the image.

    Examples
    --------
    >>> spec = TileGrid.for_patches((10,), 6, overlap=2, edge="pad").patch(2)
    >>> spec.start, spec.pad_width, spec.window, spec.core, spec.crop
    ((7,), ((0, 3),), (slice(7, 10, None),), (slice(8, 10, None),), (slice(1, 3, None),))
    >>> PatchSpec.from_dict(spec.to_dict()) == spec
    True
    """

    data_idx: int
    sample_idx: int
    start: tuple[int, ...]
    size: tuple[int, ...]
    pad_width: tuple[tuple[int, int], ...]
    core_start: tuple[int, ...]
    core_stop: tuple[int, ...]
    anchor: tuple[int, ...]

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(a + s for a, s in zip(self.start, self.size))

    @property
    def window(self) -> tuple[slice, ...]:
        """Spatial slices of the image to read (the patch clipped to the image)."""
        return tuple(slice(a + b, a + s - e) for a, s, (b, e) in zip(self.start, self.size, self.pad_width))

    @property
    def core(self) -> tuple[slice, ...]:
        """Spatial slices of the image this patch owns."""
        return tuple(slice(a, b) for a, b in zip(self.core_start, self.core_stop))

    @property
    def crop(self) -> tuple[slice, ...]:
        """The core inside the (padded) patch."""
        return tuple(slice(a - s, b - s) for a, b, s in zip(self.core_start, self.core_stop, self.start))

    @property
    def valid(self) -> tuple[slice, ...]:
        """The part of the (padded) patch that lies inside the image."""
        return tuple(slice(b, s - e) for s, (b, e) in zip(self.size, self.pad_width))

    def to_dict(self) -> dict:
        """Plain dict of ints and tuples (what a PyTorch ``DataLoader`` can collate)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "PatchSpec":
        """Inverse of :meth:`to_dict`; accepts lists for tuples."""
        def tup(v):
            return tuple(int(x) for x in v)
        return cls(data_idx=int(d["data_idx"]), sample_idx=int(d["sample_idx"]), start=tup(d["start"]),
                   size=tup(d["size"]), pad_width=tuple(tup(p) for p in d["pad_width"]),
                   core_start=tup(d["core_start"]), core_stop=tup(d["core_stop"]), anchor=tup(d["anchor"]))

    @classmethod
    def inside(cls, start, size, image_shape, *, data_idx=0, sample_idx=0, anchor=None) -> "PatchSpec":
        """Spec of a training patch: core = the patch clipped to the image."""
        start = tuple(int(a) for a in start)
        size = tuple(int(s) for s in size)
        stop = tuple(a + s for a, s in zip(start, size))
        if anchor is None and min(start) >= 0 and all(b <= n for b, n in zip(stop, image_shape)):
            # the common case of the training samplers (hot: one call per patch): wholly inside the image
            return cls(int(data_idx), int(sample_idx), start, size, ((0, 0),) * len(start), start, stop,
                       tuple(a + s // 2 for a, s in zip(start, size)))
        pad = tuple((max(0, -a), max(0, a + s - n)) for a, s, n in zip(start, size, image_shape))
        cs = tuple(max(a, 0) for a in start)
        ce = tuple(min(a + s, n) for a, s, n in zip(start, size, image_shape))
        if anchor is None:
            anchor = tuple(min(max(a + s // 2, 0), n - 1) for a, s, n in zip(start, size, image_shape))
        return cls(int(data_idx), int(sample_idx), start, size, pad, cs, ce, tuple(int(v) for v in anchor))


def _patch_starts(size: int, patch: int, step: int, edge: str) -> np.ndarray:
    """Patch origins along one axis (see :meth:`TileGrid.for_patches`)."""
    if edge == "pad":
        overlap = patch - step
        first = -(overlap // 2)
        # fewest patches whose union reaches overlap // 2 voxels past the end
        n = max(1, -(-(size + overlap // 2 - first - patch) // step) + 1)
        return first + step * np.arange(n, dtype=np.int64)
    if edge == "adaptive":
        # every origin of the regular lattice that lies inside the image (patchly's rule); patches are cut at the end
        return np.arange(0, max(size, 1), step, dtype=np.int64)
    n = -(-(size - patch) // step) + 1
    if edge == "shift":
        return np.minimum(step * np.arange(n, dtype=np.int64), size - patch)
    # squeeze: as many patches as "shift", spread evenly over [0, size - patch]
    return np.round(np.linspace(0, size - patch, n)).astype(np.int64) if n > 1 else np.zeros(1, np.int64)


def _core_bounds(starts: np.ndarray, patch: int, size: int, *, clip: bool = False) -> np.ndarray:
    """Split the overlap of consecutive patches at its midpoint: cores partition [0, size).

    ``clip``: patches end at the image end (``edge="adaptive"``), so the overlap is
    measured to the clipped stop, and the trailing patches that lie inside their
    neighbour still own one voxel each (bound ``i`` at most ``size - (n - i)``), so
    that no core is empty.
    """
    stops = np.minimum(starts[:-1] + patch, size) if clip else starts[:-1] + patch
    mids = (starts[1:] + stops) // 2  # midpoint of [start_{i+1}, stop_i)
    if clip:
        n = starts.size
        mids = np.minimum(mids, size - n + np.arange(1, n))
    return np.r_[0, mids, size].astype(np.int64)


class TileGrid:
    """Cut the spatial axes of an image into tiles with optional halo.

    Parameters
    ----------
    shape : tuple of int
        Full image shape, non-spatial axes included.
    tile_shape : int, tuple or dict
        Core size per spatial axis (see :func:`normalize_per_axis`). ``None``
        for an axis means the whole axis. A tile larger than the image is
        clipped to the image.
    overlap : int, tuple or dict, default 0
        Halo per side per spatial axis. Must be smaller than the tile on an
        axis that has more than one tile; an axis that a single tile covers
        gets no halo (it would lie outside the image), so a scalar overlap
        works on every image; a tile axis of thickness 1 gets no halo either
        (a 2-D model run plane by plane needs none along z, and z is never
        regrouped).
    channel_axis : int or tuple of int, optional
        Non-spatial axes, carried whole.
    axes : str, optional
        One letter per axis (OME-NGFF style, e.g. ``"czyx"``); ``c`` and
        ``t`` are carried whole.

    Examples
    --------
    >>> grid = TileGrid((10, 7), tile_shape=4, overlap=1)
    >>> grid.grid_shape
    (3, 2)
    >>> t = grid.tile((1, 1))
    >>> t.core, t.window
    ((slice(4, 8, None), slice(4, 7, None)), (slice(3, 9, None), slice(3, 7, None)))
    """

    def __init__(self, shape, tile_shape, overlap=0, *, channel_axis=None, axes: str | None = None):
        self.shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in self.shape):
            raise ValueError(f"shape={self.shape!r} has a negative axis length")
        self.ndim = len(self.shape)
        self.spatial_axes = _spatial_axes(self.ndim, channel_axis, axes)
        n = len(self.spatial_axes)
        spatial_letters = "".join(axes[i] for i in self.spatial_axes).lower() if axes else None
        self.axes = axes
        self.spatial_shape = tuple(self.shape[i] for i in self.spatial_axes)

        requested = normalize_per_axis(tile_shape, n, "tile_shape", default=0, axes=spatial_letters)
        tiles = []
        for ax, (t, size) in enumerate(zip(requested, self.spatial_shape)):
            if t is None or t == 0:
                t = size
            if t < 0:
                raise ValueError(f"tile_shape={requested!r}: axis {ax} has a negative size {t}; tile sizes must be >= 1")
            tiles.append(max(1, min(t, size)))
        self.tile_shape = tuple(tiles)

        halo = normalize_per_axis(overlap, n, "overlap", default=0, axes=spatial_letters)
        halos = []
        for ax, (h, t) in enumerate(zip(halo, self.tile_shape)):
            h = 0 if h is None else h
            if h < 0:
                raise ValueError(f"overlap={halo!r}: axis {ax} is negative; use 0 or more")
            if t == 1 or t >= self.spatial_shape[ax]:
                # plane-by-plane tiling: no halo, never regrouped; one tile spanning the axis: the
                # halo would lie outside the image, clipped to nothing
                h = 0
            elif h >= t:
                raise ValueError(
                    f"overlap={halo!r}: axis {ax} overlap {h} is not smaller than the tile size {t}; "
                    f"use an overlap below {t} or a larger tile_shape")
            halos.append(h)
        self.overlap = tuple(halos)

        self.boundaries = tuple(
            np.unique(np.r_[np.arange(0, size, t), size]).astype(np.int64) if size else np.zeros(1, np.int64)
            for size, t in zip(self.spatial_shape, self.tile_shape))
        self.grid_shape = tuple(max(len(b) - 1, 0) for b in self.boundaries)
        self.n_tiles = int(np.prod(self.grid_shape)) if self.grid_shape else 0
        # set by for_patches(): full-size patches whose windows are not core +- halo
        self.patch_size: tuple[int, ...] | None = None
        self.step: tuple[int, ...] | None = None
        self.edge: str | None = None
        self.patch_starts: tuple[np.ndarray, ...] | None = None

    @classmethod
    def from_chunks(cls, shape, chunks, overlap=0, *, channel_axis=None, axes=None) -> "TileGrid":
        """Grid whose cores have the given sizes per spatial axis (dask-style ``((4, 4, 2), ...)``)."""
        grid = cls(shape, tile_shape=1, channel_axis=channel_axis, axes=axes)
        if len(chunks) != len(grid.spatial_axes):
            raise ValueError(f"chunks has {len(chunks)} axes, expected {len(grid.spatial_axes)}")
        bounds = []
        for ax, (c, size) in enumerate(zip(chunks, grid.spatial_shape)):
            b = np.r_[0, np.cumsum(np.asarray(c, dtype=np.int64))]
            if b[-1] != size or np.any(np.diff(b) <= 0):
                raise ValueError(f"chunks {c!r} on axis {ax} do not partition its length {size}")
            bounds.append(b)
        grid.boundaries = tuple(bounds)
        grid.grid_shape = tuple(len(b) - 1 for b in bounds)
        grid.n_tiles = int(np.prod(grid.grid_shape))
        grid.tile_shape = tuple(int(np.max(np.diff(b))) for b in bounds)
        halo = normalize_per_axis(overlap, len(bounds), "overlap", default=0)
        halo = tuple(0 if len(b) == 2 and h is not None and h > 0 else h for h, b in zip(halo, bounds))  # one chunk
        for ax, (h, b) in enumerate(zip(halo, bounds)):
            if h < 0 or (h and h >= int(np.min(np.diff(b)))):
                raise ValueError(f"overlap={overlap!r}: axis {ax} needs 0 <= overlap < the smallest tile "
                                 f"({int(np.min(np.diff(b)))}) on that axis")
        grid.overlap = tuple(int(h) for h in halo)
        return grid

    @classmethod
    def for_patches(cls, shape, patch_size, *, overlap=None, step=None, edge="shift",
                    channel_axis=None, axes=None) -> "TileGrid":
        """Grid of full-size, overlapping patches (sliding-window inference, sequential training).

        Every patch has exactly ``patch_size`` voxels. Its tile *window*
        (:meth:`tile`) is the patch clipped to the image, and its *core* (the
        voxels it owns in crop-mode stitching) runs from the midpoint of the
        overlap with the previous patch to the midpoint of the overlap with
        the next, so the cores partition the image exactly. :meth:`patch`
        gives the full geometry, padding included, as a :class:`PatchSpec`.

        Parameters
        ----------
        shape : tuple of int
            Full image shape, non-spatial axes included.
        patch_size : int, tuple or dict
            Patch size per spatial axis; ``None`` or 0 on an axis means the
            whole axis.
        overlap : int, tuple or dict, optional
            Voxels shared by neighbouring patches (``step = patch_size -
            overlap``). Give ``overlap`` or ``step``, not both; default 0.
            A patch axis of size 1 gets no overlap.
        step : int, tuple or dict, optional
            Distance between patch origins, ``1 <= step <= patch_size``.
        edge : {"shift", "pad", "squeeze"}
            What happens where the last step would pass the image end:

            * ``"shift"``: the last patch is moved inward to end at the image
              end (it overlaps its neighbour more). Every patch lies inside.
            * ``"pad"``: patches keep the regular ``step`` and start
              ``overlap // 2`` voxels *before* the image, and as many are used
              as needed to reach at least ``overlap // 2`` voxels past its
              end, so border voxels are seen away from a patch edge (as in
              TorchIO); the sampler fills the outside with ``np.pad``
              semantics. Patches may be larger than the image.
            * ``"squeeze"``: as many patches as ``"shift"``, with origins
              spread evenly from 0 to ``size - patch_size`` (rounded), so all
              steps are equal to within one voxel and never exceed ``step``.
            * ``"adaptive"``: a patch at every multiple of ``step`` inside the
              image, each cut at the image end, so the last patches are
              *smaller* than ``patch_size`` (patchly's adaptive mode). With
              ``step < patch_size`` a few trailing patches lie wholly inside
              their neighbour. Nothing is padded and a patch larger than the
              image is cut to it.

            With ``"shift"`` and ``"squeeze"`` a patch larger than the image
            is an error.
        channel_axis, axes
            Non-spatial axes, as for :class:`TileGrid`.

        Examples
        --------
        >>> g = TileGrid.for_patches((10,), 4, overlap=1)
        >>> g.patch_starts[0].tolist(), g.boundaries[0].tolist()
        ([0, 3, 6], [0, 3, 6, 10])
        >>> TileGrid.for_patches((10,), 4, overlap=2, edge="pad").patch_starts[0].tolist()
        [-1, 1, 3, 5, 7]
        >>> TileGrid.for_patches((11,), 4, overlap=1, edge="squeeze").patch_starts[0].tolist()
        [0, 2, 5, 7]
        >>> [p.size for p in map(TileGrid.for_patches((10,), 4, edge="adaptive").patch, range(3))]
        [(4,), (4,), (2,)]
        """
        if edge not in EDGE_POLICIES:
            raise ValueError(f"edge={edge!r} is unknown; use one of {', '.join(map(repr, EDGE_POLICIES))}")
        grid = cls(shape, tile_shape=1, channel_axis=channel_axis, axes=axes)
        n = len(grid.spatial_axes)
        letters = "".join(axes[i] for i in grid.spatial_axes).lower() if axes else None
        req = normalize_per_axis(patch_size, n, "patch_size", default=0, axes=letters)
        sizes = []
        for ax, (p, size) in enumerate(zip(req, grid.spatial_shape)):
            p = size if not p else p
            if p < 1:
                raise ValueError(f"patch_size={req!r}: axis {ax} is {p}; patch sizes must be >= 1")
            if p > size and edge not in ("pad", "adaptive"):
                raise ValueError(
                    f"patch_size={req!r}: axis {ax} patch {p} is larger than the image axis ({size}); "
                    f"use edge='pad' (the outside is padded), edge='adaptive' (the patch is cut to the image) "
                    f"or a patch_size <= {size} on that axis")
            sizes.append(int(p))
        if overlap is not None and step is not None:
            raise ValueError(f"overlap={overlap!r} and step={step!r} were both given; give one of them "
                             "(step = patch_size - overlap)")
        if step is None:
            ov = normalize_per_axis(0 if overlap is None else overlap, n, "overlap", default=0, axes=letters)
            steps = []
            for ax, (o, p) in enumerate(zip(ov, sizes)):
                o = 0 if (o is None or p == 1) else o
                if not 0 <= o < p:
                    raise ValueError(f"overlap={ov!r}: axis {ax} overlap {o} must be >= 0 and smaller than the "
                                     f"patch size {p}; use an overlap in 0..{p - 1}")
                steps.append(p - o)
        else:
            st = normalize_per_axis(step, n, "step", default=0, axes=letters)
            steps = []
            for ax, (s, p) in enumerate(zip(st, sizes)):
                s = p if not s else s
                if not 1 <= s <= p:
                    raise ValueError(f"step={st!r}: axis {ax} step {s} must be in 1..{p} (the patch size), "
                                     "so that patches leave no gap")
                steps.append(int(s))
        starts, bounds = [], []
        for size, p, s in zip(grid.spatial_shape, sizes, steps):
            a = _patch_starts(size, p, s, edge)
            starts.append(a)
            bounds.append(_core_bounds(a, p, size, clip=edge == "adaptive"))
        grid.patch_size, grid.step, grid.edge = tuple(sizes), tuple(steps), edge
        grid.patch_starts = tuple(starts)
        grid.boundaries = tuple(bounds)
        grid.grid_shape = tuple(len(a) for a in starts)
        grid.n_tiles = int(np.prod(grid.grid_shape))
        grid.tile_shape = tuple(int(np.max(np.diff(b))) for b in bounds)
        grid.overlap = tuple(p - s for p, s in zip(sizes, steps))  # overlap between neighbouring patches
        return grid

    def patch(self, index, *, data_idx: int = 0) -> PatchSpec:
        """Geometry of the patch at grid position ``index`` (tuple or linear int).

        On a grid from :meth:`for_patches` this is the full-size patch with
        its padding; on an ordinary grid it is the tile window (no padding).
        """
        t = self.tile(index)
        if self.patch_starts is None:
            start = tuple(s.start for s in t.spatial_window)
            size = t.window_shape
        else:
            start = tuple(int(a[i]) for a, i in zip(self.patch_starts, t.index))
            size = self.patch_size
            if self.edge == "adaptive":
                size = tuple(min(p, n - a) for p, n, a in zip(size, self.spatial_shape, start))
        pad = tuple((max(0, -a), max(0, a + p - n)) for a, p, n in zip(start, size, self.spatial_shape))
        core_start = tuple(s.start for s in t.spatial_core)
        core_stop = tuple(s.stop for s in t.spatial_core)
        anchor = tuple((lo + hi - 1) // 2 for lo, hi in zip(core_start, core_stop))
        return PatchSpec(int(data_idx), t.linear_index, start, tuple(size), pad, core_start, core_stop, anchor)

    # -- tiles -----------------------------------------------------------
    def __len__(self) -> int:
        return self.n_tiles

    def __iter__(self) -> Iterator[Tile]:
        for index in itertools.product(*(range(g) for g in self.grid_shape)):
            yield self.tile(index)

    def linear_index(self, index) -> int:
        if len(index) != len(self.grid_shape) or any(not 0 <= int(i) < g for i, g in zip(index, self.grid_shape)):
            return int(np.ravel_multi_index(tuple(index), self.grid_shape))  # its error names the index
        linear = 0
        for i, g in zip(index, self.grid_shape):  # plain ints: ~10x faster than ravel_multi_index per tile
            linear = linear * g + int(i)
        return linear

    def tile(self, index) -> Tile:
        """The tile at grid position ``index`` (a tuple, or a linear int)."""
        # plain-int arithmetic: a run asks for tiles ~10 times per task (~60 -> ~12 us each)
        grid_shape = self.grid_shape
        if isinstance(index, (int, np.integer)):
            linear = int(index)
            if not 0 <= linear < self.n_tiles:
                np.unravel_index(linear, grid_shape)  # raises, naming the index and the grid's size
            found, rest = [], linear
            for g in reversed(grid_shape):
                rest, i = divmod(rest, g)
                found.append(i)
            index = tuple(reversed(found))
        else:
            index = tuple(int(i) for i in index)
            if len(index) != len(grid_shape) or any(not 0 <= i < g for i, g in zip(index, grid_shape)):
                raise IndexError(f"tile index {index} is outside the grid {grid_shape}")
            linear = 0
            for i, g in zip(index, grid_shape):
                linear = linear * g + i
        core, window, crop = [], [], []
        for ax, (i, b, h, size) in enumerate(zip(index, self.boundaries, self.overlap, self.spatial_shape)):
            lo, hi = int(b[i]), int(b[i + 1])
            if self.patch_starts is None:
                wlo, whi = max(lo - h, 0), min(hi + h, size)
            else:  # patch grid: the window is the patch, clipped to the image (padding is separate)
                p0 = int(self.patch_starts[ax][i])
                wlo, whi = max(p0, 0), min(p0 + self.patch_size[ax], size)
            core.append(slice(lo, hi))
            window.append(slice(wlo, whi))
            crop.append(slice(lo - wlo, hi - wlo))
        core, window, crop = tuple(core), tuple(window), tuple(crop)
        if len(core) == len(self.shape):  # every axis spatial: the full keys are the spatial ones
            return Tile(index, linear, core, window, crop, core, window, crop)
        return Tile(index=index, linear_index=linear,
                    core=self._full(core), window=self._full(window), crop=self._full(crop, relative=True),
                    spatial_core=core, spatial_window=window, spatial_crop=crop)

    def _full(self, spatial, relative: bool = False) -> tuple[slice, ...]:
        out = [slice(None) if relative else slice(0, s) for s in self.shape]
        for ax, sl in zip(self.spatial_axes, spatial):
            out[ax] = sl
        return tuple(out)

    def tile_containing(self, point) -> tuple[int, ...]:
        """Grid index of the tile whose core holds the spatial ``point``."""
        return tuple(int(np.searchsorted(b, p, side="right") - 1) for b, p in zip(self.boundaries, point))

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape (spatial axes) whose chunks never straddle two tile cores.

        Equal to ``tile_shape`` for a regular grid; for irregular tiles
        (``from_chunks``) the largest size that divides every inner boundary,
        so that no two tile tasks ever write the same chunk.
        """
        out = []
        for b, size in zip(self.boundaries, self.spatial_shape):
            inner = b[1:-1]
            out.append(int(np.gcd.reduce(inner)) if inner.size else max(size, 1))
        return tuple(out)

    def __repr__(self) -> str:
        return (f"TileGrid(shape={self.shape}, tile_shape={self.tile_shape}, overlap={self.overlap}, "
                f"spatial_axes={self.spatial_axes}, grid_shape={self.grid_shape})")
