"""The tasks of a dense run: read windows, call ``fn``, weight, fold into blocks, finish blocks.

Shared by the local streaming loop and the dask graph. A *unit* is what one
call of ``fn`` sees: one window, or ``batch_size`` consecutive windows
stacked on a leading axis. A window's *piece* is what it contributes:
``float32 pred * weights`` over the window clipped to the image (``pred``
itself, only read, when the weights are all ones), or its core (crop).
Block ``b`` accumulates the pieces of its contributors in raster order, so
the result never depends on which task finishes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..grid import Tile
from ..run._windows import unit_weights
from ._layout import Layout

_INFER = "infer"  # out_channels not given: taken from the first window's result
_WSUM_CACHE_BYTES = 64 * 2**20


def where(tile: Tile) -> str:
    return f"tile {tile.index} (window [" + ", ".join(f"{s.start}:{s.stop}" for s in tile.spatial_window) + "])"


def as_array(pred):
    """numpy for numpy, array-likes and torch tensors (any device); torch is never imported here."""
    if type(pred).__module__.startswith("torch"):
        pred = pred.detach()
        if str(pred.dtype) == "torch.bfloat16":
            pred = pred.float()
        return pred.cpu().numpy()
    if not isinstance(pred, np.ndarray) and hasattr(pred, "__array__") and not isinstance(
            pred, (list, tuple, int, float)):
        return np.asarray(pred)
    return pred


def infer_channels(pred, tile: Tile, shape) -> int | None:
    """Channels of ``fn``'s first result: None for the window's shape, C for ``(C, *window)``."""
    pred = as_array(pred)
    if isinstance(pred, np.ndarray):
        if pred.shape == tuple(shape):
            return None
        if pred.ndim == len(shape) + 1 and pred.shape[1:] == tuple(shape) and pred.shape[0] >= 1:
            return int(pred.shape[0])
    return validate_map(pred, tile, None, shape) and None  # raises with the right message


def validate_map(pred, tile: Tile, n_channels: int | None, shape=None, what: str = "fn",
                 inferred: bool = False) -> np.ndarray:
    """Check a tile function's dense output; errors name the tile index and window."""
    win = tuple(tile.window_shape if shape is None else shape)
    expected = win if n_channels is None else (n_channels, *win)
    pred = as_array(pred)
    if not isinstance(pred, np.ndarray):
        raise TypeError(f"{what} returned {type(pred).__name__} for {where(tile)}; it must return a numpy "
                        f"array of shape {expected}")
    if not (np.issubdtype(pred.dtype, np.number) or pred.dtype == np.bool_) or np.iscomplexobj(pred):
        raise TypeError(f"{what} returned dtype {pred.dtype} for {where(tile)}; return a real-valued map")
    if pred.shape != expected:
        given = " (taken from the first window's result)" if inferred else ""
        if n_channels is None and pred.ndim == len(win) + 1 and pred.shape[1:] == win:
            fix = f"it has {pred.shape[0]} channels first: pass out_channels={pred.shape[0]}"
        elif n_channels is not None and pred.ndim == len(win) + 1 and pred.shape[1:] == win:
            fix = (f"it has {pred.shape[0]} channels but out_channels={n_channels}{given}: return the same "
                   f"channels for every window" if inferred else
                   f"it has {pred.shape[0]} channels but out_channels={n_channels}: pass "
                   f"out_channels={pred.shape[0]}")
        elif n_channels is not None and pred.shape == win:
            fix = ("it has no channel axis, unlike the first window's result" if inferred else
                   "it has no channel axis: pass out_channels=None or return (C, *window)")
        else:
            fix = "return one value per voxel of the window it was given (channels first)"
        raise ValueError(f"{what} returned shape {pred.shape} for {where(tile)}; expected {expected}; {fix}")
    return pred


