"""GolemFleet with the Golem side replaced at the yapapi boundary.

`FakeGolem` stands where yapapi's `Golem` stands (same constructor keywords, async context,
create_network, run_service); its cluster creates real `BeaconNodeService` instances, and the test
plays the providers: it gives each instance a real yapapi WorkContext over a real Agreement (ya_market
models) and moves it through yapapi's real `ServiceState`s. Each "VM" is a small HTTP server that
answers /health and /info like the shim, reached through a fake tunnel instead of the VPN.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from ya_market import models
from yapapi import events
from yapapi.ctx import WorkContext
from yapapi.rest.market import Agreement, AgreementDetails
from yapapi.services import ServiceState
from yapapi.strategy import DecreaseScoreForUnconfirmedAgreement

from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import Node
from beacon_golem.requestor.fleets.base import FleetEvent
from beacon_golem.requestor.fleets.golem import GolemFleet, GolemFleetConfig
from beacon_golem.requestor.fleets.golem.payload import GpuVmPayload, ImageRef
from beacon_golem.requestor.fleets.golem.records import AgreementRow, DebitNoteRow, InvoiceRow, NodeCostRow
from beacon_golem.requestor.fleets.golem.service import BeaconNodeService
from beacon_golem.requestor.fleets.golem.strategy import GpuMarketStrategy
from beacon_golem.requestor.fleets.golem.tunnel import VpnTunnel
from tests.requestor.fleets.golem.test_strategy import multi_gpu, single_gpu
from tests.support import unclosed_sessions

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# ---- the providers' side ------------------------------------------------------------------------
class FakeShim:
    """Answers /health, /info and /inference like a node's shim; `healthy` flips its /health.

    /inference answers a valid `GenerationResult` naming this shim. After `hang_after` requests
    every further one hangs (a VM that stopped answering mid-job) until `crash()` (the runtime
    died: hung and new requests get a 502, /health a 503) or `stop()`.
    """

    def __init__(self, name: str, extra: dict[str, Any] | None = None, hang_after: int | None = None) -> None:
        self.name = name
        self.extra = extra or {}  # path -> POST handler
        self.healthy = True
        #: Set: a runtime switch under way for this many seconds (its /health says `switching_s`).
        self.switching_s: float | None = None
        self.url = ""
        self.hang_after = hang_after
        self.received = 0  # /inference requests that arrived
        self.hanging = 0  # /inference requests held unanswered now
        self.crashed = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/info", self.info)
        if "/inference" not in self.extra:
            app.router.add_post("/inference", self.inference)
        for path, handler in self.extra.items():
            app.router.add_post(path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self._release.set()  # hung handlers end before the server waits for them
        if self._runner is not None:
            await self._runner.cleanup()

    def crash(self) -> None:
        self.crashed = True
        self.healthy = False
        self._release.set()

    async def inference(self, request: web.Request) -> web.Response:
        req = GenerationRequest.model_validate(await request.json())
        self.received += 1
        if not self.crashed and self.hang_after is not None and self.received > self.hang_after:
            self.hanging += 1
            try:
                await self._release.wait()
            finally:
                self.hanging -= 1
        if self.crashed:
            return web.json_response({"error": "the runtime exited", "status": 502}, status=502)
        question = req.chat_messages()[-1]["content"]
        result = GenerationResult(
            text=f"{self.name} answers: {question}",
            finish_reason="stop",
            prompt_tokens=8,
            completion_tokens=4,
            token_count_source="server",
            ttft_ms=1.0,
            e2e_ms=2.0,
            runtime="vllm",
            model=req.model or "m",
        )
        return web.json_response(text=result.model_dump_json())

    async def health(self, request: web.Request) -> web.Response:
        body = {"status": "ok" if self.healthy else "unavailable", "runtime": "vllm", "models": ["m"],
                "switching_s": self.switching_s}  # fmt: skip
        return web.json_response(body, status=200 if self.healthy else 503)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "shim_version": "0.1.0",
                "node_id": f"vm-{self.name}",
                "runtime": {"name": "vllm", "upstream": "http://127.0.0.1:8000", "models": ["m"]},
                "system": {
                    "os": "Linux",
                    "kernel": "6.1",
                    "arch": "x86_64",
                    "ram_gib": 32.0,
                    "gpus": [{"name": "NVIDIA A30"}],
                },
                "started_at": "2026-01-01T00:00:00Z",
            }
        )


class FakeTunnel:
    def __init__(self, url: str) -> None:
        self.url = url
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeCluster:
    def __init__(self, service_class: type[BeaconNodeService]) -> None:
        self.service_class = service_class
        self.instances: list[BeaconNodeService] = []
        self.spawn_calls: list[int] = []
        self.stopped: list[BeaconNodeService] = []
        self.stop_all_called = False

    def spawn_instances(self, num_instances: int, instance_params: list[dict[str, Any]]) -> None:
        self.spawn_calls.append(num_instances)
        for params in instance_params[:num_instances]:
            self.instances.append(self.service_class(**params))

    def stop_instance(self, service: BeaconNodeService) -> None:
        self.stopped.append(service)
        set_state(service, "terminated")

    def stop(self) -> None:
        self.stop_all_called = True
        for service in self.instances:
            if service.state in (ServiceState.starting, ServiceState.running, ServiceState.pending):
                set_state(service, "terminated")


class FakeNetwork:
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.removed = False

    async def __aenter__(self) -> FakeNetwork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.removed = True


class FakeGolem:
    """What GolemFleet uses of yapapi's Golem: constructor keywords, async context,
    create_network and run_service."""

    made: list[FakeGolem] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.cluster: FakeCluster | None = None
        self.network: FakeNetwork | None = None
        self.run_service_kwargs: dict[str, Any] = {}
        self.exited = False
        FakeGolem.made.append(self)

    async def __aenter__(self) -> FakeGolem:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    async def create_network(self, ip: str) -> FakeNetwork:
        self.network = FakeNetwork(ip)
        return self.network

    async def run_service(self, service_class: type[BeaconNodeService], **kwargs: Any) -> FakeCluster:
        self.run_service_kwargs = kwargs
        self.cluster = FakeCluster(service_class)
        self.cluster.spawn_instances(kwargs["num_instances"], kwargs["instance_params"])
        return self.cluster

    def emit(self, event_class: type[events.Event], **kwargs: Any) -> None:
        """Deliver an event the way yapapi's engine does: to the event consumer."""
        self.kwargs["event_consumer"](event_class(job=mock.Mock(), **kwargs))


