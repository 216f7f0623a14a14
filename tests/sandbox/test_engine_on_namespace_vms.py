"""The yapapi engine against the sandbox with its real VMs (Linux namespaces, vm.py): each instance
starts a server on its VM's 0.0.0.0:8080 and is reached over the VPN through SocketProxy."""

from __future__ import annotations

import shlex
from collections.abc import AsyncGenerator, Awaitable
from datetime import timedelta
from typing import Any

from yapapi.contrib.service.socket_proxy import SocketProxy
from yapapi.payload.package import resolve_package_url
from yapapi.script import Script
from yapapi.services import ServiceState

from beacon_golem.sandbox.image import build_image
from beacon_golem.sandbox.registry import RegistryImage
from beacon_golem.sandbox.server import _default_vm_factory
from tests.sandbox.conftest import MakeSandbox
from tests.sandbox.requestor import EventLog, GpuPayload, ProbeService, free_ports, get_text, wait_for
from tests.sandbox.test_yapapi_engine import golem_for
from tests.sandbox.vm_fixtures import ID_SERVER, namespaces  # noqa: F401  (namespaces: a fixture)

TAG = "beacon/node-llamacpp:sandbox"
WAIT_PORT = (
    "import socket, sys, time\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        socket.create_connection(('127.0.0.1', 8080), 1).close(); sys.exit(0)\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
    "sys.exit(1)\n"
)


class IdServerService(ProbeService):
    async def start(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        async for script in super().start():
            yield script
        assert self._ctx is not None
        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        script.run("/bin/sh", "-c", f"setsid python3 -c {shlex.quote(ID_SERVER)} 8080 > /dev/null 2>&1 < /dev/null &")
        script.run("/bin/sh", "-c", f"python3 -c {shlex.quote(WAIT_PORT)}")
        yield script


async def test_instances_on_namespace_vms_each_answer_on_their_own_8080(
    make_sandbox: MakeSandbox,
    gftp_on_path: object,
    namespaces: None,  # noqa: F811
) -> None:
    image = RegistryImage(tag=TAG, data=build_image("llamacpp"))
    sandbox = await make_sandbox(providers=2, images=[image], factory=_default_vm_factory)
    log = EventLog()
    payload = GpuPayload(package_url=await resolve_package_url(sandbox.registry_url, image_tag=TAG))
    async with golem_for(sandbox, log) as golem:
        network = await golem.create_network("192.168.0.1/24")
        cluster = await golem.run_service(IdServerService, num_instances=2, payload=payload, network=network)
        await wait_for(
            lambda: len(cluster.instances) == 2 and all(s.state == ServiceState.running for s in cluster.instances),
            60,
            "two running instances",
        )
        ports = free_ports(2)
        proxy = SocketProxy(ports=ports)
        await proxy.run(cluster)
        names = [await get_text(f"http://127.0.0.1:{port}/") for port in ports]
        await proxy.stop()
        cluster.stop()
        await wait_for(lambda: all(s.state == ServiceState.terminated for s in cluster.instances), 30, "terminated")
        await network.remove()

    vm_ids = sorted(a.vm_id for a in sandbox.records.activities.values())
    assert sorted(names) == vm_ids
    assert all(i.accepted for i in sandbox.records.invoices.values()) and len(sandbox.records.invoices) == 2
    assert not list(sandbox.workdir.glob("*/volumes"))  # every VM freed its files
