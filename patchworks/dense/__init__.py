"""Dense maps (probabilities, denoised images): ``tile_map`` with crop-and-stitch or weighted blending.

Imports ``run``, ``io`` and ``grid``. Start at ``_tile_map.tile_map``; ``_layout`` places the windows, ``_job``
runs one, ``_stream`` folds results into blocks on the worker threads, ``_input`` caches decoded input chunks,
``_spill`` keeps the block accumulators of a streamed run within the memory budget.
"""
