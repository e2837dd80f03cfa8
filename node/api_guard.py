"""The doors of the local HTTP API, checked before any endpoint runs (``Guard``), and the
connection limits below HTTP (``guarded_protocol``).

In order, for every request:

1. **Host** (DNS rebinding: a page of evil.example whose name then resolves to 127.0.0.1 talks
   to us with ``Host: evil.example``). Listening on loopback, only the address we listen on is
   served: ``127.0.0.1``, ``localhost`` or ``[::1]`` with our port, and the names of
   ``api_hosts``. Listening beyond loopback, Ollama's rule (``allowedHostsMiddleware`` in its
   server/routes.go) is added: an address of this machine, a private or unspecified address,
   this machine's host name, or a name under .local, .localhost or .internal. Anything else, and
   no Host at all, gets 403.
2. **Origin** (CSRF: a page that posts a text/plain "simple request" needs no preflight). A
   request with an Origin passes only if it is the API's own origin (the web page) or one of
   ``api_origins`` (like OLLAMA_ORIGINS, e.g. ``app://obsidian.md``); those get CORS answers,
   preflights (OPTIONS) included. A request with no Origin comes from no browser page.
3. **The key** (``api_auth``): ``Authorization: Bearer KEY``, or the web page's session cookie
   (only when the browser says the request is same-origin, where it says so).
4. **Content type**: a POST with a body must be JSON or multipart (415 otherwise), the types a
   cross-site form cannot send without a preflight. On Ollama's routes a request that carries
   ``Authorization: Bearer`` may send any type, read as JSON, as Ollama does: its clients send
   none (LiteLLM's ``ollama_chat/``) or curl's ``-d`` form type, and no form or simple request
   of a page can carry that header.

Errors are JSON in OpenAI's shape, unknown routes (404), wrong methods (405) and our own bugs
(500, one line in the node's log, no traceback anywhere) included; on Ollama's routes
(``ollama.PATHS``) these refusals are in Ollama's shape, ``{"error": message}``.

Below HTTP, uvicorn's h11 protocol has no timeout for a request's headers: a client sending
them a byte at a time held a connection forever (slowloris). ``guarded_protocol`` closes a
connection whose headers are not complete ``header_timeout`` seconds after it opened (or after
its previous answer), and refuses connections beyond ``max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .api_auth import SESSION_COOKIE, SESSION_TTL_S, ApiSettings, Logins, session_cookie, valid_session
from .ollama import PATHS as OLLAMA_PATHS

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
LOCAL_SUFFIXES = (".local", ".localhost", ".internal")  # Ollama's allowedHost
BODY_TYPES = ("application/json", "multipart/form-data")
OPEN_PATHS = ("/", "/login")  # the page holds no data; the login checks its own token
CORS_MAX_AGE_S = 600


def error_body(message: str, kind: str, code: str, *, ollama: bool = False) -> bytes:
    """An error in OpenAI's shape, as bytes; ``ollama``: in Ollama's, ``{"error": message}``."""
    if ollama:
        return json.dumps({"error": message}).encode()
    return json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()


class Guard:
    """ASGI middleware in front of the API's app: Host, Origin, key and content type."""

    def __init__(
        self,
        app: ASGIApp,
        settings: ApiSettings,
        *,
        listen: tuple[str, int],
        loopback: bool,
        report: Callable[[BaseException], None],
    ) -> None:
        self.app, self.settings, self.report = app, settings, report
        self.port, self.loopback = listen[1], loopback
        self.logins = Logins(settings.key) if settings.key is not None else None
        self._local = _local_addresses() if not loopback else set()
        self._hostname = socket.gethostname().lower()  # once: Hosts are checked per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the API serves none: refused before any check
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host", ""), headers.get("origin")
        ollama = scope["path"] in OLLAMA_PATHS  # its clients read {"error": message}
        named = [k for k, _ in scope["headers"] if k in (b"host", b"origin", b"authorization")]
        if len(named) != len(set(named)):  # two Hosts: which one would a proxy or the app read?
            return await _answer(
                send, 400, "a Host, Origin or Authorization header is repeated", "bad_request", ollama=ollama
            )
        if not self.allowed_host(host):
            return await _answer(
                send, 403, f"the Host {host!r} is not this API's", "forbidden", ollama=ollama
            )
        cors = self._cors(origin, host)
        if origin is not None and cors is None:
            return await _answer(
                send, 403, f"the origin {origin!r} may not call this API", "forbidden", ollama=ollama
            )
        if scope["method"] == "OPTIONS" and origin is not None:
            return await _preflight(send, cors or [], headers)
        if scope["path"] == "/login" and scope["method"] == "GET":
            return await self._login(scope, send)
        if not self._authorised(headers) and scope["path"] not in OPEN_PATHS:
            return await _answer(
                send,
                401,
                "a valid API key is required: send Authorization: Bearer KEY (`syncq api-key` "
                "prints it); in a browser, open the link `syncq web` prints",
                "authentication_error",
                "invalid_api_key",
                cors,
                ollama=ollama,
            )
        if scope["method"] == "POST" and not _body_type_ok(headers) and not (ollama and _bearer(headers)):
            return await _answer(
                send,
                415,
                "the body must be JSON (application/json) or a multipart form",
                "unsupported_media_type",
                cors=cors,
                ollama=ollama,
            )
        await self._call(scope, receive, send, cors)

    def allowed_host(self, host: str) -> bool:
        """Whether ``Host: host`` names this API (see the module's docstring)."""
        name, _, port = host.lower().rpartition(":")
        if not name or port != str(self.port):
            return False
        if ":" in name and not (name.startswith("[") and name.endswith("]")):
            return False
        if name in LOOPBACK_NAMES or name in self.settings.hosts:
            return True
        return not self.loopback and self._local_name(name)

    def _local_name(self, name: str) -> bool:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(name.strip("[]"))
            return (
                address.is_loopback
                or address.is_private
                or address.is_unspecified
                or str(address) in self._local
            )
        return name in (self._hostname, f"{self._hostname}.local") or name.endswith(LOCAL_SUFFIXES)

    def _cors(self, origin: str | None, host: str) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for ``origin`` ([] for the API's own page), None if it may not call."""
        if origin is None or origin.lower() == f"http://{host.lower()}":
            return []
        if origin.rstrip("/").lower() in self.settings.origins:
            return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        key = self.settings.key
        if key is None:
            return True
        given = headers.get("authorization", "")
        if given[:7].lower() == "bearer ":
            return _same(given[7:].strip(), key)
        # The cookie only for the page itself: a browser that says where a request comes from
        # must say it comes from our own origin (or from no page: a typed URL, a bookmark).
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(headers.get("cookie", ""))
        morsel = cookie.get(SESSION_COOKIE)
        return morsel is not None and valid_session(key, morsel.value, time.time())

    async def _login(self, scope: Scope, send: Send) -> None:
        token = (parse_qs(scope["query_string"].decode("latin-1")).get("token") or [""])[0]
        headers = [(b"location", b"/"), (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]
        if self.logins is not None:
            if not self.logins.redeem(token):
                return await _answer(
                    send,
                    401,
                    "this login link is used up, expired or wrong: run `syncq web` for a new one",
                    "authentication_error",
                    "invalid_login",
                )
            cookie = (
                f"{SESSION_COOKIE}={session_cookie(self.logins.key, time.time())}; Path=/; "
                f"Max-Age={int(SESSION_TTL_S)}; HttpOnly; SameSite=Strict"
            )
            headers.append((b"set-cookie", cookie.encode()))
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _call(
        self, scope: Scope, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]] | None
    ) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # our bug: said once, in one line, never a traceback
            self.report(exc)
            if not started:
                await _answer(
                    send, 500, "internal error: see the node's log", "server_error", "internal_error"
                )


