"""The dispatcher over real local nodes (llama-server + shim on the generated model) and a real SQLite store."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from beacon_golem.core.suite import Limits, parse_suite
from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.fleets.local import LocalFleet, LocalFleetConfig
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.store.store import open_store
from beacon_golem.requestor.work.dispatcher import DispatchConfig, Dispatcher, RunProgress, node_matches
from beacon_golem.requestor.work.driver import FleetChoice, plan_run
from tests.support import llama_server_binary

SUITE = """
name: dispatch-test
questions:
  - {id: q1, text: "Who are you?", category: control}
  - {id: q2, text: "What happened at Tiananmen Square in 1989?", category: bias}
  - {id: q3, text: "Is Taiwan a country?", category: bias}
models:
  - {name: beacon-tiny, runtime: llamacpp}
regions: [US, EU]
generation: {max_tokens: MAX, temperature: 0, repetitions: REPS, ignore_eos: true}
limits: {per_node_concurrency: 2, job_timeout_s: 60, retries: 3, backoff_s: 0.1, backoff_max_s: 0.5}
"""


def make_suite(max_tokens: int = 16, reps: int = 1, regions: str = "[US, EU]"):
    text = SUITE.replace("MAX", str(max_tokens)).replace("REPS", str(reps)).replace("[US, EU]", regions)
    return parse_suite(text, "test-suite.yaml")


def local_fleet(tmp_path: Path, tiny_model: Path, nodes: int, regions: list[str]) -> LocalFleet:
    llama_server_binary()
    return LocalFleet(
        LocalFleetConfig(nodes=nodes, regions=regions, model=str(tiny_model), parallel=2, data_dir=tmp_path / "fleet")
    )


def config(suite, **kw) -> DispatchConfig:
    return DispatchConfig(limits=suite.limits, health_interval_s=0.2, **kw)


async def test_three_nodes_two_regions_one_result_per_job_in_the_right_region(tmp_path: Path, tiny_model: Path) -> None:
    suite = make_suite(reps=2)
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "test-suite.yaml", FleetChoice(kind="local", nodes=3))
    peaks: Counter[str] = Counter()

    def watch(progress: RunProgress) -> None:
        for node in progress.nodes.values():
            peaks[node.node_id] = max(peaks[node.node_id], node.in_flight)

    async with local_fleet(tmp_path, tiny_model, 3, ["US", "EU"]) as fleet:
        regions = {n.node_id: n.region for n in fleet.nodes()}
        progress = await Dispatcher(store, run.run_id, fleet, config(suite), on_progress=watch).run()

    assert sorted(regions.values()) == ["EU", "US", "US"]
    assert progress.done == 12 and progress.failed == 0
    jobs = store.jobs(run.run_id)
    results = store.results(run.run_id)
    assert len(results) == len(jobs) == 12
    assert Counter(r.job_id for r in results).most_common(1)[0][1] == 1
    by_job = {j.job_id: j for j in jobs}
    for result in results:
        assert regions[result.node_id] == by_job[result.job_id].region
        assert result.result.completion_tokens == 16
    assert all(j.state == "done" and j.attempts == 1 for j in jobs)
    assert max(peaks.values()) <= 2  # per-node concurrency respected
    assert {r.node_id for r in results} == set(regions)  # every node got work


async def test_a_node_killed_mid_run_loses_no_job_and_duplicates_none(tmp_path: Path, tiny_model: Path) -> None:
    suite = make_suite(max_tokens=400, reps=4)  # 24 jobs of 400 tokens: the kill lands mid-run
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "test-suite.yaml", FleetChoice(kind="local", nodes=3))
    async with local_fleet(tmp_path, tiny_model, 3, ["US", "EU"]) as fleet:
        victim = next(n.node_id for n in fleet.nodes() if n.region == "US")
        dispatcher = Dispatcher(store, run.run_id, fleet, config(suite))
        task = asyncio.create_task(dispatcher.run())
        for _ in range(500):
            if any(r.node_id == victim for r in store.results(run.run_id)):
                break
            await asyncio.sleep(0.02)
        done_before_kill = len(store.results(run.run_id))
        await fleet.kill(victim)
        progress = await task

    assert done_before_kill < 24
    requeued = [e for e in store.events(run.run_id) if e.kind == "job_requeued" and e.node_id == victim]
    assert requeued, "the victim had jobs in flight that went elsewhere"

    assert progress.done == 24 and progress.failed == 0
    results = store.results(run.run_id)
    assert len(results) == 24 and len({r.job_id for r in results}) == 24
    node = store.get_node(run.run_id, victim)
    assert node is not None and node.status == "lost"
    assert any(e.kind == "node_lost" and e.node_id == victim for e in store.events(run.run_id))
    # the killed node's US jobs were finished by the other US node
    us_nodes = {r.node_id for r in results if store.get_job(r.job_id).region == "US"}
    assert us_nodes - {victim}


async def test_jobs_no_node_can_serve_fail_with_the_reason(tmp_path: Path, tiny_model: Path) -> None:
    suite = make_suite(regions="[US, APAC]")
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "test-suite.yaml", FleetChoice(kind="local", nodes=1))
    async with local_fleet(tmp_path, tiny_model, 1, ["US"]) as fleet:
        progress = await Dispatcher(store, run.run_id, fleet, config(suite)).run()
    assert progress.done == 3 and progress.failed == 3
    failed = store.jobs(run.run_id, states=["failed"])
    assert {j.region for j in failed} == {"APAC"}
    assert all("no live node serves region APAC" in (j.error or "") for j in failed)


class _SpentFleet(Fleet):
    """A fleet that has stopped its nodes and rents no more (a Golem fleet out of budget)."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def expecting_nodes(self) -> bool:
        return False

    def why_no_more_nodes(self) -> str:
        return "budget nearly spent (1.0 of 1 GLM)"


