"""Per-tile partials' fast paths against direct loops: slabs of integer images, labels beyond 16 bits, the
exact second moment past 2**53, and the staged file's round trip (any layout numpy writes)."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import patchworks.labels._table as table_mod
from _probes import assert_partials_geometry
from patchworks.io._scratch import Scratch
from patchworks.labels._table import Partials, _exact_m2, tile_partials


def python_sums(ids, image, v):
    """``(n, s, q, min, max)`` per channel of label ``v`` in Python ints."""
    out = []
    for ch in range(image.shape[0]):
        values = [int(x) for x in image[ch][ids == v]]
        out.append((len(values), sum(values), sum(x * x for x in values), min(values), max(values)))
    return out


def assert_exact(parts, ids, image, origin):
    present = assert_partials_geometry(parts, ids, origin)
    for row, v in enumerate(present):
        for ch, (n, s, q, lo, hi) in enumerate(python_sums(ids, image, v)):
            assert parts.isum[row, ch] == s
            assert parts.im2[row, ch] == (n * q - s * s) / n  # Python's int / int: correctly rounded
            assert (parts.imin[row, ch], parts.imax[row, ch]) == (lo, hi)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**16), st.sampled_from(["uint8", "int16", "uint16", "bool"]),
       st.integers(1, 30), st.booleans())
def test_integer_partials_in_slabs_are_exact(ndim, seed, dtype, slab, wide):
    """Slabs' rows combine exactly (integer sums add, boxes and extremes min/max); labels above 2**16 take the
    sort that is not a radix sort."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 9, ndim))
    ids = np.repeat(rng.integers(0, 5, shape), 2, axis=ndim - 1).astype(np.uint32)  # runs and single voxels
    if wide:
        ids *= 70_000
    if dtype == "bool":
        image = rng.random((2,) + ids.shape) > 0.5
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, (2,) + ids.shape, endpoint=True).astype(dtype)
    origin = tuple(int(o) for o in rng.integers(0, 40, ndim))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table_mod, "_SLAB_VOXELS", slab)
        parts = tile_partials(ids, int(ids.max()), origin, image)
    assert_exact(parts, ids, image, origin)


@pytest.mark.parametrize("side, seed", [(100, 1), (400, 0)])  # (voxels * 65535)^2 below 2**63 (no data check), above
def test_exact_second_moment_of_a_large_16_bit_object(side, seed):
    """n q - s^2 past 2**53 (one large object of high variance): the division still rounds once, as Python's
    (the first case came out 1 ulp off when the numerator was rounded to a float first)."""
    rng = np.random.default_rng(seed)
    ids = np.ones((side, side), np.uint32)
    ids[0, :3] = 0
    image = rng.integers(0, 65535, (1, side, side), endpoint=True).astype(np.uint16)
    n, s, q, _, _ = python_sums(ids, image, 1)[0]
    assert n * q - s * s >= 2 ** 53  # the case this test is about
    parts = tile_partials(ids, 1, (0, 0), image)
    assert parts.im2[0, 0] == (n * q - s * s) / n


def test_exact_m2_rounds_once_past_2_53():
    n = np.array([3, 7, 2])
    s = np.array([0, 10, 1])
    q = np.array([(2 ** 53 + 1) // 3, 50, 1])  # the first numerator is 2**53 + 1: as a float, 2**53
    expected = [(int(a) * int(c) - int(b) ** 2) / int(a) for a, b, c in zip(n, s, q)]
    assert _exact_m2(n, s, q).tolist() == expected
    assert _exact_m2(n, s, q, fits=True).tolist() == expected
    assert int(n[0]) * int(q[0]) - int(s[0]) ** 2 > 2 ** 53


def _partials(rng, rows, d, c):
    ints = lambda shape: rng.integers(-2 ** 62, 2 ** 62, shape, endpoint=True)  # noqa: E731
    floats = lambda: rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, 3.5], (rows, c))  # noqa: E731
    return Partials(rng.integers(0, 2 ** 64 - 1, rows, dtype=np.uint64, endpoint=True), ints(rows), ints((rows, d)),
                    ints((rows, d)), ints((rows, d)), floats(), rng.normal(size=(rows, c)), floats(), floats())


def _same(a: Partials, b: Partials):
    for f in table_mod._FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert x.tobytes() == np.ascontiguousarray(y).tobytes(), f  # bit for bit: NaNs, -0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 16), st.integers(0, 40), st.integers(1, 4), st.integers(0, 3))
def test_saved_partials_read_back_bit_for_bit(tmp_path_factory, seed, rows, d, c):
    """Written in Fortran order with a header of our own, read as views; numpy reads the file the same, and
    a file numpy wrote in C order reads back the same too."""
    scratch = Scratch(tmp_path_factory.mktemp("scratch"))
    parts = _partials(np.random.default_rng(seed), rows, d, c)
    parts.save(scratch, "p")
    _same(parts, Partials.load(scratch, "p", d, c))
    raw = scratch.get("p.npy")
    columns = np.load(io.BytesIO(raw))
    assert columns.shape == (rows, 2 + 3 * d + 4 * c) and columns.dtype == np.int64
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(columns))  # the layout this file had before
    scratch.put("c.npy", buffer.getvalue())
    _same(parts, Partials.load(scratch, "c", d, c))
    assert Partials.load(scratch, "absent", d, c) is None


@pytest.mark.parametrize("ndim, n_channels", [(2, 0), (3, 1), (3, 3)])
def test_row_bytes_is_what_to_bytes_stores_per_row(ndim, n_channels):
    from patchworks.labels._table import _read_npy

    n = 5
    parts = Partials(np.arange(1, n + 1, dtype=np.uint64), np.ones(n, np.int64),
                     *(np.ones((n, ndim), np.int64),) * 3, *(np.ones((n, n_channels)),) * 4)
    assert _read_npy(parts.to_bytes()).shape == (n, Partials.row_bytes(ndim, n_channels) // 8)
