"""`beacon run SUITE` and `beacon run --resume RUN_ID`: live progress, then where everything is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from beacon_golem.cli import app
from beacon_golem.cli.golem_options import (
    Budget,
    Image,
    ImageHash,
    LabelRegions,
    MaxPrice,
    MinVram,
    PaymentNetwork,
    RegionMap,
    Subnet,
)
from beacon_golem.cli.jobspec_options import ModelMap, Questions, RequireSignature, Trust, jobspec_options
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.reports.differences import write_difference_report
from beacon_golem.requestor.work.dispatcher import RunProgress
from beacon_golem.requestor.work.driver import (
    acceptance_verdict,
    execute_run,
    fleet_kind,
    golem_options,
    prepare_run,
)

console = Console(stderr=True)
out = Console(soft_wrap=True)


def progress_view(progress: RunProgress) -> Group:
    table = Table(title=None, expand=False)
    for col in ("node", "region", "state", "done", "failed", "in flight", "tok/s"):
        table.add_column(col, justify="right" if col not in ("node", "region", "state") else "left")
    for node in progress.nodes.values():
        table.add_row(
            node.node_id,
            node.region or "-",
            "alive" if node.alive else "[red]lost[/red]",
            str(node.done),
            str(node.failed),
            str(node.in_flight),
            f"{node.tokens_per_s:,.0f}",
        )
    summary = f"jobs {progress.finished}/{progress.total}: {progress.done} done, {progress.failed} failed"
    return Group(table, summary)


@app.command("run")
def run(
    suite_path: Path = typer.Argument(None, help="Suite YAML or Project Beacon JobSpec JSON", show_default=False),
    resume: str = typer.Option(
        None, "--resume", help="Finish the unfinished jobs of this run id (failed ones included)"
    ),
    keep_failed: bool = typer.Option(
        False, "--keep-failed", help="With --resume: leave failed jobs failed (default: retry them)"
    ),
    fleet: str = typer.Option(None, help="Where nodes come from: local, static or golem [default: local]"),
    nodes: int = typer.Option(None, help="How many nodes (local, golem) [default: 2]"),
    node: list[str] = typer.Option(None, "--node", help="Static node URL, optionally with @REGION (repeat)"),
    runtime: str = typer.Option(None, help="Runtime of the nodes the fleet starts [default: llamacpp]"),
    model: str = typer.Option(None, help="Model the local nodes load (default: the generated tiny model)"),
    parallel: int = typer.Option(None, help="Requests in flight per node (default: the suite's limit)"),
    db: Path = typer.Option(None, help="SQLite store [default: <data dir>/beacon.db]"),
    image: Image = None,
    image_hash: ImageHash = None,
    budget: Budget = None,
    max_price_glm_per_hour: MaxPrice = None,
    subnet: Subnet = None,
    payment_network: PaymentNetwork = None,
    min_vram_gib: MinVram = None,
    region_map: RegionMap = None,
    label_regions: LabelRegions = False,
    questions: Questions = None,
    model_map: ModelMap = None,
    trust: Trust = None,
    require_signature: RequireSignature = False,
) -> None:
    """Dispatch a suite over a fleet; every answer is stored with its provenance and a signed receipt."""
    settings = load_settings()
    jobspec = jobspec_options(questions, model_map, trust, require_signature)
    golem = golem_options(
        region_map,
        image=image,
        image_hash=image_hash,
        budget=budget,
        max_price_glm_per_hour=max_price_glm_per_hour,
        subnet=subnet,
        payment_network=payment_network,
        min_vram_gib=min_vram_gib,
        label_regions=label_regions,
    )
    given = {
        "kind": fleet_kind(fleet) if fleet is not None else None,
        "nodes": nodes,
        "node_urls": node or None,
        "runtime": runtime,
        "model": model,
        "parallel": parallel,
        "golem": golem or None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("node_urls") and "kind" not in given:
        given["kind"] = "static"
    if keep_failed and resume is None:
        raise UsageError("--keep-failed goes with --resume")
    prepared = prepare_run(settings, given, suite_path=suite_path, resume=resume, db=db, keep_failed=keep_failed,
                           jobspec=jobspec)  # fmt: skip
    store, record = prepared.store, prepared.run
    for note in prepared.notes:
        typer.echo(note, err=True)  # one line each, never wrapped
    out.print(f"run {record.run_id}  ({record.total_jobs} jobs, store {store.path})")
    live = Live(
        progress_view(RunProgress(total=record.total_jobs)), console=console, refresh_per_second=4, transient=False
    )
    try:
        with live:
            final = asyncio.run(
                execute_run(
                    store,
                    record,
                    prepared.fleet,
                    prepared.config,
                    prepared.receipts,
                    on_progress=lambda p: live.update(progress_view(p)),
                    on_perf=lambda kind, d: console.print(
                        f"{d.get('node_id')}: {kind.replace('_', ' ')} ({d.get('where')})"
                        + (f": {d['reason']}" if d.get("reason") else "")
                    ),
                    on_fleet_note=console.print,
                    lock=prepared.lock,
                )
            )
    except KeyboardInterrupt:
        console.print(f"interrupted: finish it with  beacon run --resume {record.run_id}")
        raise SystemExit(130) from None
    console.line()  # the live view leaves the cursor on its last line
    counts = final.job_counts
    out.print(f"run {final.run_id} {final.status}: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed")
    verdict = acceptance_verdict(store, final.run_id)
    if verdict is not None:
        out.print(verdict.line())
    # Beside the store it belongs to (--db DIR/b.db: DIR/reports/RUN).
    md, js = write_difference_report(store, final.run_id, store.path.parent / "reports" / final.run_id)
    out.print(f"store:       {store.path}")
    out.print(f"differences: {md}  ({js})")
    if prepared.suite.perf is not None:
        out.print(
            f"benchmarks:  {len(store.bench_results(final.run_id))} stored; beacon report {final.run_id} --html report.html"
        )
    if final.status != "done":
        raise SystemExit(1)
