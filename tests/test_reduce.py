"""The union-find reduction on a real LocalCluster gives the single-process planner's plan exactly."""

import numpy as np
import pytest
from scipy import ndimage
from distributed import Client, LocalCluster, get_task_stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchworks import threshold, tile_process
from patchworks.labels import _reduce
from patchworks.labels._merge import plan_relabel
from patchworks.testing import assert_labels_equivalent, random_blobs


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def _same_plan(got, want):
    assert (got.n_objects, got.max_label, got.dtype, got.n_boundary_labels) == \
        (want.n_objects, want.max_label, want.dtype, want.n_boundary_labels)
    for name in ("boundary", "boundary_final", "absorbed"):
        np.testing.assert_array_equal(getattr(got.tiles, name), getattr(want.tiles, name), err_msg=name)


def test_reduction_equals_the_planner_on_1e5_synthetic_tiles(client):
    n, block = 10**5, 1 << 14  # 7 blocks, fanout 2: a tree 4 levels deep
    reduced = _reduce.reduce_synthetic(client, n, block_tiles=block, fanout=2)
    assert reduced.depth == 4
    ids, root = reduced.gather(client)
    plan = plan_relabel(np.full(n, 100), _reduce.synthetic_pairs(n, block), sequential=False)
    np.testing.assert_array_equal(ids, plan.tiles.boundary)
    np.testing.assert_array_equal(root, plan.tiles.boundary_final)
    assert int(reduced.n_absorbed.sum()) == plan.tiles.absorbed.size


@st.composite
def graphs(draw):
    counts = draw(st.lists(st.integers(0, 6), min_size=1, max_size=24))
    total = sum(counts)
    ends = st.integers(1, max(total, 1))
    pairs = draw(st.lists(st.tuples(ends, ends), max_size=40)) if total else []
    return (np.array(counts), np.array(pairs, np.uint64).reshape(-1, 2), draw(st.integers(1, 6)),
            draw(st.integers(2, 4)), draw(st.integers(1, 4)), draw(st.booleans()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graphs())
def test_reduction_equals_the_planner_on_random_graphs(client, graph):
    counts, pairs, block_tiles, fanout, n_pieces, sequential = graph
    pieces = client.scatter([pairs[i::n_pieces] for i in range(n_pieces)])
    got = _reduce.reduce_plan(client, counts, pieces, sequential=sequential, block_tiles=block_tiles, fanout=fanout)
    _same_plan(got, plan_relabel(counts, pairs, sequential=sequential))


@pytest.mark.parametrize("sequential", [False, True])
def test_tile_process_plans_by_reduction_on_a_cluster_with_the_same_labels(tmp_path, client, monkeypatch,
                                                                           sequential):
    image = random_blobs((30, 25), seed=5, sigma=1.5)
    kw = dict(tile_shape=(6, 5), overlap=1, connectivity=2, sequential_labels=sequential)
    threaded = tile_process(image, threshold(0.5), client=False, write_to=tmp_path / "threads.zarr", **kw)
    monkeypatch.setattr(_reduce, "REDUCE_MIN_TILES", 1)
    monkeypatch.setattr(_reduce, "BLOCK_TILES", 3)  # 25 tiles: 9 blocks, a tree 3 levels deep
    with get_task_stream(client) as stream:
        reduced = tile_process(image, threshold(0.5), client=client, write_to=tmp_path / "cluster.zarr", **kw)
    names = {t["key"] if isinstance(t["key"], str) else t["key"][0] for t in stream.data}
    assert any(n.startswith("patchworks-reduce-") for n in names), "the plan was made by the reduction"
    on_cluster = reduced.compute(scheduler="threads")
    np.testing.assert_array_equal(on_cluster, threaded.compute(scheduler="threads"))  # the same ids, not just objects
    assert_labels_equivalent(on_cluster, ndimage.label(image > 0.5, structure=np.ones((3, 3)))[0])
