"""``patchworks demo``: label a generated volume tiled and whole, and show they agree.

The volume is smooth random blobs (:func:`patchworks.testing.random_blobs`)
a few voxels across, so many objects cross tile seams in every direction:
exactly the case where naive tiled labelling splits objects. The sample is
written as an OME-Zarr image and the labels go into it (``labels/blobs``,
as ``patchworks label --into`` does), ready for a viewer.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zarr

import patchworks
from patchworks.testing import assert_labels_equivalent, random_blobs, write_ome_zarr

VOXEL_SIZE = (2.0, 0.5, 0.5)  # micrometres, z y x: a light-sheet-like anisotropy the labels inherit


def write_sample(path: Path, shape, chunks) -> np.ndarray:
    """Generate the sample volume and write it as an OME-Zarr image (2 levels, NGFF 0.5); returns it."""
    volume = random_blobs(shape, seed=0)
    if len(shape) in (2, 3):
        write_ome_zarr(path, volume, axes="zyx"[-len(shape):], scale=VOXEL_SIZE[-len(shape):], levels=2,
                       chunks=chunks)
    else:  # not an NGFF image: a plain array
        arr = zarr.create_array(store=str(path), shape=volume.shape, chunks=chunks, dtype=volume.dtype,
                                zarr_format=3, overwrite=True)
        arr[...] = volume
    return volume


def run_demo(out="patchworks-demo", *, shape=(96, 256, 256), tile=(32, 64, 64), echo=print) -> int:
    """Run the demo in directory ``out``; returns 0 when tiled == whole, else 1."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(s) for s in shape)
    grid = patchworks.TileGrid(shape, tile)  # validates tile against shape before any work
    ngff = len(shape) in (2, 3)
    sample = out / ("sample.ome.zarr" if ngff else "sample.zarr")
    labels_path = sample / "labels" / "blobs" if ngff else out / "labels.zarr"

    volume = write_sample(sample, shape, grid.tile_shape)
    fn = patchworks.otsu(sample)  # one threshold for the whole image, so tiles agree on the cut

    start = time.perf_counter()
    where = dict(labels_into=sample, name="blobs") if ngff else dict(write_to=labels_path)
    tiled, n_tiled = patchworks.tile_process(sample, fn, tile_shape=grid.tile_shape, overwrite=True,
                                             return_count=True, **where)
    t_tiled = time.perf_counter() - start

    start = time.perf_counter()
    whole = patchworks.label_components(volume > fn.value)
    t_whole = time.perf_counter() - start
    n_whole = int(whole.max())  # label_components numbers 1..n

    try:
        assert_labels_equivalent(np.asarray(tiled), whole)
        same, problem = n_tiled == n_whole, f"object counts differ: {n_tiled} tiled vs {n_whole} whole"
    except AssertionError as exc:
        same, problem = False, str(exc)

    echo(f"volume:               {shape} float32 blobs, otsu threshold {fn.value:.4g}")
    echo(f"tiles:                {grid.n_tiles} of {grid.tile_shape} (grid {grid.grid_shape})")
    echo(f"objects tiled:        {n_tiled}")
    echo(f"objects whole:        {n_whole}")
    echo(f"identical partition:  {'yes' if same else 'NO'}")
    echo(f"time tiled:           {t_tiled:.2f} s (tile_process, writes the label image and its pyramid)")
    echo(f"time whole:           {t_whole:.2f} s (label_components in memory)")
    echo(f"output:               {labels_path}")
    if not same:
        echo(f"check failed: {problem}")
        return 1
    if ngff:
        levels = zarr.open_group(str(labels_path), mode="r").attrs["patchworks"]["levels"]
        echo(f"label levels:         {', '.join('x'.join(map(str, lv['shape'])) for lv in levels)}")
    echo(f"next:                 patchworks info {labels_path}")
    _echo_table(labels_path, sample, echo)
    return 0


def _echo_table(labels_path, sample, echo, rows: int = 3) -> None:
    """A few rows of the object table the run stored, and how to look at it all."""
    table = patchworks.read_table(labels_path)
    columns = ["area", *[c for c in table.columns if c.startswith("centroid-")], "touches_border",
               "intensity_mean"]
    echo(f"table:                {len(table)} objects x {len(table.columns)} columns "
         f"(patchworks.read_table({str(labels_path)!r}))")
    for line in table[columns].head(rows).round(2).to_string().splitlines():
        echo(f"  {line}")
    echo(f"view:                 patchworks view {sample}   (pip install 'patchworks[napari]'; it opens the "
         f"image's labels too)")
