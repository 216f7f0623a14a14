"""A node that lies (issue 12, finding 3): whatever a node sends, no job vanishes and no run ends
`done` with a job that is not.

The node here is a real aiohttp server on loopback that answers /health and /info like a shim
and /inference with one lie each: NaN, infinity, a number that overflows to infinity, negative
counts, JSON nested 100,000 deep, a body over the client's cap (streamed without end), or no JSON.
The dispatcher, the store (a real SQLite file) and the driver are the real ones.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from beacon_golem.api.client import NodeUnreachable, ShimClient, ShimError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.suite import parse_suite
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.store.store import open_store
from beacon_golem.requestor.work.dispatcher import DispatchConfig
from beacon_golem.requestor.work.driver import FleetChoice, execute_run, plan_run
from tests.support import serve_app

SUITE = """
name: lying-node
questions: [{id: q1, text: "Who are you?"}]
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US]
limits: {job_timeout_s: 10, retries: 1, backoff_s: 0, backoff_max_s: 0}
"""

GOOD = {
    "text": "I am a node.", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 4,
    "token_count_source": "server", "ttft_ms": 5.0, "e2e_ms": 20.0, "itl_ms": [5.0, 5.0],
    "runtime": "llamacpp", "model": "beacon-tiny",
}  # fmt: skip


def _with(**changes: str) -> bytes:
    """GOOD as JSON text with some values replaced by raw JSON-ish text (NaN is not JSON)."""
    text = json.dumps(GOOD)
    for key, raw in changes.items():
        text = text.replace(f'"{key}": {json.dumps(GOOD[key])}', f'"{key}": {raw}')
    return text.encode()


#: How a lying node answers POST /inference, by name.
LIES: dict[str, bytes | None] = {
    "nan_e2e": _with(e2e_ms="NaN"),
    "infinite_ttft": _with(ttft_ms="Infinity"),
    "overflow_to_infinity": _with(e2e_ms="1e400"),
    "nan_inside_a_list": _with(itl_ms="[1.0, NaN]"),
    "negative_tokens": _with(completion_tokens="-4"),
    "nested_100000_deep": b"[" * 100_000 + b"]" * 100_000,
    "not_json": b"<html>oops</html>",
    "endless_body": None,  # streamed without end: only the client's cap stops it
}

CAP = 256 * 1024


def node_info() -> dict[str, object]:
    info = NodeInfo(
        shim_version="0", node_id="liar", runtime=RuntimeInfo(name="llamacpp", upstream="u", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", kernel="6", arch="x86_64", ram_gib=1), started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    return info.model_dump(mode="json")


HONEST = json.dumps(GOOD).encode()


def lying_node(answer: bytes | None, sent: list[int]) -> web.Application:
    """A node whose /inference answers `answer` (None: a body streamed without end)."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "runtime": "llamacpp", "models": ["beacon-tiny"]})

    async def info(_: web.Request) -> web.Response:
        return web.json_response(node_info())

    async def inference(request: web.Request) -> web.StreamResponse:
        await request.read()
        if answer is not None:
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b'{"text": "' + b"x" * 65536
        try:
            while True:  # 1.5 GB or more, as long as someone reads
                await resp.write(chunk)
                sent[0] += len(chunk)
        except (ConnectionResetError, RuntimeError):
            return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_post("/inference", inference)
    return app


@pytest.mark.parametrize("lie", sorted(LIES))
async def test_a_lying_node_fails_the_job_and_the_run_never_ends_done(tmp_path: Path, lie: str) -> None:
    suite = parse_suite(SUITE)
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "s.yaml", FleetChoice(kind="static", node_urls=["x"]))
    sent = [0]
    async with serve_app(lying_node(LIES[lie], sent)) as url:
        fleet = StaticFleet([StaticNodeSpec.parse(f"{url}@US")])
        config = DispatchConfig(limits=suite.limits, health_interval_s=0.2, max_body_bytes=CAP)
        final = await asyncio.wait_for(execute_run(store, run, fleet, config), 60)

    jobs = store.jobs(run.run_id)
    assert [j.state for j in jobs] == ["failed"], [j.error for j in jobs]
    assert final.status == "failed" and final.job_counts["done"] == 0
    assert store.results(run.run_id) == []  # nothing a liar said was stored
    assert "refused" in (jobs[0].error or "") or "unexpected body" in (jobs[0].error or "") or "over" in (jobs[0].error or "")
    if lie == "endless_body":
        assert sent[0] < 64 * CAP  # the client stopped reading soon after its cap


async def test_shim_client_reads_a_body_no_further_than_its_cap() -> None:
    sent = [0]
    async with serve_app(lying_node(None, sent)) as url, ShimClient(url, max_body_bytes=CAP) as client:
        with pytest.raises(ShimError) as err:
            await asyncio.wait_for(client.infer(GenerationRequest(prompt="hi")), 20)
    assert err.value.status == 502 and f"over {CAP:,} bytes" in str(err.value)
    assert sent[0] < 64 * CAP


