"""Lazy, read-only image sources and zarr output creation.

``open_image`` turns anything patchworks accepts (path, zarr / h5py / numpy /
dask array) into something that can be indexed window by window without ever
loading the whole image. On-disk sources become a :class:`LazySource`, which
pickles as a few strings so it can travel to worker processes cheaply.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from patchworks.io._ngff import parse_multiscales
from ._chunk_io import blank_value, read_region
from ._npy import RemoteNpy, load_npy
from ._urls import (explain_remote_error, filesystem, hides_connection_error, is_remote, local_path, protocol_of,
                    read_options, zarr_store)

__all__ = ["LazySource", "create_output", "open_image", "same_location"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
_ACCEPTED = "a path (zarr / OME-Zarr store, TIFF, HDF5, .npy), a numpy array, a dask array, a zarr.Array or an h5py.Dataset"


def _unknown_format(name: str, source: Any, suffix: str) -> ValueError:
    return ValueError(
        f"{name}={str(source)!r}: unknown format (suffix {suffix!r}); patchworks reads zarr (.zarr, .ome.zarr), "
        "TIFF (.tif/.tiff), HDF5 (.h5/.hdf5), .npy, or numpy / dask / zarr arrays"
    )


def _is_dask(obj: Any) -> bool:
    # Only check when dask.array is already imported: if it is not, obj cannot be one,
    # and importing dask just for this check would slow every open_image call.
    if "dask.array" not in sys.modules:
        return False
    import dask.array as da

    return isinstance(obj, da.Array)


def _is_h5py_dataset(obj: Any) -> bool:
    return "h5py" in sys.modules and isinstance(obj, sys.modules["h5py"].Dataset)


def _import_h5py():
    try:
        import h5py
    except ImportError as exc:  # optional dependency
        raise ImportError('reading HDF5 needs h5py: pip install "patchworks[hdf5]"') from exc
    return h5py


def _is_zarr_store(path: Path) -> bool:
    return any((path / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))


def _axes_from_tifffile(axes: str) -> str:
    # tifffile: 'C' channel, 'S' samples (RGB) -> both are channels for us; only map 'S'
    # when there is no 'C' so the axes string never holds two 'c'.
    axes = axes.upper()
    if "C" not in axes:
        axes = axes.replace("S", "C")
    return axes.lower()


def open_image(source, *, component=None, level=0, channel=None, name="image", storage_options=None):
    """Open an image for lazy, window-by-window reading; never writes to it.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray, dask.array.Array, zarr.Array or h5py.Dataset
        A path or URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``,
        ``file://``) to a zarr / OME-Zarr store, a TIFF / OME-TIFF, an HDF5
        or a ``.npy`` file, or an array object.
    component : str, optional
        Array inside a zarr group or dataset inside an HDF5 file, e.g. ``"a/b"``.
    level : int
        Resolution level of a multiscale image (OME-Zarr, pyramidal TIFF).
    channel : int, optional
        Pick one index along the ``c`` axis and drop that axis.
    name : str
        Parameter name used in error messages.
    storage_options : dict, optional
        Passed to the fsspec backend of a URL (credentials, endpoint, ...);
        without it the backend's own defaults and environment variables
        apply (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...). It travels
        with the source to worker processes.

    Returns
    -------
    numpy.ndarray, dask.array.Array or LazySource
        Arrays are returned unchanged; everything else becomes a :class:`LazySource`.

    Raises
    ------
    FileNotFoundError, PermissionError, ConnectionError
        A URL whose object is missing, whose credentials are refused or whose
        endpoint cannot be reached, naming the URL; raised here, before any
        tile runs.
    ImportError
        A URL whose fsspec backend is not installed, naming the extra
        (``patchworks[s3]``, ``[gcs]``, ``[azure]``, ``[http]``).
    """
    if isinstance(source, np.ndarray) or _is_dask(source):
        if component is not None or level != 0 or channel is not None:
            raise ValueError(
                f"{name}: component=, level= and channel= only apply to files and zarr/HDF5 arrays, "
                f"not to an in-memory {type(source).__name__}; index the array yourself instead"
            )
        return source
    if isinstance(source, LazySource):
        if component is not None or level != 0 or channel is not None:
            raise ValueError(f"{name}: {source!r} is already opened; pass component=/level=/channel= when opening it")
        return source
    if isinstance(source, zarr.Array):
        store = source.store
        comp = "/".join(p for p in (source.path, component) if p) or None
        if isinstance(store, LocalStore):  # reopen by path: pickles cheaply, read-only
            return LazySource(str(store.root), kind="zarr", component=comp, level=level, channel=channel, name=name)
        url = _fsspec_store_url(store)
        if url is not None:  # reopen by URL and the filesystem's own options
            return LazySource(url, kind="zarr", component=comp, level=level, channel=channel, name=name,
                              storage_options=dict(store.fs.storage_options))
        if component is not None:
            raise ValueError(f"{name}: component= cannot be used with a zarr.Array; pass the group or store path")
        return LazySource(None, kind="zarr-array", level=level, channel=channel, name=name, _array=source)
    if _is_h5py_dataset(source):  # h5py objects do not pickle: keep file name + dataset name
        if component is not None:
            raise ValueError(f"{name}: component= cannot be used with an h5py.Dataset")
        return LazySource(source.file.filename, kind="hdf5", component=source.name, level=level, channel=channel, name=name)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{name}: got {type(source).__module__}.{type(source).__qualname__}; expected {_ACCEPTED}")
    if is_remote(source):
        return _open_url(source, component=component, level=level, channel=channel, name=name,
                         storage_options=storage_options)
    if protocol_of(source) is not None:  # file://
        source = str(local_path(source))

    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}={str(source)!r}: no such file or directory")
    lower = path.name.lower()
    if path.is_dir():
        if not _is_zarr_store(path):
            raise ValueError(
                f"{name}={str(source)!r} is a directory but not a zarr store (no zarr.json, .zarray or .zgroup); "
                "pass the path of the .zarr store or of an image file"
            )
        kind = "zarr"
    elif lower.endswith(_TIFF_SUFFIXES):
        kind = "tiff"
    elif lower.endswith(_HDF5_SUFFIXES):
        kind = "hdf5"
    elif lower.endswith(".npy"):
        kind = "npy"
    elif lower.endswith(".zarr"):
        raise ValueError(f"{name}={str(source)!r} is a file, but zarr stores are directories; pass the store directory")
    else:
        raise _unknown_format(name, source, path.suffix)
    return LazySource(str(path.resolve()), kind=kind, component=component, level=level, channel=channel, name=name)


def _kind_of(name_lower: str) -> str | None:
    if name_lower.endswith(_TIFF_SUFFIXES):
        return "tiff"
    if name_lower.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    if name_lower.endswith(".npy"):
        return "npy"
    return None


def _open_url(url, *, component, level, channel, name, storage_options):
    """A LazySource for a remote URL, after one cheap look that it exists and can be read."""
    fs, path = filesystem(url, read_options(url, storage_options), parameter=name)
    path = path.rstrip("/")
    signed = protocol_of(url) in ("http", "https") and "?" in path
    # a signed URL (S3 / GCS presigned, Azure SAS) names one object and carries its token in the query
    object_path = urlsplit(path).path if signed else path
    kind, zarr_format = _kind_of(object_path.lower()), None
    if signed and kind is None:
        raise ValueError(
            f"{name}={url!r}: a URL with a query (a signed URL) must name one image file (.tif, .tiff, .h5, .hdf5, "
            f".npy); a zarr store is many objects, each with its own signature. Read a zarr store by its "
            f"s3:// / gs:// / az:// URL with credentials in storage_options, or over plain http(s)")
    try:
        if kind is not None:
            fs.info(path)  # missing, refused or unreachable: said here, before any tile runs
        else:
            zarr_format = _remote_zarr_meta(fs, path, url)
            kind = "zarr" if zarr_format else None
    except Exception as exc:
        err = explain_remote_error(url, exc, storage_options, parameter=name)
        if err is None:
            raise
        raise err from exc
    if kind is None:
        suffix = os.path.splitext(path)[1]
        if path.lower().endswith(".zarr"):
            raise FileNotFoundError(f"{name}={url!r}: no zarr store there (no zarr.json, .zarray or .zgroup); "
                                    "check the URL (zarr stores are the prefix that holds zarr.json)")
        raise _unknown_format(name, url, suffix)
    return LazySource(url, kind=kind, component=component, level=level, channel=channel, name=name,
                      storage_options=storage_options, _zarr_format=zarr_format)


def _remote_zarr_meta(fs, path, url) -> int | None:
    """The zarr format of the metadata at ``path`` (None if none); a missing bucket raises FileNotFoundError."""
    for meta, fmt in (("zarr.json", 3), (".zgroup", 2), (".zarray", 2)):
        try:
            fs.info(f"{path}/{meta}")
            return fmt
        except FileNotFoundError as exc:
            if hides_connection_error(exc):
                raise
            continue
    root = path.split("/", 1)[0]
    if protocol_of(url) not in ("http", "https") and not fs.exists(root):
        raise FileNotFoundError(f"bucket or container {root!r} does not exist")
    return None


def _fsspec_store_url(store) -> str | None:
    from zarr.storage import FsspecStore

    if not isinstance(store, FsspecStore):
        return None
    return store.fs.unstrip_protocol(store.path)


class LazySource:
    """Picklable, read-only, window-by-window view of an image on disk or behind a URL.

    Create it with :func:`open_image`. Only the location (path or URL,
    ``storage_options``, component, level, channel, kind) is pickled; the
    file is reopened lazily in each process.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    ndim : int
    chunks : tuple of int or None
        On-disk chunk / tile shape when known.
    axes : str or None
        Lowercase axis names, e.g. ``"czyx"``; the channel axis is dropped when a
        channel was chosen.
    voxel_size : tuple of float or None
        Physical size of a voxel per axis (of this level), from OME-Zarr
        ``coordinateTransformations``, OME-TIFF ``PhysicalSize*`` or an ImageJ
        TIFF's resolution and ``spacing``; None when the file gives none.
    units : tuple of (str or None) or None
        The unit of each axis (NGFF names, e.g. ``"micrometer"``), None
        where unknown.
    description : str
        Human-readable location for messages.
    """

    def __init__(self, path, *, kind, component=None, level=0, channel=None, name="image", _array=None,
                 storage_options=None, _zarr_format=None):
        self.path = path
        # a format known beforehand spares zarr's guessing: it tries both formats' metadata keys, a
        # request each (8 GETs to open an OME-Zarr and its level over HTTP, 3 with the format known)
        self._zarr_format = _zarr_format
        self.storage_options = dict(storage_options) if storage_options else None
        self.remote = is_remote(path)
        self.kind = kind
        self.component = component
        self.level = level
        self.channel = channel
        self._array = _array  # only for kind "zarr-array": a zarr.Array we cannot reopen by path
        self._handle = None
        self._lock = threading.RLock()
        self._voxel = (None, None)  # set by the resolvers that find a voxel size
        if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 0:
            raise ValueError(f"{name}: level={level!r} must be an int >= 0")
        if channel is not None and (not isinstance(channel, (int, np.integer)) or isinstance(channel, bool)):
            raise ValueError(f"{name}: channel={channel!r} must be an int or None")
        # Resolve once, here, what the openers need (array path, level) and the metadata;
        # errors are raised now rather than in a worker. The open handle is cached too.
        opener = getattr(self, f"_resolve_{kind.replace('-', '_')}")
        shape, dtype, chunks, axes, desc = opener(name)

        if axes and len(axes) != len(shape):
            axes = None  # metadata disagrees with the array: do not guess which axis is which
        voxel_size, units = self._voxel
        if voxel_size is not None and len(voxel_size) != len(shape):
            voxel_size = units = None
        self._c = None  # index of the channel axis in the full (on-disk) shape
        if channel is not None:
            if not axes or "c" not in axes:
                raise ValueError(
                    f"{name}: channel={channel} given but {desc} has no channel axis "
                    f"(axes={axes!r}); valid: channel=None"
                )
            self._c = axes.index("c")
            n = shape[self._c]
            if not -n <= channel < n:
                raise ValueError(f"{name}: channel={channel} out of range; valid: 0..{n - 1} (c axis has {n} channels)")
            self.channel = int(channel) % n
            shape = shape[: self._c] + shape[self._c + 1 :]
            chunks = None if chunks is None else chunks[: self._c] + chunks[self._c + 1 :]
            axes = axes.replace("c", "")
            desc = f"{desc}, channel {self.channel}"
            if voxel_size is not None:
                voxel_size = voxel_size[: self._c] + voxel_size[self._c + 1 :]
                units = units[: self._c] + units[self._c + 1 :]
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = None if chunks is None else tuple(int(c) for c in chunks)
        self.axes = axes or None
        self.voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        self.units = None if voxel_size is None else tuple(units)
        self.description = desc

    # -- per-kind resolution (runs once, in the process that calls open_image) --------

    def _could_not_read(self, name, exc):
        if self.remote:
            err = explain_remote_error(self.path, exc, self.storage_options, parameter=name)
            if err is not None:
                return err
        return ValueError(f"could not read {name}={self.path!r}: {type(exc).__name__}: {exc}")

    def _zarr_store(self):
        if self.remote:
            return zarr_store(self.path, self.storage_options, read_only=True)
        return LocalStore(self.path, read_only=True)

    def _open_file(self):
        """A path for a local file; a seekable file object for a URL (read in ranges, never whole)."""
        if not self.remote:
            return self.path
        fs, path = filesystem(self.path, read_options(self.path, self.storage_options))
        # small blocks: a window of a tiled TIFF / HDF5 reads scattered ranges, not the whole object
        return fs.open(path, "rb", block_size=1 << 21, cache_type="readahead")

    def _resolve_zarr(self, name):
        store = self._zarr_store()
        try:
            node = zarr.open(store=store, mode="r", path=self.component or "",
                             zarr_format=self._zarr_format)
        except (FileNotFoundError, KeyError) as exc:
            if self.component is None:
                raise self._could_not_read(name, exc) from exc
            raise ValueError(
                f"{name}: component={self.component!r} not found in zarr store {self.path!r}; "
                f"arrays there: {_zarr_arrays(store)}"
            ) from exc
        except Exception as exc:
            raise self._could_not_read(name, exc) from exc
        where = f"{self.path}[{self.component}]" if self.component else self.path
        axes = None
        if isinstance(node, zarr.Group):
            ms = parse_multiscales(node.attrs)
            if ms is not None:
                n = len(ms.paths)
                if self.level >= n:
                    raise ValueError(f"{name}: level={self.level} out of range for OME-Zarr {where}; valid: 0..{n - 1}")
                self._array_path = "/".join(p for p in (self.component, ms.paths[self.level]) if p)
                node = node[ms.paths[self.level]]
                axes = ms.axes or ("tczyx"[-node.ndim :] if node.ndim == 5 else None)
                if ms.scales is not None:
                    from ._ngff_write import ngff_unit

                    names = axes or ""
                    units = tuple(ngff_unit(u, "time" if names[i:i + 1] == "t" else "space")
                                  for i, u in enumerate(ms.units or (None,) * node.ndim))
                    self._voxel = (ms.scales[self.level], units)
            else:
                arrays = [p for p, m in node.members(max_depth=None) if isinstance(m, zarr.Array)]
                if len(arrays) != 1:
                    raise ValueError(
                        f"{name}={where!r} is a zarr group holding {len(arrays)} arrays {arrays}; "
                        "pass component= to choose one, e.g. component=" + repr(arrays[0] if arrays else "raw")
                    )
                self._check_level0(name, where)
                self._array_path = "/".join(p for p in (self.component, arrays[0]) if p)
                node = node[arrays[0]]
        else:
            self._check_level0(name, where)
            self._array_path = self.component or ""
        if axes is None:
            axes = _zarr_dimension_axes(node)
        self._handle = node
        self._zarr_format = node.metadata.zarr_format  # a worker's reopen reads one metadata key
        desc = f"zarr v{node.metadata.zarr_format} array {self.path}"
        desc += f"[{self._array_path}]" if self._array_path else ""
        desc += f" (level {self.level})" if self.level else ""
        return node.shape, node.dtype, node.chunks, axes, desc

    def _resolve_zarr_array(self, name):
        arr = self._array
        self._check_level0(name, repr(arr))
        self._handle = arr
        return arr.shape, arr.dtype, arr.chunks, _zarr_dimension_axes(arr), f"zarr array {arr}"

    def _resolve_tiff(self, name):
        import tifffile

        self._check_no_component(name)
        tif = None
        try:
            tif = tifffile.TiffFile(self._open_file())
            levels = tif.series[0].levels
        except Exception as exc:
            if tif is not None:
                tif.close()
            raise self._could_not_read(name, exc) from exc
        if self.level >= len(levels):
            tif.close()
            raise ValueError(f"{name}: level={self.level} out of range for TIFF {self.path!r}; valid: 0..{len(levels) - 1}")
        arr = self._open_tiff(tif)
        self._handle = (tif, arr)
        axes = _axes_from_tifffile(levels[self.level].axes)
        try:
            self._voxel = _tiff_voxel_size(tif, axes, levels[0].shape, arr.shape)
        except Exception:  # malformed metadata: the pixels are still readable, the size unknown
            self._voxel = (None, None)
        desc = f"TIFF {self.path}" + (f" (level {self.level})" if self.level else "")
        return arr.shape, arr.dtype, arr.chunks, axes, desc

    def _open_tiff(self, tif):
        # tifffile's ZarrTiffStore is a zarr 3 store: zarr decodes only the tiles / strips
        # (or whole pages, for striped files) that a window touches. It sets an RLock on
        # the file handle, so concurrent reads from threads are safe.
        store = tif.aszarr(series=0, level=self.level)
        return zarr.open_array(store=store, mode="r")

    def _resolve_hdf5(self, name):
        h5py = _import_h5py()
        try:
            f = h5py.File(self._open_file(), "r")
        except Exception as exc:
            raise self._could_not_read(name, exc) from exc
        if self.component is None:
            found = []
            f.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
            if len(found) != 1:
                f.close()
                raise ValueError(
                    f"{name}={self.path!r} holds {len(found)} datasets {found}; pass component= to choose one"
                )
            self.component = found[0]
        obj = f.get(self.component)
        if not isinstance(obj, h5py.Dataset):
            found = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
            f.close()
            raise ValueError(f"{name}: component={self.component!r} is not a dataset in {self.path!r}; datasets: {found}")
        self._check_level0(name, self.path)
        self._handle = (f, obj)
        return obj.shape, obj.dtype, obj.chunks, None, f"HDF5 dataset {self.path}[{obj.name}]"

    def _resolve_npy(self, name):
        self._check_no_component(name)
        self._check_level0(name, self.path)
        try:
            mm = RemoteNpy(*filesystem(self.path, read_options(self.path, self.storage_options))) if self.remote else \
                load_npy(self.path, mmap_mode="r")
        except Exception as exc:
            raise self._could_not_read(name, exc) from exc
        if not isinstance(mm, (np.ndarray, RemoteNpy)):
            raise ValueError(f"could not read {name}={self.path!r}: not a single .npy array")
        self._handle = mm
        return mm.shape, mm.dtype, None, None, f"npy file {self.path}"

    def _check_level0(self, name, where):
        if self.level != 0:
            raise ValueError(f"{name}: level={self.level} but {where} has a single resolution level; valid: level=0")

    def _check_no_component(self, name):
        if self.component is not None:
            raise ValueError(f"{name}: component={self.component!r} only applies to zarr groups and HDF5 files")

    # -- reopening (in each process, after unpickling) ---------------------------------

    def _get(self):
        h = self._handle
        if h is not None:
            return h
        with self._lock:  # several threads may hit the first read at once
            if self._handle is None:
                self._handle = self._reopen()
            return self._handle

    def _reopen(self):
        if self.kind == "zarr":
            return zarr.open_array(store=self._zarr_store(), mode="r", path=self._array_path,
                                   zarr_format=self._zarr_format)
        if self.kind == "zarr-array":
            return self._array
        if self.kind == "tiff":
            import tifffile

            tif = tifffile.TiffFile(self._open_file())
            return (tif, self._open_tiff(tif))
        if self.kind == "hdf5":
            f = _import_h5py().File(self._open_file(), "r")
            return (f, f[self.component])
        if self.kind == "npy":
            if self.remote:
                return RemoteNpy(*filesystem(self.path, read_options(self.path, self.storage_options)))
            return load_npy(self.path, mmap_mode="r")
        raise AssertionError(self.kind)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None  # open files / stores are per process
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("_zarr_format", None)
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- reading -------------------------------------------------------------------------

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def __getitem__(self, key):
        """Read one window; ``key`` is a tuple of slices, ints and at most one Ellipsis."""
        key = self._disk_key(key)
        h = self._get()
        if self.kind == "hdf5":
            with self._lock:  # h5py handles are not safe to share between threads
                return np.asarray(h[1][key])
        if self.kind == "tiff":
            return np.asarray(h[1][key])
        if self.kind == "npy" and not self.remote:
            return np.array(h[key], copy=True)  # not a view of the memory map
        if self.kind in ("zarr", "zarr-array") and not self.remote:
            return read_region(h, key)  # straight from the chunk files where the layout allows
        return np.asarray(h[key])

    def blank(self, key):
        """The value every voxel of window ``key`` holds when known without reading it, else None.

        A local zarr array whose chunks under ``key`` were never written holds
        its fill value there (sparse images store no empty chunks); any other
        case is unknown (None) and the caller reads the window.
        """
        if self.kind not in ("zarr", "zarr-array") or self.remote:
            return None
        return blank_value(self._get(), self._disk_key(key))

    def _disk_key(self, key):
        """``key`` (slices, ints, at most one Ellipsis) as an index of the array on disk."""
        key = _normalize_key(key, self.shape)
        if self._c is not None:  # put the chosen channel back in the on-disk index
            key = key[: self._c] + (self.channel,) + key[self._c :]
        return key

    def __repr__(self):
        return f"LazySource({self.description}, shape={self.shape}, dtype={self.dtype}, axes={self.axes!r})"


def _tiff_voxel_size(tif, axes: str, shape0, shape):
    """``(voxel_size, units)`` per axis of a TIFF level: OME-XML ``PhysicalSize*``, else ImageJ tags."""
    import tifffile

    from ._ngff_write import ngff_unit

    sizes: dict[str, tuple[float, str | None]] = {}
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        for a in "xyz":
            value = pixels.get(f"PhysicalSize{a.upper()}")
            if value is not None:  # OME's default unit is the micrometre
                sizes[a] = (float(value), ngff_unit(pixels.get(f"PhysicalSize{a.upper()}Unit", "µm")))
    elif tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = ngff_unit(meta.get("unit"))
        tags = tif.pages[0].tags
        for a, tag in (("x", "XResolution"), ("y", "YResolution")):
            if tag in tags:
                num, den = tags[tag].value
                if num:  # pixels per unit
                    sizes[a] = (den / num, unit)
        if meta.get("spacing"):
            sizes["z"] = (float(meta["spacing"]), unit)
    if not sizes or not axes:
        return None, None
    values, units = [], []
    for i, a in enumerate(axes):
        value, unit = sizes.get(a, (1.0, None))
        if a in "xy" and shape0[i] != shape[i]:  # a pyramid level: coarser by the shape ratio
            value *= shape0[i] / shape[i]
        values.append(value)
        units.append(unit if a in sizes else None)
    return tuple(values), tuple(units)


def _normalize_key(key, shape):
    """Expand ``key`` to one int or slice per axis; ints bounds-checked and made >= 0."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ell = sum(k is Ellipsis for k in key)
    if n_ell > 1:
        raise IndexError("an index can only have a single Ellipsis ('...')")
    if n_ell:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: got {len(key)} for an image with {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            out.append(slice(*k.indices(n)))  # h5py dislikes negative / None bounds
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if not -n <= k < n:
                raise IndexError(f"index {k} out of bounds for axis of size {n}")
            out.append(int(k) % n)
        else:
            raise TypeError(f"LazySource only supports ints, slices and Ellipsis as indices, got {type(k).__name__}")
    return tuple(out)


def _zarr_arrays(store) -> list[str]:
    try:
        node = zarr.open(store=store, mode="r")
    except Exception:
        return []
    if isinstance(node, zarr.Array):
        return [""]
    return [p for p, m in node.members(max_depth=None) if isinstance(m, zarr.Array)]


def _zarr_dimension_axes(arr) -> str | None:
    # zarr v3 dimension_names, when all are one letter (e.g. written by patchworks), give axes.
    names = getattr(arr.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) and len(n) == 1 for n in names):
        return "".join(names).lower()
    return None


