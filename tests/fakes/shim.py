"""Run the real shim (beacon_golem.node.shim.app) on loopback in front of a fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from beacon_golem.node.shim.app import ShimConfig, create_app
from tests.support import read_sse, serve_app

__all__ = ["read_sse", "running_shim"]


@asynccontextmanager
async def running_shim(runtime: str, upstream: str, data_dir: Path, **config: Any) -> AsyncIterator[str]:
    """Serve `create_app(ShimConfig(...))` on 127.0.0.1; yields the shim's URL."""
    async with serve_app(create_app(ShimConfig(runtime=runtime, upstream=upstream, data_dir=data_dir, **config))) as url:
        yield url
