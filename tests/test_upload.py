"""With --upload-url, Cog PUTs each output file to the given URL and returns where it went: every
prediction's file has its own name, so none overwrites another's (a local receiver on 127.0.0.1)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from scripts.serve import CogServer
from tests.conftest import OFFLINE_ENV


class UploadReceiver:
    """Stores every PUT/POST body by request path."""

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

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/uploads/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[UploadReceiver]:
    r = UploadReceiver()
    yield r
    r.server.shutdown()


def test_each_prediction_uploads_its_own_file(tiny_weights: Path, tmp_path: Path, receiver: UploadReceiver) -> None:
    with open(tmp_path / "server.log", "w") as log:
        env = {"GEN4_STEPS": "1", "GEN4_QUEUE_STATE_FILE": str(tmp_path / "queue.json"), **OFFLINE_ENV}
        server = CogServer(tiny_weights, log=log, extra_env=env, upload_url=receiver.url)
        try:
            server.wait_ready(timeout=300)
            # The same request three times (same seed: same pixels) and one other.
            same = {"prompt": "a windmill", "resolution": "720p", "aspect_ratio": "1:1", "seed": 11}
            bodies = [server.predict(same).json() for _ in range(3)]
            bodies.append(server.predict({**same, "seed": 12, "aspect_ratio": "4:3"}).json())
        finally:
            server.stop()
    assert [b["status"] for b in bodies] == ["succeeded"] * 4, [b.get("error") for b in bodies]
    outputs = [b["output"] for b in bodies]
    assert all(o.startswith(receiver.url) for o in outputs), outputs
    assert len(set(outputs)) == 4  # four names: nothing overwritten
    assert len(receiver.files) == 4
    sizes = []
    for path, data in receiver.files.items():
        assert path.startswith("/uploads/gen4-") and path.endswith(".png"), path
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(image.size)
    assert sorted(sizes) == sorted([(720, 720)] * 3 + [(960, 720)])
