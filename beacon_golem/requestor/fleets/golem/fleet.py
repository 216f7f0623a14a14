"""`GolemFleet`: rent GPU providers on Golem, run a node on each, hand the nodes to the dispatcher.

One yapapi cluster of `BeaconNodeService` instances on a VPN; each running instance gets its own
local port (a `VpnTunnel`) so every node is addressable on its own. The fleet
checks each node through that port with `ShimClient`, and loses a node (event `lost`) when its
instance ends, stops answering, or the dispatcher reports it broken; the provider is then
blacklisted for the run and a replacement rented while the budget, the time and the replacement
allowance last. Money is tracked per agreement (`records()`); spending stops before the budget.

Everything on the Golem side is reached through `golem_factory` (default: yapapi's `Golem`), so
tests replace it at that boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from pydantic import BaseModel, SecretStr
from yapapi import events
from yapapi.services import ServiceState
from yapapi.strategy import DecreaseScoreForUnconfirmedAgreement

from beacon_golem.api.client import ShimClient
from beacon_golem.core.clock import utcnow
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.node import Node, NodeInfo
from beacon_golem.requestor.fleets.base import Fleet, NoteListener
from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.ledger import PaymentLedger
from beacon_golem.requestor.fleets.golem.payload import Resolver, build_payload
from beacon_golem.requestor.fleets.golem.progress import describe, fields, log, scrub
from beacon_golem.requestor.fleets.golem.records import AgreementRow, DebitNoteRow, GolemRecord, InvoiceRow
from beacon_golem.requestor.fleets.golem.service import BeaconNodeService, NodeSpec
from beacon_golem.requestor.fleets.golem.strategy import (
    GpuMarketStrategy,
    OfferCriteria,
    ProviderRecordLookup,
    view_offer,
)
from beacon_golem.requestor.fleets.golem.tunnel import VpnTunnel

#: Stop every node when the budget would run out within this many seconds at the current burn.
BUDGET_MARGIN_S = 300.0
AVAILABLE = (ServiceState.starting, ServiceState.running)
GONE = (ServiceState.stopping, ServiceState.terminated, ServiceState.unresponsive)


class Tunnel(Protocol):
    url: str

    async def close(self) -> None: ...


Connector = Callable[[BeaconNodeService, int, float], Awaitable[Tunnel]]


def failure_kind(reason: str) -> str:
    """A failure's reason without what differs between providers (ids, ports, numbers), to compare them."""
    text = re.sub(r"0x[0-9a-fA-F]+|[0-9a-f]{16,}", "<id>", reason)
    text = re.sub(r"\d+(\.\d+)?", "<n>", text)
    return text[:200]


