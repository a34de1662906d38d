"""What every request passes before a route sees it: the host it names, the origin of a write, the size of its body.

- **Host.** A request whose ``Host`` header names none of the server's names is refused (421). This stops DNS
  rebinding: a page on ``attacker.example`` whose name is re-pointed at 127.0.0.1 reaches a loopback server, but
  its requests say ``Host: attacker.example``. An IP address as ``Host`` cannot come from rebinding (the page's
  origin is then that address), so a server bound to every interface answers to any address, and to the
  machine's names.
- **Origin.** A write (any method but GET, HEAD and OPTIONS) from another origin is refused (403): an ``Origin``
  header that is not the server's own (scheme aside, since a TLS proxy may sit in front; ports count), or
  ``Sec-Fetch-Site: cross-site``. Browsers send these on a cross-site form post, which needs no CORS permission.
  Names given with ``--allow-host`` are the server's own origins too (a proxy may rewrite ``Host``).
- **Body.** Bytes are counted while they arrive, with ``Content-Length`` or chunked: past the limit the request is
  answered 413 and the rest is never read, so the multipart parser and its spool files never see it.

Every refusal is JSON ``{"error": ..., "hint": ...}`` like the routes' errors.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(netloc: str) -> str:
    """The host of a ``Host`` header or an origin's ``host[:port]``: lower case, no port, no IPv6 brackets, no
    trailing dot (``[::1]:8000`` -> ``::1``)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    name = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    return name.rstrip(".")


@dataclass(frozen=True)
class AllowedHosts:
    """The names the server answers to (``Host`` without its port)."""

    names: frozenset[str]
    proxied: frozenset[str]
    """The ``--allow-host`` names: a reverse proxy's, also accepted as a write's origin."""
    is_any_ip: bool = False
    """Bound to every interface: any IP address is a name of the server."""

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return name in self.names or name in self.proxied or (self.is_any_ip and _is_ip(name))

    def describe(self) -> str:
        names = sorted(self.names | self.proxied)
        return ", ".join(names + (["any IP address"] if self.is_any_ip else []))


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> AllowedHosts:
    """The names a server bound to ``bind`` answers to: ``bind`` itself; the loopback names for a loopback bind;
    for every interface (``0.0.0.0``, ``::``) those, the machine's host names and any IP address; and ``extra``
    (``--allow-host``, a proxy's public names)."""
    names = {host_name(bind)} - {""}
    if is_loopback(host_name(bind)) or bind in WILDCARD_BINDS:
        names |= LOOPBACK_NAMES
    if bind in WILDCARD_BINDS:
        names |= {host_name(socket.gethostname()), host_name(socket.getfqdn())} - {""}
    return AllowedHosts(frozenset(names), frozenset(host_name(name) for name in extra),
                        is_any_ip=bind in WILDCARD_BINDS)


def _refusal(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


class _BodyTooLarge(Exception):
    """Raised into the application by ``receive`` once the body passes the limit."""


class RequestGuard:
    """ASGI middleware refusing foreign hosts, cross-origin writes and bodies over ``max_body`` bytes."""

    def __init__(self, app: ASGIApp, *, hosts: AllowedHosts, max_body: int) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_headers(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._limit_body(scope, receive, send)

    def _check_headers(self, scope: Scope) -> JSONResponse | None:
        """The refusal of a request by its headers alone, or None."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.hosts.allows(host):
            # the names it does answer to are not listed: the page asking may be an attacker's, rebound here
            return _refusal(421, f"this server does not answer to the host {host!r}",
                            hint="open the page by the address tfclip serve printed; behind a proxy, start it "
                            f"with --allow-host {host_name(host) or 'NAME'}")
        if scope["method"] not in SAFE_METHODS and self._is_cross_origin(headers, host):
            return _refusal(403, f"{scope['method']} from another site or origin "
                            f"({headers.get('origin') or headers.get('sec-fetch-site')}) is refused: only the "
                            "page this server serves may change or query the gallery",
                            hint="send the request from the server's own page, or without a browser (curl)")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return _refusal(413, f"the request body has {int(length):,} bytes; at most {self.max_body:,} are "
                            "accepted")
        return None

    def _is_cross_origin(self, headers: Headers, host: str) -> bool:
        if headers.get("sec-fetch-site") == "cross-site":
            return True
        origin = headers.get("origin")
        if origin is None:
            return False
        netloc = urlsplit(origin).netloc  # "" for the opaque origin "null"
        return netloc.lower() != host.strip().lower() and host_name(netloc) not in self.hosts.proxied

    async def _limit_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application with ``receive`` cut off past ``max_body`` bytes, and answer 413 then."""
        received, is_over, has_started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, is_over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    is_over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal has_started
            if is_over and not has_started:
                return  # the application's answer to a cut-off body (a parse error): 413 goes instead
            has_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if is_over and not has_started:
            await _refusal(413, f"the request body passed {self.max_body:,} bytes; the rest was not read")(
                scope, receive, send)
