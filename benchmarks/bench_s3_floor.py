"""What one request costs on the benchmark's S3 server, whatever patchworks does with it.

    python benchmarks/bench_s3_floor.py                  # obstore, then s3fs; moto behind werkzeug
    python benchmarks/bench_s3_floor.py --n 200          # more requests per loop
    python benchmarks/bench_s3_floor.py --clients s3fs   # one client only

Starts the same counting moto server as ``bench_remote.py`` (tests/_servers.py,
in its own process) and times, with each client patchworks can use for S3
(obstore for a run's bulk requests, s3fs where obstore cannot take the
options; see ``patchworks/io/_objstore.py``), tight loops of tiny requests:
PUT, GET, HEAD, LIST (a prefix of 10 keys) and DELETE, on one thread and on
two at once. Then one staged tile of the benchmark's
128^3 / 512^2 tiles (the real ``TileStaging`` bytes) put and read back, in the
bucket and on local disk. Printed: ms per request (wall time / requests; for
two threads, the wall time of both loops / all their requests, i.e. what the
server sustains) and the tile's ms per put / get.

The floor of a run is then ``requests per tile x ms per request``: compare it
with the local run's time per tile.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_remote import cpu_seconds, make_image, start_server  # noqa: E402
from patchworks.grid import TileGrid  # noqa: E402
from patchworks.io._objstore import ObstoreKeys, s3_object_store  # noqa: E402
from patchworks.io._scratch import Scratch  # noqa: E402
from patchworks.io._urls import filesystem, read_options  # noqa: E402
from patchworks.labels._stage_store import TileStaging  # noqa: E402


def per_request(fn, n: int, threads: int, server_pid: int) -> tuple[float, float, float]:
    """``(wall, client CPU, server CPU)`` milliseconds per request: ``fn(thread, i)``, ``i < n``, on ``threads`` threads.

    The CPU times do not grow with the machine's load as the wall time does:
    they say what a request costs, the wall time what it cost here and now.
    """
    def loop(t):
        for i in range(n):
            fn(t, i)
    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    c0, s0, start = cpu_seconds(), cpu_seconds(server_pid), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, k = time.perf_counter() - start, 1000 / (n * threads)
    return wall * k, (cpu_seconds() - c0) * k, (cpu_seconds(server_pid) - s0) * k


def staged_tile(shape, tile) -> tuple:
    """``(grid, tile, ids, n)``: one real tile of the benchmark image, labelled, for TileStaging.put."""
    from scipy import ndimage

    image = make_image(shape, tile)
    grid = TileGrid(shape, tile)
    t = grid.tile((0,) * len(shape))
    ids, n = ndimage.label(image[t.spatial_core] > 127)
    return grid, t, ids.astype(np.uint32), int(n)


def time_tile(staging: TileStaging, tile, ids, n, repeat: int) -> tuple[float, float, int]:
    """``(ms per put, ms per take, bytes)`` of one staged tile (after one of each, which opens the client)."""
    staging.put(tile, ids, None, n)
    staging.take(tile)
    start = time.perf_counter()
    for _ in range(repeat):
        staging.put(tile, ids, None, n)
    put = 1000 * (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    for _ in range(repeat):
        staging.take(tile)
    take = 1000 * (time.perf_counter() - start) / repeat
    size = len(staging.scratch.get(staging._key(tile.linear_index)))
    return put, take, size


def _ops(client: str, so: dict, n: int) -> tuple:
    """``(put, ops, small, big)``: a plain PUT of ``(key, bytes)``, the timed requests through ``client``, and
    the 1 kB and 1 MB bodies they send."""
    small = b"x" * 1024
    big = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes()
    if client == "obstore":
        import obstore

        st = s3_object_store("s3://floor", so)
        put = lambda key, data: obstore.put(st, key, data)  # noqa: E731
        ops = {
            "PUT 1 kB": lambda t, i: put(f"put-{t}/{i}", small),
            "GET 1 kB": lambda t, i: obstore.get(st, f"get-{t}/{i}").bytes(),
            "HEAD": lambda t, i: obstore.head(st, f"get-{t}/{i}"),
            "LIST 10 keys": lambda t, i: obstore.list_with_delimiter(st, f"list-{t}"),
            "DELETE": lambda t, i: obstore.delete(st, f"put-{t}/{i}"),
            "PUT 1 MB": lambda t, i: put(f"big-{t}/{i % 10}", big),
            "GET 1 MB": lambda t, i: obstore.get(st, f"big-{t}/{i % 10}").bytes(),
        }
        keys = [f"get-0/{i}" for i in range(n)]
        batch = ObstoreKeys(st)  # the scratch's batched reads (concurrent on obstore's runtime)
        ops["ranged GET"] = lambda t, i: batch.get_ranges(keys, [0] * len(keys), [8] * len(keys))
        return put, ops, small, big
    fs, _ = filesystem("s3://floor", read_options("s3://floor", so))
    put = lambda key, data: fs.pipe_file(f"floor/{key}", data)  # noqa: E731
    ops = {
        "PUT 1 kB": lambda t, i: put(f"put-{t}/{i}", small),
        "GET 1 kB": lambda t, i: fs.cat_file(f"floor/get-{t}/{i}", start=0),
        "HEAD": lambda t, i: (fs.invalidate_cache(f"floor/get-{t}/{i}"), fs.info(f"floor/get-{t}/{i}")),
        "LIST 10 keys": lambda t, i: (fs.invalidate_cache(f"floor/list-{t}"), fs.ls(f"floor/list-{t}")),
        "DELETE": lambda t, i: fs.rm_file(f"floor/put-{t}/{i}"),
        "PUT 1 MB": lambda t, i: put(f"big-{t}/{i % 10}", big),
        "GET 1 MB": lambda t, i: fs.cat_file(f"floor/big-{t}/{i % 10}", start=0),
    }
    keys = [f"floor/get-0/{i}" for i in range(n)]
    ops["ranged GET"] = lambda t, i: fs.cat_ranges(keys, [0] * len(keys), [8] * len(keys))
    return put, ops, small, big


def main(argv=None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="requests per loop and thread")
    parser.add_argument("--repeat", type=int, default=5, help="puts / gets of each staged tile")
    parser.add_argument("--server", default="werkzeug", choices=("cheroot", "werkzeug"),
                        help="the HTTP server in front of moto (tests/_servers.py)")
    parser.add_argument("--clients", default="obstore,s3fs", help="obstore, s3fs or both")
    args = parser.parse_args(argv)
    server, endpoint = start_server(args.server)
    so = {"key": "testing", "secret": "testing",
          "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-west-2"}}
    try:
        filesystem("s3://floor", so)[0].mkdir("floor")
        work = Path(tempfile.mkdtemp(prefix="pw-floor-"))
        for client in args.clients.split(","):
            os.environ["PATCHWORKS_S3_CLIENT"] = "fsspec" if client == "s3fs" else "obstore"
            put, ops, small, big = _ops(client, so, args.n)
            for t in range(2):
                for i in range(args.n):
                    put(f"get-{t}/{i}", small)
                for i in range(10):
                    put(f"list-{t}/{i}", small)
            print(f"{client} client, moto under {args.server} at {endpoint}; "
                  "ms per request: wall (client CPU + server CPU)")
            print(f"{'request':<14}{'1 thread':>24}{'2 threads':>24}")
            for name, op in ops.items():
                if name == "ranged GET":
                    w, c, v = (x / args.n for x in per_request(op, 1, 1, server.pid))
                    print(f"{name:<14}{w:>10.2f} ({c:5.2f} + {v:5.2f})   ({args.n} keys in one batch)")
                    continue
                if name == "GET 1 MB":  # the objects the PUT loop left
                    for t in range(2):
                        for i in range(10):
                            put(f"big-{t}/{i}", big)
                one = per_request(op, args.n, 1, server.pid)
                if name == "DELETE":  # the keys must be there again for the two-thread loop
                    for t in range(2):
                        for i in range(args.n):
                            put(f"put-{t}/{i}", small)
                two = per_request(op, args.n, 2, server.pid)
                print(f"{name:<14}" + "".join(f"{w:>10.2f} ({c:5.2f} + {v:5.2f})" for w, c, v in (one, two)))
            print()
            print(f"{'staged tile':<22}{'bytes':>10}{'put ms':>10}{'get ms':>10}")
            for shape, tile in (((256, 256, 256), 128), ((1024, 1024), 512)):
                grid, t, ids, n = staged_tile(shape, tile)
                name = "x".join(map(str, t.core_shape))
                places = [("s3", Scratch(f"s3://floor/tiles-{client}-{name}", so))]
                if client == args.clients.split(",")[0]:
                    places.insert(0, ("local", Scratch(work / name)))
                for where, scratch in places:
                    put_ms, take, size = time_tile(TileStaging(grid, scratch), t, ids, n, args.repeat)
                    print(f"{name + ' ' + where:<22}{size:>10}{put_ms:>10.2f}{take:>10.2f}")
            print()
    finally:
        os.environ.pop("PATCHWORKS_S3_CLIENT", None)
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
