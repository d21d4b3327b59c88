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
from scipy import ndimage


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
    report = seam_report(tissue_2d[:40, :16], (32, 16))  # one seam of 16 pairs; axis 1 not tiled
    assert verdicts(report) == ["few data", "no seams"]
    assert report.ok
    assert report.axes[1].n_seams == 0
    text = str(report)
    assert "not tiled" in text and "too little data" in text
    # uneven but not beyond chance -> not flagged, with a looser min_pairs too
    loose = seam_report(tissue_2d[:40, :16], (32, 16), min_pairs=1)
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
    assert lines[1].split()[:5] == ["axis", "signal", "seams", "seam", "pairs"]
    assert lines[2].split()[:4] == ["0", "changes", "3", "384"] and "CUT" in lines[2]
    assert lines[3].split()[:2] == ["0", "ends"]  # a tissue has no background: no ends, nothing to flag
    assert lines[3].split()[-1] == "ok"
    assert "[0.5, 2]" in text and "ends: only above" in text
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


# ---------------------------------------------------------------------------------------- objects cut off at seams


def cut_off_at_seams(labels, tile):
    """Every object crossing a seam keeps only its part in the tile of its centroid (the rest becomes background).

    What a segmenter that drops the objects it sees in its halo leaves, or a
    merge that keeps one tile's view of each object and loses the other's.
    """
    tile = np.broadcast_to(tile, (labels.ndim,))
    flat = labels.ravel()
    count = np.maximum(np.bincount(flat), 1)
    coords = np.indices(labels.shape).reshape(labels.ndim, -1)
    home = np.ones(flat.size, bool)
    for a in range(labels.ndim):
        centroid = np.bincount(flat, coords[a]) / count
        home &= (centroid[flat] // tile[a]).astype(int) == coords[a] // tile[a]
    out = labels.copy()
    out.ravel()[~home] = 0
    return out


@pytest.mark.parametrize("shape, tile", [((128, 128), 32), ((128, 128), 16), ((48, 48, 48), 16),
                                         ((48, 48, 48), 24)])
def test_objects_cut_off_at_seams_are_flagged(shape, tile):
    labels = ndimage.label(random_blobs(shape, seed=2) > 0.5)[0]
    honest = seam_report(labels, tile)
    # small images get a verdict, not "too little data": 128² was "few data" on every axis before
    assert verdicts(honest) == ["ok"] * len(shape), honest
    assert all(0.5 < row.end_ratio < 2 for row in honest.axes)
    cut = cut_off_at_seams(labels, tile)
    assert (cut != labels).any()
    report = seam_report(cut, tile)
    assert verdicts(report) == ["cut off"] * len(shape), report
    assert not report.ok and "CUT OFF: objects end at seams" in str(report)
    for row in report.axes:
        assert row.end_verdict == "cut off" and row.end_ratio > 2 and row.end_p_value < 1e-3
        # the label changes see nothing wrong: no two foreground voxels differ across the seams
        assert row.seam_changes == 0 and row.change_verdict != "cut"


def test_a_lost_tile_is_flagged_by_its_faces():
    labels = ndimage.label(random_blobs((48, 48, 48), seed=2) > 0.5)[0]
    lost = labels.copy()
    lost[24:, 24:, 24:] = 0  # the merge lost the last tile
    report = seam_report(lost, 24)
    assert not report.ok and verdicts(report) == ["cut off"] * 3, report
    for row in report.axes:
        assert row.end_worst_tile == (1, 1, 1) and row.end_worst_p_value < 1e-3
    # the axis-wide rate dilutes it among the healthy faces: the face signal is what flags it
    assert min(row.end_ratio for row in report.axes) < 2
    honest = seam_report(labels, 24)
    assert honest.ok and all(row.end_worst_p_value >= 1e-3 for row in honest.axes)


def test_a_lost_tile_is_flagged_on_a_small_2d_image():
    labels = ndimage.label(random_blobs((128, 128), seed=2) > 0.5)[0]
    lost = labels.copy()
    lost[32:64, 32:64] = 0
    report = seam_report(lost, 32)
    # each face alone has ~10 pairs: only the tile's faces together are evidence
    assert verdicts(report) == ["ok", "ok"]
    assert report.worst_tile == (1, 1) and report.worst_tile_p_value < 1e-3 and report.worst_tile_ratio > 2
    assert report.tile_flagged and not report.ok
    assert "tile (1, 1): cut off" in str(report).splitlines()[0]
    honest = seam_report(labels, 32)
    assert honest.ok and not honest.tile_flagged
    # many honest images, none flagged (the multiple testing over tiles is corrected for)
    for seed in range(6):
        for shape, tile in (((128, 128), 16), ((256, 256), 32)):
            assert seam_report(ndimage.label(random_blobs(shape, seed=seed) > 0.5)[0], tile).ok


def test_stitched_segmenter_output_passes():
    image = random_blobs((128, 128), seed=4)
    labels = tile_process(image, threshold(0.5), tile_shape=32, compute=True, client=False)
    report = seam_report(labels, 32)
    assert verdicts(report) == ["ok", "ok"], report
    assert all(row.end_verdict == "ok" and row.change_verdict == "ok" for row in report.axes)


def test_report_as_a_plain_dict(tissue_2d):
    import json

    report = seam_report(per_tile_offset(tissue_2d, 32), 32)
    d = report.to_dict()
    assert d["shape"] == [128, 128] and d["tile_shape"] == [32, 32] and d["ok"] is False
    assert (d["tolerance"], d["min_pairs"], d["alpha"]) == (2.0, 32, 1e-3)
    assert [row["verdict"] for row in d["axes"]] == ["cut", "cut"]
    row = d["axes"][0]
    assert row["flagged"] is True and row["seam_pairs"] == report.axes[0].seam_pairs == 384
    assert set(row) >= {"axis", "n_seams", "ratio", "p_value", "change_verdict", "seam_fg_pairs", "seam_ends",
                        "end_ratio", "end_p_value", "end_verdict", "end_worst_tile"}
    assert {"worst_tile", "worst_tile_ratio", "worst_tile_p_value", "tile_flagged"} <= set(d)
    back = json.loads(json.dumps(d))  # only plain types inside (nan / inf as JSON allows them)
    assert back["axes"][1]["verdict"] == "cut" and back["axes"][0]["seam_changes"] == row["seam_changes"]


def test_cli_shows_the_cut_off_signal(tmp_path, capsys):
    from patchworks.cli import main

    labels = cut_off_at_seams(ndimage.label(random_blobs((128, 128), seed=2) > 0.5)[0], 32)
    path = tmp_path / "cut.zarr"
    arr = zarr.open_array(store=str(path), mode="w", shape=labels.shape, chunks=(32, 32), dtype="uint32")
    arr[...] = labels
    assert main(["seams", str(path), "--tile", "32"]) == 1
    out = capsys.readouterr().out
    assert "CUT OFF: objects end at seams" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["0", "ends"], ["1", "ends"])]
    assert len(rows) == 2 and all(float(r[6]) > 2 for r in rows)  # the ratio column
    import json

    assert main(["seams", str(path), "--tile", "32", "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is False and [row["verdict"] for row in printed["axes"]] == ["cut off", "cut off"]
