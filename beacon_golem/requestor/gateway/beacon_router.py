"""Beacon's hybrid-router contract on `beacon router`, so Beacon's runner can point at it.

Beacon's runner (runner-app/internal/hybrid/client.go) posts `{model, prompt, temperature,
max_tokens, region_preference, cost_priority}` to `POST /inference` and reads `{success,
response, error, error_code, failure, provider_used, inference_time, cost_estimate,
metadata{provider_type, region, model, receipt, failure}}`; it lists `GET /providers`. As
Beacon's router (Website/hybrid_router/core/router.py) does, every outcome but a malformed body
is a 200: a failure is `success: false` with an `error_code` and a `failure` object.

`region_preference` maps as Beacon maps regions (us-east, US, usa -> US; eu-west, EU, europe ->
EU; asia-pacific, APAC, ASIA -> APAC); the answer names the region as Beacon's router does
(us-east, eu-west, asia-pacific). `model` is Beacon's model id; `--model-map` says what a node
serves for it. The node's own answer (its signed receipt included) comes back in `metadata`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from beacon_golem.api.bodies import inference_error_code
from beacon_golem.api.server import json_response, parse_json_object
from beacon_golem.core.beacon import (
    BEACON_REGIONS,
    BeaconFailure,
    BeaconInferenceRequest,
    go_time,
    router_region_label,
    router_region_name,
)
from beacon_golem.core.clock import utcnow
from beacon_golem.core.errors import one_line
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node

log = get_logger(__name__)


class SlotLike(Protocol):
    node: Node
    healthy: bool
    in_flight: int
    latency_ms: float

    def observe(self, ms: float) -> None: ...


class RouterLike(Protocol):
    session: aiohttp.ClientSession | None

    @property
    def slots(self) -> Mapping[str, SlotLike]: ...

    def pick(self, region: str | None, model: str | None) -> SlotLike | None: ...

    def headers(self, node: Node) -> dict[str, str]: ...

    def sync_nodes(self) -> None: ...


class BeaconRouterMetadata(BaseModel):
    provider_type: str | None = None
    #: As Beacon's router names regions: us-east, eu-west, asia-pacific.
    region: str | None = None
    model: str | None = None
    receipt: dict[str, Any] | None = None
    failure: BeaconFailure | None = None
    node_id: str | None = None
    #: What the node served for Beacon's model (`--model-map`).
    node_model: str | None = None
    requested_region: str | None = None


class BeaconRouterResponse(BaseModel):
    """Beacon's `InferenceResponse` (Website/hybrid_router/models/requests.py)."""

    success: bool
    response: str | None = None
    error: str | None = None
    error_code: str | None = None
    failure: BeaconFailure | None = None
    provider_used: str
    inference_time: float
    cost_estimate: float
    metadata: BeaconRouterMetadata = Field(default_factory=BeaconRouterMetadata)


class BeaconProvider(BaseModel):
    """One entry of Beacon's `GET /providers` (a node, without its URL)."""

    name: str
    type: str
    region: str | None
    healthy: bool
    cost_per_second: float
    avg_latency: float
    success_rate: float
    last_health_check: float
    models: list[str] = Field(default_factory=list)


class _Stats:
    """Per node: Beacon's success rate (moving, 0.9/0.1 as its router keeps it) and last use."""

    def __init__(self) -> None:
        self.success_rate: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}

    def record(self, node_id: str, ok: bool) -> None:
        self.success_rate[node_id] = self.success_rate.get(node_id, 1.0) * 0.9 + (0.1 if ok else 0.0)
        self.last_seen[node_id] = time.time()


def cost_per_second(node: Node) -> float:
    """GLM per second of use on a Golem node (its offer's hourly price), 0 elsewhere."""
    offer = node.extra.get("offer") if isinstance(node.extra, dict) else None
    try:
        return float(offer["hourly_glm"]) / 3600.0 if isinstance(offer, dict) and offer.get("hourly_glm") else 0.0
    except (TypeError, ValueError):
        return 0.0


def _failure(code: str, stage: str, message: str, *, region: str | None = None, model: str | None = None,
             provider: str | None = None, transient: bool = False, http_status: int | None = None) -> BeaconFailure:  # fmt: skip
    return BeaconFailure(
        code=code, stage=stage, component="beacon_golem_router", message=message, provider=provider,
        provider_type="golem" if provider else None, region=region, model=model, transient=transient,
        http_status=http_status, timestamp=go_time(utcnow().replace(microsecond=0)),
    )  # fmt: skip


def _failed(failure: BeaconFailure, *, provider: str = "", elapsed: float = 0.0,
            metadata: BeaconRouterMetadata | None = None) -> web.Response:  # fmt: skip
    meta = (metadata or BeaconRouterMetadata()).model_copy(update={"failure": failure})
    body = BeaconRouterResponse(success=False, error=failure.message, error_code=failure.code, failure=failure,
                                provider_used=provider, inference_time=elapsed, cost_estimate=0.0, metadata=meta)  # fmt: skip
    return json_response(body)


