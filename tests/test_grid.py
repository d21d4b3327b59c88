"""TileGrid invariants, pinned by property tests in 1-D to 4-D."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchworks import TileGrid, normalize_per_axis


@st.composite
def grids(draw, max_ndim=4):
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, 23), min_size=ndim, max_size=ndim)))
    tile = tuple(draw(st.integers(1, s + 3)) for s in shape)
    overlap = tuple(draw(st.integers(0, max(0, min(t, s) - 1))) for t, s in zip(tile, shape))
    return shape, tile, overlap


@settings(max_examples=150, deadline=None)
@given(grids())
def test_cores_partition_the_image_and_windows_contain_them(case):
    shape, tile, overlap = case
    grid = TileGrid(shape, tile, overlap)
    owner = np.zeros(shape, dtype=np.int32)
    for t in grid:
        owner[t.core] += 1
        # the window contains the core, is the core plus the halo, clipped at the edge
        for core, win, crop, h, size in zip(t.spatial_core, t.spatial_window, t.spatial_crop,
                                            grid.overlap, grid.spatial_shape):
            assert win.start == max(core.start - h, 0) and win.stop == min(core.stop + h, size)
            assert crop.start == core.start - win.start and crop.stop - crop.start == core.stop - core.start
    assert np.all(owner == 1), "every voxel belongs to exactly one core"
    assert grid.n_tiles == len(list(grid)) == int(np.prod(grid.grid_shape))


@settings(max_examples=100, deadline=None)
@given(grids())
def test_chunks_never_straddle_two_cores(case):
    shape, tile, overlap = case
    grid = TileGrid(shape, tile, overlap)
    for b, c in zip(grid.boundaries, grid.chunks):
        assert all(int(x) % c == 0 for x in b[:-1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=3))
def test_from_chunks_reproduces_irregular_blocks(chunks):
    shape = tuple(sum(c) for c in chunks)
    grid = TileGrid.from_chunks(shape, chunks)
    assert grid.grid_shape == tuple(len(c) for c in chunks)
    for t in grid:
        assert t.core_shape == tuple(c[i] for c, i in zip(chunks, t.index))
    for b, c in zip(grid.boundaries, grid.chunks):
        assert all(int(x) % c == 0 for x in b[:-1])


def test_one_voxel_thick_axis_gets_no_halo_and_is_not_regrouped():
    grid = TileGrid((5, 40, 40), tile_shape=(1, 16, 16), overlap=4)
    assert grid.overlap == (0, 4, 4)
    assert grid.grid_shape[0] == 5
    t = grid.tile((2, 1, 1))
    assert t.window[0] == slice(2, 3)


def test_channel_axis_and_axes_string_are_carried_whole():
    grid = TileGrid((3, 20, 30), tile_shape=(8, 8), overlap=2, channel_axis=0)
    assert grid.spatial_axes == (1, 2)
    t = grid.tile((1, 2))
    assert t.window[0] == slice(0, 3) and t.core[0] == slice(0, 3)
    assert t.spatial_window == (slice(6, 18), slice(14, 26))
    by_letters = TileGrid((4, 3, 20, 30), tile_shape={"y": 8, "x": 8}, axes="tcyx")
    assert by_letters.spatial_axes == (2, 3) and by_letters.tile_shape == (8, 8)


def test_tile_larger_than_image_is_clipped():
    assert TileGrid((10, 5), 64).tile_shape == (10, 5)


def test_normaliser_spellings_agree():
    assert normalize_per_axis(3, 3, "overlap") == (3, 3, 3)
    assert normalize_per_axis((1, 2, 3), 3, "overlap") == (1, 2, 3)
    assert normalize_per_axis({0: 1, -1: 3}, 3, "overlap", default=0) == (1, 0, 3)
    assert normalize_per_axis({"z": 1}, 3, "overlap", default=2, axes="zyx") == (1, 2, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tile_shape=(4, 4, 4)), r"tile_shape=\(4, 4, 4\) has 3 entries but the image has 2 spatial axes"),
    (dict(tile_shape=4, overlap=4), r"overlap=\(4, 4\).*not smaller than the tile size 4"),
    (dict(tile_shape=4, overlap=-1), r"overlap=.*negative"),
    (dict(tile_shape={"q": 3}, axes="yx"), r"unknown axis 'q'"),
    (dict(tile_shape=4, channel_axis=5), r"channel_axis=5 is out of range"),
    (dict(tile_shape=True), r"tile_shape=True"),
])
def test_geometry_errors_name_parameter_value_and_fix(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TileGrid((10, 10), **kwargs)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), tile=st.integers(1, 50), halo=st.integers(0, 60))
def test_scalar_overlap_is_clipped_where_one_tile_covers_the_axis(size, tile, halo):
    # a halo beyond the image edge is clipped to nothing; only an axis with neighbours refuses it
    has_neighbours = min(tile, size) < size
    if has_neighbours and tile > 1 and halo >= tile:
        with pytest.raises(ValueError, match=rf"overlap {halo} is not smaller than the tile size {tile}"):
            TileGrid((size, 3), (tile, 3), overlap=halo)
        return
    grid = TileGrid((size, 3), (tile, 3), overlap=halo)
    assert grid.overlap == ((halo if has_neighbours and tile > 1 else 0), 0)
    for t in grid:  # windows: core + halo clipped to the image, exactly as if no clipping happened
        lo, hi = t.spatial_core[0].start, t.spatial_core[0].stop
        h = 0 if tile == 1 else halo
        assert t.spatial_window[0] == slice(max(lo - h, 0), min(hi + h, size))


def test_single_chunk_axis_of_from_chunks_takes_any_halo():
    grid = TileGrid.from_chunks((4, 20), ((4,), (10, 10)), overlap=6)
    assert grid.overlap == (0, 6)
    with pytest.raises(ValueError, match=r"axis 1 needs 0 <= overlap < the smallest tile \(10\)"):
        TileGrid.from_chunks((4, 20), ((4,), (10, 10)), overlap=10)
