"""``measure``: the exact object table of any existing label array, tile by tile.

Each task reads one block of labels (and the same block of the intensity
image), numbers the ids it holds ``1..k`` (fastremap), computes the partial
sums of :mod:`patchworks.labels._table` and sends them back keyed by the
original ids; the driver combines the rows of ids met in several blocks.
Unlike the labelling runs, nothing says which blocks an id may appear in
(a label image from elsewhere may reuse an id in two distant places), so
every block's rows come back; they are as many as the table's rows plus the
objects cut by block edges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dask
import fastremap
import numpy as np

from ..grid import TileGrid, normalize_per_axis
from ..io._sources import LazySource, open_image
from ..io._table_store import TableWriter, labels_stamp, write_table_file
from ..io._urls import join
from ..run._execute import active_client, graph_tasks, run_tasks, shared
from ._table import Partials, column_dtypes, reduce_partials, table_columns, tile_partials
from ._table_merge import spatial_voxel_size

_TILE_VOXELS = 1 << 22


def _is_dask(obj) -> bool:
    import dask.array as da
    return isinstance(obj, da.Array)


def _default_tile(shape, chunks) -> tuple[int, ...]:
    """The labels' own chunks (reads aligned with storage), grown to a few million voxels per task."""
    tile = [int(min(c, s)) for c, s in zip(chunks or (256,) * len(shape), shape)]
    for a in range(len(shape)):
        while np.prod(tile) < _TILE_VOXELS and tile[a] < shape[a]:
            tile[a] = min(2 * tile[a], shape[a])
    return tuple(tile)


@dataclass
class _MeasureJob:
    grid: TileGrid
    labels: object          # numpy / LazySource, or None when blocks arrive as task inputs
    image: object


def _measure_task(job: _MeasureJob, linear_index: int, labels=None, image=None) -> Partials:
    tile = job.grid.tile(linear_index)
    if labels is None:
        labels = job.labels[tile.spatial_core]
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels has dtype {labels.dtype}; measure needs integer labels (0 = background)")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"labels holds negative ids (min {labels.min()}) in block {tile.index}; ids must be >= 0")
    intensity = None
    if job.image is not None or image is not None:
        core = np.asarray(job.image[tile.core] if image is None else image)
        spatial = job.grid.spatial_axes
        others = [a for a in range(core.ndim) if a not in spatial]
        intensity = np.moveaxis(core, others, list(range(len(others)))).reshape((-1,) + tile.core_shape)
    local, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    mapping.pop(0, None)
    if not mapping:
        return Partials.empty(labels.ndim, 0 if intensity is None else intensity.shape[0])
    raw = np.zeros(max(mapping.values()) + 1, np.uint64)
    raw[np.fromiter(mapping.values(), np.int64)] = np.fromiter(mapping.keys(), np.uint64)
    parts = tile_partials(local, raw.size - 1, [s.start for s in tile.spatial_core], intensity)
    return parts.relabel(raw[parts.label.astype(np.int64)])


