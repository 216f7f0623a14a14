#!/usr/bin/env python
"""What the dispatcher costs: 10,000 jobs over 100 simulated nodes, against bare HTTP calls.

The nodes are one aiohttp app on loopback answering /{node}/health, /info and /inference at
once with a canned result (no runtime), so what is measured is ours: the dispatcher's routing,
its store writes (SQLite, WAL, synchronous=FULL: every claim and result on disk before the next
decision) and its HTTP client. The same number of /inference calls, at the same concurrency, with
no dispatcher and no store, runs in the same process right before and after, as the baseline.

    .venv/bin/python tools/perf/dispatcher_overhead.py
    .venv/bin/python tools/perf/dispatcher_overhead.py --nodes 100 --jobs 10000 --per-node 4

Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from beacon_golem.api.bodies import Health
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.net import free_port
from beacon_golem.core.node import NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.suite import Suite
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.store.store import open_store
from beacon_golem.requestor.work.dispatcher import DispatchConfig, Dispatcher
from beacon_golem.requestor.work.driver import FleetChoice, plan_run

RESULT = GenerationResult(
    text="a canned answer", finish_reason="length", prompt_tokens=8, completion_tokens=4,
    token_count_source="server", ttft_ms=1.0, e2e_ms=2.0, runtime="llamacpp", model="beacon-tiny",
).model_dump_json()  # fmt: skip


def node_app() -> web.Application:
    info = NodeInfo(
        shim_version="bench", node_id="sim", started_at="2026-01-01T00:00:00Z",
        runtime=RuntimeInfo(name="llamacpp", upstream="none", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", kernel="sim", arch="x86_64", ram_gib=1),
    ).model_dump_json()  # fmt: skip
    health = Health(status="ok", runtime="llamacpp", models=["beacon-tiny"]).model_dump_json()

    async def ok(text: str) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/{node}/health", lambda _: ok(health))
    app.router.add_get("/{node}/info", lambda _: ok(info))
    app.router.add_post("/{node}/inference", lambda _: ok(RESULT))
    return app


def suite(jobs: int, nodes: int) -> Suite:
    regions = ["US", "EU"]
    questions = max(1, jobs // len(regions))
    return Suite.model_validate(
        {
            "name": "dispatch-bench",
            "questions": [{"id": f"q{i}", "text": f"question {i}"} for i in range(questions)],
            "models": [{"name": "beacon-tiny", "runtime": "llamacpp"}],
            "regions": regions,
            "generation": {"max_tokens": 4},
            "limits": {"per_node_concurrency": 4},
        }
    )


async def bare(urls: list[str], jobs: int, concurrency: int) -> float:
    """`jobs` POST /inference calls spread over the nodes, `concurrency` in flight, no dispatcher."""
    body = b'{"prompt": "x", "max_tokens": 4}'
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                async with http.post(urls[i % len(urls)] + "/inference", data=body) as resp:
                    GenerationResult.model_validate_json(await resp.read())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


async def dispatched(urls: list[str], jobs: int, per_node: int, db: Path) -> tuple[float, float, int]:
    store = open_store(db)
    the_suite = suite(jobs, len(urls))
    run = plan_run(store, the_suite, "bench", FleetChoice(kind="static", node_urls=urls))
    specs = [StaticNodeSpec(url=u, region=["US", "EU"][i % 2], concurrency=per_node) for i, u in enumerate(urls)]
    async with StaticFleet(specs) as fleet:
        config = DispatchConfig(limits=the_suite.limits, per_node_concurrency=per_node, health_interval_s=5.0)
        cpu0, start = time.process_time(), time.perf_counter()
        progress = await Dispatcher(store, run.run_id, fleet, config).run()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    store.close()
    return wall, cpu, progress.done


async def main(args: argparse.Namespace) -> None:
    runner = web.AppRunner(node_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    urls = [f"http://127.0.0.1:{port}/n{i}" for i in range(args.nodes)]
    concurrency = args.nodes * args.per_node
    try:
        bare_walls, disp = [], []
        with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
            for r in range(args.rounds):
                bare_walls.append(await bare(urls, args.jobs, concurrency))
                disp.append(await dispatched(urls, args.jobs, args.per_node, Path(tmp) / f"r{r}.db"))
                wall, cpu, done = disp[-1]
                print(
                    f"round {r}: bare {bare_walls[-1]:.2f} s   dispatcher {wall:.2f} s ({cpu:.2f} s CPU, {done} done)",
                    flush=True,
                )
    finally:
        await runner.cleanup()
    b = statistics.median(bare_walls)
    w = statistics.median(d[0] for d in disp)
    c = statistics.median(d[1] for d in disp)
    n = args.jobs
    print(f"\n{args.nodes} simulated nodes, {n} jobs, {concurrency} in flight, {args.rounds} rounds (medians)")
    print(f"bare HTTP:   {b:7.2f} s  {n / b:8.0f} jobs/s  {1e3 * b / n:6.3f} ms/job")
    print(f"dispatcher:  {w:7.2f} s  {n / w:8.0f} jobs/s  {1e3 * w / n:6.3f} ms/job  ({1e3 * c / n:.3f} ms CPU/job)")
    print(f"ratio dispatcher/bare wall time: {w / b:.2f}   added per job: {1e3 * (w - b) / n:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--per-node", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
