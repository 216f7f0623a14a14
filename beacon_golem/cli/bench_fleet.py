"""`beacon bench --fleet local|static|golem`: benchmark every node of a fleet as a stored run.

Called by `beacon bench` (cli/bench.py) with the profile, prompts and SLOs it parsed; the
work is `beacon_golem.requestor.work.perf_phase.bench_fleet`. Prints the run id at once, a line per node as
its benchmark starts and ends, then one table row per node and step.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from beacon_golem.core.bench import PromptSpec, StepResult
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import BeaconError, UsageError, one_line
from beacon_golem.core.files import write_text_atomic
from beacon_golem.core.metrics import SLO
from beacon_golem.core.profiles import Profile
from beacon_golem.core.suite import PerfSection
from beacon_golem.requestor.fleets.static import StaticNodeSpec
from beacon_golem.requestor.store.rows import BenchResultRow, RunRow
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.driver import FleetChoice, bench_fleet, fleet_kind
from beacon_golem.requestor.work.perf_phase import perf_suite

#: Piped output gets a table wide enough to read rather than rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True)


def _step(step: StepResult) -> str:
    if step.mode == "rate":
        return f"{step.request_rate}/s"
    return f"c={step.max_concurrency}" if step.max_concurrency is not None else step.step_label


def fleet_table(rows: list[BenchResultRow], regions: dict[str, str | None]) -> Table:
    """One row per node and step (latencies in ms)."""
    table = Table(title="per node (latencies in ms)", title_justify="left")
    columns = ("node", "region", "where", "runtime", "step", "ok/fail", "req/s", "tok/s", "TTFT p50", "TTFT p99",
               "TPOT p50", "E2EL p99")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("node", "region", "where", "runtime", "step") else "right")
    for row in rows:
        try:
            result = row.bench_result()
        except BeaconError as exc:
            table.add_row(row.node_id, regions.get(row.node_id) or "-", row.where, "?", f"unreadable: {exc}")
            continue
        for i, s in enumerate(result.steps):
            first = i == 0
            table.add_row(
                row.node_id if first else "", (regions.get(row.node_id) or "-") if first else "", row.where if first else "",
                result.target.runtime if first else "", _step(s) + (" !" if s.overloaded else ""),
                f"{s.completed}/{s.failed}", f"{s.request_throughput:.2f}",
                f"{s.output_throughput:,.0f}", f"{s.median_ttft_ms:.1f}", f"{s.p99_ttft_ms:.1f}",
                f"{s.median_tpot_ms:.2f}", f"{s.p99_e2el_ms:.1f}",
            )  # fmt: skip
    return table


def write_fleet_results(rows: list[BenchResultRow], path: Path) -> None:
    """--out with --fleet: every node's stored result as one JSON file (.json: a list, each with its
    node and where it ran from; .jsonl: vLLM's one flat result per line, each step tagged the same way)."""
    if path.suffix == ".jsonl":
        text = "".join(
            json.dumps({"node_id": r.node_id, "where": r.where, **step}) + "\n" for r in rows for step in r.steps
        )
    else:
        text = json.dumps([{"node_id": r.node_id, "where": r.where, "result": r.result} for r in rows], indent=2) + "\n"
    write_text_atomic(path, text)


def run_bench_fleet(
    *,
    fleet: str,
    nodes: int | None,
    node_urls: list[str],
    where: str,
    db: Path | None,
    profile: Profile,
    prompts: PromptSpec,
    slo: SLO | None,
    model: str | None,
    detailed: bool,
    runtime: str | None,
    local_model: str | None,
    parallel: int | None,
    golem: dict[str, Any],
    out_path: Path | None = None,
) -> RunRow:
    fleet_kind(fleet)
    if where not in ("node", "requestor"):
        raise UsageError(f"--where {where!r}: choose node or requestor")
    if node_urls and fleet != "static":
        raise UsageError("--node URL is for --fleet static")
    settings = load_settings()
    try:
        section = PerfSection(profile=profile, prompts=prompts, slo=slo if slo and slo.given() else None, model=model,
                              detailed=detailed, where=where)  # fmt: skip
    except ValidationError as exc:
        raise UsageError(one_line(exc)) from None
    regions = [r for r in dict.fromkeys(StaticNodeSpec.parse(u).region for u in node_urls) if r] if fleet == "static" else []
    choice_args: dict[str, Any] = {"kind": fleet, "node_urls": node_urls, "runtime": runtime or "llamacpp",
                                   "model": local_model, "parallel": parallel, "golem": golem}  # fmt: skip
    if nodes is not None:
        choice_args["nodes"] = nodes
    choice = FleetChoice(**choice_args)
    suite = perf_suite(section, regions or ["local"])

    def planned(store: Store, run: RunRow) -> None:
        out.print(f"run {run.run_id}  (benchmark on every node, where={where}; store {store.path})")

    def listener(kind: str, detail: dict[str, Any]) -> None:
        who = f"{detail.get('node_id')} ({detail.get('region') or '-'})"
        if kind == "perf_started":
            err.print(f"{who}: benchmark started ({detail.get('where')})")
        elif kind == "perf_done":
            err.print(f"{who}: done, {detail.get('steps')} steps, best {detail.get('best_output_throughput', 0):,.1f} output tok/s")
        elif kind == "perf_failed":
            err.print(f"[red]{who}: failed:[/] {detail.get('reason')}")

    store, final, rows = asyncio.run(bench_fleet(settings, suite, choice, db=db, on_planned=planned, listener=listener))
    if rows:
        out.print(fleet_table(rows, {n.node_id: n.region for n in store.nodes(final.run_id)}))
    out.print(f"run {final.run_id} {final.status}: {len(rows)} node benchmark(s) stored in {store.path}")
    if out_path is not None:
        write_fleet_results(rows, out_path)
        out.print(f"results written to {out_path}")
    out.print(f"report: beacon report {final.run_id} --html report.html")
    return final
