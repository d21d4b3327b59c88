"""Dense maps (probabilities, denoised images): ``tile_map`` with crop-and-stitch or weighted blending.

Imports ``run``, ``io`` and ``grid``. Start at ``_tile_map.tile_map``; ``_spill`` keeps the block
accumulators of a streamed run within the memory budget.
"""
