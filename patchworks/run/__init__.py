"""Execution shared by every engine: dask graphs on threads or a cluster, the run directory, budgets, clusters.

Imports ``io`` and ``grid``. Start at ``_execute.run_tasks`` and ``_rundir.RunDir`` (output, scratch,
fingerprint, resume, lock); ``_resources`` sizes tiles, ``_cluster`` makes clusters, ``_options`` and
``_plan`` read upstream's options and describe a dry run, ``_windows`` holds the blending windows.
"""
