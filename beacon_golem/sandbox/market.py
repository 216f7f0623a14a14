"""The market API (ya-client `market-api.yaml`, requestor side): demands, proposals, agreements.

What yapapi 0.13.1 calls, in order: `POST /demands`, `GET /demands/{sub}/events` (long poll, each
event delivered once), `POST /demands/{sub}/proposals/{id}` (counter-proposal) or `.../reject`,
`POST /agreements`, `GET /agreements/{id}`, `POST /agreements/{id}/confirm`, `POST .../wait`,
`POST .../terminate`, `DELETE /demands/{sub}`.

Matching is mutual (the demand's constraints over the offer's properties and the offer's over the
demand's); each matching provider's offer arrives as an `Initial` proposal, a counter-proposal is
answered by the provider's negotiator (`providers.ScriptedProvider.negotiate`) with a `Draft` or a
`ProposalRejectedEvent`, and an agreement is approved unless the provider is already bound by one.
A provider whose agreement ends offers itself again (ya-provider re-subscribes its offers).
`GET /agreementEvents` reports approvals, rejections and terminations (with the terminator), which
yapapi 0.13 never reads but a requestor can, to learn that a provider ended an agreement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from beacon_golem.sandbox import constraints
from beacon_golem.sandbox.providers import PROP_EXPIRATION, ScriptedProvider
from beacon_golem.sandbox.records import AgreementRecord, Party, Records
from beacon_golem.sandbox.wire import (
    ApiError,
    Feed,
    WireModel,
    new_id,
    not_found,
    now,
    query_float,
    query_int,
    query_time,
    read_body,
    respond,
)

log = structlog.get_logger(__name__)

ProposalState = Literal["Initial", "Draft", "Rejected", "Accepted", "Expired"]


# ---- wire models (ya-client market-api.yaml) --------------------------------------------------
class DemandOfferBody(WireModel):
    properties: dict[str, Any]
    constraints: str


class ReasonBody(WireModel):
    model_config = ConfigDict(extra="allow")

    message: str = ""


class ProposalWire(WireModel):
    properties: dict[str, Any]
    constraints: str
    proposal_id: str
    issuer_id: str
    state: ProposalState
    timestamp: datetime
    prev_proposal_id: str | None = None


class ProposalEventWire(WireModel):
    event_type: Literal["ProposalEvent"] = "ProposalEvent"
    event_date: datetime
    proposal: ProposalWire


class ProposalRejectedEventWire(WireModel):
    event_type: Literal["ProposalRejectedEvent"] = "ProposalRejectedEvent"
    event_date: datetime
    proposal_id: str
    reason: ReasonBody | None = None


MarketEvent = ProposalEventWire | ProposalRejectedEventWire


AgreementEventType = Literal["AgreementApprovedEvent", "AgreementRejectedEvent", "AgreementTerminatedEvent"]


class AgreementEventWire(WireModel):
    """`GET /agreementEvents` (yagna's AgreementOperationEvent): what happened to an agreement."""

    event_type: AgreementEventType
    event_date: datetime
    agreement_id: str
    terminator: Party | None = None
    signature: str | None = None
    reason: ReasonBody | None = None


class AgreementProposalBody(WireModel):
    proposal_id: str
    valid_to: datetime


class DemandWire(WireModel):
    properties: dict[str, Any]
    constraints: str
    demand_id: str
    requestor_id: str
    timestamp: datetime


class OfferWire(WireModel):
    properties: dict[str, Any]
    constraints: str
    offer_id: str
    provider_id: str
    timestamp: datetime


class AgreementWire(WireModel):
    agreement_id: str
    demand: DemandWire
    offer: OfferWire
    valid_to: datetime
    approved_date: datetime | None = None
    state: str
    timestamp: datetime
    app_session_id: str | None = None


# ---- state --------------------------------------------------------------------------------------
class MarketSettings(BaseModel):
    """Delays of the simulated market, kept short: each is one network round trip on Golem."""

    offer_delay_s: float = Field(default=0.05, ge=0)
    negotiation_delay_s: float = Field(default=0.05, ge=0)
    approval_delay_s: float = Field(default=0.05, ge=0)
    reoffer_after_s: float = Field(default=1.0, ge=0)


class Proposal(BaseModel):
    proposal_id: str
    subscription_id: str
    side: Literal["offer", "demand"]
    issuer_id: str
    provider_id: str
    state: ProposalState
    properties: dict[str, Any]
    constraints: str
    timestamp: datetime
    prev_proposal_id: str | None = None
    offer_id: str
    agreement_id: str | None = None

    def wire(self) -> ProposalWire:
        return ProposalWire(
            properties=self.properties,
            constraints=self.constraints,
            proposal_id=self.proposal_id,
            issuer_id=self.issuer_id,
            state=self.state,
            timestamp=self.timestamp,
            prev_proposal_id=self.prev_proposal_id,
        )


class Subscription:
    """One subscribed demand and the events waiting for its requestor."""

    def __init__(self, demand_id: str, body: DemandOfferBody) -> None:
        self.demand_id = demand_id
        self.properties = body.properties
        self.constraints_text = body.constraints
        self.constraints = constraints.parse(body.constraints)
        self.created_at = now()
        self.feed: Feed[MarketEvent] = Feed()
        self.position = 0
        self.active = True
        self.proposals: dict[str, Proposal] = {}


class Agreement:
    def __init__(
        self, agreement_id: str, demand: Proposal, offer: Proposal, provider: ScriptedProvider, valid_to: datetime
    ) -> None:
        self.agreement_id = agreement_id
        self.demand = demand
        self.offer = offer
        self.provider = provider
        self.valid_to = valid_to
        self.created_at = now()
        self.changed = asyncio.Event()
        self.record = AgreementRecord(
            agreement_id=agreement_id,
            provider_id=provider.provider_id,
            provider_name=provider.name,
            created_at=self.created_at,
        )

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def requestor_properties(self) -> dict[str, Any]:
        return self.demand.properties

    @property
    def provider_properties(self) -> dict[str, Any]:
        return self.offer.properties

    @property
    def ended(self) -> bool:
        return self.record.state in ("Terminated", "Expired", "Rejected", "Cancelled")

    def expiration(self) -> datetime | None:
        value = self.demand.properties.get(PROP_EXPIRATION)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
        return None

    def wire(self, requestor_id: str) -> AgreementWire:
        return AgreementWire(
            agreement_id=self.agreement_id,
            demand=DemandWire(
                properties=self.demand.properties,
                constraints=self.demand.constraints,
                demand_id=self.demand.subscription_id,
                requestor_id=requestor_id,
                timestamp=self.demand.timestamp,
            ),
            offer=OfferWire(
                properties=self.offer.properties,
                constraints=self.offer.constraints,
                offer_id=self.offer.offer_id,
                provider_id=self.provider.provider_id,
                timestamp=self.offer.timestamp,
            ),
            valid_to=self.valid_to,
            approved_date=self.record.approved_at,
            state=self.record.state,
            timestamp=self.created_at,
        )


AgreementListener = Callable[[Agreement], Awaitable[None]]


class Market:
    def __init__(
        self, requestor_id: str, providers: list[ScriptedProvider], settings: MarketSettings, records: Records
    ) -> None:
        self.requestor_id = requestor_id
        self.providers = {p.provider_id: p for p in providers}
        self.settings = settings
        self.records = records
        self.subscriptions: dict[str, Subscription] = {}
        self.agreements: dict[str, Agreement] = {}
        #: Called when an agreement ends (terminated by either side or expired): activities stop, invoices go out.
        self.on_agreement_ended: list[AgreementListener] = []
        self.agreement_events: Feed[AgreementEventWire] = Feed()
        self._offer_ids = {p.provider_id: new_id() for p in providers}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- helpers ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any], delay: float = 0.0) -> None:
        async def run() -> None:
            try:
                if delay:
                    await asyncio.sleep(delay)
            except asyncio.CancelledError:
                coro.close()
                raise
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("market task failed", error=repr(task.exception()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self.subscriptions.values():
            await sub.feed.close()
        await self.agreement_events.close()

    async def _agreement_event(self, agreement: Agreement, kind: AgreementEventType, **fields: Any) -> None:
        at = self.agreement_events.stamp()
        event = AgreementEventWire(event_type=kind, event_date=at, agreement_id=agreement.agreement_id, **fields)
        await self.agreement_events.push(event, at)

    def subscription(self, demand_id: str, *, active: bool = True) -> Subscription:
        sub = self.subscriptions.get(demand_id)
        if sub is None:
            raise not_found("Subscription", demand_id)
        if active and not sub.active:
            raise ApiError(404, f"Subscription {demand_id} unsubscribed")
        return sub

    def agreement(self, agreement_id: str) -> Agreement:
        agreement = self.agreements.get(agreement_id)
        if agreement is None:
            raise not_found("Agreement", agreement_id)
        return agreement

    def find_proposal(self, proposal_id: str) -> tuple[Subscription, Proposal]:
        for sub in self.subscriptions.values():
            if proposal_id in sub.proposals:
                return sub, sub.proposals[proposal_id]
        raise not_found("Proposal", proposal_id)

    # ---- demands ------------------------------------------------------------------------------
    async def subscribe(self, body: DemandOfferBody) -> Subscription:
        try:
            sub = Subscription(new_id(), body)
        except constraints.ConstraintSyntaxError as exc:
            raise ApiError(400, str(exc)) from exc
        self.subscriptions[sub.demand_id] = sub
        log.info("demand subscribed", demand_id=sub.demand_id, constraints=" ".join(body.constraints.split()))
        for n, provider in enumerate(self.providers.values()):
            self._spawn(self._offer(sub, provider), delay=self.settings.offer_delay_s * (n + 1))
        return sub

    async def _offer(self, sub: Subscription, provider: ScriptedProvider) -> None:
        """The market matched the provider's offer with this demand: an Initial proposal."""
        if not sub.active:
            return
        match = constraints.mutual_match(sub.properties, sub.constraints, provider.properties, provider.constraints)
        if not match.matched:
            log.info("offer does not match the demand", provider=provider.name, why=match.reason)
            return
        proposal = Proposal(
            proposal_id=new_id(),
            subscription_id=sub.demand_id,
            side="offer",
            issuer_id=provider.provider_id,
            provider_id=provider.provider_id,
            state="Initial",
            properties=dict(provider.properties),
            constraints=provider.constraints_text,
            timestamp=now(),
            offer_id=self._offer_ids[provider.provider_id],
        )
        sub.proposals[proposal.proposal_id] = proposal
        at = sub.feed.stamp()
        await sub.feed.push(ProposalEventWire(event_date=at, proposal=proposal.wire()), at)

    async def unsubscribe(self, demand_id: str) -> None:
        sub = self.subscriptions.get(demand_id)
        if sub is None:
            raise not_found("Subscription", demand_id)
        if not sub.active:
            raise ApiError(410, f"Subscription {demand_id} already unsubscribed")
        sub.active = False
        await sub.feed.close()

    async def collect(self, demand_id: str, timeout: float, max_events: int) -> list[MarketEvent]:
        sub = self.subscription(demand_id)
        found, sub.position = await sub.feed.wait_from(sub.position, timeout, max_events)
        return [entry.item for entry in found]

    # ---- negotiation --------------------------------------------------------------------------
    async def counter(self, demand_id: str, proposal_id: str, body: DemandOfferBody) -> str:
        sub = self.subscription(demand_id)
        theirs = sub.proposals.get(proposal_id)
        if theirs is None:
            raise not_found("Proposal", proposal_id)
        if theirs.side != "offer":
            raise ApiError(400, f"Proposal {proposal_id} is our own; counter the provider's proposal")
        if theirs.state == "Rejected":
            raise ApiError(410, f"Proposal {proposal_id} rejected")
        try:
            parsed = constraints.parse(body.constraints)
        except constraints.ConstraintSyntaxError as exc:
            raise ApiError(400, str(exc)) from exc
        ours = Proposal(
            proposal_id=new_id(),
            subscription_id=sub.demand_id,
            side="demand",
            issuer_id=self.requestor_id,
            provider_id=theirs.provider_id,
            state="Draft",
            properties=body.properties,
            constraints=body.constraints,
            timestamp=now(),
            prev_proposal_id=theirs.proposal_id,
            offer_id=theirs.offer_id,
        )
        sub.proposals[ours.proposal_id] = ours
        self._spawn(self._provider_answers(sub, ours, theirs, parsed), delay=self.settings.negotiation_delay_s)
        return ours.proposal_id

    async def _provider_answers(
        self, sub: Subscription, ours: Proposal, theirs: Proposal, parsed: constraints.Filter
    ) -> None:
        provider = self.providers[theirs.provider_id]
        match = constraints.mutual_match(ours.properties, parsed, theirs.properties, provider.constraints)
        if not match.matched:
            await self._reject(sub, ours, f"Proposal does not match: {match.reason}")
            return
        answer = provider.negotiate(ours.properties, provider.properties)
        if not answer.accepted:
            await self._reject(sub, ours, answer.reason or "Rejected")
            return
        draft = Proposal(
            proposal_id=new_id(),
            subscription_id=sub.demand_id,
            side="offer",
            issuer_id=provider.provider_id,
            provider_id=provider.provider_id,
            state="Draft",
            properties=answer.properties,
            constraints=provider.constraints_text,
            timestamp=now(),
            prev_proposal_id=ours.proposal_id,
            offer_id=theirs.offer_id,
        )
        sub.proposals[draft.proposal_id] = draft
        at = sub.feed.stamp()
        await sub.feed.push(ProposalEventWire(event_date=at, proposal=draft.wire()), at)

    async def _reject(self, sub: Subscription, ours: Proposal, message: str) -> None:
        provider = self.providers[ours.provider_id]
        log.info("provider rejected the counter-proposal", provider=provider.name, reason=message)
        ours.state = "Rejected"
        at = sub.feed.stamp()
        event = ProposalRejectedEventWire(
            event_date=at, proposal_id=ours.proposal_id, reason=ReasonBody(message=message)
        )
        await sub.feed.push(event, at)

    async def reject(self, demand_id: str, proposal_id: str, reason: ReasonBody | None) -> None:
        sub = self.subscription(demand_id, active=False)
        proposal = sub.proposals.get(proposal_id)
        if proposal is None:
            raise not_found("Proposal", proposal_id)
        if proposal.state == "Rejected":
            raise ApiError(410, f"Proposal {proposal_id} already rejected")
        proposal.state = "Rejected"
        provider = self.providers[proposal.provider_id]
        log.info("requestor rejected an offer", provider=provider.name, reason=reason.message if reason else None)

    # ---- agreements ---------------------------------------------------------------------------
    async def create_agreement(self, body: AgreementProposalBody) -> Agreement:
        sub, draft = self.find_proposal(body.proposal_id)
        if draft.side != "offer" or draft.state != "Draft":
            raise ApiError(400, f"Proposal {draft.proposal_id} is not the provider's Draft; negotiate first")
        if not sub.active:
            raise ApiError(410, f"Subscription {sub.demand_id} unsubscribed")
        if draft.agreement_id is not None:
            raise ApiError(409, f"Proposal {draft.proposal_id} already has agreement {draft.agreement_id}")
        valid_to = body.valid_to if body.valid_to.tzinfo else body.valid_to.replace(tzinfo=UTC)
        if valid_to <= now():
            raise ApiError(400, "Agreement validTo is in the past")
        assert draft.prev_proposal_id is not None
        demand = sub.proposals[draft.prev_proposal_id]
        provider = self.providers[draft.provider_id]
        agreement = Agreement(new_id(), demand, draft, provider, valid_to)
        draft.agreement_id = agreement.agreement_id
        self.agreements[agreement.agreement_id] = agreement
        self.records.agreements[agreement.agreement_id] = agreement.record
        log.info("agreement created", agreement_id=agreement.agreement_id, provider=provider.name)
        return agreement

    async def confirm(self, agreement_id: str) -> None:
        agreement = self.agreement(agreement_id)
        if agreement.state != "Proposal":
            raise ApiError(409, f"Agreement {agreement_id} is {agreement.state}, not Proposal")
        agreement.record.state = "Pending"
        self._spawn(self._provider_approves(agreement), delay=self.settings.approval_delay_s)

    async def _provider_approves(self, agreement: Agreement) -> None:
        provider = agreement.provider
        if agreement.state != "Pending":
            return
        if provider.agreement_id is not None:
            agreement.record.state = "Rejected"
            agreement.record.reason = "Max simultaneous agreements reached (1)"
            log.info("provider rejected the agreement", provider=provider.name, reason=agreement.record.reason)
            await self._agreement_event(
                agreement, "AgreementRejectedEvent", reason=ReasonBody(message=agreement.record.reason)
            )
        else:
            provider.agreement_id = agreement.agreement_id
            agreement.record.state = "Approved"
            agreement.record.approved_at = now()
            log.info("agreement approved", agreement_id=agreement.agreement_id, provider=provider.name)
            await self._agreement_event(agreement, "AgreementApprovedEvent")
            expires = agreement.expiration()
            if expires is not None:
                left = max((expires - now()).total_seconds(), 0.0)
                self._spawn(self._expire(agreement), delay=left)
        agreement.changed.set()

    async def _expire(self, agreement: Agreement) -> None:
        if agreement.state == "Approved":
            await self.end(agreement, "Provider", "Agreement expired", state="Expired")

    async def wait_for_approval(self, agreement_id: str, timeout: float) -> None:
        agreement = self.agreement(agreement_id)
        if agreement.state == "Proposal":
            raise ApiError(409, f"Agreement {agreement_id} was not confirmed")
        if agreement.state == "Pending":
            try:
                await asyncio.wait_for(agreement.changed.wait(), timeout)
            except TimeoutError as exc:
                raise ApiError(408, f"Timeout waiting for approval of agreement {agreement_id}") from exc
        if agreement.state == "Approved":
            return
        if agreement.state == "Rejected":
            raise ApiError(410, f"Agreement {agreement_id} rejected: {agreement.record.reason}")
        raise ApiError(410, f"Agreement {agreement_id} is {agreement.state}")

    async def terminate(self, agreement_id: str, reason: ReasonBody | None) -> None:
        agreement = self.agreement(agreement_id)
        if agreement.state != "Approved":
            raise ApiError(409, f"Agreement {agreement_id} is {agreement.state}, cannot terminate it")
        message = reason.message if reason else "terminated"
        await self.end(agreement, "Requestor", message)

    async def end(
        self, agreement: Agreement, by: Party, reason: str, state: Literal["Terminated", "Expired"] = "Terminated"
    ) -> None:
        """End an approved agreement (either side, or its expiration) and tell the listeners."""
        if agreement.state != "Approved":
            return
        agreement.record.state = state
        agreement.record.terminated_at = now()
        agreement.record.terminated_by = by
        agreement.record.reason = reason
        agreement.changed.set()
        provider = agreement.provider
        if provider.agreement_id == agreement.agreement_id:
            provider.agreement_id = None
        log.info("agreement ended", agreement_id=agreement.agreement_id, provider=provider.name, by=by, reason=reason)
        await self._agreement_event(
            agreement, "AgreementTerminatedEvent", terminator=by, signature="", reason=ReasonBody(message=reason)
        )
        for listener in self.on_agreement_ended:
            await listener(agreement)
        for sub in self.subscriptions.values():
            if sub.active:
                self._spawn(self._offer(sub, provider), delay=self.settings.reoffer_after_s)

    # ---- HTTP ---------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        prefix = "/market-api/v1"
        return [
            web.post(f"{prefix}/demands", self._h_subscribe),
            web.get(f"{prefix}/demands", self._h_demands),
            web.delete(f"{prefix}/demands/{{sub}}", self._h_unsubscribe),
            web.get(f"{prefix}/demands/{{sub}}/events", self._h_events),
            web.get(f"{prefix}/demands/{{sub}}/proposals/{{prop}}", self._h_get_proposal),
            web.post(f"{prefix}/demands/{{sub}}/proposals/{{prop}}", self._h_counter),
            web.post(f"{prefix}/demands/{{sub}}/proposals/{{prop}}/reject", self._h_reject),
            web.get(f"{prefix}/agreementEvents", self._h_agreement_events),
            web.post(f"{prefix}/agreements", self._h_create_agreement),
            web.get(f"{prefix}/agreements/{{agr}}", self._h_get_agreement),
            web.post(f"{prefix}/agreements/{{agr}}/confirm", self._h_confirm),
            web.post(f"{prefix}/agreements/{{agr}}/wait", self._h_wait),
            web.post(f"{prefix}/agreements/{{agr}}/terminate", self._h_terminate),
        ]

    async def _h_subscribe(self, request: web.Request) -> web.Response:
        sub = await self.subscribe(await read_body(request, DemandOfferBody))
        return respond(sub.demand_id, status=201)

    async def _h_demands(self, request: web.Request) -> web.Response:
        return respond(
            [
                DemandWire(
                    properties=s.properties,
                    constraints=s.constraints_text,
                    demand_id=s.demand_id,
                    requestor_id=self.requestor_id,
                    timestamp=s.created_at,
                )
                for s in self.subscriptions.values()
                if s.active
            ]
        )

    async def _h_unsubscribe(self, request: web.Request) -> web.Response:
        await self.unsubscribe(request.match_info["sub"])
        return respond(None)

    async def _h_events(self, request: web.Request) -> web.Response:
        timeout = query_float(request, "timeout", 5.0, maximum=60.0)
        max_events = max(1, min(query_int(request, "maxEvents", 10), 100))
        return respond(await self.collect(request.match_info["sub"], timeout, max_events))

    async def _h_get_proposal(self, request: web.Request) -> web.Response:
        sub = self.subscription(request.match_info["sub"], active=False)
        proposal = sub.proposals.get(request.match_info["prop"])
        if proposal is None:
            raise not_found("Proposal", request.match_info["prop"])
        return respond(proposal.wire())

    async def _h_counter(self, request: web.Request) -> web.Response:
        body = await read_body(request, DemandOfferBody)
        proposal_id = await self.counter(request.match_info["sub"], request.match_info["prop"], body)
        return respond(proposal_id, status=201)

    async def _h_reject(self, request: web.Request) -> web.Response:
        reason = await read_body(request, ReasonBody) if request.can_read_body else None
        await self.reject(request.match_info["sub"], request.match_info["prop"], reason)
        return respond(None)

    async def _h_create_agreement(self, request: web.Request) -> web.Response:
        agreement = await self.create_agreement(await read_body(request, AgreementProposalBody))
        return respond(agreement.agreement_id, status=201)

    async def _h_agreement_events(self, request: web.Request) -> web.Response:
        found = await self.agreement_events.wait_after(
            query_time(request, "afterTimestamp"),
            query_float(request, "timeout", 5.0, maximum=60.0),
            max(1, min(query_int(request, "maxEvents", 10), 100)),
        )
        return respond([entry.item for entry in found])

    async def _h_get_agreement(self, request: web.Request) -> web.Response:
        return respond(self.agreement(request.match_info["agr"]).wire(self.requestor_id))

    async def _h_confirm(self, request: web.Request) -> web.Response:
        await self.confirm(request.match_info["agr"])
        return respond(None)

    async def _h_wait(self, request: web.Request) -> web.Response:
        await self.wait_for_approval(request.match_info["agr"], query_float(request, "timeout", 5.0, maximum=300.0))
        return respond(None)

    async def _h_terminate(self, request: web.Request) -> web.Response:
        reason = await read_body(request, ReasonBody) if request.can_read_body else None
        await self.terminate(request.match_info["agr"], reason)
        return respond(None)
