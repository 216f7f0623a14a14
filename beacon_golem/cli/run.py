"""`beacon run SUITE` and `beacon run --resume RUN_ID`: live progress, then where everything is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from beacon_golem.cli import app
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.requestor.store.store import open_store
from beacon_golem.requestor.work.dispatcher import RunProgress
from beacon_golem.requestor.work.driver import (
    FleetChoice,
    build_fleet,
    check_fleet,
    dispatch_config,
    execute_run,
    fleet_for_suite,
    fleet_kind,
    golem_options,
    load_run_input,
    plan_run,
)

console = Console(stderr=True)
out = Console(soft_wrap=True)


def progress_view(progress: RunProgress) -> Group:
    table = Table(title=None, expand=False)
    for col in ("node", "region", "done", "failed", "in flight", "tok/s", ""):
        table.add_column(col, justify="right" if col not in ("node", "region", "") else "left")
    for node in progress.nodes.values():
        table.add_row(
            node.node_id,
            node.region or "-",
            str(node.done),
            str(node.failed),
            str(node.in_flight),
            f"{node.tokens_per_s:,.0f}",
            "" if node.alive else "[red]lost[/red]",
        )
    summary = f"jobs {progress.finished}/{progress.total}: {progress.done} done, {progress.failed} failed"
    return Group(table, summary)


@app.command("run")
def run(
    suite_path: Path = typer.Argument(None, help="Suite YAML or Project Beacon JobSpec JSON", show_default=False),
    resume: str = typer.Option(None, "--resume", help="Finish the unfinished jobs of this run id"),
    fleet: str = typer.Option(None, help="Where nodes come from: local, static or golem [default: local]"),
    nodes: int = typer.Option(None, help="How many nodes (local, golem) [default: 2]"),
    node: list[str] = typer.Option(None, "--node", help="Static node URL, optionally with @REGION (repeat)"),
    runtime: str = typer.Option(None, help="Runtime of the nodes the fleet starts [default: llamacpp]"),
    model: str = typer.Option(None, help="Model the local nodes load (default: the generated tiny model)"),
    parallel: int = typer.Option(None, help="Requests in flight per node (default: the suite's limit)"),
    db: Path = typer.Option(None, help="SQLite store [default: <data dir>/beacon.db]"),
    image: str = typer.Option(None, help="golem: image tag, sha3-224 hash or .gvmi URL [default: vm_images/images.lock.json]"),
    budget: float = typer.Option(None, help="golem: GLM for the whole run, never exceeded"),
    max_price_glm_per_hour: float = typer.Option(None, help="golem: most a node may cost per hour"),
    subnet: str = typer.Option(None, help="golem: subnet tag [default: public]"),
    payment_network: str = typer.Option(None, help="golem: holesky (testnet) or polygon"),
    min_vram_gib: float = typer.Option(None, help="golem: least GPU memory a provider must offer"),
    region_map: Path = typer.Option(None, help="golem: YAML/JSON file mapping provider id -> region"),
    label_regions: bool = typer.Option(False, "--label-regions", help="golem: deal the suite's regions to nodes as labels"),
) -> None:
    """Dispatch a suite over a fleet; every answer is stored with its provenance and a signed receipt."""
    settings = load_settings()
    if (suite_path is None) == (resume is None):
        raise UsageError("give a SUITE file or --resume RUN_ID (not both)")
    golem = golem_options(
        region_map,
        image=image,
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

    if resume is None:
        suite, source = load_run_input(suite_path)  # a bad suite fails here, before the store is touched
        choice = fleet_for_suite(FleetChoice(**given), suite)
        check_fleet(suite, choice)
        store = open_store(db or settings.data_dir / "beacon.db")
        fleet_obj = build_fleet(choice, settings.data_dir, settings.shim_token, store)
        record = plan_run(store, suite, source, choice)
    else:
        store = open_store(db or settings.data_dir / "beacon.db", create=False)
        record = store.find_run(resume)
        if record.suite is None:
            raise UsageError(f"run {record.run_id} is a compatibility pilot, not a suite run: run `beacon pilot` again")
        choice = FleetChoice(**{**(record.fleet_desc or {}), **given})
        fleet_obj = build_fleet(choice, settings.data_dir, settings.shim_token, store)
        record = store.reopen_run(record.run_id)
        suite = record.suite
    out.print(f"run {record.run_id}  ({record.total_jobs} jobs, store {store.path})")

    from beacon_golem.requestor.work.receipts import receipt_issuer

    receipts = receipt_issuer(settings.data_dir, record)
    live = Live(progress_view(RunProgress(total=record.total_jobs)), console=console, refresh_per_second=4, transient=False)
    try:
        with live:
            final = asyncio.run(
                execute_run(
                    store,
                    record,
                    fleet_obj,
                    dispatch_config(suite, choice),
                    receipts,
                    on_progress=lambda p: live.update(progress_view(p)),
                    on_perf=lambda kind, d: console.print(f"{d.get('node_id')}: {kind.replace('_', ' ')} ({d.get('where')})"
                                                          + (f": {d['reason']}" if d.get("reason") else "")),
                    on_fleet_note=console.print,
                )
            )
    except KeyboardInterrupt:
        store.finish_run(record.run_id, "interrupted")
        console.print(f"interrupted: finish it with  beacon run --resume {record.run_id}")
        raise SystemExit(130) from None
    counts = final.job_counts
    out.print(f"run {final.run_id} {final.status}: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed")
    from beacon_golem.reports.differences import write_difference_report

    md, js = write_difference_report(store, final.run_id, settings.data_dir / "reports" / final.run_id)
    out.print(f"store:       {store.path}")
    out.print(f"differences: {md}  ({js})")
    if suite.perf is not None:
        out.print(f"benchmarks:  {len(store.bench_results(final.run_id))} stored; beacon report {final.run_id} --html report.html")
    if final.status != "done":
        raise SystemExit(1)
