"""The real Cog HTTP server (coglet) for this model on 127.0.0.1, and what talks to it: a sync
prediction with coglet's busy retry, and a local stand-in for `--upload-url`'s storage.

Starting coglet has two details that are easy to miss: it starts its worker as the `python` found on
PATH (so this interpreter's folder goes first), and the working directory must be the repository
root (coglet reads .cog/openapi_schema.json from there).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent


def cog_config() -> dict:
    return yaml.safe_load((ROOT / "cog.yaml").read_text())


def max_concurrency() -> int:
    """cog.yaml's `concurrency.max`: `cog build` bakes it into the image as COG_MAX_CONCURRENCY,
    which is what coglet reads; a local server must be told the same."""
    return int(cog_config().get("concurrency", {}).get("max", 1))


def cog_environment() -> dict[str, str]:
    """cog.yaml's `environment` (NAME=value lines), which the image sets at runtime."""
    return dict(item.split("=", 1) for item in cog_config().get("environment") or [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_prediction(url: str, inputs: dict, timeout: float = 600, busy_retry_s: float = 10) -> requests.Response:
    """A sync prediction on the Cog server at `url`. A 409 means it is at capacity; coglet also
    answers 409 for a moment right after a failed prediction while it frees the slot, so retry
    briefly, as a client of any busy Cog server should."""
    deadline = time.monotonic() + busy_retry_s
    while True:
        response = requests.post(f"{url}/predictions", json={"input": inputs}, timeout=timeout)
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


class UploadReceiver:
    """A local stand-in for `--upload-url`'s storage on 127.0.0.1: stores every PUT/POST body by
    request path (what Cog uploads each output file to, as Replicate's own serving does), and
    serves it back to a GET, as a bucket serves the URL a prediction returns."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def _store(self) -> None:
                files[self.path] = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()

            do_PUT = _store  # noqa: N815 - http.server's naming
            do_POST = _store  # noqa: N815

            def do_GET(self) -> None:
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/uploads/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CogServer:
    """A coglet server process serving predict.py:Predictor."""

    def __init__(
        self,
        weights: Path,
        log: IO[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        upload_url: str | None = None,
        await_explicit_shutdown: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env |= (
            cog_environment()
            | {
                "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
                "WEIGHTS_DIR": str(weights),
                "PORT": str(self.port),
                "COG_MAX_CONCURRENCY": env.get("COG_MAX_CONCURRENCY") or str(max_concurrency()),
            }
            | (extra_env or {})
        )
        command = [sys.executable, "-m", "cog.server.http", "--host", host]
        if upload_url:
            command += ["--upload-url", upload_url]
        if await_explicit_shutdown:
            command += ["--await-explicit-shutdown", "true"]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)

    def wait_ready(self, timeout: float = 600) -> dict:
        """Poll /health-check until READY; fail fast if setup failed or the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} during setup")
            try:
                health = requests.get(f"{self.url}/health-check", timeout=5).json()
            except requests.ConnectionError:
                health = {}
            if health.get("status") == "READY":
                return health
            if health.get("status") == "SETUP_FAILED":
                raise RuntimeError(f"setup failed: {health.get('setup', {}).get('logs')}")
            time.sleep(0.5)
        raise TimeoutError(f"server did not reach READY within {timeout:.0f}s")

    def predict(self, inputs: dict, timeout: float = 600, busy_retry_s: float = 10) -> requests.Response:
        """A sync prediction (`post_prediction`)."""
        return post_prediction(self.url, inputs, timeout, busy_retry_s)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
