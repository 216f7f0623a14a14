"""Run the real shim (beacon_golem.shim.app) on loopback in front of a fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from beacon_golem.shim.app import ShimConfig, create_app


@asynccontextmanager
async def running_shim(runtime: str, upstream: str, data_dir: Path, **config: Any) -> AsyncIterator[str]:
    """Serve `create_app(ShimConfig(...))` on 127.0.0.1, port 0; yields the shim's URL."""
    app = create_app(ShimConfig(runtime=runtime, upstream=upstream, data_dir=data_dir, port=0, **config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def read_sse(resp: Any) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    text = (await resp.read()).decode()
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
