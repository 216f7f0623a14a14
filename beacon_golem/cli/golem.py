"""`beacon golem doctor`: check yagna, the app key, the payment account, funds and gftp."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import typer

from beacon_golem.cli import app
from beacon_golem.requestor.fleets.golem.doctor import run_doctor

golem_app = typer.Typer(help="Golem Network: rent GPU providers.", no_args_is_help=True)
app.add_typer(golem_app, name="golem")


@golem_app.command("doctor")
def doctor(
    network: str = typer.Option("holesky", help="Payment network: holesky (testnet) or polygon"),
    budget: float = typer.Option(1.0, help="GLM the run will reserve (checked with a released allocation)"),
    api_url: str = typer.Option(None, envvar="YAGNA_API_URL", help="yagna's REST API (default http://127.0.0.1:7465)"),
    driver: str = typer.Option("erc20", help="Payment driver"),
) -> None:
    """One line per check; each problem with the command that fixes it. Exit 1 if any fails."""
    if network not in ("holesky", "polygon"):
        raise typer.BadParameter("holesky or polygon", param_hint="--network")
    if budget <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--budget")
    checks = asyncio.run(run_doctor(api_url=api_url, network=network, driver=driver, budget=Decimal(str(budget))))
    for check in checks:
        typer.echo(check.line())
    failed = [c for c in checks if not c.ok and not c.skipped]
    if failed:
        typer.echo(f"{len(failed)} problem(s); fix them in order and run `beacon golem doctor` again", err=True)
        raise SystemExit(1)
    typer.echo("ready to rent on Golem")
