"""PyTorch adapter: a map-style ``Dataset`` over any patchworks sampler.

torch is imported only when a :class:`PatchDataset` is created (optional
extra: ``pip install "patchworks[torch]"``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PatchDataset"]


def _import_torch():
    try:
        import torch
    except ImportError as exc:  # optional dependency
        raise ImportError('PatchDataset needs PyTorch: pip install "patchworks[torch]"') from exc
    return torch


class PatchDataset:
    """Map-style PyTorch dataset over a sampler: item ``i`` is ``(patch_tensor, spec_dict)``.

    Works with ``torch.utils.data.DataLoader`` (any ``num_workers``; the
    sampler pickles as file locations plus a few small tables). The default
    collate turns the spec dicts into a dict of batched fields, which
    :meth:`Aggregator.add` accepts as it is. Training samplers depend on the
    epoch: call :meth:`set_epoch` before iterating a new epoch (with
    ``persistent_workers=False``, the default, workers copy the sampler when
    the iteration starts).

    Parameters
    ----------
    sampler : GridSampler or a training sampler
    transform : callable, optional
        ``transform(patch_ndarray) -> ndarray``, applied before conversion.
    dtype : numpy dtype, optional
        Cast patches to this dtype (e.g. ``np.float32``) before conversion.
    """

    def __init__(self, sampler, *, transform=None, dtype=None):
        _import_torch()
        self.sampler = sampler
        self.transform = transform
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __getitem__(self, index):
        torch = _import_torch()
        patch, spec = self.sampler[int(index)]
        if self.transform is not None:
            patch = self.transform(patch)
        if self.dtype is not None:
            patch = patch.astype(self.dtype, copy=False)
        return torch.from_numpy(np.ascontiguousarray(patch)), spec.to_dict()
