"""A real HTTP server on loopback that records every request it gets.

Subclasses add a runtime's routes. Nothing here is mocked: adapters and the shim talk to
it over TCP with their own aiohttp client sessions, exactly as they would to the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # the parsed JSON body, or None


class FakeServer:
    """`async with FakeX(...) as fake:` serves on `fake.url` until the block ends."""

    #: The document (URL or repository path) whose protocol the subclass follows.
    DOCUMENT = ""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.app = web.Application(middlewares=[self._record])
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.routes(self.app.router)

    def routes(self, router: web.UrlDispatcher) -> None:
        """Subclasses register the runtime's endpoints here."""

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()  # cached by aiohttp: handlers can read it again
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.received.append(Received(request.method, request.path, dict(request.headers), raw, body))
        return await handler(request)

    def bodies(self, path: str, method: str = "POST") -> list[Any]:
        """The JSON bodies received on `path`, oldest first."""
        return [r.body for r in self.received if r.path == path and r.method == method]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.received]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def sse(request: web.Request, events: list[Any], *, delay_s: float = 0.0) -> web.StreamResponse:
    """Write `events` as Server-Sent Events (`data: ...\\n\\n`); strings go as they are."""
    import asyncio

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i, event in enumerate(events):
        if i and delay_s:
            await asyncio.sleep(delay_s)
        data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        await resp.write(f"data: {data}\n\n".encode())
    await resp.write_eof()
    return resp
