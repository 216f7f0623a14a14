"""The node shim: one aiohttp service on port 8080 in front of whatever runtime the node runs.

Routes: GET /health, GET /info, POST /inference, POST /v1/chat/completions, GET /v1/models,
POST /jobs, GET /jobs/{id}, DELETE /jobs/{id}, GET /metrics. See docs/shim.md.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from beacon_golem import __version__
from beacon_golem.api.bodies import Health, JobAccepted, JobSubmission
from beacon_golem.api.server import (
    Handler,
    error_response,
    errors_middleware,
    json_response,
    parse_body,
    parse_json_object,
    route_name,
)
from beacon_golem.core.config import ShimLimits
from beacon_golem.core.errors import BeaconError, RuntimeUnavailable
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.node.probe.hardware import system_info
from beacon_golem.node.probe.report import cached_probe
from beacon_golem.node.runtimes import RuntimeAdapter, RuntimeStatus, Timeouts, adapter_class
from beacon_golem.node.shim.jobs import JobManager
from beacon_golem.node.shim.perf_jobs import node_perf_runner
from beacon_golem.node.shim.prometheus import ShimMetrics

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)




class ShimConfig(BaseModel):
    runtime: str
    upstream: str
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path
    token: SecretStr | None = None
    limits: ShimLimits = Field(default_factory=ShimLimits)
    launch_settings: dict[str, Any] = Field(default_factory=dict)
    extra_info: dict[str, Any] = Field(default_factory=dict)


class Shim:
    """Everything one shim instance holds; created per app, never global."""

    def __init__(self, config: ShimConfig) -> None:
        self.config = config
        self.metrics = ShimMetrics()
        self.started_at = datetime.now(UTC)
        self.session: aiohttp.ClientSession | None = None
        self.adapter: RuntimeAdapter | None = None

        self.jobs = JobManager(config.data_dir / "jobs", self.generate, perf=node_perf_runner(self))
        self._system: asyncio.Task[SystemInfo] | None = None
        self._info: NodeInfo | None = None
        self._models: list[str] = []

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, _: web.Application) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        # Connection limit off: the shim must not queue requests the runtime could serve.
        # force_close: llama-server drops a connection after a stream without saying so, and
        # a reused dead connection fails the next request; a loopback connect costs ~0.1 ms.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        timeouts = Timeouts(self.config.limits.connect_timeout_s, self.config.limits.read_timeout_s)
        self.adapter = adapter_class(self.config.runtime)(
            self.config.upstream, self.session, timeouts, self.config.launch_settings
        )
        self._system = asyncio.create_task(system_info(self.config.data_dir))
        self.jobs.load()

    async def close(self, _: web.Application) -> None:
        await self.jobs.close()
        if self._system and not self._system.done():
            self._system.cancel()
        if self.session:
            await self.session.close()

    @property
    def runtime(self) -> RuntimeAdapter:
        assert self.adapter is not None, "shim not started"
        return self.adapter

    def node_id(self) -> str:
        path = self.config.data_dir / "node_id"
        if not path.exists():
            path.write_text(uuid.uuid4().hex)
        return path.read_text().strip()

    # ---- runtime -----------------------------------------------------------------------------
    async def status(self) -> RuntimeStatus:
        status = await self.runtime.status()
        if status.models:
            self._models = status.models
        return status

    async def default_model(self) -> str:
        if not self._models:
            status = await self.status()
            if not status.ready:
                raise RuntimeUnavailable(status.reason or f"{self.runtime.name} is not ready")
        return self._models[0]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        model = request.model or await self.default_model()
        self.metrics.in_flight.inc()
        try:
            result = await self.runtime.generate(request, model)
        except BeaconError:
            self.metrics.failed_generation(self.runtime.name)
            raise
        finally:
            self.metrics.in_flight.dec()
        self.metrics.generation(result)
        return result

    async def info(self, refresh: bool = False) -> NodeInfo:
        if self._info is None or refresh:
            assert self._system is not None
            status = await self.status()
            self._info = NodeInfo(
                shim_version=__version__,
                node_id=self.node_id(),
                runtime=RuntimeInfo(
                    name=self.runtime.name,
                    version=status.version,
                    upstream=self.runtime.base_url,
                    settings=status.settings,
                    models=status.models,
                ),
                system=await asyncio.shield(self._system),
                started_at=self.started_at,
                extra=self.config.extra_info,
            )
        return self._info


SHIM: web.AppKey[Shim] = web.AppKey("shim", Shim)
















@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[SHIM].metrics
    route = route_name(request)
    started = time.perf_counter()
    response = await handler(request)
    metrics.requests.labels(route, str(response.status)).inc()
    if response.status >= 400:
        metrics.errors.labels(route, str(response.status)).inc()
    metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SHIM].config.token
    if token is None or request.path == "/health":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token.get_secret_value()):
        response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return await handler(request)


# ---- handlers ----------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    shim = request.app[SHIM]
    status = await shim.status()
    body = Health(
        status="ok" if status.ready else "unavailable",
        runtime=shim.runtime.name,
        models=status.models,
        reason=status.reason,
    )
    return json_response(body, 200 if status.ready else 503)


async def info(request: web.Request) -> web.Response:
    refresh = request.query.get("refresh", "") in ("1", "true")
    return json_response(await request.app[SHIM].info(refresh))


async def probe(request: web.Request) -> web.Response:
    """The compatibility probe of the machine this node runs on (run once, then cached)."""
    shim = request.app[SHIM]
    return json_response(await cached_probe(shim, shim.config.data_dir))


async def inference(request: web.Request) -> web.Response:
    generation = await parse_body(request, GenerationRequest)
    return json_response(await request.app[SHIM].generate(generation))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI-compatible pass-through, fixed for the runtime's traps; streaming works."""
    shim = request.app[SHIM]
    body = await parse_json_object(request)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise web.HTTPUnprocessableEntity(reason="messages: a non-empty list is required")
    body = shim.runtime.adapt_openai_body(body)
    body.setdefault("model", await shim.default_model())
    timeout = shim.runtime.timeouts.client_timeout()
    async with shim.runtime.request(
        "POST", shim.runtime.openai_url("chat/completions"), json=body, timeout=timeout
    ) as upstream:
        if not body.get("stream"):
            raw = await upstream.read()
            return web.Response(body=raw, status=upstream.status, content_type="application/json")
        response = web.StreamResponse(
            status=upstream.status, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
        except ConnectionResetError:
            # The client left, typically right after the last event (before the chunked
            # terminator): nothing is lost and there is no one left to tell.
            log.debug("client_left_stream", path=request.path)
        return response


async def models(request: web.Request) -> web.Response:
    shim = request.app[SHIM]
    async with shim.runtime.request("GET", shim.runtime.openai_url("models")) as upstream:
        raw = await upstream.read()
    return web.Response(body=raw, content_type="application/json")


async def submit_job(request: web.Request) -> web.Response:
    shim = request.app[SHIM]
    spec = await parse_body(request, JobSubmission)
    if spec.requests is not None and len(spec.requests) > shim.config.limits.max_job_requests:
        raise web.HTTPUnprocessableEntity(
            reason=f"requests: {len(spec.requests)} is more than this node takes in one job ({shim.config.limits.max_job_requests})"
        )
    job = shim.jobs.submit(spec)
    body = JobAccepted(id=job.id, state=job.state.state, total=spec.total)
    response = json_response(body, 202)
    response.headers["Location"] = f"/jobs/{job.id}"
    return response


def _job(request: web.Request) -> Any:
    job_id = request.match_info["job_id"]
    try:
        return request.app[SHIM].jobs.get(job_id)
    except KeyError:
        raise web.HTTPNotFound(reason=f"no job {job_id}") from None


async def get_job(request: web.Request) -> web.Response:
    job = _job(request)
    partial = request.query.get("partial", "") in ("1", "true")
    return json_response(job.view(with_results=partial or job.state.state in ("done", "cancelled")))


async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[SHIM].jobs.cancel(_job(request).id)
    return json_response(job.view(with_results=True))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SHIM].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(config: ShimConfig) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, metrics_middleware, auth_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    shim = Shim(config)
    app[SHIM] = shim
    app.on_startup.append(shim.start)
    app.on_cleanup.append(shim.close)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/probe", probe)
    app.router.add_post("/inference", inference)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/jobs", submit_job)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_delete("/jobs/{job_id}", cancel_job)
    app.router.add_get("/metrics", metrics)
    return app
