"""Resource budget: faked cgroup files, SLURM variables, affinity and a faked NVML."""

import os
import sys
import types

import numpy as np
import pytest

from patchworks.run._resources import (ResourceBudget, auto_overlap, auto_overlap_physical, auto_tile_shape, available_cores,
                                   available_memory, gpu_free_memory, resource_budget, visible_gpus)

GiB = 2**30
MiB = 2**20
BIG = 64 * GiB  # "psutil" available RAM in these tests


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- memory

def test_memory_no_limits_is_system_memory(tmp_path):
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == BIG


def test_memory_cgroup_v2_limit_minus_current(tmp_path):
    write(tmp_path, "memory.max", str(4 * GiB))
    write(tmp_path, "memory.current", str(1 * GiB))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == 3 * GiB


def test_memory_cgroup_v2_max_means_no_limit(tmp_path):
    write(tmp_path, "memory.max", "max\n")
    write(tmp_path, "memory.current", str(GiB))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == BIG


def test_memory_cgroup_v1_limit_minus_usage(tmp_path):
    write(tmp_path, "memory/memory.limit_in_bytes", str(2 * GiB))
    write(tmp_path, "memory/memory.usage_in_bytes", str(GiB // 2))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == GiB + GiB // 2


def test_memory_cgroup_v1_huge_means_no_limit(tmp_path):
    write(tmp_path, "memory/memory.limit_in_bytes", "9223372036854771712")
    write(tmp_path, "memory/memory.usage_in_bytes", str(GiB))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == BIG


def test_memory_cgroup_never_negative(tmp_path):
    write(tmp_path, "memory.max", str(GiB))
    write(tmp_path, "memory.current", str(2 * GiB))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=BIG) == 0


def test_memory_system_smaller_than_cgroup(tmp_path):
    write(tmp_path, "memory.max", str(32 * GiB))
    assert available_memory(env={}, cgroup_root=tmp_path, system_memory=GiB) == GiB


def test_memory_slurm_per_node(tmp_path):
    env = {"SLURM_MEM_PER_NODE": "2048"}
    assert available_memory(env=env, cgroup_root=tmp_path, system_memory=BIG) == 2 * GiB


def test_memory_slurm_per_node_zero_means_whole_node(tmp_path):
    assert available_memory(env={"SLURM_MEM_PER_NODE": "0"}, cgroup_root=tmp_path, system_memory=BIG) == BIG


@pytest.mark.parametrize("cpu_var", ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"])
def test_memory_slurm_per_cpu_times_cpus(tmp_path, cpu_var):
    env = {"SLURM_MEM_PER_CPU": "1000", cpu_var: "3"}
    assert available_memory(env=env, cgroup_root=tmp_path, system_memory=BIG) == 3000 * MiB


def test_memory_smallest_of_slurm_and_cgroup(tmp_path):
    write(tmp_path, "memory.max", str(GiB))
    env = {"SLURM_MEM_PER_NODE": "4096"}
    assert available_memory(env=env, cgroup_root=tmp_path, system_memory=BIG) == GiB


def test_memory_garbage_files_and_vars_are_ignored(tmp_path):
    write(tmp_path, "memory.max", "banana")
    env = {"SLURM_MEM_PER_NODE": "lots"}
    assert available_memory(env=env, cgroup_root=tmp_path, system_memory=BIG) == BIG


def test_cgroup_walks_from_own_cgroup_up_to_root(tmp_path, monkeypatch):
    """A SLURM job step's cgroup is nested: the tightest level along the path wins."""
    import patchworks.run._resources as pr
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/slurm/job_7\n2:cpu,cpuacct:/slurm/job_7\n0::/slurm/job_7/step_0\n")
    monkeypatch.setattr(pr, "_PROC_CGROUP", str(proc))
    v2 = tmp_path / "v2"
    write(v2, "slurm/memory.max", str(8 * GiB))
    write(v2, "slurm/job_7/memory.max", str(3 * GiB))
    write(v2, "slurm/job_7/memory.current", str(GiB))
    write(v2, "slurm/job_7/step_0/memory.max", "max")
    write(v2, "slurm/job_7/cpu.max", "400000 100000")
    write(v2, "unrelated/memory.max", "1")
    assert available_memory(env={}, cgroup_root=v2, system_memory=BIG) == 2 * GiB
    assert available_cores(env={}, cgroup_root=v2, affinity=32) == 4
    v1 = tmp_path / "v1"
    write(v1, "memory/slurm/job_7/memory.limit_in_bytes", str(5 * GiB))
    write(v1, "memory/slurm/job_7/memory.usage_in_bytes", "0")
    write(v1, "cpu,cpuacct/slurm/job_7/cpu.cfs_quota_us", "600000")
    write(v1, "cpu,cpuacct/slurm/job_7/cpu.cfs_period_us", "100000")
    assert available_memory(env={}, cgroup_root=v1, system_memory=BIG) == 5 * GiB
    assert available_cores(env={}, cgroup_root=v1, affinity=32) == 6


def test_memory_default_env_uses_psutil():
    import psutil
    value = available_memory(cgroup_root="/nonexistent", env={})
    assert 0 < value <= psutil.virtual_memory().total


# ---------------------------------------------------------------- cores

def test_cores_affinity(tmp_path):
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=12) == 12


def test_cores_real_affinity_by_default():
    import os
    assert available_cores(env={}, cgroup_root="/nonexistent") == len(os.sched_getaffinity(0))


def test_cores_slurm_cpus_per_task_wins_over_affinity(tmp_path):
    assert available_cores(env={"SLURM_CPUS_PER_TASK": "4"}, cgroup_root=tmp_path, affinity=64) == 4


def test_cores_cgroup_v2_quota(tmp_path):
    write(tmp_path, "cpu.max", "250000 100000")
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=64) == 2


