"""The reference fetcher (model/serving/fetch.py) against a real hostile HTTP server on 127.0.0.1:
caps, deadline, address checks (by default and after redirects), proxies, credentials, cancel.

Loopback is what these servers listen on, so tests that must reach them set allow_private (as
GEN4_REFERENCE_ALLOW_PRIVATE does); the address checks are tested with the default policy, and
are refused before any connection. No traffic leaves 127.0.0.1: a public address is only ever
"fetched" through the local server standing in for a proxy.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pytest

from harness.server import free_port
from model.contract.errors import InputError
from model.serving.fetch import FetchPolicy, StopFetch, address_kind, fetch_references
from tests.conftest import data_uri
from tests.image_server import BOMB_EXPANDS_TO, PASSWORD, PNG, ImageServer

FIELD = "reference_images[1] (@woman)"
CAP = 1_000_000
LOCAL = FetchPolicy(max_bytes=CAP, timeout_s=2.0, allow_private=True)  # what the tests' servers need
DEFAULT = FetchPolicy(max_bytes=CAP, timeout_s=2.0)  # as shipped, but a small cap and deadline
PUBLIC_IP = "93.184.215.14"  # a global address, only ever reached through the local "proxy"


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever proxies the machine running the tests has: none, unless a test sets one."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def fetch_one(uri: str, policy: FetchPolicy = LOCAL) -> bytes:
    return fetch_references([(uri, FIELD)], policy)[0]


def refusal(uri: str, policy: FetchPolicy = LOCAL) -> str:
    with pytest.raises(InputError) as info:
        fetch_one(uri, policy)
    assert info.value.field == FIELD and str(info.value).startswith(FIELD + ": "), info.value
    return str(info.value)


KINDS = [
    ("8.8.8.8", None),
    ("2606:4700:4700::1111", None),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "private"),  # shared (carrier-grade NAT)
    ("fc00::1", "private"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "kind"), KINDS, ids=[k[0] for k in KINDS])
def test_each_kind_of_address_is_named(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_an_image_is_fetched_whole_and_gzip_is_undone(images: ImageServer) -> None:
    assert fetch_one(f"{images.url}/ref.png") == PNG
    assert fetch_one(f"{images.url}/ref.png.gz") == PNG
    assert fetch_one(data_uri(PNG)) == PNG
    assert fetch_one("data:image/png," + "".join(f"%{b:02X}" for b in PNG)) == PNG


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1"],
)
def test_loopback_is_refused_by_default_in_any_spelling_and_never_contacted(images: ImageServer, host: str) -> None:
    before = len(images.requests)
    message = refusal(f"http://{host}:{images.port}/ref.png", DEFAULT)
    assert "is refused: references are not fetched from loopback addresses" in message, message
    assert "GEN4_REFERENCE_ALLOW_PRIVATE" in message
    assert len(images.requests) == before  # refused after resolving, before connecting


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/ref.png", "private"),
        ("https://192.168.0.1/ref.png", "private"),
        ("http://[fd00::1]/ref.png", "private"),
    ],
)
def test_internal_networks_are_refused_by_default(url: str, kind: str) -> None:
    assert f"is refused: references are not fetched from {kind} addresses" in refusal(url, DEFAULT)


@pytest.mark.parametrize("url", ["http://0.0.0.0:9/x", "http://224.0.0.1/x", "http://[::]:9/x", "http://240.0.0.1/x"])
def test_addresses_that_are_never_an_image_server_are_refused_even_for_local_use(url: str) -> None:
    message = refusal(url, LOCAL)
    assert "is refused" in message and "ALLOW_PRIVATE" not in message


def test_internal_ports_read_the_same_whatever_answers(images: ImageServer) -> None:
    """404, 405 and a closed port on loopback: one message, so no port map can be drawn."""
    urls = [f"{images.url}/status/404", f"{images.url}/status/405", f"http://127.0.0.1:{free_port()}/status/404"]
    messages = {refusal(url, DEFAULT).replace(url, "URL") for url in urls}
    assert len(messages) == 1, messages


def test_a_huge_declared_length_is_refused_before_its_body(images: ImageServer) -> None:
    assert "is larger than 1,000,000 bytes (GEN4_REFERENCE_MAX_BYTES)" in refusal(f"{images.url}/huge")
    assert images.wait_gone("/huge")
    assert images.sent["/huge"] < 64 * 2**20  # what the socket buffers took, not 2 GB


def test_an_endless_body_is_cut_at_the_cap(images: ImageServer) -> None:
    assert "is larger than 1,000,000 bytes" in refusal(f"{images.url}/endless")
    assert images.wait_gone("/endless")
    assert images.sent["/endless"] < 64 * 2**20


def test_a_gzip_bomb_is_cut_at_the_cap_counting_decompressed_bytes(images: ImageServer) -> None:
    assert len(images.bomb) < CAP < BOMB_EXPANDS_TO  # small on the wire, huge once inflated
    assert "is larger than 1,000,000 bytes" in refusal(f"{images.url}/bomb")


def ends(call: Callable[[], object], within: float = 30) -> BaseException:
    """What `call` raises, run in a thread: a fetch that never ends fails the test, not hangs it."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            future.result(timeout=within)
        except FutureTimeout:
            pytest.fail(f"still running after {within} s")
        except BaseException as exc:
            return exc
    pytest.fail("it did not fail")


