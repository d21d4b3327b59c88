"""Cellpose and StarDist adapters, tested against small fake libraries.

The fakes record exactly what the adapters pass (shapes, dtypes, axes,
keyword arguments) and enforce the call conventions of the real libraries
(Cellpose 4 refuses ``z_axis`` without ``do_3D`` and ``channel_axis`` on a
2-D array, as the real one does). Tests with the real libraries run only
where the package and its weights are present.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from patchworks import tile_process
from patchworks.plugins import _common
from patchworks.plugins.cellpose import CellposeTile, cellpose_fn
from patchworks.plugins.stardist import StarDistTile, image_intensity_range, stardist_fn
from patchworks.testing import assert_labels_equivalent


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    _common.clear_model_cache()
    yield
    _common.clear_model_cache()


class OutOfMemoryError(RuntimeError):  # what torch.cuda.OutOfMemoryError looks like
    pass


class ResourceExhaustedError(Exception):  # TensorFlow's, which is no RuntimeError
    pass


class Recorder:
    def __init__(self):
        self.inits, self.calls, self.fail = [], [], []  # fail: exceptions to raise on the next calls
        self.next_id = 0

    def label(self, x):
        """Thresholded components with ids that differ from call to call (as a real model's do)."""
        labels, n = ndimage.label(np.asarray(x) > 0.5)
        labels[labels > 0] += self.next_id
        self.next_id += 100
        return labels

    def maybe_fail(self):
        if self.fail:
            raise self.fail.pop(0)


def disc(shape, center, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


# ----------------------------------------------------------------------------- fake Cellpose


def fake_cellpose(monkeypatch, version="3.1.1.2"):
    rec = Recorder()
    major = int(version[0]) if version[0].isdigit() else None

    class CellposeModel:
        def __init__(self, **kwargs):
            rec.inits.append(kwargs)

        def eval(self, x, **kwargs):
            rec.calls.append(dict(kwargs, shape=x.shape, dtype=x.dtype))
            rec.maybe_fail()
            do_3D, z_axis, channel_axis = kwargs.get("do_3D", False), kwargs.get("z_axis"), kwargs.get("channel_axis")
            if is_v4 and z_axis is not None and not do_3D:
                raise ValueError("2D image processing selected, but z_axis is not None")
            if is_v4 and x.ndim == 2 and channel_axis is not None:
                raise ValueError("2D image provided, but channel_axis is not None")
            if do_3D and z_axis is None:
                raise ValueError("z_axis must be specified for 3D images")
            image = np.moveaxis(x, channel_axis, -1)[..., 0] if channel_axis is not None else x
            assert image.ndim == (3 if do_3D else 2)
            masks = rec.label(image).astype(np.uint16)
            # CellposeModel.eval: (masks, flows, styles), masks squeezed
            return masks.squeeze(), [None, None, None], np.zeros(256)

    is_v4 = major is not None and major >= 4
    models = types.ModuleType("cellpose.models")
    models.CellposeModel = CellposeModel
    models.MODEL_NAMES = ["cpsam_v2", "cpsam"] if is_v4 else ["cyto3", "nuclei", "cyto2", "cyto"]
    models.get_user_models = lambda: []
    if not is_v4:
        models.Cellpose = object  # the size-model wrapper Cellpose 4 dropped
    package = types.ModuleType("cellpose")
    package.version = version
    package.models = models
    monkeypatch.setitem(sys.modules, "cellpose", package)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)
    return rec


def test_cellpose3_call_convention_2d_grayscale(monkeypatch):
    rec = fake_cellpose(monkeypatch, "3.1.1.2")
    fn = cellpose_fn("cyto3", diameter=17, flow_threshold=0.3)
    img = disc((20, 24), (10, 12), 5).astype(np.float32)
    labels = fn(img)
    assert rec.inits == [{"gpu": False, "model_type": "cyto3"}]
    (call,) = rec.calls
    assert call == {"diameter": 17.0, "flow_threshold": 0.3, "channels": [0, 0], "do_3D": False, "z_axis": None,
                    "channel_axis": None, "shape": (20, 24), "dtype": np.float32}
    assert labels.dtype == np.uint32 and labels.shape == (20, 24)
    assert_labels_equivalent(labels, img > 0.5)


def test_cellpose_normalises_every_tile_with_the_image_range(monkeypatch):
    fake_cellpose(monkeypatch, "3.1.1.2")
    seen = []
    models = sys.modules["cellpose.models"]
    plain_eval = models.CellposeModel.eval
    monkeypatch.setattr(models.CellposeModel, "eval",
                        lambda self, x, **kw: seen.append((x.copy(), kw)) or plain_eval(self, x, **kw))
    img = np.zeros((20, 40), np.float32)
    img[5:15, 3:13] = 1000.0   # a bright cell in the left tile
    img[5:15, 25:35] = 200.0   # a dim one in the right tile
    fn = cellpose_fn("cyto3", image=img, percentiles=(0, 100))
    assert fn.intensity_range == ((0.0, 1000.0),)
    tile_process(img, fn, tile_shape=(20, 20), compute=True, client=False)
    (left, kw), (right, _) = sorted(seen, key=lambda call: -call[0].max())
    assert kw["normalize"] is False   # Cellpose must not rescale each tile again
    assert left.max() == pytest.approx(1.0) and right.max() == pytest.approx(0.2)  # one scale for both tiles
    with pytest.raises(ValueError, match="conflicts with image= / intensity_range="):
        cellpose_fn("cyto3", image=img, normalize=True)
    with pytest.raises(ValueError, match="give one of them"):
        cellpose_fn("cyto3", image=img, intensity_range=(0, 1))
    assert cellpose_fn("cyto3", intensity_range=[(0, 10), (5, 50)], channel_axis=0).intensity_range == (
        (0.0, 10.0), (5.0, 50.0))


def test_cellpose3_channels_and_model_path(monkeypatch, tmp_path):
    rec = fake_cellpose(monkeypatch, "3.1.1.2")
    weights = tmp_path / "my_model"
    weights.write_bytes(b"weights")
    fn = cellpose_fn(weights, gpu=True, channels=[2, 1], channel_axis=0)
    img = np.stack([disc((16, 16), (8, 8), 4), np.zeros((16, 16))]).astype(np.uint16)  # (C, Y, X)
    labels = fn(img)
    assert rec.inits == [{"gpu": True, "pretrained_model": str(weights)}]
    (call,) = rec.calls
    assert call["shape"] == (16, 16, 2) and call["channel_axis"] == 2 and call["channels"] == [2, 1]
    assert call["dtype"] == np.uint16 and call["diameter"] is None
    assert labels.shape == (16, 16) and labels.max() == 1
    # no channels given: Cellpose 3 keeps the first two channels (channels=None)
    cellpose_fn(channel_axis=-1)(np.moveaxis(img, 0, -1))
    assert rec.inits[-1] == {"gpu": False, "model_type": "cyto3"} and rec.calls[-1]["channels"] is None


def test_cellpose4_call_convention(monkeypatch):
    rec = fake_cellpose(monkeypatch, "4.2.1.1")
    with pytest.warns(UserWarning, match="channels=\\[2, 1\\] is ignored by Cellpose 4"):
        fn = cellpose_fn(channels=[2, 1], channel_axis=0)
    img = np.stack([disc((16, 16), (8, 8), 4), np.ones((16, 16))]).astype(np.float32)
    fn(img)
    assert rec.inits == [{"gpu": False}]  # None: the library's own default model (cpsam / cpsam_v2)
    (call,) = rec.calls
    assert "channels" not in call
    assert call["channel_axis"] == 2 and call["z_axis"] is None and call["shape"] == (16, 16, 2)
    cellpose_fn("cpsam")(img[0])  # grayscale 2-D: channel_axis must stay None on Cellpose 4
    assert rec.inits[-1] == {"gpu": False, "pretrained_model": "cpsam"}
    assert rec.calls[-1]["channel_axis"] is None and "channels" not in rec.calls[-1]
    with pytest.raises(ValueError, match="model='cyto3' is neither a file nor a model of the installed Cellpose 4"):
        cellpose_fn("cyto3")


def test_cellpose_3d(monkeypatch):
    rec = fake_cellpose(monkeypatch, "4.0.1")
    stack = np.stack([disc((12, 14), (6, 7), 4)] * 5).astype(np.float32)
    chans = np.stack([stack, np.zeros_like(stack)])  # (C, Z, Y, X)
    labels = cellpose_fn(do_3D=True, channel_axis=0, anisotropy=2.0)(chans)
    (call,) = rec.calls
    assert call["do_3D"] is True and call["z_axis"] == 0 and call["channel_axis"] == 3
    assert call["shape"] == (5, 12, 14, 2) and call["anisotropy"] == 2.0
    assert labels.shape == (5, 12, 14) and labels.max() == 1
    with pytest.raises(ValueError, match="do_3D=True.*2 spatial axes"):
        cellpose_fn(do_3D=True)(stack[0])


def test_cellpose_plane_by_plane_stitches_a_disc_into_one_object(monkeypatch):
    rec = fake_cellpose(monkeypatch, "3.1.1.2")
    stack = np.stack([disc((16, 16), (8, 8), 5)] * 4 + [np.zeros((16, 16), bool)]).astype(np.float32)
    stack[1, 0:2, 0:2] = 1  # a speck in one plane only: an object of its own
    labels = cellpose_fn(iou_threshold=0.5)(stack)
    assert len(rec.calls) == 5 and all(c["shape"] == (16, 16) and c["do_3D"] is False for c in rec.calls)
    assert labels.dtype == np.uint32 and labels.shape == stack.shape
    assert np.unique(labels[stack > 0.5]).size == 2  # fake ids differed per plane; the disc is one object
    assert len(np.unique(labels[:4][disc((16, 16), (8, 8), 5)[None].repeat(4, 0)])) == 1
    # a single plane (tile_shape=(1, Y, X)) with do_3D=True: Cellpose cannot run 3-D on it, runs 2-D
    one = cellpose_fn(do_3D=True)(stack[:1])
    assert one.shape == (1, 16, 16) and rec.calls[-1]["do_3D"] is False


def test_cellpose_model_loaded_once_per_process(monkeypatch):
    rec = fake_cellpose(monkeypatch, "3.1.1.2")
    img = np.zeros((32, 32), np.float32)
    for center in [(8, 8), (16, 16), (24, 6), (5, 27)]:
        img[disc(img.shape, center, 4)] = 1
    fn = cellpose_fn(diameter=8)
    labels = tile_process(img, fn, tile_shape=(16, 16), compute=True, client=False)
    assert len(rec.inits) == 1 and len(rec.calls) == 4
    assert_labels_equivalent(labels, ndimage.label(img > 0.5)[0])  # the disc on the corner is one object
    pickle.loads(pickle.dumps(fn))(img)  # a copy shipped to a worker reuses that worker's model
    assert len(rec.inits) == 1
    cellpose_fn(diameter=8, gpu=True)(img)  # another spec is another model
    assert len(rec.inits) == 2


def test_cellpose_pickles_small(monkeypatch):
    fake_cellpose(monkeypatch)
    fn = cellpose_fn("nuclei", diameter=12, channels=[1, 0], channel_axis=2, cellprob_threshold=-1)
    blob = pickle.dumps(fn)
    assert len(blob) < 1000 and isinstance(fn, CellposeTile)
    assert pickle.loads(blob) == fn
    assert not hasattr(fn, "with_connectivity")


def test_cellpose_version_detection_without_metadata(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    rec = fake_cellpose(monkeypatch, "unknown")  # a source checkout; the fake still has models.Cellpose
    cellpose_fn(channels=[1, 2], channel_axis=0)(np.zeros((2, 8, 8)))
    assert rec.calls[-1]["channels"] == [1, 2] and rec.inits[-1] == {"gpu": False, "model_type": "cyto3"}
    del sys.modules["cellpose.models"].Cellpose  # no wrapper class: Cellpose 4
    _common.clear_model_cache()
    cellpose_fn()(np.zeros((8, 8)))
    assert "channels" not in rec.calls[-1] and rec.inits[-1] == {"gpu": False}


@pytest.mark.parametrize("kwargs, match", [
    ({"diameter": 0}, "diameter=0.0"),
    ({"channels": [1]}, "channels=\\[1\\]"),
    ({"channels": [-1, 0]}, "channels="),
    ({"iou_threshold": 0}, "iou_threshold=0"),
    ({"stitch_threshold": 0.3}, "stitch_threshold=0.3: patchworks joins planes itself"),
    ({"z_axis": 0}, "z_axis=0"),
    ({"model": "cpsam"}, "use a Cellpose 3 model"),
])
def test_cellpose_bad_arguments(monkeypatch, kwargs, match):
    fake_cellpose(monkeypatch, "3.1.1.2")
    with pytest.raises(ValueError, match=match):
        cellpose_fn(**kwargs)


def test_cellpose_bad_window(monkeypatch):
    fake_cellpose(monkeypatch)
    with pytest.raises(ValueError, match="channel_axis=3 is out of range"):
        cellpose_fn(channel_axis=3)(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="4 spatial axes"):
        cellpose_fn()(np.zeros((2, 2, 4, 4)))


def test_cellpose_out_of_memory_retried_once(monkeypatch):
    rec = fake_cellpose(monkeypatch)
    emptied = []
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(empty_cache=lambda: emptied.append(1)))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    img = disc((12, 12), (6, 6), 3).astype(np.float32)
    fn = cellpose_fn()
    rec.fail = [OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")]
    assert fn(img).max() == 1
    assert len(rec.calls) == 2 and emptied == [1]
    rec.fail = [RuntimeError("CUDA error: out of memory"), OutOfMemoryError("CUDA out of memory")]
    with pytest.raises(RuntimeError, match="ran out of GPU memory on a window of shape \\(12, 12\\).*smaller "
                                           "tile_shape") as info:
        fn(img)
    assert isinstance(info.value.__cause__, OutOfMemoryError)
    rec.fail = [ValueError("not a memory problem")]  # anything else: raised at once, no retry
    calls = len(rec.calls)
    with pytest.raises(ValueError, match="not a memory problem"):
        fn(img)
    assert len(rec.calls) == calls + 1


def test_cellpose_missing_package(monkeypatch):
    fake_cellpose(monkeypatch)
    fn = cellpose_fn()
    monkeypatch.setitem(sys.modules, "cellpose", None)
    monkeypatch.setitem(sys.modules, "cellpose.models", None)
    with pytest.raises(ImportError, match='pip install "patchworks\\[cellpose\\]"'):
        cellpose_fn()
    with pytest.raises(ImportError, match='pip install "patchworks\\[cellpose\\]"'):
        fn(np.zeros((4, 4)))  # a worker without Cellpose


# ----------------------------------------------------------------------------- fake StarDist


def fake_stardist(monkeypatch):
    rec = Recorder()

    class _Base:
        n_dim = 2

        def __init__(self, config, name=None, basedir="."):
            rec.inits.append((type(self).__name__, config, name, basedir))

        @classmethod
        def from_pretrained(cls, name_or_alias=None):
            rec.inits.append((cls.__name__, "from_pretrained", name_or_alias))
            return object.__new__(cls)

        def predict_instances(self, img, axes=None, n_tiles=None, prob_thresh=None, nms_thresh=None, **kwargs):
            rec.calls.append(dict(kwargs, model=type(self).__name__, shape=img.shape, dtype=img.dtype, axes=axes,
                                  n_tiles=n_tiles, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                                  lo=float(img.min()), hi=float(img.max())))
            rec.maybe_fail()
            assert len(axes) == img.ndim and len(axes.replace("C", "")) == self.n_dim
            assert n_tiles is None or len(n_tiles) == img.ndim
            image = img[..., 0] if axes.endswith("C") else img
            return rec.label(image).astype(np.int32), {"points": []}

    class StarDist2D(_Base):
        pass

    class StarDist3D(_Base):
        n_dim = 3

    registry = {StarDist2D: (("2D_versatile_fluo", "2D_demo"),
                             {"2D_versatile_fluo": ("Versatile (fluorescent nuclei)",), "2D_demo": ()}),
                StarDist3D: (("3D_demo",), {"3D_demo": ()})}
    pretrained = types.ModuleType("csbdeep.models.pretrained")
    pretrained.get_registered_models = lambda cls, return_aliases=True: registry[cls]
    models = types.ModuleType("stardist.models")
    models.StarDist2D, models.StarDist3D = StarDist2D, StarDist3D
    for name in ("stardist", "csbdeep", "csbdeep.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "stardist.models", models)
    monkeypatch.setitem(sys.modules, "csbdeep.models.pretrained", pretrained)
    return rec


def test_stardist_2d_call_convention_and_cache(monkeypatch):
    rec = fake_stardist(monkeypatch)
    img = np.zeros((32, 32), np.uint16)
    for center in [(8, 8), (16, 16), (24, 6)]:
        img[disc(img.shape, center, 4)] = 1000
    fn = stardist_fn("2D_versatile_fluo", prob_thresh=0.6, nms_thresh=0.3, n_tiles=(2, 1), normalize=(0, 100))
    labels = tile_process(img, fn, tile_shape=(16, 16), compute=True, client=False)
    assert rec.inits == [("StarDist2D", "from_pretrained", "2D_versatile_fluo")]
    assert len(rec.calls) == 4
    for call in rec.calls:
        assert call["axes"] == "YX" and call["dtype"] == np.float32 and call["shape"] == (16, 16)
        assert call["n_tiles"] == (2, 1) and call["prob_thresh"] == 0.6 and call["nms_thresh"] == 0.3
        assert call["show_tile_progress"] is False
        assert call["hi"] in (0.0, 1.0)  # per-tile percentiles (0, 100): each tile scaled to [0, 1]
    assert labels.dtype == np.uint32
    assert_labels_equivalent(labels, ndimage.label(img > 0)[0])
    stardist_fn("Versatile (fluorescent nuclei)")(img)  # an alias is another spec: loaded by its own name
    assert rec.inits[-1] == ("StarDist2D", "from_pretrained", "Versatile (fluorescent nuclei)")


def test_stardist_channels_and_model_folder(monkeypatch, tmp_path):
    rec = fake_stardist(monkeypatch)
    folder = tmp_path / "models" / "my_3d"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"n_dim": 3, "axes": "ZYXC", "n_channel_in": 2}))
    vol = np.stack([np.stack([disc((10, 12), (5, 6), 3)] * 4), np.zeros((4, 10, 12), bool)], axis=-1) * 50.0
    fn = stardist_fn(folder, channel_axis=-1, n_tiles=(1, 2, 2), intensity_range=[(0, 50), (0, 10)])
    labels = fn(vol)
    assert rec.inits == [("StarDist3D", None, "my_3d", str(folder.parent))]
    (call,) = rec.calls
    assert call["axes"] == "ZYXC" and call["shape"] == (4, 10, 12, 2) and call["n_tiles"] == (1, 2, 2, 1)
    assert call["hi"] == 1.0 and call["lo"] == 0.0
    assert labels.shape == (4, 10, 12) and labels.max() == 1
    with pytest.raises(ValueError, match="a 3-D model got a window with 2 spatial axes"):
        fn(vol[0])
    cyx = np.moveaxis(vol[0], -1, 0)  # (C, Y, X) for a 2-D model
    stardist_fn("2D_demo", channel_axis=0, n_tiles=2)(cyx)
    assert rec.calls[-1]["axes"] == "YXC" and rec.calls[-1]["shape"] == (10, 12, 2)
    assert rec.calls[-1]["n_tiles"] == (2, 2, 1)