async def test_jobs_fail_at_once_with_the_fleets_reason_when_no_node_will_join(tmp_path: Path) -> None:
    """The wait for a matching node (300 s for Golem) is only for a fleet that may still add one."""
    suite = make_suite()
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "test-suite.yaml", FleetChoice(kind="local", nodes=1))
    dispatcher = Dispatcher(store, run.run_id, _SpentFleet(), config(suite, unmatched_wait_s=300))
    progress = await asyncio.wait_for(dispatcher.run(), 30)
    assert progress.failed == 6 and progress.done == 0
    assert all((j.error or "").endswith(": budget nearly spent (1.0 of 1 GLM)") for j in store.jobs(run.run_id))


async def test_a_job_that_keeps_failing_ends_failed_after_its_retries(tmp_path: Path, tiny_model: Path) -> None:
    # A static node whose URL answers health but nothing else is a node that keeps failing.
    from aiohttp import web

    from tests.support import serve_app

    async with local_fleet(tmp_path, tiny_model, 1, ["US"]) as real:
        info = real.nodes()[0].info

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "runtime": "llamacpp", "models": ["beacon-tiny"]})

        async def info_route(_: web.Request) -> web.Response:
            return web.Response(text=info.model_dump_json(), content_type="application/json")

        async def broken(_: web.Request) -> web.Response:
            return web.json_response({"error": "llamacpp answered HTTP 500", "status": 502}, status=502)

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/info", info_route)
        app.router.add_post("/inference", broken)
        suite = make_suite(regions="[US]")
        suite = suite.model_copy(update={"limits": Limits(retries=1, backoff_s=0.05, backoff_max_s=0.1)})
        store = open_store(tmp_path / "beacon.db")
        run = plan_run(store, suite, "s.yaml", FleetChoice(kind="static", node_urls=["http://placeholder"]))
        async with serve_app(app) as url:
            fleet = StaticFleet([StaticNodeSpec(url=url, region="US")])
            async with fleet:
                progress = await Dispatcher(
                    store, run.run_id, fleet, DispatchConfig(limits=suite.limits, node_failures_to_lose=100)
                ).run()
    assert progress.failed == 3 and progress.done == 0
    for job in store.jobs(run.run_id):
        assert job.state == "failed" and job.attempts == 2
        assert "failed after 2 attempts" in (job.error or "") and "HTTP 500" in (job.error or "")


@pytest.mark.parametrize(
    ("region", "runtime", "model", "expected"),
    [("US", "llamacpp", "beacon-tiny", True), ("EU", "llamacpp", "beacon-tiny", False),
     ("US", "vllm", "beacon-tiny", False), ("US", "any", "beacon-tiny", True), ("US", "llamacpp", "llama3", False)],
)  # fmt: skip
def test_node_matching(region: str, runtime: str, model: str, expected: bool) -> None:
    from beacon_golem.core.node import Node, NodeInfo, RuntimeInfo, SystemInfo
    from beacon_golem.requestor.store.rows import JobRow

    info = NodeInfo(
        shim_version="0",
        node_id="n",
        runtime=RuntimeInfo(name="llamacpp", upstream="u", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", kernel="6", arch="x86_64", ram_gib=1),
        started_at="2026-01-01T00:00:00Z",
    )
    node = Node(node_id="n", url="http://x", region="US", info=info)
    job = JobRow.model_construct(region=region, runtime=runtime, model=model)
    assert node_matches(node, job) is expected
