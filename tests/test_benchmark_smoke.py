"""The labelling benchmark's smoke mode runs end to end (tiny sizes, a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_labels.py"


def test_bench_labels_smoke():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(BENCH), "--size", "small"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    header = [line.split() for line in out.splitlines() if line.startswith("case ")]
    assert header, out
    for column in ("fn", "floor", "e2e", "overhead", "whole+io", "tiled/whole+io", "peak", "equal"):
        assert column in header[0], header[0]
    assert "targets" in out and "end-to-end breakdown" in out
    # every case, with both tile functions (cc3d's threshold, scipy.ndimage.label), was checked
    # against the same function on the whole image and agreed
    assert out.count("tiled == whole-image labels") == 8, out
    # both ratios per case: the default output (label image + pyramid) and the same output as whole+io
    assert out.count(" threshold tiled / whole+io") == 8 and out.count(" scipy tiled / whole+io") == 8, out
    assert out.count("tiled / whole+io, same output (level 0 only)") == 8, out
    assert "MISMATCH" not in out


def test_bench_scale_smoke():
    script = BENCH.parent / "bench_scale.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tiles/s" in proc.stdout and "graph build" in proc.stdout
    assert "identical labels: yes" in proc.stdout


def test_bench_stitch_smoke():
    script = BENCH.parent / "bench_stitch.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {cells[0]: cells for cells in map(str.split, proc.stdout.splitlines())
            if len(cells) > 2 and cells[0] in ("touch", "iou") and cells[1].isdigit()}
    assert int(rows["touch"][1]) > 0            # touch fuses cells pressed against seams
    assert rows["iou"][1:3] == ["0", "0"]       # iou: no false merges, no splits
    assert "iou / touch time" in proc.stdout


def test_bench_samplers_smoke():
    script = BENCH.parent / "bench_samplers.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("stratified", "random"))]
    assert len(rows) == 4 and all(float(r[2]) > 0 for r in rows), proc.stdout


def test_bench_zstack_smoke():
    script = BENCH.parent / "bench_zstack.py"
    proc = subprocess.run([sys.executable, str(script), "--small"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {(cells[0], cells[2]): cells for cells in map(str.split, proc.stdout.splitlines())
            if len(cells) > 3 and cells[0] in ("nuclei", "tissue") and cells[1].isdigit()}
    assert rows[("nuclei", "patchworks")][3:5] == ["0", "0"]   # caps kept, nothing fused
    assert rows[("nuclei", "tiled")][3:5] == ["0", "0"]
    assert int(rows[("nuclei", "pairwise")][5]) > 0              # the two-plane rule cuts caps ("0.5" is a cell)
    assert "patchworks / pairwise 0.5 time" in proc.stdout
    assert "cellpose 0.1" in proc.stdout                         # a row, measured or "cellpose not installed"


def test_bench_planner_smoke():
    """The planner benchmark runs both planners; they name the same objects, one per label less the joined ones."""
    script = BENCH.parent / "bench_planner.py"
    proc = subprocess.run([sys.executable, str(script), "--tiles", "1e3", "--block-tiles", "256"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = proc.stdout.splitlines()[-1].split()
    tiles, pairs, objects, depth = int(row[0]), int(row[1]), int(row[-1]), int(row[-3])
    assert tiles == 1000 and pairs == 20 * 999 and 100 * 1000 - pairs <= objects < 100 * 1000
    assert depth == 2  # 4 blocks under one node


def test_bench_remote_smoke():
    """Local disk vs the moto S3 server, threads only at the smoke size: identical labels, request counts."""
    import pytest
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    script = BENCH.parent / "bench_remote.py"
    proc = subprocess.run([sys.executable, str(script), "--size", "small", "--executors", "threads", "--by-object"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line.split() for line in proc.stdout.splitlines() if line.strip().startswith("executor"))
    for column in ("remote/local", "read/t", "write/t", "list/t"):
        assert column in header, header
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("threads")]
    assert len(rows) == 2 and all(r[-1] == "yes" for r in rows), proc.stdout
    assert all(float(r[header.index("list/t")]) < 2 for r in rows), "no listing per tile"
    # the CPU split closes each row: ours local, ours remote, their ratio, the server's CPU, its ms per request
    assert "rem/loc" in header and "ms/req" in header, header
    for r in rows:
        ours_local, ours_remote, ratio, server_cpu, per_request = map(float, r[-6:-1])
        assert ours_local > 0 and ours_remote > 0 and server_cpu > 0 and per_request > 0, r
        assert abs(ratio - ours_remote / ours_local) < 0.02 + 0.05 * ratio, r  # printed to 2 decimals
    assert "identical labels remote vs local: yes" in proc.stdout
    by_object = {tuple(line.split()[:-1]) for line in proc.stdout.splitlines() if line.startswith("  ")}
    seen = {(" ".join(k[:-1]), k[-1]) for k in by_object}
    for kind in [("staged tiles", "write"), ("input chunks", "read")]:
        assert kind in seen, by_object
    assert ("staged tiles", "read") not in seen, by_object   # on threads, read back from this process's memory


def test_bench_s3_floor_smoke():
    """The per-request floor of the S3 test server: every kind of request timed, a staged tile put and got."""
    import pytest
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    script = BENCH.parent / "bench_s3_floor.py"
    proc = subprocess.run([sys.executable, str(script), "--n", "3", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for kind in ("PUT 1 kB", "GET 1 kB", "HEAD", "LIST 10 keys", "DELETE", "PUT 1 MB", "GET 1 MB", "ranged GET",
                 "128x128x128 s3", "512x512 local"):
        assert kind in proc.stdout, proc.stdout
