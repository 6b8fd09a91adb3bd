"""Reference images fetched by the model itself, bounded, never from the server's own network.

predict.py receives each reference as the URI string the request sent (see `ReferenceURI`), so
Cog downloads nothing; this module reads each into memory (no temporary file, whatever happens):

- at most `max_bytes`, counted after any Content-Encoding (gzip, deflate) is undone, and a data:
  URI's decoded bytes alike; a larger Content-Length is refused before its body is read;
- within `timeout_s` in all (name lookup, connection, TLS, every redirect, the body), however
  slowly the server sends;
- only from public addresses: the host is resolved here, every address it resolves to is checked
  (loopback, private, link-local, shared, multicast, reserved, unspecified; IPv4 and IPv6,
  IPv4-mapped, 6to4 and NAT64 forms included), and the connection goes to that checked address,
  so that a second lookup cannot answer otherwise (DNS rebinding). TLS still verifies the
  certificate against the host name. Each redirect (at most MAX_REDIRECTS) is checked the same
  way. `allow_private` (GEN4_REFERENCE_ALLOW_PRIVATE) lets loopback, private and link-local
  addresses through, for local use;
- proxies: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY and NO_PROXY are honoured as `requests` honours
  them, but a proxy is only ever asked for the checked address (an absolute URL with the IP for
  http, `CONNECT ip:port` for https, TLS then verified end to end against the host name): it
  cannot be used to reach what the checks refuse. The proxy's own address is the operator's
  choice and is not checked;
- cancelable: `should_stop` is polled while the downloads run in threads of their own, and a stop
  shuts their sockets down at once.

Errors are InputErrors naming the reference (`reference_images[1] (@woman)`) and its URI without
user:password or query (`display_uri`); an address refused is refused before any connection, so
the message is the same whatever listens there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from model.contract.errors import InputError
from model.contract.images import display_uri
from model.contract.tables import MAX_REFERENCE_BYTES

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 64 * 1024
POLL_S = 0.05  # how often a stop is checked while downloads run
# Kinds of address refused unless GEN4_REFERENCE_ALLOW_PRIVATE is set; the others always are.
PRIVATE_KINDS = ("loopback", "private", "link-local")
# 64:ff9b::/96 (RFC 6052): NAT64 maps an IPv4 address into its last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class FetchPolicy:
    """What a reference download may do (GEN4_REFERENCE_MAX_BYTES, _TIMEOUT, _ALLOW_PRIVATE)."""

    max_bytes: int = MAX_REFERENCE_BYTES
    timeout_s: float = 30.0
    allow_private: bool = False


class ReferenceURI(os.PathLike):
    """predict.py's type for a reference: Cog writes its schema as a `format: uri` string, as for
    cog.Path, because it is os.PathLike; coglet downloads only inputs annotated with cog.Path
    itself, so the request's string reaches run() untouched, and `fetch_references` reads it.
    Never instantiated: the values are the plain strings of the request's JSON."""

    def __fspath__(self) -> str:
        raise TypeError("a ReferenceURI is the request's string; fetch it with fetch_references")


class StopFetch(Exception):  # noqa: N818 - what happened, as Canceled in service.py
    """The prediction was canceled while its references were being fetched."""


