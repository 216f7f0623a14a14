"""`beacon pilot --fleet local|static|golem`: probe every node of a fleet; a compatibility matrix.

The work is `beacon_golem.requestor.work.pilot.run_pilot`. Prints the run id at once, a line per node as
its probe comes back, then the matrix as a table, and writes matrix.md and matrix.json.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from beacon_golem.cli import app
from beacon_golem.cli.golem_options import (
    Budget,
    CpuOnly,
    Image,
    ImageHash,
    MaxPrice,
    MinVram,
    PaymentNetwork,
    RegionMap,
    Subnet,
)
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.core.matrix import Matrix, MatrixRow
from beacon_golem.node.probe.render import STYLE
from beacon_golem.reports.matrix import runtimes_text, write_matrix
from beacon_golem.requestor.store.store import open_store
from beacon_golem.requestor.work.driver import FleetChoice, build_fleet, fleet_kind, golem_options
from beacon_golem.requestor.work.pilot import run_pilot

#: Piped output gets a table wide enough to read rather than rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _status(status: str) -> Text:
    return Text(status.upper(), style=f"bold {STYLE.get(status, 'red')}")


def _checks_cell(row: MatrixRow) -> str:
    parts = []
    for status in ("fail", "warn"):
        ids = [c.id for c in row.checks if c.status == status]
        if ids:
            parts.append(f"{status}: {', '.join(ids)}")
    return "; ".join(parts) or ("all pass" if row.checks else "-")


def matrix_table(matrix: Matrix) -> Table:
    table = Table(title=f"Compatibility matrix ({len(matrix.rows)} nodes)", title_justify="left")
    for col in ("Node", "Provider", "Region", "GPU", "Driver", "CUDA", "Probe", "Checks", "Runtimes possible", "Not possible"):
        table.add_column(col, overflow="fold", no_wrap=col in ("Node", "Probe"))
    for r in matrix.rows:
        probe = _status(r.status) if r.status != "error" else Text.assemble(_status("error"), f" {r.error}")
        table.add_row(
            r.node_id, r.provider or "-", r.region or "-", r.gpu, r.driver or "-", r.cuda or "-", probe,
            _checks_cell(r), runtimes_text(r.runtimes, True), runtimes_text(r.runtimes, False),
        )  # fmt: skip
    return table


def _row_line(row: MatrixRow) -> str:
    if row.status == "error":
        return f"{row.node_id}: [red]no probe[/]: {row.error}"
    return f"{row.node_id}: probe {row.status.upper()}, {row.gpu}; runs {runtimes_text(row.runtimes, True)}"


@app.command("pilot")
def pilot(
    fleet: str = typer.Option("local", help="Where nodes come from: local, static or golem"),
    nodes: int = typer.Option(None, help="How many nodes (local, golem) [default: 2]"),
    node: list[str] = typer.Option(None, "--node", help="static: node URL, optionally with @REGION (repeat)"),
    runtime: str = typer.Option(None, help="Runtime the nodes run; golem: picks the image [default: llamacpp]"),
    model: str = typer.Option(None, help="local: model the nodes load (default: the generated tiny model)"),
    out_dir: Path = typer.Option(None, "--out", help="Where matrix.md and matrix.json go [default: <data dir>/reports/<run id>]"),
    db: Path = typer.Option(None, help="SQLite store [default: <data dir>/beacon.db]"),
    probe_timeout: float = typer.Option(120.0, min=1.0, help="Seconds one node's /info and /probe may take"),
    image: Image = None,
    image_hash: ImageHash = None,
    budget: Budget = None,
    max_price_glm_per_hour: MaxPrice = None,
    subnet: Subnet = None,
    payment_network: PaymentNetwork = None,
    cpu_only: CpuOnly = False,
    min_vram_gib: MinVram = None,
    region_map: RegionMap = None,
) -> None:
    """Rent or start nodes, collect each one's probe and fingerprint, and write a compatibility matrix."""
    settings = load_settings()
    fleet_kind(fleet)
    if node and fleet != "static":
        raise UsageError("--node URL is for --fleet static")
    if fleet == "static" and not node:
        raise UsageError("the static fleet needs at least one --node URL")
    golem = golem_options(
        region_map,
        image=image,
        image_hash=image_hash,
        budget=budget,
        max_price_glm_per_hour=max_price_glm_per_hour,
        subnet=subnet,
        payment_network=payment_network,
        cpu_only=cpu_only,
        min_vram_gib=min_vram_gib,
    )
    if golem and fleet != "golem":
        raise UsageError(f"--{next(iter(golem)).replace('_', '-')} is for --fleet golem")
    given = {"kind": fleet, "nodes": nodes, "node_urls": node or None, "runtime": runtime, "model": model, "golem": golem}
    choice = FleetChoice(**{k: v for k, v in given.items() if v is not None})
    store = open_store(db or settings.data_dir / "beacon.db")
    fleet_obj = build_fleet(choice, settings.data_dir, settings.shim_token, store)  # bad golem settings fail here
    run = store.create_pilot_run(choice.model_dump(mode="json"))
    out.print(f"run {run.run_id}  (compatibility pilot on a {fleet} fleet; store {store.path})")
    try:
        matrix = asyncio.run(
            run_pilot(store, run, fleet_obj, on_row=lambda r: err.print(_row_line(r)), on_note=err.print,
                      probe_timeout_s=probe_timeout)  # fmt: skip
        )
    except KeyboardInterrupt:
        store.finish_run(run.run_id, "interrupted")
        err.print(f"interrupted: pilot run {run.run_id} keeps the probes it has")
        raise SystemExit(130) from None
    out.print(matrix_table(matrix))
    md, js = write_matrix(matrix, out_dir or settings.data_dir / "reports" / run.run_id)
    probed = len(matrix.probed)
    out.print(f"run {run.run_id} {'done' if probed else 'failed'}: {probed} of {len(matrix.rows)} node(s) probed")
    out.print(f"matrix:  {md}  ({js})")
    out.print(f"store:   {store.path}")
    out.print(f"report:  beacon report {run.run_id} --html report.html")
    if not probed:
        raise SystemExit(1)
