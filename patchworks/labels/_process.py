"""Public labelling entry points: ``tile_process`` and ``merge_tile_labels``.

Both run the same pipeline: stage every tile once (local ids + seam planes),
find the equivalences on the seam planes, plan the relabel on the driver, and
rewrite every tile in one more task per tile into a new zarr array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..run._cluster import check_client
from ._count import count_labels
from ._iou import bridge_planes, join_planes
from ..grid import TileGrid
from ..io._sources import LazySource, open_image
from ._merge import (PLANE_SEAMS_PER_TASK, iou_pairs_for_tile, plan_relabel, plane_axes, plane_links_for_seams,
                     relabel_tile,
                     touch_pairs_for_seam)
from ..segment._threshold import Threshold, otsu_threshold, sample_values
from ..segment._instances import LogBlobs, Watershed
from ..run._execute import active_client, graph_tasks, new_token, resolve_tile_shape, run_tasks, shared, tile_windows
from ..run._rundir import RunDir, describe_source, fn_token, source_token
from ._tile_task import StageJob, stage_tile
from ._stage_store import STAGING_FORMAT, TileStaging

logger = logging.getLogger("patchworks")


def _check_connectivity(connectivity, n_spatial: int) -> int:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) \
            or not 1 <= connectivity <= n_spatial:
        raise ValueError(
            f"connectivity={connectivity!r}: use an int from 1 (face neighbours) to {n_spatial} "
            f"(all neighbours) for {n_spatial} spatial axes")
    return int(connectivity)


def _align_fn_connectivity(fn, connectivity: int):
    """Built-in labellers carry a connectivity; it must be the one the merge uses."""
    own = getattr(fn, "connectivity", None)
    if hasattr(fn, "with_connectivity"):
        if own is None:
            return fn.with_connectivity(connectivity)
        if own != connectivity:
            raise ValueError(
                f"fn labels with connectivity={own} but tile_process merges with connectivity={connectivity}; "
                f"pass the same value to both (or build fn with connectivity=None)")
    return fn


def _check_stitch(stitch, iou_threshold, grid: TileGrid, how_to_overlap: str = "") -> None:
    """``stitch="iou"`` needs an overlap (or plane-by-plane tiles) on every axis that has seams."""
    if stitch not in ("touch", "iou"):
        raise ValueError(f"stitch={stitch!r}: use 'touch' (join labels touching across a seam: exact for "
                         f"connected components) or 'iou' (one-to-one IoU matching in the overlap: instance-safe)")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.number)) \
            or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold={iou_threshold!r}: use a number in (0, 1], e.g. 0.5")
    if stitch != "iou":
        return
    for k, (n_rows, h) in enumerate(zip(grid.grid_shape, grid.overlap)):
        thickness = np.diff(grid.boundaries[k])
        if n_rows > 1 and h == 0 and thickness.max() > 1:
            suggest = tuple(max(o, min(32, int(t) // 4)) if i == k else o
                            for i, (o, t) in enumerate(zip(grid.overlap, grid.tile_shape)))
            raise ValueError(
                f"stitch='iou' matches labels in the overlap of neighbouring tiles, but spatial axis {k} has "
                f"overlap 0 with tiles {int(thickness.max())} thick; set overlap={suggest} (at least the radius "
                f"of the largest object, ideally its diameter; see patchworks.auto_overlap){how_to_overlap}, "
                f"or tile that axis 1 voxel thick to stitch plane by plane")


@dataclass
class _SeamJob:
    staging: TileStaging
    grid: TileGrid
    offsets: np.ndarray
    connectivity: int


@dataclass
class _IouJob:
    staging: TileStaging
    grid: TileGrid
    offsets: np.ndarray
    counts: np.ndarray
    iou_threshold: float


@dataclass
class _RelabelJob:
    staging: TileStaging
    output: object
    grid: TileGrid
    count: bool = False      # ids staged with gaps: count those present


def _seam_task(job: _SeamJob, axis, row):
    return touch_pairs_for_seam(job.staging, job.grid, axis, row, job.offsets, job.connectivity)


def _iou_task(job: _IouJob, linear_index):
    return iou_pairs_for_tile(job.staging, job.grid, linear_index, job.counts, job.offsets, job.iou_threshold)


@dataclass
class _PlaneJob:
    staging: TileStaging
    grid: TileGrid
    in_plane_plans: list
    iou_threshold: float


def _plane_task(job: _PlaneJob, axis, first, stop):
    return plane_links_for_seams(job.staging, job.grid, axis, range(first, stop), job.in_plane_plans,
                                 job.iou_threshold)


def _iou_pairs(staging, grid, counts, offsets, iou_threshold, client, token) -> np.ndarray:
    """stitch="iou": band matching between neighbours, then whole-plane matching across plane-by-plane axes."""
    tasks = graph_tasks(f"patchworks-seam-{token}", _iou_task,
                        _IouJob(staging, grid, offsets, counts, float(iou_threshold)),
                        [(i,) for i in range(grid.n_tiles) if counts[i]])
    pairs = run_tasks(tasks, client=client, progress=False)
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.uint64)
    planar = plane_axes(grid)
    if planar:  # the objects of each plane first, then one task per plane seam
        plans = plan_relabel(counts, pairs, sequential=False).tiles
        tasks = graph_tasks(f"patchworks-planes-{token}", _plane_task,
                            _PlaneJob(staging, grid, plans, float(iou_threshold)),
                            [(a, r, min(r + PLANE_SEAMS_PER_TASK, grid.grid_shape[a] - 1)) for a in planar
                             for r in range(0, grid.grid_shape[a] - 1, PLANE_SEAMS_PER_TASK)])
        results = iter([seam for block in run_tasks(tasks, client=client, progress=False) for seam in block])
        found = [pairs]
        for a in planar:  # links are judged with the neighbouring seams' (caps, necks), in plane order
            links, holes = zip(*[next(results) for _ in range(grid.grid_shape[a] - 1)])
            joined = join_planes(list(links))
            found += joined + bridge_planes(list(holes[:-1]), list(links), joined, iou_threshold)
        pairs = np.concatenate(found)
    return pairs


def _relabel_task(job: _RelabelJob, linear_index, plan):
    return relabel_tile(job.staging, job.output, job.grid, linear_index, plan, job.count)


def _label_pipeline(*, grid: TileGrid, job_fn, source, windows, run: RunDir, connectivity: int,
                    sequential: bool, label_counts, client, progress, compute: bool, return_count: bool,
                    empty_threshold=None, stitch="touch", iou_threshold=0.5):
    if run.finished:  # same run already complete: a no-op
        output = run.open_existing()
        n_objects = output.attrs["patchworks"].get("n_objects")
        if n_objects is None and return_count:  # that run was not asked to count
            n_objects = count_labels(output)
        return _result(output, run, compute, return_count, n_objects)
    token = new_token()
    spatial_shape, chunks = grid.spatial_shape, grid.chunks
    try:
        iou = stitch == "iou"
        staging = TileStaging(grid, run.scratch / "tiles", bands=iou)
        # 1. stage: fn once per tile, local ids + seam planes kept, counts back; a resumed run
        #    skips the tiles it already staged
        counts = np.zeros(grid.n_tiles, dtype=np.int64)
        done = staging.staged_counts()
        for i, n in done.items():
            counts[i] = n
        todo = [i for i in range(grid.n_tiles) if i not in done]
        if done:
            logger.info("patchworks: resuming %s: %d of %d tiles already staged", run.target, len(done),
                        grid.n_tiles)
        job = StageJob(grid=grid, staging=staging, fn=job_fn, source=source,
                       label_counts=None if iou else label_counts, compact=sequential,
                       empty_threshold=empty_threshold)
        prefix = f"patchworks-stage-{token}"
        if windows is None:
            tasks = graph_tasks(prefix, stage_tile, job, [(i,) for i in todo])
        else:  # windows of a dask array: their graphs come along
            stage, jobd = dask.delayed(stage_tile, pure=False), shared(job, f"{prefix}-shared")
            tasks = [stage(jobd, i, windows(grid.tile(i)), dask_key_name=f"{prefix}-{i}") for i in todo]
        results = run_tasks(tasks, client=client, progress=progress, desc="staging tiles", prefix=prefix)
        for r in results:
            counts[r.linear_index] = r.n_labels
        n_skipped = sum(r.skipped for r in results)

        # 2. seams: pairs of global ids to join; touch: one task per seam plane of the grid,
        #    iou: one task per tile matching its bands with its neighbours', then one per plane seam
        offsets = np.zeros(grid.n_tiles, dtype=np.uint64)
        np.cumsum(counts[:-1], out=offsets[1:])
        if iou:
            pairs = _iou_pairs(staging, grid, counts, offsets, iou_threshold, client, token)
        else:
            seam_tasks = graph_tasks(f"patchworks-seam-{token}", _seam_task,
                                     _SeamJob(staging, grid, offsets, connectivity),
                                     [(a, r) for a, n_rows in enumerate(grid.grid_shape) for r in range(n_rows - 1)])
            pairs = run_tasks(seam_tasks, client=client, progress=False)
            pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.uint64)

        # 3. plan on the driver: union-find over boundary labels only
        plan = plan_relabel(counts, pairs, sequential=sequential)
        logger.info("patchworks: %d tiles (%d skipped as empty), %d labels, %d seam pairs, %d boundary labels "
                    "-> %d objects", grid.n_tiles, n_skipped, int(counts.sum()), len(pairs),
                    plan.n_boundary_labels, plan.n_objects)

        # 4. relabel: each task builds its own small look-up table; idempotent, so a
        #    resumed or retried run simply writes the same chunks again
        output = run.create(shape=spatial_shape, dtype=plan.dtype, chunks=chunks)
        prefix = f"patchworks-relabel-{token}"
        # ids kept raw (not sequential, touch) may leave gaps (labels seen only in a halo): then
        # the count costs a pass over every tile, paid only when the caller asks for it
        gaps = not (sequential or iou or label_counts is not None)
        tasks = graph_tasks(prefix, _relabel_task, _RelabelJob(staging, output, grid, count=gaps and return_count),
                            [(i, plan.tiles[i]) for i in range(grid.n_tiles) if plan.tiles[i].n_labels])
        n_objects = int(sum(run_tasks(tasks, client=client, progress=progress, desc="relabelling tiles",
                                      prefix=prefix)))
        if gaps and not return_count:
            n_objects = None  # unknown without that pass; ids are unique, max_label bounds them
        run.mark_complete(output, {"n_objects": n_objects, "max_label": plan.max_label,
                                   "sequential_labels": bool(sequential),
                                   "connectivity": connectivity, "stitch": stitch,
                                   "iou_threshold": float(iou_threshold) if iou else None,
                                   "tile_shape": list(grid.tile_shape), "overlap": list(grid.overlap),
                                   "n_skipped": int(n_skipped)})
    except BaseException:
        run.fail()
        raise
    run.finish()
    return _result(output, run, compute, return_count, n_objects)


def _result(output, run: RunDir, compute: bool, return_count: bool, n_objects):
    if compute:
        result = np.asarray(output[...])
        run.discard_temporary()
    else:
        result = da.from_zarr(output)
    return (result, n_objects) if return_count else result


def tile_process(image, fn, *, tile_shape="auto", overlap=0, connectivity=1, stitch="touch", iou_threshold=0.5,
                 write_to=None, sequential_labels=False, compute=False, progress=None, client=None, overwrite=False,
                 resume=True, skip_empty=False, empty_threshold=None, use_gpu=False,
                 component=None, level=0, channel=None, channel_axis=None, axes=None,
                 output_component=None, zarr_format=3, scratch_dir=None, return_count=False):
    """Run ``fn`` on every tile of ``image`` and merge the labels into one consistent array.

    ``fn`` receives each tile with its halo (``overlap`` voxels per side, as
    far as the image reaches) and returns integer labels for that window
    (0 = background). It is called exactly once per tile. Labels are made
    globally unique and objects cut by a seam are joined: for a ``fn`` that
    labels connected components, the result is the same partition as
    labelling the whole image at once with the same ``connectivity``
    (``stitch="touch"``). For a segmenter of touching instances (Cellpose,
    StarDist, watershed) use ``stitch="iou"`` with an overlap, so touching
    cells on a seam stay apart.

    Parameters
    ----------
    image : array-like or path
        numpy or dask array, zarr array or path (v2/v3, OME-Zarr), TIFF,
        HDF5 or ``.npy``; see :func:`patchworks.open_image`. Never written to.
    fn : callable
        ``fn(window) -> labels`` with labels of the window's spatial shape.
    tile_shape : "auto", int, tuple or dict, default "auto"
        Core size per spatial axis. ``"auto"``: the largest tile whose
        working set fits one worker's memory — the memory available to this
        process (psutil, cgroup and SLURM limits, shared by its cores), the
        smallest worker of a cluster, or a GPU's free memory with
        ``use_gpu=True``; see :func:`patchworks.auto_tile_shape`.
    overlap : int, tuple or dict, default 0
        Halo per side per spatial axis given to ``fn`` for context (e.g. the
        per-axis tuple :func:`patchworks.auto_overlap` returns).
    connectivity : int, default 1
        Which neighbours join across seams: 1 = faces ... ndim = all
        (scikit-image convention). Must match what ``fn`` labels with.
        Used by ``stitch="touch"``.
    stitch : {"touch", "iou"}, default "touch"
        How labels of neighbouring tiles are joined. ``"touch"``: every pair
        of labels touching across a seam (exact for connected components,
        but it fuses distinct cells pressed against a seam). ``"iou"``: each
        tile also keeps its view of the band it shares with each neighbour
        (``overlap`` voxels on both sides of the seam); two labels are joined
        only when each is the other's best match there and their IoU reaches
        ``iou_threshold``, one to one, so two objects of one tile are never
        fused. Needs an overlap on every tiled axis, ideally at least the
        largest object's diameter, except an axis tiled 1 voxel thick (a 2-D
        model run plane by plane), whose consecutive planes are matched the
        same way (like Cellpose's ``stitch_threshold``). Every output voxel
        still comes from its own tile's core.
    iou_threshold : float, default 0.5
        Smallest IoU at which two mutual best matches are joined
        (``stitch="iou"``). Above 0.5 a match is unique by construction;
        lower values tolerate segmenters whose views of a cell differ more.
    write_to : path, optional
        zarr store to write (v3 unless ``zarr_format=2``), chunks aligned
        with the tile cores. Default: a store in a new temporary directory,
        which backs the returned lazy array (removed with ``compute=True``).
    sequential_labels : bool, default False
        Number objects ``1..n``; otherwise ids are unique but may have gaps.
        Costs no extra pass.
    compute : bool, default False
        Return a numpy array instead of a lazy dask array.
    progress : bool, optional
        tqdm progress bar; default: only on a terminal.
    client : distributed.Client or False, optional
        Cluster to run on; default the active client, else threads.
        ``False`` runs on threads even when a client is active.
    overwrite : bool, default False
        Replace ``write_to`` if it exists (and discard any unfinished run).
    resume : bool, default True
        Re-running an interrupted call with the same arguments skips every
        tile it already staged (``fn`` is not called again for them); a
        finished run re-run is a no-op. A different call on the same
        ``write_to`` is refused instead of mixing two runs. ``False`` starts
        over. Runs without ``write_to`` never resume.
    skip_empty : bool, default False
        Skip tiles whose whole window (halo included) is at or below
        ``empty_threshold``: ``fn`` is not called, nothing is written and the
        merge ignores them. Exact, since the window the tile reads decides.
    use_gpu : bool, default False
        Size ``tile_shape="auto"`` by the free memory of the visible GPU.
    empty_threshold : float, optional
        Background level for ``skip_empty``; default Otsu's threshold of a
        sample of the whole image (never a silent 0). See
        :func:`patchworks.estimate_empty_tiles`.
    component, level, channel :
        Which array of a zarr group / OME-Zarr / HDF5 file to read.
    channel_axis, axes :
        Non-spatial axes of the image, carried whole into every tile.
    output_component : str, optional
        Write the labels as this array inside a group at ``write_to``.
    zarr_format : {3, 2}
        Output zarr format.
    scratch_dir : path, optional
        Where the run's scratch (staged tiles, one lz4 file per tile) lives;
        default next to ``write_to`` (a hidden ``.patchworks-*`` directory),
        else the system temp dir. Removed when the run completes, kept after
        a failure so that the run can resume.
    return_count : bool, default False
        Also return the number of objects.

    Returns
    -------
    dask.array.Array or numpy.ndarray
        uint32 labels (uint64 when the count needs it), lazily backed by the
        written store, or numpy with ``compute=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import tile_process, threshold
    >>> img = np.zeros((6, 6)); img[1:5, 2] = 1
    >>> tile_process(img, threshold(0.5), tile_shape=2, compute=True).max()
    np.uint32(1)
    """
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not callable; pass a function tile -> labels, e.g. patchworks.threshold(0.5)")
    source = open_image(image, component=component, level=level, channel=channel)
    if axes is None and isinstance(source, LazySource):
        axes = source.axes
    cluster = active_client(client)
    if cluster is not None:
        check_client(cluster)
    tile_shape = resolve_tile_shape(tile_shape, source, overlap, client, use_gpu=use_gpu,
                                    channel_axis=channel_axis, axes=axes)
    grid = TileGrid(source.shape, tile_shape, overlap, channel_axis=channel_axis, axes=axes)
    connectivity = _check_connectivity(connectivity, len(grid.spatial_axes))
    _check_stitch(stitch, iou_threshold, grid)
    fn = _align_fn_connectivity(fn, connectivity)
    if isinstance(fn, (Threshold, Watershed, LogBlobs)) and len(grid.spatial_axes) != len(grid.shape):
        raise ValueError(
            f"fn={fn.method} labels a single-channel image but this one has non-spatial axes "
            f"{[i for i in range(len(grid.shape)) if i not in grid.spatial_axes]}; choose one with channel=N "
            f"(OME-Zarr / OME-TIFF) or pass a function that handles channels")
    if skip_empty and empty_threshold is None:
        empty_threshold = otsu_threshold(sample_values(source))
        logger.info("patchworks: skip_empty threshold (Otsu of a sample) = %g", empty_threshold)
    elif not skip_empty:
        empty_threshold = None
    describe = {"image": describe_source(image, source), "tile_shape": grid.tile_shape, "overlap": grid.overlap,
                "fn": getattr(fn, "__qualname__", type(fn).__qualname__), "connectivity": connectivity,
                "stitch": stitch, "iou_threshold": iou_threshold if stitch == "iou" else None,
                "sequential_labels": bool(sequential_labels), "empty_threshold": empty_threshold}
    # only a named output can be resumed; skip hashing (a full pass over a numpy input) otherwise
    fingerprint = "" if write_to is None else tokenize(
        "tile_process", STAGING_FORMAT, source_token(source), grid.shape, grid.spatial_axes, grid.tile_shape, grid.overlap,
        fn_token(fn), connectivity, bool(sequential_labels), empty_threshold, zarr_format,
        *(("iou", float(iou_threshold)) if stitch == "iou" else ()))
    run = RunDir(write_to, output_component, fingerprint=fingerprint, describe=describe, overwrite=overwrite,
                 resume=resume, zarr_format=zarr_format, scratch_dir=scratch_dir, inputs=(image,))

    source, windows = tile_windows(source, grid, client)
    return _label_pipeline(grid=grid, job_fn=fn, source=source, windows=windows, run=run,
                           connectivity=connectivity, sequential=sequential_labels, label_counts=None,
                           client=client, progress=progress, compute=compute, return_count=return_count,
                           empty_threshold=empty_threshold, stitch=stitch, iou_threshold=iou_threshold)


def merge_tile_labels(labeled, write_to=None, *, input_component=None, output_component=None, overlap=0,
                      connectivity=1, stitch="touch", iou_threshold=0.5, sequential_labels=False,
                      label_counts=None, return_count=False,
                      progress=False, client=None, overwrite=False, resume=True, compute=False,
                      zarr_format=3, scratch_dir=None):
    """Merge per-tile labels that someone else computed into globally consistent labels.

    Each block of ``labeled`` (dask chunks, or the chunks of a zarr array)
    is one tile whose labels are unique within the tile only. Ids are made
    globally unique and labels touching across a block boundary are joined,
    exactly as :func:`tile_process` does. The input is never modified.

    Parameters
    ----------
    labeled : dask.array.Array, zarr array or path
        Per-tile integer labels (0 = background).
    write_to : path, optional
        Output zarr store; default a temporary one.
    input_component : str, optional
        Array inside a zarr group / HDF5 file at ``labeled``.
    output_component : str, optional
        Array name inside a group at ``write_to``.
    overlap : int, tuple or dict, default 0
        For a dask array made by ``map_overlap(..., depth=overlap,
        trim=False, boundary="none")``: its ``chunks`` are the tile cores and
        each block holds the core plus this halo (clipped at the image edge),
        which is cropped before merging. Zarr inputs hold cores only, so 0.
    connectivity : int, default 1
        Neighbourhood used to join labels across block boundaries.
    stitch, iou_threshold :
        As for :func:`tile_process`. ``"iou"`` needs blocks with a halo
        (``overlap``), or blocks 1 voxel thick along an axis (plane by plane).
    sequential_labels : bool, default False
        Number objects ``1..n``.
    label_counts : array of int, optional
        Number of labels of each block, with labels already ``1..n`` in each
        block (saves the renumbering; ``stitch="iou"`` numbers blocks itself).
    return_count : bool, default False
        Also return the number of objects.
    progress, client, overwrite, resume, compute, zarr_format, scratch_dir :
        As for :func:`tile_process`.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from patchworks import merge_tile_labels
    >>> tiles = da.from_array(np.array([[1, 1, 1, 1]]), chunks=(1, 2))  # id 1 in each of two tiles
    >>> merge_tile_labels(tiles, compute=True, return_count=True)[1]
    1
    """
    cluster = active_client(client)
    if cluster is not None:
        check_client(cluster)
    if isinstance(labeled, np.ndarray):
        raise TypeError("labeled is a numpy array, which has no tiles; wrap it as "
                        "dask.array.from_array(labels, chunks=tile_shape) or pass a zarr array")
    source = open_image(labeled, component=input_component, name="labeled")
    windows = blocks = None
    if isinstance(source, da.Array):
        # map_overlap(..., trim=False) keeps the core sizes in .chunks while each
        # block really holds core + halo: the chunks are the cores, the blocks the windows
        grid = TileGrid.from_chunks(source.shape, source.chunks, overlap)
        blocks = source
        windows = lambda tile: blocks.blocks[tile.index]  # noqa: E731
        source = None
    else:
        if any(_core_halo(overlap, source.ndim)):
            raise ValueError(f"overlap={overlap!r}: a zarr input holds tile cores only; use overlap=0")
        chunks = source.chunks or source.shape
        grid = TileGrid(source.shape, chunks)
    connectivity = _check_connectivity(connectivity, len(grid.spatial_axes))
    _check_stitch(stitch, iou_threshold, grid, "" if windows is not None else
                  " on the labelled blocks: a zarr input holds cores only, so pass the dask array of "
                  "map_overlap(fn, depth=overlap, trim=False, boundary='none') with overlap=")
    if label_counts is not None:
        label_counts = np.asarray(label_counts, dtype=np.int64).reshape(grid.grid_shape) \
            if np.size(label_counts) == grid.n_tiles else None
        if label_counts is None:
            raise ValueError(f"label_counts must hold one count per tile ({grid.n_tiles} for the grid "
                             f"{grid.grid_shape})")
    describe = {"labeled": describe_source(labeled, source if source is not None else blocks),
                "tiles": grid.grid_shape, "overlap": grid.overlap, "connectivity": connectivity,
                "stitch": stitch, "sequential_labels": bool(sequential_labels)}
    fingerprint = "" if write_to is None else tokenize(
        "merge_tile_labels", STAGING_FORMAT, source_token(source if source is not None else blocks),
        [b.tolist() for b in grid.boundaries], grid.overlap, connectivity, bool(sequential_labels),
        None if label_counts is None else label_counts.tolist(), zarr_format,
        *(("iou", float(iou_threshold)) if stitch == "iou" else ()))
    run = RunDir(write_to, output_component, fingerprint=fingerprint, describe=describe, overwrite=overwrite,
                 resume=resume, zarr_format=zarr_format, scratch_dir=scratch_dir, inputs=(labeled,))
    return _label_pipeline(grid=grid, job_fn=None, source=source, windows=windows, run=run,
                           connectivity=connectivity, sequential=sequential_labels, label_counts=label_counts,
                           client=client, progress=progress, compute=compute, return_count=return_count,
                           stitch=stitch, iou_threshold=iou_threshold)


def _core_halo(overlap, ndim):
    from ..grid import normalize_per_axis
    return normalize_per_axis(overlap, ndim, "overlap", default=0)
