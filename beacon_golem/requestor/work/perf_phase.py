"""Performance benchmarks in runs: a suite's `perf` section, run on every node of the fleet.

After the question jobs of a run, `run_suite_perf` benchmarks each node the fleet holds:

- where=node: a perf job goes to the node's shim (`POST /jobs` with `perf`); the load
  generator runs on the node against its runtime's own URL, and the result is polled from
  `GET /jobs/{id}`. It measures the runtime, without the network between us and the node.
- where=requestor: `run_bench` runs here, through the node's URL (the shim's streamed
  OpenAI pass-through), end to end: what a client of the node sees, network included.

Each result is stored in `bench_results` with the node and where it ran from, and every
start, result and failure is an event of the run. A run resumed after a crash benchmarks
only the nodes that have no stored result yet for that place.

`bench_fleet` is `beacon bench --fleet`: a run whose suite holds only the perf section.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, SecretStr

from beacon_golem.api.bodies import JobSubmission, PerfJob
from beacon_golem.api.client import NodeUnreachable, ShimClient, ShimError
from beacon_golem.core.bench import BenchResult, PerfPlan
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node
from beacon_golem.core.suite import PerfSection, Suite
from beacon_golem.node.loadgen.run_bench import run_bench
from beacon_golem.node.loadgen.target import Target
from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.store.rows import RunRow
from beacon_golem.requestor.store.store import Store

log = get_logger(__name__)

#: (event kind, details) for a progress display: perf_started, perf_done, perf_failed.
PerfListener = Callable[[str, dict[str, Any]], None]
#: Consecutive failed polls of a node's perf job after which the node counts as gone.
MAX_POLL_FAILURES = 5


class PerfOutcome(BaseModel):
    node_id: str | None
    where: str
    ok: bool
    bench_id: int | None = None
    error: str | None = None
    skipped: bool = False


def perf_label(node: Node, where: str) -> str:
    return f"{node.node_id} {node.region or '-'} {where}"


def perf_job_for(section: PerfSection, label: str | None = None) -> JobSubmission:
    """The shim job that runs `section` on a node (its load profile, prompts, SLOs and model)."""
    plan = PerfJob.model_validate(section.model_dump(include=set(PerfPlan.model_fields)))
    return JobSubmission(perf=plan, label=label)


def _usable(result: BenchResult) -> bool:
    return any(s.completed > 0 for s in result.steps)


def _best(result: BenchResult) -> float:
    return max((s.output_throughput for s in result.steps), default=0.0)


async def perf_on_node(node: Node, section: PerfSection, label: str | None = None, poll_s: float = 1.0) -> BenchResult:
    """Run the benchmark as a perf job on the node's shim; its `BenchResult` when done."""
    deadline = time.monotonic() + section.timeout_s
    async with ShimClient(node.url, node.token, timeout_s=60.0) as client:
        accepted = await client.submit_job(perf_job_for(section, label))
        failures = 0
        try:
            while True:
                await asyncio.sleep(poll_s)
                try:
                    view = await client.job(accepted.id)
                    failures = 0
                except NodeUnreachable:
                    # A shim that restarts reloads the job and runs it again: keep asking a while.
                    failures += 1
                    if failures >= MAX_POLL_FAILURES:
                        raise
                    continue
                if view.state == "cancelled":
                    raise BeaconError(f"node {node.node_id}: the perf job was cancelled on the node")
                if view.state == "done":
                    if view.bench_result is None:
                        raise BeaconError(f"node {node.node_id}: {view.error or 'the perf job ended without a result'}")
                    return view.bench_result
                if time.monotonic() > deadline:
                    raise BeaconError(f"node {node.node_id}: the benchmark took longer than {section.timeout_s:g} s")
        except BaseException:
            # Leave nothing running on a node we stopped waiting for (best effort).
            try:
                await asyncio.wait_for(client.cancel_job(accepted.id), timeout=10)
            except (TimeoutError, BeaconError):
                pass
            raise


async def perf_from_requestor(node: Node, section: PerfSection) -> BenchResult:
    """Run the benchmark here, through the node's URL (its shim), end to end."""

    token = SecretStr(node.token.get_secret_value()) if node.token is not None else None
    target = Target(url=node.url, model=section.model, token=token, runtime_token=node.runtime_token)
    result = await asyncio.wait_for(
        run_bench(target, section.profile, section.prompts, slo=section.slo, detailed=section.detailed),
        timeout=section.timeout_s,
    )
    return result


