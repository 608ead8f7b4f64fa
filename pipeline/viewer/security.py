"""The viewer's gate: read-only methods, the token, the Host header, security headers, and the server time.

One ASGI middleware in front of everything (static files included):

- Methods other than GET and HEAD are refused (405): the viewer changes nothing.
- With a token, every request must carry it: `Authorization: Bearer <token>`, `?token=<token>` (what a browser
  is given), or the cookie a `?token=` visit sets. A page opened with `?token=` is redirected to the same address
  without it (the token stays out of the history and of anything copied from the address bar). A missing or
  wrong token is a 401. Tokens are compared in constant time.
- Without a token (the default, bound to 127.0.0.1), the Host header must name the loopback interface: a web page
  elsewhere cannot read the viewer through DNS rebinding (a name of its own resolving to 127.0.0.1).
- Every response gets `Server-Timing: app;dur=<ms>` (the benchmark reads it), and headers that keep pages from
  being framed, sniffed, or leaking their address as a referrer: an error page or a 500 too (`on_error` makes
  the answer to an exception the app let through).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["COOKIE", "LOOPBACK_NAMES", "ViewerGate", "is_loopback"]

COOKIE = "pipeline_viewer_token"
LOOPBACK_NAMES = ("localhost",)
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.encode()),
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for a name or address of the loopback interface ("127.0.0.1", "::1", "localhost")."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name of a Host header value, without the port ("[::1]:8000" -> "::1")."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class ViewerGate:
    """ASGI middleware: see the module docstring. `token` None: no token, loopback Host names only."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None,
                 on_error: Callable[[Scope, Exception], Any] | None = None):
        self.app = app
        self.token = token.encode() if token is not None else None
        # The response (an ASGI app) to an exception the app let through, sent from here so that it gets the
        # headers too (Starlette answers those outside every user middleware). None: the exception goes on.
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False
        head = scope["method"] == "HEAD"

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if head and message["type"] == "http.response.body":  # HEAD: GET's answer without its body
                message = {**message, "body": b""}
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.extend(_HEADERS)
                ms = (time.perf_counter() - start) * 1000.0
                headers.append((b"server-timing", f"app;dur={ms:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        refusal = self._refuse(scope)
        if refusal is not None:
            await _respond(send_with_headers, *refusal)
            return
        via_query = self._token_from_query(scope)
        if via_query is not None and self._is_page(scope):
            await self._redirect_without_token(scope, send_with_headers, via_query)
            return
        if head:  # the routes are GET routes: HEAD is routed as GET (its headers, content-length included, stay)
            scope = {**scope, "method": "GET"}
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if started or self.on_error is None:
                raise
            await self.on_error(scope, exc)(scope, receive, send_with_headers)

    # -- checks -----------------------------------------------------------------------------------------------
    def _refuse(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, message, extra headers) when the request may not pass, else None."""
        if scope["method"] not in ("GET", "HEAD"):
            return 405, f"the viewer is read-only: {scope['method']} is not allowed (GET only)", [(b"allow", b"GET, HEAD")]
        headers = _headers(scope)
        if self.token is None:
            host = _host_name(headers.get("host", ""))
            if not is_loopback(host):
                return 400, (f"host {host!r} is not this viewer's: without a token it answers only to 127.0.0.1 / "
                             "localhost; start it with a token to serve other names"), []
            return None
        given = self._given_token(scope, headers)
        if given is None:
            return 401, ("this viewer needs its token: open the address it printed (…/?token=…), or send "
                         "'Authorization: Bearer <token>'"), [(b"www-authenticate", b"Bearer")]
        if not hmac.compare_digest(given.encode(), self.token):
            return 401, "wrong token", [(b"www-authenticate", b"Bearer")]
        return None

    def _given_token(self, scope: Scope, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        query = self._token_from_query(scope)
        if query is not None:
            return query
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            return None
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _token_from_query(self, scope: Scope) -> str | None:
        if self.token is None:
            return None
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            if key == "token":
                return value
        return None

    @staticmethod
    def _is_page(scope: Scope) -> bool:
        path = scope.get("path", "")
        return not path.startswith(("/api/", "/static/"))

    async def _redirect_without_token(self, scope: Scope, send: Send, token: str) -> None:
        pairs = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                 if k != "token"]
        location = scope.get("path", "/") + (f"?{urlencode(pairs)}" if pairs else "")
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        await _respond(send, 303, "token accepted", [(b"location", location.encode("latin-1")),
                                                      (b"set-cookie", cookie.encode("latin-1"))])


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _respond(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
