"""Public labelling entry points: ``tile_process`` and ``merge_tile_labels``.

Both run the same pipeline: stage every tile once (local ids + seam planes),
find the equivalences on the seam planes, plan the relabel on the driver, and
rewrite every tile in one more task per tile into a new zarr array.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from concurrent import futures
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from ..run._cluster import check_client, gpu_devices, make_local_cluster
from ..run._options import max_workers_option, refuse_unknown, remote_threads, stage_dir_option, workers_text
from ..run._plan import RunPlan
from ..run._reach import check_workers_reach
from ..run._resources import gpu_free_memory
from ._count import count_labels
from ._iou import bridge_planes, join_planes
from ..grid import TileGrid
from ..io._sources import LazySource, open_image
from . import _reduce
from ..io._urls import is_remote, join
from ._merge import (PLANE_SEAMS_PER_TASK, ArrayOutput, iou_pairs_for_tile, plan_relabel, plane_axes,
                     plane_links_for_seams, relabel_tile, slab_plane_bytes,
                     touch_pairs_for_seam, touch_pairs_for_slabs)
from ..io._ngff_write import build_label_image, check_ngff_labels, image_multiscales, register_label
from ..segment._threshold import Threshold, otsu_threshold, sample_values
from ..segment._instances import LogBlobs, Watershed
from ..run._execute import (active_client, graph_tasks, group_size, input_chunks, local_threads, new_token,
                             resolve_tile_shape, run_tasks, shared, task_groups, tile_windows)
from ..run._rundir import RunDir, describe_fn, describe_source, fn_token, source_token
from ._tile_task import StageJob
from ._batch import BatchJob, batch_block, batch_grid, tiles_of
from ._groups import Counted, stage_group, tiles_per_item, window_group_size
from ._table_merge import TableJob, group_rows, spatial_voxel_size, tile_rows, write_object_table
from ..io._table_store import table_location
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
    counts: np.ndarray | None = None  # labels per tile: empty tiles are never read


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
    table: TableJob | None = None  # map the partials staged with each tile too


@dataclass(frozen=True)
class _Relabelled(Counted):
    rows: object = None      # the group's GroupRows when the run measures a table
    inline: list | None = None  # its tiles' parts of the label image's inline levels (LabelImageWriter.write_tile)


def _pairs(found) -> np.ndarray:
    found = [p for p in found if len(p)]
    return np.concatenate(found) if found else np.zeros((0, 2), np.uint64)


def _seam_task(job: _SeamJob, seams):
    """The pairs across a group of seam planes, ``seams`` an ``(k, 2)`` array of (axis, row)."""
    return _pairs([touch_pairs_for_seam(job.staging, job.grid, int(a), int(r), job.offsets, job.connectivity,
                                        job.counts) for a, r in seams])


def _slab_task(job: _SeamJob, rows):
    """The pairs across every seam of tile slabs ``rows[0]:rows[1]`` along axis 0 (one read per tile)."""
    return touch_pairs_for_slabs(job.staging, job.grid, range(int(rows[0]), int(rows[1])), job.offsets,
                                 job.connectivity, job.counts)


# A slab task holds the seam planes of its slabs at once: at most this many bytes of them.
SLAB_PLANE_BYTES = 1 << 26


def _touch_tasks(staging, grid, offsets, connectivity, token, counts=None) -> list:
    """The seam tasks of ``stitch="touch"``: runs of tile slabs while a slab's planes fit, else seam by seam.

    A slab task reads each of its tiles once (the slab after it: one plane
    per tile), so more slabs per task means fewer reads; two tasks at least
    keep two workers busy. Seam by seam, every tile is read once per seam.
    """
    job = _SeamJob(staging, grid, offsets, connectivity, counts)
    n0, per_slab = grid.grid_shape[0], slab_plane_bytes(grid)
    if per_slab <= SLAB_PLANE_BYTES:
        m = max(1, min(SLAB_PLANE_BYTES // max(per_slab, 1), -(-n0 // 2)), group_size(n0))
        runs = [(int(rows[0]), int(rows[-1]) + 1) for rows in task_groups(np.arange(n0), m)]
        return graph_tasks(f"patchworks-seam-{token}", _slab_task, job,
                           [(run,) for run in runs] if grid.n_tiles > 1 else [])  # one tile: no seams
    seams = np.array([(a, r) for a, n_rows in enumerate(grid.grid_shape) for r in range(n_rows - 1)],
                     dtype=np.int64).reshape(-1, 2)
    return graph_tasks(f"patchworks-seam-{token}", _seam_task, job,
                       [(rows,) for rows in task_groups(seams, group_size(len(seams)))])


def _iou_task(job: _IouJob, items):
    return _pairs([iou_pairs_for_tile(job.staging, job.grid, i, job.counts, job.offsets, job.iou_threshold)
                   for i in items.tolist()])


@dataclass
class _PlaneJob:
    staging: TileStaging
    grid: TileGrid
    in_plane_plans: list
    iou_threshold: float


def _plane_task(job: _PlaneJob, axis, first, stop):
    return plane_links_for_seams(job.staging, job.grid, axis, range(first, stop), job.in_plane_plans,
                                 job.iou_threshold)


def _item_voxels(grid: TileGrid) -> int:
    """Voxels of one staged item (a tile, or a batch: the grid's tile) for :func:`group_size`."""
    return int(np.prod(grid.tile_shape))


def _iou_tasks(staging, grid, counts, offsets, iou_threshold, token):
    """The band-matching tasks of stitch="iou": groups of tiles with labels, each tile matched with its neighbours."""
    items = np.flatnonzero(counts)
    return graph_tasks(f"patchworks-seam-{token}", _iou_task,
                       _IouJob(staging, grid, offsets, counts, float(iou_threshold)),
                       [(items,) for items in task_groups(items, group_size(len(items), _item_voxels(grid)))])


def _reduces(client, grid, tasks) -> bool:
    """Plan by the tree reduction on the cluster (the pairs stay on the workers): many tiles on a cluster."""
    return active_client(client) is not None and grid.n_tiles >= _reduce.REDUCE_MIN_TILES and bool(tasks[1])


def _iou_pairs(staging, grid, counts, offsets, iou_threshold, client, token) -> np.ndarray:
    """stitch="iou": band matching between neighbours, then whole-plane matching across plane-by-plane axes."""
    tasks = _iou_tasks(staging, grid, counts, offsets, iou_threshold, token)
    pairs = _pairs(run_tasks(tasks, client=client, progress=False))
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


def _relabel_task(job: _RelabelJob, items, piece, n_tiles):
    """Relabel a group of items, each from its own plan in ``piece``; the objects they name first.

    With a table, each item's partials come from the same read of its staged
    object and go through the same plan (their rows: the result's ``rows``).
    """
    named, rows, inline = 0, [], []
    for k, i in enumerate(items.tolist()):
        plan, tile = piece[k], job.grid.tile(i)  # items: the tiles staged with labels
        ids, lut, partials = job.staging.take(tile)  # one read: the tile and its partials
        named += relabel_tile(job.output, tile, plan, ids, lut, job.count, inline)
        if job.table is not None:
            rows.append(tile_rows(job.table, i, plan, partials))
    return _Relabelled(n_tiles=int(n_tiles), value=int(named), inline=inline or None,
                       rows=None if job.table is None else group_rows(job.table, items, rows))


@dataclass
class _PyramidJob:
    writer: object
    grid: TileGrid


def _shared_chunk_task(job: _PyramidJob, level, chunks):
    for chunk_index in chunks.tolist():
        job.writer.write_shared_chunk(job.grid, level, tuple(chunk_index))
    return Counted(n_tiles=len(chunks))


def _shared_levels(writer, grid, client, progress, token, inline=()) -> None:
    """Write the pyramid chunks no tile writes alone, one phase per level (a derived level reads the one before);
    each phase's chunks in groups (by work, as the other phases' items). The inline levels are assembled from
    the tiles' parts (``inline``) and written from here."""
    if writer.inline_levels:
        writer.write_inline(inline, threads=2 * local_threads())
    seams = writer.shared_chunks(grid)
    for level in sorted({k for k, _ in seams}):
        prefix = f"patchworks-pyramid-{token}-{level}"
        chunks = np.array([c for k, c in seams if k == level], dtype=np.int64)
        size = group_size(len(chunks), int(np.prod(writer.levels[level].chunks)))
        run_tasks(graph_tasks(prefix, _shared_chunk_task, _PyramidJob(writer, grid),
                              [(level, g) for g in task_groups(chunks, size)]),
                  client=client, progress=progress, total=len(chunks),
                  desc=f"pyramid level {level}, chunks shared by tiles", prefix=prefix)


def _in_background(func, *args) -> futures.Future:
    """``func(*args)`` in a thread of its own; the caller waits on the future before it completes the run."""
    pool = futures.ThreadPoolExecutor(1, thread_name_prefix="patchworks-pyramid")
    try:
        return pool.submit(func, *args)
    finally:
        pool.shutdown(wait=False)


_FORMATS = ("ngff", "array")


def _prepare_output(*, write_to, labels_into, name, output_format, output_component, zarr_format, grid, source,
                    voxel_size, pyramid_levels, storage_options=None, block=None):
    """Where and how the labels are written: ``(write_to, component, zarr_format, writer, into)``.

    ``writer`` describes the label image (None for a plain array); it is
    built here, before any work, so that a bad option fails fast. Its
    location and dtype are set once the run directory and the plan exist.
    """
    if output_format not in _FORMATS:
        raise ValueError(f"output_format={output_format!r}: use 'ngff' (an OME-NGFF label image with a pyramid, "
                         f"the default) or 'array' (a plain zarr array, level 0 only)")
    into = None
    if labels_into is not None:
        if write_to is not None or output_component is not None:
            raise ValueError(f"labels_into={str(labels_into)!r} writes labels_into/labels/<name>; drop write_to= "
                             f"and output_component=, or drop labels_into=")
        if output_format != "ngff":
            raise ValueError(f"labels_into= writes an NGFF label image; drop output_format={output_format!r}")
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ValueError(f"name={name!r}: labels_into= needs the label image's name, a plain non-empty string "
                             f"such as name='cells'")
        image_format = image_multiscales(labels_into, storage_options)[0]
        if zarr_format not in (None, image_format):
            raise ValueError(f"zarr_format={zarr_format!r}: {str(labels_into)!r} is zarr v{image_format} and its "
                             f"labels must be too (NGFF never mixes formats); drop zarr_format=")
        zarr_format, into = image_format, labels_into
        write_to, output_component = labels_into, f"labels/{name}"
    elif name is not None and output_format == "ngff":
        pass  # the name of a standalone label image (its multiscales name)
    zarr_format = 3 if zarr_format is None else zarr_format
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format={zarr_format!r} is not supported; valid: 2 or 3")
    writer = None
    if output_format == "ngff":
        if into is None and write_to is None and check_ngff_labels(getattr(source, "axes", None) or grid.axes,
                                                                   grid.spatial_axes):
            logger.info("patchworks: %d spatial axes: a temporary plain array, not an NGFF label image",
                        len(grid.spatial_axes))
        else:
            writer = build_label_image(None, None, grid=grid, source=source, dtype=np.uint32,
                                       zarr_format=zarr_format, scratch=".", voxel_size=voxel_size,
                                       pyramid_levels=pyramid_levels, into=into, name=name or "labels",
                                       storage_options=storage_options,
                                       boundaries=None if block is None else batch_grid(grid, block).boundaries)
    elif voxel_size is not None or pyramid_levels is not None:
        raise ValueError("voxel_size= and pyramid_levels= describe an NGFF label image; a plain array "
                         "(output_format='array') has neither: drop them")
    return write_to, output_component, zarr_format, writer, into


def _label_name(run) -> str:
    """The name under ``labels/`` of a label image written into an image."""
    return run.component.rstrip("/").rsplit("/", 1)[-1]


def _level0(node):
    """Level 0 of a finished output (group or array), without the axes the labels lack."""
    if isinstance(node, zarr.Group):
        record = node.attrs.get("patchworks", {})
        array = node["0"]
        axes = record.get("label_axes")
        return array, (tuple(slice(None) if i in axes else 0 for i in range(array.ndim)) if axes else None)
    return node, None


def _label_pipeline(*, grid: TileGrid, job_fn, source, windows, run: RunDir, connectivity: int,
                    sequential: bool, label_counts, client, progress, compute: bool, return_count: bool,
                    empty_threshold=None, stitch="touch", iou_threshold=0.5, table=False, intensity=False,
                    writer=None, into=None, block=None):
    if run.finished:  # same run already complete: a no-op
        output = run.open_existing()
        n_objects = output.attrs["patchworks"].get("n_objects")
        if n_objects is None and return_count:  # that run was not asked to count
            n_objects = count_labels(_level0(output)[0])
        if into is not None:  # a run stopped between completion and registration: register now
            register_label(into, _label_name(run), storage_options=run.storage_options)
        return _result(output, run, compute, return_count, n_objects)
    # a cluster whose workers do not share the scratch (or a local output) with the driver is refused
    # here, before any tile runs, instead of losing staged tiles to another machine's disk
    check_workers_reach(active_client(client), run.shared_locations())
    token = new_token()
    tiles = grid  # the tiles fn runs on; from staging on, `grid` is the batch grid (see _batch)
    block = tuple(block) if block is not None else (1,) * len(grid.grid_shape)
    grid = batch_grid(tiles, block)
    spatial_shape, chunks = grid.spatial_shape, grid.chunks  # one task writes its batch's chunks
    batched = grid is not tiles
    try:
        iou = stitch == "iou"
        staging = TileStaging(grid, run.scratch.child("tiles", keep_recent=True), bands=iou)
        # 1. stage: fn once per tile, local ids + seam planes kept, counts back; a resumed run
        #    skips the batches it already staged (one staged file per batch: one listing)
        counts = np.zeros(grid.n_tiles, dtype=np.int64)
        done = staging.staged_counts()
        for i, n in done.items():
            counts[i] = n
        todo = [i for i in range(grid.n_tiles) if i not in done]
        if done:
            logger.info("patchworks: resuming %s: %d of %d %s already staged", run.target, len(done),
                        grid.n_tiles, "batches of tiles" if batched else "tiles")
        job = StageJob(grid=tiles, staging=staging, fn=job_fn, source=source,
                       label_counts=None if iou else label_counts, compact=sequential,
                       empty_threshold=empty_threshold, table=bool(table),
                       intensity=bool(table and intensity))
        prefix = f"patchworks-stage-{token}"
        if batched:
            job = BatchJob(job, grid, block, connectivity)
        # task groups: consecutive items per task (a resumed run groups what is left; see _groups)
        todo = np.asarray(todo, dtype=np.int64)
        size = group_size(len(todo), _item_voxels(grid))
        if windows is None:
            tasks = graph_tasks(prefix, stage_group, job, [(items,) for items in task_groups(todo, size)])
        else:  # windows of a dask array: their graphs come along, a group's together
            stage, jobd = dask.delayed(stage_group, pure=False), shared(job, f"{prefix}-shared")
            item_window = (lambda i: [windows(tiles.tile(t)) for t in tiles_of(tiles, block, grid.tile(i).index)]) \
                if batched else (lambda i: windows(tiles.tile(i)))
            size = window_group_size(size, np.prod(grid.tile_shape))
            tasks = [stage(jobd, items, [item_window(i) for i in items.tolist()], dask_key_name=f"{prefix}-{k}")
                     for k, items in enumerate(task_groups(todo, size))]
        n_todo = int(tiles_per_item(tiles, block, todo).sum())
        results = run_tasks(tasks, client=client, progress=progress, desc="staging tiles", prefix=prefix,
                            total=n_todo)  # the bar counts tiles, one update per task
        for r in results:
            counts[r.index] = r.n_labels
        n_skipped = int(sum(r.skipped for r in results))
        del results

        # 2. seams: pairs of global ids to join; touch: one task per seam plane of the grid,
        #    iou: one task per tile matching its bands with its neighbours', then one per plane seam
        offsets = np.zeros(grid.n_tiles, dtype=np.uint64)
        np.cumsum(counts[:-1], out=offsets[1:])
        seam_tasks = None
        if iou and plane_axes(grid):  # in-plane objects first, then whole planes: on the driver
            pairs = _iou_pairs(staging, grid, counts, offsets, iou_threshold, client, token)
        elif iou:
            seam_tasks = _iou_tasks(staging, grid, counts, offsets, iou_threshold, token)
        else:
            seam_tasks = _touch_tasks(staging, grid, offsets, connectivity, token, counts)
        if seam_tasks is not None and _reduces(client, grid, seam_tasks):
            # 3'. many tiles on a cluster: the pairs (touch or iou) stay on the workers and a tree
            #     reduction there resolves them; the driver gets the boundary labels' final ids only
            cluster = active_client(client)
            pieces = cluster.get(*seam_tasks, sync=False)
            plan = _reduce.reduce_plan(cluster, counts, pieces, sequential=sequential)
            pairs = None
            del pieces
        elif seam_tasks is not None:
            pairs = _pairs(run_tasks(seam_tasks, client=client, progress=False))

        # 3. plan on the driver: union-find over boundary labels only
        if pairs is not None:
            plan = plan_relabel(counts, pairs, sequential=sequential)
        logger.info("patchworks: %d tiles in %d tasks (%d skipped as empty), %d labels, %s seam pairs, "
                    "%d boundary labels -> %d objects", tiles.n_tiles, grid.n_tiles, n_skipped, int(counts.sum()),
                    "(on the cluster)" if pairs is None else len(pairs), plan.n_boundary_labels, plan.n_objects)

        # 4. relabel: each task builds its own small look-up table and writes every level of its
        #    tile; idempotent, so a resumed or retried run simply writes the same chunks again
        if writer is None:
            output = ArrayOutput(run.create(shape=spatial_shape, dtype=plan.dtype, chunks=chunks))
        else:
            if into is not None:  # an unfinished or replaced label image is never listed in the image
                register_label(into, _label_name(run), remove=True, storage_options=run.storage_options)
            writer.locate(run.path, run.component, run.scratch.child("pyramid"), plan.dtype,
                          storage_options=run.storage_options)
            run.create_label_image(writer)
            output = writer
        prefix = f"patchworks-relabel-{token}"
        # ids kept raw (not sequential, touch) may leave gaps (labels seen only in a halo): then
        # the count costs a pass over every tile, paid only when the caller asks for it
        gaps = not (sequential or iou or label_counts is not None or batched)  # batches number 1..m
        # one task per group of items, each sent only its items' plan pieces (bytes bounded per item)
        items = np.flatnonzero(counts)
        n_tiles, size = tiles_per_item(tiles, block, items), group_size(len(items), _item_voxels(grid))
        groups = list(zip(task_groups(items, size), task_groups(n_tiles, size)))
        # with a table, the same tasks map each tile's partials (read with the tile) through its plan
        table_job = TableJob.for_groups(staging.scratch, len(grid.spatial_axes), _table_channels(tiles, intensity),
                                        n_groups=len(groups)) if table else None
        tasks = graph_tasks(prefix, _relabel_task,
                            _RelabelJob(staging, output, grid, count=gaps and return_count, table=table_job),
                            [(g, plan.tiles.piece(g), int(n.sum())) for g, n in groups])
        desc = ("relabelling tiles" if writer is None else "relabel + pyramid") + (" + table" if table else "")
        results = run_tasks(tasks, client=client, progress=progress, desc=desc, prefix=prefix,
                            total=int(n_tiles.sum()))
        n_objects = int(sum(r.value for r in results))
        table_results = [r.rows for r in results] if table else None
        inline = [part for r in results if r.inline for part in r.inline]
        del results
        if gaps and not return_count:
            n_objects = None  # unknown without that pass; ids are unique, max_label bounds them
        record, pyramid = {}, None
        if writer is not None:
            # pyramid chunks holding parts of several tiles (coarse levels, or cores not multiples of the
            # factor): the inline levels from the parts the tasks sent back, the others level by level;
            # meanwhile the driver writes the table (both need only level 0 and the scratch, finished now)
            pyramid = _in_background(_shared_levels, writer, grid, client, progress, token, inline)
            del inline
            record = writer.record()
        # 5. the object table from the staged partials, through the same plan (no read of the labels);
        #    a label image keeps it at G/table, next to its levels
        if writer is not None:
            table_path, labels_rel, labels_path = join(run.target, "table"), "../0", join(run.target, "0")
        else:
            (table_path, labels_rel), labels_path = table_location(run.path, run.component), run.target
        try:
            if table:
                n_objects = _write_table(staging, tiles, grid, plan, run, table_path, labels_rel, labels_path,
                                         source, intensity, writer, table_results)
            elif run.exists(table_path):  # a replaced run's table would describe labels that are gone
                run.remove_output(table_path)
        except BaseException:
            if pyramid is not None:  # nothing keeps writing behind the caller's back
                futures.wait([pyramid])
            raise
        if pyramid is not None:
            pyramid.result()
        output = writer.group("r+") if writer is not None else output.array
        run.mark_complete(output, {**record, "n_objects": n_objects, "max_label": plan.max_label,
                                   "sequential_labels": bool(sequential),
                                   "connectivity": connectivity, "stitch": stitch,
                                   "iou_threshold": float(iou_threshold) if iou else None,
                                   "tile_shape": list(tiles.tile_shape), "overlap": list(tiles.overlap),
                                   "tiles_per_task": list(block),
                                   "n_skipped": int(n_skipped)})
        if into is not None:  # listed in the image last, once complete
            register_label(into, _label_name(run), storage_options=run.storage_options)
    except BaseException:
        run.fail()
        raise
    run.finish()
    return _result(output, run, compute, return_count, n_objects)


def _table_channels(tiles, intensity) -> int:
    """Intensity channels the table measures: every non-spatial voxel of the image (0 without intensities)."""
    if not intensity:
        return 0
    return int(np.prod([s for a, s in enumerate(tiles.shape) if a not in tiles.spatial_axes]))


def _write_table(staging, tiles, grid, plan, run, table_path, labels_rel, labels_path, source, intensity, writer,
                 results):
    # a label image's scales are the truth (voxel_size= given by hand, the source's, or the image's
    # written into); a bare array has only the source's metadata
    voxel_size, units = writer.spatial_voxel_size() if writer is not None else spatial_voxel_size(source, tiles)
    return write_object_table(scratch=staging.scratch, grid=grid, plan=plan, table_path=table_path,
                              labels_path=labels_path, labels_rel=labels_rel,
                              n_channels=_table_channels(tiles, intensity),
                              results=results, voxel_size=voxel_size, units=units, zarr_format=run.zarr_format,
                              storage_options=run.storage_options)


def _measures_intensity(source) -> bool:
    dtype = getattr(source, "dtype", None)
    return dtype is not None and np.dtype(dtype).kind in "biuf"


def _result(output, run: RunDir, compute: bool, return_count: bool, n_objects):
    array, squeeze = _level0(output)
    if compute:
        result = np.asarray(array[...])
        result = result[squeeze] if squeeze else result
        run.discard_temporary()
    else:
        result = da.from_zarr(array)
        result = result[squeeze] if squeeze else result
    return (result, n_objects) if return_count else result


def tile_process(image, fn, *, tile_shape=None, overlap=0, connectivity=1, stitch="touch", iou_threshold=0.5,
                 write_to=None, sequential_labels=False, compute=False, progress=None, client=None, overwrite=False,
                 resume=True, skip_empty=False, empty_threshold=None, use_gpu=False,
                 component=None, level=0, channel=None, channel_axis=None, axes=None,
                 output_component=None, zarr_format=None, scratch_dir=None, return_count=False, max_workers=None,
                 stage_dir=None, keep_stage=False, dry_run=False, gpus=None, table=None,
                 output_format="ngff", pyramid_levels=None, voxel_size=None, labels_into=None, name=None,
                 storage_options=None, **unknown):
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
        HDF5 or ``.npy``, or a URL to one of them (``s3://``, ``gs://``,
        ``az://``, ``http(s)://``, ``file://``); see
        :func:`patchworks.open_image`. Never written to.
    fn : callable
        ``fn(window) -> labels`` with labels of the window's spatial shape.
    tile_shape : None, "auto", int, tuple or dict, default None
        Core size per spatial axis. ``None`` (as upstream patchworks): the
        input's own chunks — dask chunks, or the chunks of a zarr / OME-Zarr
        array — and ``"auto"`` for inputs without chunks (numpy, TIFF, HDF5,
        ``.npy``). ``"auto"``: the largest tile whose working set fits one
        worker's memory — the memory available to this process (psutil,
        cgroup and SLURM limits, shared by its cores or ``max_workers``), the
        smallest worker of a cluster, or a GPU's free memory with
        ``use_gpu=True``; on a chunked input a multiple of its chunks, so no
        tile reads a chunk it only partly needs; see
        :func:`patchworks.auto_tile_shape`.
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
    write_to : path or URL, optional
        Where the OME-NGFF label image goes, a local path or an object-store
        URL (``s3://``, ``gs://``, ``az://``, ``file://``; see
        ``storage_options``) (a zarr group; v3 unless
        ``zarr_format=2``): levels ``"0"``, ``"1"``, ... with chunks aligned
        with the tile cores, ``multiscales`` with the voxel size and
        ``image-label``, our run record under ``"patchworks"``. Default: a
        store in a new temporary directory, which backs the returned lazy
        array (removed with ``compute=True``).
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
        Write the labels (label image or array) at this path inside ``write_to``.
    zarr_format : {3, 2}, optional
        Output zarr format: NGFF 0.5 on v3 (default), 0.4 on v2; with
        ``labels_into``, the image's.
    output_format : {"ngff", "array"}, default "ngff"
        ``"array"``: a plain zarr array at ``write_to`` (level 0 only, no
        metadata but our run record).
    pyramid_levels : int, optional
        Number of levels, level ``k`` being exactly ``level0[..., ::2**k,
        ::2**k]`` (y and x); default down to about 256 pixels in y and x.
        Written from each final tile, no second pass.
    voxel_size : float or sequence, optional
        Physical voxel size per spatial axis, each a number or a ``(number,
        unit)`` pair; default the image's (OME-Zarr, OME-TIFF, ImageJ TIFF),
        else 1 without unit. It sets each level's ``scale``.
    labels_into : path, optional
        An OME-Zarr image: write the labels as ``labels_into/labels/<name>``
        with the image's levels, shapes and scales, and add ``name`` to its
        ``labels`` list once complete. Nothing else in the image is touched;
        without this option nothing is ever written inside the input.
    name : str, optional
        The label image's name (required with ``labels_into``).
    scratch_dir : path or URL, optional
        Where the run's scratch (staged tiles, one lz4 object per tile) lives;
        default next to ``write_to`` (a hidden ``.patchworks-*`` directory or
        prefix, in the object store when ``write_to`` is a URL), else the
        system temp dir. Removed when the run completes, kept after a failure
        so that the run can resume. On a ``distributed`` cluster every worker
        must share it with the driver (checked before any tile runs): on
        workers that share no file system, pass a URL in an object store.
    storage_options : dict, optional
        Options for the fsspec backend of every URL of the call
        (the input, ``write_to``, ``labels_into``, ``scratch_dir``), e.g. ``{"key":
        ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}`` for
        S3; default: the backend's own configuration (environment
        variables, config files). It travels to the workers with the input.
    return_count : bool, default False
        Also return the number of objects.
    max_workers : int, optional
        Tiles processed at once on local threads (upstream's name); default
        one per available core, two per core when the input, ``write_to``,
        ``labels_into`` or ``scratch_dir`` is an object-store URL (the tiles
        wait on its requests). Also divides the memory ``tile_shape="auto"``
        sizes tiles by. A distributed client runs as many tiles as its
        workers have threads: there it is not used (a warning says so).
    stage_dir : path, optional
        Upstream's name for ``scratch_dir``.
    keep_stage : bool, default False
        Keep the run's scratch (the staged per-tile local labels and seam
        planes, one lz4 file per tile, and ``run.json``) after the run
        completes, for inspection; its path is logged.
    dry_run : bool, default False
        Print and return the plan (a :class:`patchworks.RunPlan`: grid,
        tile and window shapes, number of tiles, memory per task, workers,
        and with ``skip_empty`` the tiles it would skip) without calling
        ``fn`` and without writing anything.
    gpus : int or sequence, optional
        Run on one worker process per listed GPU (e.g. ``gpus=[0, 1]``, or
        ``gpus=2`` for the first two visible), each seeing only its device,
        on a cluster started for this call with
        :func:`patchworks.make_local_cluster` and closed after it. Tiles of
        ``tile_shape="auto"`` are sized by the smallest free memory of those
        GPUs (needs ``patchworks[gpu]``). Not with ``client=``.
    table : bool, optional
        Measure every object while its tile is in memory (voxel count,
        centroid, bounding box, border contact, intensity mean / std / min /
        max of the input per channel; physical size and centroid when the
        voxel size is known) and store the table inside the output, exact
        and at no extra read; see :func:`patchworks.read_table`. Default:
        on when ``write_to`` is given.

    Returns
    -------
    dask.array.Array or numpy.ndarray or RunPlan
        uint32 labels (uint64 when the count needs it) of the image's spatial
        shape: level 0, lazily backed by the written store, or numpy with
        ``compute=True``; the plan with ``dry_run=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import tile_process, threshold
    >>> img = np.zeros((6, 6)); img[1:5, 2] = 1
    >>> tile_process(img, threshold(0.5), tile_shape=2, compute=True).max()
    np.uint32(1)
    """
    refuse_unknown("tile_process", unknown, inspect.signature(tile_process).parameters)
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not callable; pass a function tile -> labels, e.g. patchworks.threshold(0.5)")
    scratch_dir = stage_dir_option(scratch_dir, stage_dir)
    source = open_image(image, component=component, level=level, channel=channel, storage_options=storage_options)
    if axes is None and isinstance(source, LazySource):
        axes = source.axes
    devices = None
    if gpus is not None:
        if client is not None:
            raise ValueError(f"gpus={gpus!r} starts a cluster of one worker per GPU for this call, but client="
                             f"{client!r} was given too; size your own cluster with make_local_cluster(gpus=...) "
                             "and pass it as client=, or drop client=")
        devices = gpu_devices(gpus)
    cluster = active_client(client) if devices is None else None
    if cluster is not None:
        check_client(cluster)
    elsewhere = cluster if devices is None else "gpus"  # tiles that do not run on local threads
    remote = any(is_remote(x) for x in (write_to, labels_into, scratch_dir)) or bool(getattr(source, "remote", False))
    n_workers = max_workers_option(max_workers, elsewhere) or remote_threads(max_workers, elsewhere, remote)
    budget = None
    spatial = TileGrid(source.shape, 1, channel_axis=channel_axis, axes=axes).spatial_axes
    if devices is not None and (tile_shape == "auto" or (tile_shape is None and input_chunks(source, spatial) is None)):
        budget = min(gpu_free_memory(d) for d in devices)   # one tile at a time per GPU
    tile_shape = resolve_tile_shape(tile_shape, source, overlap, client if devices is None else False,
                                    use_gpu=use_gpu and budget is None, channel_axis=channel_axis, axes=axes,
                                    n_workers=n_workers, budget=budget)
    grid = TileGrid(source.shape, tile_shape, overlap, channel_axis=channel_axis, axes=axes)
    connectivity = _check_connectivity(connectivity, len(grid.spatial_axes))
    _check_stitch(stitch, iou_threshold, grid)
    block = batch_block(grid, stitch)
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
    if dry_run:
        return _dry_run(grid, source, client, cluster, n_workers, devices, empty_threshold, write_to,
                        channel_axis=channel_axis, axes=axes)
    write_to, output_component, zarr_format, writer, into = _prepare_output(
        write_to=write_to, labels_into=labels_into, name=name, output_format=output_format,
        output_component=output_component, zarr_format=zarr_format, grid=grid, source=source,
        voxel_size=voxel_size, pyramid_levels=pyramid_levels, storage_options=storage_options, block=block)
    table = write_to is not None if table is None else bool(table)
    # only a named output can be resumed; skip hashing (a full pass over a numpy input) otherwise
    image_token = "" if write_to is None else source_token(source)
    describe = {"image": describe_source(image, source), "image content": image_token[:12],
                "tile_shape": grid.tile_shape, "overlap": grid.overlap,
                "fn": None if write_to is None else describe_fn(fn), "connectivity": connectivity,
                "stitch": stitch, "iou_threshold": iou_threshold if stitch == "iou" else None,
                "sequential_labels": bool(sequential_labels), "empty_threshold": empty_threshold,
                "zarr_format": zarr_format}
    fingerprint = "" if write_to is None else tokenize(
        "tile_process", STAGING_FORMAT, image_token, grid.shape, grid.spatial_axes, grid.tile_shape, grid.overlap,
        fn_token(fn), connectivity, bool(sequential_labels), empty_threshold, zarr_format,
        *(("iou", float(iou_threshold)) if stitch == "iou" else ()), *(("table", 1) if table else ()),
        *_layout_token(writer), *_batch_token(block))
    run = RunDir(write_to, output_component, fingerprint=fingerprint, describe=describe, overwrite=overwrite,
                 resume=resume, zarr_format=zarr_format, scratch_dir=scratch_dir,
                 inputs=(source,) if into is not None else (image,), keep_stage=keep_stage,
                 into_image=into is not None, storage_options=storage_options)

    with contextlib.ExitStack() as stack:
        if devices is not None:
            if run.finished:  # nothing to run: no cluster to start
                devices = None
            else:
                gpu_client, gpu_cluster = make_local_cluster(gpus=devices, dashboard_address=":0",
                                                             silence_logs=logging.WARNING)
                stack.callback(gpu_cluster.close)
                stack.callback(gpu_client.close)
                client = gpu_client
        if n_workers is not None:
            stack.enter_context(dask.config.set(num_workers=n_workers))
        intensity = _measures_intensity(source)  # before a dask input is cut into windows
        source, windows = tile_windows(source, grid, client)
        return _label_pipeline(grid=grid, job_fn=fn, source=source, windows=windows, run=run,
                               connectivity=connectivity, sequential=sequential_labels, label_counts=None,
                               client=client, progress=progress, compute=compute, return_count=return_count,
                               empty_threshold=empty_threshold, stitch=stitch, iou_threshold=iou_threshold,
                               table=table, intensity=intensity, writer=writer, into=into, block=block)


def _dry_run(grid, source, client, cluster, n_workers, devices, empty_threshold, write_to, *, channel_axis=None,
             axes=None, dtype=None) -> RunPlan:
    n_empty = None
    if empty_threshold is not None:  # reads every window's maximum; fn is never called
        from ._empty import estimate_empty_tiles
        info = estimate_empty_tiles(source, grid.tile_shape, empty_threshold, overlap=grid.overlap,
                                    channel_axis=channel_axis, axes=axes, client=False if cluster is None else client,
                                    progress=False)
        n_empty = info["n_tiles"] - info["n_occupied"]
    plan = RunPlan.of(grid, source.dtype if dtype is None else dtype,
                      workers=workers_text(cluster, n_workers, devices), n_empty=n_empty,
                      empty_threshold=empty_threshold, write_to=write_to)
    print(plan)
    return plan


def merge_tile_labels(labeled, write_to=None, *, input_component=None, output_component=None, overlap=0,
                      connectivity=1, stitch="touch", iou_threshold=0.5, sequential_labels=False,
                      label_counts=None, return_count=False,
                      progress=False, client=None, overwrite=False, resume=True, compute=False,
                      zarr_format=None, scratch_dir=None, max_workers=None, stage_dir=None, keep_stage=False,
                      dry_run=False, table=None, output_format="ngff", pyramid_levels=None, voxel_size=None,
                      labels_into=None, name=None, storage_options=None, **unknown):
    """Merge per-tile labels that someone else computed into globally consistent labels.

    Each block of ``labeled`` (dask chunks, or the chunks of a zarr array)
    is one tile whose labels are unique within the tile only. Ids are made
    globally unique and labels touching across a block boundary are joined,
    exactly as :func:`tile_process` does. The input is never modified.

    Parameters
    ----------
    labeled : dask.array.Array, zarr array, path or URL
        Per-tile integer labels (0 = background).
    write_to : path, optional
        Output OME-NGFF label image (as for :func:`tile_process`); default
        a temporary one.
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
    progress, client, overwrite, resume, compute, zarr_format, scratch_dir, storage_options :
        As for :func:`tile_process`.
    max_workers, stage_dir, keep_stage, dry_run :
        As for :func:`tile_process` (the plan's window is a block's).
    table : bool, optional
        Store the table of objects (no intensities) in the output, as for
        :func:`tile_process`; default on when ``write_to`` is given.
    output_format, pyramid_levels, voxel_size, labels_into, name :
        As for :func:`tile_process`; the voxel size defaults to that of a
        zarr / OME-Zarr / TIFF ``labeled``.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from patchworks import merge_tile_labels
    >>> tiles = da.from_array(np.array([[1, 1, 1, 1]]), chunks=(1, 2))  # id 1 in each of two tiles
    >>> merge_tile_labels(tiles, compute=True, return_count=True)[1]
    1
    """
    if "gpus" in unknown:
        raise TypeError("merge_tile_labels() runs no model, so gpus= has no meaning here; the merge runs on "
                        "local threads (max_workers=) or on the client= you pass")
    refuse_unknown("merge_tile_labels", unknown, inspect.signature(merge_tile_labels).parameters)
    scratch_dir = stage_dir_option(scratch_dir, stage_dir)
    cluster = active_client(client)
    if cluster is not None:
        check_client(cluster)
    n_workers = max_workers_option(max_workers, cluster)
    if isinstance(labeled, np.ndarray):
        raise TypeError("labeled is a numpy array, which has no tiles; wrap it as "
                        "dask.array.from_array(labels, chunks=tile_shape) or pass a zarr array")
    source = open_image(labeled, component=input_component, name="labeled", storage_options=storage_options)
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
    block = batch_block(grid, stitch)
    _check_stitch(stitch, iou_threshold, grid, "" if windows is not None else
                  " on the labelled blocks: a zarr input holds cores only, so pass the dask array of "
                  "map_overlap(fn, depth=overlap, trim=False, boundary='none') with overlap=")
    if label_counts is not None:
        label_counts = np.asarray(label_counts, dtype=np.int64).reshape(grid.grid_shape) \
            if np.size(label_counts) == grid.n_tiles else None
        if label_counts is None:
            raise ValueError(f"label_counts must hold one count per tile ({grid.n_tiles} for the grid "
                             f"{grid.grid_shape})")
    if dry_run:
        return _dry_run(grid, source if source is not None else blocks, client, cluster, n_workers, None, None,
                        write_to)
    write_to, output_component, zarr_format, writer, into = _prepare_output(
        write_to=write_to, labels_into=labels_into, name=name, output_format=output_format,
        output_component=output_component, zarr_format=zarr_format, grid=grid, source=source,
        voxel_size=voxel_size, pyramid_levels=pyramid_levels, storage_options=storage_options, block=block)
    table = write_to is not None if table is None else bool(table)
    labeled_token = "" if write_to is None else source_token(source if source is not None else blocks)
    describe = {"labeled": describe_source(labeled, source if source is not None else blocks),
                "labeled content": labeled_token[:12],
                "tiles": grid.grid_shape, "overlap": grid.overlap, "connectivity": connectivity,
                "stitch": stitch, "iou_threshold": iou_threshold if stitch == "iou" else None,
                "sequential_labels": bool(sequential_labels),
                "label_counts": None if label_counts is None else tokenize(label_counts.tolist())[:12],
                "zarr_format": zarr_format}
    fingerprint = "" if write_to is None else tokenize(
        "merge_tile_labels", STAGING_FORMAT, labeled_token,
        [b.tolist() for b in grid.boundaries], grid.overlap, connectivity, bool(sequential_labels),
        None if label_counts is None else label_counts.tolist(), zarr_format,
        *(("iou", float(iou_threshold)) if stitch == "iou" else ()), *(("table", 1) if table else ()),
        *_layout_token(writer), *_batch_token(block))
    run = RunDir(write_to, output_component, fingerprint=fingerprint, describe=describe, overwrite=overwrite,
                 resume=resume, zarr_format=zarr_format, scratch_dir=scratch_dir,
                 inputs=(source if source is not None else labeled,) if into is not None else (labeled,),
                 keep_stage=keep_stage, into_image=into is not None, storage_options=storage_options)
    with dask.config.set(num_workers=n_workers) if n_workers else contextlib.nullcontext():
        return _label_pipeline(grid=grid, job_fn=None, source=source, windows=windows, run=run,
                               connectivity=connectivity, sequential=sequential_labels, label_counts=label_counts,
                               client=client, progress=progress, compute=compute, return_count=return_count,
                               stitch=stitch, iou_threshold=iou_threshold, table=table,
                               writer=writer, into=into, block=block)


def _layout_token(writer) -> tuple:
    """What of the output's layout enters the fingerprint (a plain array adds nothing, as before)."""
    if writer is None:
        return ()
    return ("ngff", [(lv.shape, lv.factors, lv.chunks, lv.inner) for lv in writer.levels], writer.axes,
            writer.transforms, writer.embed, writer.name)


def _batch_token(block) -> tuple:
    """Batches change what a staged file holds: a run resumes only with the same batches."""
    return () if all(b == 1 for b in block) else ("batch", tuple(int(b) for b in block))


def _core_halo(overlap, ndim):
    from ..grid import normalize_per_axis
    return normalize_per_axis(overlap, ndim, "overlap", default=0)
