"""`beacon router`: one OpenAI-compatible URL over every node of a fleet."""

from __future__ import annotations

import asyncio

import typer
from aiohttp import web
from rich.console import Console

from beacon_golem.cli import app
from beacon_golem.core.config import install_event_loop, load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.requestor.gateway.gateway import REGION_HEADER, create_router_app
from beacon_golem.requestor.work.driver import FleetChoice, build_fleet

out = Console(soft_wrap=True)


@app.command("router")
def router(
    fleet: str = typer.Option("local", help="local or static"),
    nodes: int = typer.Option(2, help="Local nodes to start"),
    node: list[str] = typer.Option(None, "--node", help="Static node URL, optionally with @REGION (repeat)"),
    regions: str = typer.Option("US,EU", help="Region labels dealt to local nodes, comma-separated"),
    parallel: int = typer.Option(4, help="Requests in flight per node"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
) -> None:
    """Serve /v1/chat/completions routed by region (header X-Beacon-Region or body field `region`)."""
    if fleet not in ("local", "static"):
        raise UsageError(f"--fleet {fleet!r}: the router runs over local or static nodes")
    settings = load_settings()
    choice = FleetChoice(
        kind=fleet,
        nodes=nodes,
        node_urls=node or [],
        parallel=parallel,
        regions=[r.strip() for r in regions.split(",") if r.strip()],
    )
    fleet_obj = build_fleet(choice, settings.data_dir, settings.shim_token)

    async def serve() -> None:
        async with fleet_obj:
            runner = web.AppRunner(create_router_app(fleet_obj), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            for n in fleet_obj.nodes():
                out.print(f"  node {n.node_id}  {n.region or '-':6} {n.url}")
            out.print(f"router on http://{host}:{port}/v1  (pick a region with the {REGION_HEADER} header); Ctrl-C stops")
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

    install_event_loop(settings.event_loop)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        out.print("router stopped")
