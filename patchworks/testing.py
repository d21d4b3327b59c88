"""Helpers for testing tile functions and tiled results (public).

``assert_labels_equivalent`` compares two label images up to renaming: the
check every tiled-versus-whole-image test in this project, and in yours,
should use.

Ground truth for instance segmentation: ``dense_tissue`` makes a label image
of touching cells, ``TissueOracle`` is a tile function that "segments" such an
image perfectly (or with noise near the window edge) under tile-local ids, and
``stitching_errors`` scores a stitched result against the truth.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["StitchingErrors", "TissueOracle", "assert_labels_equivalent", "dense_tissue", "label_mismatches",
           "largest_cell_extent", "noisy_planes", "pairwise_planes", "random_blobs", "separated_nuclei", "stitching_errors",
           "write_ome_zarr"]


def label_mismatches(a, b) -> dict:
    """Compare two label images up to renaming.

    Returns a dict with ``background`` (voxels that are 0 in one and not in
    the other), ``merged`` (labels of ``a`` that map to several labels of
    ``b``... i.e. ``a`` split in ``b``) and ``split`` the other way round,
    each a list of example ids.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} != {b.shape}")
    fa, fb = a != 0, b != 0
    background = int(np.count_nonzero(fa != fb))
    both = fa & fb
    pairs = np.unique(np.stack([a[both].astype(np.uint64), b[both].astype(np.uint64)]), axis=1)
    ua, ca = np.unique(pairs[0], return_counts=True)
    ub, cb = np.unique(pairs[1], return_counts=True)
    return {
        "background": background,
        "split_in_b": ua[ca > 1][:10].tolist(),   # one label of a -> several of b
        "merged_in_b": ub[cb > 1][:10].tolist(),  # several labels of a -> one of b
    }


def assert_labels_equivalent(a, b) -> None:
    """Assert that ``a`` and ``b`` are the same partition up to renaming.

    Same shape, same background (0), and a one-to-one correspondence between
    the labels of ``a`` and those of ``b``.

    Examples
    --------
    >>> assert_labels_equivalent([[1, 1, 0, 2]], [[7, 7, 0, 3]])
    >>> assert_labels_equivalent([[1, 1, 0, 2]], [[7, 7, 0, 7]])
    Traceback (most recent call last):
    ...
    AssertionError: labels differ: several labels of a are one label in b (e.g. [7])
    """
    report = label_mismatches(a, b)
    problems = []
    if report["background"]:
        problems.append(f"{report['background']} voxels are background in one and labelled in the other")
    if report["split_in_b"]:
        problems.append(f"labels of a are split in b (e.g. {report['split_in_b']})")
    if report["merged_in_b"]:
        problems.append(f"several labels of a are one label in b (e.g. {report['merged_in_b']})")
    if problems:
        raise AssertionError("labels differ: " + "; ".join(problems))


def random_blobs(shape, *, density: float = 0.3, sigma: float = 2.0, seed: int = 0,
                 dtype=np.float32) -> np.ndarray:
    """Smooth random image whose ``> 0.5`` mask has blobs covering about ``density``.

    Blobs of a few ``sigma`` across cross tile seams in every direction,
    which makes it a good test image for tiled labelling.

    Examples
    --------
    >>> img = random_blobs((32, 32), seed=1)
    >>> img.shape, img.dtype
    ((32, 32), dtype('float32'))
    """
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    cut = np.quantile(noise, 1 - density) if noise.size else 0.0
    # map so that the cut sits at 0.5 and values stay in [0, 1]
    scale = float(np.abs(noise - cut).max()) or 1.0
    return np.clip(0.5 + 0.5 * (noise - cut) / scale, 0, 1).astype(dtype)


# -- synthetic dense tissue ------------------------------------------------------------

_THREADS = min(4, os.cpu_count() or 1)


