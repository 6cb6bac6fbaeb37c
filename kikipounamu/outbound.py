"""HTTP to addresses our users give us (webhook URLs), refused when they point inside.

A URL someone else chose must not reach this network's own hosts (SSRF): loopback,
private, link-local (cloud metadata at 169.254.169.254), shared and reserved ranges
are refused unless an operator opens a network for a private deployment
(``allowed``). A URL is checked twice: when it is given, for an error a person can act
on, and at every connection, after DNS, by the network backend itself: the address
checked is the one connected to, so a name that resolves elsewhere between the two
(DNS rebinding) reaches nothing inside. The Host header and TLS's SNI stay the URL's
name (httpcore takes both from the URL, not from the address it connects to).
Redirects are never followed: httpcore does not follow them.

Every call has a deadline for the whole exchange (connect, TLS, write, every read), so
that a receiver that trickles its answer a byte at a time holds a thread no longer
than one that hangs. httpcore's own timeouts are per operation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
from django.conf import settings

from kikipounamu.errors import ApplicationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
# What is kept of an answer's body: enough to show a receiver's error message.
BODY_EXCERPT_BYTES = 1024


class Refused(Exception):
    """A URL or an address we will not send to; the message says why."""


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from settings ("10.0.0.0/8", "127.0.0.1", "fd00::/8")."""
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


def _kind(ip: Address) -> str | None:
    """What makes an address internal, or None for a public one."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata lives there)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved or shared"
    return None


def address_check(ip: Address, *, allowed: tuple[Network, ...]) -> None:
    """Raise ``Refused`` for an internal address not in ``allowed``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip.version == net.version and ip in net for net in allowed):
        return
    kind = _kind(ip)
    if kind is not None:
        raise Refused(
            f"{ip} is a {kind} address; webhooks go to public addresses only "
            "(WEBHOOK_ALLOWED_NETWORKS opens others)"
        )


def resolve(host: str, port: int, *, allowed: tuple[Network, ...]) -> list[str]:
    """Every address ``host`` resolves to, each checked; one internal one refuses the
    name (a name that mixes public and internal addresses is not trusted)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"{host} does not resolve: {exc}") from exc
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        try:
            address_check(ipaddress.ip_address(address), allowed=allowed)
        except Refused as exc:
            raise Refused(f"{host} resolves to {exc}") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def url_check(url: str, *, allowed: tuple[Network, ...], resolve_name: bool) -> None:
    """Raise ``Refused`` unless ``url`` is one we would send to: http or https, a
    host, no credentials, and (``resolve_name``) a name that resolves to addresses
    we may reach. A name that does not resolve (yet) passes: it is checked again at
    every connection."""
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"The URL is over {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"Not a URL: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("Only http and https URLs are taken.")
    if not parts.hostname:
        raise Refused("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise Refused(
            "Credentials in the URL are not taken: verify the webhook's signature "
            "instead."
        )
    if not resolve_name:
        return
    port = port or (443 if parts.scheme == "https" else 80)
    with contextlib.suppress(ConnectionError):
        resolve(parts.hostname, port, allowed=allowed)


def allowed_networks() -> tuple[Network, ...]:
    """``WEBHOOK_ALLOWED_NETWORKS``, parsed (cheap: a handful of entries)."""
    return networks(settings.WEBHOOK_ALLOWED_NETWORKS)


def webhook_url_check(url: str, *, field: str = "url") -> str:
    """The one check of a webhook URL someone gives us (a job's ``webhook_url``, an
    endpoint's): ``url``, or a 400 ``invalid_url`` saying why, about ``field``."""
    try:
        url_check(url, allowed=allowed_networks(), resolve_name=True)
    except Refused as exc:
        raise ApplicationError(
            f"{field}: {exc}", code="invalid_url", extra={field: [str(exc)]}
        ) from exc
    return url


# The deadline of the call running in this thread (contextvars: one per thread of a
# Celery threads pool, as each runs its own call).
_deadline: ContextVar[float | None] = ContextVar("outbound_deadline", default=None)


def _remaining(timeout: float | None) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation waits no longer than the call's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _remaining(timeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class CheckedBackend(httpcore.SyncBackend):
    """httpcore's own socket backend, connecting only to addresses that pass
    ``address_check`` (resolved here, so the checked address is the one used)."""

    def __init__(self, *, allowed: tuple[Network, ...]) -> None:
        self.allowed = allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port, allowed=self.allowed)
        except ConnectionError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        stream = super().connect_tcp(
            addresses[0], port, _remaining(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream)


def pool(
    *, allowed: tuple[Network, ...], max_connections: int
) -> httpcore.ConnectionPool:
    """A connection pool (thread-safe: one per process) that sends only to checked
    addresses. Connections are kept alive between calls to the same origin."""
    return httpcore.ConnectionPool(
        network_backend=CheckedBackend(allowed=allowed),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30,
    )


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def _deadline_of(seconds: float) -> Iterator[None]:
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def post(
    client: httpcore.ConnectionPool,
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    connect_timeout: float,
) -> Answer:
    """POST ``body``; the answer (its body cut to ``BODY_EXCERPT_BYTES``), or
    ``Refused``, or httpcore's errors (``httpcore.TimeoutException`` past
    ``timeout`` seconds for the whole call, ``httpcore.NetworkError`` ...)."""
    url_check(url, allowed=(), resolve_name=False)
    with _deadline_of(timeout):
        extensions = {
            "timeout": {
                "connect": connect_timeout,
                "read": timeout,
                "write": timeout,
                "pool": connect_timeout,
            }
        }
        with client.stream(
            "POST",
            url,
            headers=list(headers.items()),
            content=body,
            extensions=extensions,
        ) as response:
            excerpt = b""
            for chunk in response.iter_stream():
                excerpt += chunk
                if len(excerpt) >= BODY_EXCERPT_BYTES:
                    break  # the rest is not read: the connection is closed
            return Answer(
                status=response.status,
                headers={
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in response.headers
                },
                body=excerpt[:BODY_EXCERPT_BYTES],
            )
