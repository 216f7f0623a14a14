"""Each fault knob, as the requestor meets it on the API (the VPN faults are in test_net.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal

import aiohttp
import pytest

from beacon_golem.sandbox.faults import Fault, FaultSettings
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import FAST_FAULTS, Api, MakeSandbox
from tests.sandbox.fake_vm import FakeVmFactory
from tests.sandbox.flows import exec_script, rent, start_vm

RUN = "/activity-api/v1/activity"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_vm_dies_mid_run(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, vm_factory: FakeVmFactory
) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.VM_DIES])
    api = Api(api_session, sandbox)
    doomed = await start_vm(api, await rent(api, sandbox, 0))
    spared = await start_vm(api, await rent(api, sandbox, 1))
    activity = sandbox.activities.activity(doomed)
    await until(lambda: activity.ended)
    assert vm_factory.vms[0].killed and not vm_factory.vms[1].killed
    status, state = await api.get(f"{RUN}/{doomed}/state")
    assert state["state"] == ["Terminated", None] and "terminated unexpectedly" in state["errorMessage"]
    status, body = await api.post(f"{RUN}/{doomed}/exec", {"text": json.dumps([{"start": {}}])})
    assert status == 500 and "GSB error" in body["message"]
    # The agreement stays: the requestor has to notice and end it, as on Golem.
    assert sandbox.market.agreement(activity.agreement.agreement_id).state == "Approved"
    assert not sandbox.activities.activity(spared).ended
    (fault,) = sandbox.records.faults
    assert (fault.fault, fault.provider_id) == ("vm-dies", sandbox.providers[0].provider_id)


async def test_a_dying_vm_fails_the_running_batch(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1, faults=[Fault.VM_DIES], fault_settings=FaultSettings(vm_dies_after_s=0.3))
    api = Api(api_session, sandbox)
    activity_id = await start_vm(api, await rent(api, sandbox))
    status, batch = await api.post(
        f"{RUN}/{activity_id}/exec", {"text": json.dumps([{"run": {"entry_point": "/bin/sleep", "args": ["5"]}}])}
    )
    status, body = await api.get(f"{RUN}/{activity_id}/exec/{batch}", timeout=3)
    assert status == 500 and "Terminated" in body["message"]


async def test_provider_terminates_the_agreement(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1, faults=[Fault.PROVIDER_TERMINATES])
    api = Api(api_session, sandbox)
    agreement_id = await rent(api, sandbox)
    activity_id = await start_vm(api, agreement_id)
    await until(lambda: bool(sandbox.records.invoices))
    record = sandbox.records.agreements[agreement_id]
    assert (record.state, record.terminated_by) == ("Terminated", "Provider")
    assert sandbox.activities.activity(activity_id).ended
    (invoice,) = sandbox.records.invoices.values()
    assert invoice.agreement_id == agreement_id and invoice.amount > 0
    status, body = await api.post(f"/market-api/v1/agreements/{agreement_id}/terminate", {"message": "late"})
    assert status == 409
    status, found = await api.get("/market-api/v1/agreementEvents", timeout=0)
    assert [(e["eventType"], e["agreementId"]) for e in found] == [
        ("AgreementApprovedEvent", agreement_id),
        ("AgreementTerminatedEvent", agreement_id),
    ]
    assert found[1]["terminator"] == "Provider" and "provider-terminates" in found[1]["reason"]["message"]
    status, later = await api.get("/market-api/v1/agreementEvents", timeout=0, afterTimestamp=found[0]["eventDate"])
    assert [e["eventType"] for e in later] == ["AgreementTerminatedEvent"]


async def test_deploy_fails_for_one_provider(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.DEPLOY_FAILS])
    api = Api(api_session, sandbox)
    results = []
    for index in (0, 1, 0):
        status, activity_id = await api.post(RUN, await rent(api, sandbox, index))
        results.append((await exec_script(api, activity_id, [{"deploy": {}}]))[0])
        agreement_id = sandbox.activities.activity(activity_id).agreement.agreement_id
        await api.post(f"/market-api/v1/agreements/{agreement_id}/terminate", {"message": "next"})
        await asyncio.sleep(0.3)  # the provider offers itself again
    assert [r["result"] for r in results] == ["Error", "Ok", "Error"]  # a broken provider stays broken
    assert "Deploy failed" in results[0]["message"]


async def test_activity_creation_refused_for_one_provider(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.ACTIVITY_FAILS])
    api = Api(api_session, sandbox)
    first = await rent(api, sandbox, 0)
    status, body = await api.post(RUN, first)
    assert status == 500 and "Failed to create activity" in body["message"]
    assert sandbox.records.agreements[first].activity_ids == []
    assert (await api.post(RUN, await rent(api, sandbox, 1)))[0] == 201


async def test_slow_deploy(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(
        providers=1, faults=[Fault.SLOW_DEPLOY], fault_settings=FAST_FAULTS.model_copy(update={"slow_deploy_s": 1.0})
    )
    api = Api(api_session, sandbox)
    status, activity_id = await api.post(RUN, await rent(api, sandbox))
    status, batch = await api.post(f"{RUN}/{activity_id}/exec", {"text": json.dumps([{"deploy": {}}])})
    status, early = await api.get(f"{RUN}/{activity_id}/exec/{batch}", timeout=0.5)
    assert (status, early) == (200, [])
    status, late = await api.get(f"{RUN}/{activity_id}/exec/{batch}", timeout=3)
    assert late[0]["result"] == "Ok"


async def test_late_invoices(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1, faults=[Fault.LATE_INVOICES])
    api = Api(api_session, sandbox)
    agreement_id = await rent(api, sandbox)
    await start_vm(api, agreement_id)
    await api.post(f"/market-api/v1/agreements/{agreement_id}/terminate", {"message": "done"})
    await asyncio.sleep(0.5)
    assert not sandbox.records.invoices  # normally 0.1 s after the end; late: 1 s
    await until(lambda: bool(sandbox.records.invoices), 3)
    (invoice,) = sandbox.records.invoices.values()
    ended = sandbox.records.agreements[agreement_id].terminated_at
    assert ended is not None and (invoice.issued_at - ended).total_seconds() >= 1.0


@pytest.mark.parametrize("faults", [[], [Fault.EXPENSIVE]])
async def test_expensive_raises_every_price(make_sandbox: MakeSandbox, faults: list[Fault]) -> None:
    cheap = await make_sandbox(providers=3, seed=5)
    sandbox: Sandbox = await make_sandbox(providers=3, seed=5, faults=faults)
    factor = Decimal(repr(FAST_FAULTS.expensive_factor)) if faults else 1
    for a, b in zip(cheap.providers, sandbox.providers, strict=True):
        assert b.spec.pricing.glm_per_hour == a.spec.pricing.glm_per_hour * factor
        assert b.properties["golem.com.pricing.model.linear.coeffs"][0] == pytest.approx(
            a.properties["golem.com.pricing.model.linear.coeffs"][0] * float(factor)
        )