def test_cores_cgroup_v2_max_means_no_quota(tmp_path):
    write(tmp_path, "cpu.max", "max 100000")
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=64) == 64


def test_cores_cgroup_v2_quota_below_one_core_gives_one(tmp_path):
    write(tmp_path, "cpu.max", "50000 100000")
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=8) == 1


def test_cores_cgroup_v1_quota(tmp_path):
    write(tmp_path, "cpu/cpu.cfs_quota_us", "300000")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=64) == 3


def test_cores_cgroup_v1_minus_one_means_no_quota(tmp_path):
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert available_cores(env={}, cgroup_root=tmp_path, affinity=6) == 6


def test_cores_quota_caps_slurm(tmp_path):
    write(tmp_path, "cpu.max", "200000 100000")
    assert available_cores(env={"SLURM_CPUS_PER_TASK": "16"}, cgroup_root=tmp_path, affinity=64) == 2


def test_resource_budget_combines_and_notes(tmp_path):
    write(tmp_path, "memory.max", str(2 * GiB))
    b = resource_budget(env={"SLURM_CPUS_PER_TASK": "4"}, cgroup_root=tmp_path, system_memory=BIG)
    assert (b.memory_bytes, b.cores, b.gpu_memory_bytes) == (2 * GiB, 4, None)
    assert any("cgroup v2" in n for n in b.notes) and any("SLURM_CPUS_PER_TASK" in n for n in b.notes)
    assert b.memory_per_worker() == GiB // 2
    assert b.memory_per_worker(2) == GiB
    with pytest.raises(ValueError, match="n_workers=0"):
        b.memory_per_worker(0)


# ---------------------------------------------------------------- GPUs (faked NVML)