def test_stardist_2d_model_on_a_stack_runs_plane_by_plane(monkeypatch):
    rec = fake_stardist(monkeypatch)
    stack = np.stack([disc((16, 16), (8, 8), 5)] * 3 + [disc((16, 16), (3, 3), 2)]).astype(np.float32) * 7
    labels = stardist_fn(normalize=(0, 100))(stack)
    assert [c["axes"] for c in rec.calls] == ["YX"] * 4
    assert labels.shape == stack.shape and labels.dtype == np.uint32
    assert np.unique(labels[:3][stack[:3] > 0]).size == 1  # one nucleus through three planes
    assert labels[3, 3, 3] not in (0, labels[0, 8, 8])  # no overlap with it: a new object
    # one scale for the whole tile, not per plane
    assert all(c["hi"] == 1.0 for c in rec.calls)


def test_stardist_fixed_normalisation_from_the_image(monkeypatch):
    fake_stardist(monkeypatch)
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (2, 40, 30))
    img[1] *= 5
    fn = stardist_fn(image=img, channel_axis=0)
    expected = [tuple(np.percentile(img[c], [1, 99.8])) for c in range(2)]
    np.testing.assert_allclose(fn.intensity_range, expected)
    # two windows of different brightness get the same intensity -> value map: no seams
    window = np.moveaxis(img[:, :10, :10], 0, -1)
    a = fn.normalized(window, True)
    b = fn.normalized(window * 0 + window[:1, :1], True)
    np.testing.assert_allclose(a[0, 0], b[0, 0])
    per_tile = stardist_fn(channel_axis=0)
    assert not np.allclose(per_tile.normalized(window, True)[0, 0],
                           per_tile.normalized(np.concatenate([window, window * 3]), True)[0, 0])
    assert image_intensity_range(img[0], (0, 100)) == ((img[0].min(), img[0].max()),)
    assert stardist_fn(normalize=None).normalized(window, True).dtype == np.float32