def measure(labels, image=None, *, tile_shape=None, voxel_size=None, component=None, level=0,
            image_component=None, image_level=0, channel=None, channel_axis=None, client=None,
            progress=None, out=None, storage_options=None):
    """Measure every object of a label array, tile by tile: the table :func:`read_table` returns.

    One row per label: ``area`` (voxels), ``centroid-k``, ``bbox-k``
    (half-open, as scikit-image), ``touches_border``, and for an intensity
    image ``intensity_mean``/``_std``/``_min``/``_max`` per channel; with a
    voxel size also ``area_physical`` and ``centroid_physical-k``. Exact:
    equal to :func:`skimage.measure.regionprops_table` on the whole image.
    Neither array is ever loaded whole nor written to.

    Parameters
    ----------
    labels : array-like, path or URL
        Integer labels (0 = background): numpy, dask, zarr / OME-Zarr, TIFF,
        HDF5, ``.npy``, locally or behind a URL (``s3://``, ``http(s)://``, ...).
    image : array-like, path or URL, optional
        Intensities of the same spatial shape, optionally with channel axes
        (measured per channel).
    tile_shape : int or tuple, optional
        Block read per task; default the labels' chunks, grown to a few
        million voxels.
    voxel_size : float or tuple, optional
        Per spatial axis; default the labels' or the image's metadata.
    component, level :
        Which array of a zarr group / OME-Zarr / HDF5 file holds the labels.
    image_component, image_level, channel, channel_axis :
        The same for the image (``channel`` keeps one channel only).
    client : distributed.Client or False, optional
        Cluster to run on; default the active client, else threads.
    progress : bool, optional
        tqdm progress bar; default only on a terminal.
    out : path, optional
        Also write the table: ``.csv``, ``.tsv``, ``.parquet`` (needs
        ``pyarrow``), or ``.zarr`` (a table group :func:`read_table` reads,
        refused as stale once the labels change).
    storage_options : dict, optional
        Options of the fsspec backend for the URLs among ``labels`` and
        ``image`` (credentials, endpoint), as for :func:`patchworks.open_image`.

    Returns
    -------
    pandas.DataFrame
        Indexed by label.

    Examples
    --------
    >>> import numpy as np
    >>> from patchworks import measure
    >>> labels = np.array([[1, 1, 0], [0, 2, 2]])
    >>> table = measure(labels, np.array([[1.0, 3.0, 0], [0, 5.0, 5.0]]))
    >>> table.index.tolist(), table["area"].tolist(), table["intensity_mean"].tolist()
    ([1, 2], [2, 2], [2.0, 5.0])
    """
    import pandas as pd

    lab = open_image(labels, component=component, level=level, name="labels", storage_options=storage_options)
    img = None if image is None else open_image(image, component=image_component, level=image_level,
                                                channel=channel, name="image", storage_options=storage_options)
    chunks = getattr(lab, "chunks", None)
    if _is_dask(lab):
        chunks = lab.chunksize
    elif isinstance(lab, np.ndarray):
        chunks = None
    tile = _default_tile(lab.shape, chunks) if tile_shape is None else \
        normalize_per_axis(tile_shape, len(lab.shape), "tile_shape")
    if img is not None:
        axes = img.axes if isinstance(img, LazySource) else None
        if channel_axis is None and img.ndim == len(lab.shape) + 1 and not (axes and "c" in axes):
            channel_axis = 0 if img.shape[0] != lab.shape[0] or img.shape[1:] == lab.shape else img.ndim - 1
        grid = TileGrid(img.shape, tile, channel_axis=channel_axis, axes=axes if channel_axis is None else None)
        if grid.spatial_shape != tuple(lab.shape):
            raise ValueError(f"image has spatial shape {grid.spatial_shape} but labels {tuple(lab.shape)}; pass the "
                             f"intensity image the labels were made from (channel_axis= for its channel axis)")
        n_channels = int(np.prod([s for a, s in enumerate(img.shape) if a not in grid.spatial_axes]))
    else:
        grid = TileGrid(lab.shape, tile)
        n_channels = 0
    cluster = active_client(client)
    ship = cluster is not None
    lab_blocks = _is_dask(lab) or (ship and isinstance(lab, np.ndarray))
    img_blocks = img is not None and (_is_dask(img) or (ship and isinstance(img, np.ndarray)))
    job = _MeasureJob(grid, None if lab_blocks else lab, None if img_blocks else img)
    prefix = f"patchworks-measure-{dask.base.tokenize(os.getpid(), id(job))}"
    if lab_blocks or img_blocks:
        import dask.array as da
        la = da.asarray(lab) if lab_blocks else None
        ia = da.asarray(img) if img_blocks else None
        task, jobd = dask.delayed(_measure_task, pure=False), shared(job, f"{prefix}-shared")
        tasks = []
        for i in range(grid.n_tiles):
            t = grid.tile(i)
            tasks.append(task(jobd, i, None if la is None else la[t.spatial_core],
                              None if ia is None else ia[t.core], dask_key_name=f"{prefix}-{i}"))
    else:
        tasks = graph_tasks(prefix, _measure_task, job, [(i,) for i in range(grid.n_tiles)])
    parts = run_tasks(tasks, client=client, progress=progress, desc="measuring objects", prefix=prefix)
    parts = [p for p in parts if len(p)]
    merged = reduce_partials(Partials.concat(parts)) if parts else Partials.empty(len(lab.shape), n_channels)
    source_meta = lab if getattr(lab, "voxel_size", None) is not None or img is None else img
    vs, units = spatial_voxel_size(source_meta, grid, voxel_size)
    cols = table_columns(merged, lab.shape, voxel_size=vs)
    df = pd.DataFrame({k: v for k, v in cols.items() if k != "label"},
                      index=pd.Index(cols["label"], name="label"))
    df.attrs.update({k: v for k, v in (("voxel_size", vs), ("units", units)) if v is not None})
    if out is not None:
        _write_out(df, cols, out, labels, lab, vs, units, n_channels)
    return df


def _write_out(df, cols, out, labels, lab, vs, units, n_channels):
    path = Path(os.fspath(out))
    if path.suffix.lower() != ".zarr":
        write_table_file(df, path)
        return
    stamp = rel = None
    if isinstance(lab, LazySource) and lab.kind == "zarr" and lab.remote:  # a URL is kept as it is
        level0 = join(lab.path, getattr(lab, "_array_path", ""))
        stamp, rel = labels_stamp(level0, storage_options=lab.storage_options), str(level0)
    elif isinstance(lab, LazySource) and lab.kind == "zarr" and isinstance(labels, (str, os.PathLike)):
        level0 = Path(lab.path) / getattr(lab, "_array_path", "")
        stamp, rel = labels_stamp(level0), os.path.relpath(level0.resolve(), path.resolve())
    record = {"labels": rel, "stamp": stamp, "n_objects": len(df), "n_channels": n_channels,
              "voxel_size": None if vs is None else list(vs), "units": None if units is None else list(units)}
    writer = TableWriter(path, len(df), column_dtypes(len(lab.shape), n_channels, voxel_size=vs), record=record)
    writer.append(cols)
    writer.close()