def test_a_slow_drip_ends_at_the_deadline(images: ImageServer) -> None:
    policy = FetchPolicy(CAP, timeout_s=1.0, allow_private=True)
    error = ends(lambda: fetch_one(f"{images.url}/drip", policy))
    assert isinstance(error, InputError) and error.field == FIELD
    assert "could not be fetched within 1 s (GEN4_REFERENCE_TIMEOUT)" in str(error), error
    assert images.wait_gone("/drip")  # and the connection is closed, not left to drip on


def test_a_cancel_stops_a_download_in_progress(images: ImageServer) -> None:
    """A server that sends its headers, then nothing: the stop check says stop once it has; the
    socket is shut down at once (the 60 s deadline is far away)."""
    images.sent.pop("/stall", None)
    policy = FetchPolicy(CAP, timeout_s=60, allow_private=True)
    stop = lambda: images.sent.get("/stall", 0) > 0  # noqa: E731
    error = ends(lambda: fetch_references([(f"{images.url}/stall", FIELD)], policy, stop))
    assert isinstance(error, StopFetch), error
    assert images.wait_gone("/stall", timeout=5)


def test_redirects_are_checked_at_every_hop(images: ImageServer) -> None:
    hop = f"{images.url}/redirect?to="
    assert fetch_one(hop + f"{images.url}/ref.png") == PNG  # an ordinary redirect is followed
    message = refusal(hop + "http://0.0.0.0:9/ref.png")
    assert "redirects to 'http://0.0.0.0:9/ref.png', which is refused" in message, message
    assert "redirects to a file: URL" in refusal(hop + "file:///etc/passwd")
    assert "more than 5 redirects" in refusal(f"{images.url}/loop")


@pytest.fixture
def proxy(images: ImageServer, monkeypatch: pytest.MonkeyPatch) -> ImageServer:
    """The image server as everyone's HTTP(S) proxy, loopback included (no NO_PROXY)."""
    monkeypatch.setenv("HTTP_PROXY", images.url)
    monkeypatch.setenv("HTTPS_PROXY", images.url)
    return images


def test_a_proxy_is_asked_for_the_checked_address_never_the_name(proxy: ImageServer) -> None:
    assert fetch_one(f"http://{PUBLIC_IP}/ref.png", DEFAULT) == PNG
    assert proxy.requests[-1][:2] == ("GET", f"http://{PUBLIC_IP}:80/ref.png")
    # A name is resolved here and the proxy gets its address (no second lookup to rebind).
    assert fetch_one(f"http://localhost:{proxy.port}/ref.png") == PNG
    _, target, headers = proxy.requests[-1]
    assert target == f"http://127.0.0.1:{proxy.port}/ref.png" and headers["Host"] == f"localhost:{proxy.port}"
    # https goes through CONNECT to the address (the TLS inside is the client's, checked by name).
    assert "the proxy answered CONNECT with HTTP 403" in refusal(f"https://{PUBLIC_IP}/ref.png", DEFAULT)
    assert proxy.requests[-1][:2] == ("CONNECT", f"{PUBLIC_IP}:443")


