"""CAREamics' patching strategies (``careamics.dataset_ng.patching_strategies``), on our samplers.

Change one import line::

    from patchworks.compat.careamics import RandomPatching, StratifiedPatching, TiledPatching

and a CAREamics dataset gets the same names, signatures and spec
dictionaries: ``data_shapes`` are ``SC(Z)YX`` shapes, one per image stack;
``get_patch_spec(index)`` gives ``{"data_idx", "sample_idx", "coords",
"patch_size"}`` (plus crop / stitch coordinates for tiles);
``get_patch_indices(data_idx)`` the indices of one stack. Underneath, each
sample of each stack is one image of our samplers (shape only: no data is
held or read), so the geometry is ours. Where we differ on purpose (random
patches a pure function of ``(seed, epoch, index)``; which tile owns the
voxels of the last, shifted overlap; how many stratified patches a stack
whose size is not a multiple of the patch gives) is written in
``docs/compat.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypedDict, TypeGuard

import numpy as np

from .. import (FixedRandomSampler, SequentialSampler, StratifiedSampler, TileGrid, UniformSampler,
                WholeSampler)

__all__ = ["FixedPatching", "FixedRandomPatching", "PatchSpecs", "Patching", "RandomPatching",
           "SequentialPatching", "StratifiedPatching", "TileSpecs", "TiledPatching", "WholeSamplePatching",
           "create_patching", "is_tile_specs"]


class PatchSpecs(TypedDict):
    """One patch: which stack, which sample, its origin and size (spatial axes, 2 or 3)."""

    data_idx: int
    sample_idx: int
    coords: Sequence[int]
    patch_size: Sequence[int]


class TileSpecs(PatchSpecs):
    """A tile for prediction, with where its cropped centre goes back into the image."""

    crop_coords: Sequence[int]
    crop_size: Sequence[int]
    stitch_coords: Sequence[int]
    total_tiles: int


class Patching(Protocol):
    """What a CAREamics dataset needs from a patching strategy."""

    @property
    def n_patches(self) -> int: ...

    def get_patch_spec(self, index: int) -> PatchSpecs: ...

    def get_patch_indices(self, data_idx: int) -> Sequence[int]: ...


def is_tile_specs(specs) -> TypeGuard[TileSpecs]:
    """Whether ``specs`` is a :class:`TileSpecs` (has crop and stitch coordinates)."""
    return all(k in specs for k in ("crop_coords", "crop_size", "stitch_coords", "total_tiles"))


def _shape_only(shape):
    # a stand-in image of the right shape for the geometry, never read: a lazy dask array of zeros,
    # which (unlike a broadcast numpy array) pickles small for DataLoader workers
    import dask.array as da

    return da.zeros(tuple(shape), dtype=np.uint8, chunks=-1)


class _Stacks:
    """``SC(Z)YX`` data shapes flattened into one image per (data_idx, sample_idx)."""

    def __init__(self, data_shapes, patch_size=None):
        shapes = [tuple(int(v) for v in s) for s in data_shapes]
        if not shapes:
            raise ValueError("data_shapes=[]: give at least one SC(Z)YX shape")
        for i, s in enumerate(shapes):
            if len(s) not in (4, 5) or min(s) < 1:
                raise ValueError(f"data_shapes[{i}]={s!r}: expected an SC(Z)YX shape of 4 or 5 positive axes "
                                 "(samples, channels, then 2 or 3 spatial axes)")
        if len({len(s) for s in shapes}) > 1:
            raise ValueError(f"data_shapes={shapes!r} mixes 2-D and 3-D stacks; give all SCYX or all SCZYX")
        self.shapes = shapes
        self.pairs = [(d, s) for d, sh in enumerate(shapes) for s in range(sh[0])]
        self.spatial = [shapes[d][2:] for d, _ in self.pairs]
        self.images = [_shape_only(sp) for sp in self.spatial]
        self.patch_size = None
        if patch_size is not None:
            p = tuple(int(v) for v in patch_size)
            if len(p) != len(shapes[0]) - 2:
                raise ValueError(f"patch_size={p!r} has {len(p)} entries but the data has {len(shapes[0]) - 2} "
                                 "spatial axes; give one size per spatial axis")
            self.patch_size = p

    def flat(self, data_idx, sample_idx) -> int:
        try:
            return self.pairs.index((int(data_idx), int(sample_idx)))
        except ValueError:
            raise IndexError(f"(data_idx, sample_idx)=({data_idx}, {sample_idx}) is not in data_shapes "
                             f"({len(self.shapes)} stacks with {[s[0] for s in self.shapes]} samples)") from None

    def spec(self, spec) -> PatchSpecs:
        d, s = self.pairs[spec.data_idx]
        return PatchSpecs(data_idx=d, sample_idx=s, coords=tuple(spec.start), patch_size=tuple(spec.size))

    def indices(self, ranges, data_idx) -> list[int]:
        if not 0 <= data_idx < len(self.shapes):
            raise IndexError(f"data_idx={data_idx} is out of range; valid: 0..{len(self.shapes) - 1}")
        return [i for k, (d, _) in enumerate(self.pairs) if d == data_idx for i in ranges(k)]


class _SamplerPatching:
    """A strategy on one of our samplers; ``get_patch_spec`` draws anew at every call, like CAREamics'."""

    _redraw = True

    def __init__(self, stacks, sampler):
        self._stacks, self._sampler = stacks, sampler
        self._base_epoch = 0
        self._calls = {}

    @property
    def n_patches(self) -> int:
        return self._sampler.n_patches

    @property
    def seed(self) -> int:
        return self._sampler.seed

    def set_epoch(self, epoch: int) -> None:
        """Make the draws reproducible per epoch: after this, the first call for an index is that epoch's patch.

        Without it, the ``k``-th call for index ``i`` (in this process) gives
        our sampler's patch ``i`` of epoch ``k``: a pure function of ``(seed,
        k, i)``, so every call draws anew, as in CAREamics.
        """
        self._base_epoch, self._calls = int(epoch), {}

    def get_patch_spec(self, index: int) -> PatchSpecs:
        """The spec of patch ``index`` (CAREamics' :class:`PatchSpecs` dict)."""
        epoch = None
        if self._redraw:
            i = int(index)
            k = self._calls.get(i, 0)
            self._calls[i] = k + 1
            epoch = self._base_epoch + k
        return self._stacks.spec(self._sampler.spec(index, epoch=epoch))

    def get_patch_indices(self, data_idx: int) -> list[int]:
        """Indices of the patches of image stack ``data_idx`` (all its samples)."""
        return self._stacks.indices(self._sampler.indices_for, data_idx)

    def __repr__(self):
        return f"{type(self).__name__}(n_patches={self.n_patches}, sampler={self._sampler!r})"