def cast(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and np.issubdtype(block.dtype, np.floating):
        # quantise, never wrap: round, then saturate at the dtype's range
        info = np.iinfo(dtype)
        block = np.clip(np.rint(block), info.min, info.max)
    return block.astype(dtype, copy=False)


def _check_final(block, tile, channels, finalize):
    if finalize is None:
        return block
    block = np.asarray(block)
    expected = tile.core_shape if channels is None else (channels, *tile.core_shape)
    if block.shape != expected:
        raise ValueError(f"finalize returned shape {block.shape} for the block of {where(tile)}; expected "
                         f"{expected}, the shape it returned for the first block (channels first)")
    return block


def _sub(region, frame) -> tuple[slice, ...]:
    """``region`` (global slices) relative to the start of ``frame``."""
    return tuple(slice(r.start - f.start, r.stop - f.start) for r, f in zip(region, frame))


def _meet(a, b) -> tuple[slice, ...]:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))


@dataclass
class MapJob:
    """Everything the tasks need; enters a dask graph once."""

    layout: Layout
    fn: Callable
    source: Any                       # numpy / LazySource, or None when windows arrive as task inputs
    weights: np.ndarray | None        # full window weights; None = crop
    out_channels: Any                 # channels fn returns: None, an int, or _INFER before the first unit
    final_channels: int | None = None  # channels after finalize (output's leading axis)
    finalize: Callable | None = None
    out_dtype: np.dtype = np.dtype(np.float32)
    batch_size: int = 1
    batched: bool = False             # fn takes a leading batch axis
    pad_mode: str = "constant"
    output: Any = None                # zarr.Array or numpy array
    direct: bool = False              # crop: each window writes its core straight to the output
    channels_inferred: bool = False   # out_channels came from the first window's result
    cache: Any = None                 # ChunkCache over ``source``: each chunk decoded once, not once per window
    _wsums: dict = field(default_factory=dict, repr=False)
    _unit_weights: bool = field(init=False, repr=False)

    def __post_init__(self):
        self._unit_weights = unit_weights(self.weights)

    # -- units ------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return -(-self.layout.n_windows // self.batch_size)

    def unit(self, u: int) -> range:
        return range(u * self.batch_size, min((u + 1) * self.batch_size, self.layout.n_windows))

    def window_shape(self, tile: Tile) -> tuple[int, ...]:
        """Spatial shape fn sees (and returns) for ``tile``."""
        return self.layout.full if self.layout.fixed else tile.window_shape

    # -- reading and predicting -------------------------------------------
    def read(self, tile: Tile, window=None) -> np.ndarray:
        if window is None:
            data = self.source[tile.window] if self.cache is None else self.cache.read(tile.window)
        elif hasattr(window, "compute"):  # a dask input's window, read inside this task
            data = window.compute(scheduler="sync")
        else:
            data = window
        data = np.asarray(data)
        if self.layout.edge == "pad":
            full = self.layout.full_window(tile)
            pad = [(w.start - f.start, f.stop - w.stop) for w, f in zip(tile.spatial_window, full)]
            if any(b or e for b, e in pad):
                widths = [(0, 0)] * data.ndim
                for ax, p in zip(self.layout.grid.spatial_axes, pad):
                    widths[ax] = p
                data = np.pad(data, widths, mode=self.pad_mode)
        return data

    def predict(self, u: int, windows=None) -> list[np.ndarray]:
        """fn on unit ``u``: one raw (unvalidated) result per window."""
        tiles = [self.layout.grid.tile(i) for i in self.unit(u)]
        datas = [self.read(t, None if windows is None else windows[k]) for k, t in enumerate(tiles)]
        if not self.batched:
            return [self.fn(d) for d in datas]
        out = as_array(self.fn(np.stack(datas)))
        if not isinstance(out, np.ndarray) or out.ndim < 1 or out.shape[0] != len(datas):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"fn returned {shape} for a batch of {len(datas)} windows starting at "
                             f"{where(tiles[0])}; return one map per window along the first axis, "
                             f"(batch, C, *window) or (batch, *window)")
        return list(out)

    def learn_channels(self, preds, u: int = 0) -> None:
        if self.out_channels == _INFER:
            tile = self.layout.grid.tile(self.unit(u)[0])
            self.out_channels = infer_channels(preds[0], tile, self.window_shape(tile))
            self.channels_inferred = True

    # -- pieces -----------------------------------------------------------
    def piece(self, tile: Tile, pred):
        """Validate one window's result and turn it into what it contributes (None: written already)."""
        lay = self.layout
        pred = validate_map(pred, tile, self.out_channels, self.window_shape(tile),
                            inferred=self.channels_inferred)
        if lay.edge == "pad":  # keep the part inside the image
            pred = pred[(Ellipsis, *_sub(tile.spatial_window, lay.full_window(tile)))]
        if self.weights is None:
            core = pred[(Ellipsis, *tile.spatial_crop)]
            if self.direct:
                self.write(tile, core if self.finalize is None else self.finalize(core), tile.spatial_core)
                return None
            return core
        if self._unit_weights:
            return pred.astype(np.float32, copy=False)
        w = self.weights[_sub(tile.spatial_window, lay.full_window(tile))]
        return pred.astype(np.float32, copy=False) * w

    def pieces(self, u: int, preds) -> list:
        return [self.piece(self.layout.grid.tile(i), p) for i, p in zip(self.unit(u), preds)]

    # -- blocks -----------------------------------------------------------
    def fold(self, acc, piece, tile: Tile, block: Tile):
        """Add (crop: copy) ``tile``'s piece into ``block``'s accumulator, in place."""
        src_frame = self.layout.region(tile)
        region = _meet(src_frame, block.spatial_core)
        if acc is None:
            lead = () if self.out_channels is None else (self.out_channels,)
            alloc = np.empty if self.weights is None else np.zeros  # crop: the cores cover every voxel
            acc = alloc(lead + block.core_shape, np.float32 if self.weights is not None else piece.dtype)
        dst = acc[(Ellipsis, *_sub(region, block.spatial_core))]
        src = piece[(Ellipsis, *_sub(region, src_frame))]
        if self.weights is None:
            dst[...] = src
        else:
            np.add(dst, src, out=dst)
        return acc

    def weight_sum(self, block: Tile) -> np.ndarray:
        """Sum of the weights over ``block``, accumulated in fold order (so it matches the folds bit for bit).

        Depends only on where the contributing windows lie relative to the
        block, so interior blocks of a regular grid share one cached array.
        """
        lay, parts = self.layout, []
        for index in lay.contributors(block.index):
            tile = lay.grid.tile(index)
            region = _meet(tile.spatial_window, block.spatial_core)
            parts.append(tuple((d.start, d.stop, s.start, s.stop) for d, s in
                               zip(_sub(region, block.spatial_core), _sub(region, lay.full_window(tile)))))
        key = (block.core_shape, tuple(parts))
        total = self._wsums.get(key)
        if total is None:
            total = np.zeros(block.core_shape, np.float32)
            for part in parts:
                total[tuple(slice(a, b) for a, b, _, _ in part)] += \
                    self.weights[tuple(slice(c, d) for _, _, c, d in part)]
            if total.nbytes * (len(self._wsums) + 1) <= _WSUM_CACHE_BYTES:
                self._wsums[key] = total
        return total

    def finish(self, block: Tile, acc) -> None:
        if self.weights is not None:
            if self.finalize is None and isinstance(self.output, np.ndarray) and self.output.dtype == np.float32:
                # in memory: the quotient goes straight into the output, not into acc and then copied there
                key = block.spatial_core if self.final_channels is None else (slice(None), *block.spatial_core)
                np.divide(acc, self.weight_sum(block), out=self.output[key])
                return
            np.divide(acc, self.weight_sum(block), out=acc)  # in place: this task is the only reader
        self.write(block, acc if self.finalize is None else self.finalize(acc), block.spatial_core)

    def write(self, tile: Tile, data, region) -> None:
        data = _check_final(data, tile, self.final_channels, self.finalize)
        key = region if self.final_channels is None else (slice(None), *region)
        self.output[key] = cast(data, self.out_dtype)


# -- task functions (module level: they pickle by reference) ---------------------------------
def unit_task(job: MapJob, u: int, windows=None, preds=None, gate=None):
    """Pieces of unit ``u`` (``preds``: fn's results when they were computed already)."""
    if preds is None:
        preds = job.predict(u, windows)
    return job.pieces(u, preds)


def predict_task(job: MapJob, u: int, windows=None):
    return job.predict(u, windows)


def fold_task(job: MapJob, acc, pieces, k: int, block_index, tile_index):
    return job.fold(acc, pieces[k], job.layout.grid.tile(tile_index), job.layout.blocks.tile(block_index))


def block_task(job: MapJob, block_index, acc):
    job.finish(job.layout.blocks.tile(block_index), acc)
