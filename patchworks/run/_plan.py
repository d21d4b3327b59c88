"""What a run would do, without doing it: the plan ``dry_run=True`` prints and returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Copies of a tile's window a tile function is assumed to hold at once (as ``tile_shape="auto"`` assumes).
MEMORY_FACTOR = 8


@dataclass(frozen=True)
class RunPlan:
    """The plan of a tiled run: its geometry, its size and where it would run.

    Returned (and printed) by ``tile_process(..., dry_run=True)`` and
    ``merge_tile_labels(..., dry_run=True)``, which read no tile (except to
    count empty tiles with ``skip_empty``), call no tile function and write
    nothing.

    Attributes
    ----------
    image_shape : tuple of int
        Shape of the input, non-spatial axes included.
    dtype : str
        Dtype of the input.
    spatial_axes : tuple of int
        Axes that are tiled; the others are carried whole.
    grid_shape : tuple of int
        Number of tiles along each spatial axis.
    n_tiles : int
        Number of tiles (tile tasks).
    tile_shape : tuple of int
        Core size per spatial axis (the last tile of an axis may be smaller).
    overlap : tuple of int
        Halo per side per spatial axis, after clipping (an axis one tile
        covers, or tiled 1 voxel thick, has none).
    window_shape : tuple of int
        Largest window a tile function receives (core plus halo, clipped to
        the image), spatial axes only.
    window_bytes : int
        Bytes of the largest input window (all channels).
    memory_per_task : int
        Estimated peak bytes of one tile task: ``MEMORY_FACTOR`` (8) copies
        of the largest window at ``max(itemsize, 4)`` bytes per voxel and
        channel, the model ``tile_shape="auto"`` sizes tiles with.
    workers : str
        Where the tiles would run: local threads, a cluster, or GPU workers.
    n_empty : int or None
        Tiles ``skip_empty`` would skip (their whole window at or below
        ``empty_threshold``); None when ``skip_empty`` is off.
    empty_threshold : float or None
        The background level used for ``n_empty``.
    write_to : str or None
        The output the run would write.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import tile_process, threshold
    >>> plan = tile_process(np.zeros((100, 60), np.uint8), threshold(1), tile_shape=32, overlap=4,
    ...                     dry_run=True)  # doctest: +ELLIPSIS
    patchworks plan
    ...
    >>> plan.n_tiles, plan.window_shape
    (8, (40, 40))
    """

    image_shape: tuple
    dtype: str
    spatial_axes: tuple
    grid_shape: tuple
    n_tiles: int
    tile_shape: tuple
    overlap: tuple
    window_shape: tuple
    window_bytes: int
    memory_per_task: int
    workers: str
    n_empty: int | None = None
    empty_threshold: float | None = None
    write_to: str | None = None

    @classmethod
    def of(cls, grid, dtype, *, workers: str, n_empty=None, empty_threshold=None, write_to=None) -> "RunPlan":
        """The plan of ``grid`` (a :class:`~patchworks.TileGrid`) over an input of ``dtype``."""
        dtype = np.dtype(dtype)
        window = tuple(min(int(np.max(np.diff(b))) + 2 * h, s)
                       for b, h, s in zip(grid.boundaries, grid.overlap, grid.spatial_shape))
        channels = int(np.prod([s for i, s in enumerate(grid.shape) if i not in grid.spatial_axes], dtype=np.int64))
        voxels = int(np.prod(window, dtype=np.int64)) * channels
        return cls(image_shape=tuple(grid.shape), dtype=str(dtype), spatial_axes=tuple(grid.spatial_axes),
                   grid_shape=tuple(grid.grid_shape), n_tiles=int(grid.n_tiles), tile_shape=tuple(grid.tile_shape),
                   overlap=tuple(grid.overlap), window_shape=window, window_bytes=voxels * dtype.itemsize,
                   memory_per_task=voxels * max(dtype.itemsize, 4) * MEMORY_FACTOR, workers=workers,
                   n_empty=n_empty, empty_threshold=empty_threshold,
                   write_to=None if write_to is None else str(write_to))

    def __str__(self) -> str:
        rows = [("image", f"{self.image_shape} {self.dtype}, tiled axes {self.spatial_axes}"),
                ("tiles", f"{self.n_tiles} = {' x '.join(map(str, self.grid_shape))}"),
                ("tile shape", str(self.tile_shape)),
                ("overlap", str(self.overlap)),
                ("window shape", str(self.window_shape)),
                ("window", _mib(self.window_bytes)),
                ("memory/task", f"{_mib(self.memory_per_task)} (estimate: {MEMORY_FACTOR} window copies)"),
                ("workers", self.workers)]
        if self.n_empty is not None:
            rows.append(("empty tiles", f"{self.n_empty} of {self.n_tiles} skipped "
                                        f"(window <= {self.empty_threshold:g})"))
        rows.append(("output", self.write_to or "a temporary store"))
        return "patchworks plan\n" + "\n".join(f"  {k + ':':<13} {v}" for k, v in rows)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
