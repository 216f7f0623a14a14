"""`beacon router`: one OpenAI-compatible URL over every node of a fleet."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from beacon_golem.api.server import ServerBounds
from beacon_golem.api.server import serve as serve_app
from beacon_golem.cli import app
from beacon_golem.cli.jobspec_options import ModelMap
from beacon_golem.core.config import install_event_loop, load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.requestor.gateway.gateway import REGION_HEADER, create_router_app
from beacon_golem.requestor.work.beacon_import import load_model_map
from beacon_golem.requestor.work.driver import FleetChoice, build_fleet

out = Console(soft_wrap=True)


def is_loopback_host(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@app.command("router")
def router(
    fleet: str = typer.Option("local", help="local or static"),
    nodes: int = typer.Option(2, help="Local nodes to start"),
    node: list[str] = typer.Option(None, "--node", help="Static node URL, optionally with @REGION (repeat)"),
    regions: str = typer.Option("US,EU", help="Region labels dealt to local nodes, comma-separated"),
    parallel: int = typer.Option(4, help="Requests in flight per node"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    model_map: ModelMap = None,
) -> None:
    """Serve /v1/chat/completions routed by region (header X-Beacon-Region or body field `region`), and
    Beacon's hybrid-router contract (POST /inference, GET /providers, GET /health) for Beacon's runner.

    Beyond loopback the router requires its own token, BEACON_ROUTER_TOKEN (callers send
    `Authorization: Bearer <it>`); on loopback it may have one, and without one it never uses the
    nodes' token (BEACON_SHIM_TOKEN) for its callers."""
    if fleet not in ("local", "static"):
        raise UsageError(f"--fleet {fleet!r}: the router runs over local or static nodes")
    settings = load_settings()
    beacon_models = load_model_map(model_map)
    if settings.router_token is None and not is_loopback_host(host):
        raise UsageError(
            f"--host {host}: a router reachable beyond this machine needs its own token: set BEACON_ROUTER_TOKEN"
        )
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
            limits = settings.shim_limits()
            app = create_router_app(
                fleet_obj,
                token=settings.router_token,
                allowed_hosts=tuple(limits.allowed_hosts),
                bounds=ServerBounds(limits.header_timeout_s, limits.body_timeout_s, limits.max_json_depth),
                max_body_bytes=limits.max_body_bytes,
                beacon_model_map=beacon_models,
            )
            runner, _ = await serve_app(app, host, port)
            for n in fleet_obj.nodes():
                out.print(f"  node {n.node_id}  {n.region or '-':6} {n.url}")
            out.print(f"router on http://{host}:{port}/v1  (pick a region with the {REGION_HEADER} header); Ctrl-C stops")
            out.print(f"Beacon's runner: HYBRID_BASE=http://{host}:{port}  (POST /inference, GET /providers)")
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

    install_event_loop(settings.event_loop)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        out.print("router stopped")
