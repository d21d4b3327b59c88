"""The same labelling run from and to an S3 server on 127.0.0.1, against local disk.

    python benchmarks/bench_remote.py                # 512^3 in 128^3 tiles, 16384^2 in 512^2 tiles
    python benchmarks/bench_remote.py --size small   # smoke size (CI)
    python benchmarks/bench_remote.py --size medium  # 256^3 / 4096^2, same tile shapes

The S3 server is moto, started here in its own process (so it does not share
this process's GIL) behind a WSGI middleware that counts its requests by kind
(tests/_servers.py). Each case runs ``tile_process(threshold, table on)``
twice on the same executor: input zarr and ``write_to`` on local disk, then
both in a bucket (the input opened as a zarr array on an FsspecStore; the
scratch defaults to a hidden prefix next to ``write_to``). Printed per case:
tiles/s of both, remote/local time, requests per tile (read = object GETs,
ranged or whole, write = PUTs, list, head, delete) and the peak RSS of this
process and its children (cluster workers included). Target: remote/local
<= 1.5.

CPU seconds, measured per run: ``ours`` is this process and its children
(the cluster's workers) without the server, ``server`` is the moto process.
The server shares the machine's cores with the run, so the remote wall time
carries its CPU too; ``ours rem/loc`` is the ratio of our own CPU, the part
of the difference that is patchworks' request overhead (client encoding,
hashing, HTTP), and ``server ms/req`` what moto costs per request here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import patchworks  # noqa: E402
from patchworks.io._urls import zarr_store  # noqa: E402
from patchworks.testing import random_blobs  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import peak_rss  # noqa: E402  (the scale benchmark's RSS sampler)

SIZES = {"small": [((32, 32, 32), 16), ((256, 256), 64)],
         "medium": [((256, 256, 256), 128), ((4096, 4096), 512)],
         "full": [((512, 512, 512), 128), ((16384, 16384), 512)]}


def start_server(server: str = "werkzeug"):
    """``(process, endpoint)``: a counting moto server in a child process (``server``: its HTTP server)."""
    port_file = Path(tempfile.mkdtemp(prefix="pw-bench-s3-")) / "endpoint"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_servers.py"), "s3", str(port_file), server],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("the moto server did not start (pip install 'patchworks[test]')")
        time.sleep(0.1)
    return proc, port_file.read_text()


def counts(endpoint) -> dict:
    return json.loads(urllib.request.urlopen(endpoint + "/__counts__").read())


def paths(endpoint) -> list:
    """``[[kind, key pattern, requests], ...]`` the server answered since the last reset."""
    return json.loads(urllib.request.urlopen(endpoint + "/__paths__").read())


# which of the run's objects a key pattern names (first match wins)
_OBJECTS = [("lock", r"/lock$"), ("run record", r"/run\.json$"), ("probe", r"\.patchworks-probe"),
            ("staged tiles", r"/tiles/tile-#\.bin$"), ("table partials", r"/tiles/table-#\.npy$"),
            ("own rows", r"rows-#"), ("pyramid pieces", r"/pyramid/"),
            ("zarr metadata", r"(zarr\.json|\.zarray|\.zattrs|\.zgroup)$"),
            ("input chunks", r"/in-[^/]*\.zarr/"), ("table", r"/table/"), ("output chunks", r"/out-[^/]*\.zarr/"),
            ("scratch", r"/\.patchworks-")]


def object_of(pattern: str) -> str:
    import re

    for name, rx in _OBJECTS:
        if re.search(rx, pattern.split("?")[0]) or (name == "scratch" and ".patchworks-" in pattern):
            return name
    return "other"


def by_object(rows, n_tiles) -> dict:
    """``{(object, kind): requests per tile}``."""
    out: dict = {}
    for kind, pattern, n in rows:
        key = (object_of(pattern), kind)
        out[key] = out.get(key, 0) + n / n_tiles
    return out


def reset(endpoint) -> None:
    urllib.request.urlopen(urllib.request.Request(endpoint + "/__reset__", method="POST")).read()


def cpu_seconds(pid=None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid`` (0 once it has ended)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def cpu_split(server_pid: int) -> tuple[float, float]:
    """``(ours, server)``: CPU seconds so far of this process with its children but the server's tree, and of
    the server's tree (for deltas around a run; children that live through the run, as the cluster's do)."""
    import psutil

    theirs = {server_pid} | {c.pid for c in psutil.Process(server_pid).children(recursive=True)}
    ours = cpu_seconds() + sum(cpu_seconds(c.pid) for c in psutil.Process().children(recursive=True)
                               if c.pid not in theirs)
    return ours, sum(cpu_seconds(pid) for pid in theirs)


def tree_peak(fn):
    """``(result, seconds, peak MB)``: ``fn()`` and the peak RSS of this process plus its children."""
    return peak_rss(fn, children=True, above_start=False)


def make_image(shape, tile, seed=0) -> np.ndarray:
    """Blobs crossing the seams, built from one tile-sized patch repeated (cheap at any size)."""
    patch = (random_blobs((tile,) * len(shape), density=0.3, sigma=max(1.0, tile / 16), seed=seed) * 255)
    reps = tuple(-(-s // tile) for s in shape)
    image = np.tile(patch.astype(np.uint8), reps)[tuple(slice(0, s) for s in shape)]
    return np.roll(image, tile // 2, axis=tuple(range(len(shape))))  # blobs straddle every seam


def write_input(image, tile, store) -> None:
    arr = zarr.create_array(store=store, shape=image.shape, chunks=(tile,) * image.ndim, dtype=image.dtype,
                            overwrite=True)
    arr[...] = image


def run(source, write_to, tile, client, storage_options=None):
    kw = {} if storage_options is None else {"storage_options": storage_options}
    return patchworks.tile_process(source, patchworks.threshold(127), tile_shape=tile, write_to=write_to,
                                   client=client, overwrite=True, **kw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--executors", default="threads,cluster", help="threads, cluster or both")
    parser.add_argument("--dims", default="2,3", help="which cases: 2 (the 2-D one), 3 (the 3-D one) or both")
    parser.add_argument("--server", default="werkzeug", choices=("cheroot", "werkzeug"),
                        help="the HTTP server in front of moto (tests/_servers.py)")
    parser.add_argument("--by-object", action="store_true",
                        help="also print the requests per tile by object (staged tiles, zarr metadata, ...)")
    parser.add_argument("--patterns", action="store_true", help="also print every key pattern the server saw")
    args = parser.parse_args(argv)
    import s3fs

    server, endpoint = start_server(args.server)
    dims = {int(d) for d in args.dims.split(",")}
    so = {"key": "testing", "secret": "testing",
          "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-west-2"}}
    bucket = "bench"
    s3fs.S3FileSystem(skip_instance_cache=True, **so).mkdir(bucket)
    work = Path(tempfile.mkdtemp(prefix="pw-bench-remote-"))
    rows, ok, detail = [], True, []
    clients = []
    try:
        for executor in args.executors.split(","):
            client = False
            if executor == "cluster":
                from distributed import Client, LocalCluster
                cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                                       dashboard_address=":0", silence_logs=40)
                client = Client(cluster)
                clients.append((client, cluster))
            for shape, tile in [c for c in SIZES[args.size] if len(c[0]) in dims]:
                name = "x".join(map(str, shape))
                image = make_image(shape, tile)
                n_tiles = int(np.prod([-(-s // tile) for s in shape]))
                local_in, remote_in = work / f"in-{name}.zarr", f"s3://{bucket}/in-{name}.zarr"
                if not local_in.exists():
                    write_input(image, tile, str(local_in))
                    write_input(image, tile, zarr_store(remote_in, so, read_only=False))
                del image
                c0 = cpu_split(server.pid)
                _, t_local, m_local = tree_peak(lambda: run(str(local_in), work / f"out-{name}.zarr", tile, client))
                c1 = cpu_split(server.pid)
                remote_src = zarr.open_array(store=zarr_store(remote_in, so, read_only=True), mode="r")
                reset(endpoint)
                c2 = cpu_split(server.pid)
                _, t_remote, m_remote = tree_peak(
                    lambda: run(remote_src, f"s3://{bucket}/out-{name}.zarr", tile, client, so))
                c3 = cpu_split(server.pid)
                c = counts(endpoint)
                ours_local, ours_remote, server_cpu = c1[0] - c0[0], c3[0] - c2[0], c3[1] - c2[1]
                n_requests = sum(c[k] for k in ("read", "write", "list", "head", "delete"))
                detail.append((executor, f"{name}/{tile}", n_tiles, paths(endpoint)))
                same = np.array_equal(
                    zarr.open_group(str(work / f"out-{name}.zarr"), mode="r")["0"][...],
                    zarr.open_group(store=zarr_store(f"s3://{bucket}/out-{name}.zarr", so, read_only=True),
                                    mode="r")["0"][...])
                ok &= same
                rows.append((executor, f"{name}/{tile}", n_tiles, n_tiles / t_local, n_tiles / t_remote,
                             t_remote / t_local, *(c[k] / n_tiles for k in ("read", "write", "list", "head",
                                                                             "delete")),
                             m_local, m_remote, ours_local, ours_remote, ours_remote / max(ours_local, 1e-9),
                             server_cpu, 1e3 * server_cpu / max(n_requests, 1), "yes" if same else "NO"))
    finally:
        for client, cluster in clients:
            client.close()
            cluster.close()
        server.terminate()
        server.wait()
    header = ("executor", "case", "tiles", "local t/s", "remote t/s", "remote/local", "read/t", "write/t",
              "list/t", "head/t", "del/t", "peak MB loc", "peak MB rem", "ours CPU loc", "ours CPU rem",
              "ours rem/loc", "server CPU", "server ms/req", "equal")
    print("  ".join(f"{h:>12}" for h in header))
    for r in rows:
        cells = [f"{v:>12.2f}" if isinstance(v, float) else f"{v!s:>12}" for v in r]
        print("  ".join(cells))
    if args.by_object or args.patterns:
        for executor, case, n_tiles, seen in detail:
            print(f"\nrequests per tile by object, {executor} {case}:")
            for (obj, kind), v in sorted(by_object(seen, n_tiles).items(), key=lambda kv: -kv[1]):
                print(f"  {obj:<16} {kind:<7} {v:8.2f}")
            if args.patterns:
                for kind, pattern, n in seen:
                    print(f"    {kind:<7} {n:6d}  {pattern}")
    print("requests per tile: read = object GETs (ranged or whole), write = PUT/POST, list, head, delete; "
          "counted by the server")
    print("CPU seconds: ours = this process and the cluster's workers, server = the moto process (on the same "
          "cores, so the remote wall time carries it); ours rem/loc = our own CPU remote against local")
    print("target: remote/local <= 1.5 (the server is on 127.0.0.1, so the difference is request overhead)")
    print("identical labels remote vs local:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