def set_state(service: BeaconNodeService, state: str) -> None:
    service.service_instance.service_state = ServiceState(start_value=state)


def agreement_for(provider_id: str, props: dict[str, Any], agreement_id: str) -> Agreement:
    ts = dt.datetime.now(dt.UTC)
    agreement = Agreement(mock.Mock(), agreement_id)
    agreement._details = AgreementDetails(
        _ref=models.Agreement(
            agreement_id=agreement_id,
            demand=models.Demand(properties={}, constraints="", demand_id="d", requestor_id="r", timestamp=ts),
            offer=models.Offer(properties=props, constraints="", offer_id="o", provider_id=provider_id, timestamp=ts),
            valid_to=ts,
            state="Approved",
            timestamp=ts,
        )
    )
    return agreement


class Market:
    """Plays the providers: rents pending instances to the next provider in line."""

    def __init__(self, golem: Callable[[], FakeGolem]) -> None:
        self.golem = golem
        self.shims: dict[str, FakeShim] = {}
        self.queue: list[tuple[str, dict[str, Any]]] = []
        self.rented: dict[str, str] = {}  # service id -> provider id
        self.refused: list[str] = []
        #: When set, instances fail their start with this reason (as start() raising would).
        self.fail_start: str | None = None
        #: Makes the shim of each provider rented (provider id -> FakeShim).
        self.shim_factory: Callable[[str], FakeShim] = FakeShim

    def provider(self, pid: str, props: dict[str, Any]) -> None:
        self.queue.append((pid, props))

    async def connector(self, service: BeaconNodeService, port: int, timeout: float) -> FakeTunnel:
        assert port == 8080
        return FakeTunnel(self.shims[self.rented[service.id]].url)

    async def serve(self) -> None:
        while True:
            golem = self.golem()
            cluster = golem.cluster if golem else None
            for service in cluster.instances if cluster else []:
                if service.id in self.rented or service.id in self.refused or not self.queue:
                    continue
                pid, props = self.queue.pop(0)
                agreement = agreement_for(pid, props, f"agr-{pid}")
                ctx = WorkContext(mock.Mock(id=f"act-{pid}"), agreement, storage=mock.AsyncMock(), emitter=mock.Mock())
                service._set_ctx(ctx)
                if service._admit is not None and not service._admit(pid):
                    self.refused.append(service.id)  # the service refuses before deploying
                    set_state(service, "terminated")
                    continue
                if self.fail_start:
                    self.rented[service.id] = pid
                    service.failure = self.fail_start
                    set_state(service, "terminated")
                    continue
                shim = self.shim_factory(pid)
                await shim.start()
                self.shims[pid] = shim
                self.rented[service.id] = pid
                golem.emit(events.AgreementConfirmed, agreement=agreement)
                set_state(service, "running")
            await asyncio.sleep(0.01)

    def service_of(self, pid: str) -> BeaconNodeService:
        golem = self.golem()
        assert golem.cluster is not None
        return next(s for s in golem.cluster.instances if self.rented.get(s.id) == pid)