# Output codecs. Labels: zstd level 1, no Blosc and no shuffle. Label ids are long
# runs of one 4-byte value, which zstd's matcher finds in the raw bytes; a byte
# shuffle splits each id over four planes and hides them. CPU per 128^3 chunk of
# uint32 labels with globally offset ids:
#   blobs:  Blosc zstd-1 + shuffle 28-35 ms encode, 17-20 ms decode, 8-11x;
#           zstd-1                 15 ms encode,     8.5 ms decode,   22x
#   tissue (dense Voronoi cells): 19 ms / 11 ms / 22x against 11 ms / 6 ms / 30x
# so half the encode, half the decode (a viewer's too) and half the bytes; zstd-3
# costs the same here, Blosc-lz4 encodes faster (9 ms) but at 7x. Dense maps
# (floats) keep Blosc zstd-1 with byte shuffle, which is what floats compress with.
_ZSTD_LEVEL = 1
_BLOSC = dict(cname="zstd", clevel=1)


def output_compressors(zarr_format: int, dtype=np.uint32):
    """The codec a patchworks output of ``dtype`` uses, in the form the zarr format wants."""
    labels = np.dtype(dtype).kind in "biu"
    if zarr_format == 3:
        from zarr.codecs import BloscCodec, ZstdCodec

        return ZstdCodec(level=_ZSTD_LEVEL) if labels else BloscCodec(shuffle="shuffle", **_BLOSC)
    from numcodecs import Blosc, Zstd

    return Zstd(level=_ZSTD_LEVEL) if labels else Blosc(shuffle=Blosc.SHUFFLE, **_BLOSC)


