"""Real servers on 127.0.0.1 for the remote-storage tests: an S3 API (moto) and a static HTTP server.

Both are started by the tests themselves and listen on loopback only.
"""

from __future__ import annotations

import collections
import functools
import json
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

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def snapshot(self) -> dict:
        """The counts, with 0 for every kind not seen."""
        with self._lock:
            return {**dict.fromkeys(("read", "write", "list", "head", "delete"), 0), **self.counts}


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
        if path == "/__reset__":
            counter.reset()
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        counter.add(_s3_kind(environ))
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


def start_s3() -> S3Server:
    """A moto S3 server in a thread of this process; its requests are counted by kind (``.requests``)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(endpoint=f"http://{host}:{port}", _server=server)
    # werkzeug's handler looks the app up on its server at each request: wrap it to count them
    server._server.app = _counting(server._server.app, s3.requests)
    return s3


def serve_s3(port_file: str) -> None:
    """Run a counting moto server in this process until killed, writing its port to ``port_file``.

    A benchmark starts it as ``python tests/_servers.py s3 PORTFILE`` so that the server does not share
    the measured process's GIL (it is then "as fast as a disk", which is what the comparison needs).
    """
    import os
    import time

    server = start_s3()
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

    if len(sys.argv) == 3 and sys.argv[1] == "s3":
        serve_s3(sys.argv[2])
    else:
        raise SystemExit("usage: python tests/_servers.py s3 PORTFILE")
