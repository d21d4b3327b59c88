"""Union-find over seam pairs as a tree reduction on a ``distributed`` cluster.

The single-process planner (:func:`patchworks.labels._merge.plan_relabel`)
holds every seam pair at once. Here no process does: the tiles are cut into
blocks of consecutive tiles (a block owns the global ids
``(edges[b], edges[b + 1]]``); each pair is oriented smaller id first and
belongs to the block of its smaller end.

Up the tree, each node (a block, then groups of ``fanout`` nodes) joins the
pairs whose ends are both inside it and passes up only what crosses its
boundary, with each inside end replaced by its root (the smallest id of its
component so far):

* *out-edges* ``(root, y)``: a pair that leaves the node upwards (``y``
  beyond the node's last id);
* *ports* ``(y, root, source)``: an id ``y`` of the node reached by a pair
  from below the node (``source``: the smallest such other end).

A parent joins its children's out-edges to the ports they land on; what still
crosses its own boundary goes up. The top has nothing left to pass. Down the
tree, each node turns its roots into final roots with its parent's answer for
the roots it passed up, and sends each child the answer for that child's ids.
A block ends with its boundary ids and the final root of each (the smallest
id of the whole object), exactly the single-process planner's result.
"""

from __future__ import annotations

import operator
import uuid
from dataclasses import dataclass

import numpy as np

from ._merge import MergePlan, index_pairs, plan_from, root_positions, unique_pairs

# Above this many tiles, on a distributed client, tile_process plans by this reduction instead of on the
# driver (the driver then never holds the seam pairs); measured in benchmarks/bench_planner.py.
REDUCE_MIN_TILES = 1 << 18
# Tiles per leaf block, children per node: a leaf of 2**17 synthetic tiles holds ~2.6e6 pairs (~0.3 GiB
# while it works); a fanout of 8 keeps the tree 3-4 levels deep at 10**7 tiles.
BLOCK_TILES = 1 << 17
FANOUT = 8

_EMPTY_PAIRS = np.zeros((0, 2), np.uint64)
_EMPTY = np.zeros(0, np.uint64)


