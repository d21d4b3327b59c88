"""Tiled labelling: ``tile_process`` and ``merge_tile_labels``, with the exact (touch) and IoU merges.

Imports ``segment``, ``run``, ``io`` and ``grid``. Read ``_process`` first (the phases of one call), then
``_tile_task`` (fn -> local ids -> staged), ``_stage_store`` (the staged-tile files), ``_merge`` (seam pairs,
plan, relabel) with ``_iou`` (one-to-one matching); ``_seam_report``, ``_count``, ``_empty`` are checks around it.
"""
