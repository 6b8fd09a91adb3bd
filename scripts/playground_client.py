"""The playground's client of a Cog server: only Cog's HTTP API, as any client would use it.

An async prediction (`Prefer: respond-async`) reports to a webhook that this process receives
itself (coglet has no endpoint to poll), at each start, output, log line and completion; a cancel
is `POST /predictions/<id>/cancel`. Also here: what the playground reads from a prediction's logs
(progress, the seed used, each tag's share) and from its errors (the field they name), and the
prompt's @tag mentions for highlighting. No Gradio here: tests/tools/test_playground.py tests it alone.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from model.contract.prompt import MENTION_RE

TERMINAL = ("succeeded", "failed", "canceled")
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]
# The request's fields, as the server's errors name them ("reference_tags[1]: ...").
FIELDS = ("prompt", "resolution", "aspect_ratio", "seed", "reference_tags", "reference_images")
# Lines the server says (model/serving/service.py): progress, the seed, each tag's share.
_PERCENT_RE = re.compile(r"^(\d{1,3})%$", re.M)
_SEED_RE = re.compile(r"^Using seed: (\d+)$", re.M)
_SHARE_RE = re.compile(r"^@([A-Za-z][A-Za-z0-9]*) covers (\d+)% of the image \((\w+)\)$", re.M)
# What the placement rule did beyond placing a tag (model/engine/placement/report.py): a fallback
# to the whole image, two tags it cannot tell apart, a place that is worn.
_NOTE_RE = re.compile(
    r"^@([A-Za-z][A-Za-z0-9]*) (?:and @([A-Za-z][A-Za-z0-9]*) )?"
    r"(?:has no clear region|cannot be told apart|lies on a subject)\b.*$",
    re.M,
)
# A model error arrives wrapped ("Prediction failed: ... InputError: reference_tags[1]: ...").
_FIELD_RE = re.compile(rf"(?:^|: )((?:{'|'.join(FIELDS)})(?:\[(\d+)\])?: .*)$", re.S)


class WebhookInbox:
    """An HTTP endpoint on `host` (127.0.0.1 unless the server is on another machine) that
    receives Cog's webhooks and hands each prediction's bodies to whoever follows it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._queues: dict[str, queue.Queue[dict[str, Any]]] = {}
        queues = self._queues

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                try:
                    event = json.loads(body)
                except ValueError:
                    return
                inbox = queues.get(str(event.get("id")))
                if inbox is not None:
                    inbox.put(event)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def open(self, prediction_id: str) -> queue.Queue[dict[str, Any]]:
        """Start keeping the prediction's webhooks (before it is sent: the first can come at once)."""
        return self._queues.setdefault(prediction_id, queue.Queue())

    def close(self, prediction_id: str) -> None:
        self._queues.pop(prediction_id, None)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Refused(Exception):  # noqa: N818 - what happened to the request
    """The server did not take the prediction: its status code and why, in a line."""

    status: int
    message: str

    def __str__(self) -> str:
        return self.message


