"""What this process may use: memory, cores and GPU memory, and tile sizes that fit.

Every figure is the budget *of this process*, not of the node: a container's
or a SLURM job's cgroup, SLURM's allocation variables and the CPU affinity
mask all shrink it. Each reader takes ``env`` (default ``os.environ``) and
``cgroup_root`` so tests and users can point them at fakes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..grid import normalize_per_axis

logger = logging.getLogger("patchworks")

CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"  # names this process's own cgroup
_V1_UNLIMITED = 1 << 60  # cgroup v1 reports ~2**63 (rounded to a page) when no limit is set
_GPU_EXTRA = 'pip install "patchworks[gpu]"'
_DEFAULT_MEMORY_FACTOR = 8


# ----------------------------------------------------------------- helpers

def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _own_cgroup_dirs(root: Path, controller: str | None) -> list[Path]:
    """Directories to inspect, from this process's own cgroup up to ``root`` (deepest first).

    ``/proc/self/cgroup`` names the process's cgroup (``0::/path`` for v2,
    ``N:memory:/path`` for v1). Inside a container with a cgroup namespace it
    is ``/`` and only ``root`` is read; on a SLURM node it is the job's step.
    Directories that do not exist under ``root`` are skipped.
    """
    rel = "/"
    text = _read(Path(_PROC_CGROUP)) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if (controller is None and parts[0] == "0" and parts[1] == "") or \
                (controller is not None and controller in parts[1].split(",")):
            rel = parts[2]
            break
    dirs, current = [], root / rel.strip("/") if rel.strip("/") else root
    while True:
        if current.is_dir():
            dirs.append(current)
        if current == root or root not in current.parents:
            break
        current = current.parent
    if root not in dirs and root.is_dir():
        dirs.append(root)
    return dirs


def _slurm_cpus(env) -> int | None:
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = _int_or_none(env.get(name))
        if value is not None and value > 0:
            return value
    return None


# ----------------------------------------------------------------- memory

def _cgroup_memory(cgroup_root) -> tuple[int | None, str | None]:
    """Memory left under the tightest cgroup limit (v2, else v1), and where it came from."""
    root = Path(cgroup_root)
    best, note = None, None
    for d in _own_cgroup_dirs(root, None):  # v2: memory.max, "max" = no limit
        limit_text = _read(d / "memory.max")
        if limit_text is None or limit_text == "max":
            continue
        limit = _int_or_none(limit_text)
        if limit is None:
            continue
        left = max(0, limit - (_int_or_none(_read(d / "memory.current")) or 0))
        if best is None or left < best:
            best, note = left, f"cgroup v2 {d / 'memory.max'}"
    if best is not None:
        return best, note
    for base in (root / "memory",):  # v1: memory/memory.limit_in_bytes, huge = no limit
        if not base.is_dir():
            continue
        for d in _own_cgroup_dirs(base, "memory"):
            limit = _int_or_none(_read(d / "memory.limit_in_bytes"))
            if limit is None or limit >= _V1_UNLIMITED:
                continue
            left = max(0, limit - (_int_or_none(_read(d / "memory.usage_in_bytes")) or 0))
            if best is None or left < best:
                best, note = left, f"cgroup v1 {d / 'memory.limit_in_bytes'}"
    return best, note


def _slurm_memory(env) -> tuple[int | None, str | None]:
    per_node = _int_or_none(env.get("SLURM_MEM_PER_NODE"))
    if per_node:  # 0 means "all the node's memory": no extra limit
        return per_node * 2**20, f"SLURM_MEM_PER_NODE={per_node}"
    per_cpu = _int_or_none(env.get("SLURM_MEM_PER_CPU"))
    cpus = _slurm_cpus(env)
    if per_cpu and cpus:
        return per_cpu * cpus * 2**20, f"SLURM_MEM_PER_CPU={per_cpu} x {cpus} cpus"
    return None, None


def _memory_sources(env, cgroup_root, system_memory) -> list[tuple[int, str]]:
    if system_memory is None:
        import psutil
        system_memory = psutil.virtual_memory().available
    sources = [(int(system_memory), "available RAM (psutil)")]
    for value, note in (_cgroup_memory(cgroup_root), _slurm_memory(env)):
        if value is not None:
            sources.append((int(value), note))
    return sources


def available_memory(*, env=None, cgroup_root=CGROUP_ROOT, system_memory=None) -> int:
    """Bytes of memory this process may still use.

    The smallest of: the RAM psutil reports as available; what is left under
    the process's cgroup limit (v2 ``memory.max`` − ``memory.current``, where
    ``max`` means no limit; or v1 ``memory.limit_in_bytes`` −
    ``memory.usage_in_bytes``, where a huge value means no limit); and the
    SLURM allocation (``SLURM_MEM_PER_NODE`` MB, or ``SLURM_MEM_PER_CPU`` MB ×
    ``SLURM_CPUS_PER_TASK`` / ``SLURM_CPUS_ON_NODE``).

    Parameters
    ----------
    env : mapping, optional
        Environment to read SLURM variables from; default ``os.environ``.
    cgroup_root : str or Path, optional
        Where the cgroup file system is mounted.
    system_memory : int, optional
        Available RAM in bytes instead of asking psutil (for tests).

    Returns
    -------
    int

    Examples
    --------
    >>> available_memory(env={"SLURM_MEM_PER_NODE": "1024"}, cgroup_root="/nonexistent",
    ...                  system_memory=8 * 2**30) == 2**30
    True
    """
    env = os.environ if env is None else env
    value, note = min(_memory_sources(env, cgroup_root, system_memory))
    return value


# ----------------------------------------------------------------- cores

def _cgroup_cpus(cgroup_root) -> tuple[int | None, str | None]:
    """Whole cores allowed by the CFS quota (v2 ``cpu.max``, v1 ``cfs_quota_us``/``cfs_period_us``)."""
    root = Path(cgroup_root)
    best, note = None, None
    for d in _own_cgroup_dirs(root, None):
        parts = (_read(d / "cpu.max") or "").split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = _int_or_none(parts[0]), _int_or_none(parts[1])
            if quota and period and quota > 0 and period > 0:
                cpus = max(1, quota // period)
                if best is None or cpus < best:
                    best, note = cpus, f"cgroup v2 {d / 'cpu.max'}"
    if best is not None:
        return best, note
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        if not base.is_dir():
            continue
        for d in _own_cgroup_dirs(base, "cpu"):
            quota = _int_or_none(_read(d / "cpu.cfs_quota_us"))
            period = _int_or_none(_read(d / "cpu.cfs_period_us"))
            if quota and period and quota > 0 and period > 0:
                cpus = max(1, quota // period)
                if best is None or cpus < best:
                    best, note = cpus, f"cgroup v1 {d / 'cpu.cfs_quota_us'}"
        break
    return best, note


def _core_sources(env, cgroup_root, affinity) -> list[tuple[int, str]]:
    slurm = _int_or_none(env.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None and slurm > 0:
        sources = [(slurm, f"SLURM_CPUS_PER_TASK={slurm}")]
    else:
        if affinity is None:
            try:
                affinity = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):  # macOS, Windows
                affinity = os.cpu_count() or 1
        sources = [(int(affinity), "CPU affinity mask")]
    value, note = _cgroup_cpus(cgroup_root)
    if value is not None:
        sources.append((value, note))
    return sources


def available_cores(*, env=None, cgroup_root=CGROUP_ROOT, affinity=None) -> int:
    """Number of CPU cores this process may use (at least 1).

    ``SLURM_CPUS_PER_TASK`` when set, else the CPU affinity mask
    (``os.sched_getaffinity(0)``), capped by the cgroup CPU quota (v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) rounded down
    to whole cores: a 1.5-core quota gives 1, so workers are not throttled.

    Parameters
    ----------
    env : mapping, optional
        Environment to read SLURM variables from; default ``os.environ``.
    cgroup_root : str or Path, optional
        Where the cgroup file system is mounted.
    affinity : int, optional
        Number of CPUs in the affinity mask instead of asking the OS (tests).

    Examples
    --------
    >>> available_cores(env={"SLURM_CPUS_PER_TASK": "4"}, cgroup_root="/nonexistent")
    4
    """
    env = os.environ if env is None else env
    return max(1, min(_core_sources(env, cgroup_root, affinity))[0])


# ----------------------------------------------------------------- GPUs

def _import_nvml():
    try:
        import pynvml
    except ImportError as exc:
        raise ImportError(
            f"use_gpu=True needs nvidia-ml-py to read the GPU's memory; install it with {_GPU_EXTRA}") from exc
    return pynvml


def _nvml_init(pynvml):
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        raise RuntimeError(
            f"could not initialise NVML, the NVIDIA driver's management library ({exc}); "
            "check that `nvidia-smi` works on this machine, or run with use_gpu=False") from exc


def _parse_visible(text: str) -> list[str]:
    """CUDA's reading of ``CUDA_VISIBLE_DEVICES``: the list stops at the first invalid entry."""
    out = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def visible_gpus(*, env=None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    When ``CUDA_VISIBLE_DEVICES`` is set, its entries (indices such as
    ``"1"``, GPU UUIDs ``"GPU-…"`` or MIG UUIDs ``"MIG-…"``) are returned as
    they are, stopping at the first invalid one like CUDA does (``""`` or
    ``"-1"`` hide every GPU). Otherwise every device NVML sees, by index.

    Examples
    --------
    >>> visible_gpus(env={"CUDA_VISIBLE_DEVICES": "1,0"})
    ['1', '0']
    >>> visible_gpus(env={"CUDA_VISIBLE_DEVICES": "-1"})
    []
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return _parse_visible(env["CUDA_VISIBLE_DEVICES"])
    pynvml = _import_nvml()
    _nvml_init(pynvml)
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml, entry: str):
    """NVML handle of one ``CUDA_VISIBLE_DEVICES`` entry."""
    if entry.startswith("MIG-GPU-") and entry.count("/") == 2:
        # old MIG syntax MIG-GPU-<parent uuid>/<gpu instance>/<compute instance>
        parent_uuid, gi, ci = entry[len("MIG-"):].split("/")
        parent = pynvml.nvmlDeviceGetHandleByUUID(parent_uuid)
        for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i)
            except pynvml.NVMLError:
                continue
            if (pynvml.nvmlDeviceGetGpuInstanceId(mig) == int(gi)
                    and pynvml.nvmlDeviceGetComputeInstanceId(mig) == int(ci)):
                return mig
        raise RuntimeError(f"CUDA_VISIBLE_DEVICES entry {entry!r}: no such MIG instance on {parent_uuid}")
    if entry.startswith(("GPU-", "MIG-")):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(entry)
        except pynvml.NVMLError:
            # CUDA accepts a unique UUID prefix; NVML wants the whole UUID
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                if uuid.startswith(entry):
                    return handle
            raise RuntimeError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU NVML knows; "
                "list the GPUs with `nvidia-smi -L`") from None
    try:
        index = int(entry)
    except ValueError:
        raise RuntimeError(
            f"CUDA_VISIBLE_DEVICES entry {entry!r} is neither an index nor a GPU-/MIG- UUID") from None
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def gpu_free_memory(device: str | int | None = None, *, env=None) -> int:
    """Free memory in bytes of one GPU: ``device``, else the first visible one.

    ``device`` is a ``CUDA_VISIBLE_DEVICES`` entry: an index (NVML order,
    i.e. PCI bus order, as CUDA uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), a
    GPU UUID, or a MIG UUID (``MIG-<uuid>`` or ``MIG-GPU-<uuid>/<gi>/<ci>``).
    Needs nvidia-ml-py (``pip install "patchworks[gpu]"``).

    Raises
    ------
    ImportError
        nvidia-ml-py is not installed.
    RuntimeError
        No GPU is visible, or NVML cannot be initialised.
    """
    env = os.environ if env is None else env
    pynvml = _import_nvml()
    if device is None:
        if "CUDA_VISIBLE_DEVICES" in env:
            visible = _parse_visible(env["CUDA_VISIBLE_DEVICES"])
            if not visible:
                raise RuntimeError(
                    f"use_gpu=True but CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} hides every GPU; "
                    "unset it or list a device, e.g. CUDA_VISIBLE_DEVICES=0")
            device = visible[0]
        else:
            device = "0"
    _nvml_init(pynvml)
    try:
        if device == "0" and "CUDA_VISIBLE_DEVICES" not in env and pynvml.nvmlDeviceGetCount() == 0:
            raise RuntimeError("use_gpu=True but NVML sees no GPU on this machine; run with use_gpu=False")
        handle = _nvml_handle(pynvml, str(device))
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
    finally:
        pynvml.nvmlShutdown()


