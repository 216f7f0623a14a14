"""`beacon probe`: can this Linux machine serve the runtimes (and host Golem VMs)?"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from beacon_golem.cli import app
from beacon_golem.node.probe.render import print_report
from beacon_golem.node.probe.report import run_probe


@app.command("probe")
def probe(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for machines)"),
    network: bool = typer.Option(False, "--network", help="Also try outbound connections (a few seconds at most)"),
    network_timeout: float = typer.Option(3.0, help="Seconds each outbound connection may take"),
    data_dir: Path = typer.Option(None, help="Where models and results would go: its disk is measured (default: here)"),
    matrix: Path = typer.Option(None, "--matrix", help="Also write this machine's compatibility matrix (matrix.md, matrix.json) into DIR"),
) -> None:
    """Check this machine: pass, warn or fail with a reason each, then which runtimes can run here."""
    report = asyncio.run(run_probe(data_dir, network=network, network_timeout_s=network_timeout))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_report(report, Console())
    if matrix is not None:  # one row; `beacon pilot` writes the same for every node of a fleet
        import platform

        from beacon_golem.core.matrix import NodeProbe, build_matrix
        from beacon_golem.reports.matrix import write_matrix

        row = NodeProbe(node_id=platform.node() or "this-machine", fleet="local", probe=report)
        md, js = write_matrix(build_matrix([row], fleet="local"), matrix)
        typer.echo(f"matrix: {md} ({js})", err=True)