async def no_registry(ref: ImageRef) -> str:
    return "hash:sha3:" + "0" * 56 + ":http://registry.invalid/img.gvmi"


def make_config(**kw: Any) -> GolemFleetConfig:
    base: dict[str, Any] = {
        "image": "beacon/vllm:1",
        "nodes": 2,
        "budget": 100,
        "max_price_glm_per_hour": 1,
        "health_interval_s": 0.05,
        "health_failures": 2,
        "min_time_left_s": 0,
        "ready_timeout_s": 10,
    }
    return GolemFleetConfig(**{**base, **kw})


@pytest.fixture
async def market() -> AsyncIterator[Market]:
    FakeGolem.made.clear()
    m = Market(lambda: FakeGolem.made[-1] if FakeGolem.made else None)  # type: ignore[arg-type,return-value]
    task = asyncio.create_task(m.serve())
    yield m
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for shim in m.shims.values():
        await shim.stop()


def fleet_for(market: Market, config: GolemFleetConfig, lines: list[str] | None = None, **kw: Any) -> GolemFleet:
    return GolemFleet(
        config,
        golem_factory=FakeGolem,
        resolver=no_registry,
        connector=market.connector,
        on_note=((lambda n: lines.append(n.message)) if lines is not None else None),
        poll_interval_s=0.01,
        **kw,
    )


async def next_event(fleet: GolemFleet, kind: str, timeout: float = 5.0) -> FleetEvent:
    async def wait() -> FleetEvent:
        async for event in fleet.events():
            if event.kind == kind:
                return event
        raise AssertionError("unreachable")

    return await asyncio.wait_for(wait(), timeout)


# ---- tests -----------------------------------------------------------------------------------------
async def test_nodes_come_up_each_on_its_own_url(market: Market) -> None:
    market.provider("0xaaa111", multi_gpu(glm_per_hour=0.5))
    market.provider("0xbbb222", single_gpu(glm_per_hour=0.4))
    config = make_config(payment_network="polygon", subnet="public")
    async with fleet_for(market, config) as fleet:
        nodes = fleet.nodes()
        assert len(nodes) == 2
        assert len({n.url for n in nodes}) == 2
        by_provider = {n.provider_id: n for n in nodes}
        node = by_provider["0xaaa111"]
        assert node.fleet == "golem" and node.provider_name == "multi-box"
        assert node.info is not None and node.info.node_id == "vm-0xaaa111"
        assert node.extra["agreement_id"] == "agr-0xaaa111"
        assert Decimal(node.extra["offer"]["hourly_glm"]) == Decimal("0.5")
        assert node.extra["gpu"]["devices"][0]["model"] == "NVIDIA A30"
        golem = FakeGolem.made[-1]
        assert golem.kwargs["budget"] == Decimal(100)
        assert golem.kwargs["payment_driver"] == "erc20"
        assert golem.kwargs["payment_network"] == "polygon"
        assert golem.kwargs["subnet_tag"] == "public"
        strategy = golem.kwargs["strategy"]
        assert isinstance(strategy, DecreaseScoreForUnconfirmedAgreement)
        assert isinstance(strategy.base_strategy, GpuMarketStrategy)
        assert isinstance(golem.run_service_kwargs["payload"], GpuVmPayload)
        assert golem.run_service_kwargs["network"] is golem.network
        assert golem.run_service_kwargs["num_instances"] == 2
    assert golem.exited and golem.network is not None and golem.network.removed
    assert golem.cluster is not None and golem.cluster.stop_all_called
    assert fleet.nodes() == []


