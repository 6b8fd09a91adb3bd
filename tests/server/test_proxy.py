"""The shipped nginx config (deploy/nginx/gen4.conf.template), run by a real nginx on 127.0.0.1 in
front of the session's real coglet server: Cog's traffic passes (sync, async with a webhook,
cancel), what coglet would misuse does not (prediction ids, other routes, big bodies), and a
token, when set, is asked for and never passed on."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from harness.server import CogServer, max_concurrency
from model.contract.tables import OUTPUT_SIZES
from scripts.proxy import DEFAULTS, TEMPLATE, NginxProxy, nginx_binary, render, template_variables
from tests.conftest import data_uri, image_from_data_uri, png_bytes
from tests.server.test_server import WebhookReceiver, wait_in_flight

# CI installs nginx (.ci/run): there a missing nginx fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    nginx_binary() is None and not os.environ.get("CI"),
    reason="nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)",
)
TOKEN = "s3cret-Token_~+/="
SMALL = {"prompt": "a lighthouse", "resolution": "720p", "aspect_ratio": "1:1"}
LONG = {"prompt": "a long river", "resolution": "1080p", "aspect_ratio": "21:9"}  # time to cancel it


def upstream_of(server: CogServer) -> str:
    return server.url.removeprefix("http://")


@pytest.fixture(scope="module")
def proxy(cog_server: CogServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    """The config with its defaults (no token) in front of the session's server."""
    nginx = NginxProxy(upstream_of(cog_server), tmp_path_factory.mktemp("nginx"))
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def test_cog_reads_pass_unchanged(proxy: NginxProxy, cog_server: CogServer) -> None:
    for path in ("/", "/health-check", "/openapi.json"):
        through, direct = (requests.get(f"{url}{path}", timeout=10) for url in (proxy.url, cog_server.url))
        assert through.status_code == direct.status_code == 200, (path, through.text)
        assert through.json() == direct.json()


