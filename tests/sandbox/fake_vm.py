"""An in-process stand-in for a sandbox VM (the `Vm` interface of beacon_golem/sandbox/vm.py).

It runs `run` commands as real subprocesses in the VM's own directory (its "filesystem": container
paths map under it), and `start` brings up an aiohttp server on a free loopback port that plays the
VM's port 8080 (`GET /health` answers the VM id). No namespaces, no image: tests of the REST side
stay fast and run anywhere.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from aiohttp import web
from pydantic import BaseModel


class FakeVmError(Exception):
    pass


class FakeOutput(BaseModel):
    rc: int
    stdout: str
    stderr: str


class FakeVm:
    NODE_PORT = 8080

    def __init__(self, root: Path, vm_id: str) -> None:
        self.vm_id = vm_id
        self.dir = root / vm_id
        self.fs = self.dir / "fs"
        self.alive = False
        self.deployed = False
        self.image: bytes | None = None
        self.runs: list[list[str]] = []
        self.killed = False
        self.terminated = False
        self._runner: web.AppRunner | None = None
        self._ports: dict[int, int] = {}

    async def deploy(self, image: bytes) -> None:
        if not image:
            raise FakeVmError("empty image")
        self.image = image
        (self.fs / "data").mkdir(parents=True, exist_ok=True)
        self.deployed = True

    async def start(self) -> None:
        if not self.deployed:
            raise FakeVmError("not deployed")
        app = web.Application()

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "vm": self.vm_id})

        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._ports[self.NODE_PORT] = self._runner.addresses[0][1]
        self.alive = True

    async def run(self, entry_point: str, args: list[str], timeout_s: float) -> FakeOutput:
        if not self.alive:
            raise FakeVmError("the VM is not running")
        self.runs.append([entry_point, *args])
        proc = await asyncio.create_subprocess_exec(
            entry_point, *args, cwd=self.fs, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FakeVmError(f"timed out after {timeout_s:g} s") from None
        return FakeOutput(rc=proc.returncode or 0, stdout=out.decode(), stderr=err.decode())

    def _inside(self, location: str) -> Path | None:
        if location.startswith("container:"):
            return self.fs / location[len("container:") :].lstrip("/")
        return None

    @staticmethod
    def _host(location: str) -> Path:
        parsed = urlparse(location)
        if parsed.scheme != "file":
            raise FakeVmError(f"cannot reach {location}")
        return Path(unquote(parsed.path))

    async def transfer(self, source: str, destination: str) -> None:
        src_in, dst_in = self._inside(source), self._inside(destination)
        src = src_in or self._host(source)
        dst = dst_in or self._host(destination)
        if not src.is_file():
            raise FakeVmError(f"no such file: {source}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    async def open_tcp(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.alive or port not in self._ports:
            raise ConnectionRefusedError(f"nothing listens on port {port}")
        return await asyncio.open_connection("127.0.0.1", self._ports[port])

    async def _stop(self) -> None:
        self.alive = False
        self._ports.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def kill(self) -> None:
        self.killed = True
        await self._stop()

    async def terminate(self) -> None:
        self.terminated = True
        await self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeVmFactory:
    """A `VmFactory` that remembers the VMs it made."""

    def __init__(self) -> None:
        self.vms: list[FakeVm] = []

    async def __call__(self, root: Path, vm_id: str) -> FakeVm:
        vm = FakeVm(root, vm_id)
        vm.dir.mkdir(parents=True, exist_ok=True)
        self.vms.append(vm)
        return vm