async def test_lost_instance_is_replaced_and_its_provider_blacklisted(market: Market) -> None:
    for pid in ("0xaaa111", "0xbbb222", "0xccc333"):
        market.provider(pid, single_gpu())
    lines: list[str] = []
    async with fleet_for(market, make_config(), lines) as fleet:
        added = {e.node.provider_id for e in [fleet.next_event_nowait(), fleet.next_event_nowait()] if e}
        assert added == {"0xaaa111", "0xbbb222"}
        lost_node = next(n for n in fleet.nodes() if n.provider_id == "0xaaa111")

        set_state(market.service_of("0xaaa111"), "terminated")  # the provider ended the activity

        lost = await next_event(fleet, "lost")
        assert lost.node.node_id == lost_node.node_id
        assert lost.reason == "instance terminated"
        assert "0xaaa111" in fleet.blacklist
        assert "0xaaa111" in fleet.strategy.blacklist  # new offers from it are rejected
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and cluster.spawn_calls == [2, 1]
        assert fleet.replacements == 1
        replacement = await next_event(fleet, "added")
        assert replacement.node.provider_id == "0xccc333"
        assert {n.provider_id for n in fleet.nodes()} == {"0xbbb222", "0xccc333"}
        assert cluster.instances[-1]._admit is not None and not cluster.instances[-1]._admit("0xaaa111")
    assert any("blacklisted" in line for line in lines)
    assert any("renting a replacement" in line for line in lines)


async def test_unresponsive_node_is_lost_and_replaced(market: Market) -> None:
    for pid in ("0xaaa111", "0xbbb222"):
        market.provider(pid, single_gpu())
    async with fleet_for(market, make_config(nodes=1)) as fleet:
        assert fleet.next_event_nowait() is not None
        market.shims["0xaaa111"].healthy = False
        lost = await next_event(fleet, "lost")
        assert lost.reason is not None and lost.reason.startswith("unresponsive")
        assert "0xaaa111" in fleet.blacklist
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and market.service_of("0xaaa111") in cluster.stopped
        assert (await next_event(fleet, "added")).node.provider_id == "0xbbb222"


async def test_a_node_switching_runtime_is_not_lost_until_its_switch_timeout(market: Market) -> None:
    for pid in ("0xaaa111", "0xbbb222"):
        market.provider(pid, single_gpu())
    async with fleet_for(market, make_config(nodes=1, switch_timeout_s=60)) as fleet:
        assert fleet.next_event_nowait() is not None
        shim = market.shims["0xaaa111"]
        shim.healthy, shim.switching_s = False, 12.0  # 503 while the next runtime loads its model
        await asyncio.sleep(0.5)  # ten checks, two failures would lose it
        assert [n.provider_id for n in fleet.nodes()] == ["0xaaa111"] and fleet.blacklist == set()
        shim.switching_s = 61.0  # a switch that does not end
        lost = await next_event(fleet, "lost")
        assert lost.reason == "runtime switch not done after 61 s (switch timeout 60 s)"
        assert "0xaaa111" in fleet.blacklist


async def test_once_told_to_stop_replacing_a_lost_node_is_not_replaced_and_it_says_why(market: Market) -> None:
    for pid in ("0xaaa111", "0xbbb222"):
        market.provider(pid, single_gpu())
    lines: list[str] = []
    async with fleet_for(market, make_config(nodes=1), lines) as fleet:
        node = fleet.nodes()[0]
        fleet.stop_replacing("a runtime comparison compares the machines it began with")
        await fleet.report_lost(node.node_id, "gone")
        assert fleet.nodes() == [] and fleet.replacements == 0 and not fleet.expecting_nodes()
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and cluster.spawn_calls == [1]
    assert "not renting a replacement: a runtime comparison compares the machines it began with" in lines
    assert fleet.why_no_more_nodes() == "a runtime comparison compares the machines it began with"