def add_beacon_routes(
    app: web.Application,
    get_router: Callable[[web.Request], RouterLike],
    is_authenticated: Callable[[web.Request], bool],
    read_capped: Callable[[aiohttp.ClientResponse], Any],
    model_map: dict[str, str] | None = None,
) -> None:
    """POST /inference and GET /providers, Beacon's way, on a router app."""
    models = dict(model_map or {})
    stats = _Stats()

    async def inference(request: web.Request) -> web.Response:
        router = get_router(request)
        body = await parse_json_object(request)
        try:
            req = BeaconInferenceRequest.model_validate(body)
        except ValidationError as exc:
            failure = _failure("INVALID_REQUEST", "request_validation", one_line(exc))
            response = _failed(failure)
            response.set_status(422)
            return response
        region: str | None = None
        requested = req.region_preference
        if requested:
            region = router_region_label(requested)
            if region is None:
                accepted = ", ".join(list(BEACON_REGIONS) + ["us", "usa", "na", "eu", "europe", "apac", "asia"])
                return _failed(
                    _failure("UNKNOWN_REGION", "provider_selection",
                             f"region_preference '{requested}' is not a region Beacon maps (accepted: {accepted})",
                             model=req.model),  # fmt: skip
                    metadata=BeaconRouterMetadata(requested_region=requested, model=req.model),
                )
        node_model = models.get(req.model, req.model)
        slot = router.pick(region, node_model)
        meta = BeaconRouterMetadata(model=req.model, node_model=node_model, requested_region=requested,
                                    region=router_region_name(region))  # fmt: skip
        if slot is None:
            where = f" in region {router_region_name(region)}" if region else ""
            return _failed(
                _failure("PROVIDER_UNAVAILABLE", "provider_selection",
                         f"No healthy providers available{where} for model {req.model}"
                         + (f" (served as {node_model})" if node_model != req.model else ""),
                         region=router_region_name(region), model=req.model, transient=True),  # fmt: skip
                metadata=meta,
            )
        node = slot.node
        meta = meta.model_copy(update={"provider_type": node.fleet, "region": router_region_name(node.region),
                                       "node_id": node.node_id})  # fmt: skip
        if node.token is not None and not is_authenticated(request):
            return _failed(
                _failure("AUTH_REQUIRED", "provider_selection",
                         "this router has no token of its own, so it never sends a caller's request with a node's "
                         "token: start it with BEACON_ROUTER_TOKEN", provider=node.node_id),  # fmt: skip
                provider=node.node_id, metadata=meta,
            )
        assert router.session is not None
        payload = {"model": node_model, "prompt": req.prompt, "temperature": req.temperature, "max_tokens": req.max_tokens}
        slot.in_flight += 1
        started = time.perf_counter()
        status, raw = 0, None
        try:
            async with router.session.post(node.url + "/inference", json=payload, headers=router.headers(node)) as upstream:
                status = upstream.status
                raw = await read_capped(upstream)
        except (TimeoutError, aiohttp.ClientError) as exc:
            slot.healthy = False
            stats.record(node.node_id, False)
            return _failed(
                _failure("PROVIDER_UNREACHABLE", "provider_execution", f"node {node.node_id} failed: {exc}",
                         region=meta.region, model=req.model, provider=node.node_id, transient=True),  # fmt: skip
                provider=node.node_id, elapsed=time.perf_counter() - started, metadata=meta,
            )
        finally:
            slot.in_flight -= 1
            slot.observe((time.perf_counter() - started) * 1000)
        elapsed = time.perf_counter() - started
        try:
            answer = json.loads(raw) if raw is not None else None
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict) or answer.get("success") is False or not isinstance(answer.get("response"), str):
            stats.record(node.node_id, False)
            given = answer if isinstance(answer, dict) else {}
            code = str(given.get("error_code") or (inference_error_code(status) if status else "PROVIDER_ERROR"))
            message = str(given.get("error") or (f"node {node.node_id} answered HTTP {status}" if status != 200 else
                                                 f"node {node.node_id} answered an unexpected body"))  # fmt: skip
            return _failed(
                _failure(code, "provider_execution", message, region=meta.region, model=req.model,
                         provider=node.node_id, transient=status >= 500 or status == 0, http_status=status or None),  # fmt: skip
                provider=node.node_id, elapsed=elapsed, metadata=meta,
            )
        stats.record(node.node_id, True)
        receipt = answer.get("receipt") if isinstance(answer.get("receipt"), dict) else None
        body = BeaconRouterResponse(
            success=True,
            response=answer["response"],
            provider_used=node.node_id,
            inference_time=elapsed,
            cost_estimate=elapsed * cost_per_second(node),
            metadata=meta.model_copy(update={"receipt": receipt}),
        )
        return json_response(body)

    async def providers(request: web.Request) -> web.Response:
        router = get_router(request)
        router.sync_nodes()
        wanted = request.query.get("region")
        rows = [
            BeaconProvider(
                name=s.node.node_id,
                type=s.node.fleet,
                region=router_region_name(s.node.region),
                healthy=s.healthy,
                cost_per_second=cost_per_second(s.node),
                avg_latency=round(s.latency_ms / 1000.0, 6),
                success_rate=round(stats.success_rate.get(s.node.node_id, 1.0), 6),
                last_health_check=stats.last_seen.get(s.node.node_id, 0.0),
                models=s.node.models,
            )
            for s in router.slots.values()
        ]
        if wanted:
            rows = [r for r in rows if r.region == wanted or r.region == router_region_name(router_region_label(wanted))]
        return json_response({"providers": [r.model_dump(mode="json") for r in rows]})

    app.router.add_post("/inference", inference)
    app.router.add_get("/providers", providers)


def beacon_health_fields(slots: Mapping[str, SlotLike]) -> dict[str, Any]:
    """What Beacon's router adds to GET /health: provider counts and the regions with a healthy one."""
    healthy = [s for s in slots.values() if s.healthy]
    return {
        "timestamp": time.time(),
        "providers_total": len(slots),
        "providers_healthy": len(healthy),
        "regions": sorted({r for s in healthy if (r := router_region_name(s.node.region))}),
    }