def test_stardist_fixed_normalisation_from_a_file(monkeypatch, tmp_path):
    fake_stardist(monkeypatch)
    img = np.arange(2000, dtype=np.float32).reshape(40, 50)
    path = tmp_path / "img.npy"
    np.save(path, img)
    fn = stardist_fn(image=path, normalize=(1, 99))
    np.testing.assert_allclose(fn.intensity_range, [np.percentile(img, [1, 99])])


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "2D_nope"}, "model='2D_nope' is neither a StarDist model folder nor a registered model "
                           "\\(2D_versatile_fluo, 2D_demo, 3D_demo\\)"),
    ({"normalize": (99, 1)}, "normalize=\\(99, 1\\)"),
    ({"normalize": "yes"}, "normalize='yes'"),
    ({"intensity_range": (5, 5)}, "intensity_range=\\(5, 5\\)"),
    ({"intensity_range": (0, 1), "image": np.zeros(4)}, "give one of them"),
    ({"normalize": None, "image": np.zeros(4)}, "normalize=None"),
    ({"n_tiles": (1, 2, 3)}, "n_tiles=\\(1, 2, 3\\): give 2 positive ints"),
    ({"axes": "YX"}, "axes='YX'"),
    ({"iou_threshold": 2}, "iou_threshold=2"),
    ({"image": np.zeros((2, 4, 4)), "channel_axis": 3}, "channel_axis=3 is out of range for image of shape"),
])
def test_stardist_bad_arguments(monkeypatch, kwargs, match):
    fake_stardist(monkeypatch)
    with pytest.raises(ValueError, match=match):
        stardist_fn(**kwargs)