class FakeNVML(types.ModuleType):
    """A stand-in for ``pynvml`` with two GPUs, one carrying two MIG instances."""

    class NVMLError(Exception):
        pass

    def __init__(self, *, fail_init=False):
        super().__init__("pynvml")
        self.calls = []
        self.fail_init = fail_init
        self.gpus = [{"uuid": "GPU-aaaa-1111", "free": 10 * GiB}, {"uuid": "GPU-bbbb-2222", "free": 20 * GiB}]
        self.migs = {1: [{"uuid": "MIG-cccc-3333", "gi": 1, "ci": 0, "free": 5 * GiB},
                         {"uuid": "MIG-dddd-4444", "gi": 2, "ci": 0, "free": 3 * GiB}]}
        self.NVMLError = FakeNVML.NVMLError

    def nvmlInit(self):
        self.calls.append(("nvmlInit",))
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.calls.append(("nvmlShutdown",))

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls.append(("byIndex", i))
        if not 0 <= i < len(self.gpus):
            raise self.NVMLError("Invalid Argument")
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.calls.append(("byUUID", uuid))
        for gpu in self.gpus + [m for ms in self.migs.values() for m in ms]:
            if gpu["uuid"] == uuid:
                return gpu
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, i):
        migs = self.migs.get(self.gpus.index(handle), [])
        if i >= len(migs):
            raise self.NVMLError("Not Found")
        return migs[i]

    def nvmlDeviceGetGpuInstanceId(self, handle):
        return handle["gi"]

    def nvmlDeviceGetComputeInstanceId(self, handle):
        return handle["ci"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls.append(("memory", handle["uuid"]))
        return types.SimpleNamespace(free=handle["free"], total=2 * handle["free"], used=0)


@pytest.fixture
def nvml(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.mark.parametrize("visible, expected, call", [
    ("0", 10 * GiB, ("byIndex", 0)),
    ("1,0", 20 * GiB, ("byIndex", 1)),
    ("GPU-bbbb-2222,GPU-aaaa-1111", 20 * GiB, ("byUUID", "GPU-bbbb-2222")),
    ("MIG-cccc-3333", 5 * GiB, ("byUUID", "MIG-cccc-3333")),
    ("MIG-GPU-bbbb-2222/2/0", 3 * GiB, ("byUUID", "GPU-bbbb-2222")),
    ("GPU-aaaa", 10 * GiB, ("byUUID", "GPU-aaaa")),  # CUDA accepts a unique UUID prefix
])
def test_gpu_free_memory_first_visible_entry(nvml, visible, expected, call):
    assert gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": visible}) == expected
    assert call in nvml.calls
    assert nvml.calls[0] == ("nvmlInit",) and nvml.calls[-1] == ("nvmlShutdown",)


def test_gpu_free_memory_unset_means_device_zero(nvml):
    assert gpu_free_memory(env={}) == 10 * GiB
    assert ("byIndex", 0) in nvml.calls


def test_gpu_free_memory_explicit_device(nvml):
    assert gpu_free_memory("1", env={"CUDA_VISIBLE_DEVICES": "0"}) == 20 * GiB


@pytest.mark.parametrize("visible", ["", "-1", "-1,0"])
def test_gpu_none_visible(nvml, visible):
    env = {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpus(env=env) == []
    with pytest.raises(RuntimeError, match="hides every GPU"):
        gpu_free_memory(env=env)
    assert ("nvmlInit",) not in nvml.calls


def test_gpu_unknown_entries(nvml):
    with pytest.raises(RuntimeError, match="matches no GPU"):
        gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": "GPU-ffff"})
    with pytest.raises(RuntimeError, match="no such MIG instance"):
        gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": "MIG-GPU-bbbb-2222/9/0"})
    with pytest.raises(RuntimeError, match="neither an index nor"):
        gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": "first"})
    assert nvml.calls[-1] == ("nvmlShutdown",)


def test_gpu_nvml_init_failure_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(fail_init=True))
    with pytest.raises(RuntimeError, match="could not initialise NVML.*nvidia-smi.*use_gpu=False"):
        gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(RuntimeError, match="could not initialise NVML"):
        visible_gpus(env={})


def test_gpu_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "patchworks\[gpu\]"'):
        gpu_free_memory(env={"CUDA_VISIBLE_DEVICES": "0"})


def test_visible_gpus(nvml):
    assert visible_gpus(env={"CUDA_VISIBLE_DEVICES": "GPU-a, MIG-b"}) == ["GPU-a", "MIG-b"]
    assert visible_gpus(env={}) == ["0", "1"]


def test_resource_budget_with_gpu(nvml, tmp_path):
    b = resource_budget(use_gpu=True, env={"CUDA_VISIBLE_DEVICES": "1"}, cgroup_root=tmp_path,
                        system_memory=BIG, affinity=4)
    assert b.gpu_memory_bytes == 20 * GiB and any("GPU" in n for n in b.notes)


# ---------------------------------------------------------------- auto_tile_shape

def window_bytes(tile, overlap, shape, itemsize=4, factor=8, channels=1):
    window = [min(t + 2 * overlap, s) for t, s in zip(tile, shape)]
    return int(np.prod(window)) * max(itemsize, 4) * factor * channels


@pytest.mark.parametrize("shape, dtype, budget, overlap", [
    ((2000, 2000, 2000), "float32", 256 * MiB, 0),
    ((2000, 2000, 2000), "uint8", 64 * MiB, 16),
    ((100, 5000, 5000), "uint16", 512 * MiB, 8),
    ((30, 30, 3000), "float64", 16 * MiB, 4),
])
def test_auto_tile_fits_budget_and_is_largest(shape, dtype, budget, overlap):
    tile = auto_tile_shape(shape, dtype, budget=budget, overlap=overlap)
    itemsize = np.dtype(dtype).itemsize
    assert len(tile) == len(shape)
    assert all(1 <= t <= s for t, s in zip(tile, shape))
    assert window_bytes(tile, overlap, shape, itemsize) <= budget
    # roughly isotropic among axes the image does not clip
    free = [t for t, s in zip(tile, shape) if t < s]
    if free:
        assert max(free) - min(free) <= 1
    # tiles are evened out: equal sizes along each axis but maybe the last
    for t, s in zip(tile, shape):
        n = -(-s // t)
        assert s - (n - 1) * t > 0
    # and not much smaller than the largest side that would fit (evening out can shrink by < 2x)
    bigger = tuple(min(2 * t, s) for t, s in zip(tile, shape))
    if bigger != tuple(shape):
        assert window_bytes(bigger, overlap, shape, itemsize) > budget


def test_auto_tile_whole_image_when_it_fits():
    assert auto_tile_shape((64, 64, 64), "uint8", budget=GiB) == (64, 64, 64)


def test_auto_tile_is_deterministic_and_monotone_in_budget():
    a = auto_tile_shape((512, 512, 512), "float32", budget=64 * MiB)
    assert a == auto_tile_shape((512, 512, 512), "float32", budget=64 * MiB)
    b = auto_tile_shape((512, 512, 512), "float32", budget=512 * MiB)
    assert np.prod(b) >= np.prod(a)


def test_auto_tile_fixed_axis_stays_thin():
    tile = auto_tile_shape((40, 3000, 3000), "float32", budget=64 * MiB, fixed={0: 1}, overlap=10)
    assert tile == (1, 1000, 1000)
    # a 1-thick axis gets no halo
    assert 1 * (tile[1] + 20) * (tile[2] + 20) * 4 * 8 <= 64 * MiB


def test_auto_tile_channels_and_spatial_axes():
    # (c, y, x) with 3 channels carried whole: a third of the voxels of the 1-channel tile
    one = auto_tile_shape((4000, 4000), "float32", budget=48 * MiB)
    three = auto_tile_shape((3, 4000, 4000), "float32", budget=48 * MiB, spatial_axes=(1, 2))
    assert len(three) == 2 and np.prod(three) < np.prod(one)
    assert three == auto_tile_shape((4000, 4000), "float32", budget=48 * MiB, n_channels=3)


def test_auto_tile_memory_factor_and_max_tile():
    big = auto_tile_shape((4000, 4000), "float32", budget=64 * MiB, memory_factor=1)
    small = auto_tile_shape((4000, 4000), "float32", budget=64 * MiB, memory_factor=16)
    assert np.prod(big) > np.prod(small)
    assert all(t <= 300 for t in auto_tile_shape((4000, 4000), "float32", budget=64 * MiB, max_tile=300))


def test_auto_tile_from_resource_budget_splits_over_workers():
    budget = ResourceBudget(memory_bytes=8 * 256 * MiB, cores=8)
    per_worker = auto_tile_shape((4000, 4000, 4000), "float32", budget=256 * MiB)
    assert auto_tile_shape((4000, 4000, 4000), "float32", budget=budget) == per_worker
    assert np.prod(auto_tile_shape((4000, 4000, 4000), "float32", budget=budget, n_workers=2)) > np.prod(per_worker)


def test_auto_tile_gpu_uses_vram(nvml):
    budget = ResourceBudget(memory_bytes=GiB, cores=64, gpu_memory_bytes=512 * MiB)
    gpu = auto_tile_shape((4000, 4000, 4000), "float32", budget=budget, use_gpu=True)
    assert gpu == auto_tile_shape((4000, 4000, 4000), "float32", budget=512 * MiB)
    with pytest.raises(ValueError, match="gpu_memory_bytes is None"):
        auto_tile_shape((100, 100), "float32", budget=ResourceBudget(GiB, 4), use_gpu=True)


def test_auto_tile_default_budget_is_this_process():
    tile = auto_tile_shape((100, 100), "uint8", min_tile=1)
    assert all(1 <= t <= 100 for t in tile)


def test_auto_tile_tile_exceeds_overlap():
    tile = auto_tile_shape((1000, 1000), "float32", budget=2 * MiB, overlap=40)
    assert all(t > 40 for t in tile)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(0, 10)), r"shape=\(0, 10\)"),
    (dict(dtype="nonsense"), "dtype='nonsense'"),
    (dict(memory_factor=0), "memory_factor=0"),
    (dict(memory_factor=float("nan")), "memory_factor=nan"),
    (dict(n_channels=0), "n_channels=0"),
    (dict(n_workers=0), "n_workers=0"),
    (dict(overlap=-1), "overlap=-1"),
    (dict(overlap=(1, 2, 3)), "overlap=.*3 entries"),
    (dict(fixed={0: 5000}), "fixed="),
    (dict(max_tile=0), "max_tile=0"),
    (dict(min_tile=0), "min_tile=0"),
    (dict(budget=-5), "budget=-5"),
    (dict(budget="1GB"), "budget='1GB'"),
    (dict(budget=1024), "even a .* tile .*n_workers.*tile_shape explicitly"),
])
def test_auto_tile_errors(kwargs, match):
    args = dict(shape=(1000, 1000), dtype="float32", budget=64 * MiB)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        auto_tile_shape(args.pop("shape"), args.pop("dtype"), **args)


