"""A hostile image server on 127.0.0.1 for the reference fetcher's tests: honest images, and the
attacks of issue 36 (endless and huge bodies, a gzip bomb, a slow drip, redirects anywhere).
It can also stand in for an HTTP proxy: a request in absolute form (`GET http://ip/path`) is
recorded and served by its path; a CONNECT is recorded and refused."""

from __future__ import annotations

import base64
import gzip
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import png_bytes

PNG = png_bytes((64, 48), "teal")
BOMB_EXPANDS_TO = 200_000_000  # bytes of zeros behind the bomb's ~200 KB of gzip
PASSWORD = "hunter2"


def gzip_bomb(size: int = BOMB_EXPANDS_TO) -> bytes:
    """`size` zero bytes, gzip-compressed (built in pieces: never all in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.flush()


class ImageServer:
    """Routes by path; `requests` records (method, target, headers) of each request, `gone`
    the routes whose client went away while the server was still sending."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.gone: list[str] = []
        self.sent: dict[str, int] = {}
        self.bomb = gzip_bomb()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_CONNECT(self) -> None:
                server.requests.append(("CONNECT", self.path, dict(self.headers)))
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.reply(405, b"")

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, dict(self.headers)))
                parts = urllib.parse.urlsplit(self.path)  # absolute form when asked as a proxy
                query = urllib.parse.parse_qs(parts.query)
                route = parts.path
                if route == "/ref.png":
                    self.reply(200, PNG)
                elif route == "/ref.png.gz":
                    self.reply(200, gzip.compress(PNG), {"Content-Encoding": "gzip"})
                elif route == "/auth":
                    expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
                    ok = self.headers.get("Authorization") == expected
                    self.reply(200 if ok else 401, PNG if ok else b"")
                elif route == "/loop":
                    self.reply(302, b"", {"Location": "/loop"})
                elif route == "/redirect":
                    self.reply(302, b"", {"Location": query["to"][0]})
                elif route.startswith("/status/"):
                    self.reply(int(route.rsplit("/", 1)[1]), b"")
                elif route == "/bomb":
                    self.reply(200, server.bomb, {"Content-Encoding": "gzip"})
                elif route == "/huge":  # declares 2 GB
                    self.stream(route, {"Content-Length": str(2_000_000_000)}, pause=0)
                elif route == "/endless":  # no length: ends when the connection closes
                    self.stream(route, {"Connection": "close"}, pause=0)
                elif route == "/stall":  # the headers, then nothing until the client leaves
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    server.sent[route] = 1
                    self.connection.settimeout(120)
                    try:
                        while self.connection.recv(1024):
                            pass
                    except OSError:
                        pass
                    server.gone.append(route)
                    self.close_connection = True
                elif route == "/drip":  # one byte every 0.1 s, for ever
                    self.stream(route, {"Connection": "close"}, pause=0.1, size=1)
                else:
                    self.reply(404, b"")

            def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def stream(self, route: str, headers: dict[str, str], pause: float, size: int = 1 << 16) -> None:
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                block = bytes(size)
                sent = 0
                try:
                    while sent < 4_000_000_000:
                        self.wfile.write(block)
                        self.wfile.flush()
                        sent += size
                        server.sent[route] = sent
                        time.sleep(pause)
                except OSError:
                    server.gone.append(route)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_gone(self, route: str, timeout: float = 10) -> bool:
        """Whether every client that asked for `route` so far went away (within `timeout` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            asked = sum(1 for _, target, _ in self.requests if urllib.parse.urlsplit(target).path == route)
            if asked and self.gone.count(route) >= asked:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