def test_stardist_bad_model_folder_and_channel_count(monkeypatch, tmp_path):
    fake_stardist(monkeypatch)
    with pytest.raises(ValueError, match="folder without config.json"):
        stardist_fn(tmp_path)
    fn = stardist_fn(intensity_range=[(0, 1), (0, 2), (0, 3)], channel_axis=0)
    with pytest.raises(ValueError, match="3 \\(lo, hi\\) pairs but the window has 2 channel"):
        fn(np.zeros((2, 8, 8)))


def test_stardist_out_of_memory_retried_once(monkeypatch):
    rec = fake_stardist(monkeypatch)
    img = disc((12, 12), (6, 6), 3).astype(np.float32)
    fn = stardist_fn()
    rec.fail = [ResourceExhaustedError("OOM when allocating tensor with shape[1,32,512,512]")]
    assert fn(img).max() == 1 and len(rec.calls) == 2
    rec.fail = [ResourceExhaustedError("OOM"), ResourceExhaustedError("OOM")]
    with pytest.raises(RuntimeError, match="stardist \\(2D_versatile_fluo\\) ran out of GPU memory.*tile_shape"):
        fn(img)


def test_stardist_pickles_and_missing_package(monkeypatch):
    fake_stardist(monkeypatch)
    fn = stardist_fn("3D_demo", intensity_range=(0, 255), n_tiles=(1, 2, 2), scale=0.5)
    assert isinstance(fn, StarDistTile) and fn.ndim == 3
    assert pickle.loads(pickle.dumps(fn)) == fn and len(pickle.dumps(fn)) < 1000
    assert not hasattr(fn, "with_connectivity")
    for name in ("stardist", "stardist.models"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match='pip install "patchworks\\[stardist\\]"'):
        stardist_fn()
    with pytest.raises(ImportError, match='pip install "patchworks\\[stardist\\]"'):
        fn(np.zeros((4, 4, 4)))