# ----------------------------------------------------------------- budget

@dataclass(frozen=True)
class ResourceBudget:
    """What this process may use.

    Attributes
    ----------
    memory_bytes : int
        Host memory available to this process (all its workers together).
    cores : int
        CPU cores available to this process.
    gpu_memory_bytes : int or None
        Free memory of the first visible GPU, or None when not asked for.
    notes : tuple of str
        Where each figure came from, for logs.

    Examples
    --------
    >>> b = ResourceBudget(memory_bytes=8 * 2**30, cores=4)
    >>> b.memory_per_worker() == 2 * 2**30
    True
    """

    memory_bytes: int
    cores: int
    gpu_memory_bytes: int | None = None
    notes: tuple = field(default=(), compare=False)

    def memory_per_worker(self, n_workers: int | None = None) -> int:
        """Host memory for one of ``n_workers`` workers (default one per core)."""
        n = self.cores if n_workers is None else int(n_workers)
        if n < 1:
            raise ValueError(f"n_workers={n_workers!r}: use a positive int")
        return self.memory_bytes // n


def resource_budget(*, use_gpu=False, env=None, cgroup_root=CGROUP_ROOT, system_memory=None,
                    affinity=None) -> ResourceBudget:
    """Memory, cores and (with ``use_gpu``) free GPU memory available to this process.

    See :func:`available_memory`, :func:`available_cores` and
    :func:`gpu_free_memory` for the rules; the other parameters are theirs.

    Examples
    --------
    >>> b = resource_budget(env={"SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_CPU": "512"},
    ...                     cgroup_root="/nonexistent", system_memory=2**40)
    >>> b.cores, b.memory_bytes == 2**30
    (2, True)
    """
    env = os.environ if env is None else env
    memory, mem_note = min(_memory_sources(env, cgroup_root, system_memory))
    cores, core_note = min(_core_sources(env, cgroup_root, affinity))
    notes = [f"memory {memory / 2**30:.2f} GiB from {mem_note}", f"cores {cores} from {core_note}"]
    gpu = None
    if use_gpu:
        gpu = gpu_free_memory(env=env)
        notes.append(f"GPU memory {gpu / 2**30:.2f} GiB free (NVML)")
    budget = ResourceBudget(memory_bytes=int(memory), cores=max(1, int(cores)), gpu_memory_bytes=gpu,
                            notes=tuple(notes))
    logger.debug("resource budget: %s", "; ".join(notes))
    return budget