def _union(labels: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ``labels`` (and the ends of ``edges``) and the root of each: the smallest id joined to it."""
    loops = np.stack([labels, labels], axis=1)  # every label a node, even one on no inner edge
    ids, ends = index_pairs(np.concatenate([edges.astype(np.uint64, copy=False), loops]))
    return ids, ids[root_positions(ids.size, ends)]


def _root_of(ids, root, x):
    return root[np.searchsorted(ids, x)]


def _unique_rows(a: np.ndarray) -> np.ndarray:
    return unique_pairs(a)


def _ports(y, r, s):
    """Ports by id, each with the smallest source that reaches it."""
    if not y.size:
        return _EMPTY, _EMPTY, _EMPTY
    order = np.lexsort((s, y))
    y, r, s = y[order], r[order], s[order]
    keep = np.concatenate(([True], y[1:] != y[:-1]))  # the smallest source comes first
    return y[keep], r[keep], s[keep]


def _concat(parts, width=None):
    parts = [p for p in parts if len(p)]
    if not parts:
        return _EMPTY_PAIRS if width == 2 else _EMPTY
    return np.concatenate(parts)


def leaf(lo: int, hi: int, parts) -> tuple:
    """A block ``(lo, hi]``: ``parts`` are ``(owned, incoming)`` pair arrays (smaller end first).

    ``owned``: pairs whose smaller end is in the block; ``incoming``: pairs
    from below the block whose larger end is in it. Returns ``(state, up)``.
    """
    owned = _concat([p[0] for p in parts], 2)
    incoming = _concat([p[1] for p in parts], 2)
    inner = owned[:, 1] <= hi
    out = owned[~inner]
    ids, root = _union(np.concatenate([out[:, 0], incoming[:, 1]]), owned[inner])
    up_out = _unique_rows(np.stack([_root_of(ids, root, out[:, 0]), out[:, 1]], axis=1))
    ports = _ports(incoming[:, 1], _root_of(ids, root, incoming[:, 1]), incoming[:, 0])
    return (ids, root), (up_out, ports)


def node(lo: int, hi: int, ups) -> tuple:
    """A node ``(lo, hi]`` over its children's messages: join what meets inside, pass up the rest."""
    out = _concat([u[0] for u in ups], 2)
    py, pr, ps = (_concat([u[1][k] for u in ups]) for k in range(3))
    order = np.argsort(py, kind="stable")  # children's ports hold distinct ids
    py, pr, ps = py[order], pr[order], ps[order]
    inside = out[:, 1] <= hi
    landing = pr[np.searchsorted(py, out[inside, 1])]
    ids, root = _union(np.concatenate([out[:, 0], pr]), np.stack([out[inside, 0], landing], axis=1))
    leave = out[~inside]
    up_out = _unique_rows(np.stack([_root_of(ids, root, leave[:, 0]), leave[:, 1]], axis=1))
    below = ps <= lo
    ports = (py[below], _root_of(ids, root, pr[below]), ps[below])
    return (ids, root), (up_out, ports)


def down(result, answer) -> tuple[np.ndarray, np.ndarray]:
    """A node's ids and their final roots, given the parent's ``(ids, final)`` for the roots it passed up."""
    ids, root = result[0]
    final = root.copy()
    if answer is not None and answer[0].size:
        keys, values = answer
        pos = np.minimum(np.searchsorted(keys, root), keys.size - 1)
        hit = keys[pos] == root
        final[hit] = values[pos[hit]]
    return ids, final


def share(resolved, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of a node's answer for one child's ids ``(lo, hi]``."""
    ids, final = resolved
    a, b = np.searchsorted(ids, [lo, hi], side="right")
    return ids[a:b], final[a:b]


def split(pairs: np.ndarray, edges: np.ndarray) -> dict:
    """One piece of pairs -> ``{block: (owned, incoming)}`` for the blocks it touches."""
    pairs = np.sort(np.asarray(pairs, dtype=np.uint64).reshape(-1, 2), axis=1)
    if not len(pairs):
        return {}
    lo_block = np.searchsorted(edges, pairs[:, 0], side="left") - 1
    hi_block = np.searchsorted(edges, pairs[:, 1], side="left") - 1
    out = {}
    for b in np.unique(np.concatenate([lo_block, hi_block])).tolist():
        out[b] = (pairs[lo_block == b], pairs[(hi_block == b) & (lo_block != b)])
    return out


def _blocks_of(parts: dict) -> list:
    return sorted(parts)


@dataclass
class Reduced:
    """The reduction's answer: per block, its boundary ids and their final roots.

    ``blocks`` are futures of ``(ids, final_root)`` left on the workers;
    ``n_absorbed`` counts, per block, the ids joined to a smaller one.
    """

    edges: np.ndarray
    blocks: list
    n_absorbed: np.ndarray
    depth: int

    def gather(self, client) -> tuple[np.ndarray, np.ndarray]:
        """All boundary ids (sorted) and their final roots, on this process."""
        parts = client.gather(self.blocks)
        return _concat([p[0] for p in parts]), _concat([p[1] for p in parts])


def _n_absorbed(resolved) -> int:
    ids, final = resolved
    return int(np.count_nonzero(ids != final))


def reduce_tree(client, edges, leaf_inputs, *, fanout: int = FANOUT, prefix: str = "patchworks-reduce",
                make_leaf=None) -> Reduced:
    """Run the reduction: ``leaf_inputs[b]`` holds futures (or values) of block ``b``'s ``parts`` for :func:`leaf`.

    The list is emptied as the leaves are submitted, so that each block's
    pairs are let go once its leaf has run. ``make_leaf(b, lo, hi)``, if
    given, submits block ``b``'s leaf itself instead (inputs made inside it).
    """
    edges = np.asarray(edges, dtype=np.uint64)
    prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"  # keys of two calls never meet
    level = []
    for b in range(len(edges) - 1):
        lo, hi = int(edges[b]), int(edges[b + 1])
        if make_leaf is not None:
            level.append(make_leaf(b, lo, hi, key=f"{prefix}-leaf-{b}"))
        else:
            level.append(client.submit(leaf, lo, hi, leaf_inputs[b], pure=False, key=f"{prefix}-leaf-{b}"))
            leaf_inputs[b] = None
    bounds = [(int(edges[b]), int(edges[b + 1])) for b in range(len(edges) - 1)]
    tree = [(level, bounds, None)]  # per level: results, bounds, children per node
    while len(level) > 1:
        groups = [range(i, min(i + fanout, len(level))) for i in range(0, len(level), fanout)]
        ups = [client.submit(operator.getitem, r, 1, pure=False) for r in level]
        d = len(tree)
        bounds = [(bounds[g[0]][0], bounds[g[-1]][1]) for g in groups]
        level = [client.submit(node, lo, hi, [ups[i] for i in g], pure=False, key=f"{prefix}-node-{d}-{j}")
                 for j, ((lo, hi), g) in enumerate(zip(bounds, groups))]
        tree.append((level, bounds, groups))
        del ups
    depth, answers = len(tree), [None]
    for d in range(len(tree) - 1, -1, -1):
        results, bounds, groups = tree[d]
        resolved = [client.submit(down, r, a, pure=False, key=f"{prefix}-down-{d}-{j}")
                    for j, (r, a) in enumerate(zip(results, answers))]
        tree[d] = None  # the up results go once their answers are made
        if d == 0:
            break
        below = tree[d - 1][1]
        answers = [None] * len(below)
        for j, g in enumerate(groups):
            for i in g:
                answers[i] = client.submit(share, resolved[j], *below[i], pure=False)
    counts = client.gather([client.submit(_n_absorbed, r, pure=False) for r in resolved])
    return Reduced(edges=edges, blocks=resolved, n_absorbed=np.asarray(counts, dtype=np.int64), depth=depth)


def block_edges(counts, block_tiles: int) -> np.ndarray:
    """Global id bounds of blocks of ``block_tiles`` consecutive tiles."""
    offsets = np.zeros(len(counts) + 1, dtype=np.uint64)
    np.cumsum(np.asarray(counts, dtype=np.uint64), out=offsets[1:])
    starts = list(range(0, len(counts), block_tiles)) + [len(counts)]
    return offsets[starts]


def reduce_pieces(client, counts, pieces, *, block_tiles: int | None = None, fanout: int | None = None,
                  prefix: str = "patchworks-reduce") -> Reduced:
    """The reduction over pairs held on the cluster: ``pieces`` are futures of ``(k, 2)`` uint64 arrays.

    Each piece is split by block on its worker; a block gathers only its own parts. The list
    is emptied (the pieces are let go once split).
    ``block_tiles`` and ``fanout`` default to the module's ``BLOCK_TILES`` and ``FANOUT``.
    """
    block_tiles, fanout = block_tiles or BLOCK_TILES, fanout or FANOUT
    edges = block_edges(counts, block_tiles)
    splits = [client.submit(split, p, edges, pure=False) for p in pieces]
    pieces.clear()  # consumed: each piece's pairs go once split
    touched = client.gather([client.submit(_blocks_of, s, pure=False) for s in splits])
    inputs = [[] for _ in range(len(edges) - 1)]
    for s, blocks in zip(splits, touched):
        for b in blocks:
            inputs[b].append(client.submit(operator.getitem, s, b, pure=False))
    del splits
    return reduce_tree(client, edges, inputs, fanout=fanout, prefix=prefix)


def finals(boundary: np.ndarray, root: np.ndarray, *, sequential: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(absorbed, final ids)`` of sorted boundary ids from their final roots (as :func:`_merge.resolve`)."""
    is_root = root == boundary
    absorbed = boundary[~is_root]
    if not sequential:
        return absorbed, root
    # a root at position i has i - (roots before it) absorbed ids below it; others take their root's id
    before = np.cumsum(is_root) - is_root
    own = boundary - (np.arange(boundary.size, dtype=np.uint64) - before.astype(np.uint64))
    final = own.copy()
    final[~is_root] = own[np.searchsorted(boundary, root[~is_root])]
    return absorbed, final


def reduce_plan(client, counts, pieces, *, sequential: bool, block_tiles: int | None = None,
                fanout: int | None = None) -> MergePlan:
    """:func:`patchworks.labels._merge.plan_relabel`'s plan, from pairs left on the cluster.

    The driver receives the boundary ids and their final ids (what the
    relabel tasks need), never the pairs.
    """
    reduced = reduce_pieces(client, counts, pieces, block_tiles=block_tiles, fanout=fanout)
    boundary, root = reduced.gather(client)
    del reduced
    absorbed, final = finals(boundary, root, sequential=sequential)
    return plan_from(counts, boundary, final, absorbed, sequential=sequential)


# ---- synthetic inputs made on the workers (benchmarks, tests): 100 labels and 20 pairs per tile ----

def synthetic_block(n_tiles: int, block_tiles: int, b: int, *, per_tile: int = 100, pairs_per_tile: int = 20,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Block ``b``'s ``(owned, incoming)`` pairs of the synthetic chain: tile ``t`` meets tile ``t + 1``.

    Random local ids; tile ``t``'s pairs come from one generator per block
    (the last tile's, which leave the block, from one of their own, so the
    next block can draw them again as its incoming pairs).
    """
    t0, t1 = b * block_tiles, min((b + 1) * block_tiles, n_tiles)

    def draw(first, stop, key):
        rng = np.random.default_rng([seed, b if key == 0 else key - 1, int(key != 0)])
        t = np.repeat(np.arange(first, stop, dtype=np.uint64), pairs_per_tile)
        lo = t * np.uint64(per_tile) + rng.integers(1, per_tile + 1, t.size).astype(np.uint64)
        hi = (t + np.uint64(1)) * np.uint64(per_tile) + rng.integers(1, per_tile + 1, t.size).astype(np.uint64)
        return np.stack([lo, hi], axis=1)

    inner = draw(t0, t1 - 1, 0) if t1 - 1 > t0 else _EMPTY_PAIRS
    owned = [inner]
    if t1 < n_tiles:  # the pairs from this block's last tile into the next block
        owned.append(draw(t1 - 1, t1, b + 1))
    incoming = draw(t0 - 1, t0, b) if b > 0 else _EMPTY_PAIRS  # drawn with block b-1's crossing generator
    return np.concatenate(owned), incoming


def _synthetic_leaf(n_tiles, block_tiles, b, lo, hi, per_tile, pairs_per_tile, seed):
    return leaf(lo, hi, [synthetic_block(n_tiles, block_tiles, b, per_tile=per_tile, pairs_per_tile=pairs_per_tile,
                                         seed=seed)])


def reduce_synthetic(client, n_tiles: int, *, block_tiles: int = BLOCK_TILES, fanout: int = FANOUT,
                     per_tile: int = 100, pairs_per_tile: int = 20, seed: int = 0) -> Reduced:
    """The reduction over synthetic pairs drawn inside the leaf tasks (the driver never holds them)."""
    n_blocks = -(-n_tiles // block_tiles)
    edges = np.minimum(np.arange(n_blocks + 1, dtype=np.uint64) * np.uint64(block_tiles), np.uint64(n_tiles))
    edges = edges * np.uint64(per_tile)

    def make_leaf(b, lo, hi, key):
        return client.submit(_synthetic_leaf, n_tiles, block_tiles, b, lo, hi, per_tile, pairs_per_tile, seed,
                             pure=False, key=key)

    return reduce_tree(client, edges, None, fanout=fanout, make_leaf=make_leaf)


def synthetic_pairs(n_tiles: int, block_tiles: int = BLOCK_TILES, **kw) -> np.ndarray:
    """All the synthetic pairs at once (for the single-process planner and tests)."""
    n_blocks = -(-n_tiles // block_tiles)
    return np.concatenate([synthetic_block(n_tiles, block_tiles, b, **kw)[0] for b in range(n_blocks)])
