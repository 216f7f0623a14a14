"""Fixtures for sandbox VMs: the baked tiny model, the node image, and VMs that are torn down
(and checked for leftovers: processes, mounts, files) whatever the test did.

A pytest plugin: a test module loads it with `pytest_plugins = ["tests.sandbox.vm_fixtures"]`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from beacon_golem.sandbox.image import build_image, write_tiny_model
from beacon_golem.sandbox.vm import NamespaceVm, Vm, create_vm

#: A one-line HTTP server on 0.0.0.0:$1 that answers every GET with the VM's hostname.
ID_SERVER = (
    "import http.server, socket, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), H).serve_forever()\n"
)


PROBE = (
    "import os, sys; from beacon_golem.sandbox import vm_linux as l\n"
    "if os.geteuid() != 0: l.unshare(l.CLONE_NEWUSER)\n"
    "l.unshare(l.CLONE_NEWNS | l.CLONE_NEWNET | l.CLONE_NEWPID)\n"
)


@pytest.fixture(scope="session")
def namespaces() -> None:
    """Skip where this machine gives no namespaces (neither root nor unprivileged user namespaces)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"no Linux namespaces here: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("vm-model") / "beacon-tiny.gguf")


@pytest.fixture(scope="session")
def node_image(tiny_model_file: Path) -> bytes:
    """The llamacpp node image with the tiny model baked in."""
    return build_image("llamacpp", model_path=tiny_model_file)


def host_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line for line in fh if f" {path}/" in line or f" {path} " in line]


MakeVm = Callable[..., Awaitable[NamespaceVm]]


@pytest.fixture
async def make_vm(tmp_path: Path, node_image: bytes, namespaces: None) -> AsyncIterator[MakeVm]:
    """make_vm(vm_id, start=True, image=None, user_namespace=None) -> a deployed (and started) VM; all are terminated afterwards
    and nothing of theirs may remain: no process in their PID namespaces, no host mount, no file."""
    root = tmp_path / "sandbox"
    vms: list[NamespaceVm] = []
    watched: list[psutil.Process] = []

    async def make(
        vm_id: str, *, start: bool = True, image: bytes | None = None, user_namespace: bool | None = None
    ) -> NamespaceVm:
        vm = await create_vm(root, vm_id, user_namespace=user_namespace)
        assert isinstance(vm, NamespaceVm) and isinstance(vm, Vm)
        vms.append(vm)
        await vm.deploy(node_image if image is None else image)
        if start:
            await vm.start()
            watched.extend(psutil.Process(pid) for pid in vm.processes())
        return vm

    yield make
    await asyncio.gather(*(vm.terminate() for vm in vms))
    for vm in vms:
        assert vm.processes() == [], f"{vm.vm_id} left processes behind"
    left = [p.pid for p in watched if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], "VM processes outlived terminate()"
    assert host_mounts_under(root) == [], "a VM mount leaked into the host"
    assert list(root.iterdir()) == [], "terminate() left files behind"
    shutil.rmtree(root, ignore_errors=True)


async def http_get(vm: Vm, path: str, port: int = 8080) -> tuple[int, bytes]:
    """GET through the VM's bridge, as the VPN would carry it: (status, body)."""
    reader, writer = await vm.open_tcp(port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def http_post(vm: Vm, path: str, body: bytes, port: int = 8080) -> tuple[int, bytes]:
    reader, writer = await vm.open_tcp(port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


async def wait_port(vm: Vm, port: int, timeout_s: float = 20) -> None:
    """Until something in the VM accepts connections on `port`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await vm.open_tcp(port)
            writer.close()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def start_id_server(vm: Vm, port: int = 8080) -> None:
    await vm.run("/bin/sh", ["-c", 'python3 -c "$1" "$2" > /dev/null 2>&1 &', "sh", ID_SERVER, str(port)], 10)
    await wait_port(vm, port)
