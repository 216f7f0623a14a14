"""Rows the Golem fleet produces (agreements, debit notes, invoices, cost per node) and consumes
(a provider's past record). Plain pydantic models: the caller persists them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class ProviderRecord(BaseModel):
    """What earlier runs learned about a provider; the store builds these, the strategy reads them."""

    provider_id: str
    runs: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    #: Output tokens per GLM spent on this provider in past runs (higher is better).
    tokens_per_glm: float | None = Field(default=None, ge=0)
    banned: bool = False
    note: str | None = None

    def is_bad(self, max_failure_rate: float = 0.5, min_runs: int = 2) -> bool:
        """Banned, or failing more than `max_failure_rate` of at least `min_runs` runs."""
        if self.banned:
            return True
        return self.runs >= min_runs and self.failures / self.runs > max_failure_rate


class AgreementRow(BaseModel):
    kind: Literal["agreement"] = "agreement"
    agreement_id: str
    provider_id: str
    provider_name: str | None = None
    node_id: str | None = None
    payment_network: str
    #: The offer's price, converted: GLM per hour of use (duration + expected CPU) and at start.
    hourly_glm: Decimal
    start_glm: Decimal
    #: The raw linear coefficients per usage counter, GLM per unit.
    coeffs: dict[str, float] = Field(default_factory=dict)
    gpu_model: str | None = None
    created_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None


class DebitNoteRow(BaseModel):
    kind: Literal["debit_note"] = "debit_note"
    debit_note_id: str
    agreement_id: str
    activity_id: str | None = None
    #: Cumulative amount due for the activity so far, GLM.
    amount_glm: Decimal
    received_at: datetime
    accepted: bool = False


class InvoiceRow(BaseModel):
    kind: Literal["invoice"] = "invoice"
    invoice_id: str
    agreement_id: str
    amount_glm: Decimal
    received_at: datetime
    accepted: bool = False


class NodeCostRow(BaseModel):
    """What one agreement (one node) cost: the invoice where there is one, else the latest debit
    note, else the estimate from the offer's price and the time rented."""

    kind: Literal["node_cost"] = "node_cost"
    agreement_id: str
    provider_id: str
    node_id: str | None = None
    amount_glm: Decimal
    source: Literal["invoice", "debit_note", "estimate"]


GolemRecord = Annotated[AgreementRow | DebitNoteRow | InvoiceRow | NodeCostRow, Field(discriminator="kind")]
