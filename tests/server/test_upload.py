"""With --upload-url, Cog PUTs each output file to the given URL and returns where it went: every
prediction's file has its own name, so none overwrites another's (a local receiver on 127.0.0.1)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from harness.server import CogServer, UploadReceiver
from tests.conftest import OFFLINE_ENV


@pytest.fixture(scope="module")
def receiver() -> Iterator[UploadReceiver]:
    r = UploadReceiver()
    yield r
    r.stop()


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
