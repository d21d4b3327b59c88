"""patchworks: run any function on an N-D image too large for memory, tile by tile.

The public API is flat: everything a user needs is importable from here.
"""

from ._grid import Tile, TileGrid, normalize_per_axis
from ._io import LazySource, create_output, open_image
from ._empty import estimate_empty_tiles
from ._labels import merge_tile_labels, tile_process
from ._methods import label_components, otsu, otsu_threshold, threshold
from ._segmenters import LogBlobs, Watershed, log_blobs, watershed
from ._seams import SeamReport, seam_report
from ._blend import tile_blend, tile_map
from ._windows import make_window, window_for_region
from ._grid import PatchSpec
from ._sampling import Aggregator, GridSampler
from ._samplers import (FixedRandomSampler, FixedSampler, LabelSampler, SequentialSampler, StratifiedSampler,
                        UniformSampler, WeightedSampler, WholeSampler)
from ._torch import PatchDataset
from ._resources import (ResourceBudget, auto_overlap, auto_tile_shape, available_cores, available_memory,
                         gpu_free_memory, resource_budget, visible_gpus)
from ._cluster import check_client, make_local_cluster, slurm_cluster

__version__ = "0.1.0.dev0"

__all__ = [
    "ResourceBudget",
    "auto_overlap",
    "auto_tile_shape",
    "available_cores",
    "available_memory",
    "check_client",
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
    "merge_tile_labels",
    "normalize_per_axis",
    "open_image",
    "otsu",
    "otsu_threshold",
    "threshold",
    "tile_process",
]
