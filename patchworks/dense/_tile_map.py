"""Dense tile processing: run ``fn`` once per window and blend the maps into one output.

Pipeline (one run)::

    unit u  : read window(s) -> fn (one window, or a batch) -> validate -> float32 * weights (crop: core)
    fold b,i: acc_b += piece of window i inside block b          (per block, windows in raster order)
    block b : acc_b / sum of weights -> finalize -> cast -> write block b once

Output chunks are the blocks, so every block is written exactly once. Folds
of one block run in a fixed (raster) order, so the result does not depend on
which window finishes first and equals a plain numpy accumulation over the
windows in raster order bit for bit. Where the output goes and what a re-run
does is the run directory's business (:class:`patchworks.run._rundir.RunDir`),
the same mechanism as for labels.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..grid import TileGrid
from ..io._sources import LazySource, open_image
from ..run._execute import (_want_progress, active_client, local_threads, new_token, resolve_tile_shape, run_tasks,
                            shared, tile_windows)
from ..run._heap import settle_malloc
from ..run._resources import available_memory
from ..run._reach import check_workers_reach
from ..run._rundir import RunDir, describe_source, fn_token, source_token
from ..run._windows import make_window
from ._job import _INFER, MapJob, block_task, fold_task, predict_task, unit_task, validate_map
from ._input import ChunkCache
from ._layout import EDGES, make_layout
from ._spill import SpillingAccumulators
from ._stream import stream_local

__all__ = ["tile_blend", "tile_map", "validate_map"]

logger = logging.getLogger("patchworks")

_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _final_channels(finalize, out_channels, n_spatial) -> int | None:
    if finalize is None:
        return out_channels
    if not callable(finalize):
        raise TypeError(f"finalize={finalize!r} is not callable; pass a function block -> block, "
                        f"e.g. lambda p: p.argmax(0)")
    probe = np.zeros(((out_channels,) if out_channels else ()) + (2,) * n_spatial, np.float32)
    out = np.asarray(finalize(probe))
    if out.ndim == n_spatial:
        return None
    if out.ndim == n_spatial + 1:
        return int(out.shape[0])
    raise ValueError(f"finalize returned {out.ndim} axes for a block of shape {probe.shape}; return the block's "
                     f"spatial shape, optionally with a leading channel axis")


def _torch_module(fn):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(fn, torch.nn.Module)


class TorchNet:
    """A ``torch.nn.Module`` as a batch function: numpy ``(B, [C,] *window)`` in, ``(B, C, *window)`` out.

    Called as MONAI calls a predictor: a float32 tensor ``(B, C, *window)``
    on the module's device (a channel axis of 1 is added when the image has
    none), under ``torch.inference_mode()``.
    """

    def __init__(self, module, add_channel: bool):
        self.module, self.add_channel = module, add_channel

    def __call__(self, batch):
        import torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.add_channel:
            x = x.unsqueeze(1)
        device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        with torch.inference_mode():
            return self.module(x.to(device))


def _as_input(image):
    if type(image).__module__.startswith("torch"):  # a tensor: read through numpy, never written
        return image.detach().cpu().numpy()
    return image


def _check_int(value, name, fix):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name}={value!r}: {fix}")


def tile_map(image, fn, *, tile_shape=None, overlap=0, window="gaussian", out_channels=None,
             out_dtype="float32", finalize=None, write_to=None, compute=False, overwrite=False,
             progress=None, client=None, component=None, level=0, channel=None, channel_axis=None,
             axes=None, output_component=None, zarr_format=3, scratch_dir=None, memory_budget=None,
             patch_size=None, edge=None, pad_mode="constant", batch_size=None, storage_options=None):
    """Run ``fn`` on every window of ``image`` and blend its dense outputs into one map.

    ``fn`` receives each window (a tile's core plus ``overlap`` voxels per
    side, or a fixed ``patch_size``) and returns a map of the window's
    spatial shape (probabilities, a denoised image, features). It is called
    exactly once per window. Overlapping windows are combined voxel by voxel
    as ``sum(w_t * p_t) / sum(w_t)`` in float32 with spatial weights ``w``
    (or cropped to their cores with ``window="crop"``), and the result is
    written block by block, each block finalised and written once; memory
    stays bounded by ``memory_budget`` plus a few windows, not by the image.

    Parameters
    ----------
    image : array-like, torch tensor or path
        Anything :func:`patchworks.open_image` accepts, or a torch tensor
        (read through numpy). Never written to.
    fn : callable or torch.nn.Module
        ``fn(window) -> map``: the window's spatial shape, or channels first
        ``(C, *window)``. Any real dtype (numpy or torch); blending
        accumulates in float32. With ``batch_size``, ``fn(batch)`` gets
        ``(B, *window)`` and returns ``(B, [C,] *window)``. A
        ``torch.nn.Module`` is called as MONAI calls a network: a float32
        tensor ``(B, C, *window)`` on its device (``C = 1`` added when the
        image has no channel axis), under ``torch.inference_mode()``.
    tile_shape : "auto", int, tuple or dict, optional
        Core size per spatial axis; default (``None`` or ``"auto"``) the
        largest tile one worker can hold, as for :func:`tile_process`.
    overlap : int, float, tuple or dict, default 0
        With ``tile_shape``: halo per side per spatial axis, smaller than the
        tile (windows of neighbours overlap by ``2 * overlap``). With
        ``patch_size``: voxels shared by neighbouring windows, or a fraction
        of the window as in MONAI (``overlap=0.5``: step ``int(P * 0.5)``).
    window : {"gaussian", "hann", "mean", "crop"} or array, default "gaussian"
        Blending weights (see :func:`patchworks.make_window`): ``"crop"``
        takes each voxel from the window whose core owns it (no accumulator,
        exact); an array gives the weights of a full window (all > 0). A
        window clipped at the image edge uses the part of the full window's
        weights inside the image. With no overlap every window is crop.
    out_channels : int, optional
        Number of channels ``fn`` returns first; default taken from the first
        window's result (none when it has the window's spatial shape).
    out_dtype : dtype, default "float32"
        Output dtype; floats cast to an integer dtype are rounded and
        saturated, never wrapped.
    finalize : callable, optional
        ``finalize(block) -> block`` applied to each blended block (float32,
        ``(C, *block)`` or ``block``; crop mode: fn's dtype) before the cast,
        e.g. ``lambda p: p.argmax(0)`` for labels. It may drop or change the
        channel axis; it is called once on a tiny zero block to learn its
        output's channels.
    write_to : path, optional
        zarr store to write (chunks = the output blocks, channel axis
        whole). It is never the input; an existing store is replaced only
        with ``overwrite=True``, except that re-running a finished run with
        the same arguments is a no-op that returns it. Two runs writing one
        output at once are refused; a failed run leaves no output. Default:
        a temporary store backing the returned lazy array; with
        ``compute=True`` (and no cluster) the map is accumulated in memory
        and no store is written at all.
    compute : bool, default False
        Return a numpy array instead of a lazy dask array.
    overwrite : bool, default False
        Replace ``write_to`` if it exists.
    progress : bool, optional
        tqdm progress bar; default only on a terminal.
    client : distributed.Client or False, optional
        Cluster to run on; default the active client, else threads.
    component, level, channel, channel_axis, axes, output_component, zarr_format, scratch_dir, storage_options :
        As for :func:`patchworks.tile_process`: ``image`` may be a URL, and
        ``write_to`` and ``scratch_dir`` object-store URLs (``s3://``, ``gs://``, ``az://``).
    memory_budget : int, optional
        Bytes the float32 accumulators of blocks still waiting for windows
        may hold (on threads). Beyond it, those needed last are spilled to
        scratch files and read back when their next window comes. Default: a
        quarter of the memory available to this process.
    patch_size : int, tuple or dict, optional
        Fixed window size per spatial axis (MONAI's ``roi_size``), instead of
        ``tile_shape``: windows of exactly this size, stepped by
        ``patch_size - overlap``; e.g. ``patch_size=64, overlap=0.5`` gives
        MONAI's 5 windows per axis on 192 voxels.
    edge : {"clip", "shift", "pad", "squeeze"}, optional
        Windows at the image edge. ``"clip"``: core + halo clipped to the
        image (edge windows are smaller). ``"shift"``: every window has the
        full size (``tile_shape + 2 * overlap``, or ``patch_size``); the
        last one is moved inward to end at the image end, as MONAI lays
        them. ``"pad"``: full-size windows on the regular step, the outside
        filled with ``np.pad(mode=pad_mode)``. ``"squeeze"``: as many as
        shift, spread evenly. Default ``"shift"`` for ``patch_size`` or a
        ``torch.nn.Module``, else ``"clip"``.
    pad_mode : str, default "constant"
        ``np.pad`` mode for ``edge="pad"`` (zeros, as MONAI's default).
    batch_size : int, optional
        Windows per call of ``fn`` (MONAI's ``sw_batch_size``), stacked on a
        leading axis; needs full-size windows (``edge`` other than
        ``"clip"``). Default: one window per call without a batch axis (a
        ``torch.nn.Module``: batches of 1).

    Returns
    -------
    dask.array.Array or numpy.ndarray
        ``(*spatial)`` or ``(C, *spatial)`` map of ``out_dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import tile_map
    >>> img = np.arange(36, dtype=np.float32).reshape(6, 6)
    >>> out = tile_map(img, lambda w: w * 2, tile_shape=3, overlap=1, window="hann", compute=True)
    >>> bool(np.allclose(out, img * 2))
    True
    >>> probs = lambda w: np.stack([w, 35 - w])  # two channels, first: found from the first window
    >>> tile_map(img, probs, tile_shape=3, overlap=1, finalize=lambda p: p.argmax(0),
    ...          out_dtype="uint8", compute=True)[0]
    array([1, 1, 1, 1, 1, 1], dtype=uint8)
    >>> vol = np.ones((20, 20), np.float32)  # fixed 8x8 windows, 4 at a time
    >>> out = tile_map(vol, lambda b: b * 3, patch_size=8, overlap=0.5, batch_size=4, compute=True)
    >>> out.shape, bool(np.allclose(out, 3))
    ((20, 20), True)
    """
    network = _torch_module(fn)
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not callable; pass a function window -> map")
    _check_int(out_channels, "out_channels", "use None (taken from fn's first result) or an int >= 1 "
               "(fn returns (C, *window), channels first)")
    _check_int(batch_size, "batch_size", "use None (one window per call) or an int >= 1 (windows per call)")
    try:
        out_dtype = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"out_dtype={out_dtype!r} is not a numpy dtype; use e.g. 'float32' or 'uint8'") from None
    if not (np.issubdtype(out_dtype, np.number) or out_dtype == np.bool_):
        raise TypeError(f"out_dtype={out_dtype}: use a numeric dtype such as 'float32' or 'uint8'")
    if edge is None:
        edge = "shift" if (patch_size is not None or network) else "clip"
    if edge not in EDGES:
        raise ValueError(f"edge={edge!r} is unknown; use one of {', '.join(map(repr, EDGES))}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r} is not supported; use one of {', '.join(map(repr, _PAD_MODES))}")
    if batch_size is not None and edge == "clip":
        raise ValueError(f"batch_size={batch_size} needs windows of one size, but edge='clip' makes the edge "
                         f"windows smaller; use edge='shift' (or 'pad'), or patch_size=")
    if patch_size is not None and tile_shape is not None:
        raise ValueError(f"tile_shape={tile_shape!r} and patch_size={patch_size!r} were both given; give the "
                         f"core size (tile_shape, with overlap per side) or the window size (patch_size)")

    source = open_image(_as_input(image), component=component, level=level, channel=channel,
                        storage_options=storage_options)
    if axes is None and isinstance(source, LazySource):
        axes = source.axes
    spatial = TileGrid(source.shape, 1, channel_axis=channel_axis, axes=axes).spatial_axes
    in_channels = int(np.prod([n for i, n in enumerate(source.shape) if i not in spatial]))
    if patch_size is None:
        # a tile holds its input channels and its float32 output channels
        tile_shape = resolve_tile_shape(tile_shape, source, overlap, client, channel_axis=channel_axis, axes=axes,
                                        n_channels=in_channels + int(out_channels or 1))
    crop = isinstance(window, str) and window == "crop"
    layout = make_layout(source.shape, tile_shape=tile_shape, overlap=overlap, patch_size=patch_size, edge=edge,
                         crop=crop, channel_axis=channel_axis, axes=axes)
    grid = layout.grid
    weights = None if crop else make_window(window, layout.full)  # validates names and user arrays
    if weights is not None and not any(grid.overlap) and edge == "clip":
        weights = None  # one window per voxel: w * p / w is p, so crop is the same and exact
        layout = make_layout(source.shape, tile_shape=tile_shape, overlap=overlap, patch_size=patch_size,
                             edge=edge, crop=True, channel_axis=channel_axis, axes=axes)
        grid = layout.grid
    if network:
        fn = TorchNet(fn, add_channel=len(spatial) == len(source.shape))
        batch_size = batch_size or 1
    if finalize is not None and not callable(finalize):
        _final_channels(finalize, None, len(spatial))  # raises the TypeError
    window_name = "crop" if weights is None else (window if isinstance(window, str) else "user")

    describe = {"image": describe_source(image, source), "tile_shape": grid.tile_shape, "overlap": grid.overlap,
                "patch_size": patch_size, "edge": edge, "window": window_name,
                "fn": getattr(fn, "__qualname__", type(fn).__qualname__), "out_channels": out_channels,
                "out_dtype": str(out_dtype), "batch_size": batch_size}
    # only a named output can be found again; skip hashing (a pass over a numpy input) otherwise
    fingerprint = "" if write_to is None else tokenize(
        "tile_map", source_token(source), grid.shape, grid.spatial_axes, [list(s) for s in layout.starts],
        layout.full, tuple(map(tuple, grid.boundaries)), edge, pad_mode,
        window_name if isinstance(window, str) or weights is None else tokenize(weights),
        fn_token(fn.module if network else fn), out_channels, None if finalize is None else fn_token(finalize),
        str(out_dtype), zarr_format, batch_size)
    run = RunDir(write_to, output_component, fingerprint=fingerprint, describe=describe, overwrite=overwrite,
                 resume=True, zarr_format=zarr_format, scratch_dir=scratch_dir, inputs=(image,),
                 temporary_name="map.zarr", storage_options=storage_options)
    if run.finished:  # this very run is complete already: a no-op
        output = run.open_existing()
        return np.asarray(output[...]) if compute else da.from_zarr(output)

    cluster = active_client(client)
    check_workers_reach(cluster, run.shared_locations())  # before any window runs
    source, windows = tile_windows(source, grid, client)
    job = MapJob(layout=layout, fn=fn, source=source, weights=weights,
                 out_channels=_INFER if out_channels is None else int(out_channels), finalize=finalize,
                 out_dtype=out_dtype, batch_size=int(batch_size or 1), batched=batch_size is not None,
                 pad_mode=pad_mode)
    in_memory = compute and write_to is None and cluster is None
    job.cache = _chunk_cache(source, layout, memory_budget)
    try:
        first = None
        if job.out_channels == _INFER:  # run the first unit now: its result gives the channels
            inputs0 = None if windows is None else [windows(grid.tile(i)) for i in job.unit(0)]
            if cluster is None:
                first = job.predict(0, inputs0)
            else:
                first = run_tasks([dask.delayed(predict_task, pure=False)(job, 0, inputs0)], client=client,
                                  progress=False)[0]
            job.learn_channels(first)
        job.final_channels = _final_channels(finalize, job.out_channels, len(spatial))
        lead = () if job.final_channels is None else (job.final_channels,)
        shape = lead + grid.spatial_shape
        if in_memory:
            # blocks accumulate in arrays of their own, then are written once: adding each window straight
            # into views of a large output touched a page per row (384^3 x 4 gaussian: 5.3 vs 6.1 s)
            job.output = np.empty(shape, out_dtype)
            job.direct = weights is None
        else:
            job.output = run.create(shape=shape, dtype=out_dtype, chunks=lead + layout.blocks.tile_shape)
            # crop on a clipped grid: cores are the output chunks, so each window writes its own chunk
            job.direct = weights is None and edge == "clip"
        logger.info("patchworks: blending %d windows (%s window, edge=%s) into %s", grid.n_tiles, window_name,
                    edge, "memory" if in_memory else run.path)
        if cluster is None:
            # spilled accumulators never leave this process: a local directory even when the scratch is remote
            _run_locally(job, first, windows, progress, memory_budget,
                         None if run.scratch.remote else run.scratch.path)
        else:
            tasks, prefix = _graph(job, windows, first, new_token())
            run_tasks(tasks, client=client, progress=progress, desc="blending tiles", prefix=prefix)
        if not in_memory:  # completion is recorded last
            run.mark_complete(job.output, {"window": window_name, "edge": edge, "tile_shape": list(grid.tile_shape),
                                           "overlap": list(grid.overlap), "patch_size": list(layout.full)})
    except BaseException:
        run.fail(discard_output=True)
        raise
    run.finish()
    if in_memory:
        run.discard_temporary()
        return job.output
    if compute:
        result = np.asarray(job.output[...])
        run.discard_temporary()
        return result
    return da.from_zarr(job.output)


#: The issue's name for :func:`tile_map`; kept as an alias.
tile_blend = tile_map


def _chunk_cache(source, layout, memory_budget):
    """A cache of decoded chunks when windows overlap on a chunked store and chunks are not much larger."""
    chunks = getattr(source, "chunks", None)
    if not isinstance(source, LazySource) or not chunks or len(chunks) != len(source.shape):
        return None
    if not layout.fixed and not any(layout.grid.overlap):
        return None  # disjoint windows: nothing is read twice
    window = np.prod([layout.full[layout.grid.spatial_axes.index(a)] if a in layout.grid.spatial_axes else n
                      for a, n in enumerate(source.shape)], dtype=float)
    if np.prod(chunks, dtype=float) > 8 * window:
        return None  # whole-plane or whole-image chunks: caching them would read more than the windows
    # windows go in raster order: the chunks still needed are the rows under one window plus a step along
    # the first spatial axis, the whole cross-section; older rows are never read again, so LRU drops them
    first = layout.grid.spatial_axes[0]
    c0, p0 = chunks[first], layout.full[0]
    step0 = p0 - layout.grid.overlap[0] if layout.fixed else layout.grid.tile_shape[0]
    rows = -(-(p0 + step0) // c0) + 1
    front = rows * c0 * int(np.prod([n for a, n in enumerate(source.shape) if a != first])) * source.dtype.itemsize
    budget = min(available_memory() // 8 if memory_budget is None else int(memory_budget), 1 << 30, front)
    return ChunkCache(source, chunks, budget)


def _local_threads() -> int:
    if dask.config.get("scheduler", None) in ("synchronous", "sync", "single-threaded"):
        return 1
    return local_threads()


def _run_locally(job: MapJob, first, windows, progress, memory_budget, scratch) -> None:
    settle_malloc()  # windows, predictions and block accumulators come and go: no page-fault storm
    bar = None
    if _want_progress(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=job.layout.n_windows, desc="blending tiles", unit="tile", leave=False)
    accs = SpillingAccumulators(available_memory() // 4 if memory_budget is None else memory_budget, scratch)
    try:
        stream_local(job, first, windows, accs, threads=_local_threads(), bar=bar)
    finally:
        accs.close()
        if bar is not None:
            bar.close()
    if accs.n_spilled:
        logger.info("patchworks: %d block accumulators spilled to disk (memory_budget=%d bytes)",
                    accs.n_spilled, memory_budget)


def _graph(job: MapJob, windows, first, token: str):
    """Unit tasks, each folded at once into the accumulators of the blocks it reaches; blocks write.

    Left to itself a scheduler may run every unit before folding any (dask's
    static ordering did, holding every window at once). So unit ``u`` also
    waits until unit ``u - _LAG`` is folded everywhere: at most ``_LAG``
    units are alive whatever the scheduler. No deadlock: a fold needs only
    its unit and earlier units' folds.
    """
    lay = job.layout
    grid, blocks = lay.grid, lay.blocks
    jobd = shared(job, f"patchworks-blend-job-{token}")
    unit = dask.delayed(unit_task, pure=False)
    uprefix = f"patchworks-blend-tile-{token}"

    def inputs(u):
        return None if windows is None else [windows(grid.tile(i)) for i in job.unit(u)]

    preds0 = None if first is None else shared(first, f"patchworks-blend-first-{token}")
    if job.direct:  # crop: independent windows, each writes its own chunk
        return [unit(jobd, u, inputs(u), preds0 if u == 0 else None, dask_key_name=f"{uprefix}-{u}")
                for u in range(job.n_units)], uprefix
    fold = dask.delayed(fold_task, pure=False)
    block = dask.delayed(block_task, pure=False)
    bprefix = f"patchworks-blend-block-{token}"
    last = [grid.linear_index(lay.contributors(blocks.tile(b).index)[-1]) for b in range(blocks.n_tiles)]
    acc, tasks, folds_of = [None] * blocks.n_tiles, [], []
    for u in range(job.n_units):
        gate = folds_of[u - _LAG] if u >= _LAG else None
        pieces = unit(jobd, u, inputs(u), preds0 if u == 0 else None, gate, dask_key_name=f"{uprefix}-{u}")
        folds = []
        for k, i in enumerate(job.unit(u)):
            t = grid.tile(i)
            for index in lay.blocks_of(t.index):
                b = blocks.linear_index(index)
                acc[b] = fold(jobd, acc[b], pieces, k, index, t.index,
                              dask_key_name=f"patchworks-blend-fold-{token}-{b}-{i}")
                folds.append(acc[b])
                if last[b] == i:  # every contributor folded, in raster order: normalise and write
                    tasks.append(block(jobd, index, acc[b], dask_key_name=f"{bprefix}-{b}"))
                    acc[b] = None
        folds_of.append(folds)
    return tasks, bprefix


#: units allowed in flight: enough to keep the workers busy, few enough to bound memory
_LAG = 8
