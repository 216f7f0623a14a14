"""`beacon compare` end to end: runtimes one after the other on one machine, stored as one run, shown and reported.

Real parts: llama-server on the generated tiny model (two settings of it as two "runtimes"),
Ollama and Docker Model Runner as the documented-protocol fakes launched as programs by the node
(tests/fakes/serve.py), real shims, a real SQLite store, the real HTML report. Timing is only
asserted where the fakes are told to take it (a 0.3 s model load, 10 ms per token, DMR's idle
unload shortened to 0.4 s); speeds of llama.cpp are never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import beacon_golem.cli.compare  # noqa: F401  (registers `beacon compare`)
import beacon_golem.cli.report  # noqa: F401  (registers `beacon report`)
from beacon_golem.cli import app
from beacon_golem.core.bench import PromptSpec
from beacon_golem.core.compare import ComparisonPlan, RuntimeVariant
from beacon_golem.core.config import load_settings
from beacon_golem.core.profiles import SweepProfile
from beacon_golem.core.suite import PerfSection
from beacon_golem.node.launcher import LocalNode, NodeConfig
from beacon_golem.reports.comparison import JSON_FIELDS
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.compare import compare_fleet
from beacon_golem.requestor.work.driver import FleetChoice
from tests.fakes.dmr import MODEL as DMR_MODEL
from tests.fakes.ollama import MODEL as OLLAMA_MODEL
from tests.fakes.serve import install_fake_runtimes
from tests.support import llama_server_binary

SWEEP = ["--concurrency", "1,2", "--num-prompts", "4", "--input-len", "16", "--output-len", "8"]


def beacon(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env=env)
    return result


def show(db: Path, run_id: str) -> dict[str, Any]:
    result = beacon("compare", "show", run_id, "--json", "--db", str(db))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_id_of(output: str) -> str:
    first = next(line for line in output.splitlines() if line.startswith("run "))
    return first.split()[1]


def entries(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert len(data["nodes"]) == 1
    return {r["runtime"]: r for r in data["nodes"][0]["runtimes"]}


def test_two_llamacpp_settings_compare_on_the_local_fleet_and_the_report_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama_server_binary()
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    db = tmp_path / "beacon.db"
    done = beacon("compare", "--runtimes", "llamacpp:parallel=1,llamacpp:parallel=2", "--fleet", "local", *SWEEP,
                  "--db", str(db), "--beacon-concurrency", "2", "--slo-ttft-ms", "60000", "--keep-page-cache")  # fmt: skip
    assert done.exit_code == 0, done.output
    run_id = run_id_of(done.stdout)
    assert "recommended llamacpp:parallel=" in done.stdout
    data = show(db, run_id)
    rows = entries(data)
    assert list(rows) == ["llamacpp:parallel=1", "llamacpp:parallel=2"]
    assert all(tuple(r) == JSON_FIELDS for r in rows.values())
    assert all(r["started"] and r["best_output_throughput"] > 0 and r["ttft_p50_ms_at_1"] > 0 for r in rows.values())
    assert all(r["cold_start_s"] > 0 and r["model_load_s"] is not None for r in rows.values())
    assert all(r["glm_per_million_tokens"] is None for r in rows.values())  # no price for a local node
    assert sum(r["recommended"] for r in rows.values()) == 1
    assert data["nodes"][0]["recommended"] in rows

    with Store(db, readonly=True) as store:
        run = store.get_run(run_id)
        assert run.status == "done" and run.suite is not None and run.suite.perf is not None
        nodes = {n.node_id: n for n in store.nodes(run_id)}
        assert set(nodes) == {"local-0", "local-0/llamacpp:parallel=1", "local-0/llamacpp:parallel=2"}
        assert nodes["local-0"].probe is not None  # the machine's probe, for the verdicts
        for p in (1, 2):
            info = nodes[f"local-0/llamacpp:parallel={p}"].info
            assert info is not None and info.runtime.launch == {"parallel": p} and info.runtime.settings["total_slots"] == p
        trials = [t.trial for t in store.trials(run_id)]
        assert [(t.variant, t.status, t.settings) for t in trials] == [
            ("llamacpp:parallel=1", "done", {"parallel": 1}), ("llamacpp:parallel=2", "done", {"parallel": 2})]
        for t in trials:
            assert t.startup is not None and t.startup.stopped_previous_s is not None  # each start replaced a runtime
            assert t.first_request is not None and t.first_request.ok and t.weights is not None
            assert t.weights.quantization == "F32" and t.hostname  # the same weights: nothing to warn about
        benches = {b.bench_id: b for b in store.bench_results(run_id)}
        assert [benches[t.bench_id].node_id for t in trials] == [t.node_id for t in trials]  # type: ignore[index]
        # The same prompts, load profile and output lengths for both.
        assert len({json.dumps(b.profile, sort_keys=True) for b in benches.values()}) == 1
        assert {b.result["prompts"]["output_len"] for b in benches.values()} == {8}

    html, md = tmp_path / "r.html", tmp_path / "r.md"
    report = beacon("report", run_id, "--html", str(html), "--md", str(md), "--db", str(db))
    assert report.exit_code == 0, report.output
    page = html.read_text()
    assert '<section id="comparison">' in page and 'href="#comparison"' in page
    for chart in ("throughput", "ttft", "tpot"):
        assert f'id="chart-compare-0-{chart}"' in page
    assert page.count('data-series="llamacpp:parallel=1"') == 3 and page.count('data-series="llamacpp:parallel=2"') == 3
    assert "Wins at each load" in page and "TTFT p50 c=2" in page and '<span class="badge ok">recommended</span>' in page
    assert "## Runtime comparison" in md.read_text()


@pytest.fixture
def fake_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = install_fake_runtimes(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"FAKE_LOAD_S": "0.3", "FAKE_TOKEN_DELAY_S": "0.01", "FAKE_DMR_IDLE_UNLOAD_S": "0.4"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    return bin_dir


def test_ollama_and_dmr_compare_with_cold_start_idle_and_price(tmp_path: Path, fake_runtimes: Path) -> None:
    db = tmp_path / "beacon.db"
    done = beacon(
        "compare", "--runtimes", "ollama:parallel=1,ollama:parallel=2,dmr", "--model-for", f"ollama={OLLAMA_MODEL}",
        "--model-for", f"dmr={DMR_MODEL}", *SWEEP, "--idle-s", "0.6", "--glm-per-hour", "1.5", "--keep-page-cache",
        "--db", str(db), "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)  # with --json, stdout is the JSON alone
    run_id = printed["run_id"]
    assert printed == show(db, run_id)
    rows = entries(printed)
    assert list(rows) == ["ollama:parallel=1", "ollama:parallel=2", "dmr"]
    assert all(r["started"] for r in rows.values())
    # Ollama's own load figure (load_duration of the first request) is the model load.
    for label in ("ollama:parallel=1", "ollama:parallel=2"):
        assert 0.29 <= rows[label]["model_load_s"] < 2.0 and rows[label]["cold_start_s"] >= 0.29
    # DMR has no load figure: answering -> ready says nothing of the lazy load, the cold start does.
    assert rows["dmr"]["model_load_s"] < 0.29 <= rows["dmr"]["cold_start_s"]

    with Store(db, readonly=True) as store:
        trials = {t.trial.variant: t.trial for t in store.trials(run_id)}
        benches = {b.bench_id: b.bench_result() for b in store.bench_results(run_id)}
    # After 0.6 s idle: Ollama (kept loaded: OLLAMA_KEEP_ALIVE=-1) answers at once; DMR unloaded and loads again.
    ollama_idle, dmr_idle = trials["ollama:parallel=2"].idle_request, trials["dmr"].idle_request
    assert ollama_idle is not None and ollama_idle.after_idle_s == 0.6 and ollama_idle.load_ms is not None
    assert ollama_idle.load_ms < 100 and ollama_idle.ttft_ms is not None and ollama_idle.ttft_ms < 250
    assert dmr_idle is not None and dmr_idle.ttft_ms is not None and dmr_idle.ttft_ms >= 290
    # Ollama's serialised default: with one slot the second request of each pair waits for the first
    # (10 ms a token, 8 tokens); with two slots neither waits.
    one, two = (benches[trials[f"ollama:parallel={p}"].bench_id] for p in (1, 2))  # type: ignore[index]
    assert one.server_settings["num_parallel"] == 1 and one.server_settings["num_parallel_source"] == "launch"
    assert two.server_settings["num_parallel"] == 2
    assert one.steps[1].median_ttft_ms > max(25.0, 3 * two.steps[1].median_ttft_ms)
    assert any("above the server's 1 parallel slots" in w for w in one.steps[1].warnings)
    assert not any("parallel slots" in w for w in two.steps[1].warnings)
    # GLM per million output tokens: 1.5 GLM/h over what an hour at the best step yields.
    for label, row in rows.items():
        best = max(s.output_throughput for s in benches[trials[label].bench_id].steps)  # type: ignore[index]
        assert row["glm_per_million_tokens"] == pytest.approx(1.5 / (best * 3600) * 1e6, rel=1e-3)
        assert trials[label].price is not None and trials[label].price.source == "given"
    # The weights differ (Ollama's Q4_K_M against DMR's IQ2_XXS/Q4_K_M): the comparison says so.
    with Store(db, readonly=True) as store:
        from beacon_golem.requestor.store.comparison import comparison_from_store

        comparison = comparison_from_store(store, run_id)
    assert comparison is not None
    assert any(n.startswith("not like for like: the quantizations differ") for n in comparison.machines[0].notes)


async def test_a_static_node_compares_and_a_machine_lost_mid_comparison_is_reported_lost(tmp_path: Path) -> None:
    llama_server_binary()
    settings = load_settings().model_copy(update={"data_dir": tmp_path / "data"})
    section = PerfSection(profile=SweepProfile(concurrencies=[1], num_prompts=3), prompts=PromptSpec(input_len=8, output_len=4),
                          parallel=False)  # fmt: skip
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in ("llamacpp:parallel=1", "llamacpp:parallel=2",
                                                                      "llamacpp:parallel=3")],
                          glm_per_hour=2.0, drop_page_cache=False)  # fmt: skip
    node = LocalNode(NodeConfig(port=0, data_dir=tmp_path / "node"))  # what `beacon node up` runs
    await node.start()
    stopping: list[asyncio.Task[None]] = []

    def listener(kind: str, detail: dict[str, Any]) -> None:
        if kind == "trial_done" and detail["variant"] == "llamacpp:parallel=1":
            stopping.append(asyncio.get_running_loop().create_task(node.stop()))  # the machine goes away

    try:
        choice = FleetChoice(kind="static", node_urls=[node.url])
        store, final, rows = await compare_fleet(settings, plan, section, choice, db=tmp_path / "b.db", listener=listener)
    finally:
        await asyncio.gather(*stopping)
        await node.stop()
    assert [(r.trial.variant, r.trial.status) for r in rows] == [
        ("llamacpp:parallel=1", "done"), ("llamacpp:parallel=2", "lost"), ("llamacpp:parallel=3", "lost")]
    assert rows[1].trial.reason and "unreachable" in rows[1].trial.reason
    assert rows[2].trial.reason == f"not measured: the machine was lost while llamacpp:parallel=2 ran ({rows[1].trial.reason})"
    assert rows[0].trial.price is not None and rows[0].trial.price.source == "given" and rows[0].trial.hostname
    assert final.status == "failed"  # incomplete: never mixed with another machine's figures
    assert store.get_node(final.run_id, "static-0").status == "lost"  # type: ignore[union-attr]
    assert [b.node_id for b in store.bench_results(final.run_id)] == ["static-0/llamacpp:parallel=1"]
    store.close()


def test_on_golem_several_runtimes_need_the_image_that_holds_them_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from beacon_golem.core.errors import UsageError
    from beacon_golem.requestor.work.compare import golem_image_for

    lock = tmp_path / "images.lock.json"
    monkeypatch.setenv("BEACON_IMAGES_LOCK", str(lock))
    lock.write_text('{"version": 1, "images": []}')
    two = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in ("llamacpp:parallel=1", "llamacpp:parallel=2")])
    mixed = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in ("ollama", "vllm")])
    assert golem_image_for(two, {"budget": 1}) == {"budget": 1}  # one runtime: its own image, as any Golem run
    assert golem_image_for(mixed, {"image": "x"}) == {"image": "x"}  # an image named: the user's choice
    with pytest.raises(UsageError, match="comparing ollama, vllm on one provider needs an image that holds them all"):
        golem_image_for(mixed, {})
