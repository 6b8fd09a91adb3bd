"""The real Cog HTTP server (coglet) on 127.0.0.1 with tiny weights."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from harness.server import CogServer, max_concurrency
from model.contract.tables import OUTPUT_SIZES
from scripts.drain import drain, in_flight
from tests.conftest import OFFLINE_ENV, data_uri, image_from_data_uri, png_bytes

PROMPT = "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool."


class WebhookReceiver:
    """A local HTTP endpoint that records the JSON bodies Cog posts to it."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # When it arrived, by our clock: the order in which predictions finished.
                received.append({**json.loads(body), "_received": time.monotonic()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, prediction_id: str, matches: Callable[[dict], bool], timeout: float, poll: float) -> dict | None:
        """The first webhook of the prediction that `matches`, waiting up to `timeout`; else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("id") == prediction_id and matches(event):
                    return event
            time.sleep(poll)
        return None

    def wait_for(self, prediction_id: str, statuses: set[str], timeout: float = 120) -> dict:
        event = self.first(prediction_id, lambda e: e.get("status") in statuses, timeout, poll=0.2)
        if event is None:
            raise TimeoutError(f"no webhook with status in {statuses}; got {[e.get('status') for e in self.events]}")
        return event

    def wait_for_log(self, prediction_id: str, line: str, timeout: float = 120) -> dict:
        """The first webhook of the prediction whose logs hold `line` (Cog posts log updates too)."""
        event = self.first(prediction_id, lambda e: line in (e.get("logs") or ""), timeout, poll=0.05)
        if event is not None:
            return event
        logs = [e.get("logs") for e in self.events if e.get("id") == prediction_id]
        raise TimeoutError(f"no webhook of {prediction_id} logged {line!r}; its logs: {logs}")


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def log_events(path: Path) -> list[dict]:
    """Every event in the server's JSON log so far."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def server_log(path: Path, prediction_id: str) -> list[dict]:
    """The events coglet logged for one prediction, from the server's JSON log: what the worker
    said and when, as soon as it said it."""
    return [e for e in log_events(path) if e.get("fields", {}).get("prediction_id") == prediction_id]


def wait_for_server_log(path: Path, prediction_id: str, message: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["fields"].get("message") == message for e in server_log(path, prediction_id)):
        assert time.monotonic() < deadline, f"{prediction_id} never logged {message!r}"
        time.sleep(0.05)


def wait_in_flight(state_file: Path, count: int, timeout: float = 60) -> None:
    """Wait until the model has exactly `count` predictions admitted (its queue's published count)."""
    deadline = time.monotonic() + timeout
    while in_flight(state_file) != count:
        assert time.monotonic() < deadline, f"in flight: {in_flight(state_file)}, expected {count}"
        time.sleep(0.05)


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


def test_the_setup_log_says_what_loaded_and_nothing_else(cog_server: CogServer, queue_state_file: Path) -> None:
    """What the worker printed at setup: the one line that names the weights, not the libraries'
    loading progress bars or their warnings that say nothing about this server (model/serving/logs.py)."""
    # coglet tags the worker's output `coglet::setup` while setup runs; a line that reaches it just
    # after setup returned comes as `coglet::user` (seen in CI), outside any prediction either way,
    # and possibly after READY: wait a little for it. Only what comes before the first prediction
    # is setup's: coglet can file a canceled prediction's lines as `coglet::user` without its id
    # (seen once in a full run: the first lines of test_proxy's canceled 1080p 21:9 prediction).
    worker = {"coglet::setup", "coglet::user"}
    deadline = time.monotonic() + 10
    while True:
        events = log_events(queue_state_file.parent / "server.log")
        first = next((i for i, e in enumerate(events) if "prediction_id" in e["fields"]), len(events))
        setup = [e["fields"]["message"] for e in events[:first] if e["target"] in worker]
        if setup or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(setup) == 1 and setup[0].startswith("Loaded SDXL + IP-Adapter Plus with TINY RANDOM weights"), setup


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


def test_cancel_then_serve_the_next(cog_server: CogServer, webhook: WebhookReceiver, queue_state_file: Path) -> None:
    prediction_id = f"cancel-{uuid.uuid4().hex[:8]}"
    wait_in_flight(queue_state_file, 0)
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
    wait_in_flight(queue_state_file, 1)  # the model has it: a cancel now is applied
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


def submit(cog_server: CogServer, webhook: WebhookReceiver, name: str, inputs: dict) -> requests.Response:
    """An async prediction with a chosen id, reporting to the webhook."""
    return requests.put(
        f"{cog_server.url}/predictions/{name}",
        json={"input": inputs, "webhook": webhook.url},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )


def test_a_burst_within_the_bound_all_succeed_and_one_more_gets_409(
    cog_server: CogServer, webhook: WebhookReceiver, queue_state_file: Path
) -> None:
    bound = max_concurrency()
    assert bound == 4  # cog.yaml's concurrency.max
    run = uuid.uuid4().hex[:8]
    inputs = {"prompt": "a tall ship", "resolution": "1080p", "aspect_ratio": "16:9", "seed": 7}
    names = [f"burst-{run}-{k}" for k in range(bound)]
    wait_in_flight(queue_state_file, 0)  # nothing left over from an earlier test
    for k, name in enumerate(names):
        response = submit(cog_server, webhook, name, inputs)
        assert response.status_code == 202, response.text
        # coglet answers 202 before its worker has the prediction, and hands a burst to the worker
        # in no fixed order (CI saw the second start first), so the order of arrival that the
        # queue keeps is the order in which predict() saw them: wait for each before the next.
        wait_in_flight(queue_state_file, k + 1)
    # All four admitted (one generating, three queued): a fifth is past the bound.
    extra = submit(cog_server, webhook, f"burst-{run}-extra", inputs)
    assert extra.status_code == 409, extra.text
    done = [webhook.wait_for(name, {"succeeded", "failed", "canceled"}, timeout=300) for name in names]
    assert [d["status"] for d in done] == ["succeeded"] * bound, [d.get("error") for d in done]
    assert all(image_from_data_uri(d["output"]).size == (1920, 1080) for d in done)
    assert len({d["output"] for d in done}) == 1  # same seed, same image, whatever the queue did
    assert any("Waiting for the GPU: " in d["logs"] for d in done)
    # First in, first out.
    finished = [d["_received"] for d in done]
    assert finished == sorted(finished)


def test_cancel_a_queued_prediction(cog_server: CogServer, webhook: WebhookReceiver, queue_state_file: Path) -> None:
    run = uuid.uuid4().hex[:8]
    inputs = {"prompt": "a slow glacier", "resolution": "1080p", "aspect_ratio": "21:9"}
    names = [f"queued-{run}-{k}" for k in range(3)]
    wait_in_flight(queue_state_file, 0)
    for k, name in enumerate(names):
        assert submit(cog_server, webhook, name, inputs).status_code == 202
        wait_in_flight(queue_state_file, k + 1)  # in this order (see the burst test)
    # Cancel once it waits in line, which its "Waiting for the GPU" log line shows: the queue count
    # above rises on arrival, before the request is validated and takes its place (a cancel during
    # validation leaves no waiting line in the logs: CI saw that once). The line is read from the
    # server's own log, because coglet 0.23.1 holds a log line's webhook back until the next line
    # (here: until the prediction starts). Waiting for it also keeps the cancel away from the first
    # milliseconds after submission, which can reach coglet before its worker has registered the
    # prediction, and is then not applied.
    wait_for_server_log(queue_state_file.parent / "server.log", names[2], "Waiting for the GPU: 2 prediction(s) ahead")
    cancel = requests.post(f"{cog_server.url}/predictions/{names[2]}/cancel", timeout=30)
    assert cancel.status_code == 200, cancel.text
    third = webhook.wait_for(names[2], {"canceled", "succeeded", "failed"}, timeout=300)
    assert third["status"] == "canceled", third
    first, second = (webhook.wait_for(n, {"canceled", "succeeded", "failed"}, timeout=300) for n in names[:2])
    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    # The canceled one left the line without ever running.
    assert "Waiting for the GPU" in third["logs"] and "Generating..." not in third["logs"], third["logs"]
    assert third["_received"] < first["_received"]


def test_drain_lets_admitted_predictions_finish_then_shuts_down(
    tiny_weights: Path, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    """What the Kubernetes preStop hook does: the server ignores SIGTERM, scripts/drain.py waits for
    the queue to empty, then POSTs /shutdown; nothing admitted is lost."""
    state = tmp_path / "queue.json"
    with open(tmp_path / "server.log", "w") as log:
        server = CogServer(
            tiny_weights,
            log=log,
            extra_env={"GEN4_STEPS": "2", "GEN4_QUEUE_STATE_FILE": str(state), **OFFLINE_ENV},
            await_explicit_shutdown=True,
        )
        try:
            server.wait_ready(timeout=300)
            run = uuid.uuid4().hex[:8]
            names = [f"drain-{run}-{k}" for k in range(2)]
            inputs = {"prompt": "a quiet harbour", "resolution": "720p", "aspect_ratio": "21:9"}
            for name in names:
                assert submit(cog_server=server, webhook=webhook, name=name, inputs=inputs).status_code == 202
            wait_in_flight(state, 2)
            server.proc.send_signal(signal.SIGTERM)  # what Kubernetes sends: ignored
            assert drain(server.url, state, settle=0, timeout=120, poll=0.2) == 0
            assert server.proc.wait(timeout=60) == 0
            done = [webhook.wait_for(n, {"succeeded", "failed", "canceled"}, timeout=10) for n in names]
            assert [d["status"] for d in done] == ["succeeded", "succeeded"]
        finally:
            server.stop()
