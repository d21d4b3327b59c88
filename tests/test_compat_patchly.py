"""patchworks.compat.patchly against patchly's documented behaviour, with the image itself as the oracle."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from patchworks.compat.patchly import Aggregator, GridSampler, SamplingMode

MODES = [SamplingMode.SAMPLE_EDGE, SamplingMode.SAMPLE_ADAPTIVE, SamplingMode.SAMPLE_CROP,
         SamplingMode.SAMPLE_SQUEEZE]


def _box(bbox):
    return tuple(slice(int(a), int(b)) for a, b in np.asarray(bbox))


@st.composite
def cases(draw):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 14), min_size=nd, max_size=nd)))
    mode = draw(st.sampled_from(MODES))
    patch = tuple(draw(st.integers(1, s + (3 if mode is SamplingMode.SAMPLE_ADAPTIVE else 0))) for s in shape)
    step = tuple(draw(st.integers(1, p)) for p in patch)
    return shape, patch, step, mode


@settings(max_examples=150, deadline=None)
@given(cases())
@example(((4, 2, 14), (4, 2, 11), (1, 1, 1), SamplingMode.SAMPLE_ADAPTIVE))  # 88 patches over one voxel
def test_round_trip_and_bboxes_follow_the_documented_modes(case):
    shape, patch, step, mode = case
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    sampler = GridSampler(img, shape, patch, step, mode=mode)
    agg = Aggregator(sampler, output_size=shape)
    covered = np.zeros(shape, dtype=np.int64)  # patches over each voxel
    for p, bbox in sampler:
        np.testing.assert_array_equal(p, img[_box(bbox)])  # the patch is the image at its bbox
        assert np.all(bbox[:, 0] >= 0) and np.all(bbox[:, 1] <= shape)  # never outside the image
        covered[_box(bbox)] += 1
        agg.append(p, bbox)
    starts = [sorted({int(b[ax, 0]) for _, b in sampler}) for ax in range(len(shape))]
    for ax, (s, p, k) in enumerate(zip(shape, patch, step)):
        if mode is SamplingMode.SAMPLE_ADAPTIVE:  # every multiple of the step inside the image, cut at the end
            assert starts[ax] == list(range(0, s, k))
        elif mode is SamplingMode.SAMPLE_CROP:  # regular steps that fit; the rest is never sampled
            assert starts[ax] == list(range(0, s - p + 1, k))
        else:  # full-size patches reaching the end, steps never above step_size
            assert starts[ax][0] == 0 and starts[ax][-1] == s - p
            assert np.all(np.diff(starts[ax]) <= k)
            if mode is SamplingMode.SAMPLE_EDGE:
                assert starts[ax][:-1] == list(range(0, s - p, k))[:len(starts[ax]) - 1]
    if mode is not SamplingMode.SAMPLE_ADAPTIVE:
        assert all(tuple(b[:, 1] - b[:, 0]) == patch for _, b in sampler)
    out = agg.get_output()
    assert out.dtype == np.float32 and out.shape == shape
    # a sum of n float32 predictions divided by n is off by at most n/2 ulp: n = 88 at (4, 2, 14) in
    # (4, 2, 11) patches with steps of 1 gave 1.01e-6, past a flat 1e-6
    rtol = max(1e-6, int(covered.max()) * float(np.finfo(np.float32).eps))
    np.testing.assert_allclose(out, np.where(covered > 0, img, 0), rtol=rtol)
    assert covered.all() or mode is SamplingMode.SAMPLE_CROP


def test_adaptive_last_patch_is_smaller():
    # patchly's adaptive mode: all patches as asked except the last, which is cut to fit
    img = np.arange(10 * 7).reshape(10, 7)
    s = GridSampler(img, (10, 7), (4, 3), step_size=(4, 3), mode=SamplingMode.SAMPLE_ADAPTIVE)
    assert [b.tolist() for _, b in s][-3:] == [[[8, 10], [0, 3]], [[8, 10], [3, 6]], [[8, 10], [6, 7]]]
    assert len(s) == 3 * 3
    # blended weights work on the smaller patches too (a window of their own size)
    agg = Aggregator(s, output_size=(10, 7), weights="gaussian")
    for p, b in s:
        agg.append(p, b)
    np.testing.assert_allclose(agg.get_output(), img, rtol=1e-6)


def test_readme_example_channels_batch_and_classes():
    # the README's loop: (H, W, 3) image, a model giving (B, 8, h, w), aggregator spatial_first=False
    rng = np.random.default_rng(1)
    image = rng.random((40, 36, 3)).astype(np.float32)
    sampler = GridSampler(image=image, spatial_size=(40, 36), patch_size=(10, 12), patch_offset=(5, 6))
    aggregator = Aggregator(sampler=sampler, output_size=(8, 40, 36), spatial_first=False, has_batch_dim=True)
    weights = rng.random((8, 3)).astype(np.float32)
    expected = np.einsum("kc,yxc->kyx", weights, image)  # a per-pixel linear "model": exact oracle
    items = [sampler[i] for i in range(len(sampler))]
    for i in range(0, len(items), 4):  # batches as a DataLoader collates them
        patches = np.stack([p.transpose(2, 0, 1) for p, _ in items[i:i + 4]])
        bboxes = np.stack([b for _, b in items[i:i + 4]])
        aggregator.append(np.einsum("kc,bcyx->bkyx", weights, patches), bboxes)
    out = aggregator.get_output()
    assert out.shape == (8, 40, 36)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_softmax_dim_gives_the_argmax_and_output_is_filled():
    rng = np.random.default_rng(2)
    scores = rng.random((4, 9, 11)).astype(np.float32)
    s = GridSampler(scores, (9, 11), (5, 5), (3, 3), spatial_first=False)
    agg = Aggregator(s, output_size=(4, 9, 11), softmax_dim=0, spatial_first=False)
    for p, b in s:
        agg.append(p, b)
    np.testing.assert_array_equal(agg.get_output(), scores.argmax(0))
    # several trailing non-spatial axes, written into a given array
    img = rng.random((9, 11, 2, 3)).astype(np.float32)
    s = GridSampler(img, (9, 11), (4, 6), (2, 5), mode=SamplingMode.SAMPLE_EDGE)
    target = np.zeros(img.shape, np.float64)
    agg = Aggregator(s, output=target)
    for p, b in s:
        agg.append(p, b)
    assert agg.get_output() is target
    np.testing.assert_allclose(target, img, rtol=1e-6)


def test_bbox_only_without_an_image_and_input_untouched():
    s = GridSampler(None, (6, 5), (3, 3))
    assert len(s) == 4 and s[0].tolist() == [[0, 3], [0, 3]]
    img = np.arange(30.0).reshape(6, 5)
    before = img.copy()
    s = GridSampler(img, (6, 5), (3, 3), mode="sample_edge")  # names work too
    agg = Aggregator(s, output_size=(6, 5))
    for p, b in s:
        p *= 0  # a careless in-place model must not reach the user's image
        agg.append(p, b)
    np.testing.assert_array_equal(img, before)


def test_errors_name_the_parameter_and_the_fix():
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match=r"spatial_size=\(8, 9\).*leading axes are \(8, 8\)"):
        GridSampler(img, (8, 9), (4, 4))
    with pytest.raises(ValueError, match="patch 10 is larger than the image.*SAMPLE_ADAPTIVE"):
        GridSampler(img, (8, 8), (10, 4))
    with pytest.raises(ValueError, match="step 5 is larger than the patch"):
        GridSampler(img, (8, 8), (4, 4), (5, 4))
    with pytest.raises(ValueError, match="PAD_UNKNOWN.*edge='pad'"):
        GridSampler(img, (8, 8), (4, 4), mode=SamplingMode.PAD_UNKNOWN)
    with pytest.raises(ValueError, match="chunk_size=.*output='out.zarr'"):
        GridSampler(img, (8, 8), (4, 4), chunk_size=(4, 4))
    with pytest.raises(ValueError, match="step_size=.*patch_offset=.*both"):
        GridSampler(img, (8, 8), (4, 4), (2, 2), patch_offset=(2, 2))
    s = GridSampler(img, (8, 8), (4, 4))
    with pytest.raises(ValueError, match=r"output_size=\(3, 8\)"):
        Aggregator(s, output_size=(3, 8))
    agg = Aggregator(s, output_size=(8, 8))
    with pytest.raises(ValueError, match="is not a patch of this sampler"):
        agg.append(np.zeros((4, 4)), np.array([[1, 5], [0, 4]]))
    agg.append(*s[0])
    with pytest.raises(RuntimeError, match="3 of 4 patches were never added"):
        agg.get_output()  # patchly would return zeros there; a missing patch here is an error


def test_torch_dataloader_loop_as_in_patchly_readme():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Dataset

    class PatchSet(Dataset):
        def __init__(self, sampler):
            self.sampler = sampler

        def __getitem__(self, idx):
            patch, bbox = self.sampler[idx]
            return patch.transpose(2, 0, 1), bbox

        def __len__(self):
            return len(self.sampler)

    image = torch.from_numpy(np.random.default_rng(4).random((30, 28, 3)).astype(np.float32))
    sampler = GridSampler(image=image, spatial_size=(30, 28), patch_size=(10, 10), patch_offset=(5, 6))
    loader = DataLoader(PatchSet(sampler), batch_size=4, num_workers=0, shuffle=True)
    aggregator = Aggregator(sampler=sampler, output_size=(3, 30, 28), spatial_first=False, has_batch_dim=True)
    with torch.no_grad():
        for patch, bbox in loader:  # collated tensors: (B, 3, 10, 10) and (B, 2, 2)
            aggregator.append(patch * 2, bbox)
    np.testing.assert_allclose(aggregator.get_output(), 2 * image.numpy().transpose(2, 0, 1), rtol=1e-6)
