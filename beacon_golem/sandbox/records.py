"""What happened in a sandbox: agreements, activities, debit notes, invoices, faults.

Every module of the sandbox writes its part here as it happens; `GET /sandbox/records` answers a
`RecordsSnapshot`, so a test (or a researcher after a rehearsal) can compare what the requestor
accepted with what the providers issued. Amounts are Decimals, written as strings in JSON.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, computed_field

AgreementState = Literal["Proposal", "Pending", "Approved", "Rejected", "Cancelled", "Expired", "Terminated"]
ActivityStateName = Literal["New", "Initialized", "Deployed", "Ready", "Unresponsive", "Terminated"]
Party = Literal["Requestor", "Provider"]


class ProviderRecord(BaseModel):
    provider_id: str
    name: str
    runtime: str
    gpu_models: list[str]
    vram_gib: float
    cuda_version: str
    gpu_layout: Literal["single", "multi"]
    #: GLM per hour of `golem.usage.duration_sec`, per hour of `golem.usage.cpu_sec`, and per start.
    glm_per_hour: Decimal
    cpu_glm_per_hour: Decimal
    start_price_glm: Decimal


class AgreementRecord(BaseModel):
    agreement_id: str
    provider_id: str
    provider_name: str
    state: AgreementState = "Proposal"
    created_at: datetime
    approved_at: datetime | None = None
    terminated_at: datetime | None = None
    terminated_by: Party | None = None
    reason: str | None = None
    activity_ids: list[str] = Field(default_factory=list)


class CommandRecord(BaseModel):
    batch_id: str
    index: int
    command: str
    ok: bool
    message: str | None = None
    started_at: datetime
    finished_at: datetime


class ActivityRecord(BaseModel):
    activity_id: str
    agreement_id: str
    provider_id: str
    vm_id: str
    state: ActivityStateName = "Initialized"
    created_at: datetime
    terminated_at: datetime | None = None
    reason: str | None = None
    commands: list[CommandRecord] = Field(default_factory=list)
    vpn_connections: int = 0
    #: HTTP requests sent to the VM over the VPN (request lines seen by the bridge).
    vpn_requests: int = 0
    vpn_refused: int = 0


class DebitNoteRecord(BaseModel):
    debit_note_id: str
    agreement_id: str
    activity_id: str
    provider_id: str
    issued_at: datetime
    amount: Decimal
    usage: list[float]
    payable: bool = False
    accepted: bool = False
    accepted_at: datetime | None = None
    accepted_amount: Decimal | None = None
    allocation_id: str | None = None


class InvoiceRecord(BaseModel):
    invoice_id: str
    agreement_id: str
    provider_id: str
    activity_ids: list[str]
    issued_at: datetime
    amount: Decimal
    accepted: bool = False
    accepted_at: datetime | None = None
    accepted_amount: Decimal | None = None
    allocation_id: str | None = None


class AllocationRecord(BaseModel):
    allocation_id: str
    payment_platform: str
    address: str
    total_amount: Decimal
    created_at: datetime
    released_at: datetime | None = None


class FaultRecord(BaseModel):
    fault: str
    provider_id: str
    at: datetime
    detail: str


class ProviderTotals(BaseModel):
    provider_id: str
    #: The latest accepted debit note of each activity, summed: what the requestor had agreed to owe.
    debit_notes_accepted: Decimal
    invoiced: Decimal
    invoices_accepted: Decimal


class RecordsSnapshot(BaseModel):
    requestor_id: str
    providers: list[ProviderRecord]
    agreements: list[AgreementRecord]
    activities: list[ActivityRecord]
    debit_notes: list[DebitNoteRecord]
    invoices: list[InvoiceRecord]
    allocations: list[AllocationRecord]
    faults: list[FaultRecord]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def totals(self) -> list[ProviderTotals]:
        out = []
        for provider in self.providers:
            pid = provider.provider_id
            latest: dict[str, DebitNoteRecord] = {}
            for note in self.debit_notes:
                if note.provider_id == pid and note.accepted:
                    seen = latest.get(note.activity_id)
                    if seen is None or note.issued_at > seen.issued_at:
                        latest[note.activity_id] = note
            invoices = [i for i in self.invoices if i.provider_id == pid]
            out.append(
                ProviderTotals(
                    provider_id=pid,
                    debit_notes_accepted=sum((n.amount for n in latest.values()), Decimal(0)),
                    invoiced=sum((i.amount for i in invoices), Decimal(0)),
                    invoices_accepted=sum(
                        (i.accepted_amount or Decimal(0) for i in invoices if i.accepted), Decimal(0)
                    ),
                )
            )
        return out


class Records:
    """The live store the sandbox's modules write to; `snapshot()` is what the API answers."""

    def __init__(self, requestor_id: str) -> None:
        self.requestor_id = requestor_id
        self.providers: list[ProviderRecord] = []
        self.agreements: dict[str, AgreementRecord] = {}
        self.activities: dict[str, ActivityRecord] = {}
        self.debit_notes: dict[str, DebitNoteRecord] = {}
        self.invoices: dict[str, InvoiceRecord] = {}
        self.allocations: dict[str, AllocationRecord] = {}
        self.faults: list[FaultRecord] = []

    def snapshot(self) -> RecordsSnapshot:
        return RecordsSnapshot(
            requestor_id=self.requestor_id,
            providers=[p.model_copy(deep=True) for p in self.providers],
            agreements=[a.model_copy(deep=True) for a in self.agreements.values()],
            activities=[a.model_copy(deep=True) for a in self.activities.values()],
            debit_notes=[d.model_copy(deep=True) for d in self.debit_notes.values()],
            invoices=[i.model_copy(deep=True) for i in self.invoices.values()],
            allocations=[a.model_copy(deep=True) for a in self.allocations.values()],
            faults=list(self.faults),
        )
