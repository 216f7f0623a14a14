"""What the Golem scenarios share: a sandbox whose VMs run the real node image, a run through the
driver against it, and readers for what the store and the sandbox each say happened.

Everything is the real code path: an in-process `Sandbox` with its namespace VMs (vm.py) running
vm_images/common/start-node.sh with the tiny model baked in, the unmodified yapapi engine that
`GolemFleet` drives, the fleet built by `requestor/work/driver.py` from the environment the
sandbox hands out (as `beacon golem sandbox` prints it), a real SQLite store and `execute_run`.
Only the clocks are short: the sandbox's delays and the fleet's timing knobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from beacon_golem.core.config import load_settings
from beacon_golem.requestor.fleets.golem.fleet import GolemFleet
from beacon_golem.requestor.store.rows import EventRow, JobRow, NodeRow, ResultRow, RunRow
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.driver import execute_run, prepare_run
from beacon_golem.sandbox.faults import Fault, FaultSettings
from beacon_golem.sandbox.image import build_image
from beacon_golem.sandbox.market import MarketSettings
from beacon_golem.sandbox.payment import PaymentSettings
from beacon_golem.sandbox.providers import ProviderSettings
from beacon_golem.sandbox.records import AgreementRecord, InvoiceRecord, RecordsSnapshot
from beacon_golem.sandbox.registry import RegistryImage
from beacon_golem.sandbox.server import Sandbox, SandboxConfig

TAG = "beacon/node-llamacpp:e2e"

MARKET = MarketSettings(offer_delay_s=0.01, negotiation_delay_s=0.01, approval_delay_s=0.01, reoffer_after_s=0.2)
PAYMENT = PaymentSettings(debit_note_interval_s=0.5, invoice_delay_s=0.1)
#: vm-dies and provider-terminates hit 5 s after a node's first VPN connection (the fault's clock
#: starts at `start` and moves there: 5 s is longer than a node takes to load, 1 to 3 s here, so it
#: dies as a node, mid-run); a slow deploy outlasts `SLOW_DEPLOY_TIMEOUT_S`; late invoices come
#: after yapapi stopped waiting for them (30 s).
FAULTS = FaultSettings(
    vm_dies_after_s=5.0,
    provider_terminates_after_s=5.0,
    slow_deploy_s=60.0,
    late_invoice_delay_s=35.0,
    vpn_flaky_failures=2,
    expensive_factor=50.0,
)
SLOW_DEPLOY_TIMEOUT_S = 4.0

#: The fleet's settings, its clocks short: each a `GolemFleetConfig` field, passed as `--fleet golem` settings.
FAST_GOLEM: dict[str, Any] = {
    "budget": 5,
    "max_price_glm_per_hour": 1,
    "label_regions": True,
    "duration_s": 900,
    "min_time_left_s": 0,
    "health_interval_s": 2,
    "start_poll_s": 0.5,
    "connect_backoff_s": 0.25,
    "connect_attempts": 5,
    "start_timeout_s": 30,
    "deploy_timeout_s": 30,
    "ready_timeout_s": 40,
    "shutdown_grace_s": 30,
}


def write_suite(
    path: Path,
    *,
    questions: int = 3,
    repetitions: int = 1,
    max_tokens: int = 8,
    concurrency: int = 2,
    regions: Iterable[str] = ("US", "EU"),
) -> Path:
    """A small suite on the tiny model: questions x regions x repetitions jobs."""
    suite = {
        "name": "golem-sandbox-e2e",
        "questions": [{"id": f"q{i}", "category": "control", "text": f"Count to {i + 2}."} for i in range(questions)],
        "models": [{"name": "beacon-tiny", "runtime": "llamacpp"}],
        "regions": list(regions),
        "generation": {"max_tokens": max_tokens, "temperature": 0.0, "seed": 7, "repetitions": repetitions},
        "limits": {
            "per_node_concurrency": concurrency,
            "job_timeout_s": 60,
            "retries": 3,
            "backoff_s": 0.2,
            "backoff_max_s": 1,
        },
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def sandbox_image(tiny_model_file: Path) -> RegistryImage:
    """The llamacpp node image with the tiny model baked in (what `beacon golem sandbox` serves)."""
    return RegistryImage(tag=TAG, data=build_image("llamacpp", model_path=tiny_model_file))


StartSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def golem_sandbox(
    tmp_path: Path,
    sandbox_image: RegistryImage,
    monkeypatch: pytest.MonkeyPatch,
    gftp_on_path: Path,
    namespaces: None,
) -> AsyncIterator[StartSandbox]:
    """start(providers=3, faults=(), seed=0, **fault_settings) -> a serving sandbox whose env (as
    `beacon golem sandbox` prints it) is set, with a data dir of this test's own; stopped afterwards."""
    started: list[Sandbox] = []
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))

    async def start(providers: int = 3, faults: Iterable[Fault] = (), seed: int = 0, **fault_settings: Any) -> Sandbox:
        config = SandboxConfig(
            workdir=tmp_path / f"sandbox-{len(started)}",
            providers=ProviderSettings(count=providers, seed=seed),
            faults=list(faults),
            image_tag=TAG,
            market=MARKET,
            payment=PAYMENT,
            fault_settings=FAULTS.model_copy(update=fault_settings),
        )
        sandbox = Sandbox(config, images=[sandbox_image])  # the default VM factory: namespace VMs
        await sandbox.start()
        started.append(sandbox)
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        return sandbox

    yield start
    for sandbox in reversed(started):
        await sandbox.stop()
    for sandbox in started:  # every VM freed its files, whatever the run did
        assert not list(sandbox.workdir.glob("*/volumes")), "a VM left its volumes behind"