def test_generation_result_takes_no_nan_no_infinity_no_negative_counts() -> None:
    for bad in ({"e2e_ms": float("nan")}, {"ttft_ms": float("inf")}, {"itl_ms": [1.0, float("-inf")]},
                {"server_timings": {"prompt_ms": float("nan")}}, {"completion_tokens": -1}, {"e2e_ms": -1.0}):  # fmt: skip
        with pytest.raises(ValueError):
            GenerationResult.model_validate({**GOOD, **bad})
    assert GenerationResult.model_validate(GOOD).e2e_ms == 20.0


async def test_an_exception_after_the_answer_does_not_leave_the_job_running(tmp_path: Path) -> None:
    """A receipt that cannot be made (or a store write that fails) is inside the job's `try`:
    the job is retried, then failed; it is never left `running` with the run ended `done`."""
    suite = parse_suite(SUITE)
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "s.yaml", FleetChoice(kind="static", node_urls=["x"]))
    calls = []

    def broken_receipts(*args: object) -> None:
        calls.append(args)
        raise ValueError("Out of range float values are not JSON compliant")

    async with serve_app(lying_node(HONEST, [0])) as url:
        fleet = StaticFleet([StaticNodeSpec.parse(f"{url}@US")])
        config = DispatchConfig(limits=suite.limits, health_interval_s=0.2)
        final = await asyncio.wait_for(execute_run(store, run, fleet, config, receipts=broken_receipts), 60)  # type: ignore[arg-type]
    assert len(calls) == 2  # the first attempt and its one retry
    job = store.jobs(run.run_id)[0]
    assert job.state == "failed" and "internal error" in (job.error or "")
    assert final.status == "failed"


async def test_a_run_with_a_job_left_running_in_the_store_does_not_end_done(tmp_path: Path) -> None:
    """The run's end checks the store, not the dispatcher's count: a job some other path left
    `running` makes the run `failed`, with a `run_incomplete` event."""
    suite = parse_suite(SUITE.replace("questions: [{id: q1, text: \"Who are you?\"}]",
                                      "questions: [{id: q1, text: a}, {id: q2, text: b}]"))  # fmt: skip
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "s.yaml", FleetChoice(kind="static", node_urls=["x"]))
    async with serve_app(lying_node(HONEST, [0])) as url:
        fleet = StaticFleet([StaticNodeSpec.parse(f"{url}@US")])
        config = DispatchConfig(limits=suite.limits, health_interval_s=0.2)
        orphan = store.jobs(run.run_id)[1]

        def on_ready(_: object) -> None:  # another path claims a job behind the dispatcher's back
            store.claim_job(orphan.job_id, "elsewhere")

        final = await asyncio.wait_for(execute_run(store, run, fleet, config, on_fleet_ready=on_ready), 60)
    assert final.job_counts["done"] == 1 and final.job_counts["running"] == 1
    assert final.status == "failed"
    assert [e.detail for e in store.events(run.run_id, ["run_incomplete"])] == [{"running": 1}]


async def test_the_health_check_timeout_is_its_own_setting_not_the_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite's tiny `job_timeout_s` must not make a slow-to-answer /health a dead node (it read as
    "no live node serves region US")."""
    from beacon_golem.core.node import Node
    from beacon_golem.requestor.work.dispatcher import Dispatcher
    from beacon_golem.requestor.work.driver import dispatch_config

    async def slow_health(_: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.json_response({"status": "ok", "runtime": "llamacpp", "models": ["beacon-tiny"]})

    app = web.Application()
    app.router.add_get("/health", slow_health)
    suite = parse_suite(SUITE.replace("job_timeout_s: 10", "job_timeout_s: 0.01"))
    store = open_store(tmp_path / "beacon.db")
    run = plan_run(store, suite, "s.yaml", FleetChoice(kind="static", node_urls=["x"]))
    async with serve_app(app) as url:
        fleet = StaticFleet([StaticNodeSpec.parse(f"{url}@US")])
        dispatcher = Dispatcher(store, run.run_id, fleet, DispatchConfig(limits=suite.limits, health_timeout_s=5))
        dispatcher._add_node(Node(node_id="n", url=url, region="US"))
        state = dispatcher.nodes["n"]
        for _ in range(3):
            await dispatcher._check(state)
        assert state.alive and state.failures == 0
        with pytest.raises((NodeUnreachable, TimeoutError)):  # the same client's own (job) timeout would have failed it
            await state.client.health()
        await state.client.close()
    monkeypatch.setenv("BEACON_HEALTH_TIMEOUT_S", "3.5")
    assert dispatch_config(suite, FleetChoice(kind="static", node_urls=["x"])).health_timeout_s == 3.5
