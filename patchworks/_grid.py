"""Tile geometry: pure integer arithmetic, no arrays and no I/O.

A :class:`TileGrid` cuts the *spatial* axes of an image into tiles. Each tile
has a **core** (the voxels it owns; the cores partition the image exactly) and
a **window** (core plus a halo of ``overlap`` voxels per side, clipped at the
image edge) that is what the tile function sees. Non-spatial axes (channels,
time) are carried whole and never tiled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["Tile", "TileGrid", "normalize_per_axis"]

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
        Halo per side per spatial axis. Must be smaller than the tile on
        that axis; a tile axis of thickness 1 gets no halo (a 2-D model run
        plane by plane needs none along z, and z is never regrouped).
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
            if t == 1:
                h = 0  # plane-by-plane tiling: no halo, never regrouped
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
        for ax, (h, b) in enumerate(zip(halo, bounds)):
            if h < 0 or (h and h >= int(np.min(np.diff(b)))):
                raise ValueError(f"overlap={overlap!r}: axis {ax} needs 0 <= overlap < the smallest tile "
                                 f"({int(np.min(np.diff(b)))}) on that axis")
        grid.overlap = tuple(int(h) for h in halo)
        return grid

    # -- tiles -----------------------------------------------------------
    def __len__(self) -> int:
        return self.n_tiles

    def __iter__(self) -> Iterator[Tile]:
        for index in itertools.product(*(range(g) for g in self.grid_shape)):
            yield self.tile(index)

    def linear_index(self, index) -> int:
        return int(np.ravel_multi_index(tuple(index), self.grid_shape))

    def tile(self, index) -> Tile:
        """The tile at grid position ``index`` (a tuple, or a linear int)."""
        if isinstance(index, (int, np.integer)):
            index = tuple(int(i) for i in np.unravel_index(int(index), self.grid_shape))
        index = tuple(int(i) for i in index)
        if len(index) != len(self.grid_shape) or any(not 0 <= i < g for i, g in zip(index, self.grid_shape)):
            raise IndexError(f"tile index {index} is outside the grid {self.grid_shape}")
        core, window, crop = [], [], []
        for i, b, h, size in zip(index, self.boundaries, self.overlap, self.spatial_shape):
            lo, hi = int(b[i]), int(b[i + 1])
            wlo, whi = max(lo - h, 0), min(hi + h, size)
            core.append(slice(lo, hi))
            window.append(slice(wlo, whi))
            crop.append(slice(lo - wlo, hi - wlo))
        return Tile(index=index, linear_index=self.linear_index(index),
                    core=self._full(core), window=self._full(window), crop=self._full(crop, relative=True),
                    spatial_core=tuple(core), spatial_window=tuple(window), spatial_crop=tuple(crop))

    def _full(self, spatial: list[slice], relative: bool = False) -> tuple[slice, ...]:
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
