"""Faults through the real server: injected out-of-memory inside denoising, cancel mid-denoising.
Each ends clearly, frees memory, and the server stays READY for the next prediction."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from harness.server import CogServer
from tests.conftest import OFFLINE_ENV
from tests.server.test_server import WebhookReceiver, server_log, submit

FAULT_LOG: dict[str, Path] = {}  # by server URL: one line each time release_memory ran
SERVER_LOG: dict[str, Path] = {}  # by server URL: coglet's own log, one JSON object per line
NEXT = {"prompt": "the next one", "resolution": "720p", "aspect_ratio": "1:1", "seed": 2}


@pytest.fixture(scope="module")
def faulty_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServer]:
    folder = tmp_path_factory.mktemp("faulty-server")
    with open(folder / "server.log", "w") as log:
        env = {
            "COG_PREDICT_TYPE_STUB": "tests/fault_predictor.py:FaultyPredictor",
            "GEN4_STEPS": "8",
            "FAULT_LOG": str(folder / "faults.log"),
            "GEN4_QUEUE_STATE_FILE": str(folder / "queue.json"),
            **OFFLINE_ENV,
        }
        server = CogServer(tiny_weights, log=log, extra_env=env)
        FAULT_LOG[server.url] = folder / "faults.log"
        SERVER_LOG[server.url] = folder / "server.log"
        try:
            server.wait_ready(timeout=300)
            yield server
        finally:
            server.stop()


def start(server: CogServer, hooks: WebhookReceiver, prefix: str, inputs: dict) -> str:
    """An async prediction with a fresh id; returns the id."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    assert submit(server, hooks, name, inputs).status_code == 202
    return name


def release_times(server: CogServer) -> list[float]:
    path = FAULT_LOG[server.url]
    return [float(line.split()[1]) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def test_out_of_memory_fails_clearly_frees_memory_and_stays_ready(
    faulty_server: CogServer, hooks: WebhookReceiver
) -> None:
    # Async, for the logs: coglet 0.23.1's sync response to a failed prediction has empty logs.
    inputs = {"prompt": "inject-oom a castle", "resolution": "1080p", "aspect_ratio": "4:3"}
    name = start(faulty_server, hooks, "oom", inputs)
    body = hooks.wait_for(name, {"failed", "succeeded", "canceled"})
    assert body["status"] == "failed", body
    assert (
        "out of GPU memory while generating 1440x1080 with 0 reference(s); the server is still ready" in body["error"]
    )
    assert "[fault-injector] release_memory ran" in body["logs"]
    health = requests.get(f"{faulty_server.url}/health-check", timeout=10).json()
    assert health["status"] == "READY"
    assert faulty_server.predict(NEXT).json()["status"] == "succeeded"


def test_cancel_mid_denoising_stops_within_one_step_and_frees_memory(
    faulty_server: CogServer, hooks: WebhookReceiver
) -> None:
    inputs = {"prompt": "a long voyage", "resolution": "1080p", "aspect_ratio": "16:9"}
    name = start(faulty_server, hooks, "cancel", inputs)
    # Wait until denoising is under way (the first percentages are in the logs), then cancel.
    hooks.wait_for_log(name, "\n10%", timeout=60)
    asked = time.monotonic()
    assert requests.post(f"{faulty_server.url}/predictions/{name}/cancel", timeout=30).status_code == 200
    done = hooks.wait_for(name, {"canceled", "succeeded", "failed"})
    assert done["status"] == "canceled", done
    logs = done["logs"]
    assert "100%" not in logs
    # Memory released after the cancel (log lines after a cancel reach no prediction: a file).
    asked_wall = time.time() - (time.monotonic() - asked)
    deadline = time.monotonic() + 30
    while not (released := [t for t in release_times(faulty_server) if t > asked_wall]):
        assert time.monotonic() < deadline, "release_memory never ran after the cancel"
        time.sleep(0.1)
    # One step's duration, from the server's timestamps of this prediction's 0% and 10% (one step).
    stamps = {}
    for event in server_log(SERVER_LOG[faulty_server.url], name):
        if event["fields"].get("message") in ("0%", "10%"):
            stamps[event["fields"]["message"]] = datetime.fromisoformat(event["timestamp"]).timestamp()
    step_s = stamps["10%"] - stamps["0%"]
    assert released[0] - asked_wall < step_s * 1.5 + 0.3, (released[0] - asked_wall, step_s)
    # Within one step: the percentages logged after the cancel was asked are at most one more step.
    progress = [int(line[:-1]) for line in logs.splitlines() if line.endswith("%") and line[:-1].isdigit()]
    assert progress[-1] < 100
    assert done["_received"] - asked < 30  # and no waiting for the rest of the 8 + 2 steps
    assert faulty_server.predict(NEXT).json()["status"] == "succeeded"
