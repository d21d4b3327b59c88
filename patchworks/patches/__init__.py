"""Patches for the user's own loop: ``GridSampler`` + ``Aggregator`` for inference, training samplers, torch.

Imports ``run``, ``io`` and ``grid``. ``_grid_sampler`` is sliding-window inference in a loop, ``_samplers``
the training samplers (reproducible from seed, epoch and index), ``_torch`` the ``PatchDataset`` adapter.
"""
