"""`beacon report RUN_ID --html PATH [--md PATH]`: the run report, from the store alone."""

from __future__ import annotations

from pathlib import Path

import typer

from beacon_golem.cli import app
from beacon_golem.core.errors import UsageError
from beacon_golem.requestor.store.store import Store, default_db_path


@app.command("report")
def report(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix of it, or 'latest'"),
    html: Path = typer.Option(None, "--html", help="Write the self-contained HTML report here"),
    md: Path = typer.Option(None, "--md", help="Write the Markdown summary here"),
    db: Path = typer.Option(
        None, "--db", envvar="BEACON_DB", help="Run database (default: beacon.db in the data directory; env BEACON_DB)"
    ),
) -> None:
    """Charts (throughput, TTFT/TPOT percentiles vs concurrency), differences by region, node fingerprints, cost."""
    from beacon_golem.reports.html import write_run_report

    if html is None and md is None:
        raise UsageError("give --html PATH and/or --md PATH")
    with Store(db or default_db_path(), readonly=True) as store:
        run = store.find_run(run_id)
        result = write_run_report(store, run.run_id, html, md)
    typer.echo(
        f"run {result.run_id}: {len(result.perf)} benchmarks, {len(result.fingerprints)} nodes"
        + "".join(f"; wrote {p}" for p in (html, md) if p is not None)
    )