# ----------------------------------------------------------------- sizing

def _positive_number(value, name: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: {fix}")
    return float(value)


def _voxel_sizes(voxel_size) -> list[float]:
    if np.ndim(voxel_size) == 0:
        return [_positive_number(voxel_size, "voxel_size", "use a positive number or one per spatial axis")]
    sizes = [_positive_number(v, "voxel_size", "use positive numbers, one per spatial axis") for v in voxel_size]
    if not sizes:
        raise ValueError(f"voxel_size={voxel_size!r}: give one positive size per spatial axis")
    return sizes


def _halo(value: float) -> int:
    # a halo too thin lets objects escape both tiles; round up, forgiving float noise (30 * 0.1 / 2)
    return max(1, math.ceil(value - 1e-9))


def auto_overlap(diameter, safety=1.0, voxel_size=None):
    """An overlap of about one object diameter, in voxels (upstream patchworks' rule).

    Objects up to ``diameter`` across that a seam cuts are then seen whole by
    one of the two tiles, which is what ``stitch="iou"`` needs.

    Parameters
    ----------
    diameter : float
        Typical object diameter in **lateral pixels** (along the last axis,
        x), as Cellpose's ``diameter`` is given.
    safety : float, default 1.0
        Multiplier on the diameter: 1.5-2 for elongated or irregular cells.
    voxel_size : sequence of float, optional
        Physical voxel size per spatial axis (any unit), e.g. ``(2.0, 0.1,
        0.1)`` for z sampled 20x coarser than x. Only the ratios matter: the
        halo on axis ``i`` is ``diameter * safety * voxel_size[-1] /
        voxel_size[i]`` pixels, so a z halo shrinks with the anisotropy. For a
        diameter in physical units use :func:`auto_overlap_physical`.

    Returns
    -------
    int or tuple of int
        ``ceil(diameter * safety)`` (at least 1), or one halo per axis when
        ``voxel_size`` is a sequence — ``tile_process`` accepts both.

    Examples
    --------
    >>> auto_overlap(30)
    30
    >>> auto_overlap(30, 1.5)
    45
    >>> auto_overlap(30, voxel_size=(2.0, 0.1, 0.1))  # z sampled 20x coarser than x
    (2, 30, 30)
    """
    d = _positive_number(diameter, "diameter", "give the typical object diameter in pixels as a positive number")
    k = _positive_number(safety, "safety", "give a positive multiplier of the diameter, e.g. 1.0 or 1.5")
    if voxel_size is None or np.ndim(voxel_size) == 0:
        if voxel_size is not None:
            _voxel_sizes(voxel_size)  # validated; one isotropic size changes nothing in pixels
        return _halo(d * k)
    sizes = _voxel_sizes(voxel_size)
    lateral = sizes[-1]
    return tuple(_halo(d * k * lateral / v) for v in sizes)


def auto_overlap_physical(diameter, voxel_size, *, safety=1.0):
    """An overlap of about one object diameter given in **physical units**.

    Parameters
    ----------
    diameter : float
        Typical object diameter in the unit of ``voxel_size`` (e.g. µm).
    voxel_size : float or sequence of float
        Physical size of a voxel, one per spatial axis for anisotropic data.
    safety : float, default 1.0
        Multiplier on the diameter.

    Returns
    -------
    int or tuple of int
        ``ceil(diameter * safety / voxel_size)`` per axis (at least 1): an
        int for a scalar ``voxel_size``, else one per axis.

    Examples
    --------
    >>> auto_overlap_physical(12.0, 0.5)
    24
    >>> auto_overlap_physical(10.0, (2.0, 0.5, 0.5))  # 10 µm cells, z sampled 4x coarser
    (5, 20, 20)
    """
    d = _positive_number(diameter, "diameter", "give the typical object diameter in physical units as a "
                         "positive number (for one in pixels use auto_overlap)")
    k = _positive_number(safety, "safety", "give a positive multiplier of the diameter, e.g. 1.0 or 1.5")
    if voxel_size is None:
        raise ValueError("voxel_size=None: auto_overlap_physical needs the voxel size (one per spatial axis) to "
                         "turn a physical diameter into voxels; for a diameter in pixels use auto_overlap")
    sizes = _voxel_sizes(voxel_size)
    halos = tuple(_halo(d * k / v) for v in sizes)
    return halos[0] if np.ndim(voxel_size) == 0 else halos


def _per_tile_bytes(budget, use_gpu, n_workers) -> int:
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if budget <= 0:
            raise ValueError(f"budget={budget!r}: give the bytes one tile may use as a positive int")
        return int(budget)
    if budget is None:
        budget = resource_budget(use_gpu=use_gpu)
    if not isinstance(budget, ResourceBudget):
        raise TypeError(f"budget={budget!r}: use a ResourceBudget, an int of bytes per tile, or None")
    if use_gpu:
        if budget.gpu_memory_bytes is None:
            raise ValueError("use_gpu=True but budget.gpu_memory_bytes is None; build the budget with "
                             "resource_budget(use_gpu=True)")
        return int(budget.gpu_memory_bytes)  # one worker per GPU, one tile at a time
    return budget.memory_per_worker(n_workers)


def auto_tile_shape(shape, dtype, *, memory_factor=_DEFAULT_MEMORY_FACTOR, use_gpu=False, n_channels=None,
                    overlap=0, n_workers=None, budget=None, spatial_axes=None, fixed=None, min_tile=16,
                    max_tile=None, chunks=None) -> tuple:
    """The largest, roughly cubic tile whose working set fits one worker's memory.

    A tile's *window* is the tile plus ``overlap`` on each side (clipped to
    the image). The tile function is assumed to hold ``memory_factor``
    copies of the window at ``max(itemsize, 4)`` bytes per voxel (most tile
    functions compute in float32 and label in uint32), times the channels.
    The tile is the largest with
    ``window voxels × max(itemsize, 4) × n_channels × memory_factor <= per-tile budget``,
    then evened out so the tiles along each axis have equal sizes.

    Parameters
    ----------
    shape : tuple of int
        Shape of the image.
    dtype : dtype-like
        Dtype of the image.
    memory_factor : float, default 8
        Copies of the window the tile function needs at once: the input, a
        float32 intermediate or two, a label image, staging. Raise it for
        memory-hungry models (a U-Net holds many feature maps).
    use_gpu : bool, default False
        Size against the free memory of the first visible GPU (one tile at a
        time per GPU) instead of host memory per worker.
    n_channels : int, optional
        Values per voxel; default the product of the non-spatial axes'
        lengths (channels are carried whole).
    overlap : int, tuple or dict, default 0
        Halo per spatial axis, as ``tile_process`` takes it.
    n_workers : int, optional
        Tiles processed at once; default one per available core.
    budget : ResourceBudget or int, optional
        The process's budget (divided by ``n_workers``), or an int: bytes one
        tile may use. Default: :func:`resource_budget` of this process.
    spatial_axes : sequence of int, optional
        Positions in ``shape`` of the axes that are tiled; default all.
    fixed : dict, optional
        ``{spatial axis: size}`` for axes whose tile size the caller fixes,
        e.g. ``{0: 1}`` for one z plane per tile (a 1-thick axis has no halo).
    min_tile : int, default 16
        Smallest side considered (clipped to the image); a budget that cannot
        hold it is an error.
    max_tile : int or tuple, optional
        Largest side per axis, e.g. to keep more tiles than workers.
    chunks : int or tuple, optional
        Chunk shape of the input per spatial axis (zarr or dask chunks):
        each tile side is then a multiple of its chunk (rounded down, at
        least one chunk), so that no tile reads a chunk it only partly needs.
        A single chunk larger than the budget is used whole, with a warning.

    Returns
    -------
    tuple of int
        One tile size per spatial axis, never larger than the image.

    Examples
    --------
    >>> auto_tile_shape((1000, 1000), "float32", budget=32 * 2**20)   # 32 MiB per tile
    (1000, 1000)
    >>> auto_tile_shape((1000, 1000), "float32", budget=8 * 2**20, overlap=8)
    (334, 334)
    >>> auto_tile_shape((50, 4096, 4096), "uint16", budget=2**26, fixed={0: 1})
    (1, 1366, 1366)
    >>> auto_tile_shape((50, 4096, 4096), "uint16", budget=2**26, fixed={0: 1}, chunks=(1, 512, 512))
    (1, 1024, 1024)
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape={shape!r}: every axis needs a positive length")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype={dtype!r}: use a numpy dtype such as 'uint16'") from exc
    if spatial_axes is None:
        spatial_axes = tuple(range(len(shape)))
    spatial_axes = tuple(int(a) % len(shape) for a in spatial_axes)
    if not spatial_axes or len(set(spatial_axes)) != len(spatial_axes):
        raise ValueError(f"spatial_axes={spatial_axes!r}: give distinct axis positions of shape {shape}")
    spatial = [shape[a] for a in spatial_axes]
    n = len(spatial)
    factor = _positive_number(memory_factor, "memory_factor",
                              "give how many copies of a tile's window the function holds, e.g. 8")
    if n_channels is None:
        n_channels = int(np.prod([s for i, s in enumerate(shape) if i not in spatial_axes], dtype=np.int64))
    elif isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
        raise ValueError(f"n_channels={n_channels!r}: use a positive int")
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer))
                                  or n_workers < 1):
        raise ValueError(f"n_workers={n_workers!r}: use a positive int (tiles processed at once)")
    ov = normalize_per_axis(overlap, n, "overlap", default=0)
    if any(v < 0 for v in ov):
        raise ValueError(f"overlap={overlap!r}: halos cannot be negative")
    fix = normalize_per_axis(fixed or {}, n, "fixed", default=0)
    for i, f in enumerate(fix):
        if f < 0 or f > spatial[i]:
            raise ValueError(f"fixed={fixed!r}: axis {i} size must be between 1 and the image's {spatial[i]}")
    hi = normalize_per_axis(max_tile, n, "max_tile") if max_tile is not None else (None,) * n
    if any(h is not None and h < 1 for h in hi):
        raise ValueError(f"max_tile={max_tile!r}: use positive sizes")
    if isinstance(min_tile, bool) or not isinstance(min_tile, (int, np.integer)) or min_tile < 1:
        raise ValueError(f"min_tile={min_tile!r}: use a positive int")

    per_tile = _per_tile_bytes(budget, use_gpu, n_workers)
    bytes_per_voxel = max(dtype.itemsize, 4) * n_channels * factor

    def tile_for(side):
        return tuple(fix[i] if fix[i] else min(side, spatial[i], hi[i] or spatial[i]) for i in range(n))

    def cost(tile):
        window = [t if t == 1 and fix[i] == 1 else min(t + 2 * ov[i], spatial[i]) for i, t in enumerate(tile)]
        return float(np.prod(window, dtype=np.float64)) * bytes_per_voxel

    # smallest acceptable side: min_tile, and more than the halo (unless the axis is whole)
    lo = max([min_tile] + [ov[i] + 1 for i in range(n) if not fix[i]])
    top = max(spatial)
    if cost(tile_for(lo)) > per_tile:
        raise ValueError(
            f"auto tile shape: even a {tile_for(lo)} tile (overlap {ov}) needs about "
            f"{cost(tile_for(lo)) / 2**20:.1f} MiB with memory_factor={memory_factor} and {n_channels} channel(s), "
            f"but one tile may use {per_tile / 2**20:.1f} MiB; use fewer workers (n_workers), a smaller "
            "memory_factor or overlap, or pass tile_shape explicitly")
    while lo < top:  # largest side whose tile fits: cost is monotone in side
        mid = (lo + top + 1) // 2
        if cost(tile_for(mid)) <= per_tile:
            lo = mid
        else:
            top = mid - 1
    tile = tile_for(lo)
    # even out: same number of tiles per axis, equal sizes (never larger, so it still fits)
    even = [-(-s // -(-s // t)) for s, t in zip(spatial, tile)]
    tile = tuple(t if fix[i] or even[i] <= ov[i] or even[i] < min(min_tile, spatial[i]) else even[i]
                 for i, t in enumerate(tile))
    if chunks is not None:
        chunk = normalize_per_axis(chunks, n, "chunks")
        if any(c is None or c < 1 for c in chunk):
            raise ValueError(f"chunks={chunks!r}: use positive chunk sizes, one per spatial axis")
        # a whole axis reads whole chunks already; otherwise round down to whole chunks (at least one)
        tile = [t if fix[i] or t >= spatial[i] else min(spatial[i], max(1, t // chunk[i]) * chunk[i])
                for i, t in enumerate(tile)]
        # an axis rounded up to one chunk may break the budget: give back whole chunks where most are taken
        while cost(tile) > per_tile:
            shrinkable = [i for i in range(n) if not fix[i] and tile[i] > chunk[i]]
            if not shrinkable:
                break
            i = max(shrinkable, key=lambda k: tile[k] / chunk[k])
            tile[i] = (-(-tile[i] // chunk[i]) - 1) * chunk[i]
        tile = tuple(tile)
        if cost(tile) > per_tile:
            logger.warning("auto tile shape %s: one input chunk %s per tile is larger than the per-tile budget "
                           "(%.1f MiB needed, %.1f MiB available); pass tile_shape to read chunks partly",
                           tile, chunk, cost(tile) / 2**20, per_tile / 2**20)
    logger.debug("auto tile shape %s for %s %s (%.1f MiB per tile, factor %s)", tile, shape, dtype,
                 per_tile / 2**20, memory_factor)
    return tile
