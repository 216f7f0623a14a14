"""`beacon compare --fleet golem` against the sandbox: the runtimes of one comparison on one rented
provider, a provider lost mid-comparison; and `beacon run --fleet golem --runtime auto` giving a
replacement its own provider's choice, as the first node got its own.

The real path (tests/e2e/golem_sandbox.py): the unmodified yapapi engine driven by `GolemFleet`,
namespace VMs running the real start script (`beacon node up`) with the tiny model, the fleet built
by the driver from the sandbox's environment, `compare_fleet` as `beacon compare` calls it, a real
store. Two settings of llama.cpp stand for two runtimes: the node switches between them in the VM
(POST /runtime) as it would between Ollama, vLLM and the rest in the image that holds them all.
Each test asserts on both the store and the sandbox's own records. The sweep is tiny: what is
tested is where the figures come from and where they are kept, not their values.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import beacon_golem.cli.compare  # noqa: F401  (registers `beacon compare`)
import beacon_golem.cli.report  # noqa: F401  (registers `beacon report`)
import beacon_golem.requestor.work.compare as compare_module
from beacon_golem.cli import app
from beacon_golem.core.bench import PromptSpec
from beacon_golem.core.compare import ComparisonPlan, Price, RuntimeTrial, RuntimeVariant
from beacon_golem.core.config import load_settings
from beacon_golem.core.node import StartupTimes
from beacon_golem.core.profiles import SweepProfile
from beacon_golem.core.suite import PerfSection
from beacon_golem.reports.comparison import JSON_FIELDS
from beacon_golem.requestor.fleets.golem.fleet import GolemFleet
from beacon_golem.requestor.store.store import DB_FILENAME, Store
from beacon_golem.requestor.work.driver import FleetChoice, execute_run, prepare_run
from beacon_golem.requestor.work.perf_phase import perf_suite
from beacon_golem.sandbox.faults import Fault
from beacon_golem.sandbox.server import Sandbox
from tests.e2e.golem_sandbox import (
    FAST_GOLEM,
    Outcome,
    StartSandbox,
    assert_done_once,
    golem_sandbox,  # noqa: F401  (a fixture)
    sandbox_image,  # noqa: F401  (a fixture)
    write_suite,
)
from tests.requestor.test_recommend import bench
from tests.sandbox.vm_fixtures import namespaces, tiny_model_file  # noqa: F401  (fixtures)

VARIANTS = ("llamacpp:parallel=1", "llamacpp:parallel=2")
#: Two levels of four short requests per runtime: each runtime's phase takes well under a second here.
SECTION = PerfSection(profile=SweepProfile(concurrencies=[1, 2], num_prompts=4),
                      prompts=PromptSpec(input_len=16, output_len=8), parallel=False)  # fmt: skip


async def compare_on_sandbox(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, idle_s: float = 0.0, **golem: Any
) -> Outcome:
    """`beacon compare --runtimes llamacpp:parallel=1,llamacpp:parallel=2 --fleet golem --nodes 1 --budget 2
    --max-price-glm-per-hour 1` as the CLI runs it (compare_fleet), in this process, the fleet's clocks short."""
    built: list[GolemFleet] = []
    build = compare_module.build_fleet

    def keep(*args: Any, **kwargs: Any) -> Any:
        fleet = build(*args, **kwargs)
        built.append(fleet)
        return fleet

    monkeypatch.setattr(compare_module, "build_fleet", keep)
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in VARIANTS], beacon_concurrency=2, idle_s=idle_s,
                          drop_page_cache=False)  # fmt: skip
    choice = FleetChoice(kind="golem", nodes=1, golem={**FAST_GOLEM, "budget": 2, **golem})
    store, run, _ = await asyncio.wait_for(
        compare_module.compare_fleet(load_settings(), plan, SECTION, choice, db=tmp_path / "beacon.db"), 120
    )
    (fleet,) = built
    assert isinstance(fleet, GolemFleet)
    return Outcome(sandbox=sandbox, store=store, run=run, fleet=fleet)


