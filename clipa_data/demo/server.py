"""A local HTTP server for demo scenes: the stand-in for the web that img2dataset downloads from.

Stdlib only (``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a background thread). Routes:

- ``/images/<seed>/<index>.jpg``  the JPEG of ``training_scene(seed, index)``;
- ``/optout/<seed>/<index>.jpg``  the same image with ``X-Robots-Tag: noai`` (img2dataset
  refuses it by default);
- ``/broken/<index>.jpg``         an HTML page served under a ``.jpg`` name (not an image);
- anything else                   HTTP 404.

The server holds no state: every response is a pure function of the path.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from clipa_data.demo.scenes import encode_jpeg, render_scene, training_scene

IMAGE_ROUTE = re.compile(r"^/(?P<route>images|optout)/(?P<seed>\d+)/(?P<index>\d+)\.jpg$")
BROKEN_ROUTE = re.compile(r"^/broken/\d+\.jpg$")
NOT_AN_IMAGE = b"<!doctype html><html><body><h1>Image moved</h1></body></html>\n"


def image_path(seed: int, index: int) -> str:
    """The path of training scene ``index`` of ``seed``."""
    return f"/images/{seed}/{index}.jpg"


def optout_path(seed: int, index: int) -> str:
    """The path of the same image served with ``X-Robots-Tag: noai``."""
    return f"/optout/{seed}/{index}.jpg"


def broken_path(index: int) -> str:
    """A path that answers 200 with an HTML body under a ``.jpg`` name."""
    return f"/broken/{index}.jpg"


def missing_path(index: int) -> str:
    """A path that answers 404."""
    return f"/gone/{index}.jpg"


class DemoImageHandler(BaseHTTPRequestHandler):
    """Answers the routes of the module docstring."""

    server_version = "clipa-demo/1"

    def do_GET(self) -> None:
        match = IMAGE_ROUTE.match(self.path)
        if match:
            body = encode_jpeg(
                render_scene(training_scene(int(match["seed"]), int(match["index"])))
            )
            headers = {"Content-Type": "image/jpeg"}
            if match["route"] == "optout":
                headers["X-Robots-Tag"] = "noai"
            self._send(body, headers)
        elif BROKEN_ROUTE.match(self.path):
            self._send(NOT_AN_IMAGE, {"Content-Type": "text/html"})
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(HTTPStatus.OK)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Stay quiet: thousands of requests would drown the download's own output."""


@contextlib.contextmanager
def serve_demo_images(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve demo scenes in a background thread; yields the base URL (``http://127.0.0.1:PORT``).

    The server stops when the block ends. Port 0 lets the OS pick a free port.
    """
    server = ThreadingHTTPServer((host, port), DemoImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="clipa-demo-server", daemon=True)
    thread.start()
    try:
        bound_host, bound_port = server.server_address[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
