"""HTTP helpers every server of ours shares (the node shim, the gateway): JSON bodies in and out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from beacon_golem.api.bodies import ErrorBody
from beacon_golem.core.errors import BeaconError, one_line
from beacon_golem.core.log import get_logger

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


def json_response(body: BaseModel | dict[str, Any] | list[Any], status: int = 200) -> web.Response:
    """A JSON response with Content-Length (Golem's HTTP proxy cuts chunked bodies)."""
    text = body.model_dump_json() if isinstance(body, BaseModel) else _dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_response(status: int, message: str) -> web.Response:
    return json_response(ErrorBody(error=message, status=status), status=status)


async def parse_body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw:
        raise web.HTTPBadRequest(reason="request body is empty: send JSON")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise web.HTTPBadRequest(reason="request body is not valid JSON") from None
        raise


async def parse_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason="request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(reason="request body must be a JSON object")
    return body


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


# ---- middlewares -------------------------------------------------------------------------------
@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON `{"error", "status"}`; nothing leaks a traceback."""
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
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal error in the shim (see the node log)")
