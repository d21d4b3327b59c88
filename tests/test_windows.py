"""Blending windows: formulas, positivity, validation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from patchworks import make_window, window_for_region


def test_mean_is_ones():
    w = make_window("mean", (3, 4))
    assert w.dtype == np.float32 and w.shape == (3, 4) and np.all(w == 1)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 64])
def test_hann_formula_and_separable(n):
    i = np.arange(n)
    expected = np.sin(np.pi * (i + 0.5) / n) ** 2
    np.testing.assert_allclose(make_window("hann", n), expected, rtol=1e-6)
    w2 = make_window("hann", (n, 3))
    np.testing.assert_allclose(w2, np.outer(expected, make_window("hann", 3)), rtol=1e-6)
    assert np.all(w2 > 0)  # strictly positive: no zero weight at the edges
    np.testing.assert_allclose(w2, w2[::-1, ::-1], rtol=1e-6)  # symmetric


@pytest.mark.parametrize("shape", [(1,), (7,), (8, 5), (4, 6, 9)])
def test_gaussian_formula_peak_and_floor(shape):
    w = make_window("gaussian", shape, sigma_scale=0.2, floor=1e-3)
    profiles = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (0.2 * n)) ** 2) for n in shape]
    expected = profiles[0]
    for p in profiles[1:]:
        expected = np.multiply.outer(expected, p)
    expected = np.maximum(expected / expected.max(), 1e-3)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w.dtype == np.float32 and w.max() == 1.0 and w.min() >= 1e-3


def test_gaussian_floor_binds_at_corners():
    w = make_window("gaussian", (64, 64), sigma_scale=0.125, floor=1e-3)
    assert w[0, 0] == np.float32(1e-3) and w.min() == np.float32(1e-3)


def test_user_array_validated_and_cast():
    w = make_window(np.full((2, 3), 2, dtype=np.int64), (2, 3))
    assert w.dtype == np.float32 and np.all(w == 2)
    with pytest.raises(ValueError, match=r"shape \(3, 2\); expected the full window shape \(2, 3\)"):
        make_window(np.ones((3, 2)), (2, 3))
    with pytest.raises(ValueError, match="weights <= 0"):
        make_window(np.zeros((2, 3)), (2, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_window(np.full((2, 3), np.inf), (2, 3))
    with pytest.raises(TypeError, match="numeric array"):
        make_window(np.array([["a"] * 3] * 2), (2, 3))


def test_unknown_kind_and_bad_options():
    with pytest.raises(ValueError, match=r"window='triangle' is unknown; use one of 'crop', 'mean'"):
        make_window("triangle", 4)
    with pytest.raises(ValueError, match="'crop' has no weights"):
        make_window("crop", 4)
    with pytest.raises(ValueError, match="sigma_scale=0"):
        make_window("gaussian", 4, sigma_scale=0)
    with pytest.raises(ValueError, match="floor=0"):
        make_window("gaussian", 4, floor=0)
    with pytest.raises(ValueError, match="at least 1 voxel"):
        make_window("mean", (0, 3))


def test_window_for_region_crops_the_full_window():
    full = make_window("gaussian", (6, 6))
    np.testing.assert_array_equal(window_for_region("gaussian", (6, 6), (slice(2, 6), slice(0, 3))), full[2:, :3])
    user = np.arange(1, 7, dtype=np.float32)
    np.testing.assert_array_equal(window_for_region(user, (6,), (slice(1, 3),)), [2, 3])


@pytest.mark.parametrize("kind", ["mean", "hann", "gaussian"])
def test_300_overlapping_patches_per_voxel_stay_finite_and_positive(kind):
    # a 2-D sliding window of 20x15 patches at step 1: every inner voxel is covered by 300 patches
    patch = (20, 15)
    w = make_window(kind, patch)
    image = np.full((60, 50), 3.0, np.float32)
    acc = np.zeros_like(image)
    wsum = np.zeros_like(image)
    count = np.zeros(image.shape, np.int64)
    for y in range(image.shape[0] - patch[0] + 1):
        for x in range(image.shape[1] - patch[1] + 1):
            sl = np.s_[y:y + patch[0], x:x + patch[1]]
            acc[sl] += w * image[sl]
            wsum[sl] += w
            count[sl] += 1
    assert count.max() == 300
    assert np.all(np.isfinite(wsum)) and np.all(wsum > 0)
    np.testing.assert_allclose(acc / wsum, 3.0, rtol=1e-5)  # constant back, also at the corners


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3), st.sampled_from(["mean", "hann", "gaussian"]))
def test_every_window_is_positive_finite_float32(shape, kind):
    w = make_window(kind, tuple(shape))
    assert w.shape == tuple(shape) and w.dtype == np.float32
    assert np.all(np.isfinite(w)) and np.all(w > 0) and w.max() <= 1