# ---------------------------------------------------------------- auto_overlap

def test_auto_overlap_has_upstreams_meaning():
    # upstream patchworks: diameter in lateral pixels, times safety; z scaled by the anisotropy
    assert auto_overlap(30) == 30
    assert auto_overlap(30, 1.5) == 45
    assert auto_overlap(30, safety=2.0) == 60
    assert auto_overlap(30, voxel_size=(2.0, 0.1, 0.1)) == (2, 30, 30)   # 1.5 planes round up
    assert auto_overlap(17.2) == 18
    assert auto_overlap(0.2) == 1
    assert auto_overlap(20, voxel_size=(1.0, 1.0)) == (20, 20)
    assert auto_overlap(20, voxel_size=0.3) == 20          # isotropic: pixels stay pixels
    assert auto_overlap(10, 1.5, (0.5, 0.25, 0.25)) == (8, 15, 15)    # 7.5 rounds up
    # against a direct computation of the rule, for many anisotropies
    rng = np.random.default_rng(0)
    for _ in range(50):
        d, k = rng.uniform(1, 60), rng.uniform(0.5, 3)
        vs = tuple(float(v) for v in rng.uniform(0.05, 5, size=3))
        want = tuple(max(1, int(np.ceil(d * k * vs[-1] / v - 1e-9))) for v in vs)
        assert auto_overlap(d, k, voxel_size=vs) == want


