"""Execution shared by every engine: dask graphs on threads or a cluster, the run directory, budgets, clusters.

Imports ``io`` and ``grid``. Start at ``_execute.run_tasks`` (how tasks run and report progress) and
``_rundir.RunDir`` (output, scratch, fingerprint, resume, lock); ``_resources`` sizes tiles, ``_cluster``
makes clusters, ``_windows`` holds the blending windows that dense maps and the patch aggregator share.
"""
