"""patchworks: run any function on an N-D image too large for memory, tile by tile.

The public API is flat: everything a user needs is importable from here.
"""

from .grid import Tile, TileGrid, normalize_per_axis
from .io._sources import LazySource, create_output, open_image
from .labels._empty import estimate_empty_tiles
from .labels._process import merge_tile_labels, tile_process
from .labels._measure import measure
from .io._table_store import read_table, write_table_file
from .segment._threshold import label_components, otsu, otsu_threshold, threshold
from .segment._instances import LogBlobs, Watershed, log_blobs, watershed
from .labels._seam_report import SeamReport, seam_report
from .dense._tile_map import tile_blend, tile_map
from .run._windows import make_window, window_for_region
from .grid import PatchSpec
from .patches._grid_sampler import Aggregator, GridSampler
from .patches._samplers import (FixedRandomSampler, FixedSampler, LabelSampler, SequentialSampler, StratifiedSampler,
                        UniformSampler, WeightedSampler, WholeSampler)
from .patches._torch import PatchDataset
from .run._resources import (ResourceBudget, auto_overlap, auto_overlap_physical, auto_tile_shape, available_cores, available_memory,
                         gpu_free_memory, resource_budget, visible_gpus)
from .run._cluster import check_client, gpu_devices, make_local_cluster, slurm_cluster
from .run._plan import RunPlan

__version__ = "0.1.0.dev0"

__all__ = [
    "ResourceBudget",
    "auto_overlap",
    "auto_overlap_physical",
    "auto_tile_shape",
    "available_cores",
    "available_memory",
    "check_client",
    "gpu_devices",
    "RunPlan",
    "gpu_free_memory",
    "make_local_cluster",
    "resource_budget",
    "slurm_cluster",
    "visible_gpus",
    "Aggregator",
    "FixedRandomSampler",
    "FixedSampler",
    "GridSampler",
    "LabelSampler",
    "PatchDataset",
    "PatchSpec",
    "SequentialSampler",
    "StratifiedSampler",
    "UniformSampler",
    "WeightedSampler",
    "WholeSampler",
    "tile_blend",
    "tile_map",
    "make_window",
    "window_for_region",
    "LazySource",
    "Tile",
    "TileGrid",
    "create_output",
    "estimate_empty_tiles",
    "label_components",
    "log_blobs",
    "seam_report",
    "SeamReport",
    "LogBlobs",
    "watershed",
    "Watershed",
    "measure",
    "merge_tile_labels",
    "read_table",
    "write_table_file",
    "normalize_per_axis",
    "open_image",
    "otsu",
    "otsu_threshold",
    "threshold",
    "tile_process",
]
