"""napari reader for the label images patchworks writes (``patchworks[napari]``).

It claims a path only when it holds our run record (the ``"patchworks"``
attribute key on the label image group or its level-0 array), so other
zarr stores fall through to other readers. It returns one multiscale Labels
layer, visible, with the scale and units of the metadata and the object
table as the layer's ``features``. No napari import here: the layer data
tuples are plain Python, so this runs (and is tested) without a display.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zarr

from .io._ngff import parse_multiscales

logger = logging.getLogger("patchworks")


def _open(path: Path):
    try:
        return zarr.open(str(path), mode="r")
    except Exception:
        return None


def _ours(node) -> bool:
    record = dict(node.attrs).get("patchworks")
    return isinstance(record, dict) and "fingerprint" in record


def find_label_image(path) -> tuple[Path, list[str], dict] | None:
    """``(group or array path, level paths, multiscales entry)`` of a patchworks label image, else None."""
    path = Path(os.fspath(path))
    if not path.is_dir():
        return None
    node = _open(path)
    if node is None:
        return None
    if isinstance(node, zarr.Array):
        return (path, [""], {}) if _ours(node) else None
    attrs = dict(node.attrs)
    ms = parse_multiscales(attrs) if ("multiscales" in attrs or "ome" in attrs) else None
    if ms is not None:
        first = (attrs.get("ome", attrs).get("multiscales") or [{}])[0]
        level0 = node.get(ms.paths[0])
        if _ours(node) or (level0 is not None and _ours(level0)):
            return path, list(ms.paths), first
        return None
    for name, child in node.arrays():  # output_component: one array of ours inside a plain group
        if _ours(child):
            return path, [name], {}
    return None


def _scale_units(multiscales: dict, ndim: int, table_attrs: dict):
    axes = multiscales.get("axes") or []
    scale = None
    for t in (multiscales.get("datasets") or [{}])[0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(s) for s in t["scale"]][-ndim:]
    units = [a.get("unit") for a in axes][-ndim:] if axes and all(isinstance(a, dict) for a in axes) else None
    names = [a.get("name") if isinstance(a, dict) else a for a in axes][-ndim:] if axes else None
    if scale is None and table_attrs.get("voxel_size"):
        scale = list(table_attrs["voxel_size"])
    if (units is None or not any(units)) and table_attrs.get("units"):
        units = list(table_attrs["units"])
    return scale, units if units and all(units) else None, names


def read_label_layers(path) -> list[tuple]:
    """Layer data tuples ``[(levels, kwargs, "labels")]`` for a patchworks label image."""
    import dask.array as da

    from .io._table_store import read_table

    found = find_label_image(path)
    if found is None:
        raise ValueError(f"{str(path)!r} is not a label image written by patchworks (no 'patchworks' record)")
    root, levels, multiscales = found
    data = [da.from_zarr(str(root / p) if p else str(root)) for p in levels]
    features, table_attrs = None, {}
    try:
        table = read_table(root)
        table_attrs = dict(table.attrs)
        features = table.reset_index().rename(columns={"label": "index"})  # napari maps labels by "index"
    except FileNotFoundError:
        pass
    except ValueError as exc:  # a stale table: show the labels, not wrong measurements
        logger.warning("patchworks: not showing the table as features: %s", exc)
    ndim = data[0].ndim
    scale, units, names = _scale_units(multiscales, ndim, table_attrs)
    kwargs = {"name": root.name.removesuffix(".zarr").removesuffix(".ome"), "multiscale": len(data) > 1,
              "visible": True}
    if scale is not None:
        kwargs["scale"] = scale
    if units is not None:
        kwargs["units"] = units
    if names is not None and all(names):
        kwargs["axis_labels"] = names
    if features is not None:
        kwargs["features"] = features
    return [(data if len(data) > 1 else data[0], kwargs, "labels")]


def get_reader(path):
    """npe2 reader hook: a reader for our label images, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        found = find_label_image(path)
    except Exception:
        return None
    return None if found is None else read_label_layers


def image_layer(path, *, component=None) -> tuple:
    """``(levels, kwargs, "image")`` for an image: every level of an OME-Zarr, channels split."""
    import dask.array as da

    from .io._sources import LazySource, open_image

    path = Path(os.fspath(path))
    kwargs = {"name": path.name.removesuffix(".zarr").removesuffix(".ome")}
    node = _open(path) if path.is_dir() else None
    ms = parse_multiscales(dict(node.attrs)) if isinstance(node, zarr.Group) else None
    if ms is not None:
        levels = [da.from_zarr(str(path / p)) for p in ms.paths]
        axes = ms.axes
        attrs = dict(node.attrs)
        first = (attrs.get("ome", attrs).get("multiscales") or [{}])[0]
        for t in (first.get("datasets") or [{}])[0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = [float(s) for s in t["scale"]]
                if axes and "c" in axes:
                    scale = [s for s, a in zip(scale, axes) if a != "c"]
                kwargs["scale"] = scale
    else:
        source = open_image(str(path) if path.exists() else path, component=component)
        axes = source.axes if isinstance(source, LazySource) else None
        levels = [da.from_array(source, chunks=source.chunks or "auto") if isinstance(source, LazySource)
                  else da.asarray(source)]
    if axes and "c" in axes:
        kwargs["channel_axis"] = axes.index("c")
    kwargs["multiscale"] = len(levels) > 1
    return levels if len(levels) > 1 else levels[0], kwargs, "image"


def label_images_in(image) -> list[Path]:
    """The patchworks label images registered in an OME-Zarr image's ``labels`` group."""
    labels = Path(os.fspath(image)) / "labels"
    group = _open(labels) if labels.is_dir() else None
    if not isinstance(group, zarr.Group):
        return []
    names = dict(group.attrs).get("ome", dict(group.attrs)).get("labels") or []
    return [labels / n for n in names if find_label_image(labels / n) is not None]


def view(image=None, labels=(), *, show=True):
    """Open napari with ``image`` (multiscale, channels split) and label images over it; returns the viewer."""
    try:
        import napari
    except ImportError as exc:
        raise ImportError('patchworks view needs napari: pip install "patchworks[napari]"') from exc
    viewer = napari.Viewer(show=show)
    if image is not None:
        data, kwargs, _ = image_layer(image)
        viewer.add_image(data, **kwargs)
        labels = list(labels) or label_images_in(image)
    for path in labels:
        for data, kwargs, _ in read_label_layers(path):
            viewer.add_labels(data, **kwargs)
    return viewer
