"""The single-process planner against a direct union-find loop, on random graphs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from patchworks.labels._merge import plan_relabel


def _direct(counts, pairs, sequential):
    """Final id of every global id 1..total by a plain union-find loop (the oracle)."""
    total = int(sum(counts))
    parent = list(range(total + 1))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)  # the root stays the smallest id
    root = [find(x) for x in range(total + 1)]
    if not sequential:
        return np.array(root[1:], np.uint64)
    rank = {r: i + 1 for i, r in enumerate(sorted(set(root[1:])))}
    return np.array([rank[r] for r in root[1:]], np.uint64)


@st.composite
def graphs(draw):
    counts = draw(st.lists(st.integers(0, 6), min_size=1, max_size=20))
    total = max(sum(counts), 1)
    ends = st.integers(1, total)
    pairs = draw(st.lists(st.tuples(ends, ends), max_size=50)) if sum(counts) else []
    return np.array(counts), np.array(pairs, np.uint64).reshape(-1, 2), draw(st.booleans())


@settings(max_examples=100, deadline=None)
@given(graphs())
def test_plan_equals_a_direct_union_find(graph):
    counts, pairs, sequential = graph
    plan = plan_relabel(counts, pairs, sequential=sequential)
    got = np.concatenate([plan.tiles[t].final_ids(np.arange(1, n + 1)) for t, n in enumerate(counts)])
    want = _direct(counts, pairs, sequential)
    np.testing.assert_array_equal(got, want)
    assert plan.n_objects == len(set(want.tolist())) and plan.max_label == (want.max() if want.size else 0)
