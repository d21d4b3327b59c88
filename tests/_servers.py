"""Real servers on 127.0.0.1 for the remote-storage tests: an S3 API (moto) and a static HTTP server.

Both are started by the tests themselves and listen on loopback only.
"""

from __future__ import annotations

import functools
import http.server
import threading
import uuid
from dataclasses import dataclass, field


@dataclass
class S3Server:
    """A moto S3 API server on 127.0.0.1 and the options fsspec/s3fs need to reach it."""

    endpoint: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-west-2"  # not us-east-1: s3fs sends it as a LocationConstraint, which S3 refuses for us-east-1
    _server: object = field(default=None, repr=False)

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
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(endpoint=f"http://{host}:{port}", _server=server)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@dataclass
class HTTPServer:
    """A static file server for ``root`` on 127.0.0.1 (the standard library's http.server in a thread)."""

    root: str
    url: str
    _server: object = field(default=None, repr=False)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_http(root) -> HTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return HTTPServer(root=str(root), url=f"http://{host}:{port}", _server=server)