@dataclass
class Outcome:
    """One run against a sandbox: what the store says and what the sandbox's records say."""

    sandbox: Sandbox
    store: Store
    run: RunRow
    fleet: GolemFleet
    error: BaseException | None = None
    records: RecordsSnapshot = field(init=False)

    def __post_init__(self) -> None:
        self.records = self.sandbox.snapshot()

    # ---- the store ---------------------------------------------------------------------------
    def jobs(self) -> list[JobRow]:
        return self.store.jobs(self.run.run_id)

    def results(self) -> list[ResultRow]:
        return self.store.results(self.run.run_id)

    def nodes(self) -> list[NodeRow]:
        return self.store.nodes(self.run.run_id)

    def events(self, *kinds: str) -> list[EventRow]:
        return self.store.events(self.run.run_id, list(kinds) if kinds else None)

    def progress(self) -> list[str]:
        return [e.detail["message"] for e in self.events("fleet_progress")]

    def job_states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs():
            out[job.state] = out.get(job.state, 0) + 1
        return out

    def stored_cost(self) -> dict[str, Decimal]:
        """agreement id -> the cost the store keeps for it (its `cost_node_cost` event), exact."""
        return {e.detail["agreement_id"]: Decimal(e.detail["amount_glm"]) for e in self.events("cost_node_cost")}

    # ---- the sandbox ---------------------------------------------------------------------------
    def agreements(self, provider_id: str | None = None) -> list[AgreementRecord]:
        return [a for a in self.records.agreements if provider_id is None or a.provider_id == provider_id]

    def approved(self, provider_id: str | None = None) -> list[AgreementRecord]:
        """Agreements the provider approved (a rejected or never-confirmed proposal rents nothing)."""
        return [a for a in self.agreements(provider_id) if a.approved_at is not None]

    def invoices(self, agreement_id: str) -> list[InvoiceRecord]:
        return [i for i in self.records.invoices if i.agreement_id == agreement_id]

    def accepted(self, agreement_id: str) -> Decimal:
        """What the requestor accepted to pay for one agreement: its invoice, else its debit notes."""
        invoices = [i for i in self.invoices(agreement_id) if i.accepted]
        if invoices:
            return sum((i.accepted_amount or Decimal(0) for i in invoices), Decimal(0))
        latest: dict[str, Decimal] = {}
        for note in sorted(self.records.debit_notes, key=lambda n: n.issued_at):
            if note.agreement_id == agreement_id and note.accepted:
                latest[note.activity_id] = note.accepted_amount or Decimal(0)
        return sum(latest.values(), Decimal(0))

    def faults_hit(self, fault: Fault) -> set[str]:
        return {f.provider_id for f in self.records.faults if f.fault == fault.value}

    def victim(self, fault: Fault) -> str:
        victims = self.faults_hit(fault)
        assert len(victims) == 1, f"{fault.value} hit {victims or 'no provider'}"
        return victims.pop()


