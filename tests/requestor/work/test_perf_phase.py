"""Perf in runs: the suite's perf section, the shim's perf jobs, the runner over real local nodes,
and `beacon bench --fleet`.

Real parts throughout: llama-server on the generated tiny model, real shims, a real SQLite
file. Nothing asserts on speed (machines are noisy): counts, levels, where the load came
from, what was stored and the events are what is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from beacon_golem.api.bodies import JobSubmission, PerfJob
from beacon_golem.api.client import ShimClient
from beacon_golem.core.errors import UsageError
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.node import Node
from beacon_golem.core.suite import dump_suite_yaml, parse_suite
from beacon_golem.node.shim.app import ShimConfig, create_app
from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.perf_phase import perf_job_for, run_suite_perf
from tests.perf_support import PerfRun
from tests.support import ROOT, llama_server_binary, serve_app

PERF_ONLY = """\
name: perf-only
regions: [US]
perf:
  profile: {kind: sweep, concurrencies: [1, 2], num_prompts: 4}
  prompts: {input_len: 16, output_len: 8}
"""
QUESTIONS = """\
name: questions-only
questions: [{id: q1, text: "Who are you?"}]
models: [{name: beacon-tiny}]
regions: [US]
"""


# ---- the suite's perf section -------------------------------------------------------------------
def test_a_suite_may_hold_questions_perf_or_both() -> None:
    perf = parse_suite(PERF_ONLY)
    assert perf.questions == [] and perf.models == [] and perf.job_count() == 0
    assert perf.perf is not None and perf.perf.where == "node"  # the default
    assert perf.perf.profile.kind == "sweep" and perf.perf.profile.concurrencies == [1, 2]
    assert perf.perf.prompts.output_len == 8
    both = parse_suite(QUESTIONS + PERF_ONLY.split("regions: [US]\n")[1])
    assert both.job_count() == 1 and both.perf is not None
    # A suite without perf hashes as before perf existed: no `perf` key in what is hashed.
    questions = parse_suite(QUESTIONS)
    assert "perf" not in questions.canonical() and "perf" not in questions.model_dump()
    assert perf.canonical()["perf"]["profile"]["kind"] == "sweep"
    # YAML round trip keeps the section and the hash.
    assert parse_suite(dump_suite_yaml(perf)).suite_hash() == perf.suite_hash()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nregions: [US]\n", "questions: a suite needs at least one question, a perf section, or both"),
        ("name: x\nregions: [US]\nquestions: []\n", "questions: a suite needs at least one question"),
        ("name: x\nregions: [US]\nquestions: [{id: a, text: b}]\n", "models: List should have at least 1 item"),
        (PERF_ONLY.replace("kind: sweep", "kind: swept"), "perf.profile: Input tag 'swept'"),
        (PERF_ONLY.replace("[1, 2]", "[0, 2]"), "perf.profile.sweep: concurrencies: every level must be at least 1"),
        (PERF_ONLY.replace("num_prompts: 4", "num_prompts: 4, colour: red"), "perf.profile.sweep.colour: Extra inputs"),
        (PERF_ONLY + "  where: nodes\n", "perf.where: Input should be 'node' or 'requestor'"),
        (PERF_ONLY.replace("{input_len: 16,", "{input_len: 0,"), "perf.prompts.input_len: Input should be greater"),
        (PERF_ONLY + "  slo: {ttft: 5}\n", "perf.slo.ttft: Extra inputs are not permitted"),
        (PERF_ONLY.replace("{input_len: 16,", "{prompt_file: p.txt, input_len: 16,"), "perf: prompts.prompt_file: a node cannot read"),
        ("name: x\nregions: [US]\nperf: {profile: {kind: rate, rate: .inf}}\n", "perf: profile.rate: give a finite rate"),
        ("name: x\nregions: [US]\nperf: {profile: {kind: concurrency}}\n", "perf.profile.concurrency.concurrency: Field required"),
    ],
)
def test_a_bad_perf_section_is_one_line_naming_the_field(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_suite(text, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("s.yaml: " + expected), message


def test_a_requestor_may_read_a_prompt_file() -> None:
    suite = parse_suite(PERF_ONLY.replace("{input_len: 16,", "{prompt_file: p.txt, input_len: 16,") + "  where: requestor\n")
    assert suite.perf is not None and str(suite.perf.prompts.prompt_file) == "p.txt"


# ---- the shim's perf job ------------------------------------------------------------------------
def _perf_job() -> JobSubmission:
    return perf_job_for(parse_suite(PERF_ONLY).perf, "test perf")  # type: ignore[arg-type]


async def test_perf_job_runs_next_to_the_runtime_and_is_durable(shim_url: str, shim_config: ShimConfig, llama_server: str) -> None:
    async with ShimClient(shim_url) as client:
        accepted = await client.submit_job(_perf_job())
        assert accepted.total == 2  # two steps
        view = await client.wait_job(accepted.id, poll_s=0.1)
    assert view.state == "done" and view.kind == "perf" and view.error is None
    assert view.completed == 2 and view.failed == 0 and view.results is None
    assert view.bench_result is not None
    result = view.bench_result.to_json_dict()  # the wire form: vLLM's keys
    # The load went straight to the runtime, not through the shim.
    assert result["target"]["via"] == "runtime" and result["target"]["url"] == llama_server
    steps = result["steps"]
    assert [s["max_concurrency"] for s in steps] == [1, 2]
    assert all(s["completed"] == 4 and s["failed"] == 0 and s["total_output_tokens"] == 32 for s in steps)
    assert "p99_ttft_ms" in steps[0] and "median_tpot_ms" in steps[0]  # vLLM keys
    # The node's fingerprint is the shim's own /info.
    assert result["node"]["runtime"]["name"] == "llamacpp" and "system" in result["node"]
    # On disk: the result, and each step as it finished.
    job_dir = shim_config.data_dir / "jobs" / accepted.id
    assert json.loads((job_dir / "bench.json").read_text()) == result
    lines = [json.loads(line) for line in (job_dir / "steps.jsonl").read_text().splitlines()]
    assert [(line["attempt"], line["step"]["max_concurrency"]) for line in lines] == [(1, 1), (1, 2)]
    # A restarted shim still has the finished job and its result.
    async with serve_app(create_app(shim_config)) as url, ShimClient(url) as client:
        again = await client.job(accepted.id)
    assert again.state == "done" and again.bench_result is not None and again.bench_result.to_json_dict() == result


async def test_a_job_is_a_batch_or_a_benchmark_never_both(shim_url: str) -> None:
    plan = _perf_job().perf
    assert plan is not None
    batch = [{"prompt": "hi", "max_tokens": 4}]
    bodies = {
        "both": {"requests": batch, "perf": plan.model_dump(mode="json")},
        "neither": {"concurrency": 2},
        "file": {"perf": {**plan.model_dump(mode="json"), "prompts": {"prompt_file": "/etc/passwd"}}},
    }
    async with aiohttp.ClientSession() as http:
        for name, body in bodies.items():
            async with http.post(shim_url + "/jobs", json=body) as resp:
                error = await resp.json()
            assert resp.status == 422, name
            assert "\n" not in error["error"]
    with pytest.raises(ValueError, match="exactly one of 'requests'"):
        JobSubmission(requests=[GenerationRequest(prompt="x")], perf=plan)
    with pytest.raises(ValueError, match="prompt_file"):
        PerfJob.model_validate({**plan.model_dump(), "prompts": {"prompt_file": "a.txt"}})


async def test_a_cancelled_perf_job_stops_and_keeps_no_result(shim_url: str, shim_config: ShimConfig) -> None:
    long = perf_job_for(parse_suite(PERF_ONLY.replace("concurrencies: [1, 2], num_prompts: 4",
                                                      "concurrencies: [1], num_prompts: 400")).perf)  # type: ignore[arg-type]
    async with ShimClient(shim_url) as client:
        job_id = (await client.submit_job(long)).id
        await asyncio.sleep(0.5)
        view = await client.cancel_job(job_id)
        assert view.state == "cancelled" and view.bench_result is None
        health = await client.health()  # the shim still serves
    assert health.status == "ok"
    assert not (shim_config.data_dir / "jobs" / job_id / "bench.json").exists()


# ---- the runner: where=node -------------------------------------------------------------------
def test_run_benchmarks_every_node_on_the_node_after_the_questions(perf_run: PerfRun) -> None:
    assert perf_run.status == "done"
    with Store(perf_run.db, readonly=True) as store:
        run = store.get_run(perf_run.run_id)
        assert run.job_counts["done"] == 4  # 2 questions x 2 regions
        nodes = {n.node_id: n for n in store.nodes(run.run_id)}
        benches = store.bench_results(run.run_id)
        events = store.events(run.run_id)
    assert sorted(nodes) == ["local-0", "local-1"]
    assert sorted(b.node_id for b in benches) == ["local-0", "local-1"]
    for bench in benches:
        assert bench.where == "node" and bench.label == f"{bench.node_id} {nodes[bench.node_id].region} node"
        assert bench.profile["kind"] == "sweep" and bench.profile["concurrencies"] == [1, 2]
        assert bench.result["target"]["via"] == "runtime"  # generated next to the runtime
        assert [(s["max_concurrency"], s["completed"], s["failed"]) for s in bench.steps] == [(1, 4, 0), (2, 4, 0)]
        assert bench.result["slo"] == {"ttft_ms": 5000.0, "tpot_ms": None, "e2el_ms": None}
        assert all(s["request_goodput"] is not None for s in bench.steps)
        parsed = bench.bench_result()  # still reads as the load generator's model
        assert len(parsed.steps) == 2 and parsed.target.runtime == "llamacpp"
        # The node's perf job left its result on the node's disk too.
        node_jobs = perf_run.data_dir / "local-fleet" / bench.node_id / "jobs"
        on_node = [json.loads(p.read_text()) for p in node_jobs.glob("*/bench.json")]
        assert len(on_node) == 1 and on_node[0]["steps"] == bench.result["steps"]
    kinds = [e.kind for e in events]
    # The questions came first, then the benchmarks, one node after another (a local fleet shares one machine).
    assert kinds.index("perf_planned") > max(i for i, k in enumerate(kinds) if k == "node_added")
    perf_kinds = [(e.kind, e.node_id) for e in events if e.kind in ("perf_started", "perf_done")]
    assert perf_kinds == [("perf_started", "local-0"), ("perf_done", "local-0"),
                          ("perf_started", "local-1"), ("perf_done", "local-1")]  # fmt: skip
    planned = next(e for e in events if e.kind == "perf_planned")
    assert planned.detail["parallel"] is False and planned.detail["where"] == "node"
    done = [e for e in events if e.kind == "perf_done"]
    assert all(e.detail["steps"] == 2 and e.detail["best_output_throughput"] > 0 for e in done)
    assert [k for k, _ in perf_run.perf_events] == ["perf_started", "perf_done", "perf_started", "perf_done"]


# ---- a node that fails ----------------------------------------------------------------------------
class OneDeadNode(Fleet):
    name = "static"

    async def start(self) -> None:
        from beacon_golem.core.net import free_port

        self.add_node(Node(node_id="dead", url=f"http://127.0.0.1:{free_port()}", region="US", fleet="static"))

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("where", ["node", "requestor"])
async def test_a_node_that_cannot_benchmark_fails_the_run_and_stores_nothing(tmp_path: Path, where: str) -> None:
    suite = parse_suite(PERF_ONLY + f"  where: {where}\n")
    with Store(tmp_path / "beacon.db") as store:
        run = store.create_run(suite, None, [], {"kind": "static"})
        async with OneDeadNode() as fleet:
            outcomes = await run_suite_perf(store, run, fleet, poll_s=0.05)
        assert [(o.node_id, o.ok) for o in outcomes] == [("dead", False)]
        assert outcomes[0].error and "\n" not in outcomes[0].error
        assert store.bench_results(run.run_id) == []
        failed = store.events(run.run_id, kinds=["perf_failed"])
        assert len(failed) == 1 and failed[0].node_id == "dead" and failed[0].detail["where"] == where


async def test_a_resumed_run_benchmarks_only_nodes_without_a_result(tmp_path: Path) -> None:
    suite = parse_suite(PERF_ONLY)
    with Store(tmp_path / "beacon.db") as store:
        run = store.create_run(suite, None, [], {"kind": "static"})
        store.add_bench_result(run.run_id, "dead", "node", "dead US node", {"kind": "sweep"}, {"steps": []})
        async with OneDeadNode() as fleet:
            outcomes = await run_suite_perf(store, run, fleet, poll_s=0.05)
        assert [(o.node_id, o.ok, o.skipped) for o in outcomes] == [("dead", True, True)]
        assert store.events(run.run_id, kinds=["perf_started", "perf_failed"]) == []
        assert len(store.bench_results(run.run_id)) == 1


# ---- beacon bench --fleet, where=requestor ----------------------------------------------------------
def test_bench_fleet_cli_from_the_requestor_stores_a_run(tmp_path: Path) -> None:
    llama_server_binary()
    db = tmp_path / "beacon.db"
    env = {**os.environ, "BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_LOG_LEVEL": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "beacon_golem.cli", "bench", "--fleet", "local", "--nodes", "2", "--where", "requestor",
         "--profile", "sweep", "--concurrency", "1,2", "--num-prompts", "4", "--input-len", "16", "--output-len", "8",
         "--parallel", "2", "--db", str(db)],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("run ") and "where=requestor" in first
    run_id = first.split()[1]
    assert f"run {run_id} done: 2 node benchmark(s) stored" in done.stdout
    assert "local-0" in done.stdout and "local-1" in done.stdout and "c=2" in done.stdout  # the per-node table
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT node_id, "where", result_json FROM bench_results WHERE run_id = ? ORDER BY node_id',
                            (run_id,)).fetchall()  # fmt: skip
        suite = json.loads(conn.execute("SELECT suite_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0])
        jobs = conn.execute("SELECT COUNT(*) FROM jobs WHERE run_id = ?", (run_id,)).fetchone()[0]
    assert jobs == 0 and suite["questions"] == [] and suite["perf"]["where"] == "requestor"
    assert [(r[0], r[1]) for r in rows] == [("local-0", "requestor"), ("local-1", "requestor")]
    for _, _, raw in rows:
        result = json.loads(raw)
        assert result["target"]["via"] == "shim"  # end to end through the node's URL
        assert [s["completed"] for s in result["steps"]] == [4, 4]
        assert result["node"]["runtime"]["name"] == "llamacpp"


def test_bench_fleet_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import beacon_golem.cli.bench  # noqa: F401  (registers the command)
    from beacon_golem.cli import app

    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    for args, needle in [
        (["--fleet", "moon"], "--fleet 'moon': choose local, static or golem"),
        (["--fleet", "local", "--where", "there"], "--where 'there': choose node or requestor"),
        (["--fleet", "local", "--local"], "leave out --url and --local"),
        (["--fleet", "static"], "the static fleet needs at least one --node URL"),
        (["--fleet", "local", "--node", "http://127.0.0.1:9"], "--node URL is for --fleet static"),
    ]:
        result = CliRunner().invoke(app, ["bench", *args, "--db", str(tmp_path / "b.db")])
        assert isinstance(result.exception, UsageError), (args, result.output)
        assert needle in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "b.db").exists()  # refused before the store was touched
