"""yapapi events as structlog events and short progress lines; secrets never shown."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from yapapi import events

from beacon_golem.core.log import get_logger

log = get_logger("beacon_golem.requestor.fleets.golem")


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with the app key (and any other secret given) replaced by ***."""
    for secret in (os.environ.get("YAGNA_APPKEY"), *secrets):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def provider_of(event: events.Event) -> tuple[str | None, str | None]:
    """(provider id, provider name) of an event, where it has them and they are readable."""
    try:
        if isinstance(event, events.ProposalEvent):
            props = event.proposal.props
            return event.proposal.issuer, props.get("golem.node.id.name")
        if isinstance(event, events.AgreementEvent):
            return event.provider_id, event.provider_info.name
    except Exception:  # agreement details not fetched (e.g. AgreementRejected)
        pass
    return None, None


def describe(event: events.Event) -> tuple[str, str] | None:
    """(level, one-line message) for the events a user follows; None for the chatty rest."""
    pid, name = provider_of(event)
    who = f"{name or 'provider'} [{(pid or '?')[:10]}]"
    error = f": {event.exception}" if event.exception else ""
    match event:
        case events.SubscriptionCreated():
            return "info", "market: demand published, waiting for offers"
        case events.SubscriptionFailed():
            return "error", f"market: demand not published: {event.reason}"
        case events.CollectFailed():
            return "warning", f"market: collecting offers failed: {event.reason}"
        case events.NoProposalsConfirmed():
            return "warning", f"market: no offer confirmed in {event.timeout}; check the price cap and GPU filters"
        case events.AgreementConfirmed():
            return "info", f"agreement with {who}"
        case events.AgreementRejected():
            return "info", f"{who} did not confirm the agreement"
        case events.AgreementTerminated():
            reason = (event.reason or {}).get("message", "")
            return "info", f"agreement with {who} ended {reason}".rstrip()
        case events.ActivityCreateFailed():
            return "warning", f"{who} could not start a VM{error}"
        case events.ServiceStateChanged():
            return "info", f"node on {who}: {event.old.value} -> {event.new.value}"
        case events.CommandProgress() if event.message:
            return "info", f"{who}: {event.message}"
        case events.InvoiceAccepted():
            return "info", f"invoice from {who} accepted: {event.amount} GLM"
        case events.DebitNoteAccepted():
            return "debug", f"debit note from {who}: {event.amount} GLM so far"
        case events.PaymentFailed():
            return "error", f"payment to {who} failed{error}"
        case events.WorkerFinished() if event.exception:
            return "warning", f"node on {who} stopped{error}"
        case events.ExecutionInterrupted():
            return "error", f"golem engine interrupted{error}"
        case events.ShutdownFinished():
            return "info", f"golem engine stopped{error}"
    return None


def fields(event: events.Event) -> dict[str, Any]:
    pid, name = provider_of(event)
    out: dict[str, Any] = {"golem_event": type(event).__name__}
    if pid:
        out["provider_id"] = pid
    if name:
        out["provider_name"] = name
    if isinstance(event, events.AgreementEvent):
        out["agreement_id"] = getattr(event.agreement, "id", None)
    return out