def test_a_sync_prediction_passes(proxy: NginxProxy) -> None:
    response = requests.post(f"{proxy.url}/predictions", json={"input": SMALL}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body.get("error")
    assert image_from_data_uri(body["output"]).size == OUTPUT_SIZES["720p"]["1:1"]
    # The id is nginx's own: a POST became the PUT of a fresh id.
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0


def test_async_with_a_webhook_and_a_cancel_pass(
    proxy: NginxProxy, webhook: WebhookReceiver, queue_state_file: Path
) -> None:
    wait_in_flight(queue_state_file, 0)
    posted = requests.post(
        f"{proxy.url}/predictions",
        json={"input": SMALL, "webhook": webhook.url},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert posted.status_code == 202, posted.text
    done = webhook.wait_for(posted.json()["id"], {"succeeded", "failed", "canceled"})
    assert done["status"] == "succeeded", done.get("error")
    assert image_from_data_uri(done["output"]).size == OUTPUT_SIZES["720p"]["1:1"]

    chosen = f"proxy-cancel-{uuid.uuid4().hex[:8]}"
    wait_in_flight(queue_state_file, 0)
    put = requests.put(
        f"{proxy.url}/predictions/{chosen}",
        json={"input": LONG, "webhook": webhook.url},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert put.status_code == 202, put.text
    wait_in_flight(queue_state_file, 1)  # the model has it: a cancel now is applied
    cancel = requests.post(f"{proxy.url}/predictions/{chosen}/cancel", timeout=30)
    assert cancel.status_code == 200, cancel.text
    assert webhook.wait_for(chosen, {"canceled", "succeeded", "failed"})["status"] == "canceled"


def leftovers(marker: str) -> list[Path]:
    """Folders named after `marker` anywhere coglet could have made them: its own folder under
    /tmp, and the folders an id with ../ reaches from there."""
    roots = [Path("/tmp"), Path("/tmp/coglet"), Path("/tmp/coglet/predictions")]
    return [p for root in roots if root.is_dir() for p in root.glob(f"*{marker}*")]


def test_prediction_ids_coglet_would_misuse_are_refused(proxy: NginxProxy, cog_server: CogServer) -> None:
    """coglet 0.23.1 takes ids of 256+ characters or with NUL and never frees their slot (4 of them:
    409 for everyone), and makes folders out of ids with ../ in them. Each is tried as often as
    there are slots: one that got through would leave the server BUSY."""
    marker = f"gen4attack{uuid.uuid4().hex[:8]}"
    attacks = {
        f"/predictions/{'a' * 300}": 400,
        f"/predictions/{'a' * 65}": 400,
        "/predictions/a%00b": 400,
        f"/predictions/..%2F..%2F{marker}": 400,
        f"/predictions/%2E%2E%2F%2E%2E%2F{marker}": 400,
        f"/predictions/x%2F..%2F..%2F..%2F{marker}": 400,
        "/predictions/": 400,
        "/predictions/with space": 400,
    }
    for _ in range(max_concurrency()):
        for path, status in attacks.items():
            response = requests.put(f"{proxy.url}{path}", json={"input": SMALL}, timeout=30)
            assert response.status_code == status, (path, response.status_code, response.text)
        # nginx resolves the ../ first: /<marker>/cancel is no route of Cog's.
        cancel = requests.post(f"{proxy.url}/predictions/..%2F{marker}/cancel", timeout=30)
        assert cancel.status_code == 404, cancel.text
        # The same ids in a POST's body: coglet refuses any body id that is not nginx's own.
        for body_id in (f"../../{marker}", "a" * 300, "a\x00b"):
            response = requests.post(f"{proxy.url}/predictions", json={"id": body_id, "input": SMALL}, timeout=30)
            assert response.status_code == 422, response.text
            assert "prediction ID must match" in response.text
    assert requests.put(f"{proxy.url}/predictions/{'a' * 300}", timeout=10).json()["detail"] == (
        "a prediction id is 1 to 64 letters, digits, _ or -"
    )
    assert leftovers(marker) == []
    assert requests.get(f"{cog_server.url}/health-check", timeout=10).json()["status"] == "READY"
    # A valid id of the longest length passes to coglet (which refuses the input, naming it).
    unknown = {"input": {**SMALL, "resolution": "9k"}}
    valid = requests.put(f"{proxy.url}/predictions/{'A-_9' * 16}", json=unknown, timeout=30)
    assert valid.status_code == 422 and "resolution" in valid.text, valid.text


def test_only_cogs_routes_and_methods(proxy: NginxProxy, cog_server: CogServer) -> None:
    refused = {
        ("POST", "/shutdown"): 404,  # the pod's own drain reaches coglet directly; clients never
        ("POST", "/trainings"): 404,
        ("GET", "/docs"): 404,
        ("GET", "/predictions"): 405,
        ("DELETE", "/predictions/abc"): 405,
        ("GET", "/predictions/abc"): 405,
        ("GET", "/predictions/abc/cancel"): 405,
        ("POST", "/health-check"): 405,
        ("PUT", "/openapi.json"): 405,
        ("POST", "/"): 405,
    }
    for (method, path), status in refused.items():
        response = requests.request(method, f"{proxy.url}{path}", timeout=10)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        assert response.json()["detail"]
    assert requests.get(f"{cog_server.url}/health-check", timeout=10).json()["status"] == "READY"


def test_request_bodies_over_the_cap_are_refused(cog_server: CogServer, tmp_path: Path) -> None:
    nginx = NginxProxy(upstream_of(cog_server), tmp_path, max_body="256k")
    try:
        reference = data_uri(os.urandom(200_000))  # ~267 KB as base64: over the cap
        big = {"input": {**SMALL, "reference_images": [reference]}}
        response = requests.post(f"{nginx.url}/predictions", json=big, timeout=30)
        assert response.status_code == 413, response.text
        assert "request body over 256k" in response.json()["detail"]
        # Under the cap it reaches coglet (a 1x1 reference is refused there, naming the field).
        small = {"input": {**SMALL, "reference_images": [data_uri(png_bytes((1, 1)))]}}
        response = requests.post(f"{nginx.url}/predictions", json=small, timeout=60)
        assert response.status_code == 200 and response.json()["status"] == "failed", response.text
        assert "reference_images" in response.json()["error"]
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def guarded(cog_server: CogServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    nginx = NginxProxy(upstream_of(cog_server), tmp_path_factory.mktemp("nginx-token"), token=TOKEN)
    yield nginx
    nginx.stop()


def test_a_token_is_asked_for_on_every_route_but_the_health_check(guarded: NginxProxy) -> None:
    wrong = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN})
    routes = (("GET", "/"), ("GET", "/openapi.json"), ("POST", "/predictions"), ("PUT", "/predictions/a"))
    for header in wrong:
        for method, path in routes:
            response = requests.request(method, f"{guarded.url}{path}", headers=header, json={}, timeout=10)
            assert response.status_code == 401, (header, method, path, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "bearer token" in response.json()["detail"]
    # Load balancers and monitors probe without one.
    assert requests.get(f"{guarded.url}/health-check", timeout=10).json()["status"] == "READY"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{guarded.url}/openapi.json", headers=good, timeout=10).status_code == 200
    # A prediction passes to coglet (which refuses the input, naming it: no need to generate).
    unknown = {"input": {**SMALL, "resolution": "9k"}}
    response = requests.post(f"{guarded.url}/predictions", headers=good, json=unknown, timeout=30)
    assert response.status_code == 422 and "resolution" in response.text, response.text


def test_the_token_never_reaches_the_server(tmp_path: Path) -> None:
    """What coglet would see (and could log): a local upstream records the headers nginx sends."""
    seen: list[dict[str, str]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    nginx = NginxProxy(f"127.0.0.1:{upstream.server_address[1]}", tmp_path, token=TOKEN)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(f"{nginx.url}/predictions", headers=headers, json={}, timeout=10).status_code == 200
        assert requests.put(f"{nginx.url}/predictions/p1", headers=headers, json={}, timeout=10).status_code == 200
        assert len(seen) == 2
        assert not any(TOKEN in value for request in seen for value in request.values()), seen
    finally:
        nginx.stop()
        upstream.shutdown()
        upstream.server_close()


def test_the_template_is_rendered_as_the_nginx_image_does() -> None:
    template = TEMPLATE.read_text()
    assert template_variables(template) == set(DEFAULTS)
    rendered = render(template, DEFAULTS)
    config = [line for line in rendered.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in config if "GEN4_PROXY_" in line or "${" in line]
    assert "$request_id" in rendered and "$gen4_id" in rendered  # nginx's own variables stay
    with pytest.raises(ValueError, match="set GEN4_PROXY_TOKEN"):
        render(template, {k: v for k, v in DEFAULTS.items() if k != "GEN4_PROXY_TOKEN"})
    with pytest.raises(ValueError, match="GEN4_PROXY_TOKEN may hold only"):
        render(template, DEFAULTS | {"GEN4_PROXY_TOKEN": 'a"; default 1; "'})
