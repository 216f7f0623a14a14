"""`beacon run SUITE --runtime auto`: each node gets the runtime earlier comparisons found best for its machine.

Stored comparisons with a known answer (figures written into a real SQLite store, as
tests/requestor/test_recommend.py does) for this host, then a real run on the local fleet
(llama-server + shim): the node is switched to the recommended settings before any job, and the
choice, its basis and whether it was applied are stored with the node and shown in the report.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import beacon_golem.cli.report  # noqa: F401  (registers the commands used here)
import beacon_golem.cli.run  # noqa: F401
from beacon_golem.cli import app
from beacon_golem.core.clock import to_ts
from beacon_golem.core.compare import ComparisonPlan, Price, RuntimeTrial, RuntimeVariant
from beacon_golem.core.node import StartupTimes
from beacon_golem.core.profiles import SweepProfile
from beacon_golem.core.suite import PerfSection
from beacon_golem.node.probe.report import run_probe
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.perf_phase import perf_suite
from tests.requestor.test_recommend import bench
from tests.support import llama_server_binary

SUITE = """\
name: auto
regions: [US]
questions: [{id: q1, text: "Who are you?"}]
models: [{name: beacon-tiny}]
generation: {max_tokens: 4}
"""
HOST = os.uname().nodename


def store_comparison(db: Path, figures: dict[str, dict[int, float]], *, host: str = HOST, age_s: float = 0) -> str:
    """A comparison on `host` whose sweeps gave `figures` (variant -> concurrency -> output tok/s)."""
    section = PerfSection(profile=SweepProfile(concurrencies=[1, 2], num_prompts=8), parallel=False)
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(v) for v in figures])
    with Store(db) as store:
        run = store.create_run(perf_suite(section, ["local"]), "tests", [], {"kind": "local"})
        store.create_comparison(run.run_id, plan)
        for label, tputs in figures.items():
            variant = plan.variant(label)
            row = store.add_bench_result(run.run_id, f"local-0/{label}", "node", label, {"kind": "sweep"}, bench(tputs))
            store.record_trial(run.run_id, RuntimeTrial(
                machine="local-0", variant=label, runtime=variant.runtime, status="done", bench_id=row.bench_id,
                hostname=host, price=Price(glm_per_hour=1.0, source="given"),
                startup=StartupTimes(runtime=variant.runtime, launched_at=datetime.now(UTC), health_s=1.0),
            ))  # fmt: skip
        store.finish_run(run.run_id, "done")
        if age_s:  # an older comparison: its trials were stored earlier
            store._conn.execute("UPDATE runtime_trials SET created_at = ? WHERE run_id = ?",
                                (to_ts(datetime.now(UTC) - timedelta(seconds=age_s)), run.run_id))  # fmt: skip
        return run.run_id


def run_auto(tmp_path: Path, db: Path) -> str:
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    result = CliRunner().invoke(app, ["run", str(suite), "--fleet", "local", "--nodes", "1", "--runtime", "auto",
                                      "--db", str(db)], env={"BEACON_DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    assert result.exit_code == 0, result.output
    return next(line for line in result.stdout.splitlines() if line.startswith("run ")).split()[1]


def test_the_node_gets_the_recommended_settings_of_an_earlier_comparison_on_this_host(tmp_path: Path) -> None:
    llama_server_binary()
    db = tmp_path / "beacon.db"
    compared = store_comparison(db, {"llamacpp:parallel=1": {1: 100.0, 2: 110.0}, "llamacpp:parallel=3": {1: 120.0, 2: 300.0}})
    run_id = run_auto(tmp_path, db)
    with Store(db, readonly=True) as store:
        node = store.get_node(run_id, "local-0")
        assert node is not None and node.info is not None
        choice = node.extra["runtime_choice"]
        assert (choice["runtime"], choice["variant"], choice["source"], choice["applied"]) == (
            "llamacpp", "llamacpp:parallel=3", "comparison", True)
        assert choice["basis"] == f"host {HOST}" and choice["comparison_run"] == compared
        assert "lowest GLM per million output tokens" in choice["reason"]
        # The node runs it: relaunched with --parallel 3 before any job, and the job was served there.
        assert node.info.runtime.launch == {"parallel": 3} and node.info.runtime.settings["total_slots"] == 3
        assert store.get_run(run_id).job_counts["done"] == 1
        [event] = store.events(run_id, ["runtime_chosen"])
        assert event.detail["variant"] == "llamacpp:parallel=3" and event.detail["applied"] is True
    html = tmp_path / "r.html"
    assert CliRunner().invoke(app, ["report", run_id, "--html", str(html), "--db", str(db)]).exit_code == 0
    assert "--runtime auto: llamacpp:parallel=3:" in html.read_text()


def test_a_runtime_the_probe_rules_out_is_passed_over_and_nothing_known_keeps_the_fallback(tmp_path: Path) -> None:
    llama_server_binary()
    if next(v for v in run_probe_verdicts() if v.runtime == "vllm").can_run:
        pytest.skip("vLLM can run on this machine: the probe rules nothing out here")
    db = tmp_path / "beacon.db"
    store_comparison(db, {"llamacpp:parallel=2": {1: 50.0, 2: 90.0}, "llamacpp": {1: 40.0, 2: 60.0}}, age_s=3600)
    store_comparison(db, {"vllm": {1: 900.0, 2: 1800.0}, "llamacpp": {1: 40.0, 2: 60.0}})  # newer, but vLLM cannot run here
    run_id = run_auto(tmp_path, db)
    with Store(db, readonly=True) as store:
        choice = store.get_node(run_id, "local-0").extra["runtime_choice"]  # type: ignore[union-attr]
    assert choice["variant"] == "llamacpp:parallel=2" and choice["applied"] is True
    assert choice["note"].startswith("vllm (comparison ") and "the probe says it cannot run here" in choice["note"]

    empty = tmp_path / "empty.db"
    run_id = run_auto(tmp_path, empty)
    with Store(empty, readonly=True) as store:
        node = store.get_node(run_id, "local-0")
    assert node is not None and node.info is not None
    choice = node.extra["runtime_choice"]
    assert (choice["source"], choice["runtime"], choice["applied"]) == ("fallback", "llamacpp", True)
    assert choice["reason"].startswith("no earlier comparison of this provider, host or GPU model")
    assert node.info.runtime.launch == {}  # untouched: the runtime the fleet started


def run_probe_verdicts():  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(run_probe()).runtimes
