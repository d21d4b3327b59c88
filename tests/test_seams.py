"""seam_report: seam quality of tiled labels without ground truth."""

import math

import dask.array as da
import numpy as np
import pytest
import zarr

import patchworks.labels._seam_report as seams
from patchworks import threshold, tile_process
from patchworks.labels._seam_report import SeamReport, seam_report
from patchworks.testing import TissueOracle, dense_tissue, random_blobs


def per_tile_offset(labels, tile, big=100_000):
    """Labels made unique per tile without any stitching: every object crossing a seam is cut."""
    tile = np.broadcast_to(tile, (labels.ndim,)).reshape((-1,) + (1,) * labels.ndim)
    index = np.indices(labels.shape) // tile
    tile_id = np.ravel_multi_index(tuple(index), tuple(index.reshape(labels.ndim, -1).max(1) + 1))
    return np.where(labels > 0, labels.astype(np.int64) + tile_id * big, 0)


def verdicts(report):
    return [row.verdict for row in report.axes]


@pytest.fixture(scope="module")
def tissue_2d():
    return dense_tissue((128, 128), 8)


@pytest.fixture(scope="module")
def tissue_3d():
    return dense_tissue((48, 48, 48), 6)


def test_ground_truth_tissue_passes(tissue_2d, tissue_3d):
    for truth, tile in ((tissue_2d, 32), (tissue_2d, (16, 32)), (tissue_3d, 16), (tissue_3d, 24)):
        report = seam_report(truth, tile)
        assert report.ok, report
        assert verdicts(report) == ["ok"] * truth.ndim
        for row in report.axes:
            assert 0.5 < row.ratio < 2 and row.control_rate > 0.05


def test_exact_connected_components_pass():
    image = random_blobs((128, 128), seed=2)
    labels = tile_process(image, threshold(0.5), tile_shape=32, compute=True, client=False)
    report = seam_report(labels, 32, min_pairs=50)
    assert report.ok, report
    assert verdicts(report) == ["ok", "ok"]
    for row in report.axes:  # adjacent foreground voxels are one component: no change anywhere
        assert row.seam_changes == row.control_changes == 0 and math.isnan(row.ratio)


def test_touch_stitched_tissue_is_flagged_fused(tissue_2d, tissue_3d):
    for truth, tile in ((tissue_2d, 32), (tissue_3d, 16)):
        fused = tile_process(truth, TissueOracle(), tile_shape=tile, overlap=0, compute=True, client=False)
        report = seam_report(fused, tile)
        assert not report.ok
        assert verdicts(report) == ["fused"] * truth.ndim, report
        assert all(row.seam_rate == 0 and row.p_value < 1e-3 for row in report.axes)
        assert "FUSED" in str(report)


def test_labels_cut_at_seams_are_flagged(tissue_2d, tissue_3d):
    for truth, tile in ((tissue_2d, 32), (tissue_3d, 16)):
        report = seam_report(per_tile_offset(truth, tile), tile)
        assert verdicts(report) == ["cut"] * truth.ndim, report
        assert all(row.seam_rate == 1 and row.ratio > 4 for row in report.axes)
    # connected components cut at one seam only: control rate 0, any change on a seam is a cut
    labels = tile_process(random_blobs((128, 128), seed=2), threshold(0.5), tile_shape=32, compute=True,
                          client=False)
    cut = np.where(labels > 0, labels.astype(np.int64) + 1000 * (np.arange(128) >= 64), 0)
    report = seam_report(cut, 32, min_pairs=50)
    assert verdicts(report) == ["ok", "cut"]
    assert report.axes[1].ratio == math.inf


def test_wrong_tile_shape_is_not_flagged_as_fused(tissue_2d):
    # the touch-fused result inspected on other planes looks like honest tissue on those planes
    fused = tile_process(tissue_2d, TissueOracle(), tile_shape=32, overlap=0, compute=True, client=False)
    assert seam_report(fused, 48).axes[0].verdict != "fused"


def test_few_data_and_untiled_axes(tissue_2d):
    report = seam_report(tissue_2d[:40], (32, 128))  # one seam of 128 pairs; axis 1 not tiled
    assert verdicts(report) == ["few data", "no seams"]
    assert report.ok
    assert report.axes[1].n_seams == 0
    text = str(report)
    assert "not tiled" in text and "too little data" in text
    # uneven but not beyond chance -> not flagged, with a looser min_pairs too
    loose = seam_report(tissue_2d[:40], (32, 128), min_pairs=1)
    assert loose.axes[0].verdict in ("ok", "few data")


def test_tile_shape_not_dividing_the_image(tissue_2d):
    truth = tissue_2d[:, :120]
    assert seam_report(truth, (32, 36)).ok
    assert verdicts(seam_report(per_tile_offset(truth, (32, 36)), (32, 36))) == ["cut", "cut"]


