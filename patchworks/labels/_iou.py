"""One-to-one IoU matching of two label views of the same voxels.

The rule behind ``stitch="iou"``: two labels are the same object only when
each is the other's best match (highest IoU, ties to the smaller id) and
their IoU reaches the threshold. Matching is one-to-one, so a chain
A1-B1-A2 can never fuse two objects of one view. Each label's area counts
every voxel of the compared region, including where the other view is
background, so a label that also covers other labels is penalised.
"""

from __future__ import annotations

import numpy as np


def match_labels(a: np.ndarray, b: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Pairs ``(label of a, label of b)`` that are each other's best IoU match.

    ``a`` and ``b`` are two views of the same region (same shape, 0 =
    background). Returns a ``(k, 2)`` uint64 array sorted by ``a``'s label.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 2]])
    >>> b = np.array([[5, 5, 5, 7]])
    >>> match_labels(a, b).tolist()          # 1~5 (IoU 2/3); 2 and 7 share 1 of 2 voxels
    [[1, 5], [2, 7]]
    >>> match_labels(a, b, 0.6).tolist()
    [[1, 5]]
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"views differ in size: {a.size} != {b.size}")
    both = (a != 0) & (b != 0)
    if not both.any():
        return np.zeros((0, 2), np.uint64)
    la, lb, inter, area_a, area_b = overlap_counts(a, b)
    return mutual_best(la, lb, inter, area_a, area_b, iou_threshold)


def _compact(ids: np.ndarray):
    """``(distinct ids, index of each element)``: a presence table when ids are small, else a sort."""
    top = int(ids.max()) if ids.size else 0
    if top <= 4 * ids.size + 1024:
        present = np.zeros(top + 1, bool)
        present[ids] = True
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(np.uint64), rank[ids]
    return np.unique(ids, return_inverse=True)


def overlap_counts(a: np.ndarray, b: np.ndarray):
    """Overlapping label pairs of two flat views: ``(la, lb, intersection, area of la, area of lb)``.

    Areas count every voxel of each label in its own view.
    """
    ua, area_a, ub, area_b, pa, pb, inter = overlap_table(a, b)
    return ua[pa], ub[pb], inter, area_a[pa], area_b[pb]


def overlap_table(a: np.ndarray, b: np.ndarray):
    """``(ua, area_a, ub, area_b, pa, pb, inter)``: every label's area, and the overlapping pairs as indices.

    ``ua[pa[k]]`` and ``ub[pb[k]]`` overlap on ``inter[k]`` voxels; ``ua`` /
    ``ub`` may hold 0 and ids of area 0. Counting is one-dimensional (a sort
    of pairs as rows is many times slower): a table indexed by ``(la, lb)``
    when it is small, else a sort of keys.
    """
    both = (a != 0) & (b != 0)
    n_pairs = int(np.count_nonzero(both))
    top_a, top_b = (int(v.max()) if v.size else 0 for v in (a, b))
    if (top_a + 1) * (top_b + 1) <= 4 * n_pairs + 4096:  # small local ids index the table themselves
        ua, ia = np.arange(top_a + 1, dtype=np.uint64), a
        ub, ib = np.arange(top_b + 1, dtype=np.uint64), b
    else:
        (ua, ia), (ub, ib) = _compact(a), _compact(b)
    ia, ib = ia.astype(np.intp, copy=False), ib.astype(np.intp, copy=False)  # bincount's and the keys' type
    area_a = np.bincount(ia, minlength=len(ua))
    area_b = np.bincount(ib, minlength=len(ub))
    key = ia[both] * len(ub) + ib[both]
    if len(ua) * len(ub) <= 4 * key.size + 4096:
        inter = np.bincount(key, minlength=len(ua) * len(ub))
        key = np.flatnonzero(inter)
        inter = inter[key]
    else:
        key, inter = np.unique(key, return_counts=True)
    pa, pb = np.divmod(key, len(ub))
    return ua, area_a, ub, area_b, pa, pb, inter


def mutual_best(la, lb, inter, area_la, area_lb, iou_threshold: float) -> np.ndarray:
    """The matching rule on counted overlaps: pairs ``(la, lb)`` with their intersection and both areas.

    Each ``(la, lb)`` pair appears once. Returns the ``(k, 2)`` uint64
    pairs that are each other's best match (highest IoU, ties to the smaller
    id) with IoU >= ``iou_threshold``.
    """
    la = np.asarray(la, dtype=np.uint64)
    lb = np.asarray(lb, dtype=np.uint64)
    if la.size == 0:
        return np.zeros((0, 2), np.uint64)
    iou = inter / (np.asarray(area_la, dtype=np.float64) + area_lb - inter)

    def best(key, other):  # index of the best pair for each distinct key (highest IoU, then smallest other)
        order = np.lexsort((other, -iou, key))
        first = np.r_[True, key[order][1:] != key[order][:-1]]
        return order[first]

    best_of_a = np.zeros(len(la), bool)
    best_of_a[best(la, lb)] = True
    best_of_b = np.zeros(len(la), bool)
    best_of_b[best(lb, la)] = True
    keep = best_of_a & best_of_b & (iou >= iou_threshold)
    return np.stack([la[keep], lb[keep]], axis=1)


def stitch_planes(labels: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Join 2-D labels of consecutive planes (axis 0) by one-to-one IoU.

    For a 2-D segmenter run plane by plane on a stack: labels may repeat
    from plane to plane; a label of plane ``z + 1`` takes the id of its
    mutual best match in plane ``z`` when their IoU reaches the threshold,
    otherwise a new id. Returns uint32 (uint64 if needed) labels ``1..n``.

    Examples
    --------
    >>> stack = np.array([[[1, 1, 0, 2]], [[1, 1, 0, 3]], [[0, 4, 4, 4]]])
    >>> stitch_planes(stack)[:, 0].tolist()
    [[1, 1, 0, 2], [1, 1, 0, 2], [0, 3, 3, 3]]
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint64)
    next_id = 1
    for z in range(labels.shape[0]):
        plane = labels[z]
        ids = np.unique(plane[plane != 0])
        new = np.zeros(len(ids), np.uint64)
        if z and ids.size:
            pairs = match_labels(out[z - 1], plane, iou_threshold)
            pos = np.searchsorted(ids, pairs[:, 1].astype(ids.dtype))
            new[pos] = pairs[:, 0]
        fresh = new == 0
        new[fresh] = np.arange(next_id, next_id + int(fresh.sum()), dtype=np.uint64)
        next_id += int(fresh.sum())
        if ids.size:
            out[z][plane != 0] = new[np.searchsorted(ids, plane[plane != 0])]
    dtype = np.uint32 if next_id - 1 <= np.iinfo(np.uint32).max else np.uint64
    return out.astype(dtype)
