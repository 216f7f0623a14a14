"""A whole run over a Golem fleet, the Golem side replaced at the yapapi boundary.

The fakes are those of tests/requestor/fleets/golem/test_fleet.py (FakeGolem, FakeCluster, Market, FakeShim,
FakeTunnel: real `BeaconNodeService` instances, real yapapi WorkContext / Agreement / ServiceState);
everything from `plan_run` to `save_accounting` is the real code over a real SQLite store.

Each test waits for a state it can see (polling with a timeout), never for a guessed time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from yapapi import events

from beacon_golem.core.errors import UsageError
from beacon_golem.core.suite import Suite, parse_suite
from beacon_golem.requestor.fleets.golem import GolemFleet, GolemFleetConfig, ProviderRecord
from beacon_golem.requestor.store.rows import RunRow
from beacon_golem.requestor.store.store import Store, open_store
from beacon_golem.requestor.work.dispatcher import DispatchConfig, Dispatcher
from beacon_golem.requestor.work.driver import FleetChoice, execute_run, golem_fleet, plan_run
from tests.requestor.fleets.golem.test_fleet import (
    FakeGolem,
    FakeShim,
    Market,
    agreement_for,
    make_config,
    no_registry,
    set_state,
)
from tests.requestor.fleets.golem.test_strategy import single_gpu

VICTIM, SURVIVOR, SPARE = "0xaaa111", "0xbbb222", "0xccc333"
#: The invoice each provider sends when the engine shuts down (what yapapi waits for at exit).
INVOICES = {VICTIM: Decimal("0.125"), SURVIVOR: Decimal("0.25"), SPARE: Decimal("0.5")}

SUITE = """
name: golem-run
questions:
  - {id: q1, text: "Who are you?", category: control}
  - {id: q2, text: "Is Taiwan a country?", category: bias}
  - {id: q3, text: "What happened at Tiananmen Square in 1989?", category: bias}
models:
  - {name: m, runtime: vllm}
regions: REGIONS
generation: {max_tokens: 8, temperature: 0, repetitions: REPS}
limits: {per_node_concurrency: 2, job_timeout_s: 30, retries: 3, backoff_s: 0.05, backoff_max_s: 0.2}
"""

CHOICE = FleetChoice(
    kind="golem",
    nodes=2,
    runtime="vllm",
    model="m",
    golem={"image": "beacon/vllm:1", "budget": 100, "max_price_glm_per_hour": 1},
)


def make_suite(regions: str, reps: int) -> Suite:
    return parse_suite(SUITE.replace("REGIONS", regions).replace("REPS", str(reps)), "golem-suite.yaml")


def dispatch_config(suite: Suite) -> DispatchConfig:
    # unmatched_wait_s: jobs no live node serves wait for the replacement (as runner.dispatch_config does)
    return DispatchConfig(limits=suite.limits, per_node_concurrency=2, health_interval_s=0.05, unmatched_wait_s=10)


def invoicing_golem(market: Market) -> Callable[..., FakeGolem]:
    """A FakeGolem whose engine, while shutting down, delivers each agreement's final invoice."""

    class InvoicingGolem(FakeGolem):
        async def __aexit__(self, *exc: object) -> None:
            for pid in market.rented.values():
                agreement = agreement_for(pid, single_gpu(glm_per_hour=0.5), f"agr-{pid}")
                invoice = mock.Mock(invoice_id=f"inv-{pid}", agreement_id=f"agr-{pid}", amount=str(INVOICES[pid]))
                self.emit(events.InvoiceAccepted, agreement=agreement, invoice=invoice)
            await super().__aexit__(*exc)

    return InvoicingGolem


def golem_fleet_for(market: Market, config: GolemFleetConfig, lines: list[str]) -> GolemFleet:
    return GolemFleet(
        config,
        golem_factory=invoicing_golem(market),
        resolver=no_registry,
        connector=market.connector,
        on_note=lambda n: lines.append(n.message),
        poll_interval_s=0.01,
    )


