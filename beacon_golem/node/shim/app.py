"""The node shim: one aiohttp service on port 8080 in front of whatever runtime the node runs.

Routes: GET /health, GET /info, POST /inference, POST /v1/chat/completions, POST /v1/completions,
GET /v1/models, POST /jobs, GET /jobs/{id}, DELETE /jobs/{id}, POST /runtime, GET /metrics.
See docs/shim.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field, SecretStr, field_validator

from beacon_golem import __version__
from beacon_golem.api.bodies import Health, InferenceBody, JobAccepted, JobSubmission, RuntimeSwitch
from beacon_golem.api.server import (
    BOUNDS,
    Handler,
    ServerBounds,
    bearer_ok,
    browser_guard,
    error_response,
    errors_middleware,
    json_response,
    parse_body,
    parse_json_object,
    route_name,
    unauthorized,
)
from beacon_golem.core.config import ShimLimits, check_token
from beacon_golem.core.errors import BeaconError, RuntimeUnavailable
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import NodeInfo, RuntimeInfo, StartupTimes, SystemInfo
from beacon_golem.node.probe.hardware import system_info
from beacon_golem.node.probe.report import cached_probe
from beacon_golem.node.runtimes import RuntimeAdapter, RuntimeStatus, Timeouts, adapter_class
from beacon_golem.node.shim.beacon_contract import NODE_RECEIPTS, NodeReceipts, answer, beacon_errors_middleware
from beacon_golem.node.shim.bounds import InFlight, check_perf_job
from beacon_golem.node.shim.jobs import JobManager
from beacon_golem.node.shim.perf_jobs import node_perf_runner
from beacon_golem.node.shim.prometheus import ShimMetrics

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
#: What switches a node's runtime (the launcher that owns the runtime process): POST /runtime.
RuntimeSwitcher = Callable[[RuntimeSwitch], Awaitable[StartupTimes]]




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
    #: The key the runtime behind this shim requires (the node launched it with one); sent with
    #: every request to it, never shown.
    runtime_api_key: SecretStr | None = None
    #: The runtimes this node's image holds: POST /runtime to another answers 422 (empty: any).
    runtimes: list[str] = Field(default_factory=list)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return check_token(value)


class Shim:
    """Everything one shim instance holds; created per app, never global."""

    def __init__(self, config: ShimConfig) -> None:
        self.config = config
        self.metrics = ShimMetrics()
        self.started_at = datetime.now(UTC)
        self.session: aiohttp.ClientSession | None = None
        self.adapter: RuntimeAdapter | None = None

        limits = config.limits
        #: Generations sent to the runtime at once, over every route and job (node/shim/bounds.py).
        self.in_flight = InFlight(limits.max_in_flight, limits.max_waiting)
        self.jobs = JobManager(
            config.data_dir / "jobs",
            self.generate,
            perf=node_perf_runner(self),
            max_jobs=limits.max_stored_jobs,
            max_bytes=limits.max_stored_job_bytes,
        )
        #: When the runtime last proved alive (a ready status or a generation), for /health under load.
        self._alive_at = 0.0
        self._status: RuntimeStatus | None = None
        #: Tokens one request may hold on the runtime (prompt and answer), when it says.
        self._context: int | None = None
        self._status_probe: asyncio.Task[RuntimeStatus] | None = None
        self._system: asyncio.Task[SystemInfo] | None = None
        self._info: NodeInfo | None = None
        self._models: list[str] = []
        #: How the current runtime started (set by the launcher that started it).
        self.startup: StartupTimes | None = None
        #: Set by a launcher that can replace the runtime (None: POST /runtime answers 409).
        self.switcher: RuntimeSwitcher | None = None
        #: Why the node serves nothing right now (a switch under way, or one that failed).
        self.not_serving: str | None = None
        #: When (time.monotonic()) the runtime switch under way began, set by the launcher for the
        #: whole switch (stop, launch, model load); None when none is. /health gives its age.
        self.switch_began: float | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, _: web.Application) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        # Connection limit off: the shim must not queue requests the runtime could serve.
        # force_close: llama-server drops a connection after a stream without saying so, and
        # a reused dead connection fails the next request; a loopback connect costs ~0.1 ms.
        key = self.config.runtime_api_key
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            headers={"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else None,
        )
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
    def runtime_key(self) -> SecretStr | None:
        """The key the runtime requires (None: it requires none, or the node did not launch it)."""
        return self.config.runtime_api_key

    @property
    def runtime(self) -> RuntimeAdapter:
        assert self.adapter is not None, "shim not started"
        return self.adapter

    def use_runtime(self, runtime: str, upstream: str, launch_settings: dict[str, Any]) -> None:
        """Front another runtime from now on (after a runtime switch): a new adapter, a fresh /info."""
        assert self.session is not None, "shim not started"
        self.config = self.config.model_copy(
            update={"runtime": runtime, "upstream": upstream, "launch_settings": launch_settings}
        )
        timeouts = Timeouts(self.config.limits.connect_timeout_s, self.config.limits.read_timeout_s)
        self.adapter = adapter_class(runtime)(upstream, self.session, timeouts, launch_settings)
        self._info = None
        self._models = []
        self._status = None  # the runtime before's last ready status says nothing of this one

    def node_id(self) -> str:
        path = self.config.data_dir / "node_id"
        if not path.exists():
            path.write_text(uuid.uuid4().hex)
        return path.read_text().strip()

    # ---- runtime -----------------------------------------------------------------------------
    async def status(self) -> RuntimeStatus:
        if self.not_serving is not None:
            return RuntimeStatus(reachable=False, ready=False, reason=self.not_serving)
        status = await self.runtime.status()
        if status.models:
            self._models = status.models
        if status.ready:
            self._context = context_tokens(status)
        return status

    async def default_model(self) -> str:
        if not self._models:
            status = await self.status()
            if not status.ready:
                raise RuntimeUnavailable(status.reason or f"{self.runtime.name} is not ready")
        return self._models[0]

    async def generate(self, request: GenerationRequest, *, may_refuse: bool = False) -> GenerationResult:
        """One generation within the node's in-flight cap (`may_refuse`: an HTTP request, 503 when
        too many already wait; a job's worker waits)."""
        model = request.model or await self.default_model()
        async with self.in_flight.slot(may_refuse=may_refuse):
            self.metrics.in_flight.inc()
            try:
                result = await self.runtime.generate(request, model)
            except BeaconError:
                self.metrics.failed_generation(self.runtime.name)
                raise
            finally:
                self.metrics.in_flight.dec()
        self._alive_at = time.monotonic()
        if self._context is not None and request.max_tokens > self._context:
            result.warnings.append(
                f"max_tokens {request.max_tokens} is more than the runtime's context ({self._context} tokens "
                "per request): the answer stops at the context's end"
            )
        self.metrics.generation(result)
        return result

    async def health_status(self, timeout_s: float = 8.0) -> RuntimeStatus:
        """The runtime's status for GET /health: one probe shared by every concurrent caller, at most
        `timeout_s` (under the 10 s a dispatcher's or a VM's health check allows). A runtime that
        answered a generation in the last 30 s and is slow to answer its own status because it is
        busy counts as ready (its last ready status is given)."""
        if self._status_probe is None or self._status_probe.done():
            self._status_probe = asyncio.ensure_future(self.status())
            self._status_probe.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            status = await asyncio.wait_for(asyncio.shield(self._status_probe), timeout_s)
        except TimeoutError:
            busy = self._status is not None and self._status.ready and time.monotonic() - self._alive_at < 30.0
            if busy and self.not_serving is None:
                return self._status  # type: ignore[return-value]
            return RuntimeStatus(reachable=False, ready=False, reason=f"{self.runtime.name} did not answer within {timeout_s:g} s")
        if status.ready:
            self._status = status
            self._alive_at = time.monotonic()
        return status

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
                    launch=dict(self.config.launch_settings.get("settings") or {}),
                    weights=status.weights,
                ),
                system=await asyncio.shield(self._system),
                started_at=self.started_at,
                extra=self.config.extra_info,
                startup=self.startup,
            )
        return self._info


