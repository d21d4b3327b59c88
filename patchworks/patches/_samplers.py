"""Training samplers: where each training patch lies, as a pure function of ``(seed, epoch, index)``.

Every sampler maps a patch index to a :class:`PatchSpec` with its own random
generator ``np.random.default_rng([seed, epoch, index])`` and no shared state,
so any number of DataLoader workers, in any order, in any process, gives the
same patches. Several images of different shapes are sampled together:
indices ``indices_for(data_idx)`` belong to image ``data_idx``. Images (and
probability / label maps) are read lazily: only the patch, and for weighted /
label samplers one block of the map per draw, is read.
"""

from __future__ import annotations

import abc
import bisect
import itertools
from collections.abc import Mapping

import numpy as np

from patchworks.grid import PatchSpec, TileGrid, normalize_per_axis
from patchworks.io._sources import open_image
from patchworks.patches._grid_sampler import _check_index, read_patch

__all__ = ["FixedRandomSampler", "FixedSampler", "LabelSampler", "PatchSampler", "SequentialSampler",
           "StratifiedSampler", "UniformSampler", "WeightedSampler", "WholeSampler"]


def _image_list(images):
    return list(images) if isinstance(images, (list, tuple)) else [images]


class PatchSampler(abc.ABC):
    """Base of the training samplers: images, patch size, index bookkeeping and reading.

    Subclasses define ``_spec(data_idx, sample_idx, rng)``. Indexing gives
    ``(patch, spec)``; :meth:`spec` gives the geometry only.
    """

    #: whether patches change with the epoch
    uses_epoch = True

    def __init__(self, images, patch_size=None, *, seed=0, patches_per_image=None, channel_axis=None, axes=None):
        self.images = [open_image(im, name=f"images[{i}]") for i, im in enumerate(_image_list(images))]
        if not self.images:
            raise ValueError("images=[]: give at least one image")
        self.spatial_axes = [TileGrid(im.shape, 1, channel_axis=channel_axis, axes=axes).spatial_axes
                             for im in self.images]
        self.spatial_shapes = [tuple(im.shape[a] for a in sa) for im, sa in zip(self.images, self.spatial_axes)]
        self.patch_sizes = [None] * len(self.images)
        if patch_size is not None:
            for d, sh in enumerate(self.spatial_shapes):
                p = tuple(s if not q else q for q, s in zip(normalize_per_axis(patch_size, len(sh), "patch_size",
                                                                               default=0), sh))
                if any(q < 1 for q in p) or any(q > s for q, s in zip(p, sh)):
                    raise ValueError(f"patch_size={p!r} does not fit image {d} of spatial shape {sh}; "
                                     "use a patch size between 1 and the image size on every axis")
                self.patch_sizes[d] = p
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r}: use an int >= 0 (or None for a random one, kept by the sampler)")
        self.seed = int(seed)
        self.epoch = 0
        self._per_image = patches_per_image
        self._refresh()

    # -- index bookkeeping -----------------------------------------------
    def _default_count(self, d) -> int:
        """Patches per image per epoch: as many as non-overlapping patches covering it."""
        return int(np.prod([-(-s // p) for s, p in zip(self.spatial_shapes[d], self.patch_sizes[d])]))

    def _counts(self) -> list[int]:
        n = len(self.images)
        ppi = self._per_image
        if ppi is None:
            return [self._default_count(d) for d in range(n)]
        ppi = [ppi] * n if isinstance(ppi, (int, np.integer)) else list(ppi)
        if len(ppi) != n or any(int(c) < 0 for c in ppi):
            raise ValueError(f"patches_per_image={self._per_image!r}: give an int >= 0 or one per image ({n})")
        return [int(c) for c in ppi]

    def _refresh(self):
        self._offsets = np.r_[0, np.cumsum(self._counts())].astype(np.int64)

    @property
    def n_patches(self) -> int:
        """Number of patches per epoch (the length of a Dataset over this sampler)."""
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self.n_patches

    def indices_for(self, data_idx: int):
        """Indices whose patches come from image ``data_idx``."""
        if not 0 <= data_idx < len(self.images):
            raise IndexError(f"data_idx={data_idx} is out of range; valid: 0..{len(self.images) - 1}")
        return range(int(self._offsets[data_idx]), int(self._offsets[data_idx + 1]))

    def locate(self, index) -> tuple[int, int]:
        """``(data_idx, sample_idx)`` of patch ``index``."""
        i = _check_index(index, self.n_patches)
        d = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return d, i - int(self._offsets[d])

    def set_epoch(self, epoch: int):
        """Select the epoch used by :meth:`spec` and indexing (call before each epoch)."""
        self.epoch = int(epoch)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of patch ``index``: a pure function of ``(seed, epoch, index)``."""
        epoch = self.epoch if epoch is None else epoch
        key = [self.seed, int(epoch), int(index)] if self.uses_epoch else [self.seed, int(index)]
        if all(0 <= k < 1 << 32 for k in key):
            # the very stream of default_rng(key), built without its slow coercion of a Python list
            return np.random.Generator(np.random.PCG64(np.random.SeedSequence(np.array(key, dtype=np.uint32))))
        return np.random.default_rng(key)

    def spec(self, index: int, epoch: int | None = None) -> PatchSpec:
        """Geometry of patch ``index`` in ``epoch`` (default: the current one)."""
        d, s = self.locate(index)
        return self._spec(d, s, self.rng(index % self.n_patches, epoch))

    @abc.abstractmethod
    def _spec(self, data_idx, sample_idx, rng) -> PatchSpec:
        """Geometry of sample ``sample_idx`` of image ``data_idx``, drawn with ``rng``."""

    def read(self, spec: PatchSpec) -> np.ndarray:
        """Read the patch ``spec`` describes (only those voxels)."""
        return read_patch(self.images[spec.data_idx], spec, self.spatial_axes[spec.data_idx])

    def __getitem__(self, index):
        spec = self.spec(index)
        return self.read(spec), spec

    def __iter__(self):
        for i in range(self.n_patches):
            yield self[i]

    def _inside(self, d, s, start, anchor=None):
        return PatchSpec.inside(start, self.patch_sizes[d], self.spatial_shapes[d], data_idx=d, sample_idx=s,
                                anchor=anchor)

    def __repr__(self):
        return (f"{type(self).__name__}(n_images={len(self.images)}, patch_sizes={self.patch_sizes}, "
                f"n_patches={self.n_patches}, seed={self.seed}, epoch={self.epoch})")


class UniformSampler(PatchSampler):
    """Patches at uniformly random positions, every position inside the image equally likely.

    Parameters
    ----------
    images : array-like, path, or list of them
        One image or several (shapes may differ); anything :func:`open_image` accepts.
    patch_size : int, tuple or dict
    seed : int or None
        ``None`` draws one (kept, so workers agree).
    patches_per_image : int or list of int, optional
        Patches per image per epoch; default as many as non-overlapping
        patches cover it.
    channel_axis, axes
        Non-spatial axes, carried whole.

    Examples
    --------
    >>> s = UniformSampler([np.zeros((8, 8)), np.zeros((4, 6))], 4, seed=1)
    >>> len(s), list(s.indices_for(1))
    (6, [4, 5])
    >>> s.spec(5) == UniformSampler([np.zeros((8, 8)), np.zeros((4, 6))], 4, seed=1).spec(5)
    True
    """

    def _spec(self, d, s, rng):
        # one draw for all axes: floor(u * choices) is uniform over 0..choices-1
        u = rng.random(len(self.patch_sizes[d]))
        start = [int(x * (n - p + 1)) for x, n, p in zip(u, self.spatial_shapes[d], self.patch_sizes[d])]
        return self._inside(d, s, start)


class FixedRandomSampler(UniformSampler):
    """Uniform random patches that are the same in every epoch (validation sets).

    Patch ``index`` depends on ``(seed, index)`` only. Parameters as for
    :class:`UniformSampler`.

    Examples
    --------
    >>> s = FixedRandomSampler(np.zeros((16, 16)), 4, seed=3)
    >>> s.spec(2, epoch=0) == s.spec(2, epoch=7)
    True
    """

    uses_epoch = False


def _default_block(ndim: int) -> tuple[int, ...]:
    return (max(1, int(round(2 ** (18 / ndim)))),) * ndim


class _BlockTable:
    """Coarse-to-fine drawing: weight sums per block, then a voxel inside one block.

    One pass over the map at construction (block by block, so a map on disk
    is never loaded whole); each draw reads a single block.
    """

    def __init__(self, source, shape, block, weight, keys, name):
        self.source, self.weight, self.keys = source, weight, keys
        if tuple(source.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(source.shape)} but the image's spatial shape is "
                             f"{tuple(shape)}; give one value per voxel of the image (no channel axis)")
        self.grid = TileGrid(shape, block)
        sums = np.zeros((self.grid.n_tiles, len(keys)), dtype=np.float64)
        for t in self.grid:
            data = np.asarray(source[t.core])
            for k, key in enumerate(keys):
                sums[t.linear_index, k] = float(weight(data, key, name).sum(dtype=np.float64))
        self.sums = sums
        self.cum = np.cumsum(sums, axis=0)

    def total(self, k) -> float:
        return float(self.cum[-1, k])

    def draw(self, rng, k) -> tuple[int, ...]:
        cum = self.cum[:, k]
        b = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        b = min(b, int(np.flatnonzero(self.sums[:, k])[-1]))
        t = self.grid.tile(b)
        w = np.asarray(self.weight(np.asarray(self.source[t.core]), self.keys[k], None), dtype=np.float64).ravel()
        c = np.cumsum(w)
        j = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
        j = min(j, int(np.flatnonzero(w)[-1]))
        local = np.unravel_index(j, t.core_shape)
        return tuple(int(s.start + v) for s, v in zip(t.spatial_core, local))


def _maps(maps, n, name):
    maps = _image_list(maps)
    if len(maps) != n:
        raise ValueError(f"{name}: got {len(maps)} maps for {n} images; give one map per image (a list)")
    return [open_image(m, name=f"{name}[{i}]") for i, m in enumerate(maps)]


def _centred_start(v, sizes, shape):
    # centre the patch on v, then shift it inside the image: v stays inside the patch
    return [min(max(x - p // 2, 0), n - p) for x, p, n in zip(v, sizes, shape)]


def _prob_weight(data, key, name):
    if name is not None:
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_) or np.iscomplexobj(data):
            raise TypeError(f"{name} has dtype {data.dtype}; use a real numeric or bool map of weights >= 0")
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{name} holds NaN or infinite values; every weight must be finite and >= 0 "
                             "(e.g. np.nan_to_num(map))")
        if data.size and data.min() < 0:
            raise ValueError(f"{name} holds negative weights (min {data.min()!r}); weights must be >= 0 "
                             "(e.g. np.clip(map, 0, None))")
    return data.astype(np.float64, copy=False)


class WeightedSampler(PatchSampler):
    """Patches around voxels drawn with probability proportional to a map.

    A voxel ``v`` is drawn with probability ``map[v] / map.sum()`` (zero
    weight: never drawn), the patch is centred on it and then shifted inside
    the image, so ``v`` is always in the patch, border voxels included.
    ``spec.anchor`` is ``v``.

    Parameters
    ----------
    images : array-like, path, or list of them
    patch_size : int, tuple or dict
    probability_map : array-like, path, or list of them
        One map per image, of the image's spatial shape, finite, >= 0 and not
        all zero. Read block by block, never whole.
    seed, patches_per_image, channel_axis, axes
        As for :class:`UniformSampler`.
    block : int or tuple, optional
        Block shape of the coarse-to-fine draw (default ~256 k voxels).

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[0, 9] = 1
    >>> s = WeightedSampler(np.zeros((10, 10)), 4, prob, seed=0)
    >>> s.spec(0).anchor, s.spec(0).start
    ((0, 9), (0, 6))
    """

    def __init__(self, images, patch_size, probability_map, *, seed=0, patches_per_image=None, block=None,
                 channel_axis=None, axes=None):
        super().__init__(images, patch_size, seed=seed, patches_per_image=patches_per_image,
                         channel_axis=channel_axis, axes=axes)
        maps = _maps(probability_map, len(self.images), "probability_map")
        self.tables = []
        for d, (m, sh) in enumerate(zip(maps, self.spatial_shapes)):
            name = "probability_map" if len(maps) == 1 else f"probability_map[{d}]"
            blk = normalize_per_axis(block, len(sh), "block") if block is not None else _default_block(len(sh))
            table = _BlockTable(m, sh, blk, _prob_weight, [None], name)
            if not table.total(0) > 0:
                raise ValueError(f"{name} is zero everywhere; at least one voxel needs a weight > 0")
            self.tables.append(table)

    def _spec(self, d, s, rng):
        v = self.tables[d].draw(rng, 0)
        return self._inside(d, s, _centred_start(v, self.patch_sizes[d], self.spatial_shapes[d]), anchor=v)


def _label_weight(data, key, name):
    if name is not None and not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise TypeError(f"{name} has dtype {data.dtype}; a label map must hold integers or bools "
                        "(e.g. label_map.astype(np.int32))")
    return data == key


class LabelSampler(PatchSampler):
    """Patches around voxels of chosen classes, with class frequencies as requested.

    For each patch a class ``c`` is drawn with probability
    ``label_probabilities[c]`` (renormalised over the classes present in that
    image), then a voxel of class ``c`` uniformly, and the patch is centred
    on it and shifted inside the image. The drawn voxel (``spec.anchor``)
    always has class ``c`` -- also when the class only touches the border --
    so the requested frequencies hold exactly for the anchors (unlike
    samplers that only allow centres away from the border).

    Parameters
    ----------
    images : array-like, path, or list of them
    patch_size : int, tuple or dict
    label_map : array-like, path, or list of them
        Integer (or bool) map per image, of the image's spatial shape.
    label_probabilities : dict, optional
        ``{label: probability}``, values >= 0; default every non-zero label
        present equally likely.
    seed, patches_per_image, block, channel_axis, axes
        As for :class:`WeightedSampler`.

    Examples
    --------
    >>> lab = np.zeros((12, 12), int); lab[:, 0] = 1
    >>> s = LabelSampler(np.zeros((12, 12)), 4, lab, {0: 0.5, 1: 0.5}, seed=0)
    >>> sorted({int(lab[s.spec(i).anchor]) for i in range(len(s))})
    [0, 1]
    """

    def __init__(self, images, patch_size, label_map, label_probabilities=None, *, seed=0,
                 patches_per_image=None, block=None, channel_axis=None, axes=None):
        super().__init__(images, patch_size, seed=seed, patches_per_image=patches_per_image,
                         channel_axis=channel_axis, axes=axes)
        maps = _maps(label_map, len(self.images), "label_map")
        if label_probabilities is None:
            labels = set()
            for m in maps:
                for t in TileGrid(m.shape, _default_block(m.ndim)):
                    data = np.asarray(m[t.core])
                    _label_weight(data, 0, "label_map")
                    labels.update(int(v) for v in np.unique(data) if v != 0)
            if not labels:
                raise ValueError("label_map holds no non-zero label; pass label_probabilities={0: 1.0} to sample "
                                 "background, or check the map")
            label_probabilities = {lab: 1.0 for lab in sorted(labels)}
        if not isinstance(label_probabilities, Mapping) or not label_probabilities:
            raise TypeError(f"label_probabilities={label_probabilities!r}: expected a dict {{label: probability}}")
        for lab, p in label_probabilities.items():
            if not (np.isfinite(p) and p >= 0):
                raise ValueError(f"label_probabilities={label_probabilities!r}: probability {p!r} of label {lab} "
                                 "must be finite and >= 0")
        self.label_probabilities = dict(label_probabilities)
        self.labels = [k for k, p in label_probabilities.items() if p > 0]
        if not self.labels:
            raise ValueError(f"label_probabilities={label_probabilities!r}: every probability is 0; give at least "
                             "one label a probability > 0")
        probs = np.array([label_probabilities[k] for k in self.labels], dtype=np.float64)
        self.tables, self.class_probs = [], []
        for d, (m, sh) in enumerate(zip(maps, self.spatial_shapes)):
            name = "label_map" if len(maps) == 1 else f"label_map[{d}]"
            blk = normalize_per_axis(block, len(sh), "block") if block is not None else _default_block(len(sh))
            table = _BlockTable(m, sh, blk, _label_weight, self.labels, name)
            present = np.array([table.total(k) > 0 for k in range(len(self.labels))])
            p = np.where(present, probs, 0.0)
            if p.sum() <= 0:
                raise ValueError(f"{name} holds none of the labels {self.labels} with probability > 0; "
                                 "check label_probabilities or the map")
            self.tables.append(table)
            self.class_probs.append(p / p.sum())

    def _spec(self, d, s, rng):
        k = int(rng.choice(len(self.labels), p=self.class_probs[d]))
        v = self.tables[d].draw(rng, k)
        return self._inside(d, s, _centred_start(v, self.patch_sizes[d], self.spatial_shapes[d]), anchor=v)


class StratifiedSampler(PatchSampler):
    """One random patch per sampling region per epoch; grid cells can be excluded.

    The image is cut into cells of ``patch_size`` (grid coordinates start at
    0). Region ``g`` holds the patches whose origin lies in cell ``g``, so
    each patch lies within ``2 * patch_size`` from the cell's origin; regions
    near the image end are smaller. By default index ``i`` of an image
    samples region ``i`` (every included region once per epoch, at a
    uniformly random position). :meth:`exclude_patches` removes cells: no
    patch ever overlaps an excluded cell (e.g. keep a validation area out of
    training). Two ways to sample some regions more or less often:

    * :meth:`set_region_rates` -- **absolute**: region ``g`` gives on average
      ``rate[g]`` patches per epoch (0.1: one epoch in ten); the number of
      patches shrinks or grows to ``ceil(sum of rates)`` (CAREamics'
      ``set_region_probs``).
    * :meth:`set_region_probs` -- **relative** weights: the number of patches
      stays, and each index draws its region from the normalised weights.

    Parameters
    ----------
    images, patch_size, seed, channel_axis, axes
        As for :class:`UniformSampler`.

    Examples
    --------
    >>> s = StratifiedSampler(np.zeros((8, 8)), 2, seed=0)
    >>> len(s)
    16
    >>> s.exclude_patches(0, [(1, 1)])
    >>> len(s), any(sp.start[0] < 4 and sp.start[1] < 4 and sp.start[0] > 0 and sp.start[1] > 0
    ...             for sp in (s.spec(i, epoch=e) for i in range(len(s)) for e in range(20)))
    (15, False)
    >>> s.set_region_rates(0, {g: 0.1 for g in s.included_grid_coords(0)})
    >>> len(s)  # 15 regions x 0.1 patches per epoch
    2
    """

    def __init__(self, images, patch_size, *, seed=0, channel_axis=None, axes=None):
        self._excluded = None
        super().__init__(images, patch_size, seed=seed, channel_axis=channel_axis, axes=axes)
        n = len(self.images)
        self._excluded = [set() for _ in range(n)]
        self._weights = [None] * n  # relative: {grid_coord: weight}
        self._rates = [None] * n  # absolute: {grid_coord: expected patches per epoch}
        self._invalidate()

    # -- regions ---------------------------------------------------------
    def _cells(self, d):
        return tuple(-(-s // p) for s, p in zip(self.spatial_shapes[d], self.patch_sizes[d]))

    def _n_regions(self, d):
        return tuple((s - p) // p + 1 for s, p in zip(self.spatial_shapes[d], self.patch_sizes[d]))

    def grid_coords(self, data_idx: int) -> list[tuple[int, ...]]:
        """Grid coordinates of all sampling regions of image ``data_idx``."""
        return list(itertools.product(*(range(r) for r in self._n_regions(data_idx))))

    def included_grid_coords(self, data_idx: int) -> list[tuple[int, ...]]:
        """Regions of image ``data_idx`` that can still be sampled."""
        if self._excluded is None:
            return self.grid_coords(data_idx)
        return list(self._tables(data_idx)[0])

    def _invalidate(self):
        # everything a spec needs is cached per image and rebuilt only when exclusions or rates change
        self._cache = [None] * len(self.images)
        self._region_cache = [{} for _ in self.images]
        self._refresh()

    def _tables(self, d):
        """(included coords, cumulative weights or rates or None, total) of image ``d``."""
        c = self._cache[d]
        if c is None:
            ex = self._excluded[d]
            inc = tuple(g for g in self.grid_coords(d) if g not in ex)
            table = self._weights[d] if self._weights[d] is not None else self._rates[d]
            if table is None:
                c = (inc, None, float(len(inc)))
            else:
                default = 0.0 if self._weights[d] is not None else 1.0
                cum = np.cumsum([table.get(g, default) for g in inc]) if inc else np.zeros(0)
                c = (inc, cum, float(cum[-1]) if cum.size else 0.0)
            self._cache[d] = c
        return c

    def _counts(self):
        if self._excluded is None:
            return [0] * len(self.images)
        out = []
        for d in range(len(self.images)):
            inc, _, total = self._tables(d)
            # absolute rates: as many indices as the expected number of patches, rounded up
            out.append(int(np.ceil(total - 1e-9)) if self._rates[d] is not None else len(inc))
        return out

    def _check_data_idx(self, data_idx):
        if not isinstance(data_idx, (int, np.integer)) or not 0 <= data_idx < len(self.images):
            raise IndexError(f"data_idx={data_idx!r} is out of range; valid: 0..{len(self.images) - 1}")

    def _check_coord(self, d, g, name):
        cells = self._cells(d)
        g = tuple(int(v) for v in g)
        if len(g) != len(cells) or any(not 0 <= v < c for v, c in zip(g, cells)):
            raise ValueError(f"{name}: grid coordinate {g} is outside image {d}'s grid of {cells} cells "
                             f"(cells of patch_size {self.patch_sizes[d]}); use coordinates 0..cells-1 per axis")
        return g

    def exclude_patches(self, data_idx: int, grid_coords):
        """Never sample a patch that overlaps these cells (grid of spacing ``patch_size``) of image ``data_idx``."""
        self._check_data_idx(data_idx)
        for g in grid_coords:
            self._excluded[data_idx].add(self._check_coord(data_idx, g, "grid_coords"))
        self._invalidate()

    def _table(self, data_idx, values, name, what):
        w = {}
        for g, p in dict(values).items():
            g = self._check_coord(data_idx, g, name)
            if not (isinstance(p, (int, float, np.integer, np.floating)) and np.isfinite(p) and p >= 0):
                raise ValueError(f"{name}: {what} {p!r} of region {g} must be a finite number >= 0")
            w[g] = float(p)
        return w

    def set_region_probs(self, data_idx: int, probs):
        """**Relative** weights of the regions of image ``data_idx``: ``{grid_coord: weight}``; unnamed regions get 0.

        Each index of that image then draws its region from these weights
        (normalised over the included regions), still a pure function of
        ``(seed, epoch, index)``; the number of patches does not change.
        ``None`` restores one patch per region. For CAREamics' meaning
        (absolute probabilities that also change the number of patches) use
        :meth:`set_region_rates`.
        """
        self._check_data_idx(data_idx)
        if probs is None:
            self._weights[data_idx] = None
            self._invalidate()
            return
        w = self._table(data_idx, probs, "probs", "weight")
        ex = self._excluded[data_idx]
        if not sum(v for g, v in w.items() if g not in ex and g in set(self.grid_coords(data_idx))) > 0:
            raise ValueError("probs: every included region has weight 0; give at least one included region "
                             "a weight > 0")
        self._weights[data_idx], self._rates[data_idx] = w, None
        self._invalidate()

    def set_region_rates(self, data_idx: int, rates):
        """**Absolute** sampling rates of the regions of image ``data_idx``: ``{grid_coord: rate}``.

        A region of rate ``r`` gives on average ``r`` patches per epoch
        (``r = 0.1``: one epoch in ten; 0: never); regions not named keep
        their rate (1 at first). The number of patches of the image becomes
        ``ceil(sum of the rates)``: the regions are laid end to end, in grid
        order, on ``[0, sum)``, and index ``k`` samples the region under a
        uniform point of ``[k, k + 1)`` (systematic sampling), so every
        region's expected count is exactly its rate -- except those in the
        last, partial bin, which is filled to a whole patch. This is what
        CAREamics' ``set_region_probs`` means. ``None`` restores rate 1
        everywhere (one patch per region).

        Examples
        --------
        >>> s = StratifiedSampler(np.zeros((16, 16)), 4, seed=0)
        >>> s.set_region_rates(0, {(0, 0): 0.5, (3, 3): 0})
        >>> len(s)  # 14 regions at 1, one at 0.5, one at 0
        15
        """
        self._check_data_idx(data_idx)
        if rates is None:
            self._rates[data_idx] = None
            self._invalidate()
            return
        r = dict(self._rates[data_idx] or {})
        r.update(self._table(data_idx, rates, "rates", "rate"))
        self._rates[data_idx], self._weights[data_idx] = r, None
        self._invalidate()

    def region_rates(self, data_idx: int) -> dict[tuple[int, ...], float]:
        """Expected patches per epoch of every included region of image ``data_idx``."""
        inc, cum, total = self._tables(data_idx)
        if cum is None:
            return {g: 1.0 for g in inc}
        vals = np.diff(np.r_[0.0, cum])
        if self._weights[data_idx] is not None:
            vals = vals / total * len(inc)
        elif total > 0:
            # systematic bins: full bins [k, k + 1) count as laid out; the last, partial one is filled to 1
            n = int(np.ceil(total - 1e-9))
            lo, cut, f = cum - vals, n - 1, total - (n - 1)
            vals = (np.clip(cum, 0, cut) - np.clip(lo, 0, cut)) + (np.clip(cum, cut, total) - np.clip(lo, cut, total)) / f
        return {g: float(v) for g, v in zip(inc, vals)}

    # -- drawing ---------------------------------------------------------
    def _region(self, d, g):
        """Cached per region: origin choices per axis, the allowed offset patterns and their cumulative counts."""
        hit = self._region_cache[d].get(g)
        if hit is not None:
            return hit
        sizes, shape, ex = self.patch_sizes[d], self.spatial_shapes[d], self._excluded[d]
        m = [min(p, n - p - gk * p + 1) for gk, p, n in zip(g, sizes, shape)]  # origin choices per axis
        nd = len(g)
        # pattern Z = axes whose offset is > 0; the patch then overlaps cells g + delta for every delta in Z
        patterns, cum, total = [], [], 0
        for z in itertools.product((0, 1), repeat=nd):
            cnt = 1
            for k in range(nd):
                cnt *= (m[k] - 1) if z[k] else 1
            if cnt <= 0:
                continue
            touched = (tuple(gk + dk for gk, dk in zip(g, delta))
                       for delta in itertools.product(*((0, 1) if z[k] else (0,) for k in range(nd))))
            if not any(c in ex for c in touched):
                total += cnt
                patterns.append(z)
                cum.append(total)
        hit = (tuple(gk * p for gk, p in zip(g, sizes)), m, patterns, cum, total)
        self._region_cache[d][g] = hit
        return hit

    def _spec(self, d, s, rng):
        inc, cum, total = self._tables(d)
        u = rng.random(len(self.patch_sizes[d]) + 2)  # one call: region, pattern, one offset per axis
        if cum is None:
            g = inc[s]
        else:
            if self._rates[d] is not None:  # systematic: index s covers [s, s + 1) of the laid-out rates
                x = s + u[0] * min(1.0, total - s)
            else:
                x = u[0] * total
            j = int(np.searchsorted(cum, x, side="right"))
            if j >= len(inc):  # x rounded up to the total: the last region that has a rate
                j = int(np.flatnonzero(np.diff(np.r_[0.0, cum]) > 0)[-1])
            g = inc[j]
        origin, m, patterns, pcum, ptotal = self._region(d, g)
        z = patterns[bisect.bisect_right(pcum, u[1] * ptotal)] if len(patterns) > 1 else patterns[0]
        start = [o + (1 + int(uk * (mk - 1)) if zk else 0) for o, mk, zk, uk in zip(origin, m, z, u[2:])]
        return self._inside(d, s, start)


class FixedSampler(PatchSampler):
    """Exactly the given patches, in order.

    Parameters
    ----------
    images : array-like, path, or list of them
    specs : list of PatchSpec (or dicts from ``PatchSpec.to_dict``)

    Examples
    --------
    >>> img = np.arange(16).reshape(4, 4)
    >>> s = FixedSampler(img, [PatchSpec.inside((1, 1), (2, 2), (4, 4))])
    >>> s[0][0]
    array([[ 5,  6],
           [ 9, 10]])
    """

    uses_epoch = False

    def __init__(self, images, specs, *, channel_axis=None, axes=None):
        self._fixed = [s if isinstance(s, PatchSpec) else PatchSpec.from_dict(s) for s in specs]
        super().__init__(images, None, channel_axis=channel_axis, axes=axes)
        for i, s in enumerate(self._fixed):
            if not 0 <= s.data_idx < len(self.images):
                raise ValueError(f"specs[{i}] has data_idx={s.data_idx} but there are {len(self.images)} images")
            if len(s.start) != len(self.spatial_shapes[s.data_idx]):
                raise ValueError(f"specs[{i}] has {len(s.start)} spatial axes; image {s.data_idx} has "
                                 f"{len(self.spatial_shapes[s.data_idx])}")

    def _refresh(self):
        self._offsets = np.array([0, len(self._fixed)], dtype=np.int64)

    def indices_for(self, data_idx):
        return [i for i, s in enumerate(self._fixed) if s.data_idx == data_idx]

    def spec(self, index, epoch=None):
        return self._fixed[_check_index(index, len(self._fixed))]

    def _spec(self, data_idx, sample_idx, rng):
        return self._fixed[sample_idx]  # one list of specs: its position is the index

    def read(self, spec):
        return read_patch(self.images[spec.data_idx], spec, self.spatial_axes[spec.data_idx])


class SequentialSampler(PatchSampler):
    """Patches on a regular grid (``edge="shift"``: all full size, inside), image after image.

    Parameters
    ----------
    images, patch_size, channel_axis, axes
        As for :class:`UniformSampler`.
    overlap, step : optional
        As for :meth:`TileGrid.for_patches`.

    Examples
    --------
    >>> s = SequentialSampler(np.zeros((10, 10)), 4, overlap=1)
    >>> len(s), s.spec(1).start
    (9, (0, 3))
    """

    uses_epoch = False

    def __init__(self, images, patch_size, *, overlap=None, step=None, channel_axis=None, axes=None):
        self._grids = None
        super().__init__(images, patch_size, channel_axis=channel_axis, axes=axes)
        self._grids = [TileGrid.for_patches(im.shape, patch_size, overlap=overlap, step=step, edge="shift",
                                            channel_axis=channel_axis, axes=axes) for im in self.images]
        self._refresh()

    def _counts(self):
        return [g.n_tiles for g in self._grids] if self._grids else [0] * len(self.images)

    def _spec(self, d, s, rng):
        return self._grids[d].patch(s, data_idx=d)


class WholeSampler(PatchSampler):
    """One patch per image: the whole image.

    Examples
    --------
    >>> s = WholeSampler([np.zeros((3, 4)), np.zeros((5, 2))])
    >>> [s.spec(i).size for i in range(len(s))]
    [(3, 4), (5, 2)]
    """

    uses_epoch = False

    def __init__(self, images, *, channel_axis=None, axes=None):
        super().__init__(images, None, channel_axis=channel_axis, axes=axes)

    def _counts(self):
        return [1] * len(self.images)

    def _spec(self, d, s, rng):
        sh = self.spatial_shapes[d]
        return PatchSpec.inside((0,) * len(sh), sh, sh, data_idx=d, sample_idx=0)