def address_kind(address: Address) -> str | None:
    """Why an address is no place to fetch an image from ("loopback", "private", ...), or None
    for a public one. An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64) is
    judged by that IPv4 address, where the packets end up (an IPv6-only cluster reaches IPv4
    servers through NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


@dataclass(frozen=True)
class Target:
    """One URL to request: where it points, and what goes on the wire for it."""

    scheme: str
    host: str  # as the URL spells it (IDNA-encoded), brackets removed
    port: int
    path: str  # path and query, as sent
    credentials: str | None  # user:password from the URL, sent as Basic auth to this origin only

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _ip_authority(address: Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class Download:
    """One reference's fetch into memory. `run` blocks (it runs in a thread of its own); `abort`,
    from another thread, ends it at once by shutting its socket down."""

    def __init__(self, uri: str, field: str, policy: FetchPolicy) -> None:
        self.uri = uri
        self.field = field
        self.policy = policy
        self.shown = display_uri(uri)
        self.deadline = time.monotonic() + policy.timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False

    # -- errors -----------------------------------------------------------------------------
    def error(self, message: str) -> InputError:
        return InputError(self.field, f"{self.shown} {message}")

    def timeout_error(self) -> InputError:
        return self.error(f"could not be fetched within {self.policy.timeout_s:g} s (GEN4_REFERENCE_TIMEOUT)")

    def too_large(self) -> InputError:
        return self.error(f"is larger than {self.policy.max_bytes:,} bytes (GEN4_REFERENCE_MAX_BYTES)")

    # -- control ----------------------------------------------------------------------------
    def abort(self) -> None:
        """Stop the download: it ends with an error within a moment (its result is not read)."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            # socket.socket's own shutdown, also under TLS: it wakes a recv blocked in another
            # thread, where closing the socket would not.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timeout_error()
        return left

    def _check_aborted(self) -> None:
        if self._aborted:
            raise StopFetch(f"{self.field}: download stopped")

    # -- the fetch --------------------------------------------------------------------------
    def run(self) -> bytes:
        """The reference's bytes, or an InputError naming it (StopFetch after `abort`)."""
        try:
            if self.uri[:5].lower() == "data:":
                return self._data()
            return self._http()
        except (InputError, StopFetch):
            raise
        except Exception as exc:
            self._check_aborted()
            if isinstance(exc, TimeoutError | socket.timeout):
                raise self.timeout_error() from None
            raise self.error(f"could not be fetched ({_describe(exc)})") from None

    def _data(self) -> bytes:
        """A data: URI's bytes: base64 or percent-encoded, bounded like a download."""
        header, comma, payload = self.uri[5:].partition(",")
        if not comma:
            raise self.error("is not a valid data: URI (no comma before the data)")
        if header.lower().endswith(";base64"):
            payload = "".join(payload.split())  # whitespace is allowed inside base64 text
            if len(payload) // 4 * 3 > self.policy.max_bytes:  # known before decoding a byte
                raise self.too_large()
            try:
                data = base64.b64decode(urllib.parse.unquote(payload), validate=True)
            except (binascii.Error, ValueError):
                raise self.error("is not a valid data: URI (its base64 text is broken)") from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > self.policy.max_bytes:
            raise self.too_large()
        return data

    def _target(self, url: str) -> Target:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise self.error(f"is not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise self.error(f"redirects to a {scheme or 'relative'}: URL; only http and https are fetched")
        if not parts.hostname:
            raise self.error("has no host name")
        try:
            host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() else parts.hostname
        except UnicodeError:
            raise self.error("has a host name that is not valid") from None
        credentials = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(scheme, host, port or (443 if scheme == "https" else 80), path, credentials)

    def _addresses(self, target: Target, url: str) -> list[Address]:
        """Every address the host resolves to, each checked: one refused refuses the host, so
        that a name answering both a public and a private address cannot pick at connect time."""
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise self.error(f"could not be fetched: the host name {target.host!r} does not resolve") from None
        self._check_aborted()
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        for address in addresses:
            kind = address_kind(address)
            if kind is None or (self.policy.allow_private and kind in PRIVATE_KINDS):
                continue
            hint = " (GEN4_REFERENCE_ALLOW_PRIVATE=1 allows it, for local use)" if kind in PRIVATE_KINDS else ""
            named = "" if target.host == str(address) else f" ({target.host} resolves to one)"
            where = "is refused" if url == self.uri else f"redirects to {display_uri(url)}, which is refused"
            raise self.error(f"{where}: references are not fetched from {kind} addresses{named}{hint}")
        return addresses

    def _http(self) -> bytes:
        url = self.uri
        origin: tuple[str, str, int] | None = None
        credentials: str | None = None
        for _ in range(MAX_REDIRECTS + 1):
            target = self._target(url)
            here = (target.scheme, target.host, target.port)
            if origin is None:
                origin, credentials = here, target.credentials
            elif here != origin:
                credentials = target.credentials  # user:password never follows a redirect to another origin
            addresses = self._addresses(target, url)
            response, connection = self._request(target, addresses, credentials)
            try:
                location = response.getheader("Location")
                if response.status in REDIRECTS and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status != 200:
                    raise self.error(f"could not be fetched: HTTP {response.status} {response.reason}".rstrip())
                return self._body(response)
            finally:
                # Both: the response holds the socket's file, which keeps it open on its own.
                response.close()
                connection.close()
                with self._lock:
                    self._sock = None
        raise self.error(f"could not be fetched: more than {MAX_REDIRECTS} redirects")

    def _request(
        self, target: Target, addresses: list[Address], credentials: str | None
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """Send the GET to the first checked address that accepts a connection."""
        proxy = proxy_for(target)
        headers = {
            "Host": target.authority,
            "User-Agent": os.environ.get("COG_USER_AGENT") or "gen4-image-open",
            "Accept": "image/*",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        if credentials:
            headers["Authorization"] = f"Basic {credentials}"
        failure: Exception | None = None
        for address in addresses:
            connection = CheckedConnection(target, address, proxy, self._remaining())
            try:
                connection.connect()
            except Exception as exc:
                connection.close()
                self._check_aborted()
                if isinstance(exc, ssl.SSLError | TimeoutError | socket.timeout):
                    raise
                failure = exc
                continue
            with self._lock:
                self._sock = connection.sock
                aborted = self._aborted
            if aborted:
                connection.close()
                self._check_aborted()
            path = target.path
            if proxy is not None and target.scheme == "http":
                path = f"http://{_ip_authority(address, target.port)}{target.path}"  # the proxy gets the IP
                if proxy.credentials:
                    headers["Proxy-Authorization"] = f"Basic {proxy.credentials}"
            connection.request("GET", path, headers=headers)
            return connection.getresponse(), connection
        assert failure is not None
        raise failure

    def _body(self, response: http.client.HTTPResponse) -> bytes:
        """Read the body, undoing a gzip or deflate Content-Encoding, never past `max_bytes`."""
        limit = self.policy.max_bytes
        length = response.getheader("Content-Length")
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise self.error(f"is sent with Content-Encoding {encoding!r}; only gzip and deflate are undone")
        if encoding == "identity" and length is not None and length.isdigit() and int(length) > limit:
            raise self.too_large()
        # wbits 47: a gzip or a zlib header, detected (deflate as HTTP sends it is zlib-wrapped).
        inflate = zlib.decompressobj(47) if encoding != "identity" else None
        body = bytearray()
        while True:
            self._check_aborted()
            if response.fp is not None and self._sock is not None:
                self._sock.settimeout(self._remaining())  # each read ends by the deadline
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            if inflate is None:
                body += chunk
            else:
                # max_length: a few KB of gzip never expand to more than the cap allows.
                body += inflate.decompress(chunk, limit + 1 - len(body))
                while inflate.unconsumed_tail and len(body) <= limit:
                    body += inflate.decompress(inflate.unconsumed_tail, limit + 1 - len(body))
            if len(body) > limit:
                raise self.too_large()
        if inflate is not None:
            body += inflate.flush(limit + 1 - len(body))
            if len(body) > limit:
                raise self.too_large()
        self._check_aborted()
        return bytes(body)


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    credentials: str | None


def proxy_for(target: Target) -> Proxy | None:
    """The proxy that the environment names for this target (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY,
    as urllib and requests read them), or None to connect directly. Only http:// proxies."""
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass_environment(target.host, proxies):
        return None
    url = proxies.get(target.scheme) or proxies.get("all")
    if not url:
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise OSError(f"proxy {parts.scheme}://{parts.hostname} is not supported (only http:// proxies)")
    credentials = None
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, credentials)


class CheckedConnection(http.client.HTTPConnection):
    """A connection to a checked address: TCP to it (or to the proxy, then CONNECT to it for
    https), and TLS verified against the URL's host name, not the address."""

    def __init__(self, target: Target, address: Address, proxy: Proxy | None, timeout: float) -> None:
        host, port = (proxy.host, proxy.port) if proxy is not None else (str(address), target.port)
        super().__init__(host, port, timeout=timeout)
        self.target = target
        self.address = address
        self.proxy = proxy

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.target.scheme != "https":
            return
        if self.proxy is not None:
            self._connect_tunnel()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.target.host)

    def _connect_tunnel(self) -> None:
        assert self.sock is not None and self.proxy is not None
        authority = _ip_authority(self.address, self.target.port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.proxy.credentials:
            lines.append(f"Proxy-Authorization: Basic {self.proxy.credentials}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        response = http.client.HTTPResponse(self.sock, method="CONNECT")
        try:
            response.begin()
            if response.status != 200:
                raise OSError(f"the proxy answered CONNECT with HTTP {response.status}")
        finally:
            response.close()


def _describe(exc: Exception) -> str:
    """An exception as a short clause that never repeats the URL (OSErrors carry only errno text)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not valid: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the whole body arrived"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, zlib.error):
        return "its compressed body is broken"
    return str(exc) or type(exc).__name__


def fetch_references(
    items: Sequence[tuple[str, str]], policy: FetchPolicy, should_stop: StopCheck | None = None
) -> list[bytes]:
    """The bytes of each (URI, field), in order, fetched at once in threads of their own. The
    first reference (in order) to fail so far is the error raised, and the others are stopped;
    each must finish within its deadline; `should_stop` stops them all (StopFetch)."""
    downloads = [Download(uri, field, policy) for uri, field in items]
    if not downloads:
        return []
    pool = ThreadPoolExecutor(max_workers=len(downloads), thread_name_prefix="fetch-reference")
    try:
        futures: list[Future[bytes]] = [pool.submit(download.run) for download in downloads]
        while True:
            _, pending = wait(futures, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if not pending:
                return [future.result() for future in futures]
            if should_stop is not None and should_stop():
                raise StopFetch("the prediction was canceled while its references were being fetched")
            now = time.monotonic()
            for download, future in zip(downloads, futures, strict=True):
                if not future.done() and now >= download.deadline:
                    raise download.timeout_error()  # whatever it is blocked in (a name lookup too)
    finally:
        for download in downloads:
            download.abort()
        pool.shutdown(wait=False, cancel_futures=True)