async def _one(
    store: Store, run_id: str, node: Node, section: PerfSection, listener: PerfListener | None, poll_s: float
) -> PerfOutcome:
    where = section.where
    label = perf_label(node, where)

    def tell(kind: str, **detail: Any) -> None:
        store.add_event(run_id, kind, node_id=node.node_id, where=where, **detail)
        log.info(kind, run=run_id, node=node.node_id, where=where, **detail)
        if listener is not None:
            listener(kind, {"node_id": node.node_id, "region": node.region, "where": where, **detail})

    if store.get_node(run_id, node.node_id) is None:
        store.upsert_node(run_id, node)
    tell("perf_started", profile=section.profile.kind, label=label)
    try:
        if where == "node":
            result = await perf_on_node(node, section, f"beacon perf {run_id} {node.node_id}", poll_s)
        else:
            result = await perf_from_requestor(node, section)
    except TimeoutError:
        reason = f"the benchmark took longer than {section.timeout_s:g} s"
        tell("perf_failed", reason=reason)
        return PerfOutcome(node_id=node.node_id, where=where, ok=False, error=reason)
    except (BeaconError, ShimError, NodeUnreachable, OSError) as exc:
        tell("perf_failed", reason=str(exc))
        return PerfOutcome(node_id=node.node_id, where=where, ok=False, error=str(exc))
    except Exception as exc:  # the load generator is another package's code: one node's crash is that node's failure
        log.exception("perf_crashed", node=node.node_id)
        reason = f"{type(exc).__name__}: {exc}"
        tell("perf_failed", reason=reason)
        return PerfOutcome(node_id=node.node_id, where=where, ok=False, error=reason)
    row = store.add_bench_result(run_id, node.node_id, where, label, section.profile, result)
    ok = _usable(result)
    tell(
        "perf_done",
        bench_id=row.bench_id,
        steps=len(result.steps),
        best_output_throughput=round(_best(result), 3),
        **({} if ok else {"reason": "no request of the benchmark completed"}),
    )
    return PerfOutcome(
        node_id=node.node_id, where=where, ok=ok, bench_id=row.bench_id,
        error=None if ok else "no request of the benchmark completed",
    )  # fmt: skip


def runs_in_parallel(section: PerfSection, nodes: list[Node]) -> bool:
    if section.parallel is not None:
        return section.parallel
    return section.where == "node" and all(n.fleet != "local" for n in nodes)


async def run_suite_perf(
    store: Store, run: RunRow, fleet: Fleet, listener: PerfListener | None = None, poll_s: float = 1.0
) -> list[PerfOutcome]:
    """Benchmark every node the fleet holds now, as the run's suite says; store each result."""
    section = run.suite.perf if run.suite is not None else None
    if section is None:
        return []
    nodes = sorted(fleet.nodes(), key=lambda n: n.node_id)
    if not nodes:
        store.add_event(run.run_id, "perf_failed", where=section.where, reason="no live node to benchmark")
        return [PerfOutcome(node_id=None, where=section.where, ok=False, error="no live node to benchmark")]
    stored = {(b.node_id, b.where) for b in store.bench_results(run.run_id)}
    todo = [n for n in nodes if (n.node_id, section.where) not in stored]
    skipped = [
        PerfOutcome(node_id=n.node_id, where=section.where, ok=True, skipped=True) for n in nodes if n not in todo
    ]
    parallel = runs_in_parallel(section, todo)
    store.add_event(run.run_id, "perf_planned", where=section.where, nodes=[n.node_id for n in todo], parallel=parallel,
                    already_stored=[o.node_id for o in skipped])  # fmt: skip
    if parallel:
        outcomes = list(await asyncio.gather(*(_one(store, run.run_id, n, section, listener, poll_s) for n in todo)))
    else:
        outcomes = [await _one(store, run.run_id, n, section, listener, poll_s) for n in todo]
    return skipped + outcomes


# ---------------------------------------------------------------------------------------
# beacon bench --fleet


def perf_suite(section: PerfSection, regions: list[str], name: str | None = None) -> Suite:
    """A suite that holds only a perf section (what `beacon bench --fleet` runs)."""
    return Suite(
        name=name or f"bench-{section.profile.kind}",
        description="Performance benchmark over a fleet (beacon bench --fleet)",
        regions=regions or ["local"],
        perf=section,
    )