def dense_tissue(shape, cell_size: int = 16, *, seed: int = 0, dtype=np.uint32) -> np.ndarray:
    """Label image of touching cells: a Voronoi tessellation of random seeds.

    About one seed per ``cell_size ** ndim`` voxels, drawn uniformly (a
    Poisson process, so cell walls have no preferred position or
    orientation and tile seams see the same statistics as any other plane).
    Every voxel belongs to a cell (no background); cells are numbered
    ``1..n`` in raster order of their seeds and each is one face-connected
    component. Deterministic in ``(shape, cell_size, seed)``.

    Parameters
    ----------
    shape : tuple of int
        Image shape, any number of axes (2-D and 3-D are the usual).
    cell_size : int, default 16
        Typical cell diameter in voxels.
    seed : int, default 0
        Seed of the random seeds.
    dtype : integer dtype, default uint32
        Output dtype; must hold the number of cells.

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> cells = dense_tissue((64, 64), 8, seed=1)
    >>> cells.dtype, int(cells.min()), int(cells.max())
    (dtype('uint32'), 1, 64)
    """
    shape = _check_shape(shape)
    if isinstance(cell_size, bool) or not isinstance(cell_size, (int, np.integer)) or cell_size < 1:
        raise ValueError(f"cell_size={cell_size!r}: use an int >= 1 (the typical cell diameter in voxels)")
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    n = min(size, max(1, round(size / int(cell_size) ** len(shape))))
    if dtype.kind not in "iu" or np.iinfo(dtype).max < n:
        raise ValueError(f"dtype={dtype}: {n} cells need an integer dtype that holds {n}; use uint32 or uint64")
    if size == 0:
        return np.zeros(shape, dtype)
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(size, n, replace=False))
    seeds = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    labels = _voronoi(shape, seeds, block=int(np.clip(cell_size // 2, 2, 16)))
    _attach_strays(labels, flat)
    return labels.astype(dtype, copy=False)


def separated_nuclei(shape, radius=(5.0, 9.0), *, anisotropy=0.6, gap: int = 2, count: int | None = None,
                     seed: int = 0, dtype=np.uint32) -> np.ndarray:
    """Label image of separated ellipsoidal nuclei on a background of 0.

    Nuclei are ellipsoids whose radius along axis 0 (z) is ``anisotropy``
    times the in-plane one, as in a confocal stack of nuclei; in-plane radii
    are drawn uniformly from ``radius``. Centres are drawn uniformly and a
    nucleus is kept only when it stays at least ``gap`` voxels (measured with
    axis 0 rescaled by ``1 / anisotropy``) from every kept one, so no two
    touch. Nuclei may be cut by the image border. Numbered ``1..n`` in the
    order they were kept. Deterministic in its arguments.

    Parameters
    ----------
    shape : tuple of int
        ``(z, y, x)`` (or any ndim >= 1: axis 0 is the anisotropic one).
    radius : (float, float), default (5.0, 9.0)
        Smallest and largest in-plane radius, in voxels.
    anisotropy : float, default 0.6
        Radius along axis 0 over the in-plane radius.
    gap : int, default 2
        Least distance between two nuclei.
    count : int, optional
        Stop after this many nuclei; default: as many as fit in
        ``8 * (expected number)`` attempts (a dense packing).
    seed : int, default 0
    dtype : integer dtype, default uint32

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> nuclei = separated_nuclei((12, 48, 48), (4, 6), seed=1)
    >>> nuclei.dtype, int(nuclei.max()) == len(np.unique(nuclei)) - 1
    (dtype('uint32'), True)
    """
    shape = _check_shape(shape)
    try:
        lo, hi = (float(r) for r in radius)
    except (TypeError, ValueError):
        raise TypeError(f"radius={radius!r}: give (smallest, largest) in-plane radius, e.g. (5, 9)") from None
    if not 0 < lo <= hi:
        raise ValueError(f"radius={radius!r}: need 0 < smallest <= largest, e.g. (5, 9)")
    if not anisotropy > 0:
        raise ValueError(f"anisotropy={anisotropy!r}: use a number > 0 (z radius over in-plane radius), e.g. 0.6")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap={gap!r}: use an int >= 0 (voxels between nuclei)")
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise ValueError(f"dtype={dtype}: use an integer dtype, e.g. uint32")
    ndim = len(shape)
    scale = np.array([1.0 / anisotropy] + [1.0] * (ndim - 1))  # axis 0 rescaled: ellipsoids become balls
    size = math.prod(shape)
    ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    expected = max(1, round(size / (ball * anisotropy * ((lo + hi) / 2 + gap / 2) ** ndim)))
    wanted = expected * 4 if count is None else int(count)
    rng = np.random.default_rng(seed)
    attempts = 8 * expected if count is None else 50 * max(1, int(count))
    centres = rng.uniform(0, 1, (attempts, ndim)) * np.array(shape) - 0.5
    radii = rng.uniform(lo, hi, attempts)
    from scipy.spatial import cKDTree

    # keep each candidate unless an earlier kept one is too close: the sequential greedy choice,
    # computed in rounds over the conflict graph (a candidate with no live earlier rival is kept,
    # its later rivals die) instead of a Python loop over candidates
    c = centres * scale
    i, j = cKDTree(c).query_pairs(2 * hi + gap, output_type="ndarray").T.astype(np.intp)
    clash = np.linalg.norm(c[i] - c[j], axis=1) < radii[i] + radii[j] + gap
    i, j = np.minimum(i, j)[clash], np.maximum(i, j)[clash]
    alive = np.ones(attempts, bool)
    kept = np.zeros(attempts, bool)
    while alive.any():
        live = alive[i] & alive[j]
        i, j = i[live], j[live]  # settled rivalries drop out: later rounds are short
        blocked = np.zeros(attempts, bool)
        blocked[j] = True
        new = alive & ~blocked
        kept |= new
        alive &= ~new
        alive[j[new[i] & alive[j]]] = False
    order = np.flatnonzero(kept)[:wanted]
    kept_c, kept_r = c[order], radii[order]
    out = np.zeros(shape, dtype)
    if len(kept_r) and np.iinfo(dtype).max < len(kept_r):
        raise ValueError(f"dtype={dtype}: {len(kept_r)} nuclei need a dtype that holds them; use uint32")
    label = 0
    for c, r in zip(kept_c, kept_r):
        centre = c / scale
        half = r / scale
        box = tuple(slice(max(0, int(math.floor(m - h))), min(n, int(math.ceil(m + h)) + 1))
                    for m, h, n in zip(centre, half, shape))
        if any(b.stop <= b.start for b in box):
            continue
        grids = np.ogrid[box]
        inside = sum(((g - m) / h) ** 2 for g, m, h in zip(grids, centre, half)) <= 1
        if not inside.any():
            continue
        label += 1
        out[box][inside] = label
    return out


def largest_cell_extent(labels) -> tuple[int, ...]:
    """Largest bounding-box size of any label, per axis.

    An ``overlap`` at least this large gives every cell cut by a seam a
    complete view in the neighbouring tile.

    Examples
    --------
    >>> largest_cell_extent([[1, 1, 2], [0, 2, 2]])
    (2, 2)
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels: dtype {labels.dtype} is not an integer label image")
    import fastremap

    compact, _ = fastremap.renumber(labels, in_place=False)  # find_objects needs small ids
    boxes = [b for b in ndimage.find_objects(compact) if b is not None]
    return tuple(max((s.stop - s.start for s in (b[a] for b in boxes)), default=0) for a in range(labels.ndim))


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in np.atleast_1d(shape))
    except (TypeError, ValueError):
        raise TypeError(f"shape={shape!r}: expected a tuple of ints, e.g. (256, 256)") from None
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"shape={shape!r}: expected a non-empty tuple of ints >= 0, e.g. (256, 256)")
    return shape


def _voronoi(shape, seeds, *, block: int, chunk_voxels: int = 1 << 21) -> np.ndarray:
    """``1 + index`` of the nearest seed of every voxel (ties to the lower index), uint32.

    The image is cut into blocks of ``block`` voxels per axis; a k-d tree gives
    each block every seed that can be nearest to one of its voxels (within
    ``d1 + 2 rho`` of the block centre, ``d1`` the nearest seed's distance,
    ``rho`` the block's half diagonal), and blocks with the same number of
    candidates are solved together with integer arithmetic: one add and one
    minimum over the block's voxels per candidate. Several times faster and
    lighter than an EDT feature transform, and exact.
    """
    from scipy.spatial import cKDTree

    ndim, b = len(shape), block
    nb = tuple(-(-s // b) for s in shape)
    padded = np.empty(tuple(n * b for n in nb), np.uint32)
    # (blocks..., voxels in block...) view of the padded output: writes land in place
    view = padded.reshape([x for n in nb for x in (n, b)]).transpose(
        [*range(0, 2 * ndim, 2), *range(1, 2 * ndim, 2)])
    origins = np.stack(np.meshgrid(*[np.arange(n) * b for n in nb], indexing="ij"), -1).reshape(-1, ndim)
    rho = b * math.sqrt(ndim) / 2
    tree = cKDTree(seeds)
    k = min(8, len(seeds))
    dist, idx = (a.reshape(len(origins), -1) for a in tree.query(origins + (b - 1) / 2, k=k, workers=-1))
    while True:  # rare blocks with more candidates than asked for: ask again with more
        n_cand = np.count_nonzero(dist <= dist[:, :1] + 2 * rho + 1e-6, axis=1)
        full = n_cand == k
        if k == len(seeds) or not full.any():
            break
        k = min(2 * k, len(seeds))
        dist = np.pad(dist, ((0, 0), (0, k - dist.shape[1])), constant_values=np.inf)
        idx = np.pad(idx, ((0, 0), (0, k - idx.shape[1])))
        more = tree.query(origins[full] + (b - 1) / 2, k=k, workers=-1)
        dist[full], idx[full] = more

    jobs = []
    for kk in np.unique(n_cand):
        sel = np.flatnonzero(n_cand == kk)
        cand = np.sort(idx[sel, :kk], axis=1)  # by seed index: ties go to the lower index
        step = max(1, chunk_voxels // b ** ndim)
        jobs += [(sel[i:i + step], cand[i:i + step], float(dist[sel[i:i + step], kk - 1].max()))
                 for i in range(0, len(sel), step)]

    def solve(job):
        blocks, cand, reach = job
        kk = cand.shape[1]
        shift = max(1, (kk - 1).bit_length())  # key = squared distance << shift | candidate rank
        top = ndim * (int(reach + rho) + b + 1) ** 2
        dt = np.int32 if (top << shift) + kk < 2**31 else np.int64
        o = origins[blocks]
        ar = np.arange(b, dtype=dt)
        best = tmp = None
        for j in range(kk):
            s = seeds[cand[:, j]]
            acc = None
            for a in range(ndim):
                t = (o[:, a] - s[:, a]).astype(dt)[:, None] + ar
                t = (t * t) << dt(shift)
                if a == 0 and j:
                    t += dt(j)
                t = t.reshape((len(blocks),) + tuple(b if c == a else 1 for c in range(ndim)))
                acc = t if acc is None else acc + t  # full size only on the last axis
            if best is None:
                best = np.array(np.broadcast_to(acc, (len(blocks),) + (b,) * ndim))
                tmp = np.empty_like(best)
            else:
                np.copyto(tmp, acc)
                np.minimum(best, tmp, out=best)
        best &= dt((1 << shift) - 1)
        ids = (cand + 1).astype(np.uint32)
        out = np.take_along_axis(ids, best.reshape(len(blocks), -1), axis=1)
        view[np.unravel_index(blocks, nb)] = out.reshape(best.shape)

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:  # numpy releases the GIL in these loops
        list(pool.map(solve, jobs))
    if padded.shape == tuple(shape):
        return padded
    return np.ascontiguousarray(padded[tuple(slice(0, s) for s in shape)])


def _attach_strays(labels: np.ndarray, seed_flat: np.ndarray) -> None:
    """Make every cell one face-connected component, in place.

    A digital Voronoi cell can leave a few voxels cut off from the seed's
    component (thin corners, ties). Such stray voxels take the label of a
    face neighbour that is already attached to its seed, trying the axes in
    order, until none is left: deterministic, and the result stays connected.
    """
    import cc3d

    ndim = labels.ndim
    if ndim in (2, 3):
        comp, n_comp = cc3d.connected_components(labels, connectivity=2 * ndim, return_N=True, out_dtype=np.uint32)
    else:
        comp, n_comp = _label_faces(labels)
    if n_comp == len(seed_flat):
        return
    attached = np.zeros(n_comp + 1, bool)
    attached[comp.reshape(-1)[seed_flat]] = True
    detached = ~attached
    rows = max(1, len(labels) // 8)

    def strays(r0):  # row blocks on threads: this gather over the whole image is most of the cost
        found = np.nonzero(detached[comp[r0:r0 + rows]])
        return np.stack((found[0] + r0, *found[1:]), axis=1)

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        pending = np.concatenate(list(pool.map(strays, range(0, len(labels), rows))))
    steps = [np.eye(ndim, dtype=np.int64)[a] * sign for a in range(ndim) for sign in (-1, 1)]
    while len(pending):
        done = np.zeros(len(pending), bool)
        for step in steps:
            nbr = pending + step
            ok = ~done & np.all((nbr >= 0) & (nbr < labels.shape), axis=1)
            src, dst = tuple(nbr[ok].T), tuple(pending[ok].T)
            good = attached[comp[src]]
            src = tuple(c[good] for c in src)
            dst = tuple(c[good] for c in dst)
            labels[dst] = labels[src]
            comp[dst] = comp[src]
            done[np.flatnonzero(ok)[good]] = True
        if not done.any():  # cannot happen while any voxel is attached; guard against a loop
            raise RuntimeError("dense_tissue: stray voxels with no attached neighbour")
        pending = pending[~done]


def _label_faces(labels):
    """Face-connected components of a multi-label image of any ndim (cc3d covers 2-D and 3-D)."""
    comp = np.zeros(labels.shape, np.uint32)
    n = 0
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    for value in np.unique(labels):
        lab, k = ndimage.label(labels == value, structure)
        comp[lab > 0] = lab[lab > 0] + n
        n += k
    return comp, n


# -- a plane-by-plane segmenter's mistakes -------------------------------------------------


def noisy_planes(labels, *, jitter: float = 2.0, missing: float = 0.05, split: float = 0.02, fuse: float = 0.02,
                 seed: int = 0) -> np.ndarray:
    """What a 2-D segmenter run plane by plane might make of the truth ``labels`` (axis 0 = planes).

    Each plane on its own, as a 2-D model sees it:

    - ``jitter``: every wall moves by up to about this many pixels (a smooth
      random displacement of the plane, a few pixels in correlation length);
    - ``missing``: this fraction of the plane's objects is not found (0);
    - ``split``: this fraction is cut in two along a random line through
      its centre (over-segmentation);
    - ``fuse``: this fraction is fused with a touching neighbour
      (under-segmentation), where it has one.

    Labels of each plane are renumbered ``1..n`` (uint32); ids carry no
    meaning from plane to plane. Deterministic in ``seed``; the input is not
    modified.

    Examples
    --------
    >>> truth = dense_tissue((4, 48, 48), 8)
    >>> noisy = noisy_planes(truth, seed=1)
    >>> noisy.shape == truth.shape, noisy.dtype
    (True, dtype('uint32'))
    """
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer label stack (planes, ...), got {labels.dtype} "
                        f"of shape {labels.shape}")
    for name, value in (("missing", missing), ("split", split), ("fuse", fuse)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value!r}: use a fraction in [0, 1]")
    if not jitter >= 0:
        raise ValueError(f"jitter={jitter!r}: use a number of pixels >= 0")
    out = np.zeros(labels.shape, np.uint32)
    for z in range(labels.shape[0]):
        rng = np.random.default_rng([seed, z])
        out[z] = _noisy_plane(labels[z], rng, jitter, missing, split, fuse)
    return out


def _noisy_plane(plane, rng, jitter, missing, split, fuse):
    import fastremap

    plane = np.asarray(plane)
    if jitter > 0:  # smooth displacement: walls wobble, objects keep their shape
        sigma = 3.0
        grids = np.indices(plane.shape, dtype=np.float32)
        for g in grids:
            field = ndimage.gaussian_filter(rng.standard_normal(plane.shape).astype(np.float32), sigma)
            g += field * (jitter / (float(np.abs(field).max()) or 1.0))
        coords = [np.clip(np.rint(g), 0, n - 1).astype(np.intp) for g, n in zip(grids, plane.shape)]
        plane = plane[tuple(coords)]
    else:
        plane = plane.copy()
    ids = fastremap.unique(plane)
    ids = ids[ids != 0]
    if not ids.size:
        return np.zeros(plane.shape, np.uint32)
    plane, _ = fastremap.renumber(plane, in_place=False)
    plane = plane.astype(np.int64)
    n = int(plane.max())
    fate = rng.random(n + 1)
    lut = np.arange(n + 1)
    lut[1:][fate[1:] < missing] = 0
    fused = (fate >= missing) & (fate < missing + fuse)
    fused[0] = False
    if fused.any():  # fuse with a touching neighbour: the first different label to the right or below
        for axis in range(plane.ndim):
            a = np.take(plane, range(plane.shape[axis] - 1), axis=axis).ravel()
            b = np.take(plane, range(1, plane.shape[axis]), axis=axis).ravel()
            touch = (a != b) & (a != 0) & (b != 0) & fused[a]
            if touch.any():
                first = np.unique(a[touch], return_index=True)
                for src, k in zip(*first):
                    if lut[src] == src and lut[b[touch][k]] == b[touch][k]:
                        lut[src] = b[touch][k]
    plane = lut[plane]
    cut = (fate >= missing + fuse) & (fate < missing + fuse + split)
    cut[0] = False
    cut_ids = np.flatnonzero(cut & (lut == np.arange(n + 1)))
    if cut_ids.size:
        centres = ndimage.center_of_mass(np.ones(plane.shape), plane, cut_ids)
        angles = rng.uniform(0, np.pi, len(cut_ids))
        where = np.isin(plane, cut_ids)
        pos = np.nonzero(where)
        k = np.searchsorted(cut_ids, plane[pos])
        c = np.asarray(centres).reshape(len(cut_ids), -1)
        side = (pos[-2] - c[k, -2]) * np.cos(angles[k]) + (pos[-1] - c[k, -1]) * np.sin(angles[k]) > 0
        plane[tuple(p[side] for p in pos)] += n + 1  # the other half: a new id
    plane, _ = fastremap.renumber(plane, in_place=False)
    return plane.astype(np.uint32, copy=False)


# -- a perfect (or edge-noisy) segmenter of the ground truth ------------------------------


@dataclass(frozen=True)
class TissueOracle:
    """Tile function that segments a ground-truth label image under tile-local ids.

    Give it the truth itself as the image (e.g. :func:`dense_tissue`): each
    window comes back with its labels renumbered ``1..n`` in a shuffled,
    window-dependent order (ids differ from the truth ids wherever that is
    possible), as uint32; 0 stays 0. So stitching must discover which tile
    labels are the same cell, exactly as with a real segmenter.

    ``noise`` imitates a segmenter that is unsure near the window edge, where
    it lacks context and where neighbouring tiles compare their views: every
    voxel within ``noise_width`` (default ``noise``) of a face of the window
    takes the label of a random voxel at most ``noise`` voxels away on each
    axis, so cell walls there move by up to ``noise`` voxels. Axes on which
    the window is one voxel thick have no face to be near.

    Calls are deterministic per window content (seeded by a hash of the
    window and ``seed``), so a retried tile gives the same answer; frozen and
    picklable for clusters.

    Parameters
    ----------
    noise : int, default 0
        Largest displacement of a wall, in voxels; 0 = exact.
    noise_width : int, optional
        Depth of the noisy frame along each face; default ``noise``.
    seed : int, default 0
        Changes the shuffles and the noise.

    Examples
    --------
    >>> import pickle
    >>> truth = np.array([[5, 5, 9], [5, 7, 9]])
    >>> fn = TissueOracle(seed=1)
    >>> out = fn(truth)
    >>> assert_labels_equivalent(out, truth); out.dtype
    dtype('uint32')
    >>> bool((out == fn(truth)).all()), pickle.loads(pickle.dumps(fn)) == fn
    (True, True)
    """

    noise: int = 0
    noise_width: int | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("noise", "noise_width", "seed"):
            value = getattr(self, name)
            if value is None and name == "noise_width":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"TissueOracle: {name}={value!r}; use an int >= 0")

    def __call__(self, window) -> np.ndarray:
        window = np.asarray(window)
        if window.dtype.kind not in "iu":
            raise TypeError(f"TissueOracle: the window has dtype {window.dtype}; pass the ground-truth label image "
                            f"(e.g. patchworks.testing.dense_tissue(...)) as the image, not intensities")
        digest = hashlib.blake2b(repr((window.dtype.str, window.shape)).encode(), digest_size=16)
        digest.update(np.ascontiguousarray(window).data)
        rng = np.random.default_rng([self.seed, *np.frombuffer(digest.digest(), np.uint32).tolist()])
        labels = self._perturb(window, rng) if self.noise else window
        return _shuffled_renumber(labels, rng)

    def _perturb(self, window, rng):
        width = self.noise if self.noise_width is None else self.noise_width
        near = np.zeros(window.shape, bool)
        for axis, n in enumerate(window.shape):
            if n > 1:
                pos = np.arange(n)
                edge = np.minimum(pos, n - 1 - pos) < width
                near |= edge.reshape([-1 if a == axis else 1 for a in range(window.ndim)])
        where = np.nonzero(near)
        shift = rng.integers(-self.noise, self.noise + 1, size=(len(where), len(where[0])))
        source = tuple(np.clip(c + d, 0, n - 1) for c, d, n in zip(where, shift, window.shape))
        out = window.copy()
        out[where] = window[source]  # all from the clean window: no smearing along the scan order
        return out


def _shuffled_renumber(labels, rng) -> np.ndarray:
    """Non-zero labels -> ``1..n`` (uint32) in a random order; no id keeps its value if another can."""
    import fastremap

    ids = fastremap.unique(labels)
    ids = ids[ids != 0]
    new = rng.permutation(len(ids)).astype(np.uint64) + 1
    fixed = np.flatnonzero(new == ids)
    if len(fixed) > 1:  # rotate the fixed points among themselves: none stays fixed
        new[fixed] = np.roll(new[fixed], 1)
    elif len(fixed) == 1 and len(ids) > 1:
        i, j = fixed[0], (fixed[0] + 1) % len(ids)
        new[i], new[j] = new[j], new[i]
    mapping = dict(zip(ids.tolist(), new.tolist()))
    mapping[0] = 0
    return fastremap.remap(labels, mapping, preserve_missing_labels=True).astype(np.uint32, copy=False)


# -- scoring a stitched result against the truth -----------------------------------------


@dataclass(frozen=True)
class StitchingErrors:
    """How a label image differs from the ground truth (see :func:`stitching_errors`)."""

    false_merges: int
    splits: int
    mismatched_voxels: int
    n_truth: int
    n_result: int
    n_voxels: int

    @property
    def exact(self) -> bool:
        """The same partition as the truth, up to renaming."""
        return self.mismatched_voxels == 0


def stitching_errors(result, truth, *, min_overlap: float = 0.5) -> StitchingErrors:
    """Count false merges, splits and mislabelled voxels of ``result`` against ``truth``.

    A pair (truth label ``t``, result label ``r``) *counts* when their
    overlap is at least ``min_overlap`` of the smaller of the two, i.e. it is
    a real part of ``t`` or of ``r``; a few voxels of a neighbour picked up
    at a wall do not.

    - ``false_merges``: over result labels, the number of counting truth
      labels beyond the first (a result label that fuses 3 cells adds 2);
    - ``splits``: over truth labels, the number of counting result labels
      beyond the first (a cell cut in 2 adds 1);
    - ``mismatched_voxels``: voxels outside the best one-to-one matching of
      truth and result labels (greedy by overlap, largest first), including
      voxels that are background (0) in one image only. 0 exactly when both
      are the same partition up to renaming
      (:func:`assert_labels_equivalent` passes);
    - ``n_truth``, ``n_result``: distinct non-zero labels; ``n_voxels``.

    Memory and time grow with the number of label runs along the last axis,
    not with the ids or a contingency matrix (8192² in about a second).

    Examples
    --------
    >>> truth = np.array([[1, 1, 2, 2, 3, 3]])
    >>> stitching_errors([[7, 7, 7, 7, 4, 5]], truth)
    StitchingErrors(false_merges=1, splits=1, mismatched_voxels=3, n_truth=3, n_result=3, n_voxels=6)
    >>> stitching_errors([[4, 4, 5, 5, 6, 6]], truth).exact
    True
    """
    result, truth = np.asarray(result), np.asarray(truth)
    if result.shape != truth.shape:
        raise ValueError(f"result has shape {result.shape} but truth has {truth.shape}; compare images of one shape")
    for name, a in (("result", result), ("truth", truth)):
        if a.dtype.kind not in "iub":
            raise TypeError(f"{name}: dtype {a.dtype} is not an integer label image")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap={min_overlap!r}: use a fraction in (0, 1], e.g. 0.5")
    t, r, inter = _overlaps(truth, result)
    fg = (t != 0) & (r != 0)
    size_t = _sizes(t, inter)
    size_r = _sizes(r, inter)
    tf, rf, wf = t[fg], r[fg], inter[fg]
    st = size_t[1][np.searchsorted(size_t[0], tf)]
    sr = size_r[1][np.searchsorted(size_r[0], rf)]
    counts = wf >= min_overlap * np.minimum(st, sr)
    n_counting = int(counts.sum())
    matched = _greedy_matching(tf, rf, wf)
    both_background = int(inter[(t == 0) & (r == 0)].sum())
    return StitchingErrors(
        false_merges=n_counting - len(np.unique(rf[counts])),
        splits=n_counting - len(np.unique(tf[counts])),
        mismatched_voxels=int(truth.size - both_background - wf[matched].sum()),
        n_truth=int(np.count_nonzero(size_t[0])), n_result=int(np.count_nonzero(size_r[0])),
        n_voxels=int(truth.size))


def _overlaps(truth, result, block_voxels: int = 1 << 22):
    """Distinct (truth, result) label pairs with their voxel counts.

    Block by block along axis 0: runs of equal pairs along the flattened block
    (labels are piecewise constant, so runs are few), reduced per block, then
    across blocks. Memory is a few times one block plus the table of pairs.
    """
    if truth.ndim == 0:
        truth, result = truth.reshape(1), result.reshape(1)
    rows = max(1, block_voxels // max(1, math.prod(truth.shape[1:])))
    tables = []
    for r0 in range(0, len(truth), rows):
        a = truth[r0:r0 + rows].reshape(-1)
        b = result[r0:r0 + rows].reshape(-1)
        if not a.size:
            continue
        change = np.empty(a.size, bool)
        change[0] = True
        np.not_equal(a[1:], a[:-1], out=change[1:])
        change[1:] |= b[1:] != b[:-1]
        starts = np.flatnonzero(change)
        tables.append(_sum_pairs(a[starts].astype(np.uint64), b[starts].astype(np.uint64),
                                 np.diff(np.r_[starts, a.size])))
    if not tables:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return _sum_pairs(*(np.concatenate(c) for c in zip(*tables)))


def _sum_pairs(t, r, n):
    """Sum ``n`` over equal ``(t, r)``; returns the distinct pairs (sorted) and their sums."""
    if len(t) and max(int(t.max()), int(r.max())) < 2**32:
        order = np.argsort((t << np.uint64(32)) | r, kind="stable")  # one sort key: much faster
    else:
        order = np.lexsort((r, t))
    t, r, n = t[order], r[order], n[order]
    first = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (r[1:] != r[:-1])])
    return t[first], r[first], np.add.reduceat(n, first).astype(np.int64) if len(n) else n.astype(np.int64)


def _sizes(ids, inter):
    """(sorted distinct ids, voxel count of each)."""
    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv, weights=inter).astype(np.int64)


def _greedy_matching(t, r, w) -> np.ndarray:
    """Indices of a one-to-one matching of pairs, greedy by weight (ties: smaller t, then r).

    Computed as rounds of "locally dominant" pairs (each the best remaining of
    both its labels), which picks the same pairs as the greedy loop, vectorised.
    """
    if not len(w):
        return np.zeros(0, np.int64)
    _, ti = np.unique(t, return_inverse=True)
    _, ri = np.unique(r, return_inverse=True)
    priority = np.empty(len(w), np.int64)
    priority[np.lexsort((r, t, -w))] = np.arange(len(w))
    used_t = np.zeros(ti.max() + 1, bool)
    used_r = np.zeros(ri.max() + 1, bool)
    alive = np.arange(len(w))
    picked = []
    while len(alive):
        best_t = np.full(len(used_t), len(w))
        best_r = np.full(len(used_r), len(w))
        np.minimum.at(best_t, ti[alive], priority[alive])
        np.minimum.at(best_r, ri[alive], priority[alive])
        win = alive[(best_t[ti[alive]] == priority[alive]) & (best_r[ri[alive]] == priority[alive])]
        picked.append(win)
        used_t[ti[win]] = True
        used_r[ri[win]] = True
        alive = alive[~used_t[ti[alive]] & ~used_r[ri[alive]]]
    return np.concatenate(picked)


def write_ome_zarr(path, data, *, axes: str, scale=None, unit: str = "micrometer", levels: int = 2,
                   zarr_format: int = 3, chunks=None):
    """Write ``data`` as a small OME-Zarr image (NGFF 0.5 on zarr v3, 0.4 on v2) with a pyramid.

    Level ``k`` is ``data`` subsampled by ``2**k`` on y and x, as viewers and
    tools such as ome-zarr-py write it; a test image and the demo's sample.

    Parameters
    ----------
    path : path
    data : numpy array
    axes : str
        One letter per axis of ``data``, e.g. ``"czyx"``.
    scale : sequence of float, optional
        Level 0's scale per axis (1 by default); coarser levels multiply y and x.
    unit : str
        Unit of the space axes.
    levels : int
    zarr_format : {3, 2}
    chunks : tuple, optional
    """
    import zarr

    version = "0.5" if zarr_format == 3 else "0.4"
    axes = axes.lower()
    kinds = {"t": "time", "c": "channel"}
    meta_axes = [{"name": a, "type": kinds.get(a, "space"), **({"unit": unit} if a in "zyx" else {})}
                 for a in axes]
    scale = [1.0] * data.ndim if scale is None else [float(v) for v in scale]
    step = [2 if a in "yx" else 1 for a in axes]
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [v * q ** k for v, q in zip(scale, step)]}]} for k in range(levels)]
    multiscale = {"name": os.path.basename(str(path)), "axes": meta_axes, "datasets": datasets}
    attrs = ({"ome": {"version": version, "multiscales": [multiscale]}} if zarr_format == 3 else
             {"multiscales": [{"version": version, **multiscale}]})
    group = zarr.open_group(store=str(path), mode="w", zarr_format=zarr_format, attributes=attrs)
    for k in range(levels):
        level = data[tuple(slice(None, None, q ** k) for q in step)]
        extra = {"dimension_names": list(axes)} if zarr_format == 3 else {}
        array = group.create_array(str(k), shape=level.shape, dtype=level.dtype,
                                   chunks=chunks or level.shape, **extra)
        array[...] = level
    return group


def pairwise_planes(planes, threshold=0.5):
    """Join 2-D labels plane by plane with the two-plane rule (Cellpose's ``stitch3D``): the reference to beat.

    Each label of plane ``z`` takes the id of its mutual best IoU match (at
    least ``threshold``) in plane ``z - 1``, else a new id. Kept as the
    baseline for :func:`patchworks.labels._iou.stitch_planes`' tests and
    benchmark.
    """
    from patchworks.labels._iou import match_labels

    out = np.zeros(planes.shape, np.uint64)
    next_id = 1
    for z, plane in enumerate(planes):
        ids = np.unique(plane[plane != 0])
        new = np.zeros(len(ids), np.uint64)
        if z and ids.size:
            pairs = match_labels(out[z - 1], plane, threshold)
            new[np.searchsorted(ids, pairs[:, 1].astype(ids.dtype))] = pairs[:, 0]
        fresh = new == 0
        new[fresh] = np.arange(next_id, next_id + int(fresh.sum()), dtype=np.uint64)
        next_id += int(fresh.sum())
        if ids.size:
            out[z][plane != 0] = new[np.searchsorted(ids, plane[plane != 0])]
    return out