async def _answer(
    send: Send,
    status: int,
    message: str,
    kind: str,
    code: str = "",
    cors: list[tuple[bytes, bytes]] | None = None,
    *,
    ollama: bool = False,
) -> None:
    body = error_body(message, kind, code or kind, ollama=ollama)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(cors or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]], headers: dict[str, str]) -> None:
    asked = headers.get("access-control-request-headers", "")
    answer = [
        *cors,
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        # The origin is trusted: whatever its client sends (the OpenAI SDKs add x-stainless-*).
        (b"access-control-allow-headers", (asked or "authorization, content-type").encode("latin-1")),
        (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": answer})
    await send({"type": "http.response.body", "body": b""})


def _body_type_ok(headers: dict[str, str]) -> bool:
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind:
        return kind in BODY_TYPES
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


def _bearer(headers: dict[str, str]) -> bool:
    """Whether the request carries a key (checked already): a header no form can set."""
    return headers.get("authorization", "")[:7].lower() == "bearer "


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), key.encode())


def _local_addresses() -> set[str]:
    """This machine's addresses, as far as its host name resolves (Ollama's isLocalIP)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    return found


# -- below HTTP: the header timeout and the connection cap ------------------------------------


def guarded_protocol(settings: ApiSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a connection cap (``settings``)."""

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._headers_by: asyncio.TimerHandle | None = None
            if len(self.connections) > settings.max_connections:
                body = error_body("too many connections to this API", "server_error", "too_many_connections")
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                transport.close()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self._stop_waiting()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.cycle is cycle:  # no pipelined request began: the next one's headers are due
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            body = error_body(msg, "invalid_request_error", "bad_http")
            event = h11.Response(
                status_code=400,
                headers=[(b"content-type", b"application/json"), (b"connection", b"close")],
                reason=b"Bad Request",
            )
            with contextlib.suppress(h11.LocalProtocolError):
                self.transport.write(self.conn.send(event))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

        def _await_headers(self) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                self._headers_by = self.loop.call_later(settings.header_timeout, self._too_slow)

        def _stop_waiting(self) -> None:
            timer = getattr(self, "_headers_by", None)
            if timer is not None:
                timer.cancel()
                self._headers_by = None

        def _too_slow(self) -> None:
            self._headers_by = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
