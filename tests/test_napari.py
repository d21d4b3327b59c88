"""The napari reader: what it claims and the layer data it returns (no display needed)."""

import os

import numpy as np
import pytest
import zarr

from patchworks import read_table, threshold, tile_process
from patchworks._napari import get_reader, image_layer, label_images_in, read_label_layers


@pytest.fixture
def label_image(tmp_path):
    image = np.zeros((12, 16))
    image[2:6, 2:12] = 1
    image[8:11, 3:5] = 2
    out = tmp_path / "cells.zarr"
    tile_process(image, threshold(0.5), tile_shape=(6, 8), write_to=out)
    return out


def test_reader_claims_our_label_images_only(label_image, tmp_path):
    assert get_reader(str(label_image)) is read_label_layers
    assert get_reader([str(label_image)]) is read_label_layers
    plain = tmp_path / "plain.zarr"
    zarr.create_array(plain, data=np.zeros((4, 4), np.uint32))
    assert get_reader(str(plain)) is None            # a zarr array without our record
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    (tmp_path / "x.tif").write_bytes(b"")
    assert get_reader(str(tmp_path / "x.tif")) is None


def test_reader_layer_data_and_metadata(label_image):
    [(data, meta, kind)] = read_label_layers(label_image)
    assert kind == "labels"
    assert meta["visible"] is True and meta["name"] == "cells"
    levels = data if isinstance(data, list) else [data]
    np.testing.assert_array_equal(np.asarray(levels[0]), zarr.open_array(label_image / "0", mode="r")[...])
    table = read_table(label_image)
    features = meta["features"]
    assert features["index"].tolist() == table.index.tolist()  # napari maps label values by "index"
    assert features["area"].tolist() == [40, 6]


def test_reader_multiscale_scale_and_units(tmp_path):
    """An NGFF label group (levels 0, 1) with scales and units in the metadata."""
    root = tmp_path / "ngff.zarr"
    g = zarr.open_group(root, mode="w")
    level0 = np.zeros((8, 8), np.uint32)
    level0[2:6, 2:6] = 1
    g.create_array("0", data=level0)
    g.create_array("1", data=level0[::2, ::2])
    g.attrs.update({"patchworks": {"fingerprint": "abc", "complete": True}, "ome": {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.25]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5]}]}]}],
        "image-label": {"version": "0.5"}}})
    assert get_reader(str(root)) is read_label_layers
    [(data, meta, _)] = read_label_layers(root)
    assert meta["multiscale"] is True and [d.shape for d in data] == [(8, 8), (4, 4)]
    assert meta["scale"] == [0.5, 0.25] and meta["units"] == ["micrometer", "micrometer"]
    assert meta["axis_labels"] == ["y", "x"]
    assert "features" not in meta  # no table in this group

    image = tmp_path / "img.zarr"
    ig = zarr.open_group(image, mode="w")
    ig.create_array("0", data=np.zeros((2, 8, 8), np.uint16))
    ig.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "c", "type": "channel"},
                       {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                       "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                                 "scale": [1, 0.5, 0.25]}]}]}]}
    data, meta, kind = image_layer(image)
    assert kind == "image" and meta["channel_axis"] == 0 and meta["scale"] == [0.5, 0.25]
    labels = zarr.open_group(image / "labels", mode="w")
    labels.attrs["labels"] = ["cells"]
    import shutil
    shutil.copytree(root, image / "labels" / "cells")
    assert label_images_in(image) == [image / "labels" / "cells"]


def test_npe2_manifest_registers_the_reader():
    npe2 = pytest.importorskip("npe2", reason="npe2 comes with the napari extra")
    manifest = npe2.PluginManifest.from_distribution("patchworks")
    [reader] = manifest.contributions.readers
    assert reader.command == "patchworks.get_reader" and reader.accepts_directories
    [command] = manifest.contributions.commands
    assert command.python_name == "patchworks._napari:get_reader"


def test_viewer_layers_without_display(label_image, monkeypatch):
    napari = pytest.importorskip("napari", reason="napari is the patchworks[napari] extra")
    if not os.environ.get("DISPLAY"):  # Qt aborts the process when it finds no platform at all
        monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from patchworks._napari import view
    try:
        viewer = view(None, [label_image], show=False)
    except Exception as exc:  # no Qt platform at all on this machine
        pytest.skip(f"napari cannot create a viewer here ({exc}); run the test under a display, e.g. "
                    "`xvfb-run python -m pytest tests/test_napari.py` (apt install xvfb)")
    try:
        [layer] = viewer.layers
        assert isinstance(layer, napari.layers.Labels) and layer.visible
        assert layer.features["area"].tolist() == [40, 6]
    finally:
        viewer.close()
