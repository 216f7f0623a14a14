"""HTTP helpers every server of ours shares (the node shim, the gateway): JSON bodies in and out,
bearer tokens, the browser guard of tokenless servers, and the bounds of every connection.

- Bodies are read within `body_timeout_s`, parsed as strict JSON (no NaN or infinity, nesting at
  most `max_json_depth`: core/untrusted.py) and only then validated: a body nested 100,000 deep
  is a 400 like any other bad body, never a `RecursionError`.
- `BoundedAppRunner` serves an app with a header read timeout (a client that has not sent a
  whole request head `header_timeout_s` after it began is disconnected) and with handler
  cancellation: a client that disconnects cancels what it asked for (a generation, streamed or
  not), and the disconnect is one line at info, not a traceback.
- A server without a token is reachable by any browser page on the same machine; `browser_guard`
  refuses what a page can send without the server's consent (CORS "simple" POSTs: text/plain,
  forms, no content type), cross-origin requests, and Host names that are not this machine's
  (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from pydantic import BaseModel, SecretStr, ValidationError

from beacon_golem.api.bodies import ErrorBody
from beacon_golem.core.errors import BeaconError, one_line
from beacon_golem.core.log import get_logger
from beacon_golem.core.untrusted import MAX_JSON_DEPTH, UntrustedInput, loads_json

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ServerBounds:
    """What one of our servers gives a client: time for its request head and body, JSON depth."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_json_depth: int = MAX_JSON_DEPTH


BOUNDS: web.AppKey[ServerBounds] = web.AppKey("beacon_server_bounds", ServerBounds)


def bounds(app: web.Application) -> ServerBounds:
    return app.get(BOUNDS) or ServerBounds()


def json_response(body: BaseModel | dict[str, Any] | list[Any], status: int = 200) -> web.Response:
    """A JSON response with Content-Length (Golem's HTTP proxy cuts chunked bodies)."""
    text = body.model_dump_json() if isinstance(body, BaseModel) else _dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_response(status: int, message: str) -> web.Response:
    return json_response(ErrorBody(error=message, status=status), status=status)


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the server's body timeout (408 after it; 413 over the size limit)."""
    try:
        async with asyncio.timeout(bounds(request.app).body_timeout_s):
            return await request.read()
    except TimeoutError:
        log.info("client_body_timeout", path=request.path)
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None


def _load(raw: bytes, request: web.Request) -> Any:
    if not raw:
        raise web.HTTPBadRequest(reason="request body is empty: send JSON")
    try:
        return loads_json(raw, max_depth=bounds(request.app).max_json_depth, what="request body")
    except UntrustedInput as exc:
        text = str(exc)
        reason = "request body is not valid JSON" if "not valid JSON" in text else text
        raise web.HTTPBadRequest(reason=reason) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    return model.model_validate(_load(await read_body(request), request))


async def parse_json_object(request: web.Request) -> dict[str, Any]:
    body = _load(await read_body(request), request)
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(reason="request body must be a JSON object")
    return body


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


# ---- tokens and the browser guard ------------------------------------------------------------
def bearer_ok(request: web.Request, token: SecretStr) -> bool:
    """Whether the request carries `Authorization: Bearer <token>`; compared in constant time as
    bytes, so a non-ASCII header is a mismatch (401), not an error."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    presented = given.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, token.get_secret_value().encode("ascii"))


def unauthorized() -> web.Response:
    response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


#: The content types a browser page may POST to any origin without a CORS preflight.
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def local_host(name: str, allowed: tuple[str, ...] = ()) -> bool:
    """An IP literal, `localhost` (or a name under it), a single-label name (`node`, `gpu-box`: no
    one outside can register one, so no rebinding page can use it), or a name the server was told
    to accept. A dotted name (`evil.example`) is what DNS rebinding needs."""
    name = name.lower().rstrip(".")
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    if name and "." not in name and ":" not in name:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def browser_guard(request: web.Request, allowed_hosts: tuple[str, ...] = ()) -> web.Response | None:
    """For a server without a token: refuse what a browser page on this machine could make it do
    (CSRF) or read (DNS rebinding). None when the request may go on."""
    host = request.headers.get("Host")
    if host is not None and not local_host(_host_name(host), allowed_hosts):
        return error_response(
            403, f"Host {host!r} is not this machine's: a server without a token answers only its IP "
            "addresses, localhost and BEACON_ALLOWED_HOSTS (or set a token)",
        )  # fmt: skip
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != (host or "").lower()):
        return error_response(403, f"cross-origin request from {origin} refused (a server without a token)")
    if request.method == "POST":
        media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not media or media in _SIMPLE_TYPES:
            return error_response(415, "send the body as Content-Type: application/json")
    return None


# ---- middlewares -------------------------------------------------------------------------------
#: What a client that goes away raises in a handler (reading its body, writing its answer).
_DISCONNECTS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON `{"error", "status"}`; nothing leaks a traceback. A client that
    disconnected is one info line: there is nobody to answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.text in (None, "", f"{exc.status}: {exc.reason}") else exc.text
        if exc.status == 413:
            message = f"request body too large: {exc.text}"
        elif exc.status == 404 and route_name(request) == "unmatched":
            message = f"no route {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        return error_response(exc.status, message or exc.reason)
    except ValidationError as exc:
        return error_response(422, one_line(exc))
    except BeaconError as exc:
        return error_response(exc.http_status, str(exc))
    except asyncio.CancelledError:
        if request.transport is None or request.transport.is_closing():
            log.info("client_disconnected", path=request.path, method=request.method)
        raise
    except _DISCONNECTS as exc:
        log.info("client_disconnected", path=request.path, method=request.method, error=type(exc).__name__)
        return error_response(499, "the client disconnected")
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal error in the shim (see the node log)")


# ---- serving -----------------------------------------------------------------------------------
class _BoundedHandler(RequestHandler):
    """aiohttp's request handler with a deadline on each request head: a connection that began a
    request (or opened) and has not sent its whole head `header_timeout_s` later is closed."""

    __slots__ = ("_head_timer", "_head_timeout_s")

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm_head_timer()
        elif waiting and data:
            self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is None and self._head_timeout_s > 0:
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_overdue)

    def _disarm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._waiter is not None and not self._waiter.done():  # still no whole request head
            log.info("client_head_timeout", peer=str(self.peername), timeout_s=self._head_timeout_s)
            self.force_close()


class _BoundedServer(web.Server):
    head_timeout_s: float = 10.0

    def __call__(self) -> RequestHandler:
        handler = _BoundedHandler(self, loop=self._loop, **self._kwargs)
        handler._head_timer = None
        handler._head_timeout_s = self.head_timeout_s
        return handler


class BoundedAppRunner(web.AppRunner):
    """`web.AppRunner` for our servers: a header read timeout on every connection (from the app's
    `ServerBounds`) and handler cancellation when a client disconnects."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handler_cancellation", True)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _BoundedServer
        server.head_timeout_s = bounds(self.app).header_timeout_s  # type: ignore[attr-defined]
        return server


async def serve(app: web.Application, host: str, port: int, **kwargs: Any) -> tuple[BoundedAppRunner, int]:
    """Serve `app` on host:port (0: any free port) with `BoundedAppRunner`; the runner and the port."""
    runner = BoundedAppRunner(app, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    return runner, (sockets[0].getsockname()[1] if sockets else port)
