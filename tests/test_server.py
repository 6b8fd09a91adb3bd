"""The real Cog HTTP server (coglet) on 127.0.0.1 with tiny weights."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from model.tables import OUTPUT_SIZES
from scripts.serve import CogServer
from tests.conftest import data_uri, image_from_data_uri, png_bytes

PROMPT = "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool."


class WebhookReceiver:
    """A local HTTP endpoint that records the JSON bodies Cog posts to it."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, prediction_id: str, statuses: set[str], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("id") == prediction_id and event.get("status") in statuses:
                    return event
            time.sleep(0.2)
        raise TimeoutError(f"no webhook with status in {statuses}; got {[e.get('status') for e in self.events]}")


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def seed_request() -> dict:
    """Replicate's example request, with local data URIs for the three references."""
    return {
        "prompt": PROMPT,
        "resolution": "1080p",
        "aspect_ratio": "4:3",
        "reference_tags": ["park", "woman", "man"],
        "reference_images": [data_uri(png_bytes((320, 240), c)) for c in ("green", "pink", "navy")],
        "seed": 1020561550,
    }


def test_health_and_openapi(cog_server: CogServer) -> None:
    assert requests.get(f"{cog_server.url}/health-check", timeout=10).json()["status"] == "READY"
    schema = requests.get(f"{cog_server.url}/openapi.json", timeout=10).json()
    props = schema["components"]["schemas"]["Input"]["properties"]
    by_order = sorted(props, key=lambda name: props[name]["x-order"])  # coglet sorts keys by name
    assert by_order == ["seed", "prompt", "resolution", "aspect_ratio", "reference_tags", "reference_images"]


def test_sync_prediction_of_the_seed_example(cog_server: CogServer) -> None:
    response = cog_server.predict(seed_request())
    body = response.json()
    assert response.status_code == 200 and body["status"] == "succeeded", body.get("error")
    image = image_from_data_uri(body["output"])
    assert image.format == "PNG" and image.size == (1440, 1080)
    logs = body["logs"]
    for line in (
        "Using seed: 1020561550",
        "Using reference tags: park, woman, man",
        "Generating image with ratio 1440:1080 (4:3 at 1080p resolution)",
        "0%",
        "100%",
        "Generated image in ",
        "@woman covers ",  # each tag's share of the image (tag localization)
        "@man covers ",
        "@park covers ",
    ):
        assert line in logs


def test_same_seed_same_bytes_through_the_server(cog_server: CogServer) -> None:
    inputs = {"prompt": "a red barn", "resolution": "720p", "aspect_ratio": "21:9", "seed": 42}
    first, second = (cog_server.predict(inputs).json()["output"] for _ in range(2))
    assert first == second
    assert image_from_data_uri(first).size == OUTPUT_SIZES["720p"]["21:9"]


def test_async_prediction_reports_through_the_webhook(cog_server: CogServer, webhook: WebhookReceiver) -> None:
    response = requests.post(
        f"{cog_server.url}/predictions",
        json={"input": {"prompt": "a blue boat", "resolution": "720p", "aspect_ratio": "9:16"}, "webhook": webhook.url},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    done = webhook.wait_for(response.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done.get("error")
    assert image_from_data_uri(done["output"]).size == (720, 1280)


def test_cancel_then_serve_the_next(cog_server: CogServer, webhook: WebhookReceiver) -> None:
    prediction_id = f"cancel-{uuid.uuid4().hex[:8]}"
    response = requests.put(
        f"{cog_server.url}/predictions/{prediction_id}",
        json={
            "input": {"prompt": "a long river", "resolution": "1080p", "aspect_ratio": "21:9"},
            "webhook": webhook.url,
        },
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    time.sleep(0.5)
    cancel = requests.post(f"{cog_server.url}/predictions/{prediction_id}/cancel", timeout=30)
    assert cancel.status_code == 200, cancel.text
    done = webhook.wait_for(prediction_id, {"canceled", "succeeded", "failed"})
    assert done["status"] == "canceled", done
    assert (
        cog_server.predict({"prompt": "after the cancel", "resolution": "720p", "aspect_ratio": "1:1"}).json()["status"]
        == "succeeded"
    )


def test_bad_enum_is_a_422(cog_server: CogServer) -> None:
    response = cog_server.predict({"prompt": "x", "aspect_ratio": "5:4"})
    assert response.status_code == 422
    assert "aspect_ratio" in json.dumps(response.json())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"prompt": "@woman", "reference_tags": ["wo"], "reference_images": [data_uri(png_bytes())]},
            "reference_tags[0]: 'wo' is not a valid tag",
        ),
        ({"prompt": "@dog", "reference_tags": ["cat"], "reference_images": [data_uri(png_bytes())]}, "available: @cat"),
        ({"prompt": "x", "reference_images": ["/etc/hostname"]}, "local files are never read"),
        ({"prompt": "x", "reference_images": [data_uri(png_bytes((400, 100)))]}, "aspect ratio 4.00"),
        ({"prompt": "x", "seed": -5}, "seed: -5 is out of range; use 0 to 4294967295"),
        ({"prompt": "  "}, "prompt: '  ' is empty"),
    ],
)
def test_bad_input_fails_with_its_message_and_the_server_keeps_serving(
    cog_server: CogServer, inputs: dict, message: str
) -> None:
    body = cog_server.predict(inputs).json()
    assert body["status"] == "failed" and message in body["error"], body
    assert (
        cog_server.predict({"prompt": "next one", "resolution": "720p", "aspect_ratio": "1:1"}).json()["status"]
        == "succeeded"
    )