# ----------------------------------------------------------------------------- real libraries


def _discs_image():
    img = np.full((128, 128), 10.0, np.float32)
    centers = [(24, 24), (24, 90), (64, 60), (100, 30), (104, 100)]
    for center in centers:
        img[disc(img.shape, center, 9)] = 200.0
    img += np.random.default_rng(0).normal(0, 2, img.shape).astype(np.float32)
    return img, centers


def _check_discs(labels, centers):
    found = [labels[c] for c in centers if labels[c] != 0]
    assert len(found) >= len(centers) - 1, f"only {len(found)} of {len(centers)} discs found"
    assert len(set(found)) == len(found), "two discs share a label"


def test_real_cellpose():
    pytest.importorskip("cellpose", reason="Cellpose is not installed (pip install 'patchworks[cellpose]')")
    from cellpose import models

    default = inspect.signature(models.CellposeModel.__init__).parameters["pretrained_model"].default
    name = "cyto3" if hasattr(models, "Cellpose") else default
    weights = Path(models.MODEL_DIR) / name
    if not weights.exists():
        pytest.skip(f"Cellpose weights {weights} are not downloaded (they come from the internet on first use); "
                    "run this test once on a machine online to fetch them")
    img, centers = _discs_image()
    fn = cellpose_fn(name if hasattr(models, "Cellpose") else None, diameter=18)
    labels = tile_process(img, fn, tile_shape=(64, 128), overlap=16, compute=True, client=False)
    assert labels.dtype == np.uint32 and labels.shape == img.shape
    _check_discs(labels, centers)


def test_real_stardist():
    pytest.importorskip("stardist", reason="StarDist is not installed (pip install 'patchworks[stardist]')")
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    weights = keras_home / "models" / "StarDist2D" / "2D_versatile_fluo"
    if not weights.exists():
        pytest.skip(f"StarDist weights {weights} are not downloaded (they come from the internet on first use); "
                    "run this test once on a machine online to fetch them")
    img, centers = _discs_image()
    fn = stardist_fn("2D_versatile_fluo", image=img)
    labels = tile_process(img, fn, tile_shape=(64, 128), overlap=16, compute=True, client=False)
    assert labels.dtype == np.uint32 and labels.shape == img.shape
    _check_discs(labels, centers)
