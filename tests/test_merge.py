"""The merge plan: union-find over boundary labels only, small per-tile plans."""

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from patchworks.labels._merge import apply_lut, plan_relabel, unique_pairs


def _direct_final_ids(counts, pairs, sequential):
    """Oracle: a full table over every global id, built the obvious way."""
    total = int(np.sum(counts))
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(total + 1, total + 1))
    _, comp = connected_components(graph, directed=False)
    ids = np.arange(total + 1)
    root = np.array([ids[comp == comp[g]].min() for g in ids])
    if sequential:
        survivors = np.unique(root[1:])
        return np.r_[0, np.searchsorted(survivors, root[1:]) + 1]
    return np.r_[0, root[1:]]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.data(), st.booleans())
def test_plan_matches_a_full_table(counts, data, sequential):
    total = sum(counts)
    if total:
        pairs = np.array(data.draw(st.lists(st.tuples(st.integers(1, total), st.integers(1, total)), max_size=8)),
                         dtype=np.uint64).reshape(-1, 2)
    else:
        pairs = np.zeros((0, 2), np.uint64)
    plan = plan_relabel(counts, pairs, sequential=sequential)
    expected = _direct_final_ids(counts, pairs.astype(np.int64), sequential)
    got = np.concatenate([[0]] + [t.lookup(np.uint64)[1:] for t in plan.tiles]).astype(np.int64)
    np.testing.assert_array_equal(got, expected)
    assert plan.n_objects == len(np.unique(expected[1:]))
    assert plan.max_label == (expected.max() if total else 0)
    # apply() (the sort path) agrees with the look-up table path
    for t in plan.tiles:
        local = np.arange(t.n_labels + 1, dtype=np.uint32)
        np.testing.assert_array_equal(t.apply(local[:1].repeat(0), np.uint64), [])
        np.testing.assert_array_equal(t.apply(local, np.uint64), t.lookup(np.uint64))


def test_driver_memory_follows_boundary_labels_not_the_largest_id():
    """10**8 labels in 100 tiles, 300 of them on seams: the plan stays tiny."""
    counts = np.full(100, 10**6)
    rng = np.random.default_rng(0)
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    a = rng.integers(0, 99, 300)
    pairs = np.stack([offsets[a] + rng.integers(1, 10**6, 300), offsets[a + 1] + rng.integers(1, 10**6, 300)],
                     axis=1).astype(np.uint64)
    for sequential in (False, True):
        tracemalloc.start()
        plan = plan_relabel(counts, pairs, sequential=sequential)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert plan.n_objects == 10**8 - len(np.unique(pairs)) + len(
            np.unique(connected_components(_pairs_graph(pairs), directed=False)[1]))
        assert peak < 5 * 2**20, f"driver used {peak / 2**20:.1f} MiB for 10**8 labels"
        # a relabel task with a small block needs only that block's ids, not 10**6 entries
        tracemalloc.start()
        block = rng.integers(0, 10**6, (32, 32)).astype(np.uint32)
        plan.tiles[50].apply(block, plan.dtype)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2**20


def _pairs_graph(pairs):
    ids, ends = np.unique(pairs, return_inverse=True)
    ends = ends.reshape(-1, 2)
    return coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(len(ids), len(ids)))


def test_dtype_is_uint32_until_the_count_needs_more():
    assert plan_relabel([10, 10], np.zeros((0, 2), np.uint64), sequential=False).dtype == np.uint32
    big = plan_relabel([2**32 - 1, 1], np.zeros((0, 2), np.uint64), sequential=False)
    assert big.dtype == np.uint64 and big.max_label == 2**32
    # joining the last label into an earlier one brings the largest id back under the limit
    joined = plan_relabel([2**32 - 1, 1], np.array([[1, 2**32]], np.uint64), sequential=False)
    assert joined.dtype == np.uint32 and joined.max_label == 2**32 - 1
    assert int(joined.tiles[1].lookup(np.uint64)[1]) == 1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=40),
       st.sampled_from([3, 2**32 - 1, 2**32, 2**64 - 1]), st.sampled_from([np.uint64, np.int64]))
def test_unique_pairs_equals_numpy_unique_rows(rows, top, dtype):
    pairs = (np.array(rows, dtype=np.uint64).reshape(-1, 2) % np.uint64(top) if top < 2**64 - 1 else
             np.array(rows, dtype=np.uint64).reshape(-1, 2))
    pairs = pairs.astype(dtype) if dtype is np.uint64 else (pairs >> np.uint64(2)).astype(np.int64)
    pairs = np.concatenate([pairs, pairs[: len(pairs) // 2]])       # duplicates
    got = unique_pairs(pairs)
    assert got.dtype == pairs.dtype
    np.testing.assert_array_equal(got, np.unique(pairs, axis=0) if len(pairs) else pairs)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 300), st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]),
       st.sampled_from([np.uint32, np.uint64, np.int64]), st.sampled_from(["C", "F", "strided", "readonly"]))
def test_apply_lut_equals_take(seed, n, ids_dtype, lut_dtype, layout):
    # fastremap's in-place path (a C-ordered copy) and np.take's fallback give lut[ids], whatever the layout
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(n, np.iinfo(ids_dtype).max) + 1, size=(6, 7, 5)).astype(ids_dtype)
    if layout == "F":
        ids = np.asfortranarray(ids)
    elif layout == "strided":
        ids = ids[::2, :, 1:]
    elif layout == "readonly":
        ids.flags.writeable = False
    lut = rng.integers(0, 2**31, size=n + 1).astype(lut_dtype)
    before = ids.copy()
    got = apply_lut(lut, ids)
    assert got.dtype == lut.dtype and got.shape == ids.shape
    np.testing.assert_array_equal(got, np.take(lut, ids))
    np.testing.assert_array_equal(ids, before)  # the ids are never written


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.integers(0, 400), st.integers(0, 10**6), st.data())
def test_a_tiles_lookup_table_is_its_final_ids(seed, n, offset, data):
    # lookup places the boundary labels by index; final_ids searches them: the same table
    from patchworks.labels._merge import TilePlan

    rng = np.random.default_rng(seed)
    k_over = data.draw(st.integers(0, n))
    k_abs = data.draw(st.integers(0, n))
    override = np.sort(rng.choice(np.arange(1, n + 1), k_over, replace=False)).astype(np.uint64)
    absorbed = np.sort(rng.choice(np.arange(offset + 1, offset + n + 1), k_abs, replace=False)).astype(np.uint64)
    plan = TilePlan(offset=offset, n_labels=n, base=int(rng.integers(0, offset + 1)), absorbed=absorbed,
                    override_local=override, override_final=rng.integers(1, 2**40, k_over).astype(np.uint64))
    np.testing.assert_array_equal(plan.lookup(np.uint64), plan.final_ids(np.arange(n + 1)))