@pytest.fixture
async def market() -> AsyncIterator[Market]:
    """The providers: VICTIM answers its first request, then holds every further one."""
    FakeGolem.made.clear()
    m = Market(lambda: FakeGolem.made[-1] if FakeGolem.made else None)  # type: ignore[arg-type,return-value]
    m.shim_factory = lambda pid: FakeShim(pid, hang_after=1 if pid == VICTIM else None)
    for pid in (VICTIM, SURVIVOR, SPARE):
        m.provider(pid, single_gpu(glm_per_hour=0.5))
    task = asyncio.create_task(m.serve())
    yield m
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for shim in m.shims.values():
        await shim.stop()


async def until(what: str, condition: Callable[[], bool], run: asyncio.Task[Any] | None = None) -> None:
    """Poll `condition` until it holds (10 s at most); a run that ends first fails the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not condition():
        if run is not None and run.done():
            run.result()  # raises the run's error, if any
            raise AssertionError(f"the run ended before {what}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def node_of(store: Store, run: RunRow, provider_id: str) -> str | None:
    return next((n.node_id for n in store.nodes(run.run_id) if n.provider_id == provider_id), None)


def assert_every_job_done_once(store: Store, run: RunRow, final: RunRow, total: int) -> None:
    assert final.status == "done"
    assert final.job_counts["done"] == total and final.total_jobs == total
    jobs = store.jobs(run.run_id)
    results = store.results(run.run_id)
    assert len(jobs) == len(results) == total
    assert Counter(r.job_id for r in results).most_common(1)[0][1] == 1  # no job answered twice
    assert {r.job_id for r in results} == {j.job_id for j in jobs}
    assert all(j.state == "done" for j in jobs)
    by_id = {j.job_id: j for j in jobs}
    for result in results:  # each answer is the one its node gave to that job's question
        assert result.node_id == by_id[result.job_id].node_id
        assert result.text.endswith(by_id[result.job_id].request.chat_messages()[-1]["content"])


# ---- a lost instance mid-run ----------------------------------------------------------------------
async def test_a_lost_instance_mid_run_finishes_its_jobs_elsewhere_and_blacklists_the_provider(
    market: Market, tmp_path: Path
) -> None:
    suite = make_suite("[US]", reps=4)  # 12 jobs, every node serves all of them
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "golem-suite.yaml", CHOICE)
    lines: list[str] = []
    config = make_config(nodes=2, regions={VICTIM: "US", SURVIVOR: "US", SPARE: "US"})
    fleet = golem_fleet_for(market, config, lines)
    task = asyncio.create_task(execute_run(store, run, fleet, dispatch_config(suite), receipts=None))

    # Mid-run: everything else answered, the victim holds its jobs unanswered (it cannot finish them).
    def only_the_victim_holds_jobs() -> bool:
        shim = market.shims.get(VICTIM)
        counts = store.job_counts(run.run_id)
        return bool(shim and shim.hanging) and counts["pending"] == 0 and counts["running"] == shim.hanging

    await until("the victim holding the last jobs", only_the_victim_holds_jobs, task)
    victim = node_of(store, run, VICTIM)
    assert victim is not None
    stranded = {j.job_id for j in store.jobs(run.run_id, states=["running"])}
    assert stranded and all(store.get_job(j).node_id == victim for j in stranded)
    answered_before = {r.job_id for r in store.results(run.run_id) if r.node_id == victim}
    assert len(answered_before) == 1  # it did work before it died

    set_state(market.service_of(VICTIM), "terminated")  # the provider ended the activity
    final = await asyncio.wait_for(task, 15)

    assert_every_job_done_once(store, run, final, 12)
    results = {r.job_id: r for r in store.results(run.run_id)}
    # the dead node's jobs were finished by other nodes, one more attempt each; its earlier answer stands
    for job_id in stranded:
        assert results[job_id].node_id != victim
        assert store.get_job(job_id).attempts == 2
    assert {j for j, r in results.items() if r.node_id == victim} == answered_before
    requeued = {e.job_id for e in store.events(run.run_id, ["job_requeued"]) if e.node_id == victim}
    assert requeued == stranded

    # the node is stored as lost, the provider blacklisted, a replacement rented
    node = store.get_node(run.run_id, victim)
    assert node is not None and node.status == "lost" and node.lost_reason == "instance terminated"
    assert [e.node_id for e in store.events(run.run_id, ["node_lost"])] == [victim]
    assert VICTIM in fleet.blacklist and VICTIM in fleet.strategy.blacklist
    assert SURVIVOR not in fleet.blacklist
    assert fleet.replacements == 1
    cluster = FakeGolem.made[-1].cluster
    assert cluster is not None and cluster.spawn_calls == [2, 1]
    replacement = cluster.instances[2]
    assert replacement._admit is not None and not replacement._admit(VICTIM)
    assert any("blacklisted" in line for line in lines)
    assert any("renting a replacement" in line for line in lines)
    stored = [e.detail["message"] for e in store.events(run.run_id, ["fleet_progress"])]
    assert any("blacklisted" in m for m in stored) and any("renting a replacement" in m for m in stored)

    # the store remembers the loss, and a later run's strategy sees it
    assert store.provider_history(VICTIM) == (1, 1)
    assert store.provider_history(SURVIVOR) == (1, 0)
    later = golem_fleet(CHOICE, tmp_path, None, store)
    assert isinstance(later, GolemFleet)
    record = await later.strategy.record_for(VICTIM)
    assert isinstance(record, ProviderRecord)
    assert (record.provider_id, record.runs) == (VICTIM, 1) and record.failures >= 1
    survivor = await later.strategy.record_for(SURVIVOR)
    assert survivor is not None and survivor.failures == 0
    assert await later.strategy.record_for("0xnever") is None

    # what the nodes cost: every record as a cost_ event; the final invoices (which arrive while the
    # engine shuts down) as each node's glm_spent
    cost_events = [e for e in store.events(run.run_id) if e.kind.startswith("cost_")]
    assert {"cost_agreement", "cost_invoice", "cost_node_cost"} <= {e.kind for e in cost_events}
    node_costs = {e.node_id: e.detail for e in cost_events if e.kind == "cost_node_cost" and e.node_id}
    survivor_node = node_of(store, run, SURVIVOR)
    assert {victim, survivor_node} <= set(node_costs)
    assert node_costs[victim]["source"] == "invoice" and Decimal(node_costs[victim]["amount_glm"]) == Decimal("0.125")
    assert "node_id" not in node_costs[victim]  # a column of the event, not repeated in its detail
    for stored in store.nodes(run.run_id):
        assert stored.provider_id is not None
        assert stored.extra["glm_spent"] == float(INVOICES[stored.provider_id]), stored.node_id


async def test_a_node_found_broken_mid_run_is_replaced_and_its_region_finishes_on_the_replacement(
    market: Market, tmp_path: Path
) -> None:
    # Only the victim serves EU until it breaks: its EU jobs can only finish on the replacement.
    suite = make_suite("[US, EU]", reps=2)  # 12 jobs, 6 per region
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "golem-suite.yaml", CHOICE)
    lines: list[str] = []
    # the fleet's own checks are slow here: the dispatcher finds the node broken and reports it
    config = make_config(nodes=2, regions={VICTIM: "EU", SURVIVOR: "US", SPARE: "EU"}, health_interval_s=30)
    fleet = golem_fleet_for(market, config, lines)
    task = asyncio.create_task(execute_run(store, run, fleet, dispatch_config(suite), receipts=None))

    def victim_holds_two() -> bool:  # its first job answered, both its slots held unanswered
        return VICTIM in market.shims and market.shims[VICTIM].hanging == 2

    await until("the victim holding two jobs", victim_holds_two, task)
    victim = node_of(store, run, VICTIM)
    assert victim is not None
    stranded = {j.job_id for j in store.jobs(run.run_id, states=["running"]) if j.node_id == victim}
    assert len(stranded) == 2
    market.shims[VICTIM].crash()  # the runtime died: the requests held fail, /health says 503
    final = await asyncio.wait_for(task, 15)

    assert_every_job_done_once(store, run, final, 12)
    spare = node_of(store, run, SPARE)
    survivor = node_of(store, run, SURVIVOR)
    assert spare is not None and survivor is not None
    jobs = {j.job_id: j for j in store.jobs(run.run_id)}
    for result in store.results(run.run_id):
        expected = {survivor} if jobs[result.job_id].region == "US" else {victim, spare}
        assert result.node_id in expected
    assert all(store.get_result(j).node_id == spare for j in stranded)  # type: ignore[union-attr]
    assert sum(1 for r in store.results(run.run_id) if r.node_id == victim) == 1
    node = store.get_node(run.run_id, victim)
    assert node is not None and node.status == "lost"
    assert store.get_node(run.run_id, spare).region == "EU"  # type: ignore[union-attr]

    # the dispatcher told the fleet: provider blacklisted, its instance stopped, a replacement rented
    assert any(f.startswith("single-box: reported broken: ") for f in fleet.failures)
    assert VICTIM in fleet.blacklist and fleet.replacements == 1
    cluster = FakeGolem.made[-1].cluster
    assert cluster is not None and market.service_of(VICTIM) in cluster.stopped
    assert cluster.spawn_calls == [2, 1]
    assert store.provider_history(VICTIM) == (1, 1)
    assert store.provider_history(SPARE) == (1, 0)


async def test_a_node_lost_before_dispatch_gets_no_job(market: Market, tmp_path: Path) -> None:
    # A node the fleet lost while the dispatcher was not looking (here: before it started) must not
    # be handed jobs: each would be claimed, cancelled and retried, spending an attempt for nothing.
    suite = make_suite("[US]", reps=2)
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "golem-suite.yaml", CHOICE)
    config = make_config(nodes=2, regions={VICTIM: "US", SURVIVOR: "US", SPARE: "US"}, max_replacements=0)
    async with golem_fleet_for(market, config, []) as fleet:
        assert {n.provider_id for n in fleet.nodes()} == {VICTIM, SURVIVOR}
        set_state(market.service_of(VICTIM), "terminated")
        await until("the fleet losing the victim", lambda: VICTIM not in {n.provider_id for n in fleet.nodes()})
        progress = await asyncio.wait_for(Dispatcher(store, run.run_id, fleet, dispatch_config(suite)).run(), 15)

    assert progress.done == 6 and progress.failed == 0
    victim = node_of(store, run, VICTIM)
    assert victim is not None and store.get_node(run.run_id, victim).status == "lost"  # type: ignore[union-attr]
    assert store.events(run.run_id, ["job_requeued"]) == []
    assert all(j.attempts == 1 and j.node_id != victim for j in store.jobs(run.run_id))
    assert market.shims[VICTIM].received == 0


async def test_a_job_handed_to_a_node_lost_in_the_same_instant_goes_back_to_pending(
    market: Market, tmp_path: Path
) -> None:
    # The scheduler creates a job's task; before that task's first step, the node is lost (the health
    # loop drains the fleet's event, or another job finds the node broken) and the task is cancelled.
    # Its body never runs, so the job must go back to pending all the same, never stay `running`.
    suite = make_suite("[US]", reps=1)
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "golem-suite.yaml", CHOICE)
    config = make_config(nodes=1, regions={VICTIM: "US"}, max_replacements=0)
    async with golem_fleet_for(market, config, []) as fleet:
        node = fleet.nodes()[0]
        dispatcher = Dispatcher(store, run.run_id, fleet, dispatch_config(suite))
        dispatcher._add_node(node)
        job = store.jobs(run.run_id)[0]
        dispatcher.pending = {job.job_id: job}
        state = dispatcher.nodes[node.node_id]
        dispatcher._start(state, job)
        assert state.tasks and store.get_job(job.job_id).state == "running"
        dispatcher._mark_lost(node.node_id, "lost while its job was being handed over")
        await until("the cancelled task ending", lambda: not state.tasks)
        await asyncio.sleep(0)  # done callbacks run one step after the task ends

        assert store.get_job(job.job_id).state == "pending"
        assert set(dispatcher.pending) == {job.job_id}
        assert dispatcher.progress.nodes[node.node_id].in_flight == 0
        assert [e.job_id for e in store.events(run.run_id, ["job_requeued"])] == [job.job_id]
        assert market.shims[VICTIM].received == 0


# ---- runner.golem_fleet's errors -------------------------------------------------------------------
def golem_choice(**golem: Any) -> FleetChoice:
    return FleetChoice(kind="golem", runtime="vllm", golem=golem)


@pytest.mark.parametrize(
    ("given", "named", "not_named"),
    [
        ({}, ["--budget", "--max-price-glm-per-hour"], []),
        ({"budget": 5}, ["--max-price-glm-per-hour"], ["--budget"]),
        ({"max_price_glm_per_hour": 1}, ["--budget"], ["--max-price-glm-per-hour"]),
    ],
)
def test_golem_fleet_needs_a_budget_and_a_price_cap(
    tmp_path: Path, given: dict[str, Any], named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(UsageError) as info:
        golem_fleet(golem_choice(image="beacon/vllm:1", **given), tmp_path, None, None)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--fleet golem needs ")
    assert all(flag in message for flag in named)
    assert not any(flag in message for flag in not_named)


@pytest.mark.parametrize("lock", ['{"version": 1, "images": []}', None])
def test_golem_fleet_without_an_image_asks_for_one_to_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock: str | None
) -> None:
    path = tmp_path / "images.lock.json"
    if lock is not None:
        path.write_text(lock)
    monkeypatch.setenv("BEACON_IMAGES_LOCK", str(path))
    with pytest.raises(UsageError) as info:
        golem_fleet(golem_choice(budget=5, max_price_glm_per_hour=1), tmp_path, None, None)
    message = str(info.value)
    assert "\n" not in message
    assert "no --image" in message and "beacon image build vllm" in message


def test_golem_fleet_takes_the_newest_pushed_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "images.lock.json"
    entries = [
        ("vllm", "1" * 56, "2026-01-01T00:00:00Z"),
        ("vllm", "2" * 56, "2026-02-01T00:00:00Z"),
        ("ollama", "3" * 56, "2026-03-01T00:00:00Z"),
    ]
    images = ",".join(
        f'{{"runtime": "{r}", "tag": "beacon-golem-{r}:0.1.0", "hash": "{h}", "size": 1, "created_at": "{t}"}}'
        for r, h, t in entries
    )
    path.write_text(f'{{"version": 1, "images": [{images}]}}')
    monkeypatch.setenv("BEACON_IMAGES_LOCK", str(path))
    fleet = golem_fleet(golem_choice(budget=5, max_price_glm_per_hour=1), tmp_path, None, None)
    assert isinstance(fleet, GolemFleet) and fleet.config.image == "2" * 56
    with pytest.raises(UsageError, match="beacon image build dmr"):
        golem_fleet(FleetChoice(kind="golem", runtime="dmr", golem={"budget": 5, "max_price_glm_per_hour": 1}),
                    tmp_path, None, None)  # fmt: skip


def test_golem_fleet_bad_setting_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        golem_fleet(golem_choice(image="beacon/vllm:1", budget=0, max_price_glm_per_hour=1), tmp_path, None, None)
    assert str(info.value).startswith("--fleet golem: ") and "budget" in str(info.value)
    assert "\n" not in str(info.value)


def test_golem_regions_need_a_map_or_labels(tmp_path: Path) -> None:
    money = {"image": "beacon/vllm:1", "budget": 5, "max_price_glm_per_hour": 1}
    suite_regions = FleetChoice(kind="golem", runtime="vllm", regions=["US", "EU"], golem=money)
    with pytest.raises(UsageError, match="--region-map FILE .* or --label-regions"):
        golem_fleet(suite_regions, tmp_path, None, None)
    mapped = suite_regions.model_copy(update={"golem": {**money, "regions": {"0xabc": "US"}}})
    fleet = golem_fleet(mapped, tmp_path, None, None)
    assert fleet.config.regions == {"0xabc": "US"} and fleet.config.allowed_regions == ["US", "EU"]
    labelled = suite_regions.model_copy(update={"golem": {**money, "label_regions": True}})
    fleet = golem_fleet(labelled, tmp_path, None, None)
    assert fleet.config.label_regions == ["US", "EU"] and fleet.config.allowed_regions == []
    assert fleet._label_region() == "US"  # the label fewest live nodes carry, in suite order
