"""The net API and the VPN websocket: bytes to the node's VM, refusals before the upgrade."""

from __future__ import annotations

import aiohttp
import pytest

from beacon_golem.sandbox.faults import Fault
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import Api, MakeSandbox
from tests.sandbox.flows import rent, start_vm

NET = "/net-api/v1/net"


async def network_with_nodes(api: Api, sandbox: Sandbox, nodes: int) -> tuple[str, list[str]]:
    """A network with the requestor at .1 and the first `nodes` providers at .2, .3, ... each on a VM."""
    status, net = await api.post(NET, {"ip": "192.168.0.0", "mask": "255.255.255.0"})
    assert status == 201, net
    assert (await api.post(f"{NET}/{net['id']}/addresses", {"ip": "192.168.0.1"}))[0] == 204
    ips = []
    for index in range(nodes):
        ip = f"192.168.0.{index + 2}"
        provider = sandbox.providers[index]
        assert (await api.post(f"{NET}/{net['id']}/nodes", {"id": provider.provider_id, "ip": ip}))[0] == 204
        await start_vm(api, await rent(api, sandbox, index))
        ips.append(ip)
    return net["id"], ips


async def http_get_over_vpn(session: aiohttp.ClientSession, sandbox: Sandbox, net: str, ip: str) -> bytes:
    url = f"{sandbox.url.replace('http', 'ws', 1)}{NET}/{net}/tcp/{ip}/8080"
    headers = {"Authorization": f"Bearer {sandbox.app_key}"}
    async with session.ws_connect(url, headers=headers) as ws:
        await ws.send_bytes(f"GET /health HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY
            data += msg.data
        return data


async def test_the_websocket_reaches_each_nodes_own_port(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=2)
    api = Api(api_session, sandbox)
    net, ips = await network_with_nodes(api, sandbox, 2)
    answers = [await http_get_over_vpn(api_session, sandbox, net, ip) for ip in ips]
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert b"sandbox-00" in answers[0] and b"sandbox-01" in answers[1]
    assert [a.vpn_connections for a in sandbox.records.activities.values()] == [1, 1]


@pytest.mark.parametrize(
    ("ip", "port", "status"),
    [("192.168.0.2", 9999, 504), ("192.168.0.9", 8080, 404), ("10.0.0.1", 8080, 400)],
)
async def test_a_failed_connect_refuses_the_upgrade(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, ip: str, port: int, status: int
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    net, _ = await network_with_nodes(api, sandbox, 1)
    url = f"{sandbox.url.replace('http', 'ws', 1)}{NET}/{net}/tcp/{ip}/{port}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api_session.ws_connect(url, headers={"Authorization": f"Bearer {sandbox.app_key}"})
    assert refused.value.status == status


async def test_vpn_flaky_refuses_each_providers_first_connects(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.VPN_FLAKY])
    api = Api(api_session, sandbox)
    net, ips = await network_with_nodes(api, sandbox, 2)
    for ip in ips:
        for _ in range(2):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http_get_over_vpn(api_session, sandbox, net, ip)
            assert refused.value.status == 504
        assert (await http_get_over_vpn(api_session, sandbox, net, ip)).startswith(b"HTTP/1.1 200")
    assert [(a.vpn_refused, a.vpn_connections) for a in sandbox.records.activities.values()] == [(2, 1), (2, 1)]
    assert [f.fault for f in sandbox.records.faults] == ["vpn-flaky"] * 4


async def test_vpn_dead_never_connects_one_provider(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=2, faults=[Fault.VPN_DEAD])
    api = Api(api_session, sandbox)
    net, (dead, alive) = await network_with_nodes(api, sandbox, 2)
    for _ in range(3):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http_get_over_vpn(api_session, sandbox, net, dead)
    assert (await http_get_over_vpn(api_session, sandbox, net, alive)).startswith(b"HTTP/1.1 200")
    assert {f.provider_id for f in sandbox.records.faults} == {sandbox.providers[0].provider_id}


async def test_network_bookkeeping(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    assert (await api.post(NET, {"ip": "192.168.0.0/33"}))[0] == 400
    status, net = await api.post(NET, {"ip": "10.1.0.0/16"})
    assert status == 201 and net["mask"] == "255.255.0.0"
    path = f"{NET}/{net['id']}"
    assert (await api.post(f"{path}/addresses", {"ip": "10.2.0.1"}))[0] == 400
    assert (await api.post(f"{path}/addresses", {"ip": "10.1.0.1"}))[0] == 204
    provider = sandbox.providers[0].provider_id
    assert (await api.post(f"{path}/nodes", {"id": provider, "ip": "10.1.0.1"}))[0] == 409
    assert (await api.post(f"{path}/nodes", {"id": sandbox.requestor_id, "ip": "10.1.0.1"}))[0] == 204  # refresh
    assert (await api.post(f"{path}/nodes", {"id": provider, "ip": "10.1.0.2"}))[0] == 204
    assert (await api.post(f"{path}/nodes", {"id": provider, "ip": "10.1.0.2"}))[0] == 204  # refresh
    assert (await api.get(f"{path}/nodes"))[1] == [{"id": provider, "ip": "10.1.0.2"}]
    assert (await api.delete(f"{path}/nodes/{provider}"))[0] == 204
    assert (await api.delete(f"{path}/nodes/{provider}"))[0] == 404
    assert [n["id"] for n in (await api.get(NET))[1]] == [net["id"]]
    assert (await api.delete(path))[0] == 204
    assert (await api.get(path))[0] == 404