async def run_on_sandbox(
    sandbox: Sandbox, suite: Path, *, nodes: int = 3, expect_error: bool = False, **golem: Any
) -> Outcome:
    """`beacon run SUITE --fleet golem --nodes N ...` as the CLI runs it (prepare_run, execute_run),
    in this process, with `golem` over `FAST_GOLEM`. The sandbox's records are read once it ended."""
    settings = load_settings()
    given = {"kind": "golem", "nodes": nodes, "golem": {**FAST_GOLEM, **golem}}
    prepared = prepare_run(settings, given, suite_path=suite)
    assert isinstance(prepared.fleet, GolemFleet)
    error: BaseException | None = None
    try:
        await asyncio.wait_for(
            execute_run(prepared.store, prepared.run, prepared.fleet, prepared.config, prepared.receipts,
                        lock=prepared.lock),
            timeout=240,
        )  # fmt: skip
    except Exception as exc:
        if not expect_error:
            raise
        error = exc
    run = prepared.store.get_run(prepared.run.run_id)
    return Outcome(sandbox=sandbox, store=prepared.store, run=run, fleet=prepared.fleet, error=error)


def assert_done_once(outcome: Outcome) -> None:
    """Every job done, with exactly one stored result, signed."""
    jobs = outcome.jobs()
    results = outcome.results()
    assert {j.state for j in jobs} == {"done"}, outcome.job_states()
    assert sorted(r.job_id for r in results) == sorted(j.job_id for j in jobs)  # one result per job
    assert all(r.receipt is not None for r in results)


def assert_costs_match(outcome: Outcome) -> None:
    """What the store says each agreement cost equals what the requestor accepted per the
    sandbox; each node's `glm_spent` is its agreement's; the store keeps every agreement, debit
    note and invoice the sandbox recorded for this requestor."""
    approved = {a.agreement_id for a in outcome.approved()}
    stored = outcome.stored_cost()
    assert set(stored) == approved
    for agreement_id in approved:
        assert stored[agreement_id] == outcome.accepted(agreement_id), agreement_id
    for node in outcome.nodes():
        agreement_id = node.extra["agreement_id"]
        assert abs(Decimal(str(node.extra["glm_spent"])) - outcome.accepted(agreement_id)) < Decimal("1e-8")
    issued = {i.invoice_id: i for i in outcome.records.invoices}
    for event in outcome.events("cost_invoice"):
        invoice = issued[event.detail["invoice_id"]]
        assert Decimal(event.detail["amount_glm"]) == invoice.amount
        assert event.detail["accepted"] == invoice.accepted
    assert {e.detail["invoice_id"] for e in outcome.events("cost_invoice") if e.detail["accepted"]} == {
        i.invoice_id for i in outcome.records.invoices if i.accepted
    }
    notes = {n.debit_note_id: n for n in outcome.records.debit_notes}
    for event in outcome.events("cost_debit_note"):
        note = notes[event.detail["debit_note_id"]]
        assert Decimal(event.detail["amount_glm"]) == note.amount
        assert event.detail["accepted"] == note.accepted
    assert {e.detail["debit_note_id"] for e in outcome.events("cost_debit_note") if e.detail["accepted"]} == {
        n.debit_note_id for n in outcome.records.debit_notes if n.accepted
    }
