"""The unmodified yapapi 0.13.1 engine against the sandbox: Golem, run_service on a VPN, SocketProxy,
payments and a clean shutdown, then the sandbox's records checked against what yapapi saw."""

from __future__ import annotations

from decimal import Decimal

from yapapi import Golem, events
from yapapi.config import ApiConfig
from yapapi.contrib.service.socket_proxy import SocketProxy
from yapapi.payload.package import resolve_package_url
from yapapi.services import ServiceState

from beacon_golem.sandbox.faults import Fault
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import TAG, MakeSandbox
from tests.sandbox.fake_vm import FakeVmFactory
from tests.sandbox.requestor import EventLog, GpuPayload, PingerService, ProbeService, free_ports, get_json, wait_for


def golem_for(sandbox: Sandbox, log: EventLog, budget: float = 1.0) -> Golem:
    return Golem(
        budget=budget,
        subnet_tag="public",
        payment_driver="erc20",
        payment_network="holesky",
        event_consumer=log,
        api_config=ApiConfig(app_key=sandbox.app_key, api_url=sandbox.url),
    )


async def test_run_service_with_vpn_proxy_and_payments(
    make_sandbox: MakeSandbox, vm_factory: FakeVmFactory, gftp_on_path: object
) -> None:
    sandbox = await make_sandbox(providers=3)
    log = EventLog()
    package_url = await resolve_package_url(sandbox.registry_url, image_tag=TAG)
    payload = GpuPayload(package_url=package_url)

    async with golem_for(sandbox, log) as golem:
        network = await golem.create_network("192.168.0.1/24")
        cluster = await golem.run_service(ProbeService, num_instances=2, payload=payload, network=network)
        await wait_for(
            lambda: len(cluster.instances) == 2 and all(s.state == ServiceState.running for s in cluster.instances),
            20,
            "two running instances",
        )
        ports = free_ports(2)
        proxy = SocketProxy(ports=ports)
        await proxy.run(cluster)
        seen = [(await get_json(f"http://127.0.0.1:{port}/health"))["vm"] for port in ports]
        hellos = [s.hello for s in cluster.instances]
        await wait_for(lambda: len(log.of(events.DebitNoteAccepted)) >= 2, 10, "accepted debit notes")
        await proxy.stop()
        cluster.stop()
        await wait_for(
            lambda: all(s.state == ServiceState.terminated for s in cluster.instances), 20, "terminated instances"
        )
        await network.remove()

    # What the requestor saw through the VPN: each instance reached its own VM.
    assert sorted(seen) == sorted(vm.vm_id for vm in vm_factory.vms)
    assert len(set(seen)) == 2
    assert all(h and h.startswith("hello from /") for h in hellos)

    records = sandbox.snapshot()
    assert len(records.agreements) == 2
    assert {a.provider_id for a in records.agreements} <= {p.provider_id for p in records.providers}
    for agreement in records.agreements:
        assert agreement.state == "Terminated"
        assert agreement.terminated_by == "Requestor"
        assert len(agreement.activity_ids) == 1
    for activity in records.activities:
        assert activity.state == "Terminated"
        assert [c.command.split()[0] for c in activity.commands][:3] == ["deploy", "start", "run"]
        assert all(c.ok for c in activity.commands)
        assert activity.vpn_connections == 1
    assert all(vm.terminated for vm in vm_factory.vms)

    # Payments: debit notes accepted by yapapi are recorded as accepted, with the amounts it saw.
    accepted_by_yapapi = {
        e.debit_note.debit_note_id: Decimal(e.debit_note.total_amount_due) for e in log.of(events.DebitNoteAccepted)
    }
    accepted_here = {d.debit_note_id: d.accepted_amount for d in records.debit_notes if d.accepted}
    assert accepted_by_yapapi == accepted_here
    assert {d.activity_id for d in records.debit_notes if d.accepted} == {a.activity_id for a in records.activities}

    # One invoice per agreement, accepted in full, covering at least what the debit notes said.
    assert len(records.invoices) == 2
    invoiced_by_yapapi = {e.invoice.invoice_id: Decimal(e.invoice.amount) for e in log.of(events.InvoiceAccepted)}
    assert invoiced_by_yapapi == {i.invoice_id: i.accepted_amount for i in records.invoices}
    for invoice in records.invoices:
        assert invoice.accepted and invoice.accepted_amount == invoice.amount
        notes = [d.amount for d in records.debit_notes if d.agreement_id == invoice.agreement_id]
        assert invoice.amount >= max(notes)
        provider = next(p for p in records.providers if p.provider_id == invoice.provider_id)
        assert invoice.amount > provider.start_price_glm
    for totals in records.totals:
        assert totals.invoices_accepted == totals.invoiced

    # Clean shutdown: the allocation released, the demand and the network gone.
    assert len(records.allocations) == 1 and records.allocations[0].released_at is not None
    assert all(not s.active for s in sandbox.market.subscriptions.values())
    assert sandbox.networks.networks == {}


async def test_yapapi_meets_a_refused_activity_and_moves_on(make_sandbox: MakeSandbox, gftp_on_path: object) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.ACTIVITY_FAILS])
    log = EventLog()
    payload = GpuPayload(package_url=await resolve_package_url(sandbox.registry_url, image_tag=TAG))
    async with golem_for(sandbox, log) as golem:
        cluster = await golem.run_service(ProbeService, num_instances=1, payload=payload)
        await wait_for(lambda: bool(log.of(events.ActivityCreateFailed)), 15, "ActivityCreateFailed")
        await wait_for(lambda: cluster.instances[0].state == ServiceState.running, 15, "a running instance")
        victim = sandbox.faults.victim(Fault.ACTIVITY_FAILS)
        refused = next(a for a in sandbox.records.agreements.values() if a.provider_id == victim)
        # yapapi 0.13 re-raises before releasing the agreement: it stays open while the cluster runs.
        assert (refused.state, refused.activity_ids) == ("Approved", [])
        running = next(a for a in sandbox.records.agreements.values() if a.activity_ids)
        assert running.provider_id != victim
        cluster.stop()
        await wait_for(lambda: cluster.instances[0].state == ServiceState.terminated, 15, "terminated")
    assert all(a.state == "Terminated" for a in sandbox.records.agreements.values())


async def test_yapapi_sees_a_dead_vm_through_its_batches(
    make_sandbox: MakeSandbox, vm_factory: FakeVmFactory, gftp_on_path: object
) -> None:
    sandbox = await make_sandbox(providers=1, faults=[Fault.VM_DIES])
    log = EventLog()
    payload = GpuPayload(package_url=await resolve_package_url(sandbox.registry_url, image_tag=TAG))
    async with golem_for(sandbox, log) as golem:
        cluster = await golem.run_service(PingerService, num_instances=1, payload=payload)
        await wait_for(
            lambda: bool(cluster.instances) and cluster.instances[0].state == ServiceState.terminated, 20, "death"
        )
        cluster.stop()
    (activity,) = sandbox.records.activities.values()
    assert (activity.state, activity.reason) == ("Terminated", "the VM died")
    assert vm_factory.vms[0].killed
    (agreement,) = sandbox.records.agreements.values()
    assert (agreement.state, agreement.terminated_by) == ("Terminated", "Requestor")
    (invoice,) = sandbox.records.invoices.values()
    assert invoice.accepted
    # Usage stopped when the VM died: the invoice bills no more than up to then (plus the start price).
    provider = sandbox.providers[0].spec.pricing
    assert activity.terminated_at is not None
    lived = (activity.terminated_at - activity.created_at).total_seconds()
    assert invoice.amount <= provider.cost(lived + 0.01, lived + 0.01)
