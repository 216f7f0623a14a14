"""A real small run with questions and a perf section, for the perf, report and browser tests.

Two local nodes (llama-server + shim on the generated tiny model), regions US and EU:
two questions in each region, then a two-step concurrency sweep on each node with the load
generated on the node (where=node). About 3 s on two cores.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from beacon_golem.core.suite import Suite, parse_suite
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.driver import (
    FleetChoice,
    build_fleet,
    dispatch_config,
    execute_run,
    fleet_for_suite,
    plan_run,
)

SUITE = """\
name: perf-and-questions
regions: [US, EU]
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
generation: {max_tokens: 12}
limits: {per_node_concurrency: 2}
perf:
  where: node
  profile: {kind: sweep, concurrencies: [1, 2], num_prompts: 4}
  prompts: {input_len: 16, output_len: 8}
  slo: {ttft_ms: 5000}
"""


@dataclass
class PerfRun:
    db: Path
    run_id: str
    data_dir: Path
    suite: Suite
    status: str
    perf_events: list[tuple[str, dict]]


def make_perf_run(root: Path, suite_text: str = SUITE) -> PerfRun:
    suite = parse_suite(suite_text)
    db = root / "beacon.db"
    events: list[tuple[str, dict]] = []
    with Store(db) as store:
        choice = fleet_for_suite(FleetChoice(kind="local", nodes=2), suite)
        run = plan_run(store, suite, "tests/perf_support.py", choice)
        fleet = build_fleet(choice, root / "data", None)
        final = asyncio.run(
            execute_run(store, run, fleet, dispatch_config(suite, choice), on_perf=lambda k, d: events.append((k, d)))
        )
    return PerfRun(db=db, run_id=run.run_id, data_dir=root / "data", suite=suite, status=final.status, perf_events=events)
