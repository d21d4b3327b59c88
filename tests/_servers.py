"""Real servers on 127.0.0.1 for the remote-storage tests: an S3 API (moto) and a static HTTP server.

Both are started by the tests themselves and listen on loopback only.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import http.server
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs


class RequestCounter:
    """Requests a server answered, by kind: ``read`` (GET of an object), ``head``, ``list``, ``write``.

    Counted on the server side, so the client under test is not touched.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.paths: collections.Counter = collections.Counter()   # (kind, key pattern) -> requests

    def add(self, kind: str, path: str = "") -> None:
        with self._lock:
            self.counts[kind] += 1
            self.paths[(kind, key_pattern(path))] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()

    def by_path(self) -> list:
        """``[[kind, pattern, requests], ...]``, most requests first (what a benchmark attributes by object)."""
        with self._lock:
            return [[k, p, n] for (k, p), n in self.paths.most_common()]

    def snapshot(self) -> dict:
        """The counts, with 0 for every kind not seen."""
        with self._lock:
            return {**dict.fromkeys(("read", "write", "list", "head", "delete"), 0), **self.counts}


def key_pattern(path: str) -> str:
    """An object's path with its numbers replaced by ``#`` (``/b/x/tiles/tile-#.bin``): one pattern per kind of object."""
    return re.sub(r"\d+", "#", path)


def _s3_kind(environ) -> str:
    method = environ.get("REQUEST_METHOD", "GET")
    query = environ.get("QUERY_STRING", "")
    if method == "HEAD":
        return "head"
    if method == "DELETE" or (method == "POST" and "delete" in parse_qs(query, keep_blank_values=True)):
        return "delete"
    if method in ("PUT", "POST"):
        return "write"
    key = environ.get("PATH_INFO", "/").strip("/").partition("/")[2]
    return "list" if "list-type" in query or "prefix=" in query or not key else "read"


def _counting(app, counter: RequestCounter):
    """A WSGI middleware around moto's app that counts every request by kind.

    ``GET /__counts__`` answers the counts as JSON and ``POST /__reset__`` sets them to zero, so that a
    benchmark can read the counts of a server running in another process.
    """
    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/__counts__":
            body = json.dumps(counter.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/__paths__":
            body = json.dumps(counter.by_path()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/__reset__":
            counter.reset()
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        kind = _s3_kind(environ)
        if kind == "list":  # a listing names its prefix in the query
            prefix = parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [""])[0]
            path = f"{path}?prefix={prefix}"
        counter.add(kind, path)
        return app(environ, start_response)
    return wrapped


@dataclass
class S3Server:
    """A moto S3 API server on 127.0.0.1 and the options fsspec/s3fs need to reach it."""

    endpoint: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-west-2"  # not us-east-1: s3fs sends it as a LocationConstraint, which S3 refuses for us-east-1
    _server: object = field(default=None, repr=False)
    requests: RequestCounter = field(default_factory=RequestCounter, repr=False)

    @property
    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region}}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket and return its name."""
        name = name or f"pw-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def stop(self) -> None:
        self._server.stop()


S3_SERVERS = ("cheroot", "werkzeug")


class _CherootServer:
    """moto's WSGI app under cheroot (a thread pool, one keep-alive connection per client socket)."""

    def __init__(self, app, threads: int = 8):
        from cheroot import wsgi

        self._server = wsgi.Server(("127.0.0.1", 0), app, numthreads=threads)
        self._server.prepare()                  # binds, so that the port is known before serving
        self._thread = threading.Thread(target=self._server.serve, daemon=True)
        self._thread.start()

    def get_host_and_port(self):
        return self._server.bind_addr[:2]

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=10)


def start_s3(server: str = "werkzeug") -> S3Server:
    """A moto S3 server in a thread of this process; its requests are counted by kind (``.requests``).

    ``server`` is the HTTP server in front of moto's WSGI app: ``"werkzeug"``
    (moto's own ``ThreadedMotoServer``: a thread per connection; the default)
    or ``"cheroot"`` (a thread pool: faster for s3fs's requests, but it stalls
    under obstore's pooled keep-alive connections, which patchworks uses for
    S3: bench_remote 512^3 on threads ran 1.4-2x slower behind it).
    """
    import logging

    if server not in S3_SERVERS:
        raise ValueError(f"server={server!r}: use one of {S3_SERVERS}")
    if server == "cheroot":
        try:
            import cheroot  # noqa: F401
        except ImportError:
            server = "werkzeug"
    if server == "cheroot":
        from moto.server import DomainDispatcherApplication, create_backend_app

        s3 = S3Server(endpoint="")
        running = _CherootServer(_counting(DomainDispatcherApplication(create_backend_app), s3.requests))
        host, port = running.get_host_and_port()
        s3.endpoint, s3._server = f"http://{host}:{port}", running
        return s3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    running = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    running.start()
    host, port = running.get_host_and_port()
    s3 = S3Server(endpoint=f"http://{host}:{port}", _server=running)
    # werkzeug's handler looks the app up on its server at each request: wrap it to count them
    running._server.app = _counting(running._server.app, s3.requests)
    return s3


def serve_s3(port_file: str, server: str = "werkzeug") -> None:
    """Run a counting moto server in this process until killed, writing its port to ``port_file``.

    A benchmark starts it as ``python tests/_servers.py s3 PORTFILE`` so that the server does not share
    the measured process's GIL (it is then "as fast as a disk", which is what the comparison needs).
    """
    import os
    import time

    server = start_s3(server)
    tmp = port_file + ".part"
    with open(tmp, "w") as f:
        f.write(server.endpoint)
    os.replace(tmp, port_file)
    while True:
        time.sleep(3600)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.requests.add("read")
        super().do_GET()

    def do_HEAD(self):
        self.server.requests.add("head")
        super().do_HEAD()


@dataclass
class HTTPServer:
    """A static file server for ``root`` on 127.0.0.1 (the standard library's http.server in a thread)."""

    root: str
    url: str
    _server: object = field(default=None, repr=False)

    @property
    def requests(self) -> RequestCounter:
        return self._server.requests

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_http(root) -> HTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = RequestCounter()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return HTTPServer(root=str(root), url=f"http://{host}:{port}", _server=server)


if __name__ == "__main__":
    import sys

    if len(sys.argv) in (3, 4) and sys.argv[1] == "s3":
        serve_s3(*sys.argv[2:])
    else:
        raise SystemExit(f"usage: python tests/_servers.py s3 PORTFILE [{'|'.join(S3_SERVERS)}]")