SHIM: web.AppKey[Shim] = web.AppKey("shim", Shim)


def context_tokens(status: RuntimeStatus) -> int | None:
    """Tokens one request may hold: llama-server's per-slot `n_ctx`, vLLM's `max_model_len`, or
    the served weights' context length."""
    for key in ("n_ctx", "max_model_len"):
        value = status.settings.get(key)
        if isinstance(value, int) and value > 0:
            return value
    weights = getattr(status, "weights", None)
    length = getattr(weights, "context_length", None)
    return length if isinstance(length, int) and length > 0 else None
















@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: every answer is counted, the 500s the error middleware makes of a crash included;
    a request whose client left is counted as status 499."""
    metrics = request.app[SHIM].metrics
    route = route_name(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        metrics.requests.labels(route, str(status)).inc()
        if status >= 400:
            metrics.errors.labels(route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With a token: every route but /health needs it. Without: the browser guard (api/server.py)
    refuses CSRF-able POSTs, cross-origin requests and foreign Host names."""
    config = request.app[SHIM].config
    if config.token is None:
        refused = browser_guard(request, tuple(config.limits.allowed_hosts))
        return refused if refused is not None else await handler(request)
    if request.path == "/health" or bearer_ok(request, config.token):
        return await handler(request)
    return unauthorized()


