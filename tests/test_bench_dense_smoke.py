"""The dense benchmark against MONAI runs end to end at a tiny size; MONAI's rows only when it is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_dense_monai.py"


def test_bench_dense_monai_small():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(BENCH), "--small"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("40^3")]
    paths = {" ".join(r[2:4]) if r[3] in ("mem", "np", "zarr") else r[2] for r in rows}
    assert {"tile_map mem", "stream np", "stream zarr", "sampler"} <= paths, proc.stdout
    have_monai = importlib.util.find_spec("monai") is not None and importlib.util.find_spec("torch") is not None
    assert ("monai" in paths) == have_monai, proc.stdout
    assert ("MONAI not installed" in proc.stdout) == (not have_monai)
    assert "MISMATCH" not in proc.stdout
