"""Helpers the tests share: real servers on loopback, waiting for them, reading their streams."""

from __future__ import annotations

import contextlib
import gc
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from beacon_golem.core.errors import BeaconError
from beacon_golem.node.runtimes.llamacpp import find_llama_server

#: The repository root and tests/data, for a test file at any depth under tests/.
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def llama_server_binary() -> Path:
    """The llama-server binary, or skip the test saying why there is none."""
    try:
        return find_llama_server()
    except BeaconError as exc:
        pytest.skip(f"llama-server unavailable: {exc}")


def wait_http_ok(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not OK after {timeout_s} s")


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve an aiohttp app on loopback, port 0; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        bound_host, port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{port}"
    finally:
        await runner.cleanup()


async def read_sse(resp: Any) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    text = (await resp.read()).decode()
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


def unclosed_sessions() -> int:
    """aiohttp sessions alive and not closed, after a collection: each one left behind prints
    "Unclosed client session" on the user's terminal when it is collected."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed)