def test_auto_overlap_physical_keeps_the_physical_units_form():
    assert auto_overlap_physical(12.0, 0.5) == 24
    assert auto_overlap_physical(10.0, (2.0, 0.5, 0.5)) == (5, 20, 20)
    assert auto_overlap_physical(10.0, voxel_size=(3.0, 0.1)) == (4, 100)
    assert auto_overlap_physical(1.0, [0.3, 0.3]) == (4, 4)  # 3.33 rounds up
    assert auto_overlap_physical(10.0, (2.0, 0.5, 0.5), safety=1.5) == (8, 30, 30)
    with pytest.raises(ValueError, match="voxel_size=None: auto_overlap_physical needs the voxel size"):
        auto_overlap_physical(10.0, None)


@pytest.mark.parametrize("diameter, voxel_size, match", [
    (0, None, "diameter=0"),
    (-3, None, "diameter=-3"),
    ("10", None, "diameter='10'"),
    (float("inf"), None, "diameter=inf"),
    (10, 0, "voxel_size=0"),
    (10, (1.0, -1.0), "voxel_size=-1.0"),
    (10, (), r"voxel_size=\(\)"),
])
def test_auto_overlap_errors(diameter, voxel_size, match):
    with pytest.raises(ValueError, match=match):
        auto_overlap(diameter, voxel_size=voxel_size)
    if voxel_size is not None:
        with pytest.raises(ValueError, match=match):
            auto_overlap_physical(diameter, voxel_size)


