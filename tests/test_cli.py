"""Tests for the ``patchworks`` command line (patchworks.cli), run in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from patchworks.cli import main, per_axis
from patchworks.testing import assert_labels_equivalent, random_blobs

REPO = Path(__file__).resolve().parents[1]
IMG = random_blobs((12, 40, 36), seed=3)  # float32 in [0, 1], blobs cross the 4x16x16 seams


def write_zarr(path, data, chunks=(4, 16, 16)):
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data
    return str(path)


def scipy_labels(image, value):
    return ndimage.label(image > value)[0]


def read(path):
    return np.asarray(zarr.open_array(str(path) + "/0", mode="r")[...])  # level 0 of the label image


@pytest.fixture
def zarr_input(tmp_path):
    return write_zarr(tmp_path / "img.zarr", IMG)


@pytest.fixture
def tiff_input(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, IMG)
    return str(path)


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_label_threshold(kind, request, tmp_path, capsys):
    src = request.getfixturevalue(f"{kind}_input")
    out = tmp_path / "labels.zarr"
    rc = main(["label", src, str(out), "--method", "threshold", "--threshold", "0.5",
               "--tile", "4,16,16", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    expected = scipy_labels(IMG, 0.5)
    result = read(out)
    assert_labels_equivalent(result, expected)
    assert f"objects: {expected.max()}" in text
    assert str(out) in text and "(12, 40, 36)" in text and "uint32" in text


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_label_otsu_is_default(kind, request, tmp_path, capsys):
    src = request.getfixturevalue(f"{kind}_input")
    out = tmp_path / "labels.zarr"
    rc = main(["label", src, str(out), "--tile", "6", "--overlap", "0,2,2", "--sequential", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    value = float(text.split("otsu threshold:")[1].split()[0])
    expected = scipy_labels(IMG, value)
    result = read(out)
    assert_labels_equivalent(result, expected)
    assert result.max() == expected.max()  # --sequential: 1..n


def test_label_threshold_alone_implies_method(zarr_input, tmp_path, capsys):
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--threshold", "0.6", "--tile", "6,20,18"]) == 0
    assert_labels_equivalent(read(tmp_path / "o.zarr"), scipy_labels(IMG, 0.6))
    assert "otsu" not in capsys.readouterr().out


@pytest.fixture
def seg_module(tmp_path, monkeypatch):
    """A user module on sys.path with a tile function: my_seg:label_tile."""
    (tmp_path / "my_seg.py").write_text(
        "import numpy as np\n"
        "from scipy import ndimage\n"
        "def label_tile(tile):\n"
        "    return ndimage.label(np.asarray(tile) > 0.55)[0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_seg:label_tile"


def test_label_module_function(zarr_input, seg_module, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    rc = main(["label", zarr_input, str(out), "--method", seg_module, "--tile", "4,16,16"])
    assert rc == 0, capsys.readouterr().err
    assert_labels_equivalent(read(out), scipy_labels(IMG, 0.55))


@pytest.mark.parametrize("spec, needle", [("no_such_mod_xyz:f", "cannot import module 'no_such_mod_xyz'"),
                                          ("os.path:no_such_fn", "has no attribute 'no_such_fn'"),
                                          ("os:sep", "not callable")])
def test_label_bad_module_function(spec, needle, zarr_input, tmp_path, capsys):
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--method", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("patchworks: error:") and spec in err and needle in err
    assert not (tmp_path / "o.zarr").exists()


def test_unknown_method_lists_names(zarr_input, tmp_path, capsys):
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--method", "magic"]) == 2
    err = capsys.readouterr().err
    assert "unknown method" in err and "otsu" in err and "threshold" in err and "module:function" in err
    assert "Traceback" not in err


def test_entry_point_method(zarr_input, seg_module, tmp_path, monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    import patchworks.cli as cli

    # what another package's pyproject would declare: [project.entry-points."patchworks.methods"]
    ep = EntryPoint(name="myseg", value=seg_module, group="patchworks.methods")
    monkeypatch.setattr(cli, "_registered_methods", lambda: {"myseg": ep})
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--method", "myseg", "--tile", "6,20,18"]) == 0
    assert_labels_equivalent(read(tmp_path / "o.zarr"), scipy_labels(IMG, 0.55))
    assert main(["label", zarr_input, str(tmp_path / "p.zarr"), "--method", "nope"]) == 2
    assert "myseg" in capsys.readouterr().err


def test_missing_threshold(zarr_input, tmp_path, capsys):
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--method", "threshold"]) == 2
    assert "--threshold" in capsys.readouterr().err


def test_output_exists_needs_overwrite(zarr_input, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    args = ["label", zarr_input, str(out), "--threshold", "0.5", "--tile", "12,20,18"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0, "the same command again: already complete, a no-op"
    other = ["label", zarr_input, str(out), "--threshold", "0.5", "--tile", "12,20,9"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert err.startswith("patchworks: error:") and "already exists" in err and "Traceback" not in err
    assert main(other + ["--overwrite"]) == 0


def test_library_errors_are_one_line(zarr_input, tmp_path, capsys):
    assert main(["label", str(tmp_path / "missing.zarr"), str(tmp_path / "o.zarr"), "--threshold", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--threshold", "1", "--tile", "4",
                 "--overlap", "4"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["label", zarr_input, str(tmp_path / "o.zarr"), "--tile", "4,x"]) == 2  # argparse usage error
    assert "comma list" in capsys.readouterr().err


def test_channels(tmp_path, capsys):
    path = tmp_path / "czyx.tif"
    tifffile.imwrite(path, np.stack([IMG, 1 - IMG]), metadata={"axes": "CZYX"})
    assert main(["label", str(path), str(tmp_path / "o.zarr"), "--threshold", "0.5"]) == 2
    assert "--channel 0..1" in capsys.readouterr().err  # told how to pick one, before any work
    assert main(["label", str(path), str(tmp_path / "o.zarr"), "--threshold", "0.5", "--channel", "1",
                 "--tile", "6,20,18"]) == 0
    assert_labels_equivalent(read(tmp_path / "o.zarr"), scipy_labels(1 - IMG, 0.5))


def test_info_label_store(tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    src = write_zarr(tmp_path / "img.zarr", IMG)
    assert main(["label", src, str(out), "--threshold", "0.5", "--tile", "4,16,16", "--zarr-format", "2"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    n = scipy_labels(IMG, 0.5).max()
    assert "(12, 40, 36)" in text and "uint32" in text and "(4, 16, 16)" in text
    assert f"objects: {n}" in text
    assert "complete: True" in text and f"n_objects: {n}" in text


def test_info_counts_chunk_by_chunk(tmp_path, capsys):
    labels = np.zeros((20, 30), np.int64)
    labels[0:3, 0:25] = 7  # one label spread over several chunks counts once
    labels[10, 5] = -2
    labels[19, 29] = 123456789012
    write_zarr(tmp_path / "l.zarr", labels, chunks=(4, 4))
    assert main(["info", str(tmp_path / "l.zarr")]) == 0
    text = capsys.readouterr().out
    assert "objects: 3" in text and "patchworks attributes" not in text


def test_info_float_image_has_no_count(tiff_input, capsys):
    assert main(["info", tiff_input]) == 0
    text = capsys.readouterr().out
    assert "float32" in text and "objects" not in text


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--shape", "16,40,40", "--tile", "8,16,16"]) == 0
    text = capsys.readouterr().out
    assert "identical partition:  yes" in text
    labels = out / "sample.ome.zarr" / "labels" / "blobs"  # the sample is an OME-Zarr image, labels inside it
    assert str(labels) in text and "patchworks view" in text
    assert zarr.open_group(str(labels), mode="r").attrs["patchworks"]["complete"] is True
    assert zarr.open_group(str(out / "sample.ome.zarr" / "labels")).attrs["ome"]["labels"] == ["blobs"]
    # re-running overwrites
    assert main(["demo", "--out", str(out), "--shape", "16,40,40", "--tile", "8,16,16"]) == 0


def test_demo_reports_failure(tmp_path, monkeypatch, capsys):
    import patchworks._demo as demo

    monkeypatch.setattr(demo.patchworks, "label_components", lambda mask: np.zeros(mask.shape, np.uint32))
    assert main(["demo", "--out", str(tmp_path), "--shape", "8,16,16", "--tile", "4,8,8"]) == 1
    assert "identical partition:  NO" in capsys.readouterr().out


def test_per_axis():
    assert per_axis("5") == 5 and per_axis("1,2,3") == (1, 2, 3)


def test_no_command_and_help(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "label" in capsys.readouterr().out


def test_python_dash_m_help():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "patchworks", "--help"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage: patchworks" in res.stdout and "demo" in res.stdout


# -- instance segmenters and stitching ----------------------------------------------


def discs_image(tmp_path):
    """Pairs of touching discs on a 2-D image, as a .npy file."""
    img = np.zeros((64, 64), np.float32)
    yy, xx = np.ogrid[:64, :64]
    for cy, cx in [(16, 10), (16, 23), (46, 25), (46, 38)]:  # the second pair meets on the seam x = 32
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = 1.0
    path = tmp_path / "discs.npy"
    np.save(path, img)
    return str(path)


@pytest.mark.parametrize("stitch", ["touch", "iou"])
def test_label_watershed_with_iou_stitching(stitch, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    argv = ["label", discs_image(tmp_path), str(out), "--method", "watershed", "--min-distance", "4",
            "--tile", "32", "--overlap", "12", "--stitch", stitch, "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "watershed threshold:" in printed  # estimated once from the whole image
    labels = read(out)
    # iou keeps the pair touching on the seam apart; touch fuses it
    assert len(np.unique(labels[labels > 0])) == (4 if stitch == "iou" else 3)
    assert labels[16, 10] != labels[16, 23]
    assert (labels[46, 25] != labels[46, 38]) == (stitch == "iou")


def test_label_spots_with_log(tmp_path, capsys):
    img = np.zeros((48, 48), np.float32)
    yy, xx = np.ogrid[:48, :48]
    for cy, cx in [(10, 10), (10, 37), (37, 24)]:
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0 ** 2))
    path = tmp_path / "spots.npy"
    np.save(path, img)
    out = tmp_path / "spots.zarr"
    assert main(["label", str(path), str(out), "--method", "log", "--threshold", "0.05", "--max-sigma", "3",
                 "--tile", "24", "--overlap", "8", "--stitch", "iou", "--no-progress"]) == 0
    labels = read(out)
    assert len(np.unique(labels[labels > 0])) == 3
    assert all(labels[c] for c in [(10, 10), (10, 37), (37, 24)])


def test_label_cellpose_through_the_plugin(tmp_path, monkeypatch, capsys):
    from tests.test_plugins import fake_cellpose

    rec = fake_cellpose(monkeypatch)
    out = tmp_path / "cp.zarr"
    assert main(["label", discs_image(tmp_path), str(out), "--method", "cellpose", "--model", "cyto3",
                 "--diameter", "14", "--tile", "32", "--overlap", "8", "--stitch", "iou", "--no-progress"]) == 0
    assert len(rec.inits) == 1 and rec.inits[0]["model_type"] == "cyto3"  # loaded once for all four tiles
    assert {c["diameter"] for c in rec.calls} == {14.0} and len(rec.calls) == 4
    assert {c["normalize"] for c in rec.calls} == {False}  # scaled with the whole input's range instead
    assert read(out).max() > 0


@pytest.mark.parametrize("argv, needle", [
    (["--method", "otsu", "--min-distance", "3"], "--min-distance applies to --method watershed"),
    (["--method", "log", "--diameter", "30"], "--diameter applies to --method cellpose / watershed"),
    (["--method", "otsu", "--threshold", "0.5"], "--threshold applies to --method threshold, watershed"),
    (["--stitch", "iou", "--tile", "32"], "stitch='iou' matches labels in the overlap"),
])
def test_method_option_errors(argv, needle, tmp_path, capsys):
    assert main(["label", discs_image(tmp_path), str(tmp_path / "o.zarr"), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_label_dry_run_prints_the_plan_and_writes_nothing(zarr_input, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    rc = main(["label", zarr_input, str(out), "--method", "threshold", "--threshold", "0.5", "--overlap", "2",
               "--dry-run", "--max-workers", "3", "--skip-empty"])
    text = capsys.readouterr().out
    assert rc == 0
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".patchworks-")]
    # no --tile: the input's zarr chunks (4, 16, 16) over (12, 40, 36) -> 3 x 3 x 3 tiles
    assert "tiles:        27 = 3 x 3 x 3" in text
    assert "tile shape:   (4, 16, 16)" in text
    assert "window shape: (8, 20, 20)" in text
    assert "workers:      3 local thread(s)" in text
    assert "empty tiles:" in text


def test_label_max_workers_stage_dir_keep_stage(zarr_input, tmp_path, capsys):
    out, stage = tmp_path / "labels.zarr", tmp_path / "stage"
    rc = main(["label", zarr_input, str(out), "--method", "threshold", "--threshold", "0.5", "--tile", "auto",
               "--max-workers", "1", "--stage-dir", str(stage), "--keep-stage", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert_labels_equivalent(read(out), scipy_labels(IMG, 0.5))
    kept = [p for p in stage.iterdir() if p.name.startswith(".patchworks-")]
    assert len(kept) == 1 and list((kept[0] / "tiles").glob("tile-*.bin"))


@pytest.mark.parametrize("argv, needle", [
    (["--max-workers", "0"], "argument --max-workers: '0': give a positive int"),
    (["--tile", "big"], "argument --tile: 'big': give one int or a comma list of ints"),
])
def test_label_new_option_errors(argv, needle, zarr_input, tmp_path, capsys):
    rc = main(["label", zarr_input, str(tmp_path / "o.zarr"), "--threshold", "0.5", *argv])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_label_into_an_ome_zarr_image_and_info_shows_levels(tmp_path, capsys):
    from patchworks.testing import write_ome_zarr

    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, IMG, axes="zyx", scale=(2.0, 0.5, 0.5), levels=2)
    assert main(["label", str(image), "--into", str(image), "--name", "cells", "--threshold", "0.5",
                 "--tile", "4,16,16", "--no-progress"]) == 0
    assert "levels:  2 (12x40x36, 12x20x18)" in capsys.readouterr().out
    assert main(["info", str(image / "labels" / "cells")]) == 0
    text = capsys.readouterr().out
    n = scipy_labels(IMG, 0.5).max()
    assert "voxel:   2 micrometer x 0.5 micrometer x 0.5 micrometer" in text
    assert "1: shape (12, 20, 18), scale (2.0, 1.0, 1.0)" in text and f"objects: {n}" in text
    assert_labels_equivalent(read(image / "labels" / "cells"), scipy_labels(IMG, 0.5))


def test_label_voxel_size_pyramid_levels_and_bare_array(tmp_path, zarr_input, capsys):
    out = tmp_path / "cells.ome.zarr"
    assert main(["label", zarr_input, str(out), "--threshold", "0.5", "--tile", "4,16,16", "--no-progress",
                 "--voxel-size", "3,1,1", "--unit", "nm", "--pyramid-levels", "3"]) == 0
    group = zarr.open_group(str(out), mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[3, 1, 1], [3, 2, 2], [3, 4, 4]]
    assert group.attrs["ome"]["multiscales"][0]["axes"][0]["unit"] == "nanometer"
    bare = tmp_path / "bare.zarr"
    assert main(["label", zarr_input, str(bare), "--threshold", "0.5", "--format", "array", "--no-progress"]) == 0
    assert_labels_equivalent(zarr.open_array(str(bare), mode="r")[...], scipy_labels(IMG, 0.5))


@pytest.mark.parametrize("argv,message", [
    (["--into", "X"], "--into needs --name NAME"),
    ([], "give OUTPUT, or --into IMAGE --name NAME"),
    (["out.zarr", "--unit", "um"], "--unit applies to --voxel-size"),
    (["out.zarr", "--into", "X", "--name", "c"], "give OUTPUT (a new label image) or --into IMAGE"),
])
def test_label_output_options_errors(zarr_input, capsys, argv, message):
    assert main(["label", zarr_input, *argv, "--threshold", "0.5"]) == 2
    assert message in capsys.readouterr().err
