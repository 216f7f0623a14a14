"""Payments through yapapi's rest.Payment: allocations, decorations, debit notes, invoices, funds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import TypeVar

import aiohttp
import pytest
from ya_payment import ApiException
from yapapi import rest
from yapapi.config import ApiConfig

from beacon_golem.sandbox import constraints
from beacon_golem.sandbox.payment import PaymentSettings
from beacon_golem.sandbox.providers import NegotiationSettings
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import Api, MakeSandbox
from tests.sandbox.flows import PLATFORM, rent, start_vm

T = TypeVar("T")


@asynccontextmanager
async def payment_api(sandbox: Sandbox) -> AsyncIterator[rest.Payment]:
    config = rest.Configuration(ApiConfig(app_key=sandbox.app_key, api_url=sandbox.url))
    async with config.payment() as client:
        yield rest.Payment(client)


async def first(iterator: AsyncIterator[T], timeout: float = 5.0) -> T:
    return await asyncio.wait_for(anext(iterator), timeout)


async def test_allocations_and_demand_decorations(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=1)
    async with payment_api(sandbox) as payments:
        async with payments.new_allocation(Decimal("2.5"), PLATFORM, sandbox.requestor_id) as allocation:
            assert allocation.amount == Decimal("2.5")
            details = await allocation.details()
            assert (details.spent_amount, details.remaining_amount) == (Decimal(0), Decimal("2.5"))
            decoration = await payments.decorate_demand([allocation.id])
            props = {p.key: p.value for p in decoration.properties}
            assert props[f"golem.com.payment.platform.{PLATFORM}.address"] == sandbox.requestor_id
            assert props["golem.com.payment.protocol.version"] == "3"
            offer = sandbox.providers[0].properties
            for text in decoration.constraints:
                assert constraints.parse(text).matches(offer), text
            assert [a.id async for a in payments.allocations()] == [allocation.id]
        assert sandbox.records.allocations[allocation.id].released_at is not None
        assert [a.id async for a in payments.allocations()] == []


async def test_allocations_are_refused_as_yagna_refuses_them(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=1, payment=PaymentSettings(requestor_funds=Decimal(10)))
    async with payment_api(sandbox) as payments:
        with pytest.raises(ApiException) as unknown:
            await payments.new_allocation(Decimal(1), "zksync-rinkeby-tglm", sandbox.requestor_id).__aenter__()
        assert unknown.value.status == 400 and "No payment account" in unknown.value.body
        with pytest.raises(ApiException) as stranger:
            await payments.new_allocation(Decimal(1), PLATFORM, "0x" + "9" * 40).__aenter__()
        assert stranger.value.status == 400 and "not registered" in stranger.value.body
        async with payments.new_allocation(Decimal(8), PLATFORM, sandbox.requestor_id):
            with pytest.raises(ApiException) as broke:
                await payments.new_allocation(Decimal(3), PLATFORM, sandbox.requestor_id).__aenter__()
            assert broke.value.status == 400 and "Insufficient funds" in broke.value.body


async def test_debit_notes_bill_usage_and_invoices_the_whole_agreement(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    provider = sandbox.providers[0]
    async with payment_api(sandbox) as payments:
        async with payments.new_allocation(Decimal(1), PLATFORM, sandbox.requestor_id) as allocation:
            notes = payments.incoming_debit_note_ids()
            invoices = payments.incoming_invoices()
            agreement_id = await rent(api, sandbox)
            activity_id = await start_vm(api, agreement_id)

            note = await payments.debit_note(str(await first(notes)))
            assert (note.agreement_id, note.activity_id) == (agreement_id, activity_id)
            assert (note.payer_addr, note.payee_addr) == (sandbox.requestor_id, provider.provider_id)
            assert note.payment_platform == PLATFORM and note.payment_due_date is None
            duration, cpu = note.usage_counter_vector
            assert Decimal(note.total_amount_due) == provider.spec.pricing.cost(duration, cpu)
            with pytest.raises(ApiException) as short:
                await note.accept(amount="0.0", allocation=allocation)
            assert short.value.status == 400 and "differs" in short.value.body
            await note.accept(amount=note.total_amount_due, allocation=allocation)
            record = sandbox.records.debit_notes[note.debit_note_id]
            assert record.accepted and record.accepted_amount == Decimal(note.total_amount_due)
            assert (await allocation.details()).spent_amount == Decimal(note.total_amount_due)

            later = await payments.debit_note(str(await first(notes)))
            assert later.previous_debit_note_id == note.debit_note_id
            assert Decimal(later.total_amount_due) > Decimal(note.total_amount_due)

            assert (await api.post(f"/market-api/v1/agreements/{agreement_id}/terminate", {"message": "done"}))[
                0
            ] == 204
            invoice = await first(invoices)
            assert invoice.agreement_id == agreement_id and invoice.activity_ids == [activity_id]
            usage = sandbox.activities.activity(activity_id).usage()
            assert Decimal(invoice.amount) == provider.spec.pricing.cost(*usage.vector())
            assert Decimal(invoice.amount) >= Decimal(later.total_amount_due)
            await invoice.accept(amount=invoice.amount, allocation=allocation)
            assert sandbox.records.invoices[invoice.invoice_id].accepted
            assert (await allocation.details()).spent_amount == Decimal(invoice.amount)
        await notes.aclose()  # type: ignore[attr-defined]
        await invoices.aclose()  # type: ignore[attr-defined]


async def test_acceptance_beyond_the_allocation_is_refused(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    async with payment_api(sandbox) as payments:
        async with payments.new_allocation(Decimal("0.000000001"), PLATFORM, sandbox.requestor_id) as allocation:
            notes = payments.incoming_debit_note_ids()
            await start_vm(api, await rent(api, sandbox))
            note = await payments.debit_note(str(await first(notes)))
            with pytest.raises(ApiException) as broke:
                await note.accept(amount=note.total_amount_due, allocation=allocation)
            assert broke.value.status == 400 and "Not enough funds" in broke.value.body
            assert not sandbox.records.debit_notes[note.debit_note_id].accepted
            await notes.aclose()  # type: ignore[attr-defined]


async def test_a_provider_ends_the_agreement_when_debit_notes_go_unaccepted(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1, negotiation=NegotiationSettings(min_accept_timeout_s=1))
    api = Api(api_session, sandbox)
    agreement_id = await rent(api, sandbox, **{"golem.com.payment.debit-notes.accept-timeout?": 1})
    activity_id = await start_vm(api, agreement_id)
    agreement = sandbox.market.agreement(agreement_id)
    for _ in range(60):
        if agreement.state != "Approved":
            break
        await asyncio.sleep(0.1)
    record = sandbox.records.agreements[agreement_id]
    assert (record.state, record.terminated_by) == ("Terminated", "Provider")
    assert "didn't accept DebitNote" in (record.reason or "")
    assert sandbox.activities.activity(activity_id).ended