class CogClient:
    """Async predictions on the Cog server at `url`, reported to `inbox`."""

    def __init__(self, url: str, inbox: WebhookInbox) -> None:
        self.url = url.rstrip("/")
        self.inbox = inbox

    def health(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/health-check", timeout=10).json()

    def start(self, inputs: dict[str, Any]) -> str:
        """Send an async prediction; its id. Raises Refused when the server does not take it (a 422
        names the fields the schema refused; a 409 means it is full)."""
        prediction_id = f"playground-{uuid.uuid4().hex[:12]}"
        self.inbox.open(prediction_id)
        body = {"input": inputs, "webhook": self.inbox.url, "webhook_events_filter": WEBHOOK_EVENTS}
        try:
            response = requests.put(
                f"{self.url}/predictions/{prediction_id}",
                json=body,
                headers={"Prefer": "respond-async"},
                timeout=60,
            )
        except requests.RequestException as exc:
            self.inbox.close(prediction_id)
            raise Refused(0, f"the server at {self.url} cannot be reached ({type(exc).__name__})") from None
        if response.status_code != 202:
            self.inbox.close(prediction_id)
            raise Refused(response.status_code, refusal(response))
        return prediction_id

    def follow(self, prediction_id: str, quiet_s: float = 15) -> Iterator[dict[str, Any]]:
        """Each webhook body of the prediction until the final one. After `quiet_s` without one,
        checks that the server is still there (a dead server sends nothing more)."""
        inbox = self.inbox.open(prediction_id)
        try:
            while True:
                try:
                    event = inbox.get(timeout=quiet_s)
                except queue.Empty:
                    try:
                        self.health()
                    except requests.RequestException:
                        raise RuntimeError(f"the server at {self.url} stopped answering") from None
                    continue
                yield event
                if event.get("status") in TERMINAL:
                    return
        finally:
            self.inbox.close(prediction_id)

    def cancel(self, prediction_id: str) -> bool:
        """Ask the server to cancel the prediction; whether it knew it."""
        response = requests.post(f"{self.url}/predictions/{prediction_id}/cancel", timeout=30)
        return response.status_code == 200


def refusal(response: requests.Response) -> str:
    """Why the server refused a prediction, in a line that starts with the field when one is named."""
    if response.status_code == 409:
        return "the server is busy with as many predictions as it takes (409); try again when one ends"
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list) and detail:  # coglet's 422: the inputs against the schema
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])[2:]))}: {d.get('msg')}" for d in detail)
    return f"the server answered {response.status_code}: {response.text[:300]}"


def field_of(message: str) -> tuple[str | None, int | None, str]:
    """The field an error names, the item index if any, and the message from the field on:
    ("reference_tags", 1, "reference_tags[1]: 'x1' is not ..."); (None, None, message) if none."""
    match = _FIELD_RE.search(message)
    if match is None:
        return None, None, message
    text = match.group(1)
    name = text.split(":", 1)[0].split("[", 1)[0]
    return name, int(match.group(2)) if match.group(2) else None, text.strip()


def progress(logs: str) -> int | None:
    """The latest denoising percentage in the logs ("50%"), or None before the first."""
    found = _PERCENT_RE.findall(logs)
    return int(found[-1]) if found else None


def used_seed(logs: str) -> int | None:
    found = _SEED_RE.search(logs)
    return int(found.group(1)) if found else None


def tag_shares(logs: str) -> dict[str, tuple[int, str]]:
    """Each placed tag's share of the image in percent, and its kind (subject or place)."""
    return {tag: (int(share), kind) for tag, share, kind in _SHARE_RE.findall(logs)}


def tag_notes(logs: str) -> dict[str, str]:
    """The placement rule's note for each tag it did more than place, by tag (both tags of a
    pair it cannot tell apart)."""
    notes: dict[str, str] = {}
    for match in _NOTE_RE.finditer(logs):
        for tag in filter(None, match.groups()):
            notes[tag] = match.group(0)
    return notes


@dataclass(frozen=True)
class Piece:
    """A piece of the prompt: plain text (tag None), or a mention and whether its tag is known."""

    text: str
    tag: str | None = None
    known: bool = True


def prompt_pieces(prompt: str, tags: list[str]) -> list[Piece]:
    """The prompt cut at its @tag mentions (the server's own rule, model/contract/prompt.py)."""
    pieces: list[Piece] = []
    cursor = 0
    for match in MENTION_RE.finditer(prompt):
        if match.start() > cursor:
            pieces.append(Piece(prompt[cursor : match.start()]))
        pieces.append(Piece(match.group(0), match.group(1), match.group(1) in tags))
        cursor = match.end()
    if cursor < len(prompt):
        pieces.append(Piece(prompt[cursor:]))
    return pieces


def wait_ready(client: CogClient, timeout: float = 60) -> dict[str, Any]:
    """/health-check until READY, for a server this process did not start."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            health = client.health()
        except (requests.RequestException, ValueError) as exc:
            last = type(exc).__name__
        else:
            if health.get("status") == "READY":
                return health
            last = str(health.get("status"))
        time.sleep(1)
    raise RuntimeError(f"no Cog server READY at {client.url} within {timeout:.0f}s ({last})")
