"""Money: what each agreement costs, what the run has spent, and whether it can afford more.

Costs are counted conservatively: for an agreement without an invoice, the larger of the latest
debit note and an estimate from the offer's price and the time rented (debit notes lag by a minute
or more). The budget check counts what running nodes will cost until the run's end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from beacon_golem.core.clock import utcnow
from beacon_golem.requestor.fleets.golem.records import (
    AgreementRow,
    DebitNoteRow,
    GolemRecord,
    InvoiceRow,
    NodeCostRow,
)

#: GLM has 18 decimals: an estimate is never more precise than what can be paid.
WEI = Decimal("1e-18")


def _hours(start: datetime, end: datetime) -> Decimal:
    return Decimal(str(max((end - start).total_seconds(), 0.0) / 3600))


class PaymentLedger:
    def __init__(self, budget: Decimal, now: Callable[[], datetime] = utcnow) -> None:
        self.budget = Decimal(budget)
        self.now = now
        self.agreements: dict[str, AgreementRow] = {}
        self.debit_notes: dict[str, DebitNoteRow] = {}
        self.invoices: dict[str, InvoiceRow] = {}

    # ---- recording -----------------------------------------------------------------------------
    def open(self, row: AgreementRow) -> AgreementRow:
        return self.agreements.setdefault(row.agreement_id, row)

    def bind_node(self, agreement_id: str, node_id: str) -> None:
        if agreement_id in self.agreements:
            self.agreements[agreement_id].node_id = node_id

    def close(self, agreement_id: str, reason: str | None = None) -> None:
        row = self.agreements.get(agreement_id)
        if row is not None and row.ended_at is None:
            row.ended_at = self.now()
            row.end_reason = reason

    def debit_note(self, row: DebitNoteRow) -> None:
        known = self.debit_notes.get(row.debit_note_id)
        if known is not None:
            known.accepted = known.accepted or row.accepted
        else:
            self.debit_notes[row.debit_note_id] = row

    def invoice(self, row: InvoiceRow) -> None:
        known = self.invoices.get(row.invoice_id)
        if known is not None:
            known.accepted = known.accepted or row.accepted
        else:
            self.invoices[row.invoice_id] = row

    # ---- costs -----------------------------------------------------------------------------------
    def estimate(self, row: AgreementRow, at: datetime | None = None) -> Decimal:
        end = row.ended_at or at or self.now()
        return (row.start_glm + row.hourly_glm * _hours(row.created_at, end)).quantize(WEI)

    def cost(self, agreement_id: str, at: datetime | None = None) -> NodeCostRow:
        row = self.agreements[agreement_id]
        invoices = [i.amount_glm for i in self.invoices.values() if i.agreement_id == agreement_id]
        if invoices:
            return self._cost_row(row, sum(invoices, Decimal(0)), "invoice")
        notes = [d.amount_glm for d in self.debit_notes.values() if d.agreement_id == agreement_id]
        billed = max(notes, default=Decimal(0))
        estimate = self.estimate(row, at)
        if notes and billed >= estimate:
            return self._cost_row(row, billed, "debit_note")
        return self._cost_row(row, estimate, "estimate")

    @staticmethod
    def _cost_row(row: AgreementRow, amount: Decimal, source: str) -> NodeCostRow:
        return NodeCostRow(
            agreement_id=row.agreement_id,
            provider_id=row.provider_id,
            node_id=row.node_id,
            amount_glm=amount,
            source=source,  # type: ignore[arg-type]
        )

    def uninvoiced(self, at: datetime | None = None) -> list[NodeCostRow]:
        """The cost of every agreement no invoice came for (yet): a debit note's or an estimate."""
        return [c for a in self.agreements if (c := self.cost(a, at)).source != "invoice"]

    def spent(self, at: datetime | None = None) -> Decimal:
        at = at or self.now()
        return sum((self.cost(a, at).amount_glm for a in self.agreements), Decimal(0))

    def burn_per_hour(self) -> Decimal:
        """GLM per hour the open agreements cost together."""
        return sum((r.hourly_glm for r in self.agreements.values() if r.ended_at is None), Decimal(0))

    def headroom(self, until: datetime, at: datetime | None = None) -> Decimal:
        """Budget left once what is spent and what open agreements cost until `until` are paid."""
        at = at or self.now()
        return self.budget - self.spent(at) - self.burn_per_hour() * _hours(at, until)

    def can_afford(self, hourly: Decimal, start: Decimal, until: datetime, at: datetime | None = None) -> bool:
        """Whether one more node at this price, kept until `until`, fits the budget."""
        at = at or self.now()
        return self.headroom(until, at) >= start + hourly * _hours(at, until)

    def exhausted(self, margin_s: float, at: datetime | None = None) -> bool:
        """True when spending goes over the budget within `margin_s` at the current burn."""
        at = at or self.now()
        margin = self.burn_per_hour() * Decimal(str(margin_s / 3600))
        return self.spent(at) + margin >= self.budget

    def rows(self, at: datetime | None = None) -> list[GolemRecord]:
        """Every agreement, debit note and invoice, then each agreement's cost: rows to persist."""
        at = at or self.now()
        out: list[GolemRecord] = []
        out.extend(r.model_copy() for r in self.agreements.values())
        out.extend(r.model_copy() for r in self.debit_notes.values())
        out.extend(r.model_copy() for r in self.invoices.values())
        out.extend(self.cost(a, at) for a in self.agreements)
        return out