async def test_every_node_is_prepared_before_it_is_added_its_replacement_too(market: Market) -> None:
    """`prepare_node` (--runtime auto: the runtime chosen and switched) sees each node before anyone
    else does: the first one, and the replacement rented after it is lost; one that fails is used as it is."""
    for pid in ("0xaaa111", "0xbbb222", "0xccc333"):
        market.provider(pid, single_gpu())
    lines: list[str] = []
    fleet = fleet_for(market, make_config(nodes=1), lines)
    prepared: list[str] = []

    async def prepare(node: Node) -> None:
        assert node.node_id not in {n.node_id for n in fleet.nodes()} and fleet.expecting_nodes()
        prepared.append(node.provider_id or "")
        if node.provider_id == "0xbbb222":
            raise RuntimeError("switch refused")
        node.extra = {**node.extra, "prepared": True}

    fleet.prepare_node = prepare
    async with fleet:
        (first,) = fleet.nodes()
        assert first.extra["prepared"] and prepared == ["0xaaa111"]
        added = fleet.next_event_nowait()
        assert added is not None and added.kind == "added" and added.node.extra["prepared"]
        set_state(market.service_of("0xaaa111"), "terminated")
        replacement = await next_event(fleet, "added")
        assert replacement.node.provider_id == "0xbbb222" and "prepared" not in replacement.node.extra
    assert prepared == ["0xaaa111", "0xbbb222"]
    assert any(line.endswith("preparing it failed, it is used as it is: switch refused") for line in lines), lines


async def test_dispatcher_report_loses_the_node_and_rents_another(market: Market) -> None:
    for pid in ("0xaaa111", "0xbbb222"):
        market.provider(pid, single_gpu())
    async with fleet_for(market, make_config(nodes=1)) as fleet:
        node = fleet.nodes()[0]
        await fleet.report_lost(node.node_id, "wrong answers")
        lost = fleet.next_event_nowait()
        while lost is not None and lost.kind != "lost":
            lost = fleet.next_event_nowait()
        assert lost is not None and lost.reason == "reported broken: wrong answers"
        assert "0xaaa111" in fleet.blacklist
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and cluster.stopped == [market.service_of("0xaaa111")]
        assert (await next_event(fleet, "added")).node.provider_id == "0xbbb222"


async def test_no_replacement_the_budget_cannot_pay(market: Market) -> None:
    market.provider("0xaaa111", single_gpu(glm_per_hour=1.0))
    market.provider("0xbbb222", single_gpu(glm_per_hour=1.0))
    lines: list[str] = []
    # one hour at up to 1 GLM/h plus a start price of up to 1 GLM: a second node does not fit 1.5 GLM
    config = make_config(nodes=1, budget=1.5, duration_s=3600)
    async with fleet_for(market, config, lines) as fleet:
        assert any("below the worst case" in line for line in lines)
        set_state(market.service_of("0xaaa111"), "terminated")
        await next_event(fleet, "lost")
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and cluster.spawn_calls == [1]
        assert fleet.replacements == 0
        assert fleet.refusals and fleet.refusals[0].startswith("budget:")
        assert any(line.startswith("not renting a replacement: budget") for line in lines)


async def test_nodes_stop_before_the_budget_runs_out(market: Market) -> None:
    clock = {"now": NOW}
    market.provider("0xaaa111", single_gpu(glm_per_hour=1.0))
    market.provider("0xbbb222", single_gpu(glm_per_hour=1.0))
    config = make_config(nodes=1, budget=2, duration_s=4 * 3600)
    async with fleet_for(market, config, now=lambda: clock["now"]) as fleet:
        assert fleet.spent_glm() == 0
        clock["now"] = NOW + dt.timedelta(hours=1.5)  # 1.5 GLM spent; 0.08 more in the margin: fine
        await asyncio.sleep(0.1)
        assert len(fleet.nodes()) == 1
        clock["now"] = NOW + dt.timedelta(hours=1.95)
        lost = await next_event(fleet, "lost")
        assert lost.reason == "budget exhausted"
        assert "0xaaa111" not in fleet.blacklist  # not the provider's fault
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None and cluster.spawn_calls == [1]  # nothing more rented
        assert fleet.spent_glm() < config.budget
        # The dispatcher fails what is left at once, with this reason, instead of waiting for a node.
        assert not fleet.expecting_nodes()
        assert fleet.why_no_more_nodes().startswith("budget nearly spent (")


