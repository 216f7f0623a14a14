"""A minimal yapapi requestor for the sandbox's tests: a GPU payload, a service, an event log.

It drives the unmodified yapapi 0.13.1 engine the way beacon-golem's fleet does: a `vm-nvidia`
payload resolved through the registry, `run_service` on a VPN, SocketProxy to port 8080.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from yapapi import events
from yapapi.contrib.service.socket_proxy import SocketProxyService
from yapapi.payload import Payload
from yapapi.props import inf
from yapapi.props.base import constraint, prop
from yapapi.props.builder import DemandBuilder
from yapapi.script import Script

GAP35 = "golem.!exp.gap-35.v1.inf.gpu"
GPU_ANY_LAYOUT = f"(|({GAP35}.model=*)\n\t({GAP35}.d0.model=*))"


@dataclass
class GpuPayload(Payload):
    package_url: str = prop("golem.srv.comp.task_package")
    package_format: str = prop("golem.srv.comp.vm.package_format", default="gvmkit-squash")
    runtime: str = constraint(inf.INF_RUNTIME_NAME, operator="=", default="vm-nvidia")
    capabilities: list[str] = constraint("golem.runtime.capabilities", operator="=", default_factory=lambda: ["vpn"])
    min_mem_gib: float = constraint(inf.INF_MEM, operator=">=", default=16.0)
    min_storage_gib: float = constraint(inf.INF_STORAGE, operator=">=", default=64.0)
    min_cpu_threads: int = constraint(inf.INF_THREADS, operator=">=", default=4)
    require_gpu: bool = field(default=True)

    async def decorate_demand(self, demand: DemandBuilder) -> None:
        await super().decorate_demand(demand)
        if self.require_gpu:
            demand.ensure(GPU_ANY_LAYOUT)


class ProbeService(SocketProxyService):
    """deploy + start (yapapi's default, with the VPN's deploy args), then one command."""

    remote_ports = [8080]

    def __init__(self) -> None:
        super().__init__()
        self.hello: str | None = None

    async def start(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        async for script in super().start():
            yield script
        assert self._ctx is not None
        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        hello = script.run("/bin/sh", "-c", 'echo "hello from $(pwd)"')
        yield script
        self.hello = (await hello).stdout


class EventLog:
    """Every yapapi event, kept for assertions (the engine's event_consumer)."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)

    def of(self, kind: type[events.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET a JSON body through a local proxy port, retrying while the proxy's server starts listening."""
    return await _get(url, timeout, json=True)


async def get_text(url: str, timeout: float = 10.0) -> str:
    return str(await _get(url, timeout, json=False))


async def _get(url: str, timeout: float, json: bool) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    resp.raise_for_status()
                    return await resp.json() if json else await resp.text()
            except aiohttp.ClientConnectorError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)


class PingerService(ProbeService):
    """Runs a command every 0.2 s while running, as a node's health check does."""

    async def run(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        assert self._ctx is not None
        while True:
            script = self._ctx.new_script(timeout=timedelta(seconds=10))
            script.run("/bin/true")
            yield script
            await asyncio.sleep(0.2)
