"""The payment API (ya-client `payment-api.yaml`, requestor side) and the providers' billing.

Requestor side: allocations (the budget, checked on every acceptance), `demandDecorations` (the
payment properties and constraints yagna adds to a demand), debit notes and invoices with their
`accept` endpoints, and the `debitNoteEvents` / `invoiceEvents` long polls yapapi reads all run.

Provider side, as ya-provider bills: every running activity gets a debit note each interval (the
negotiated `golem.com.scheme.payu.debit-note.interval-sec?` when the agreement has one, else the
sandbox's own), its `totalAmountDue` the activity's cost so far from the linear prices and usage
counters; a provider whose debit note is not accepted within the negotiated
`golem.com.payment.debit-notes.accept-timeout?` ends the agreement; when an agreement ends the
provider sends one invoice for all its activities. Nothing moves on a blockchain: "accepted" is the
end of the story, and it is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from beacon_golem.sandbox.faults import Fault, FaultPlan
from beacon_golem.sandbox.market import Agreement, Market
from beacon_golem.sandbox.providers import (
    PROP_ACCEPT_TIMEOUT,
    PROP_CHOSEN_PLATFORM,
    PROP_DEBIT_NOTE_INTERVAL,
    PROP_PAYMENT_TIMEOUT,
)
from beacon_golem.sandbox.records import AllocationRecord, DebitNoteRecord, InvoiceRecord, Records
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

DocumentStatus = Literal["ISSUED", "RECEIVED", "ACCEPTED", "REJECTED", "FAILED", "SETTLED", "CANCELLED"]


# ---- wire models -----------------------------------------------------------------------------
class AllocationBody(WireModel):
    """What `POST /allocations` carries; yapapi also sends empty `spentAmount`/`remainingAmount`."""

    allocation_id: str | None = None
    address: str | None = None
    payment_platform: str | None = None
    total_amount: Decimal
    timeout: datetime | None = None
    make_deposit: bool = False

    @field_validator("total_amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0:
            raise ValueError("must be a positive amount")
        return value


class AllocationWire(WireModel):
    allocation_id: str
    address: str
    payment_platform: str
    total_amount: Decimal
    spent_amount: Decimal
    remaining_amount: Decimal
    timestamp: datetime
    timeout: datetime | None = None
    make_deposit: bool = False


class MarketPropertyWire(WireModel):
    key: str
    value: str


class MarketDecorationWire(WireModel):
    properties: list[MarketPropertyWire]
    constraints: list[str]


class AcceptanceBody(WireModel):
    total_amount_accepted: Decimal
    allocation_id: str


class DebitNoteWire(WireModel):
    debit_note_id: str
    issuer_id: str
    recipient_id: str
    payee_addr: str
    payer_addr: str
    payment_platform: str
    previous_debit_note_id: str | None = None
    timestamp: datetime
    agreement_id: str
    activity_id: str
    total_amount_due: Decimal
    usage_counter_vector: list[float] | None = None
    payment_due_date: datetime | None = None
    status: DocumentStatus


class InvoiceWire(WireModel):
    invoice_id: str
    issuer_id: str
    recipient_id: str
    payee_addr: str
    payer_addr: str
    payment_platform: str
    timestamp: datetime
    agreement_id: str
    activity_ids: list[str]
    amount: Decimal
    payment_due_date: datetime
    status: DocumentStatus


class DebitNoteEventWire(WireModel):
    event_type: Literal["DebitNoteReceivedEvent"] = "DebitNoteReceivedEvent"
    event_date: datetime
    debit_note_id: str


class InvoiceEventWire(WireModel):
    event_type: Literal["InvoiceReceivedEvent"] = "InvoiceReceivedEvent"
    event_date: datetime
    invoice_id: str


class AccountWire(WireModel):
    platform: str
    address: str
    driver: str
    network: str
    token: str
    send: bool = True
    receive: bool = False


# ---- state ------------------------------------------------------------------------------------
class PaymentSettings(BaseModel):
    #: Debit-note period when the agreement negotiated none (ya-provider: 2 minutes).
    debit_note_interval_s: float = Field(default=10.0, gt=0)
    #: From the end of an agreement to its invoice.
    invoice_delay_s: float = Field(default=0.5, ge=0)
    invoice_due_s: float = Field(default=24 * 3600, gt=0)
    #: Providers end agreements whose debit notes are not accepted within the negotiated deadline.
    enforce_acceptance: bool = True
    #: The requestor's balance on every platform: active allocations together may not exceed it.
    requestor_funds: Decimal = Field(default=Decimal(1000), gt=0)


class Usage(BaseModel):
    duration_s: float
    cpu_s: float

    def vector(self) -> list[float]:
        """`usageCounterVector` (ms precision); amounts are computed from exactly these numbers."""
        return [round(self.duration_s, 3), round(self.cpu_s, 3)]


class Metered(Protocol):
    """What billing needs from an activity (activity.Activity provides it)."""

    @property
    def activity_id(self) -> str: ...

    @property
    def agreement(self) -> Agreement: ...

    @property
    def ended(self) -> bool: ...

    def usage(self) -> Usage: ...


class Allocation:
    def __init__(self, record: AllocationRecord, timeout: datetime | None, make_deposit: bool) -> None:
        self.record = record
        self.timeout = timeout
        self.make_deposit = make_deposit
        #: Per agreement: the latest accepted debit-note amount of each activity, and the accepted invoice.
        self.activity_accepted: dict[str, dict[str, Decimal]] = {}
        self.invoice_accepted: dict[str, Decimal] = {}

    @property
    def released(self) -> bool:
        return self.record.released_at is not None

    def spent(self) -> Decimal:
        """What the requestor has accepted to pay from this allocation (no chain: nothing is settled)."""
        agreements = set(self.activity_accepted) | set(self.invoice_accepted)
        total = Decimal(0)
        for agreement_id in agreements:
            notes = self.activity_accepted.get(agreement_id, {})
            invoice = self.invoice_accepted.get(agreement_id)
            total += max(sum(notes.values(), Decimal(0)), invoice or Decimal(0))
        return total

    def wire(self) -> AllocationWire:
        spent = self.spent()
        return AllocationWire(
            allocation_id=self.record.allocation_id,
            address=self.record.address,
            payment_platform=self.record.payment_platform,
            total_amount=self.record.total_amount,
            spent_amount=spent,
            remaining_amount=self.record.total_amount - spent,
            timestamp=self.record.created_at,
            timeout=self.timeout,
            make_deposit=self.make_deposit,
        )


class Payments:
    def __init__(
        self, requestor_id: str, market: Market, settings: PaymentSettings, faults: FaultPlan, records: Records
    ) -> None:
        self.requestor_id = requestor_id
        self.market = market
        self.settings = settings
        self.faults = faults
        self.records = records
        self.allocations: dict[str, Allocation] = {}
        self.debit_notes: dict[str, DebitNoteWire] = {}
        self.invoices: dict[str, InvoiceWire] = {}
        self.debit_note_events: Feed[DebitNoteEventWire] = Feed()
        self.invoice_events: Feed[InvoiceEventWire] = Feed()
        #: The activities of an agreement (wired to activity.Activities).
        self.activities_of: Callable[[str], Sequence[Metered]] = lambda _agreement_id: []
        self._meters: dict[str, asyncio.Task[None]] = {}
        self._last_note: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        market.on_agreement_ended.append(self._agreement_ended)

    def platforms(self) -> list[str]:
        seen: list[str] = []
        for provider in self.market.providers.values():
            for platform in provider.spec.platforms:
                if platform not in seen:
                    seen.append(platform)
        return seen

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in [*self._tasks, *self._meters.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._meters.values(), return_exceptions=True)
        await self.debit_note_events.close()
        await self.invoice_events.close()

    # ---- allocations ----------------------------------------------------------------------------
    def create_allocation(self, body: AllocationBody) -> Allocation:
        platform = body.payment_platform or "erc20-holesky-tglm"
        parts = platform.split("-")
        if len(parts) != 3:
            raise ApiError(400, f"Invalid payment platform {platform!r}: expected driver-network-token")
        if platform not in self.platforms():
            raise ApiError(400, f"No payment account available for driver `{parts[0]}` and network `{parts[1]}`")
        address = (body.address or self.requestor_id).lower()
        if address != self.requestor_id.lower():
            raise ApiError(400, f"Account {address} not registered on platform {platform}")
        reserved = sum(
            (
                a.record.total_amount
                for a in self.allocations.values()
                if not a.released and a.record.payment_platform == platform
            ),
            Decimal(0),
        )
        if reserved + body.total_amount > self.settings.requestor_funds:
            raise ApiError(
                400,
                f"Insufficient funds to make allocation on {platform}: "
                f"{self.settings.requestor_funds - reserved} available, {body.total_amount} requested",
            )
        record = AllocationRecord(
            allocation_id=new_id(),
            payment_platform=platform,
            address=self.requestor_id,
            total_amount=body.total_amount,
            created_at=now(),
        )
        allocation = Allocation(record, body.timeout, body.make_deposit)
        self.allocations[record.allocation_id] = allocation
        self.records.allocations[record.allocation_id] = record
        log.info(
            "allocation created", allocation_id=record.allocation_id, amount=str(body.total_amount), platform=platform
        )
        return allocation

    def allocation(self, allocation_id: str) -> Allocation:
        allocation = self.allocations.get(allocation_id)
        if allocation is None:
            raise not_found("Allocation", allocation_id)
        if allocation.released:
            raise ApiError(410, f"Allocation {allocation_id} has been already released")
        return allocation

    def release_allocation(self, allocation_id: str) -> None:
        allocation = self.allocation(allocation_id)
        allocation.record.released_at = now()
        log.info("allocation released", allocation_id=allocation_id, spent=str(allocation.spent()))

    def decorations(self, allocation_ids: list[str]) -> MarketDecorationWire:
        allocations = [self.allocation(a) for a in allocation_ids]
        properties = [
            MarketPropertyWire(
                key=f"golem.com.payment.platform.{a.record.payment_platform}.address", value=a.record.address
            )
            for a in allocations
        ]
        platform_clause = "".join(f"({p.key}=*)" for p in properties)
        constraints = [f"(|{platform_clause})"] if properties else []
        properties.append(MarketPropertyWire(key="golem.com.payment.protocol.version", value="3"))
        constraints.append("(golem.com.payment.protocol.version>1)")
        return MarketDecorationWire(properties=properties, constraints=constraints)

    # ---- debit notes ----------------------------------------------------------------------------
    def start_metering(self, activity: Metered) -> None:
        self._meters[activity.activity_id] = self._spawn(self._meter(activity))

    def stop_metering(self, activity_id: str) -> None:
        task = self._meters.pop(activity_id, None)
        if task is not None:
            task.cancel()

    async def _meter(self, activity: Metered) -> None:
        agreement = activity.agreement
        interval = _number(agreement.requestor_properties.get(PROP_DEBIT_NOTE_INTERVAL))
        period = interval if interval else self.settings.debit_note_interval_s
        payment_timeout = _number(agreement.requestor_properties.get(PROP_PAYMENT_TIMEOUT))
        last_payable = now()
        while not activity.ended and agreement.state == "Approved":
            await asyncio.sleep(period)
            if activity.ended or agreement.state != "Approved":
                return
            payable = payment_timeout is not None and (now() - last_payable).total_seconds() >= payment_timeout
            if payable:
                last_payable = now()
            await self.issue_debit_note(activity, payable=payable)

    async def issue_debit_note(self, activity: Metered, payable: bool = False) -> DebitNoteWire:
        agreement = activity.agreement
        provider = agreement.provider
        usage = activity.usage()
        amount = provider.spec.pricing.cost(*usage.vector())
        at = self.debit_note_events.stamp()
        note = DebitNoteWire(
            debit_note_id=new_id(),
            issuer_id=provider.provider_id,
            recipient_id=self.requestor_id,
            payee_addr=provider.provider_id,
            payer_addr=self.requestor_id,
            payment_platform=self._platform(agreement),
            previous_debit_note_id=self._last_note.get(activity.activity_id),
            timestamp=at,
            agreement_id=agreement.agreement_id,
            activity_id=activity.activity_id,
            total_amount_due=amount,
            usage_counter_vector=usage.vector(),
            payment_due_date=at + timedelta(seconds=self.settings.invoice_due_s) if payable else None,
            status="RECEIVED",
        )
        self.debit_notes[note.debit_note_id] = note
        self._last_note[activity.activity_id] = note.debit_note_id
        self.records.debit_notes[note.debit_note_id] = DebitNoteRecord(
            debit_note_id=note.debit_note_id,
            agreement_id=agreement.agreement_id,
            activity_id=activity.activity_id,
            provider_id=provider.provider_id,
            issued_at=at,
            amount=amount,
            usage=usage.vector(),
            payable=payable,
        )
        await self.debit_note_events.push(DebitNoteEventWire(event_date=at, debit_note_id=note.debit_note_id), at)
        log.debug("debit note issued", provider=provider.name, amount=str(amount), debit_note_id=note.debit_note_id)
        deadline = _number(agreement.requestor_properties.get(PROP_ACCEPT_TIMEOUT))
        if deadline and self.settings.enforce_acceptance:
            self._spawn(self._check_accepted(note.debit_note_id, agreement, deadline))
        return note

    async def _check_accepted(self, debit_note_id: str, agreement: Agreement, deadline: float) -> None:
        await asyncio.sleep(deadline)
        record = self.records.debit_notes[debit_note_id]
        if not record.accepted and agreement.state == "Approved":
            await self.market.end(
                agreement, "Provider", f"Requestor didn't accept DebitNote {debit_note_id} within {deadline:g}s"
            )

    def _platform(self, agreement: Agreement) -> str:
        chosen = agreement.requestor_properties.get(PROP_CHOSEN_PLATFORM)
        return str(chosen) if chosen else self.platforms()[0]

    def debit_note(self, debit_note_id: str) -> DebitNoteWire:
        note = self.debit_notes.get(debit_note_id)
        if note is None:
            raise not_found("Debit note", debit_note_id)
        return note

    def accept_debit_note(self, debit_note_id: str, body: AcceptanceBody) -> None:
        note = self.debit_note(debit_note_id)
        if note.status == "ACCEPTED":
            return
        allocation = self._allocation_for(body.allocation_id, note.payment_platform, note.payer_addr)
        if body.total_amount_accepted != note.total_amount_due:
            raise ApiError(
                400,
                f"Accepted amount {body.total_amount_accepted} differs from the debit note's {note.total_amount_due}",
            )
        notes = dict(allocation.activity_accepted.get(note.agreement_id, {}))
        notes[note.activity_id] = max(notes.get(note.activity_id, Decimal(0)), note.total_amount_due)
        self._check_funds(allocation, note.agreement_id, notes, allocation.invoice_accepted.get(note.agreement_id))
        allocation.activity_accepted[note.agreement_id] = notes
        note.status = "ACCEPTED"
        record = self.records.debit_notes[debit_note_id]
        record.accepted = True
        record.accepted_at = now()
        record.accepted_amount = body.total_amount_accepted
        record.allocation_id = allocation.record.allocation_id

    def _allocation_for(self, allocation_id: str, platform: str, payer: str) -> Allocation:
        allocation = self.allocation(allocation_id)
        if allocation.record.payment_platform != platform:
            raise ApiError(
                400,
                f"Allocation {allocation_id} is for {allocation.record.payment_platform}, the document for {platform}",
            )
        if allocation.record.address.lower() != payer.lower():
            raise ApiError(400, f"Allocation {allocation_id} belongs to another payer")
        return allocation

    @staticmethod
    def _check_funds(
        allocation: Allocation, agreement_id: str, notes: dict[str, Decimal], invoice: Decimal | None
    ) -> None:
        current = allocation.spent()
        old_notes = allocation.activity_accepted.get(agreement_id, {})
        old = max(sum(old_notes.values(), Decimal(0)), allocation.invoice_accepted.get(agreement_id) or Decimal(0))
        new = max(sum(notes.values(), Decimal(0)), invoice or Decimal(0))
        after = current - old + new
        if after > allocation.record.total_amount:
            remaining = allocation.record.total_amount - current
            raise ApiError(
                400,
                f"Not enough funds in allocation {allocation.record.allocation_id}: "
                f"{remaining} remaining, {new - old} needed",
            )

    # ---- invoices -------------------------------------------------------------------------------
    async def _agreement_ended(self, agreement: Agreement) -> None:
        for activity in self.activities_of(agreement.agreement_id):
            self.stop_metering(activity.activity_id)
        delay = self.settings.invoice_delay_s
        late = self.faults.invoice_delay_s
        if late is not None and self.faults.hits(
            Fault.LATE_INVOICES, agreement.provider.provider_id, f"invoice delayed {late:g}s"
        ):
            delay = late
        self._spawn(self._invoice_later(agreement, delay))

    async def _invoice_later(self, agreement: Agreement, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.issue_invoice(agreement)

    async def issue_invoice(self, agreement: Agreement) -> InvoiceWire:
        provider = agreement.provider
        activities = self.activities_of(agreement.agreement_id)
        amount = sum((provider.spec.pricing.cost(*a.usage().vector()) for a in activities), Decimal(0))
        at = self.invoice_events.stamp()
        invoice = InvoiceWire(
            invoice_id=new_id(),
            issuer_id=provider.provider_id,
            recipient_id=self.requestor_id,
            payee_addr=provider.provider_id,
            payer_addr=self.requestor_id,
            payment_platform=self._platform(agreement),
            timestamp=at,
            agreement_id=agreement.agreement_id,
            activity_ids=[a.activity_id for a in activities],
            amount=amount,
            payment_due_date=at + timedelta(seconds=self.settings.invoice_due_s),
            status="RECEIVED",
        )
        self.invoices[invoice.invoice_id] = invoice
        self.records.invoices[invoice.invoice_id] = InvoiceRecord(
            invoice_id=invoice.invoice_id,
            agreement_id=agreement.agreement_id,
            provider_id=provider.provider_id,
            activity_ids=invoice.activity_ids,
            issued_at=at,
            amount=amount,
        )
        await self.invoice_events.push(InvoiceEventWire(event_date=at, invoice_id=invoice.invoice_id), at)
        log.info("invoice issued", provider=provider.name, amount=str(amount), agreement_id=agreement.agreement_id)
        return invoice

    def invoice(self, invoice_id: str) -> InvoiceWire:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise not_found("Invoice", invoice_id)
        return invoice

    def accept_invoice(self, invoice_id: str, body: AcceptanceBody) -> None:
        invoice = self.invoice(invoice_id)
        if invoice.status == "ACCEPTED":
            return
        allocation = self._allocation_for(body.allocation_id, invoice.payment_platform, invoice.payer_addr)
        if body.total_amount_accepted != invoice.amount:
            raise ApiError(
                400, f"Accepted amount {body.total_amount_accepted} differs from the invoice's {invoice.amount}"
            )
        notes = allocation.activity_accepted.get(invoice.agreement_id, {})
        self._check_funds(allocation, invoice.agreement_id, notes, invoice.amount)
        allocation.invoice_accepted[invoice.agreement_id] = invoice.amount
        invoice.status = "ACCEPTED"
        record = self.records.invoices[invoice_id]
        record.accepted = True
        record.accepted_at = now()
        record.accepted_amount = body.total_amount_accepted
        record.allocation_id = allocation.record.allocation_id
        log.info("invoice accepted", invoice_id=invoice_id, amount=str(invoice.amount))

    # ---- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        p = "/payment-api/v1"
        return [
            web.post(f"{p}/allocations", self._h_create_allocation),
            web.get(f"{p}/allocations", self._h_allocations),
            web.get(f"{p}/allocations/{{id}}", self._h_allocation),
            web.delete(f"{p}/allocations/{{id}}", self._h_release),
            web.get(f"{p}/demandDecorations", self._h_decorations),
            web.get(f"{p}/requestorAccounts", self._h_accounts),
            web.get(f"{p}/debitNotes", self._h_debit_notes),
            web.get(f"{p}/debitNotes/{{id}}", self._h_debit_note),
            web.post(f"{p}/debitNotes/{{id}}/accept", self._h_accept_debit_note),
            web.post(f"{p}/debitNotes/{{id}}/reject", self._h_not_implemented),
            web.get(f"{p}/debitNoteEvents", self._h_debit_note_events),
            web.get(f"{p}/invoices", self._h_invoices),
            web.get(f"{p}/invoices/{{id}}", self._h_invoice),
            web.post(f"{p}/invoices/{{id}}/accept", self._h_accept_invoice),
            web.post(f"{p}/invoices/{{id}}/reject", self._h_not_implemented),
            web.get(f"{p}/invoiceEvents", self._h_invoice_events),
        ]

    async def _h_create_allocation(self, request: web.Request) -> web.Response:
        allocation = self.create_allocation(await read_body(request, AllocationBody))
        return respond(allocation.wire(), status=201)

    async def _h_allocations(self, request: web.Request) -> web.Response:
        return respond([a.wire() for a in self.allocations.values() if not a.released])

    async def _h_allocation(self, request: web.Request) -> web.Response:
        return respond(self.allocation(request.match_info["id"]).wire())

    async def _h_release(self, request: web.Request) -> web.Response:
        self.release_allocation(request.match_info["id"])
        return web.json_response(None)

    async def _h_decorations(self, request: web.Request) -> web.Response:
        ids = [i for raw in request.query.getall("allocationIds", []) for i in raw.split(",") if i]
        return respond(self.decorations(ids))

    async def _h_accounts(self, request: web.Request) -> web.Response:
        accounts = []
        for platform in self.platforms():
            driver, network, token = platform.split("-")
            accounts.append(
                AccountWire(platform=platform, address=self.requestor_id, driver=driver, network=network, token=token)
            )
        return respond(accounts)

    async def _h_debit_notes(self, request: web.Request) -> web.Response:
        return respond(list(self.debit_notes.values()))

    async def _h_debit_note(self, request: web.Request) -> web.Response:
        return respond(self.debit_note(request.match_info["id"]))

    async def _h_accept_debit_note(self, request: web.Request) -> web.Response:
        self.accept_debit_note(request.match_info["id"], await read_body(request, AcceptanceBody))
        return respond(None)

    async def _h_not_implemented(self, request: web.Request) -> web.Response:
        raise ApiError(501, "Rejecting debit notes and invoices is not implemented (as in yagna)")

    async def _h_debit_note_events(self, request: web.Request) -> web.Response:
        found = await self.debit_note_events.wait_after(
            query_time(request, "afterTimestamp"),
            query_float(request, "timeout", 5.0, maximum=60.0),
            max(1, min(query_int(request, "maxEvents", 10), 100)),
        )
        return respond([entry.item for entry in found])

    async def _h_invoices(self, request: web.Request) -> web.Response:
        return respond(list(self.invoices.values()))

    async def _h_invoice(self, request: web.Request) -> web.Response:
        return respond(self.invoice(request.match_info["id"]))

    async def _h_accept_invoice(self, request: web.Request) -> web.Response:
        self.accept_invoice(request.match_info["id"], await read_body(request, AcceptanceBody))
        return respond(None)

    async def _h_invoice_events(self, request: web.Request) -> web.Response:
        found = await self.invoice_events.wait_after(
            query_time(request, "afterTimestamp"),
            query_float(request, "timeout", 5.0, maximum=60.0),
            max(1, min(query_int(request, "maxEvents", 10), 100)),
        )
        return respond([entry.item for entry in found])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None
    return number if number > 0 else None