async def test_a_node_still_starting_is_expected_and_an_agreement_without_invoice_is_said(market: Market) -> None:
    market.provider("0xaaa111", single_gpu(glm_per_hour=0.5))
    lines: list[str] = []
    async with fleet_for(market, make_config(nodes=1), lines) as fleet:
        assert not fleet.expecting_nodes()  # every instance is a node
        cluster = FakeGolem.made[-1].cluster
        assert cluster is not None
        cluster.spawn_instances(1, [fleet._instance_params()])  # as a replacement: not a node yet
        assert fleet.expecting_nodes()
    assert not fleet.expecting_nodes()  # stopped
    said = [line for line in lines if line.startswith("no invoice from")]
    assert said and "an estimate from the offer's price" in said[0] and "not accepted" in said[0]
    (cost,) = [r for r in fleet.records() if isinstance(r, NodeCostRow)]
    assert cost.source == "estimate" and cost.amount_glm == cost.amount_glm.quantize(Decimal("1e-18"))


async def test_failed_starts_until_no_node_is_a_clear_error(market: Market) -> None:
    market.provider("0xaaa111", single_gpu())
    market.provider("0xbbb222", single_gpu())
    market.fail_start = "/health not OK after 1200 s (CUDA out of memory)"
    fleet = fleet_for(market, make_config(nodes=1, max_replacements=1))
    with pytest.raises(BeaconError, match="no Golem node came up .*CUDA out of memory"):
        await fleet.__aenter__()
    assert fleet.blacklist == {"0xaaa111", "0xbbb222"}
    assert fleet.replacements == 1
    assert fleet.refusals == ["all 1 replacements used"]
    assert FakeGolem.made[-1].exited


