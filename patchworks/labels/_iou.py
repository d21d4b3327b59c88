"""One-to-one IoU matching of two label views of the same voxels.

The rule behind ``stitch="iou"``: two labels are the same object only when
each is the other's best match (highest IoU, ties to the smaller id) and
their IoU reaches the threshold. Matching is one-to-one, so a chain
A1-B1-A2 can never fuse two objects of one view. Each label's area counts
every voxel of the compared region, including where the other view is
background, so a label that also covers other labels is penalised.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    keep = _mutual_best_mask(la, lb, inter, area_la, area_lb, iou_threshold)
    return np.stack([la[keep], lb[keep]], axis=1)


def _mutual_best_mask(la, lb, inter, area_la, area_lb, iou_threshold: float) -> np.ndarray:
    """Which of the candidate pairs :func:`mutual_best` keeps (a boolean mask)."""
    if la.size == 0:
        return np.zeros(0, bool)
    iou = inter / (np.asarray(area_la, dtype=np.float64) + area_lb - inter)

    def best(key, other):  # index of the best pair for each distinct key (highest IoU, then smallest other)
        order = np.lexsort((other, -iou, key))
        first = np.r_[True, key[order][1:] != key[order][:-1]]
        return order[first]

    best_of_a = np.zeros(len(la), bool)
    best_of_a[best(la, lb)] = True
    best_of_b = np.zeros(len(la), bool)
    best_of_b[best(lb, la)] = True
    return best_of_a & best_of_b & (iou >= iou_threshold)


# -- joining the 2-D labels of consecutive planes into 3-D objects ---------------------------

# A cross-section counts as growing (or shrinking) along z when the next one is this much larger.
_SLOPE = 0.1
# A weak link needs the smaller cross-section this much inside the larger one.
_CONTAINED = 0.5
# Cross-sections at least this fraction of each other's area: a jittered continuation, not a cap.
_SIMILAR = 0.5


_FIELDS = ("a", "b", "area_a", "area_b", "inter", "strong")


@dataclass(frozen=True)
class PlaneLinks:
    """Candidate links of one plane seam: ``a`` (lower plane) to ``b`` (upper plane), one to one.

    ``strong``: the pair passed the IoU rule; the others are weak (one
    cross-section mostly inside the other) and wait for the slope test of
    :func:`join_planes`. ``spare``: the weak candidates the assignment did
    not choose, for a second round when a chosen link is refused.
    """

    a: np.ndarray
    b: np.ndarray
    area_a: np.ndarray
    area_b: np.ndarray
    inter: np.ndarray
    strong: np.ndarray
    spare: "PlaneLinks | None" = None

    @staticmethod
    def empty() -> "PlaneLinks":
        z = np.zeros(0, np.uint64)
        return PlaneLinks(z, z, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, bool))

    def take(self, rows) -> "PlaneLinks":
        """The links ``rows`` (indices or a mask), without spares."""
        return PlaneLinks(*(getattr(self, f)[rows] for f in _FIELDS))

    def joined(self, other: "PlaneLinks") -> "PlaneLinks":
        return PlaneLinks(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in _FIELDS))


def plane_links(la, lb, inter, area_la, area_lb, iou_threshold: float) -> PlaneLinks:
    """One-to-one candidate links between the labels of two consecutive planes.

    First the IoU rule (:func:`mutual_best` at ``iou_threshold``): strong
    links. The labels left over on both sides are then paired by a maximum
    weight one-to-one assignment (:func:`_assign`) over the pairs whose
    overlap covers at least half of the smaller label: weak links, kept or
    not by :func:`join_planes`. The candidates not chosen are kept as
    ``spare``.
    """
    la = np.asarray(la, dtype=np.uint64)
    lb = np.asarray(lb, dtype=np.uint64)
    inter = np.asarray(inter, dtype=np.float64)
    area_la = np.asarray(area_la, dtype=np.float64)
    area_lb = np.asarray(area_lb, dtype=np.float64)
    if la.size == 0:
        return PlaneLinks.empty()
    strong = _mutual_best_mask(la, lb, inter, area_la, area_lb, iou_threshold)
    pick = np.flatnonzero(strong)
    # labels without a strong partner compete for weak links
    free = ~np.isin(la, la[strong]) & ~np.isin(lb, lb[strong])
    contained = inter / np.minimum(area_la, area_lb)
    cand = np.flatnonzero(free & (contained >= _CONTAINED))
    links = PlaneLinks(la, lb, area_la, area_lb, inter, strong)
    weak = cand[_assign(links.take(cand))]
    spare = np.setdiff1d(cand, weak, assume_unique=True)
    rows = np.concatenate([pick, weak])
    return PlaneLinks(*(getattr(links, f)[rows] for f in _FIELDS), spare=links.take(spare))


def _assign(cand: PlaneLinks) -> np.ndarray:
    """Indices of a maximum weight one-to-one choice among candidate pairs.

    Weight: IoU plus overlap over the smaller label.
    ``scipy.optimize.linear_sum_assignment`` per connected group of
    candidates (all groups in one problem while it stays small).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not cand.a.size:
        return np.zeros(0, np.intp)
    if _distinct(cand.a) and _distinct(cand.b):  # no label in two pairs: nothing to choose
        return np.arange(cand.a.size)
    inter = cand.inter
    weight = inter / np.minimum(cand.area_a, cand.area_b) + inter / (cand.area_a + cand.area_b - inter)
    (ua, ia), (ub, ib) = (np.unique(x, return_inverse=True) for x in (cand.a, cand.b))
    n = len(ua) + len(ub)
    graph = coo_matrix((np.ones(ia.size), (ia, ib + len(ua))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    group = comp[ia]
    single = np.bincount(group)[group] == 1           # a lone candidate pair: nothing to choose
    chosen = [np.flatnonzero(single)]
    rows = np.flatnonzero(~single)
    if rows.size:
        ra, rb = np.unique(ia[rows]), np.unique(ib[rows])
        blocks = [rows] if len(ra) * len(rb) <= 1 << 16 else \
            [rows[group[rows] == g] for g in np.unique(group[rows])]
        for block in blocks:
            (ra, ka), (rb, kb) = (np.unique(x[block], return_inverse=True) for x in (ia, ib))
            matrix = np.zeros((len(ra), len(rb)))
            matrix[ka, kb] = weight[block]
            r, c = linear_sum_assignment(matrix, maximize=True)
            hit = np.zeros((len(ra), len(rb)), bool)
            hit[r, c] = True
            chosen.append(block[hit[ka, kb]])  # cross-group cells are 0 and never candidates
    return np.sort(np.concatenate(chosen))


def _distinct(ids) -> bool:
    ids = np.sort(ids)
    return not (ids[1:] == ids[:-1]).any()


def _second_round(links: PlaneLinks, keep: np.ndarray) -> PlaneLinks:
    """The links kept, plus a fresh assignment of the spare candidates between labels left unlinked."""
    kept = links.take(keep)
    spare = links.spare
    if spare is None or not spare.a.size or keep.all():  # nothing refused: no label was freed
        return kept
    spare = spare.take(~np.isin(spare.a, kept.a) & ~np.isin(spare.b, kept.b))
    return kept.joined(spare.take(_assign(spare)))


def _partner_area(ids, links: PlaneLinks | None, side: str) -> np.ndarray:
    """Area of the partner of each id in ``links`` (``side`` = which end the ids are); 0 when none."""
    out = np.zeros(len(ids))
    if links is None or not links.a.size:
        return out
    own, other = (links.a, links.area_b) if side == "a" else (links.b, links.area_a)
    order = np.argsort(own)
    pos = np.clip(np.searchsorted(own[order], ids), 0, len(own) - 1)
    hit = own[order][pos] == ids
    out[hit] = other[order][pos[hit]]
    return out


def _belonging(links: PlaneLinks, rows, side: str) -> np.ndarray:
    """How much of the label at ``side`` of links ``rows`` lies inside its partner (ties: the higher IoU)."""
    own, other = (links.area_a, links.area_b) if side == "a" else (links.area_b, links.area_a)
    inter, own, other = links.inter[rows], own[rows], other[rows]
    return inter / own + 1e-3 * inter / (own + other - inter)


def _settle_valleys(seams: list[PlaneLinks], necks: list[np.ndarray]) -> None:
    """A label smaller than both its partners is where two objects meet: it stays with one of them.

    Both its links are necks; the one holding more of it (:func:`_belonging`) is
    kept (``necks`` is changed in place).
    """
    for s in range(len(seams) - 1):
        lower, upper = seams[s], seams[s + 1]
        down = np.flatnonzero(necks[s])
        up = np.flatnonzero(necks[s + 1])
        if not down.size or not up.size:
            continue
        shared, i, j = np.intersect1d(lower.b[down], upper.a[up], assume_unique=True, return_indices=True)
        if not shared.size:
            continue
        down, up = down[i], up[j]
        keep_down = _belonging(lower, down, "b") >= _belonging(upper, up, "a")
        necks[s][down[keep_down]] = False
        necks[s + 1][up[~keep_down]] = False


def join_planes(seams: list[PlaneLinks]) -> list[np.ndarray]:
    """Decide the candidate links of consecutive seams; the ``(k, 2)`` pairs to join, per seam.

    A link ``a`` (plane z) - ``b`` (plane z + 1) is judged with the areas of
    ``a``'s partner in plane z - 1 (``below``) and ``b``'s in z + 2
    (``above``), 0 where there is none. A convex object's cross-section
    grows then shrinks along z (Brunn-Minkowski: its square root is
    concave), so a chain of links whose areas dip and rise again is two
    objects meeting at their caps:

    - a link that shrinks into the seam from below and grows out of it
      above (by more than a margin) is a *neck* and joins nothing;
    - a label smaller than both its partners (both its links are necks)
      is the last cap of one of the two objects: it keeps the link to the
      partner that holds more of it;
    - a weak link is a cap and kept when its smaller cross-section is the
      last of its object (no partner beyond the seam), or when the larger
      one shrinks toward it (or has no partner beyond) and the smaller one
      does not grow again by more than the margin; or when the two are of
      similar size (at least half of each other: a continuation whose
      walls moved).

    Then a second round: labels whose chosen link was refused are
    assigned again among their other candidates (``spare``), and all
    links are judged again, so a cap whose larger neighbour was first
    paired with the next object's cap still finds its own object.
    """
    links = [_second_round(links, keep) for links, keep in zip(seams, _decide(seams))]
    return [np.stack([lk.a[keep], lk.b[keep]], axis=1) for lk, keep in zip(links, _decide(links))]


def _partner_index(ids, links: PlaneLinks | None, side: str) -> np.ndarray:
    """Index in ``links`` of the link holding each id at ``side``; -1 where none."""
    out = np.full(len(ids), -1, np.intp)
    if links is None or not links.a.size or not len(ids):
        return out
    own = links.a if side == "a" else links.b
    order = np.argsort(own)
    pos = np.clip(np.searchsorted(own, ids, sorter=order), 0, len(own) - 1)
    hit = own[order[pos]] == ids
    out[hit] = order[pos[hit]]
    return out


def _decide(seams: list[PlaneLinks]) -> list[np.ndarray]:
    """One round of :func:`join_planes`' judgement: which links of each seam are kept (boolean masks)."""
    grow = 1 + _SLOPE
    n = len(seams)
    # each link's neighbours: the link below its lower label, the link above its upper label
    down = [_partner_index(seams[s].a, seams[s - 1] if s else None, "b") for s in range(n)]
    up = [_partner_index(seams[s].b, seams[s + 1] if s + 1 < n else None, "a") for s in range(n)]

    def neighbours(s, skip=None):  # partner areas below and above, 0 where none (or skipped)
        below, above = np.zeros(len(down[s])), np.zeros(len(up[s]))
        for area, index, t, field in ((below, down[s], s - 1, "area_a"), (above, up[s], s + 1, "area_b")):
            hit = index >= 0
            if not hit.any():
                continue
            if skip is not None:
                hit[hit] = ~skip[t][index[hit]]
            area[hit] = getattr(seams[t], field)[index[hit]]
        return below, above

    necks = []
    for s, links in enumerate(seams):
        below, above = neighbours(s)
        necks.append((below > grow * links.area_a) & (above > grow * links.area_b))
    _settle_valleys(seams, necks)
    out = []
    for s, links in enumerate(seams):
        if not links.a.size:
            out.append(np.zeros(0, bool))
            continue
        below, above = neighbours(s, skip=necks)  # a neck joins nothing: no one's continuation
        area_a, area_b = links.area_a, links.area_b
        a_big = area_a >= area_b
        big_far = np.where(a_big, below, above)
        big = np.where(a_big, area_a, area_b)
        small_far = np.where(a_big, above, below)
        small = np.where(a_big, area_b, area_a)
        # a cap: the smaller one is the object's last cross-section, or the larger one already
        # shrinks toward it and it does not grow again (two columns one above the other do neither)
        cap = (small_far == 0) | (((big_far == 0) | (big_far > big)) & (small_far <= grow * small))
        similar = small >= _SIMILAR * big
        out.append(~necks[s] & (links.strong | cap | similar))
    return out


@dataclass(frozen=True)
class Overlaps:
    """Overlapping label pairs of two planes: ids, intersection, and each label's whole area."""

    la: np.ndarray
    lb: np.ndarray
    inter: np.ndarray
    area_a: np.ndarray
    area_b: np.ndarray

    @staticmethod
    def empty() -> "Overlaps":
        z = np.zeros(0, np.uint64)
        return Overlaps(z, z, np.zeros(0), np.zeros(0), np.zeros(0))


def hole_overlaps(lower, middle, upper, areas_lower, areas_upper) -> Overlaps:
    """:class:`Overlaps` of ``lower`` and ``upper`` (flat or not) where ``middle`` is background.

    ``areas_*``: ``(sorted ids, whole area of each)`` of that plane.
    """
    lower, upper = np.asarray(lower).ravel(), np.asarray(upper).ravel()
    hole = (np.asarray(middle).ravel() == 0) & (lower != 0) & (upper != 0)  # only these voxels can count
    a, b = lower[hole], upper[hole]
    if not a.size:
        return Overlaps.empty()
    ua, _, ub, _, pa, pb, inter = overlap_table(a, b)
    la, lb = ua[pa], ub[pb]
    return Overlaps(la, lb, inter.astype(np.float64),
                    np.asarray(areas_lower[1], np.float64)[np.searchsorted(areas_lower[0], la)],
                    np.asarray(areas_upper[1], np.float64)[np.searchsorted(areas_upper[0], lb)])


def bridge_planes(holes: list, seams: list[PlaneLinks], joined: list[np.ndarray],
                  iou_threshold: float) -> list[np.ndarray]:
    """Pairs joining an object that ends in plane z to one that starts in z + 2, across a hole.

    ``holes[z]``: overlaps of planes z and z + 2 counted only where plane
    z + 1 is background (:class:`Overlaps`), so the segmenter missed the
    object there. Only labels with no joined partner on that side take
    part (one to one stays true); they join when they are each other's
    best IoU match through the hole at ``iou_threshold`` and do not make a
    neck (:func:`join_planes`).
    """
    out = []
    for z, hole in enumerate(holes):
        if hole is None or not hole.la.size:
            out.append(np.zeros((0, 2), np.uint64))
            continue
        free = np.flatnonzero(~np.isin(hole.la, joined[z][:, 0]) & ~np.isin(hole.lb, joined[z + 1][:, 1]))
        rows = free[_mutual_best_mask(hole.la[free], hole.lb[free], hole.inter[free], hole.area_a[free],
                                      hole.area_b[free], iou_threshold)]
        pairs = np.stack([hole.la[rows], hole.lb[rows]], axis=1)
        if len(pairs):
            below = _partner_area(pairs[:, 0], seams[z - 1] if z else None, "b")
            above = _partner_area(pairs[:, 1], seams[z + 2] if z + 2 < len(seams) else None, "a")
            grow = 1 + _SLOPE
            neck = (below > grow * hole.area_a[rows]) & (above > grow * hole.area_b[rows])
            pairs = pairs[~neck]
        out.append(pairs)
    return out


def stitch_planes(labels: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Join 2-D labels of consecutive planes (axis 0) into 3-D objects.

    For a 2-D segmenter run plane by plane on a stack: labels may repeat
    from plane to plane. Consecutive planes are linked one to one
    (:func:`plane_links`: mutual best IoU >= ``iou_threshold``, then a
    maximum weight assignment of the rest by containment) and the links are
    judged over four planes (:func:`join_planes`), so an object's shrinking
    caps stay on it and two objects meeting at their caps stay apart; an
    object the segmenter missed in one plane is bridged over that hole
    (:func:`bridge_planes`).
    Returns uint32 (uint64 if needed) labels ``1..n`` numbered in order of
    first appearance (plane, then label).

    Examples
    --------
    The cap in the last plane has an IoU of 1/3 with the plane below, but
    the object shrinks toward it, so it stays on the object:

    >>> stack = np.array([[[1, 1, 1, 1, 1, 0, 0]], [[0, 5, 5, 5, 0, 0, 2]], [[0, 0, 3, 0, 0, 0, 9]]])
    >>> stitch_planes(stack)[:, 0].tolist()
    [[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 2], [0, 0, 1, 0, 0, 0, 2]]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] == 0:
        return np.zeros(labels.shape, np.uint32)
    ids, areas, offsets = [], [], [0]
    for z in range(labels.shape[0]):  # plane z's label k gets the global id offsets[z] + rank of k
        present, area = np.unique(labels[z], return_counts=True)
        keep = present != 0
        ids.append(present[keep].astype(np.uint64))
        areas.append(area[keep])
        offsets.append(offsets[-1] + len(ids[-1]))
    seams, holes = [], []
    for z in range(labels.shape[0] - 1):
        ua, area_a, ub, area_b, pa, pb, inter = overlap_table(labels[z].ravel(), labels[z + 1].ravel())
        seams.append(plane_links(ua[pa], ub[pb], inter, area_a[pa], area_b[pb], iou_threshold))
        if z + 2 < labels.shape[0]:
            holes.append(hole_overlaps(labels[z], labels[z + 1], labels[z + 2], (ids[z], areas[z]),
                                       (ids[z + 2], areas[z + 2])))
    joined = join_planes(seams)
    bridged = bridge_planes(holes, seams, joined, iou_threshold)
    edges = [np.stack([offsets[z] + np.searchsorted(ids[z], p[:, 0]),
                       offsets[z + step] + np.searchsorted(ids[z + step], p[:, 1])], axis=1)
             for step, per_seam in ((1, joined), (2, bridged)) for z, p in enumerate(per_seam) if len(p)]
    total = offsets[-1]
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(total, total))
    _, comp = connected_components(graph, directed=False)
    # components numbered by their first member: first appearance order
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    final = (np.argsort(np.argsort(first)) + 1)[inverse].astype(np.uint64)
    dtype = np.uint32 if len(first) <= np.iinfo(np.uint32).max else np.uint64
    out = np.zeros(labels.shape, dtype)
    for z in range(labels.shape[0]):
        if not len(ids[z]):
            continue
        new = final[offsets[z]:offsets[z + 1]].astype(dtype)
        if int(ids[z][-1]) <= 4 * labels[z].size:  # small ids: a look-up table
            lut = np.zeros(int(ids[z][-1]) + 1, dtype)
            lut[ids[z].astype(np.intp)] = new
            out[z] = lut[labels[z]]
        else:
            fg = labels[z] != 0
            out[z][fg] = new[np.searchsorted(ids[z], labels[z][fg])]
    return out
