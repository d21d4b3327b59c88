"""Whole-chunk reads and writes of local zarr v3 arrays, without zarr's per-call machinery.

A tile task reads one input chunk and writes one output chunk. Through
``zarr.Array.__getitem__`` / ``__setitem__`` each such call hops to zarr's
event-loop thread and back and builds its selection machinery, which costs
about 1.5 ms of CPU per 512x512 chunk, more than decoding it (measured; see
docs/how-it-works.md). For the plain layout patchworks itself writes (zarr v3
on a local disk, regular chunks, ``bytes`` + ``blosc``, no sharding), and for
zarr-python's default (``bytes`` + ``zstd``) or no compressor, this
module reads and writes the chunk's file directly, with the very codec
configuration the array declares, so the bytes are the ones zarr would
write. A read may span several chunks (a window with its halo, a batch of
small tiles): each is decoded in turn, and a chunk never written is the
fill value without a file read. A write may span several whole chunks (a
batch's core and its pyramid share): each is encoded and written in turn,
where zarr would cost ~3 ms of CPU per chunk. Anything else (sharding, other codecs,
zarr v2, remote stores, strided keys, writes of part of a chunk, reads of
more than ``MAX_DIRECT_READ_VOXELS``) returns ``None`` or ``False`` and the
caller goes through zarr.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from pathlib import Path

import numpy as np

_UNSET = object()
# Reads larger than this go through zarr, which decodes their chunks concurrently.
MAX_DIRECT_READ_VOXELS = 1 << 26


class ChunkFiles:
    """The chunk files of one local zarr v3 array of the supported layout (see the module docstring)."""

    def __init__(self, root: Path, meta, codec, dtype: np.dtype, write_empty: bool):
        self.root, self.meta, self.codec, self.dtype = root, meta, codec, dtype
        self.chunks = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
        self.shape = tuple(int(s) for s in meta.shape)
        self.fill = np.asarray(meta.fill_value, dtype=dtype) if meta.fill_value is not None else dtype.type(0)
        self.write_empty = write_empty
        self._made = set()  # chunk directories known to exist
        self._prefix = f"{root}{os.sep}"

    def _path(self, coords) -> str:
        # a plain string: pathlib's join costs ~20 us, and a sparse run checks several chunks per tile
        return self._prefix + self.meta.encode_chunk_key(tuple(coords))

    def read(self, key) -> np.ndarray | None:
        """The region ``key`` (slices of step 1 and ints) as a new array, or None when not applicable.

        A region spanning several chunks (a batch's block, a window with its
        halo) is assembled chunk by chunk; chunks never written hold the fill
        value and cost no read at all, which is what makes a sparse image's
        empty tiles cheap to skip.
        """
        spans = self._spans(key)
        if spans is None:
            return None
        box, drop = spans
        shape = tuple(b.stop - b.start for b in box)
        if math.prod(shape) > MAX_DIRECT_READ_VOXELS:
            return None  # a big read: zarr decodes its chunks concurrently
        first = [b.start // c for b, c in zip(box, self.chunks)]
        last = [(b.stop - 1) // c for b, c in zip(box, self.chunks)]
        out = None
        for coords in itertools.product(*[range(a, z + 1) for a, z in zip(first, last)]):
            inner, place = [], []
            for i, b, c in zip(coords, box, self.chunks):
                lo, hi = max(b.start, i * c), min(b.stop, (i + 1) * c)
                inner.append(slice(lo - i * c, hi - i * c))
                place.append(slice(lo - b.start, hi - b.start))
            chunk = self._chunk(coords)
            if out is None and chunk is not None and tuple(s.stop - s.start for s in inner) == shape:
                # the common case, one chunk: the decoded chunk is ours already (a copy only when cut)
                whole = shape == self.chunks
                out = chunk[tuple(inner)].astype(self.dtype, copy=not whole)
                continue
            if out is None:
                out = np.full(shape, self.fill, dtype=self.dtype)
            if chunk is not None:
                out[tuple(place)] = chunk[tuple(inner)]
        return out[drop] if drop else out

    def blank(self, key):
        """The fill value when no chunk under ``key`` was ever written (one ``stat`` per chunk), else None.

        What lets an empty tile of a sparse image be skipped, and an empty
        pyramid chunk be left unwritten, without reading or decoding anything.
        """
        spans = self._spans(key)
        if spans is None:
            return None
        box = spans[0]
        ranges = [range(b.start // c, (b.stop - 1) // c + 1) for b, c in zip(box, self.chunks)]
        if any(os.path.exists(self._path(coords)) for coords in itertools.product(*ranges)):
            return None
        return self.fill[()]

    def _spans(self, key):
        """``(box of slices, index dropping the int axes)`` for a key of slices (step 1) and ints, else None."""
        if not isinstance(key, tuple) or len(key) != len(self.shape):
            return None
        box, drop = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    return None
                box.append(slice(i, i + 1))
                drop.append(0)
                continue
            if not isinstance(k, slice) or k.step not in (None, 1):
                return None
            start, stop, _ = k.indices(n)
            if stop <= start:
                return None
            box.append(slice(start, stop))
            drop.append(slice(None))
        return tuple(box), (tuple(drop) if any(d == 0 for d in drop) else None)

    def _chunk(self, coords) -> np.ndarray | None:
        """One whole decoded chunk, or None for a chunk never written (its fill value)."""
        try:
            with open(self._path(coords), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        # into an array of our own: numcodecs then decodes without the GIL (a fresh bytes object for
        # its result is made holding it: 2 threads decoding 1024^2 uint32 zstd chunks 1.84x vs 0.88x)
        out = np.empty(self.chunks, dtype=self.dtype.newbyteorder("<"))
        self.codec.decode(raw, out=out)
        return out

    def write(self, key, data) -> bool:
        """Write ``data`` to ``key`` when ``key`` is whole chunks (clipped by the array's end); else False.

        A region of several whole chunks (a batch's core, its pyramid share)
        is written chunk by chunk; any other region goes through zarr, which
        reads, merges and rewrites the chunks it only partly covers.
        """
        spans = self._spans(key)
        if spans is None or spans[1] is not None:
            return False  # int axes: zarr's rules
        box = spans[0]
        data = np.asarray(data)
        if data.shape != tuple(b.stop - b.start for b in box):
            return False  # broadcasting and the like: zarr's rules
        if any(b.start % c or (b.stop % c and b.stop != n) for b, c, n in zip(box, self.chunks, self.shape)):
            return False  # part of a chunk
        ranges = [range(b.start // c, -(-b.stop // c)) for b, c in zip(box, self.chunks)]
        for coords in itertools.product(*ranges):
            inner = tuple(slice(i * c - b.start, min((i + 1) * c, b.stop) - b.start)
                          for i, c, b in zip(coords, self.chunks, box))
            self._write_chunk(coords, data[inner])
        return True

    def _write_chunk(self, coords, data) -> None:
        """One whole chunk (an edge chunk may be smaller: stored padded with the fill value, as zarr does)."""
        if data.shape == self.chunks:
            full = np.ascontiguousarray(data, dtype=self.dtype.newbyteorder("<"))
        else:
            full = np.full(self.chunks, self.fill, dtype=self.dtype.newbyteorder("<"))
            full[tuple(slice(0, n) for n in data.shape)] = data
        path = self._path(coords)
        if not self.write_empty and not full.any() and not self.fill:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        encoded = self.codec.encode(full.view(np.uint8).reshape(-1))
        folder, name = os.path.split(path)
        if folder not in self._made:  # one mkdir per directory, not one per chunk
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.part")
        with open(tmp, "wb") as f:
            f.write(encoded)
        os.replace(tmp, path)  # a reader never sees half a chunk


def chunk_files(array) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for ``array`` when its layout allows direct chunk I/O, else None."""
    cached = getattr(array, "_patchworks_chunk_files", _UNSET)
    if cached is not _UNSET:
        return cached
    found = _inspect(array)
    try:
        array._patchworks_chunk_files = found
    except AttributeError:  # a frozen array class: inspect each time (cheap)
        pass
    return found


def _inspect(array) -> ChunkFiles | None:
    if os.environ.get("PATCHWORKS_ZARR_DIRECT", "1") == "0":  # the switch the benchmarks compare with
        return None
    try:
        import zarr
        from zarr.codecs import BytesCodec
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.storage import LocalStore
    except ImportError:
        return None
    if not isinstance(array, zarr.Array) or array.metadata.zarr_format != 3:
        return None
    meta = array.metadata
    store = array.store_path.store
    if not isinstance(store, LocalStore) or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    if zarr.config.get("codec_pipeline.path", "").split(".")[-1] != "BatchedCodecPipeline":
        return None  # another pipeline (zarrs) was chosen on purpose: let it work
    codecs = meta.codecs
    if not 1 <= len(codecs) <= 2 or not isinstance(codecs[0], BytesCodec):
        return None
    try:
        dtype = np.dtype(meta.data_type.to_native_dtype())
    except (AttributeError, TypeError):
        return None
    if dtype.kind not in "biuf" or dtype.byteorder == ">" or (dtype.itemsize > 1 and
                                                                getattr(codecs[0].endian, "value", "little") != "little"):
        return None
    codec = _bytes_codec(codecs[1] if len(codecs) == 2 else None, dtype)
    if codec is None:
        return None
    root = Path(store.root) / array.store_path.path if array.store_path.path else Path(store.root)
    config = getattr(getattr(array, "_async_array", None), "config", None)
    write_empty = bool(getattr(config, "write_empty_chunks", False))
    return ChunkFiles(root, meta, codec, dtype, write_empty)


class _Raw:
    """No compressor: the chunk's bytes as they are."""

    @staticmethod
    def encode(buf):
        return bytes(buf)

    @staticmethod
    def decode(buf, out=None):
        if out is None:
            return buf
        np.copyto(out.reshape(-1).view(np.uint8), np.frombuffer(buf, np.uint8))
        return out


def _bytes_codec(zcodec, dtype: np.dtype):
    """The numcodecs codec doing what zarr's bytes-to-bytes codec ``zcodec`` does (None: not supported).

    Blosc and Zstd (zarr-python 3's default and what patchworks writes, so most
    inputs) are numcodecs' own codecs inside zarr too: same bytes either way.
    """
    from numcodecs import Blosc, Zstd
    from zarr.codecs import BloscCodec, ZstdCodec

    if zcodec is None:
        return _Raw()
    if isinstance(zcodec, BloscCodec):
        return Blosc.from_config({"cname": zcodec.cname.name, "clevel": zcodec.clevel,
                                  "shuffle": {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[zcodec.shuffle.name],
                                  "blocksize": zcodec.blocksize, "typesize": zcodec.typesize or dtype.itemsize})
    if isinstance(zcodec, ZstdCodec):
        return Zstd.from_config({"level": zcodec.level, "checksum": zcodec.checksum})
    return None


def read_region(array, key):
    """``array[key]`` as numpy: directly from the chunk's file when it can, else through zarr."""
    files = chunk_files(array)
    if files is not None:
        out = files.read(key)
        if out is not None:
            return out
    return np.asarray(array[key])


def blank_value(array, key):
    """The one value every voxel of ``array[key]`` holds when known without a read (no chunk written), else None."""
    files = chunk_files(array)
    return None if files is None else files.blank(key)


def write_region(array, key, data) -> None:
    """``array[key] = data``: straight into the chunks' files when ``key`` is whole chunks, else through zarr."""
    files = chunk_files(array)
    if files is None or not files.write(key, data):
        array[key] = data