def test_auto_overlap_safety_errors():
    with pytest.raises(ValueError, match=r"safety=0: give a positive multiplier"):
        auto_overlap(30, 0)
    with pytest.raises(ValueError, match=r"safety=True"):
        auto_overlap(30, True)


def test_auto_tile_shape_takes_whole_input_chunks(caplog):
    free = auto_tile_shape((1000, 1000), "float32", budget=8 * MiB, overlap=8)
    assert free == (334, 334)
    assert auto_tile_shape((1000, 1000), "float32", budget=8 * MiB, overlap=8, chunks=(100, 64)) == (300, 320)
    assert auto_tile_shape((1000, 1000), "float32", budget=64 * MiB, chunks=128) == (1000, 1000)  # whole image
    with caplog.at_level("WARNING", logger="patchworks"):
        assert auto_tile_shape((1000, 1000), "float32", budget=8 * MiB, overlap=8, chunks=500) == (500, 500)
    assert "one input chunk (500, 500) per tile is larger than the per-tile budget" in caplog.text
    # an axis rounded up to one chunk is paid for with whole chunks of the axis that has most
    assert auto_tile_shape((48, 384, 384), "uint8", budget=4 * MiB) == (48, 48, 48)
    assert auto_tile_shape((48, 384, 384), "uint8", budget=4 * MiB, chunks=(16, 64, 64)) == (32, 64, 64)
    with pytest.raises(ValueError, match=r"chunks=\(0, 4\): use positive chunk sizes"):
        auto_tile_shape((1000, 1000), "float32", budget=8 * MiB, chunks=(0, 4))


@pytest.mark.parametrize("env, expected", [({}, True), ({"MALLOC_TOP_PAD_": "131072"}, False),
                                           ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False),
                                           ({"PATCHWORKS_MALLOC": "0"}, False)])
def test_malloc_thresholds_set_once_unless_the_user_tuned_malloc(env, expected):
    # a fresh process each: the setting is once per process. On glibc the thresholds are set
    # (mallopt reports success) unless the user's own MALLOC_*_ tuning or PATCHWORKS_MALLOC=0 says no
    import platform
    import subprocess

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip(f"malloc thresholds are set on Linux with glibc only; this is {platform.system()} with "
                    f"{platform.libc_ver()[0] or 'another C library'}, where patchworks leaves malloc alone")
    code = ("from patchworks.run._heap import settle_malloc; "
            "print(settle_malloc(), settle_malloc())")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "PATCHWORKS_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(expected)] * 2
