"""Minimal OME-Zarr (NGFF) multiscales metadata parsing.

Only what patchworks needs to read an image: the axis names and units, the
path of each resolution level and its scale. Supports NGFF 0.1-0.4 (zarr v2, ``multiscales`` at the top
of the group attributes) and 0.5 (zarr v3, attributes nested under ``"ome"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Multiscales", "parse_multiscales"]


@dataclass(frozen=True)
class Multiscales:
    """The first multiscales entry of an OME-Zarr group.

    Attributes
    ----------
    version : str or None
        NGFF version string from the metadata, if any.
    axes : str or None
        Lowercase axis names joined, e.g. ``"czyx"``; None when unknown.
    paths : tuple of str
        Array path of each resolution level, finest first.
    scales : tuple of tuple of float, or None
        Each level's scale per axis (the dataset's ``scale`` times the
        multiscale-wide one); None when the metadata gives none.
    units : tuple of (str or None), or None
        Each axis' unit, as written.
    raw : dict
        The multiscales entry itself (axes, datasets and their transforms),
        for writers that must copy it.
    """

    version: str | None
    axes: str | None
    paths: tuple[str, ...]
    scales: tuple | None = None
    units: tuple | None = None
    raw: Mapping | None = None


def parse_multiscales(attrs: Mapping[str, Any]) -> Multiscales | None:
    """Parse group attributes; return None when they hold no multiscales.

    Parameters
    ----------
    attrs : mapping
        The zarr group attributes (``.zattrs`` for v2, ``attributes`` of
        ``zarr.json`` for v3).

    Returns
    -------
    Multiscales or None
    """
    attrs = dict(attrs)
    version = None
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:  # NGFF >= 0.5
        version = ome.get("version")
        multiscales = ome["multiscales"]
    elif "multiscales" in attrs:  # NGFF <= 0.4
        multiscales = attrs["multiscales"]
    else:
        return None
    if not isinstance(multiscales, list) or not multiscales:
        raise ValueError(f"invalid OME-Zarr metadata: 'multiscales' must be a non-empty list, got {multiscales!r}")
    first = multiscales[0]
    version = version or first.get("version")
    datasets = first.get("datasets") or []
    try:
        paths = tuple(str(d["path"]) for d in datasets)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"invalid OME-Zarr metadata: each dataset needs a 'path', got {datasets!r}") from exc
    if not paths:
        raise ValueError("invalid OME-Zarr metadata: 'multiscales[0].datasets' is empty")
    axes_meta = first.get("axes") or []
    units = tuple(a.get("unit") if isinstance(a, Mapping) else None for a in axes_meta) or None
    return Multiscales(version=version, axes=_axes(axes_meta), paths=paths, scales=_scales(first, datasets),
                       units=units, raw=first)


def _scale_of(transforms) -> list | None:
    for t in transforms or ():
        if isinstance(t, Mapping) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
            return [float(v) for v in t["scale"]]
    return None


def _scales(first, datasets):
    """Per level, ``scale`` per axis (dataset transform times the multiscale-wide one)."""
    overall = _scale_of(first.get("coordinateTransformations"))
    out = []
    for d in datasets:
        scale = _scale_of(d.get("coordinateTransformations"))
        if scale is None:
            return None
        if overall is not None and len(overall) == len(scale):
            scale = [a * b for a, b in zip(scale, overall)]
        out.append(tuple(scale))
    return tuple(out)


def _axes(axes: Any) -> str | None:
    # 0.4+: list of {"name": "c", "type": "channel", ...}; 0.3: list of str;
    # 0.1/0.2: no axes (implicitly tczyx, resolved by the caller from ndim).
    if not axes:
        return None
    names = [a.get("name") if isinstance(a, Mapping) else a for a in axes]
    if not all(isinstance(n, str) and len(n) == 1 for n in names):
        return None  # multi-letter names do not fit patchworks' axes strings
    return "".join(names).lower()