def test_a_proxy_cannot_be_used_to_reach_the_inside(proxy: ImageServer) -> None:
    before = len(proxy.requests)
    assert "is refused" in refusal(f"http://127.0.0.1:{proxy.port}/ref.png", DEFAULT)
    assert "is refused" in refusal("http://169.254.169.254/latest/meta-data/", DEFAULT)
    assert len(proxy.requests) == before
    # A public page that redirects inside: the hop is refused before it is asked for.
    inside = f"http://127.0.0.1:{proxy.port}/ref.png"
    message = refusal(f"http://{PUBLIC_IP}/redirect?to={inside}", DEFAULT)
    assert f"redirects to '{inside}', which is refused" in message
    assert len(proxy.requests) == before + 1


def test_credentials_are_sent_to_their_origin_and_never_shown(images: ImageServer) -> None:
    secret_url = f"http://user:{PASSWORD}@127.0.0.1:{images.port}"
    assert fetch_one(f"{secret_url}/auth") == PNG
    messages = [
        refusal(f"{secret_url}/status/404?token=s3cret"),
        refusal(f"http://user:{PASSWORD}@127.0.0.1:{images.port}/ref.png", DEFAULT),
        refusal(f"{secret_url}/redirect?to=http://user:{PASSWORD}@0.0.0.0/x"),
    ]
    for message in messages:
        assert PASSWORD not in message and "user" not in message and "s3cret" not in message, message
    assert f"'http://127.0.0.1:{images.port}/status/404?...' could not be fetched: HTTP 404" in messages[0]
    # Another origin (another host name for the same server) gets no Authorization.
    assert fetch_one(f"{secret_url}/redirect?to=http://localhost:{images.port}/ref.png") == PNG
    assert "Authorization" in images.requests[-2][2] and "Authorization" not in images.requests[-1][2]


def test_data_uris_are_bounded_too() -> None:
    big = data_uri(bytes(CAP + 3))
    assert "is larger than 1,000,000 bytes" in refusal(big)
    assert "'data:image/png;base64,...'" in refusal(big)  # shown by its type, not its data
    assert "base64 text is broken" in refusal("data:image/png;base64,***")
    assert "no comma" in refusal("data:image/png;base64")


def test_of_several_references_the_first_failing_is_named_and_the_others_stop(images: ImageServer) -> None:
    items = [(f"{images.url}/drip", "reference_images[0]"), (f"{images.url}/status/404", "reference_images[1]")]
    with pytest.raises(InputError) as info:
        fetch_references(items, FetchPolicy(CAP, timeout_s=60, allow_private=True))
    assert info.value.field == "reference_images[1]"
    # The drip is stopped: its request never left, or its connection is closed.
    assert images.wait_gone("/drip", timeout=3) or not any(r[1] == "/drip" for r in images.requests)


def test_nothing_is_written_to_disk(images: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fetch_one(f"{images.url}/ref.png")
    for route in ("/bomb", "/endless", "/status/404"):
        refusal(f"{images.url}{route}")
    assert list(tmp_path.iterdir()) == []


def test_a_fetched_image_decodes_like_its_bytes(images: ImageServer) -> None:
    """Through the request's validation: the bytes fetched are the reference decoded."""
    from model.contract.request import Request, validate_request

    request = Request(
        prompt="@woman",
        resolution="720p",
        aspect_ratio="1:1",
        reference_tags=["woman"],
        reference_images=[f"{images.url}/ref.png.gz"],
    )
    valid = validate_request(request, fetch=lambda items: fetch_references(items, LOCAL))
    assert valid.references[0].image.size == (64, 48)
    assert valid.references[0].source == f"'{images.url}/ref.png.gz'"
