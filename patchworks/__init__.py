"""patchworks: run any function on an N-D image too large for memory, tile by tile.

The public API is flat: everything a user needs is importable from here.
"""

from ._grid import Tile, TileGrid, normalize_per_axis
from ._io import LazySource, create_output, open_image
from ._empty import estimate_empty_tiles
from ._labels import merge_tile_labels, tile_process
from ._methods import label_components, otsu, otsu_threshold, threshold

__version__ = "0.1.0.dev0"

__all__ = [
    "LazySource",
    "Tile",
    "TileGrid",
    "create_output",
    "estimate_empty_tiles",
    "label_components",
    "merge_tile_labels",
    "normalize_per_axis",
    "open_image",
    "otsu",
    "otsu_threshold",
    "threshold",
    "tile_process",
]
