"""`beacon golem doctor` (yagna, the app key, the payment account, funds, gftp) and `beacon golem sandbox`."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import typer

from beacon_golem.cli import app
from beacon_golem.requestor.fleets.golem.config import PAYMENT_NETWORKS
from beacon_golem.requestor.fleets.golem.doctor import run_doctor
from beacon_golem.sandbox.__main__ import main as sandbox_main

golem_app = typer.Typer(help="Golem Network: rent GPU providers.", no_args_is_help=True)
app.add_typer(golem_app, name="golem")


@golem_app.command("doctor")
def doctor(
    network: str = typer.Option("holesky", help="Payment network: holesky, hoodi, sepolia (testnets), polygon, amoy, mainnet"),
    budget: float = typer.Option(1.0, help="GLM the run will reserve (checked with a released allocation)"),
    api_url: str = typer.Option(None, envvar="YAGNA_API_URL", help="yagna's REST API (default http://127.0.0.1:7465)"),
    driver: str = typer.Option("erc20", help="Payment driver"),
) -> None:
    """One line per check; each problem with the command that fixes it. Exit 1 if any fails."""
    if network not in PAYMENT_NETWORKS:
        raise typer.BadParameter(", ".join(PAYMENT_NETWORKS), param_hint="--network")
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


@golem_app.command(
    "sandbox",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def sandbox(ctx: typer.Context) -> None:
    """An offline Golem network on loopback: prints `export` lines for `beacon run --fleet golem`, then
    serves until Ctrl-C (--help lists its options; docs/golem.md)."""
    raise SystemExit(sandbox_main(list(ctx.args)))
