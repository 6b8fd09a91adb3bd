"""A prediction canceled right after it was sent never generates, and no cancel ends with an error
that says nothing (issue 36): the real server (coglet 0.23.1), 20 cancels each sent as soon as the
prediction was accepted. docs/cancel.md says what coglet does with such a cancel and what of it
cannot be fixed from the model's side; the service's own checks: tests/serving/test_service_cancel.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.server import CogServer
from model.serving.cancel import MESSAGE
from tests.server.test_server import WebhookReceiver, submit, wait_in_flight

CANCELS = 20  # the count: the old code ran a step after a cancel in about 1 of 5


def steps_run(state_file: Path) -> int:
    return json.loads(state_file.read_text())["steps_run"]


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def test_cancel_right_after_sending(cog_server: CogServer, webhook: WebhookReceiver, queue_state_file: Path) -> None:
    """20 predictions each canceled as soon as coglet answered 202, as the issue did: each ends
    `canceled` (or, coglet's doing, `failed` saying it was cancelled), and denoising ran only where
    coglet let it (docs/cancel.md): a prediction whose cancel coglet's worker dropped (it runs in
    full, and coglet still reports `canceled`), one whose cancel coglet turned into a failure after
    it had handed run() over (it may run in full, unseen), and one whose first step was under way."""
    inputs = {"prompt": "a long river", "resolution": "720p", "aspect_ratio": "1:1"}
    wait_in_flight(queue_state_file, 0)
    # One generation's steps, measured on the same input.
    start = steps_run(queue_state_file)
    assert cog_server.predict(inputs).json()["status"] == "succeeded"
    wait_in_flight(queue_state_file, 0)
    full = steps_run(queue_state_file) - start
    assert full > 0

    run = uuid.uuid4().hex[:8]
    before = steps_run(queue_state_file)
    outcomes = []
    for k in range(CANCELS):
        name = f"cancel-now-{run}-{k}"
        assert submit(cog_server, webhook, name, inputs).status_code == 202
        cancel = requests.post(f"{cog_server.url}/predictions/{name}/cancel", timeout=30)
        assert cancel.status_code == 200, cancel.text
        outcomes.append(webhook.wait_for(name, {"canceled", "failed", "succeeded"}, timeout=120))
        wait_in_flight(queue_state_file, 0)  # its run() has ended too, not only coglet's record of it
    allowed = 0
    for done in outcomes:
        logs = done.get("logs") or ""
        if done["status"] == "failed":
            # coglet's CancelationException, with the message predict.py's setup gave it.
            assert MESSAGE in (done.get("error") or ""), done
            allowed += full
            continue
        assert done["status"] == "canceled", done
        if "Generated image in" in logs:
            # coglet's worker dropped the cancel (Cancel called on idle slot): a full run, and coglet
            # reports it canceled, with the image as its output.
            allowed += full
            continue
        assert done.get("output") is None, done
        if "Generating..." in logs:
            allowed += 1  # canceled during its first step: that step ends
    ran = steps_run(queue_state_file) - before
    dropped = sum("Generated image in" in (d.get("logs") or "") for d in outcomes)
    assert dropped < CANCELS, "every cancel was dropped: none reached the model"
    assert ran <= allowed, f"{ran} denoising steps ran after cancels, {allowed} allowed: {outcomes}"
    # A cancel sent again once it has ended (what docs/cancel.md tells clients to do) does nothing.
    assert requests.post(f"{cog_server.url}/predictions/{outcomes[0]['id']}/cancel", timeout=30).status_code == 404
