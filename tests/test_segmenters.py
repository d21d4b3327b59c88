"""Built-in scikit-image segmenters: distance-transform watershed and LoG/DoG spots."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from pathlib import Path

from patchworks import otsu, threshold, tile_process
from patchworks.segment._threshold import otsu_threshold, sample_blocks, sample_values
from patchworks.segment._instances import (LogBlobs, Watershed, estimate_diameter, log_blobs, noise_sigma, paint_balls,
                                          watershed)
from patchworks.testing import assert_labels_equivalent, label_mismatches, random_blobs

skimage = pytest.importorskip("skimage")

DATA = Path(__file__).parent / "data"


def balls(shape, centres, radius):
    """Labels of balls (discs in 2-D) of ``radius`` at ``centres``, ball i labelled i + 1; later ones on top."""
    grids = np.indices(shape)
    out = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, start=1):
        out[sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= radius ** 2] = i
    return out


def spots(shape, centres, *, sigma=1.5, amplitude=1.0, background=0.0, noise=0.0, seed=0):
    grids = np.indices(shape)
    img = np.full(shape, background, np.float64)
    for c in centres:
        img += amplitude * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * sigma ** 2))
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape)
    return img.astype(np.float32)


# ---------------------------------------------------------------------------------------- watershed


@pytest.mark.parametrize("ndim", [2, 3])
def test_two_touching_objects_split_between_their_centres(ndim):
    shape = (24, 36) if ndim == 2 else (20, 20, 32)
    mid = tuple(s // 2 for s in shape[:-1])
    a, b = mid + (10,), mid + (21,)  # radius 7, 11 apart: overlapping
    img = (balls(shape, [a, b], 7) > 0).astype(np.float32)
    labels = watershed(threshold=0.5, min_distance=3, sigma=0)(img)  # binary input: no smoothing
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[a] != labels[b]
    line = labels[mid]  # the row through both centres
    cut = np.flatnonzero(line[:-1] != line[1:])
    cut = cut[(line[cut] != 0) & (line[cut + 1] != 0)]  # the step from one object to the other
    assert len(cut) == 1 and 14 <= cut[0] <= 16  # halfway between x=10 and x=21 is 15.5
    assert np.array_equal(labels > 0, img > 0.5)


@pytest.mark.parametrize("shape, radius, step", [((60, 60), 5, 15), ((30, 30, 30), 4, 10)])
def test_separated_objects_come_out_one_label_each(shape, radius, step):
    centres = [c for c in np.ndindex(*(len(range(step // 2, s, step)) for s in shape))]
    centres = [tuple(step // 2 + step * i for i in c) for c in centres]
    truth = balls(shape, centres, radius)
    labels = watershed(threshold=0.5, min_distance=2, sigma=0)(truth > 0)
    assert labels.max() == len(centres)
    assert label_mismatches(truth, labels) == {"background": 0, "split_in_b": [], "merged_in_b": []}


def test_no_foreground_voxel_is_lost_even_without_seeds():
    img = random_blobs((64, 64), seed=4)
    mask = img > 0.5
    for fn in (watershed(0.5, sigma=0), watershed(0.5, sigma=0, exclude_border=True),
               watershed(0.5, sigma=0, min_distance=9, compactness=0.5)):
        labels = fn(img)
        assert np.array_equal(labels > 0, mask)
        # labels 1..n and never spanning two components of the mask
        assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
        components, n = ndimage.label(mask)
        assert labels.max() >= n
        assert label_mismatches(labels, components)["split_in_b"] == []
    # a disc touching the window edge has no seed with exclude_border; it is still one object
    disc = balls((20, 20), [(10, 2)], 5) > 0
    assert np.unique(watershed(0.5, sigma=0, exclude_border=True)(disc)).tolist() == [0, 1]


def test_sigma_smooths_before_thresholding():
    img = (balls((30, 30), [(15, 15)], 6) > 0).astype(np.float32)
    img[2, 2] = 1  # a one-voxel speck the Gaussian removes
    assert watershed(0.5, sigma=0)(img).max() == 2
    labels = watershed(0.5, sigma=1.0)(img)
    assert labels.max() == 1 and labels[2, 2] == 0


@pytest.mark.parametrize("shape, box", [((20, 60), (slice(6, 14), slice(5, 55))),  # a long flat ridge
                                        ((20, 20, 20), (slice(5, 15),) * 3)])       # a 2x2x2 flat top
def test_a_flat_plateau_gives_one_seed(shape, box):
    from skimage.feature import peak_local_max
    mask = np.zeros(shape, bool)
    mask[box] = True
    distance = ndimage.distance_transform_edt(mask)
    if len(shape) == 2:  # the test bites: skimage alone puts several seeds on this ridge
        assert len(peak_local_max(distance, min_distance=2, labels=mask.astype(int))) > 1
    assert np.unique(watershed(0.5, min_distance=2, sigma=0)(mask)).tolist() == [0, 1]


def test_watershed_threshold_from_the_whole_image():
    img = random_blobs((80, 80), seed=5) * 200
    fn = watershed(img)
    assert fn.threshold == otsu_threshold(sample_values(img)) and fn.ndim == 2
    assert watershed(image=img) == fn  # the keyword of earlier releases still works
    assert watershed(img, threshold=10).threshold == 10  # the image still sets ndim and the object size
    assert watershed(img, threshold=10).ndim == 2


# ---------------------------------------------------------------------------------------- spots


@pytest.mark.parametrize("method", ["log", "dog"])
@pytest.mark.parametrize("shape, centres", [
    ((48, 48), [(8, 9), (10, 35), (24, 24), (38, 12), (40, 40)]),
    ((24, 32, 32), [(6, 8, 8), (8, 24, 10), (16, 16, 24), (18, 6, 26)]),
])
def test_spots_found_at_their_centres(method, shape, centres):
    img = spots(shape, centres, noise=0.02)
    fn = log_blobs(0.1, min_sigma=1, max_sigma=3, method=method)
    found = fn.blobs(img)[:, :len(shape)]
    assert len(found) == len(centres)
    dist = np.linalg.norm(found[:, None] - np.array(centres)[None], axis=-1)
    assert np.all(dist.min(axis=0) <= 1) and np.all(dist.min(axis=1) <= 1)  # one blob per spot, within 1 voxel
    labels = fn(img)
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert sorted(int(labels[c]) for c in centres) == list(range(1, len(centres) + 1))


def test_spot_threshold_is_in_image_units_for_integer_images():
    # skimage rescales uint16 to [0, 1]; we do not, so threshold 100 means 100 grey levels
    img = (spots((32, 32), [(10, 10), (22, 20)], amplitude=1000, background=500)).astype(np.uint16)
    assert log_blobs(100)(img).max() == 2
    assert log_blobs(1000)(img).max() == 0


def test_spot_threshold_from_the_whole_image_ignores_noise():
    centres = [(10, 12), (30, 40), (50, 20), (52, 52)]
    img = spots((64, 64), centres, amplitude=50, background=100, noise=5, seed=1)
    fn = log_blobs(img)
    assert fn.threshold == pytest.approx(3 * noise_sigma([img]), rel=1e-9) and fn.ndim == 2
    assert fn.threshold == pytest.approx(3 * 5, rel=0.1)  # the noise that was added
    assert fn(img).max() == len(centres)
    with pytest.raises(ValueError, match="noise is 0 .* give threshold= a number"):
        log_blobs(np.zeros((16, 16)))


def test_noise_estimate_is_not_inflated_by_large_objects():
    # bright discs over 40 % of the image: the spread of the values is mostly the objects', not noise
    rng = np.random.default_rng(3)
    img = 20 * (balls((200, 200), [(50, 50), (50, 150), (150, 50), (150, 150)], 40) > 0)
    img = img + rng.normal(0, 2.0, img.shape)
    mad = 1.4826 * np.median(np.abs(img - np.median(img)))
    assert mad > 4  # the old estimate: more than twice the noise
    assert noise_sigma([img]) == pytest.approx(2.0, rel=0.05)
    # sampled windows of a larger image give the same answer
    big = np.tile(img, (3, 3))
    assert noise_sigma(sample_blocks(big, n_voxels=40_000, n_blocks=16)) == pytest.approx(2.0, rel=0.08)


def test_overlapping_balls_go_to_the_nearest_centre():
    labels = paint_balls((1, 20), [[0, 5], [0, 12]], [[1, 6], [1, 6]])
    assert labels[0].tolist() == [1] * 9 + [2] * 10 + [0]  # 8|9 split: 8.5 is halfway
    # a ball whose centre is outside the window paints its inside part; anisotropic radii paint ellipses
    assert paint_balls((5, 5), [[-1, 2]], 2)[:2].tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    ellipse = paint_balls((9, 9), [[4, 4]], [[1, 3]])
    assert np.flatnonzero(ellipse.any(axis=1)).tolist() == [3, 4, 5]
    assert np.flatnonzero(ellipse.any(axis=0)).tolist() == [1, 2, 3, 4, 5, 6, 7]
    # fixed radius through log_blobs: two close spots share the voxels between them by distance
    img = spots((16, 24), [(8, 8), (8, 14)])
    labels = log_blobs(0.1, min_sigma=1, max_sigma=2, radius=5)(img)
    assert labels[8, 10] == labels[8, 8] != labels[8, 12] == labels[8, 14]


# ---------------------------------------------------------------------------------------- both


def test_pickle_round_trip():
    img = (balls((24, 36), [(12, 10), (12, 21)], 7) > 0).astype(np.float32)
    for fn in (watershed(0.5, min_distance=3), log_blobs(0.1, method="dog", min_sigma=(1, 1), max_sigma=(3, 2))):
        back = pickle.loads(pickle.dumps(fn))
        assert back == fn and type(back) in (Watershed, LogBlobs)
        assert np.array_equal(back(img), fn(img))


@pytest.mark.parametrize("call, match", [
    (lambda: watershed(0.5, min_distance=-1), r"min_distance=-1: use an int >= 1"),
    (lambda: watershed(0.5, min_distance=2.5), r"min_distance=2.5: use an int >= 1"),
    (lambda: watershed(0.5, sigma=-1), r"sigma=-1.0: give a finite number >= 0"),
    (lambda: watershed(0.5, compactness=float("inf")), r"compactness=inf: give a finite number"),
    (lambda: watershed(float("nan")), r"threshold=nan: give a finite number"),
    (lambda: watershed(0.5, exclude_border=-2), r"exclude_border=-2: use False, True or an int >= 0"),
    (lambda: watershed(0.5, ndim=4), r"ndim=4: use 2 or 3"),
    (lambda: log_blobs(0.1, min_sigma=3, max_sigma=1),
     r"max_sigma=1.0 is smaller than min_sigma=3.0: give max_sigma >= min_sigma"),
    (lambda: log_blobs(0.1, min_sigma=0), r"min_sigma=0.0: give a finite number > 0"),
    (lambda: log_blobs(0.1, min_sigma=(1, 2), max_sigma=(3, 3, 3)), r"give the same number of per-axis values"),
    (lambda: log_blobs(0.1, method="doh"), r"method='doh': use 'log' \(Laplacian of Gaussian\) or 'dog'"),
    (lambda: log_blobs(0.1, num_sigma=0), r"num_sigma=0: use an int >= 1"),
    (lambda: log_blobs(0.1, method="dog", sigma_ratio=1), r"sigma_ratio=1.0: give a finite number > 1"),
    (lambda: log_blobs(0.1, overlap=2), r"overlap=2.0: use a fraction between 0 and 1"),
    (lambda: log_blobs(0.1, radius=-1), r"radius=-1.0: give a finite number > 0"),
    (lambda: log_blobs(0.1, snr="high"), r"snr='high': give a number"),
    (lambda: log_blobs(), r"log_blobs: no image and threshold=None; give the image .* log_blobs\(threshold=0.1\)"),
    (lambda: watershed(), r"watershed: no image and threshold=None; give the image .* watershed\(threshold=0.5\)"),
    (lambda: watershed(0.5, threshold=0.3), r"watershed\(0.5, threshold=0.3\): two thresholds; the first argument is "
                                            r"the image .* watershed\(image, threshold=0.3\)"),
    (lambda: log_blobs(0.1, threshold=0.2), r"log_blobs\(0.1, threshold=0.2\): two thresholds"),
    (lambda: watershed(0.5, diameter=0), r"diameter=0.0: give a finite number > 0"),
])
def test_parameter_errors_name_the_parameter_value_and_fix(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_channels_are_refused_with_a_hint(tmp_path):
    import tifffile
    window = np.zeros((2, 16, 16), np.float32)  # a channel axis in front of a 2-D image
    for fn in (watershed(0.5, ndim=2), log_blobs(0.1, ndim=2)):
        with pytest.raises(ValueError, match=r"window of shape \(2, 16, 16\) .* pick one "
                                             r"\(tile_process\(\.\.\., channel=N\)"):
            fn(window)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 16, 16\) \(4 axes\) .* single-channel 2-D or 3-D"):
        watershed(0.5)(window[None])
    with pytest.raises(ValueError, match=r"min_sigma=\(1.0, 1.0\) has 2 values but the window has 3 axes; "
                                         r"give one number or one per axis"):
        log_blobs(0.1, min_sigma=(1, 1), max_sigma=(2, 2))(np.zeros((4, 8, 8)))
    path = tmp_path / "multi.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint8), metadata={"axes": "CYX"}, ome=True)
    with pytest.raises(ValueError, match="channel axis .* choose it with channel=N"):
        watershed(image=str(path))
    assert watershed(image=str(path), channel=1).ndim == 2
    with pytest.raises(ValueError, match=r"image has shape \(2, 2, 8, 8\); .* pick a channel with channel=N"):
        log_blobs(image=np.zeros((2, 2, 8, 8)))


def test_missing_scikit_image_names_the_extra(monkeypatch):
    fn = watershed(0.5)
    for name in ("skimage", "skimage.feature", "skimage.segmentation"):
        monkeypatch.setitem(sys.modules, name, None)
    for call in (lambda: watershed(0.5), lambda: log_blobs(0.1), lambda: fn(np.zeros((4, 4)))):
        with pytest.raises(ImportError, match=r'need scikit-image: pip install "patchworks\[skimage\]"'):
            call()


def test_scikit_image_is_not_imported_with_patchworks():
    code = "import sys, patchworks, patchworks.segment._instances; print('skimage' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# ---------------------------------------------------------------------------------------- as tile functions


def test_tile_process_keeps_separated_objects_separate():
    centres = [(8, 8), (8, 30), (8, 52), (30, 19), (30, 41), (52, 8), (52, 30), (52, 52), (31, 3)]
    truth = balls((64, 64), centres, 5)
    img = (truth > 0).astype(np.float32)
    out = tile_process(img, watershed(0.5, min_distance=3, sigma=0), tile_shape=24, overlap=6, compute=True,
                       client=False)
    assert len(np.unique(out)) - 1 == len(centres)  # objects cut by seams are joined, separate ones stay separate
    assert_labels_equivalent(out, truth)
    # two touching discs inside one tile stay two
    pair = (balls((48, 48), [(12, 12), (12, 22)], 6) > 0).astype(np.float32)
    assert len(np.unique(tile_process(pair, watershed(0.5, min_distance=3), tile_shape=24, overlap=4,
                                      compute=True, client=False))) == 3


def test_tile_process_with_spots_3d():
    centres = [(5, 5, 5), (5, 20, 12), (12, 11, 20), (18, 4, 18), (18, 18, 6), (11, 12, 12)]
    img = spots((24, 24, 24), centres, sigma=1.0, noise=0.01)
    out = tile_process(img, log_blobs(0.1, min_sigma=1, max_sigma=2, num_sigma=3), tile_shape=12, overlap=4,
                       compute=True, client=False, sequential_labels=True)
    assert out.max() == len(centres)
    assert sorted(int(out[c]) for c in centres) == list(range(1, len(centres) + 1))


# ---------------------------------------------------------------------------------------- one calling convention


def test_every_builtin_takes_the_image_first(tmp_path):
    img = random_blobs((64, 64), seed=8) * 100
    path = tmp_path / "img.npy"
    np.save(path, img)
    # image first (array or path); what is not given is estimated from it once
    for make in (otsu, watershed, log_blobs):
        assert make(img) == make(str(path))
    assert threshold(img, value=50) == threshold(50) == threshold(value=50)
    # a number first is the threshold (earlier releases' convention), the same as by keyword
    assert watershed(0.5) == watershed(threshold=0.5)
    assert log_blobs(0.1) == log_blobs(threshold=0.1)
    assert watershed(np.float32(0.5)) == watershed(np.array(0.5)) == watershed(threshold=0.5)
    # what cannot be told apart is refused, naming the fix
    with pytest.raises(ValueError, match=r"threshold\(0.5, value=0.3\): two thresholds; the first argument is the "
                                         r"image .* threshold\(image, value=0.3\) or threshold\(value=0.3\)"):
        threshold(0.5, value=0.3)
    with pytest.raises(ValueError, match=r"threshold: value=None; give the cut, threshold\(image, value=0.5\), "
                                         r"or let otsu\(image\) estimate it"):
        threshold(img)
    with pytest.raises(TypeError, match=r"otsu\(image=0.5\): otsu estimates its threshold from the image, so it "
                                        r"takes the image \(array or path\) first; for a fixed value use "
                                        r"threshold\(0.5\)"):
        otsu(0.5)
    with pytest.raises(TypeError, match=r"threshold: value='high': give a number"):
        threshold(value="high")


def test_the_cli_segmenters_follow_the_convention(tmp_path, capsys):
    from patchworks.cli import main

    yy, xx = np.mgrid[:64, :64]
    img = np.zeros((64, 64), np.float32)
    for cy, cx in [(16, 16), (16, 44), (46, 30)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = 100
    img += np.random.default_rng(0).normal(0, 5, img.shape).astype(np.float32)
    path = tmp_path / "discs.npy"
    np.save(path, img)
    assert main(["label", str(path), str(tmp_path / "out.zarr"), "--method", "watershed", "--tile", "32",
                 "--overlap", "16", "--stitch", "iou", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    fn = watershed(img)
    assert f"object diameter: {fn.diameter:.3g} (estimated), min_distance: {fn.min_distance}" in printed
    assert "objects: 3" in printed
    assert main(["label", str(path), str(tmp_path / "out2.zarr"), "--method", "watershed", "--diameter", "10",
                 "--no-progress"]) == 0
    assert "object diameter: 10 (given), min_distance: 2, sigma: 0.5" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- defaults on real data


def nuclei(shape=(192, 192), *, n=40, radius=(8, 12), noise=14.0, seed=0):
    """Touching elliptic nuclei, brighter at the centre, blurred, on a noisy background: (image, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    truth = np.zeros(shape, np.int32)
    brightness = np.zeros(shape)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        cy, cx = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
        a, b = rng.uniform(*radius), rng.uniform(*radius)
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        r2 = (u / a) ** 2 + (v / b) ** 2
        inside = r2 <= 1
        if (truth[inside] > 0).mean() > 0.05:  # touching or barely overlapping, never stacked
            continue
        k += 1
        fresh = inside & (truth == 0)
        truth[fresh] = k
        brightness[fresh] = rng.uniform(60, 120) * (1 - 0.3 * r2[fresh])
    image = ndimage.gaussian_filter(brightness, 1.0) + 20 + rng.normal(0, noise, shape)
    return image.astype(np.float32), truth


def f1_at_iou(truth, labels, iou=0.5):
    """F1 of the matches with IoU above ``iou`` (each is one to one: IoU > 0.5 cannot be shared)."""
    t, p = truth.ravel().astype(np.int64), labels.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    pairs, counts = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    union = np.bincount(t)[pairs[0]] + np.bincount(p)[pairs[1]] - counts
    matched = int((counts / union > iou).sum())
    n_true, n_found = len(np.unique(t[t > 0])), len(np.unique(p[p > 0]))
    return 2 * matched / (n_true + n_found)


def test_watershed_defaults_on_noisy_touching_nuclei():
    image, truth = nuclei()
    fn = watershed(image)  # threshold, object size, min_distance and sigma all from the image
    assert 16 <= fn.diameter <= 30 and fn.sigma > 0
    labels = fn(image)
    assert f1_at_iou(truth, labels) >= 0.9
    assert abs(int(labels.max()) - int(truth.max())) <= 0.15 * truth.max()
    # the defaults of earlier releases (no smoothing) cut every nucleus into pieces
    old = watershed(image, sigma=0, min_distance=5)(image)
    assert old.max() > 3 * truth.max() and f1_at_iou(truth, old) < 0.5


def test_watershed_defaults_on_real_nuclei():
    # Kaggle Data Science Bowl 2018 nuclei (BBBC038, CC0), 256x256 crop with its 33 hand-annotated nuclei;
    # see tests/data/README.md
    data = np.load(DATA / "dsb2018_nuclei_crop.npz")
    image, truth = data["image"], data["labels"]
    labels = watershed(image)(image)
    assert f1_at_iou(truth, labels) >= 0.8
    assert abs(int(labels.max()) - 33) <= 4
    assert f1_at_iou(truth, watershed(image, sigma=0, min_distance=5)(image)) < 0.3  # earlier defaults
    # log_blobs with a scale range for nuclei (radius ~ sqrt(2) sigma): one detection per nucleus, none outside
    blobs = log_blobs(image, min_sigma=4, max_sigma=10).blobs(image)
    hit = truth[tuple(np.round(blobs[:, :2]).astype(int).T)]
    assert (hit > 0).mean() >= 0.9 and len(np.unique(hit[hit > 0])) >= 0.75 * 33
    # the earlier noise estimate (spread of the values) read the nuclei as noise: 9 of 33 found
    values = image.astype(np.float64)
    spread = 1.4826 * np.median(np.abs(values - np.median(values)))
    assert len(log_blobs(image, threshold=3 * spread, min_sigma=4, max_sigma=10).blobs(image)) < 0.5 * 33


# the 24 coins of skimage.data.coins(): centres (row, col) read off the image, checked in a rendered overlay
COINS = [(50, 45), (52, 100), (51, 155), (51, 215), (52, 276), (43, 334), (124, 45), (125, 102), (127, 153),
         (124, 205), (119, 271), (125, 337), (197, 43), (195, 102), (197, 154), (193, 212), (194, 274), (186, 348),
         (260, 46), (266, 114), (261, 172), (263, 244), (263, 301), (268, 358)]


def coins_split(labels, radius=12):
    """Coins whose central disc holds more than one label, and the number of distinct coin labels."""
    yy, xx = np.indices(labels.shape)
    split = [c for c in COINS if len(set(np.unique(labels[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius ** 2]))
                                     - {0}) != 1]
    return split, len({int(labels[c]) for c in COINS} - {0})


def test_watershed_defaults_keep_every_coin_whole():
    from skimage.data import coins

    image = coins()
    fn = watershed(image)
    assert 35 <= fn.diameter <= 60  # coins are ~45 px across
    assert coins_split(fn(image)) == ([], 24)
    split, _ = coins_split(watershed(image, sigma=0, min_distance=5)(image))  # earlier defaults
    assert len(split) > 10


@pytest.mark.parametrize("ndim", [2, 3])
def test_estimated_diameter_is_the_objects(ndim):
    shape, radius = ((120, 120), 9) if ndim == 2 else ((60, 60, 60), 7)
    step = 3 * radius
    centres = [tuple(step // 2 + step * i for i in c) for c in np.ndindex(*(shape[0] // step,) * ndim)]
    mask = balls(shape, centres, radius) > 0
    mask[0, 0] = mask[5, 5] = True  # one-voxel specks weigh nothing in a voxel-weighted median
    assert estimate_diameter([mask], 0.5) == pytest.approx(2 * radius, rel=0.1)
    # sampled windows: objects cut by a window's edge are left out
    assert estimate_diameter(sample_blocks(mask, n_voxels=mask.size // 2, n_blocks=2), 0.5) == \
        pytest.approx(2 * radius, rel=0.1)
    assert estimate_diameter([np.zeros(shape)], 0.5) is None
    # nothing found: watershed falls back to a nucleus-sized default
    assert watershed(np.zeros(shape) + 1, threshold=5).min_distance == 5
