"""A zarr group and its child arrays created from metadata drafted in memory: one concurrent batch of writes.

Creating arrays one by one through a group sends several requests each --
existence checks of the array and of every parent group, then the write,
and a rewrite of the parent's metadata -- one after the other. On an object
store that is a round trip apiece (10 for a group with two levels), so a
run's fixed cost. Here every node's metadata document is drafted in a
``MemoryStore`` first and then written together; the nodes are opened from
the metadata in hand, nothing is read back.
"""

from __future__ import annotations

import asyncio
import posixpath

import zarr
from zarr.core.sync import sync
from zarr.storage import MemoryStore

__all__ = ["draft_group", "ensure_parents", "open_array_from", "write_nodes"]


def draft_group(zarr_format: int, attributes: dict | None = None):
    """An empty group in memory, whose ``create_array`` drafts the arrays to write with :func:`write_nodes`."""
    return zarr.open_group(store=MemoryStore(), mode="w", zarr_format=zarr_format, attributes=attributes or {})


def write_nodes(store, group_metadata, arrays: dict, path: str = ""):
    """Write a group at ``path`` of ``store`` and its child arrays (``{name: metadata}``) in one batch.

    Returns ``(group, {name: array})``, opened from the metadata written.
    The caller removes whatever was at ``path`` before, when it must.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import AsyncGroup
    from zarr.storage import StorePath

    proto = default_buffer_prototype()
    base = path.strip("/")
    docs = [(posixpath.join(base, key), buf) for key, buf in group_metadata.to_buffer_dict(proto).items()]
    docs += [(posixpath.join(base, name, key), buf) for name, meta in arrays.items()
             for key, buf in meta.to_buffer_dict(proto).items()]

    async def put_all():
        await asyncio.gather(*(store.set(key, buf) for key, buf in docs))

    sync(put_all())
    group = zarr.Group(AsyncGroup(metadata=group_metadata, store_path=StorePath(store, base)))
    return group, {name: open_array_from(store, posixpath.join(base, name), meta) for name, meta in arrays.items()}


def open_array_from(store, path: str, metadata, config=None):
    """The array at ``path`` of ``store`` whose metadata is ``metadata`` (known: not read from the store)."""
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath

    kwargs = {} if config is None else {"config": config}
    return zarr.Array(AsyncArray(metadata=metadata, store_path=StorePath(store, path), **kwargs))


def ensure_parents(store, path: str, zarr_format: int) -> None:
    """Empty group metadata for every parent of ``path`` that has none (never replacing a parent's).

    As zarr does for a node it creates: each document is written only if
    absent, so a parent's attributes -- an image's ``labels`` list that
    another run is updating -- are never overwritten.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    parts = [p for p in path.strip("/").split("/") if p][:-1]
    parents = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if not parents:
        return
    docs = GroupMetadata(zarr_format=zarr_format).to_buffer_dict(default_buffer_prototype())

    async def put_missing():
        await asyncio.gather(*(store.set_if_not_exists(posixpath.join(parent, key), buf)
                               for parent in parents for key, buf in docs.items()))

    sync(put_missing())