# ---- handlers ----------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    shim = request.app[SHIM]
    status = await shim.health_status()
    began = shim.switch_began
    body = Health(
        status="ok" if status.ready else "unavailable",
        runtime=shim.runtime.name,
        models=status.models,
        reason=status.reason,
        switching_s=round(time.monotonic() - began, 1) if began is not None else None,
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
    """The normalized request or Beacon's router body; the result with Beacon's fields and a signed receipt."""
    shim = request.app[SHIM]
    generation = (await parse_body(request, InferenceBody)).generation()
    started = datetime.now(UTC)
    result = await shim.generate(generation, may_refuse=True)
    ended = datetime.now(UTC)
    receipt = request.app[NODE_RECEIPTS].receipt(
        await shim.info(), shim.config.extra_info, generation, result, started, ended
    )
    return answer(result, receipt)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI-compatible pass-through, fixed for the runtime's traps; streaming works."""
    body = await parse_json_object(request)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise web.HTTPUnprocessableEntity(reason="messages: a non-empty list is required")
    return await _pass_through(request, "chat/completions", body)


async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's legacy text completions (`prompt`), passed through like chat: what `vllm bench serve`'s
    and GuideLLM's default backends send. Every runtime here serves it under its OpenAI base."""
    body = await parse_json_object(request)
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt):
        raise web.HTTPUnprocessableEntity(reason="prompt: a non-empty string (or list) is required")
    return await _pass_through(request, "completions", body)


async def _pass_through(request: web.Request, tail: str, body: dict[str, Any]) -> web.StreamResponse:
    shim = request.app[SHIM]
    body = shim.runtime.adapt_openai_body(body)
    body.setdefault("model", await shim.default_model())
    timeout = shim.runtime.timeouts.client_timeout()
    async with shim.in_flight.slot(may_refuse=True), shim.runtime.request(
        "POST", shim.runtime.openai_url(tail), json=body, timeout=timeout
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
    if spec.perf is not None:
        check_perf_job(spec.perf, shim.config.limits.max_perf_prompts)
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


async def switch_runtime(request: web.Request) -> web.Response:
    """Replace the runtime (POST /runtime): the old one stops and frees its memory, the new one starts;
    answers the new /info once it serves. 409 when this node cannot switch or a job is running."""
    shim = request.app[SHIM]
    body = await parse_body(request, RuntimeSwitch)
    if shim.switcher is None:
        return error_response(409, "this node fronts a runtime it did not launch: it cannot switch runtimes")
    held = shim.config.runtimes
    if held and body.runtime not in held:
        return error_response(422, f"this node's image holds {', '.join(held)}, not {body.runtime}")
    if any(job.state.state in ("queued", "running") for job in shim.jobs.jobs.values()):
        return error_response(409, "a job is running on this node: switch runtimes once it has finished")
    try:
        body.settings.check_for(body.runtime)
    except BeaconError as exc:
        return error_response(422, str(exc))
    await asyncio.shield(shim.switcher(body))  # a client that leaves must not cut a switch in half
    return json_response(await shim.info(refresh=True))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SHIM].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(config: ShimConfig) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, beacon_errors_middleware, errors_middleware, auth_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    shim = Shim(config)
    app[SHIM] = shim
    app[NODE_RECEIPTS] = NodeReceipts(config.data_dir)
    limits = config.limits
    app[BOUNDS] = ServerBounds(limits.header_timeout_s, limits.body_timeout_s, limits.max_json_depth)
    app.on_startup.append(shim.start)
    app.on_cleanup.append(shim.close)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/probe", probe)
    app.router.add_post("/inference", inference)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/jobs", submit_job)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_delete("/jobs/{job_id}", cancel_job)
    app.router.add_post("/runtime", switch_runtime)
    app.router.add_get("/metrics", metrics)
    return app
