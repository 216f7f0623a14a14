"""`beacon node up`, `beacon shim`, `beacon models tiny`, `beacon infer`, `beacon demo`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from beacon_golem.api.client import ShimClient
from beacon_golem.cli import app
from beacon_golem.core.config import install_event_loop, load_settings
from beacon_golem.core.errors import UsageError, one_line
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.net import free_port
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.launcher import LocalNode, NodeConfig, serve_node
from beacon_golem.node.runtimes import RUNTIME_NAMES, adapter_class
from beacon_golem.node.shim.app import ShimConfig, create_app
from beacon_golem.node.tiny_model import DEFAULT_SEED, file_sha256, write_tiny_model

node_app = typer.Typer(help="Run a node (runtime + shim) on this machine.", no_args_is_help=True)
models_app = typer.Typer(help="Models for the embedded default.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(models_app, name="models")

out = Console(soft_wrap=True)
RUNTIME_HELP = f"Inference runtime: {', '.join(RUNTIME_NAMES)}"


@node_app.command("up")
def node_up(
    runtime: str = typer.Option("llamacpp", help=RUNTIME_HELP),
    model: str = typer.Option(None, help="Model file (llamacpp) or name; default: the generated tiny model"),
    host: str = typer.Option("127.0.0.1", help="Address the shim listens on (0.0.0.0 inside a VM)"),
    port: int = typer.Option(8080, help="Shim port"),
    data_dir: Path = typer.Option(None, help="Node data directory (models, jobs, logs)"),
    parallel: int = typer.Option(4, help="Requests the runtime serves at once (slots / OLLAMA_NUM_PARALLEL / max-num-seqs)"),
    upstream: str = typer.Option(None, help="Use an already running runtime at this URL instead of starting one"),
    region: str = typer.Option(None, help="Region label reported in /info"),
    ready_timeout: float = typer.Option(300.0, help="Seconds to wait for the runtime to load its model"),
    runtime_settings: str = typer.Option(
        None, "--settings", envvar="BEACON_RUNTIME_SETTINGS",
        help='The runtime\'s own settings as JSON, e.g. \'{"parallel": 8, "ctx_size": 8192}\' (docs/benchmarks.md)',
    ),  # fmt: skip
) -> None:
    """Start the runtime and the shim, wait for /health, print the URL; Ctrl-C or SIGTERM stops both."""
    settings = load_settings()
    adapter_class(runtime)
    try:
        launch = RuntimeSettings.model_validate_json(runtime_settings).check_for(runtime) if runtime_settings else RuntimeSettings()
    except ValidationError as exc:
        raise UsageError(f"--settings: {one_line(exc)}") from None
    config = NodeConfig(
        runtime=runtime,
        model=model,
        host=host,
        port=port,
        data_dir=data_dir or settings.data_dir / "node",
        parallel=parallel,
        token=settings.shim_token,
        upstream=upstream,
        region=region,
        ready_timeout_s=ready_timeout,
        limits=settings.shim_limits(),
        settings=launch,
        runtimes=settings.held_runtimes(),
    )

    def ready(node: LocalNode) -> None:
        out.print(f"node ready: {node.url}  (runtime {runtime} at {node.runtime_url}; Ctrl-C stops)")

    install_event_loop(settings.event_loop)
    asyncio.run(serve_node(config, ready))


@app.command("shim")
def shim(
    runtime: str = typer.Option(..., help=RUNTIME_HELP),
    upstream: str = typer.Option(None, help="Runtime base URL; default: its usual port on localhost"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
    data_dir: Path = typer.Option(None, help="Where jobs are kept"),
) -> None:
    """Serve the shim in front of a runtime that is already running."""
    settings = load_settings()
    cls = adapter_class(runtime)
    config = ShimConfig(
        runtime=runtime,
        upstream=upstream or f"http://127.0.0.1:{cls.default_port}",
        host=host,
        port=port,
        data_dir=data_dir or settings.data_dir / "shim",
        token=settings.shim_token,
        limits=settings.shim_limits(),
    )
    out.print(f"shim for {runtime} at {config.upstream} listening on http://{host}:{port}")
    install_event_loop(settings.event_loop)

    async def serve_until_stopped() -> None:
        import signal

        from beacon_golem.api.server import serve

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Header read timeout, and a client that disconnects cancels its generation (api/server.py).
        runner, _ = await serve(create_app(config), host, port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve_until_stopped())


@models_app.command("tiny")
def models_tiny(
    out_path: Path = typer.Option(Path("beacon-tiny.gguf"), "--out", help="Where to write the GGUF file"),
    seed: int = typer.Option(DEFAULT_SEED, help="Weights seed: the same seed writes the same bytes"),
) -> None:
    """Write the small deterministic GGUF model used by the embedded default (no download)."""
    path = write_tiny_model(out_path, seed)
    out.print(f"{path}  {path.stat().st_size} bytes  sha256:{file_sha256(path)}")


def _request(prompt: str, max_tokens: int, ignore_eos: bool, temperature: float | None, seed: int | None) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, max_tokens=max_tokens, ignore_eos=ignore_eos, temperature=temperature, seed=seed
    )


@app.command("infer")
def infer(
    url: str = typer.Argument(..., help="Node shim URL, e.g. http://127.0.0.1:8080"),
    prompt: str = typer.Option("Who are you?", help="Prompt sent as one user message"),
    max_tokens: int = typer.Option(32),
    ignore_eos: bool = typer.Option(False, help="Generate exactly max_tokens where the runtime allows"),
    temperature: float = typer.Option(None),
    seed: int = typer.Option(None),
) -> None:
    """Send one request through a node's shim and print the normalized result as JSON."""
    request = _request(prompt, max_tokens, ignore_eos, temperature, seed)

    async def go() -> str:
        async with ShimClient(url, load_settings().shim_token) as client:
            return (await client.infer(request)).model_dump_json(indent=2)

    typer.echo(asyncio.run(go()))


@app.command("demo")
def demo(
    prompt: str = typer.Option("What happened in Tiananmen Square in 1989?", help="Prompt to send"),
    max_tokens: int = typer.Option(32),
    data_dir: Path = typer.Option(None, help="Node data directory"),
) -> None:
    """Start a local node on the tiny model, send one request through the shim, print the result."""
    settings = load_settings()
    config = NodeConfig(data_dir=data_dir or settings.data_dir / "demo-node", port=free_port())
    request = _request(prompt, max_tokens, True, 0.0, 1)

    async def go() -> None:
        with out.status("starting a local node (llama-server + shim)..."):
            node = await LocalNode(config).__aenter__()
        try:
            out.print(f"node ready at {node.url}; sending one request through the shim")
            async with ShimClient(node.url) as client:
                result = await client.infer(request)
            typer.echo(json.dumps(result.model_dump(), indent=2))
            out.print(
                f"{result.completion_tokens} tokens ({result.token_count_source}), "
                f"TTFT {result.ttft_ms:.1f} ms, end to end {result.e2e_ms:.1f} ms on {result.runtime}"
            )
        finally:
            await node.stop()

    asyncio.run(go())
