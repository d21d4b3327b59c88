"""Tiled labelling: ``tile_process`` and ``merge_tile_labels`` (exact touch and IoU merges), the object table.

Imports ``segment``, ``run``, ``io`` and ``grid``. Read ``_process`` first (the phases of one call), then
``_tile_task`` (fn -> local ids -> staged), ``_stage_store``, ``_merge`` (seam pairs, plan, relabel + pyramid)
with ``_iou`` (one-to-one and plane matching), ``_table`` / ``_table_merge`` / ``_measure`` (the object table).
"""