class RandomPatching(_SamplerPatching):
    """Patches at uniformly random positions; as many per sample as non-overlapping patches cover it.

    Parameters
    ----------
    data_shapes : sequence of sequence of int
        ``SC(Z)YX`` shape of each image stack.
    patch_size : sequence of int
        Patch size per spatial axis (2 or 3 entries).
    seed : int, optional
        ``None`` draws one (kept, so DataLoader workers agree).

    Examples
    --------
    >>> p = RandomPatching([(2, 1, 10, 12), (1, 3, 7, 9)], (4, 4), seed=1)
    >>> p.n_patches, p.get_patch_indices(1)
    (24, [18, 19, 20, 21, 22, 23])
    >>> p.get_patch_spec(0) != p.get_patch_spec(0)  # a new draw at every call, as in CAREamics
    True
    """

    def __init__(self, data_shapes, patch_size, seed=None):
        st = _Stacks(data_shapes, patch_size)
        super().__init__(st, UniformSampler(st.images, st.patch_size, seed=seed))


class FixedRandomPatching(_SamplerPatching):
    """Random patches that are the same at every call (validation): a function of ``(seed, index)``.

    Parameters as for :class:`RandomPatching`.

    Examples
    --------
    >>> p = FixedRandomPatching([(1, 1, 16, 16)], (4, 4), seed=3)
    >>> p.get_patch_spec(5) == p.get_patch_spec(5)
    True
    """

    _redraw = False

    def __init__(self, data_shapes, patch_size, seed=None):
        st = _Stacks(data_shapes, patch_size)
        super().__init__(st, FixedRandomSampler(st.images, st.patch_size, seed=seed))