async def test_payments_become_records(market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YAGNA_APPKEY", "appkey-0123456789")
    market.provider("0xaaa111", single_gpu(glm_per_hour=0.5))
    lines: list[str] = []
    async with fleet_for(market, make_config(nodes=1), lines) as fleet:
        golem = FakeGolem.made[-1]
        agreement = agreement_for("0xaaa111", single_gpu(glm_per_hour=0.5), "agr-0xaaa111")
        note = mock.Mock(
            debit_note_id="dn-1", agreement_id="agr-0xaaa111", activity_id="act-1", total_amount_due="0.25"
        )
        golem.emit(events.DebitNoteReceived, agreement=agreement, debit_note=note)
        golem.emit(events.DebitNoteAccepted, agreement=agreement, debit_note=note)
        invoice = mock.Mock(invoice_id="inv-1", agreement_id="agr-0xaaa111", amount="0.3")
        golem.emit(events.InvoiceAccepted, agreement=agreement, invoice=invoice)
        golem.emit(
            events.PaymentFailed,
            agreement=agreement,
            exc_info=(RuntimeError, RuntimeError("401 for Bearer appkey-0123456789"), None),
        )
        await asyncio.sleep(0.05)  # yapapi delivers events on its own task
        node_id = fleet.nodes()[0].node_id
    rows = fleet.records()
    agreements = [r for r in rows if isinstance(r, AgreementRow)]
    assert [(a.agreement_id, a.provider_id, a.node_id, a.hourly_glm) for a in agreements] == [
        ("agr-0xaaa111", "0xaaa111", node_id, Decimal("0.5"))
    ]
    assert agreements[0].ended_at is not None and agreements[0].payment_network == "holesky"
    notes = [r for r in rows if isinstance(r, DebitNoteRow)]
    assert [(n.debit_note_id, n.amount_glm, n.accepted) for n in notes] == [("dn-1", Decimal("0.25"), True)]
    invoices = [r for r in rows if isinstance(r, InvoiceRow)]
    assert [(i.invoice_id, i.amount_glm, i.accepted) for i in invoices] == [("inv-1", Decimal("0.3"), True)]
    costs = [r for r in rows if isinstance(r, NodeCostRow)]
    assert [(c.node_id, c.amount_glm, c.source) for c in costs] == [(node_id, Decimal("0.3"), "invoice")]
    assert [r.model_dump()["kind"] for r in rows] == ["agreement", "debit_note", "invoice", "node_cost"]
    assert any("invoice from" in line and "0.3 GLM" in line for line in lines)
    failed = [line for line in lines if "payment to" in line]
    assert failed and "appkey-0123456789" not in failed[0] and "***" in failed[0]
    assert not any("appkey-0123456789" in line for line in lines)


async def test_engine_start_failure_is_one_line_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YAGNA_APPKEY", "appkey-0123456789")

    class NoAllocation(FakeGolem):
        async def __aenter__(self) -> FakeGolem:
            raise RuntimeError("allocation failed for appkey-0123456789: no RPC")

    fleet = GolemFleet(make_config(), golem_factory=NoAllocation, resolver=no_registry)
    with pytest.raises(BeaconError) as info:
        async with fleet:
            pass
    message = str(info.value)
    assert message.startswith("cannot start the Golem engine: allocation failed for ***")
    assert "beacon golem doctor" in message and "appkey-0123456789" not in message


# ---- the real tunnel over a websocket like yagna's VPN endpoint ------------
class FakeVpnEndpoint:
    """Stands for yagna's net websocket: checks the app key and bridges to a TCP port."""

    def __init__(self, target_port: int, app_key: str) -> None:
        self.target_port = target_port
        self.app_key = app_key
        self.connections = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.app_key}":
            return web.Response(status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            async for msg in ws:
                writer.write(msg.data)
                await writer.drain()

        async def downstream() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.close()
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/net/{port}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def vpn_service(endpoint: FakeVpnEndpoint) -> tuple[BeaconNodeService, mock.Mock]:
    """A service on a VPN whose node's websocket URI points at `endpoint` (yapapi's `Node.get_websocket_uri`)."""
    from beacon_golem.requestor.fleets.golem.service import NodeSpec

    service = BeaconNodeService(NodeSpec(runtime="vllm"))
    network_node = mock.Mock()
    network_node.get_websocket_uri.side_effect = lambda port: f"{endpoint.url}/net/{port}"
    service._set_network_node(network_node)
    return service, network_node


async def test_vpn_tunnel_reaches_one_instance_streaming_included(monkeypatch: pytest.MonkeyPatch) -> None:
    from beacon_golem.api.client import ShimClient

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # chunked: what yapapi's HTTP proxy would cut
        for i in range(3):
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    shim = FakeShim("tunnelled", {"/v1/chat/completions": stream})
    await shim.start()
    key = "appkey-tunnel-0123"
    monkeypatch.setenv("YAGNA_APPKEY", key)  # where yapapi's engine reads it
    endpoint = FakeVpnEndpoint(int(shim.url.rsplit(":", 1)[1]), key)
    await endpoint.start()
    service, network_node = vpn_service(endpoint)
    tunnel = await VpnTunnel.open(service, 8080, timeout_s=30)
    try:
        network_node.get_websocket_uri.assert_called_with(8080)
        async with ShimClient(tunnel.url) as client:
            assert (await client.health()).status == "ok"
            assert (await client.info()).node_id == "vm-tunnelled"
            async with client.session.post(tunnel.url + "/v1/chat/completions", json={}) as resp:
                body = await resp.text()
        assert body == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        assert endpoint.connections >= 1
    finally:
        await tunnel.close()
        await endpoint.stop()
        await shim.stop()


async def test_refused_vpn_upgrades_leave_no_unclosed_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """yapapi 0.13.1's SocketProxy left one aiohttp session per refused upgrade (a dead VM, a VPN
    not up yet), printed as "Unclosed client session" on the user's terminal when collected."""
    from beacon_golem.api.client import NodeUnreachable, ShimClient

    monkeypatch.setenv("YAGNA_APPKEY", "not-the-key")  # every upgrade is refused with 401
    endpoint = FakeVpnEndpoint(1, "appkey-tunnel-0123")
    await endpoint.start()
    service, _ = vpn_service(endpoint)
    before = unclosed_sessions()
    tunnel = await VpnTunnel.open(service, 8080, timeout_s=30)
    try:
        async with ShimClient(tunnel.url, timeout_s=5, connect_timeout_s=5) as client:
            for _ in range(4):  # the local client sees its connection closed, each time
                with pytest.raises((NodeUnreachable, aiohttp.ClientError)):
                    await client.health()
        assert endpoint.connections == 0
    finally:
        await tunnel.close()
        await endpoint.stop()
    assert unclosed_sessions() == before
