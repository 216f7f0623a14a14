"""One OpenAI-compatible endpoint over every node of a fleet, routed like Beacon's hybrid router.

A request picks its region with the `X-Beacon-Region` header or a `region` field in the body;
among the healthy nodes of that region serving the model, the router takes the least loaded
(in flight per slot), then the one with the lowest recent latency. Streaming passes through.

Who may use it: a router with a token of its own (BEACON_ROUTER_TOKEN; required beyond loopback)
answers only callers that present it (GET /health excepted). A router without one, on loopback,
guards against browser pages as a tokenless shim does (api/server.py `browser_guard`), never
sends a caller's request with a node's token, and lists no node URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from beacon_golem.api.client import MAX_NODE_BODY_BYTES
from beacon_golem.api.server import (
    BOUNDS,
    Handler,
    ServerBounds,
    bearer_ok,
    browser_guard,
    error_response,
    errors_middleware,
    json_response,
    parse_json_object,
    unauthorized,
)
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node
from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.gateway.beacon_router import add_beacon_routes, beacon_health_fields

log = get_logger(__name__)

REGION_HEADER = "X-Beacon-Region"


@dataclass
class _Slot:
    node: Node
    healthy: bool = True
    in_flight: int = 0
    latency_ms: float = 0.0  # exponentially weighted

    def load(self) -> float:
        return self.in_flight / self.node.concurrency

    def observe(self, ms: float) -> None:
        self.latency_ms = ms if self.latency_ms == 0 else 0.8 * self.latency_ms + 0.2 * ms


class Router:
    def __init__(
        self,
        fleet: Fleet,
        health_interval_s: float = 5.0,
        token: SecretStr | None = None,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.fleet = fleet
        self.health_interval_s = health_interval_s
        #: The router's own token; None: loopback only, callers unauthenticated.
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.slots: dict[str, _Slot] = {}
        self.session: aiohttp.ClientSession | None = None
        self._health: asyncio.Task[None] | None = None

    def sync_nodes(self) -> None:
        while (event := self.fleet.next_event_nowait()) is not None:
            if event.kind == "added":
                self.slots[event.node.node_id] = _Slot(event.node)
            else:
                self.slots.pop(event.node.node_id, None)
        for node in self.fleet.nodes():
            self.slots.setdefault(node.node_id, _Slot(node))

    def pick(self, region: str | None, model: str | None) -> _Slot | None:
        self.sync_nodes()
        candidates = [
            s
            for s in self.slots.values()
            if s.healthy
            and (region is None or s.node.region == region)
            and (model is None or not s.node.models or model in s.node.models)
        ]
        return min(candidates, key=lambda s: (s.load(), s.latency_ms), default=None)

    async def start(self, _: web.Application) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._health = asyncio.create_task(self._health_loop())

    async def close(self, _: web.Application) -> None:
        if self._health:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self.session:
            await self.session.close()

    def headers(self, node: Node) -> dict[str, str]:
        return {"Authorization": f"Bearer {node.token.get_secret_value()}"} if node.token else {}

    async def _health_loop(self) -> None:
        assert self.session is not None
        while True:
            self.sync_nodes()
            for slot in list(self.slots.values()):
                try:
                    async with self.session.get(
                        slot.node.url + "/health", timeout=aiohttp.ClientTimeout(total=5)
                    ) as resp:
                        slot.healthy = resp.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    slot.healthy = False
            await asyncio.sleep(self.health_interval_s)


ROUTER: web.AppKey[Router] = web.AppKey("router", Router)
#: Set on each request: whether the caller presented the router's token.
AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("beacon_authenticated", bool)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    router = request.app[ROUTER]
    if router.token is None:
        refused = browser_guard(request, router.allowed_hosts)
        if refused is not None:
            return refused
        request[AUTHENTICATED] = False
        return await handler(request)
    if request.path != "/health" and not bearer_ok(request, router.token):
        return unauthorized()
    request[AUTHENTICATED] = request.path != "/health" or bearer_ok(request, router.token)
    return await handler(request)


async def _read_capped(upstream: aiohttp.ClientResponse, limit: int = MAX_NODE_BODY_BYTES) -> bytes | None:
    """A node's whole answer, or None once it exceeds `limit` (a node is not trusted)."""
    if upstream.content_length is not None and upstream.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in upstream.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    body = await parse_json_object(request)
    region = request.headers.get(REGION_HEADER) or body.pop("region", None)
    slot = router.pick(region, body.get("model"))
    if slot is None:
        where = f" in region {region}" if region else ""
        return error_response(503, f"no healthy node{where} serves model {body.get('model') or '(any)'}")
    assert router.session is not None
    authenticated = bool(request.get(AUTHENTICATED))
    if slot.node.token is not None and not authenticated:
        return error_response(
            401, "this router has no token of its own, so it never sends a caller's request with a node's token: "
            "start it with BEACON_ROUTER_TOKEN and call it with that token",
        )  # fmt: skip
    slot.in_flight += 1
    started = time.perf_counter()
    try:
        async with router.session.post(
            slot.node.url + "/v1/chat/completions", json=body, headers=router.headers(slot.node)
        ) as upstream:
            headers = {"X-Beacon-Node": slot.node.node_id, "X-Beacon-Region": slot.node.region or ""}
            if not body.get("stream"):
                raw = await _read_capped(upstream)
                if raw is None:
                    return error_response(502, f"node {slot.node.node_id} answered a body over {MAX_NODE_BODY_BYTES:,} bytes")
                return web.Response(body=raw, status=upstream.status, content_type="application/json", headers=headers)
            response = web.StreamResponse(
                status=upstream.status, headers={**headers, "Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response
    except (TimeoutError, aiohttp.ClientError) as exc:
        slot.healthy = False
        return error_response(502, f"node {slot.node.node_id} failed: {exc}")
    finally:
        slot.in_flight -= 1
        slot.observe((time.perf_counter() - started) * 1000)


async def models(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    router.sync_nodes()
    ids = sorted({m for s in router.slots.values() for m in s.node.models})
    return json_response({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "beacon"} for m in ids]})


async def nodes(request: web.Request) -> web.Response:
    """The nodes and their state; their URLs only to a caller that presented the router's token."""
    router = request.app[ROUTER]
    router.sync_nodes()
    authenticated = bool(request.get(AUTHENTICATED))
    rows: list[dict[str, Any]] = [
        {
            "node_id": s.node.node_id,
            **({"url": s.node.url} if authenticated else {}),
            "region": s.node.region,
            "runtime": s.node.runtime,
            "models": s.node.models,
            "healthy": s.healthy,
            "in_flight": s.in_flight,
            "latency_ms": round(s.latency_ms, 2),
        }
        for s in router.slots.values()
    ]
    return json_response(rows)


async def health(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    healthy = [s for s in router.slots.values() if s.healthy]
    body = {"status": "ok" if healthy else "unavailable", "healthy_nodes": len(healthy), **beacon_health_fields(router.slots)}
    return json_response(body, 200 if healthy else 503)


def create_router_app(
    fleet: Fleet,
    health_interval_s: float = 5.0,
    *,
    token: SecretStr | None = None,
    allowed_hosts: tuple[str, ...] = (),
    bounds: ServerBounds | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    beacon_model_map: dict[str, str] | None = None,
) -> web.Application:
    """The router app; `beacon_model_map` says what a node serves for each Beacon model id (POST /inference)."""
    router = Router(fleet, health_interval_s, token, allowed_hosts)
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=max_body_bytes)
    app[ROUTER] = router
    app[BOUNDS] = bounds or ServerBounds()
    app.on_startup.append(router.start)
    app.on_cleanup.append(router.close)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/nodes", nodes)
    app.router.add_get("/health", health)
    # Beacon's hybrid-router contract: POST /inference, GET /providers (beacon_router.py).
    add_beacon_routes(app, lambda r: r.app[ROUTER], lambda r: bool(r.get(AUTHENTICATED)), _read_capped, beacon_model_map)
    return app