class SequentialPatching(_SamplerPatching):
    """Patches on a regular grid, sample after sample; the last patch of an axis is moved inward to fit.

    Parameters
    ----------
    data_shapes, patch_size
        As for :class:`RandomPatching`.
    overlaps : sequence of int, optional
        Overlap between neighbouring patches per spatial axis; default none.

    Examples
    --------
    >>> p = SequentialPatching([(1, 1, 7, 9)], (4, 4), overlaps=(1, 2))
    >>> p.n_patches, p.get_patch_spec(7)["coords"]
    (8, (3, 5))
    """

    _redraw = False

    def __init__(self, data_shapes, patch_size, overlaps=None):
        st = _Stacks(data_shapes, patch_size)
        super().__init__(st, SequentialSampler(st.images, st.patch_size, overlap=overlaps))


class WholeSamplePatching(_SamplerPatching):
    """One patch per sample: the whole sample.

    Examples
    --------
    >>> p = WholeSamplePatching([(2, 1, 10, 12), (1, 3, 7, 9)])
    >>> p.n_patches, p.get_patch_spec(2)
    (3, {'data_idx': 1, 'sample_idx': 0, 'coords': (0, 0), 'patch_size': (7, 9)})
    """

    _redraw = False

    def __init__(self, data_shapes):
        st = _Stacks(data_shapes)
        super().__init__(st, WholeSampler(st.images))


class StratifiedPatching(_SamplerPatching):
    """One random patch per sampling region (cells of ``patch_size``), regions excludable and re-weightable.

    Region ``g`` holds the patches whose origin lies in grid cell ``g``, so a
    patch lies within twice the patch size from the cell's origin. Built on
    :class:`patchworks.StratifiedSampler`; :meth:`set_region_probs` has
    CAREamics' **absolute** meaning (our
    :meth:`~patchworks.StratifiedSampler.set_region_rates`).

    Parameters
    ----------
    data_shapes, patch_size, seed
        As for :class:`RandomPatching`.

    Examples
    --------
    >>> p = StratifiedPatching([(1, 1, 16, 16)], (4, 4), seed=0)
    >>> p.n_patches
    16
    >>> p.set_region_probs(0, 0, {g: 0.1 for g in p.get_all_grid_coords()[(0, 0)]})
    >>> p.n_patches  # each region in one epoch of ten: ceil(1.6) patches per epoch
    2
    """

    def __init__(self, data_shapes, patch_size, seed=None):
        st = _Stacks(data_shapes, patch_size)
        super().__init__(st, StratifiedSampler(st.images, st.patch_size, seed=seed))

    def exclude_patches(self, data_idx: int, sample_idx: int, grid_coords) -> None:
        """Never sample a patch overlapping these grid cells (spacing ``patch_size``, from 0) of one sample."""
        self._sampler.exclude_patches(self._stacks.flat(data_idx, sample_idx), grid_coords)

    def set_region_probs(self, data_idx: int, sample_idx: int, probs) -> None:
        """Absolute probability per region and epoch ``{grid_coord: p}``; unnamed regions keep theirs (1 at first).

        The number of patches becomes the expected number, rounded up (see
        :meth:`patchworks.StratifiedSampler.set_region_rates`).
        """
        self._sampler.set_region_rates(self._stacks.flat(data_idx, sample_idx), probs)

    def get_all_grid_coords(self) -> dict[tuple[int, int], list[tuple[int, ...]]]:
        """``{(data_idx, sample_idx): grid coordinates of every sampling region}``."""
        return {pair: self._sampler.grid_coords(k) for k, pair in enumerate(self._stacks.pairs)}

    def get_included_grid_coords(self) -> dict[tuple[int, int], list[tuple[int, ...]]]:
        """``{(data_idx, sample_idx): grid coordinates of the regions that can still be sampled}``."""
        return {pair: self._sampler.included_grid_coords(k) for k, pair in enumerate(self._stacks.pairs)}