@dataclass
class _Slot:
    """What the fleet knows of one service instance."""

    service: BeaconNodeService
    node_id: str | None = None
    tunnel: Tunnel | None = None
    client: ShimClient | None = None
    busy: bool = False  # a connect or health check task is running
    done: bool = False
    health_failures: int = 0
    next_health: float = 0.0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class GolemFleet(Fleet):
    name = "golem"

    def __init__(
        self,
        config: GolemFleetConfig,
        *,
        golem_factory: Callable[..., Any] | None = None,
        resolver: Resolver | None = None,
        provider_record: ProviderRecordLookup | None = None,
        connector: Connector | None = None,
        on_note: NoteListener | None = None,
        poll_interval_s: float = 2.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.config = config
        self.spec = NodeSpec.from_config(config)
        #: Providers not to rent in this run: the config's plus those that failed.
        self.blacklist: set[str] = set(config.blacklist)
        self.strategy = GpuMarketStrategy(
            OfferCriteria.from_config(config),
            blacklist=self.blacklist,
            provider_record=provider_record,
            regions=config.regions,
        )
        self._market = DecreaseScoreForUnconfirmedAgreement(self.strategy, 0.5)
        self.ledger = PaymentLedger(config.budget, now)
        #: Why replacements were not rented, and why nodes failed: for the run's report.
        self.refusals: list[str] = []
        self.failures: list[str] = []
        self.replacements = 0
        self._golem_factory = golem_factory
        self._resolver = resolver
        self._connector: Connector = connector or VpnTunnel.open
        if on_note is not None:
            self.on_note(on_note)
        self._poll_s = poll_interval_s
        self._now = now
        self._slots: dict[str, _Slot] = {}
        #: Every instance's own shim token (scrubbed from whatever the fleet says).
        self._tokens: list[str] = []
        self._seq = 0
        self._cluster: Any = None
        #: Providers per kind of failure, while no node has come up yet.
        self._failure_kinds: dict[str, set[str]] = {}
        self._nodes_seen = 0
        self._detached: set[asyncio.Task[None]] = set()
        self._deadline: datetime | None = None
        self._stack = AsyncExitStack()
        self._monitor_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopping = False
        self._last_market_line = 0.0
        #: Why no replacement is rented any more (`stop_replacing`), when so.
        self._no_replacements: str | None = None

    # ---- Fleet interface -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self._deadline = self._now() + timedelta(seconds=cfg.duration_s)
        self._budget_note()
        payload = await build_payload(cfg, self._resolver)
        factory = self._golem_factory
        if factory is None:
            from yapapi import Golem

            factory = Golem
        self.say(f"starting the Golem engine ({cfg.payment_driver}/{cfg.payment_network}, budget {cfg.budget} GLM)")
        try:
            # yapapi reads YAGNA_APPKEY here: a missing key is one line like every other start failure.
            golem = factory(
                budget=cfg.budget,
                strategy=self._market,
                subnet_tag=cfg.subnet,
                payment_driver=cfg.payment_driver,
                payment_network=cfg.payment_network,
                event_consumer=self._on_event,
            )
            golem = await self._stack.enter_async_context(golem)
            network = await self._stack.enter_async_context(await golem.create_network(cfg.network_ip))
            self._cluster = await golem.run_service(
                BeaconNodeService,
                num_instances=cfg.nodes,
                instance_params=[self._instance_params() for _ in range(cfg.nodes)],
                payload=payload,
                network=network,
                expiration=datetime.now(UTC) + timedelta(seconds=cfg.duration_s),
            )
        except BeaconError:
            raise
        except Exception as exc:
            raise BeaconError(
                f"cannot start the Golem engine: {scrub(str(exc) or type(exc).__name__)} (run `beacon golem doctor`)"
            ) from exc
        self.say(f"looking for {cfg.nodes} provider(s) with {self._wanted()}")
        self._last_market_line = asyncio.get_running_loop().time()
        self._monitor_task = asyncio.create_task(self._monitor())
        await self._wait_ready()

    async def stop(self) -> None:
        self._stopping = True
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
        for slot in self._slots.values():
            for task in list(slot.tasks):
                task.cancel()
            await asyncio.gather(*slot.tasks, return_exceptions=True)
            await self._close_slot(slot)
        self._nodes.clear()
        if self._cluster is not None:
            self._cluster.stop()
            await self._wait_instances_gone(self.config.shutdown_grace_s)
        for agreement_id in self.ledger.agreements:  # billing ends with the instances
            self.ledger.close(agreement_id, "fleet stopped")
        try:  # yapapi's engine waits here for the last invoices
            await self._stack.aclose()
        except Exception as exc:
            log.warning("golem.stop_failed", error=scrub(str(exc)))
        self._uninvoiced_notes()
        self.say(f"golem fleet stopped; spent about {self.spent_glm():.6f} GLM of {self.config.budget}")

    async def report_lost(self, node_id: str, reason: str) -> None:
        slot = next((s for s in self._slots.values() if s.node_id == node_id and not s.done), None)
        if slot is None:
            self.lose_node(node_id, reason)
            return
        await self._drop(slot, f"reported broken: {reason}")

    def expecting_nodes(self) -> bool:
        """A node may still join while an instance that is not a node yet is being rented or started."""
        if self._stopping or self._cluster is None:
            return False
        return any(i.id not in self._slots or self._slots[i.id].node_id is None for i in self._live())

    def why_no_more_nodes(self) -> str:
        return self.refusals[-1] if self.refusals else "no more Golem nodes are being rented"

    # ---- what the run keeps ------------------------------------------------------------------------
    def _label_region(self) -> str | None:
        """With `label_regions`, an unmapped node gets the label fewest live nodes carry (a label, not a place)."""
        labels = self.config.label_regions
        if not labels:
            return None
        taken = [n.region for n in self.nodes()]
        return min(labels, key=lambda label: (taken.count(label), labels.index(label)))

    def records(self) -> list[GolemRecord]:
        """Agreements, debit notes, invoices and cost per node: pydantic rows for the store."""
        return self.ledger.rows()

    def accounting(self) -> list[BaseModel]:
        return list(self.records())

    def spent_glm(self) -> Decimal:
        return self.ledger.spent()

    def say(self, line: str) -> None:
        line = scrub(line, self._secrets())
        log.info("golem.progress", message=line)
        self.note(line)

    def _uninvoiced_notes(self) -> None:
        """Say which agreements ended without an invoice before yapapi stopped waiting (30 s): their
        cost is the latest debit note or an estimate, and an invoice that comes later is not paid by
        this run."""
        for cost in self.ledger.uninvoiced():
            row = self.ledger.agreements[cost.agreement_id]
            what = "its latest debit note" if cost.source == "debit_note" else "an estimate from the offer's price"
            self.say(
                f"no invoice from {row.provider_name or 'provider'} [{row.provider_id[:10]}] before the engine "
                f"stopped: its cost, {cost.amount_glm:.6f} GLM, is {what}; an invoice sent later is not accepted"
            )

    # ---- the watch loop ----------------------------------------------------------------------------
    async def _monitor(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except Exception as exc:  # one bad tick must not end the watch
                log.warning("golem.monitor_error", error=scrub(repr(exc), self._secrets()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        for service in list(self._cluster.instances):
            slot = self._slots.setdefault(service.id, _Slot(service))
            if slot.done or slot.busy:
                continue
            state = service.state
            if state == ServiceState.running:
                if slot.node_id is None:
                    self._spawn(slot, self._connect(slot))
                elif loop.time() >= slot.next_health:
                    self._spawn(slot, self._check(slot))
            elif state in GONE:
                reason = service.failure or (
                    f"instance {state.value} while {service.phase}"
                    if slot.node_id is None
                    else f"instance {state.value}"
                )
                await self._drop(slot, reason)
        if self.ledger.exhausted(BUDGET_MARGIN_S):
            live = [s for s in self._slots.values() if not s.done]
            if live:
                why = f"budget nearly spent ({self.spent_glm():.6f} of {self.config.budget} GLM)"
                self.refusals.append(why)
                self.say(f"{why}: stopping all nodes")
                for slot in live:
                    await self._drop(slot, "budget exhausted", blacklist=False, replace=False)
        self._market_line(loop.time())
        self._update_ready()

    def _spawn(self, slot: _Slot, coro: Awaitable[None]) -> None:
        slot.busy = True
        task = asyncio.ensure_future(coro)
        slot.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            slot.tasks.discard(t)
            slot.busy = False
            self._wake.set()

        task.add_done_callback(done)

    async def _connect(self, slot: _Slot) -> None:
        service = slot.service
        cfg = self.config
        try:
            slot.tunnel = await self._connector(service, cfg.shim_port, cfg.proxy_timeout_s)
            slot.client = ShimClient(slot.tunnel.url, service.spec.shim_token, timeout_s=60, connect_timeout_s=20)
            info = await self._first_contact(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._drop(slot, f"not usable over the VPN: {scrub(str(exc) or type(exc).__name__, self._secrets())}")
            return
        if slot.done or self._stopping:
            return
        agreement = self._record_agreement(service)
        self._seq += 1
        pid = service.provider_id or "unknown"
        node_id = f"golem-{self._seq:02d}-{re.sub(r'[^0-9a-zA-Z]', '', pid.removeprefix('0x'))[:8]}"
        view = view_offer(agreement[1], pid, cfg.regions) if agreement else None
        node = Node(
            node_id=node_id,
            url=slot.tunnel.url,
            region=cfg.regions.get(pid) or self._label_region(),
            token=service.spec.shim_token,  # this provider's own token
            info=info,
            concurrency=cfg.node_concurrency,
            provider_id=pid,
            provider_name=service.provider_name,
            fleet="golem",
            extra=self._node_extra(service, agreement, view),
        )
        if self.prepare_node is not None:
            # Before the node is anyone's (`--runtime auto`: its runtime chosen and switched), the
            # first nodes and replacements alike; meanwhile it is still one the fleet expects.
            self.say(f"node {node_id} on {service.provider_name}: preparing it")
            try:
                await self.prepare_node(node)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = scrub(str(exc) or type(exc).__name__, self._secrets())
                self.say(f"node {node_id}: preparing it failed, it is used as it is: {why}")
            if slot.done or self._stopping:
                return
        slot.node_id = node_id
        self._nodes_seen += 1
        slot.next_health = asyncio.get_running_loop().time() + cfg.health_interval_s
        if agreement:
            self.ledger.bind_node(agreement[0], node_id)
        self.add_node(node)
        gpu = view.gpu.model if view and view.gpu else "no GPU info"
        self.say(f"node {node_id} ready on {service.provider_name} ({gpu}) at {node.url}")
        self._update_ready()

    async def _first_contact(self, slot: _Slot) -> NodeInfo:
        """/health OK then /info through the tunnel, retried with backoff: yagna refuses the VPN
        websocket while its own connect to the VM fails (the tunnel then drops the socket), which
        says nothing yet about the provider. Only `connect_attempts` failures in a row lose it."""
        assert slot.client is not None
        cfg = self.config
        wait = cfg.connect_backoff_s
        problem = "no answer"
        for attempt in range(1, cfg.connect_attempts + 1):
            try:
                health = await slot.client.health()
                if health.status == "ok":
                    return await slot.client.info()
                problem = f"/health: {health.reason or health.status}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused upgrades, resets, timeouts: try again
                problem = scrub(str(exc) or type(exc).__name__, self._secrets())
            log.info("golem.connect_retry", service=slot.service.id, attempt=attempt, problem=problem)
            if attempt < cfg.connect_attempts and not (slot.done or self._stopping):
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
        raise BeaconError(f"{cfg.connect_attempts} tries through the VPN failed; last: {problem}")

    async def _check(self, slot: _Slot) -> None:
        assert slot.client is not None
        switching: float | None = None
        try:
            health = await slot.client.health()
            problem = None if health.status == "ok" else (health.reason or health.status)
            switching = health.switching_s
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problem = scrub(str(exc), self._secrets())
        slot.next_health = asyncio.get_running_loop().time() + self.config.health_interval_s
        if problem is not None and switching is not None:
            # A runtime switch under way (a comparison's next phase, --runtime auto): the node is
            # changing runtime, not broken, until the switch timeout.
            if switching <= self.config.switch_timeout_s:
                slot.health_failures = 0
                log.info("golem.node_switching", node_id=slot.node_id, switching_s=switching)
                return
            await self._drop(
                slot,
                f"runtime switch not done after {switching:g} s (switch timeout {self.config.switch_timeout_s:g} s)",
            )
            return
        if problem is None:
            slot.health_failures = 0
            return
        slot.health_failures += 1
        log.warning("golem.node_health_failed", node_id=slot.node_id, failures=slot.health_failures, problem=problem)
        if slot.health_failures >= self.config.health_failures:
            await self._drop(slot, f"unresponsive: {problem}")

    async def _drop(self, slot: _Slot, reason: str, blacklist: bool = True, replace: bool = True) -> None:
        """Take a slot out: blacklist, stop the instance, rent a replacement, then the lost event
        (so whoever sees it sees the fleet already acting on it), then close the tunnel."""
        if slot.done:
            return
        slot.done = True
        service = slot.service
        pid = service.provider_id
        reason = scrub(reason, self._secrets())
        self.failures.append(f"{service.provider_name or pid or 'unassigned'}: {reason}")
        self.say(f"node {slot.node_id or 'on ' + str(service.provider_name or pid)} lost: {reason}")
        if blacklist and pid:
            self._blacklist(pid, f"provider {service.provider_name or ''} [{pid[:10]}] blacklisted for this run")
        self._tally_failure(pid, reason)
        agreement = getattr(getattr(service, "_ctx", None), "_agreement", None)
        if isinstance(getattr(agreement, "id", None), str):
            self.ledger.close(agreement.id, reason)
        if service.state in AVAILABLE and self._cluster is not None:
            self._cluster.stop_instance(service)
        if replace:
            self._replace()
        if slot.node_id is not None:
            self.lose_node(slot.node_id, reason)
        self._update_ready()
        self._wake.set()
        await self._close_slot(slot)

    async def _close_slot(self, slot: _Slot) -> None:
        for closer in (slot.client, slot.tunnel):
            if closer is not None:
                # bounded: a proxy server may wait for connections someone else keeps open
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closer.close(), 10)
        slot.client = None
        slot.tunnel = None

    def _replace(self) -> None:
        missing = self.config.nodes - len(self._live())
        for _ in range(max(missing, 0)):
            blocker = self._replacement_blocker()
            if blocker is not None:
                self.refusals.append(blocker)
                self.say(f"not renting a replacement: {blocker}")
                return
            self.replacements += 1
            self._cluster.spawn_instances(num_instances=1, instance_params=[self._instance_params()])
            self.say(f"renting a replacement ({self.replacements} of {self.config.replacements_allowed} allowed)")

    def stop_replacing(self, reason: str) -> None:
        """Rent no replacement for a node lost from now on (a runtime comparison: another
        provider's figures must never stand in for the lost one's)."""
        self._no_replacements = reason

    def _replacement_blocker(self) -> str | None:
        cfg = self.config
        if self._stopping:
            return "the fleet is stopping"
        if self._no_replacements is not None:
            return self._no_replacements
        common = self._common_failure()
        if common is not None:
            return (
                f"{self.config.same_failure_limit} providers failed the same way and none came up "
                f"({common}): the cause is likely on our side (image, start script, VPN), not theirs"
            )
        if self.replacements >= cfg.replacements_allowed:
            return f"all {cfg.replacements_allowed} replacements used"
        assert self._deadline is not None
        left = (self._deadline - self._now()).total_seconds()
        if left < cfg.min_time_left_s:
            return f"only {max(left, 0):.0f} s of the run left"
        if not self.ledger.can_afford(cfg.max_price_glm_per_hour, cfg.start_price_cap, self._deadline):
            headroom = self.ledger.headroom(self._deadline)
            return (
                f"budget: {max(headroom, Decimal(0)):.6f} GLM left after the running nodes cannot pay "
                f"another at up to {cfg.max_price_glm_per_hour} GLM/h until the end"
            )
        return None

    # ---- start-up helpers ------------------------------------------------------------------------
    def _instance_params(self) -> dict[str, Any]:
        """Each instance gets a token of its own: one provider that reads its VM's environment
        learns nothing that opens another provider's node."""
        token = SecretStr(secrets.token_urlsafe(32))
        self._tokens.append(token.get_secret_value())
        return {"spec": self.spec.model_copy(update={"shim_token": token}), "admit": self._admit, "notify": self._note}

    def _admit(self, provider_id: str) -> bool:
        return provider_id not in self.blacklist

    def _note(self, service: BeaconNodeService, message: str) -> None:
        self.say(f"node on {service.provider_name or 'provider'} [{(service.provider_id or '?')[:10]}]: {message}")

    async def _wait_ready(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self.config.ready_timeout)
        if not self._nodes:
            common = self._common_failure()
            if common is not None:
                why = f"{self.config.same_failure_limit} providers failed the same way: {self.failures[-1]}"
            else:
                why = "; ".join(self.failures[-3:]) or self._market_summary()
            raise BeaconError(f"no Golem node came up ({why})")
        if len(self._nodes) < self.config.nodes:
            self.say(f"going on with {len(self._nodes)} of {self.config.nodes} nodes; more may join")

    def _update_ready(self) -> None:
        if (
            len(self._nodes) >= self.config.nodes
            or (self._cluster is not None and not self._live())
            or self._common_failure() is not None  # renting stopped: waiting for more is pointless
        ):
            self._ready.set()

    def _live(self) -> list[BeaconNodeService]:
        """Instances not given up on, including those spawned but not seen by the watch yet."""
        instances = self._cluster.instances if self._cluster is not None else []
        return [i for i in instances if i.id not in self._slots or not self._slots[i.id].done]

    async def _wait_instances_gone(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if not any(s.state in (*AVAILABLE, ServiceState.stopping) for s in self._cluster.instances):
                return
            await asyncio.sleep(0.5)

    def _budget_note(self) -> None:
        cfg = self.config
        worst = cfg.nodes * (cfg.max_price_glm_per_hour * Decimal(str(cfg.duration_s / 3600)) + cfg.start_price_cap)
        if worst > cfg.budget:
            self.say(
                f"budget {cfg.budget} GLM is below the worst case of {worst:.4f} GLM "
                f"({cfg.nodes} node(s) at {cfg.max_price_glm_per_hour} GLM/h for {cfg.duration_s / 3600:g} h): "
                "nodes are stopped before it runs out"
            )

    def _wanted(self) -> str:
        cfg = self.config
        parts = [f"runtime {cfg.golem_runtime}", f"<= {cfg.max_price_glm_per_hour} GLM/h"]
        if cfg.min_vram_gib:
            parts.append(f">= {cfg.min_vram_gib:g} GiB VRAM")
        if cfg.gpu_include:
            parts.append("GPU " + "|".join(cfg.gpu_include))
        if cfg.min_cuda:
            parts.append(f"CUDA >= {cfg.min_cuda}")
        return ", ".join(parts)

    def _market_summary(self) -> str:
        tally = self.strategy.tally
        if not tally:
            return "no offers matched the demand yet"
        rejected = ", ".join(f"{k} {v}" for k, v in tally.most_common() if k != "accepted")
        return f"{sum(tally.values())} offers scored, {tally['accepted']} acceptable" + (
            f"; rejected: {rejected}" if rejected else ""
        )

    def _market_line(self, now: float) -> None:
        if len(self._nodes) < self.config.nodes and now - self._last_market_line >= 60:
            self._last_market_line = now
            self.say("market: " + self._market_summary())

    # ---- agreements, payments, events ------------------------------------------------------------
    def _record_agreement(self, service_or_agreement: Any) -> tuple[str, dict[str, Any]] | None:
        """Open the ledger row of an agreement (from a service's context or an event's agreement)."""
        agreement = service_or_agreement
        if isinstance(service_or_agreement, BeaconNodeService):
            ctx = service_or_agreement._ctx
            agreement = getattr(ctx, "_agreement", None)
        try:
            details = agreement.details
            props = dict(details.provider_view.properties)
            pid = details.raw_details.offer.provider_id
        except Exception:
            return None
        view = view_offer(props, pid, self.config.regions)
        price = view.price
        self.ledger.open(
            AgreementRow(
                agreement_id=agreement.id,
                provider_id=pid,
                provider_name=view.provider_name,
                payment_network=self.config.payment_network,
                hourly_glm=price.hourly_glm(self.config.expected_cpu_threads)
                if price
                else self.config.max_price_glm_per_hour,
                start_glm=price.start_glm if price else self.config.start_price_cap,
                coeffs=price.coeffs if price else {},
                gpu_model=view.gpu.model if view.gpu else None,
                created_at=self._now(),
            )
        )
        return agreement.id, props

    def _node_extra(self, service: BeaconNodeService, agreement: Any, view: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"payment_network": self.config.payment_network, "service_id": service.id}
        if agreement:
            row = self.ledger.agreements.get(agreement[0])
            extra["agreement_id"] = agreement[0]
            if row is not None:
                extra["offer"] = {
                    "hourly_glm": str(row.hourly_glm),
                    "start_glm": str(row.start_glm),
                    "coeffs": row.coeffs,
                }
        if view is not None and view.gpu is not None:
            extra["gpu"] = view.gpu.model_dump(mode="json")
        activity = getattr(getattr(service, "_ctx", None), "_activity", None)
        if activity is not None and isinstance(getattr(activity, "id", None), str):
            extra["activity_id"] = activity.id
        return extra

    def _on_event(self, event: events.Event) -> None:
        """yapapi's event consumer: progress lines, the ledger, blacklisting."""
        try:
            with contextlib.suppress(Exception):
                self._market.on_event(event)
            described = describe(event)
            if described is not None:
                level, message = described
                message = scrub(message, self._secrets())
                getattr(log, level)("golem.event", message=message, **fields(event))
                if level != "debug":
                    self.note(message)
            self._account(event)
        except Exception as exc:
            log.warning("golem.event_failed", golem_event=type(event).__name__, error=scrub(repr(exc), self._secrets()))

    def _account(self, event: events.Event) -> None:
        match event:
            case events.AgreementConfirmed():
                self._record_agreement(event.agreement)
            case events.AgreementTerminated():
                self.ledger.close(event.agreement.id, (event.reason or {}).get("message"))
            case events.ActivityCreateFailed():
                # No VM, so no node: the agreement stops counting now (no phantom burn) and is
                # terminated (yapapi would keep it open until the cluster exits).
                agreement = event.agreement
                self.ledger.close(agreement.id, "the provider could not start a VM")
                self._spawn_detached(self._terminate_agreement(agreement, "Activity creation failed"))
                pid = event.provider_id
                if pid:
                    self._blacklist(pid, f"provider [{pid[:10]}] blacklisted for this run: could not start a VM")
                    self._tally_failure(pid, "could not start a VM")
            case events.DebitNoteEvent():
                note = event.debit_note
                self.ledger.debit_note(
                    DebitNoteRow(
                        debit_note_id=note.debit_note_id,
                        agreement_id=note.agreement_id,
                        activity_id=note.activity_id,
                        amount_glm=Decimal(str(note.total_amount_due)),
                        received_at=self._now(),
                        accepted=isinstance(event, events.DebitNoteAccepted),
                    )
                )
            case events.InvoiceEvent():
                invoice = event.invoice
                self.ledger.invoice(
                    InvoiceRow(
                        invoice_id=invoice.invoice_id,
                        agreement_id=invoice.agreement_id,
                        amount_glm=Decimal(str(invoice.amount)),
                        received_at=self._now(),
                        accepted=isinstance(event, events.InvoiceAccepted),
                    )
                )
            case events.ServiceStateChanged():
                self._wake.set()

    def _blacklist(self, provider_id: str, line: str) -> None:
        """Never rent this provider again in this run, including from offers yapapi already holds."""
        if provider_id in self.blacklist:
            return
        self.blacklist.add(provider_id)
        self.say(line)
        # yapapi's AgreementsPool keeps one scored offer per provider (yapapi/agreements_pool.py,
        # `_offer_buffer`) and may turn it into an agreement (start price paid) after we blacklisted
        # the provider: take it out of the buffer. The strategy rejects the provider's new offers.
        pool = getattr(getattr(self._cluster, "_job", None), "agreements_pool", None)
        buffer = getattr(pool, "_offer_buffer", None)
        if isinstance(buffer, dict):
            buffer.pop(provider_id, None)

    def _tally_failure(self, provider_id: str | None, reason: str) -> None:
        """Count how providers fail; a failure every provider shows the same way is ours, not theirs."""
        if self._nodes_seen or not provider_id:
            return
        kind = failure_kind(reason)
        self._failure_kinds.setdefault(kind, set()).add(provider_id)

    def _common_failure(self) -> str | None:
        """The failure `same_failure_limit` providers showed the same way while no node ever came up."""
        if self._nodes_seen:
            return None
        for kind, providers in self._failure_kinds.items():
            if len(providers) >= self.config.same_failure_limit:
                return kind
        return None

    def _spawn_detached(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _terminate_agreement(self, agreement: Any, message: str) -> None:
        try:
            await agreement.terminate({"message": message, "golem.requestor.code": "Cancelled"})
        except Exception as exc:  # already terminated by the provider, or yagna gone
            log.info("golem.terminate_failed", agreement=getattr(agreement, "id", None), error=scrub(str(exc)))

    def _secrets(self) -> list[str]:
        token = self.config.shim_token
        return ([token.get_secret_value()] if isinstance(token, SecretStr) else []) + self._tokens