def test_report_table(tissue_2d):
    report = seam_report(per_tile_offset(tissue_2d, 32), 32)
    assert isinstance(report, SeamReport)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("seam report: shape (128, 128), tile_shape (32, 32): FLAGGED")
    assert lines[1].split()[:4] == ["axis", "seams", "seam", "pairs"]
    assert lines[2].split()[:3] == ["0", "3", "384"] and "CUT" in lines[2]
    assert "[0.5, 2]" in text
    assert report.flagged == report.axes


def test_dask_input_and_plane_reads_agree(tissue_2d, monkeypatch):
    fused = tile_process(tissue_2d, TissueOracle(), tile_shape=32, overlap=0, compute=True, client=False)
    whole = seam_report(fused, 32)
    assert seam_report(da.from_array(fused, chunks=32), 32) == whole
    monkeypatch.setattr(seams, "_MAX_TILE_VOXELS", 100)  # huge tiles: read only the planes
    planes = seam_report(fused, 32)
    for a, b in zip(planes.axes, whole.axes):
        assert (a.seam_pairs, a.seam_changes, a.verdict) == (b.seam_pairs, b.seam_changes, b.verdict)
        assert a.control_pairs < b.control_pairs  # three control planes per tile instead of up to eight


def test_zarr_path_with_tile_shape_from_attributes(tmp_path, tissue_3d):
    path = tmp_path / "fused.zarr"
    tile_process(tissue_3d, TissueOracle(), tile_shape=16, overlap=0, write_to=path, client=False)
    report = seam_report(str(path))
    assert report.tile_shape == (16, 16, 16)
    assert verdicts(report) == ["fused"] * 3


def test_zarr_v3_array_written_by_hand(tmp_path, tissue_2d, monkeypatch):
    path = tmp_path / "labels.zarr"
    arr = zarr.open_array(store=str(path), mode="w", shape=tissue_2d.shape, chunks=(32, 32), dtype="uint32",
                          zarr_format=3)
    arr[...] = per_tile_offset(tissue_2d, 32).astype(np.uint32)
    with pytest.raises(ValueError, match=r"tile_shape=None: .*pass tile_shape="):
        seam_report(path)
    assert verdicts(seam_report(path, (32, 32))) == ["cut", "cut"]
    arr.attrs["patchworks"] = {"complete": True, "tile_shape": [32, 32]}
    assert verdicts(seam_report(path)) == ["cut", "cut"]
    assert verdicts(seam_report(zarr.open_array(str(path), mode="r"))) == ["cut", "cut"]
    monkeypatch.setattr(seams, "_MAX_TILE_VOXELS", 100)  # plane reads from the lazy source
    assert verdicts(seam_report(path)) == ["cut", "cut"]


def test_zarr_group_component(tmp_path, tissue_2d):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = group.create_array("labels", shape=tissue_2d.shape, chunks=(64, 64), dtype="uint32")
    arr[...] = tissue_2d
    arr.attrs["patchworks"] = {"tile_shape": [64, 64]}
    report = seam_report(tmp_path / "g.zarr", component="labels")
    assert report.tile_shape == (64, 64) and report.ok


def test_errors(tissue_2d):
    with pytest.raises(ValueError, match="tile_shape=None: labels carries no recorded tile shape"):
        seam_report(tissue_2d)
    with pytest.raises(TypeError, match="labels: dtype float32 is not an integer label image"):
        seam_report(tissue_2d.astype(np.float32), 32)
    with pytest.raises(ValueError, match="tolerance=1"):
        seam_report(tissue_2d, 32, tolerance=1)
    with pytest.raises(ValueError, match="min_pairs=0"):
        seam_report(tissue_2d, 32, min_pairs=0)
    with pytest.raises(ValueError, match="alpha=0"):
        seam_report(tissue_2d, 32, alpha=0)
    with pytest.raises(ValueError, match="tile_shape"):
        seam_report(tissue_2d, (32, 32, 32))
    with pytest.raises(ValueError, match="component="):
        seam_report(tissue_2d, 32, component="x")


def test_iou_stitching_passes_where_touch_is_flagged(tmp_path, capsys):
    from patchworks.cli import main

    truth = dense_tissue((256, 256), 10, seed=7)
    fused = tile_process(truth, TissueOracle(), tile_shape=64, overlap=24, compute=True, client=False)
    assert not seam_report(fused, tile_shape=64).ok
    out = tmp_path / "iou.zarr"
    tile_process(truth, TissueOracle(noise=2), tile_shape=64, overlap=24, stitch="iou", write_to=out)
    report = seam_report(str(out))  # tile shape read from the attributes the run wrote
    assert report.ok, str(report)
    assert main(["seams", str(out)]) == 0
    assert "seam report" in capsys.readouterr().out
    touch = tmp_path / "touch.zarr"
    tile_process(truth, TissueOracle(), tile_shape=64, overlap=24, write_to=touch)
    assert main(["seams", str(touch)]) == 1
    assert "FUSED" in capsys.readouterr().out