def create_output(
    path,
    *,
    shape,
    dtype,
    chunks,
    component=None,
    zarr_format=3,
    overwrite=False,
    attributes=None,
    fill_value=0,
    storage_options=None,
):
    """Create a new zarr array at ``path`` (or ``path/component`` inside a group).

    Parameters
    ----------
    path : str or os.PathLike
        Store directory, e.g. ``"labels.zarr"``.
    shape, dtype, chunks
        Array shape, dtype and chunk shape (one entry per dimension).
    component : str, optional
        Array path inside the store group, e.g. ``"labels/cells"``.
    zarr_format : {3, 2}
    overwrite : bool
        Replace an existing array / store at the target.
    attributes : dict, optional
        Written to the array's attributes.
    fill_value : scalar
    storage_options : dict, optional
        For a ``path`` that is an object-store URL (``s3://``, ``gs://``, ``az://``).

    Returns
    -------
    zarr.Array
        Opened for writing.
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format={zarr_format!r} is not supported; valid: 2 or 3")
    shape = tuple(int(s) for s in shape)
    if chunks is None or len(tuple(chunks)) != len(shape):
        raise ValueError(f"chunks={chunks!r} must give one chunk size per dimension of shape={shape}")
    chunks = tuple(int(c) for c in chunks)
    from ._urls import is_remote, zarr_store

    if is_remote(path):
        store = zarr_store(str(path), storage_options, read_only=False, parameter="write_to")
        exists = False
        if not overwrite:
            try:
                zarr.open(store=store, path=component or "", mode="r")
                exists = True
            except (FileNotFoundError, KeyError, ValueError):
                pass
        target = f"{str(path).rstrip('/')}/{component}" if component else str(path)
    else:
        path = Path(os.fspath(path)).expanduser()
        target, store = (path / component if component else path), str(path)
        exists = target.exists()
    if exists and not overwrite:
        raise FileExistsError(
            f"output {str(target)!r} already exists; pass overwrite=True to replace it, or choose another path"
        )
    compressors = output_compressors(zarr_format, dtype)
    return zarr.create_array(
        store=store,
        name=component,
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(dtype),
        compressors=compressors,
        zarr_format=zarr_format,
        overwrite=overwrite,
        attributes=attributes,
        fill_value=fill_value,
        # tasks only write chunks that hold labels; skipping zarr's all-fill
        # check on each write made chunk writes ~35 % faster
        config={"write_empty_chunks": True},
    )


def _url_key(url: str, *parts) -> str:
    """A URL in one spelling (scheme lowercased, no trailing or doubled slashes) for comparisons."""
    protocol, _, rest = url.partition("://")
    segments = [p for part in (rest, *parts) for p in str(part).split("/") if p]
    return f"{protocol.lower()}://" + "/".join(segments)


def _location(obj) -> Path | str | None:
    """Resolved location of a user-given source / target (a Path, or a URL key), or None if in memory."""
    if isinstance(obj, LazySource):
        if obj.path is None:
            return _location(obj._array)
        comp = getattr(obj, "_array_path", None) if obj.kind == "zarr" else None
        if obj.remote:
            return _url_key(obj.path, comp or "")
        return Path(obj.path).resolve() / comp if comp else Path(obj.path).resolve()
    if isinstance(obj, np.memmap):
        return Path(obj.filename).resolve() if obj.filename else None
    if isinstance(obj, zarr.Array):
        if isinstance(obj.store, LocalStore):
            root = Path(obj.store.root).resolve()
            return root / obj.path if obj.path else root
        url = _fsspec_store_url(obj.store)
        return None if url is None else _url_key(url, obj.path)
    if _is_h5py_dataset(obj):
        return Path(obj.file.filename).resolve()
    if isinstance(obj, (str, os.PathLike)):
        if is_remote(obj):
            return _url_key(obj)
        return local_path(obj).expanduser().resolve()
    return None


def same_location(a, b) -> bool:
    """True when ``a`` and ``b`` refer to the same file or store directory.

    Paths are resolved (symlinks, ``~``, relative paths). One location inside the
    other also counts (writing ``img.zarr`` would destroy ``img.zarr/raw``), but two
    different arrays of one store do not. In-memory arrays are never the same location.
    """
    la, lb = _location(a), _location(b)
    if la is None or lb is None or type(la) is not type(lb):  # a URL is never a local path
        return False
    if isinstance(la, str):
        return la == lb or lb.startswith(la + "/") or la.startswith(lb + "/")
    return la == lb or la in lb.parents or lb in la.parents