def show_json(db: Path, run_id: str) -> dict[str, Any]:
    """`beacon compare show RUN --json`."""
    result = CliRunner().invoke(app, ["compare", "show", run_id, "--json", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_cost_stored(outcome: Outcome, agreement_id: str) -> None:
    """The store keeps what the requestor accepted to pay for the agreement (per the sandbox), and
    the machine's node says so; the per-runtime nodes carry the same agreement, no cost of their own."""
    assert outcome.stored_cost() == {agreement_id: outcome.accepted(agreement_id)}
    assert outcome.accepted(agreement_id) > 0
    (machine,) = [n for n in outcome.nodes() if "/" not in n.node_id]
    assert abs(Decimal(str(machine.extra["glm_spent"])) - outcome.accepted(agreement_id)) < Decimal("1e-8")
    assert {n.extra["agreement_id"] for n in outcome.nodes()} == {agreement_id}


async def test_two_runtimes_compare_on_one_rented_provider_with_its_price(
    golem_sandbox: StartSandbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = await golem_sandbox(providers=2)
    outcome = await compare_on_sandbox(sandbox, tmp_path, monkeypatch)
    run_id = outcome.run.run_id

    assert outcome.run.status == "done"
    # The sandbox: one provider rented, once, one VM for both runtimes; nothing else rented.
    (agreement,) = outcome.approved()
    assert len(outcome.agreements()) == 1 and len(agreement.activity_ids) == 1
    assert agreement.state == "Terminated" and agreement.terminated_by == "Requestor"
    assert outcome.fleet.replacements == 0 and outcome.fleet.blacklist == set()
    # The store: both runtimes measured on that provider, one after the other, in that VM.
    trials = [t.trial for t in outcome.store.trials(run_id)]
    assert [(t.variant, t.status) for t in trials] == [(v, "done") for v in VARIANTS]
    assert {t.provider_id for t in trials} == {agreement.provider_id} and len({t.machine for t in trials}) == 1
    machine = trials[0].machine
    nodes = {n.node_id: n for n in outcome.nodes()}
    assert set(nodes) == {machine, *(f"{machine}/{v}" for v in VARIANTS)}
    assert {n.provider_id for n in nodes.values()} == {agreement.provider_id}
    for p, t in zip((1, 2), trials, strict=True):
        info = nodes[f"{machine}/{t.variant}"].info
        assert info is not None and info.runtime.launch == {"parallel": p} and info.runtime.settings["total_slots"] == p
        assert t.startup is not None and t.startup.stopped_previous_s is not None  # each phase replaced a runtime
        assert t.first_request is not None and t.first_request.ok
        # The provider's price, from its agreement, as the fleet counted it.
        assert t.price is not None and t.price.source == "agreement"
        assert t.price.glm_per_hour == pytest.approx(float(nodes[machine].extra["offer"]["hourly_glm"]))
    benches = {b.bench_id: b for b in outcome.store.bench_results(run_id)}
    assert [benches[t.bench_id].node_id for t in trials] == [t.node_id for t in trials]  # type: ignore[index]
    assert len({json.dumps(b.profile, sort_keys=True) for b in benches.values()}) == 1  # the same sweep for both
    assert_cost_stored(outcome, agreement.agreement_id)
    # Nothing said the node was unhealthy around the switches (the in-VM watch and the fleet's checks).
    assert not any("lost" in m for m in outcome.progress()), outcome.progress()

    # `beacon compare show RUN --json`: both runtimes with their figures, GLM per million tokens, one recommended.
    data = show_json(outcome.store.path, run_id)
    (node,) = data["nodes"]
    assert node["node"] == machine and agreement.provider_id in node["provider"] and node["incomplete"] is None
    (provider,) = [p for p in outcome.records.providers if p.provider_id == agreement.provider_id]
    models = provider.gpu_models  # the offer's GPU: the VM sees none (no GPU in the sandbox)
    assert node["gpu"] == (models[0] if len(models) == 1 else f"{len(models)}x {models[0]}")
    rows = {r["runtime"]: r for r in node["runtimes"]}
    assert list(rows) == list(VARIANTS) and all(tuple(r) == JSON_FIELDS for r in rows.values())
    assert all(r["started"] and r["best_output_throughput"] > 0 and r["ttft_p50_ms_at_1"] > 0 for r in rows.values())
    assert all(r["cold_start_s"] > 0 and r["glm_per_million_tokens"] > 0 for r in rows.values())
    assert sum(r["recommended"] for r in rows.values()) == 1 and rows[node["recommended"]]["recommended"]
    assert rows[node["recommended"]]["reason"].startswith("lowest GLM per million output tokens")
    md = tmp_path / "report.md"
    report = CliRunner().invoke(app, ["report", run_id, "--md", str(md), "--db", str(outcome.store.path)])
    assert report.exit_code == 0, report.output
    assert "## Runtime comparison" in md.read_text()
    outcome.store.close()


async def test_a_provider_lost_mid_comparison_is_reported_lost_and_not_replaced(
    golem_sandbox: StartSandbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VM dies 13 s after its first VPN connection, while the second runtime runs: each phase
    waits 8 s idle for one more request, so the first is done by then (its switch and sweep take
    well under a second here: 4 s to spare for a loaded machine) and the second is not (it ends at
    16 s at the earliest)."""
    sandbox = await golem_sandbox(providers=2, faults=[Fault.VM_DIES], vm_dies_after_s=13.0)
    outcome = await compare_on_sandbox(sandbox, tmp_path, monkeypatch, idle_s=8.0)
    run_id = outcome.run.run_id

    victim = outcome.victim(Fault.VM_DIES)
    assert outcome.run.status == "failed"  # incomplete
    trials = [t.trial for t in outcome.store.trials(run_id)]
    assert [(t.variant, t.status) for t in trials] == [(VARIANTS[0], "done"), (VARIANTS[1], "lost")], trials
    assert {t.provider_id for t in trials} == {victim}
    machine = trials[0].machine
    assert outcome.store.get_node(run_id, machine).status == "lost"  # type: ignore[union-attr]
    # and each runtime's node on it with it: nothing of that machine still reads "alive"
    assert {n.node_id: n.status for n in outcome.nodes() if n.node_id.startswith(machine)} == {
        n.node_id: "lost" for n in outcome.nodes() if n.node_id.startswith(machine)
    }
    assert len([n for n in outcome.nodes() if n.node_id.startswith(machine)]) >= 2
    # Never another machine's figures: nothing rented after it, nothing stored of anyone else.
    (agreement,) = outcome.approved()
    assert agreement.provider_id == victim and len(outcome.agreements()) == 1
    assert outcome.fleet.replacements == 0
    said = outcome.progress()
    assert any(m.startswith("not renting a replacement: a runtime comparison compares the machines it began with")
               for m in said), said  # fmt: skip
    assert {n.provider_id for n in outcome.nodes()} == {victim}
    # Every sweep stored is this machine's (the second's too when the VM died in its idle wait, after
    # its sweep: kept under its own node, never counted for a lost trial).
    benched = [b.node_id for b in outcome.store.bench_results(run_id)]
    assert benched[0] == f"{machine}/{VARIANTS[0]}" and set(benched) <= {f"{machine}/{v}" for v in VARIANTS}
    (activity,) = outcome.records.activities
    assert activity.reason == "the VM died"
    assert_cost_stored(outcome, agreement.agreement_id)  # what it cost until it died is kept

    # The comparison says it is incomplete and why; the lost runtime has no figures.
    data = show_json(outcome.store.path, run_id)
    (node,) = data["nodes"]
    assert node["incomplete"] is not None and node["incomplete"].startswith(
        "incomplete: the provider was lost mid-comparison"
    )
    assert f"{VARIANTS[1]} not measured on it" in node["incomplete"]
    rows = {r["runtime"]: r for r in node["runtimes"]}
    lost = rows[VARIANTS[1]]
    assert lost["best_output_throughput"] is None and not lost["recommended"]
    assert lost["reason"].startswith("the provider was lost mid-comparison")
    first = rows[VARIANTS[0]]
    assert first["best_output_throughput"] > 0 and first["recommended"]
    assert first["reason"].endswith(f"(not measured: {VARIANTS[1]})")
    outcome.store.close()


def store_choices(db: Path, best: dict[str, str]) -> str:
    """An earlier comparison on each provider (`provider id -> the variant that won there`): the
    winner measured at 300 output tok/s, llamacpp:parallel=1 at 100, the same price."""
    section = PerfSection(profile=SweepProfile(concurrencies=[1, 2], num_prompts=8), parallel=False)
    labels = ["llamacpp:parallel=1", *dict.fromkeys(best.values())]
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in labels])
    with Store(db) as store:
        run = store.create_run(perf_suite(section, ["local"]), "tests", [], {"kind": "golem"})
        store.create_comparison(run.run_id, plan)
        for i, (provider_id, winner) in enumerate(best.items()):
            machine = f"golem-0{i}-earlier"
            for label, tput in (("llamacpp:parallel=1", 100.0), (winner, 300.0)):
                row = store.add_bench_result(run.run_id, f"{machine}/{label}", "node", label, {"kind": "sweep"},
                                             bench({1: tput, 2: tput}))  # fmt: skip
                store.record_trial(run.run_id, RuntimeTrial(
                    machine=machine, variant=label, runtime="llamacpp", status="done", bench_id=row.bench_id,
                    provider_id=provider_id, price=Price(glm_per_hour=0.3, source="agreement"),
                    startup=StartupTimes(runtime="llamacpp", launched_at=datetime.now(UTC), health_s=0.2),
                ))  # fmt: skip
        store.finish_run(run.run_id, "done")
        return run.run_id


async def test_under_runtime_auto_a_replacement_gets_its_own_providers_choice_as_the_first_node_did(
    golem_sandbox: StartSandbox,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`beacon run SUITE --fleet golem --nodes 1 --runtime auto`: the first node's VM dies once it
    has been sent 20 HTTP requests (its first contact, probe and switch, then about a dozen jobs),
    mid-run; the replacement (another provider) is switched to what an earlier comparison found
    best on it before it takes a job, as the first node was."""
    sandbox = await golem_sandbox(providers=2, faults=[Fault.VM_DIES], vm_dies_after_requests=20)
    first, second = (p.provider_id for p in sandbox.records.providers)
    settings = load_settings()
    best = {first: "llamacpp:parallel=2", second: "llamacpp:parallel=3"}
    compared = store_choices(settings.data_dir / DB_FILENAME, best)
    suite = write_suite(tmp_path / "suite.yaml", questions=4, repetitions=16, max_tokens=64, regions=["US"])
    prepared = prepare_run(settings, {"kind": "golem", "nodes": 1, "runtime": "auto", "golem": FAST_GOLEM},
                           suite_path=suite)  # fmt: skip
    assert isinstance(prepared.fleet, GolemFleet)
    await asyncio.wait_for(
        execute_run(prepared.store, prepared.run, prepared.fleet, prepared.config, prepared.receipts,
                    lock=prepared.lock),
        timeout=120,
    )  # fmt: skip
    outcome = Outcome(sandbox=sandbox, store=prepared.store, run=prepared.store.get_run(prepared.run.run_id),
                      fleet=prepared.fleet)  # fmt: skip

    victim = outcome.victim(Fault.VM_DIES)
    assert outcome.run.status == "done"
    assert_done_once(outcome)
    assert outcome.fleet.replacements == 1
    nodes = {n.provider_id: n for n in outcome.nodes()}
    assert set(nodes) == {first, second} and nodes[victim].status == "lost"
    for provider_id, node in nodes.items():
        choice = node.extra["runtime_choice"]
        assert (choice["source"], choice["variant"], choice["applied"]) == ("comparison", best[provider_id], True)
        assert choice["basis"] == f"provider {provider_id}" and choice["comparison_run"] == compared
        parallel = int(best[provider_id].rsplit("=", 1)[1])
        assert node.info is not None and node.info.runtime.launch == {"parallel": parallel}
        assert node.info.runtime.settings["total_slots"] == parallel  # what the VM's llama-server says
    chosen = outcome.events("runtime_chosen")
    assert sorted(e.node_id for e in chosen) == sorted(n.node_id for n in nodes.values())  # once each
    replacement = nodes[({first, second} - {victim}).pop()]
    assert any(r.node_id == replacement.node_id for r in outcome.results())  # it served, after its switch
    said = outcome.progress()
    assert sum(m.endswith(": preparing it") for m in said) == 2, said
    outcome.store.close()