class TiledPatching:
    """Overlapping tiles for prediction, each with the crop that stitches them back seamlessly.

    The tiles are a :meth:`patchworks.TileGrid.for_patches` grid (regular
    steps of ``patch_size - overlaps``, the last tile moved inward to fit);
    each tile's crop is its core, and the cores partition the sample, each
    overlap split at its midpoint.

    Parameters
    ----------
    data_shapes, patch_size
        As for :class:`RandomPatching`.
    overlaps : sequence of int
        Overlap with the neighbouring tiles per spatial axis.

    Examples
    --------
    >>> p = TiledPatching([(2, 1, 10, 12)], (4, 4), overlaps=(2, 2))
    >>> p.n_patches, p.get_patch_spec(1)["crop_coords"], p.get_patch_spec(1)["stitch_coords"]
    (40, (0, 1), (0, 3))
    """

    def __init__(self, data_shapes, patch_size, overlaps):
        self._stacks = st = _Stacks(data_shapes, patch_size)
        self._grids = [TileGrid.for_patches(sp, st.patch_size, overlap=tuple(overlaps), edge="shift")
                       for sp in st.spatial]
        counts = [g.n_tiles for g in self._grids]
        self._offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        self._per_stack = {}
        for (d, _), c in zip(st.pairs, counts):
            self._per_stack[d] = self._per_stack.get(d, 0) + c

    @property
    def n_patches(self) -> int:
        return int(self._offsets[-1])

    def get_patch_spec(self, index: int) -> TileSpecs:
        """The tile specs of tile ``index``."""
        n = self.n_patches
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index={index!r} is out of range for {n} tiles")
        i = int(index) % n
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        p = self._grids[k].patch(i - int(self._offsets[k]))
        d, s = self._stacks.pairs[k]
        return TileSpecs(data_idx=d, sample_idx=s, coords=tuple(p.start), patch_size=tuple(p.size),
                         crop_coords=tuple(c - a for c, a in zip(p.core_start, p.start)),
                         crop_size=tuple(b - a for a, b in zip(p.core_start, p.core_stop)),
                         stitch_coords=tuple(p.core_start), total_tiles=self._per_stack[d])

    def get_patch_indices(self, data_idx: int) -> list[int]:
        """Indices of the tiles of image stack ``data_idx``."""
        return self._stacks.indices(lambda k: range(int(self._offsets[k]), int(self._offsets[k + 1])), data_idx)


class FixedPatching:
    """Exactly the given patch specs, in order.

    Examples
    --------
    >>> p = FixedPatching([{"data_idx": 1, "sample_idx": 0, "coords": (2, 3), "patch_size": (4, 4)}])
    >>> p.n_patches, p.get_patch_indices(1), p.get_patch_indices(0)
    (1, [0], [])
    """

    def __init__(self, fixed_patch_specs):
        self._specs = [dict(s) for s in fixed_patch_specs]
        for i, s in enumerate(self._specs):
            missing = {"data_idx", "sample_idx", "coords", "patch_size"} - set(s)
            if missing:
                raise ValueError(f"fixed_patch_specs[{i}] lacks {sorted(missing)}; every spec needs data_idx, "
                                 "sample_idx, coords and patch_size")

    @property
    def n_patches(self) -> int:
        return len(self._specs)

    def get_patch_spec(self, index: int) -> PatchSpecs:
        return PatchSpecs(**self._specs[index])

    def get_patch_indices(self, data_idx: int) -> list[int]:
        return [i for i, s in enumerate(self._specs) if int(s["data_idx"]) == int(data_idx)]


_FACTORY = {"random": RandomPatching, "fixed_random": FixedRandomPatching, "stratified": StratifiedPatching,
            "sequential": SequentialPatching, "tiled": TiledPatching, "whole": WholeSamplePatching}


def create_patching(data_shapes, patching_config) -> Patching:
    """A strategy from a CAREamics patching config (or a dict with the same fields).

    ``patching_config.name`` picks the strategy (``"random"``,
    ``"fixed_random"``, ``"stratified"``, ``"sequential"``, ``"tiled"``,
    ``"whole"``); ``patch_size``, ``seed`` and ``overlaps`` are passed on.

    Examples
    --------
    >>> create_patching([(1, 1, 8, 8)], {"name": "tiled", "patch_size": (4, 4), "overlaps": (2, 2)}).n_patches
    9
    """
    cfg = patching_config if isinstance(patching_config, dict) else vars(patching_config)
    name = cfg.get("name")
    if name not in _FACTORY:
        raise ValueError(f"patching_config name={name!r} is unknown; use one of {', '.join(map(repr, _FACTORY))}")
    cls = _FACTORY[name]
    if cls is WholeSamplePatching:
        return cls(data_shapes)
    kw = {"patch_size": cfg["patch_size"]}
    if cls in (TiledPatching, SequentialPatching):
        kw["overlaps"] = cfg.get("overlaps")
    else:
        kw["seed"] = cfg.get("seed")
    return cls(data_shapes, **kw)
