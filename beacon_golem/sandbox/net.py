"""The net API (ya-client `net-api.yaml`, requestor side) and the VPN's TCP websocket.

yapapi's `Network` creates a net (`POST /net`), adds the requestor's address (`POST
/net/{net}/addresses`) and each provider node (`POST /net/{net}/nodes`, again on refresh), removes
them at the end. A proxied connection is a websocket `GET /net/{net}/tcp/{ip}/{port}` whose binary
messages carry the TCP stream to `ip:port` inside the VPN: here, to that node's VM through
`Vm.open_tcp(port)`. As in yagna (core/vpn/src/requestor.rs), the connect happens before the
upgrade, and when it fails the upgrade is refused with an error status (504 for a timeout), which
makes yapapi's SocketProxy drop the local socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, Field

from beacon_golem.sandbox.activity import Activities, Activity
from beacon_golem.sandbox.faults import FaultPlan
from beacon_golem.sandbox.wire import ApiError, WireModel, new_id, not_found, read_body, respond

log = structlog.get_logger(__name__)


class NetworkBody(WireModel):
    id: str | None = None
    ip: str
    mask: str | None = None
    gateway: str | None = None


class NetworkWire(WireModel):
    id: str
    ip: str
    mask: str
    gateway: str | None = None


class AddressWire(WireModel):
    ip: str


class NodeWire(WireModel):
    id: str
    ip: str


class NetSettings(BaseModel):
    connect_timeout_s: float = Field(default=10.0, gt=0)
    chunk_bytes: int = Field(default=64 * 1024, gt=0)


class Network:
    def __init__(
        self, network_id: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network, gateway: str | None
    ) -> None:
        self.network_id = network_id
        self.net = net
        self.gateway = gateway
        self.addresses: list[str] = []
        self.nodes: dict[str, str] = {}

    def wire(self) -> NetworkWire:
        return NetworkWire(
            id=self.network_id, ip=str(self.net.network_address), mask=str(self.net.netmask), gateway=self.gateway
        )

    def check_ip(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ApiError(400, f"invalid IP address {ip!r}") from exc
        if address not in self.net:
            raise ApiError(400, f"address {ip} is not in network {self.net}")
        return str(address)


class Networks:
    def __init__(self, requestor_id: str, activities: Activities, faults: FaultPlan, settings: NetSettings) -> None:
        self.requestor_id = requestor_id
        self.activities = activities
        self.faults = faults
        self.settings = settings
        self.networks: dict[str, Network] = {}
        self._connections: set[asyncio.Task[None]] = set()

    def network(self, network_id: str) -> Network:
        network = self.networks.get(network_id)
        if network is None:
            raise not_found("Network", network_id)
        return network

    def create(self, body: NetworkBody) -> Network:
        spec = f"{body.ip}/{body.mask}" if body.mask and "/" not in body.ip else body.ip
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError as exc:
            raise ApiError(400, f"invalid network {spec!r}: {exc}") from exc
        network_id = body.id or new_id()
        if network_id in self.networks:
            raise ApiError(409, f"network id {network_id} taken")
        network = Network(network_id, net, body.gateway)
        self.networks[network_id] = network
        log.info("network created", network_id=network_id, net=str(net))
        return network

    def remove(self, network_id: str) -> None:
        self.network(network_id)
        del self.networks[network_id]

    def add_address(self, network_id: str, body: AddressWire) -> None:
        network = self.network(network_id)
        ip = network.check_ip(body.ip)
        if ip in network.addresses or ip in network.nodes.values():
            raise ApiError(409, f"address {ip} taken")
        network.addresses.append(ip)

    def add_node(self, network_id: str, body: NodeWire) -> None:
        network = self.network(network_id)
        ip = network.check_ip(body.ip)
        if ip in network.addresses:
            if body.id.lower() != self.requestor_id.lower():
                raise ApiError(409, f"address {ip} taken by the requestor")
            return  # yapapi's refresh re-adds the requestor's own address: yagna accepts it
        owner = next((node for node, node_ip in network.nodes.items() if node_ip == ip), None)
        if owner is not None and owner != body.id:
            raise ApiError(409, f"address {ip} taken")
        network.nodes[body.id] = ip

    def remove_node(self, network_id: str, node_id: str) -> None:
        network = self.network(network_id)
        if network.nodes.pop(node_id, None) is None:
            raise not_found("Node", node_id)

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # ---- the VPN ----------------------------------------------------------------------------------
    async def connect(self, request: web.Request) -> web.StreamResponse:
        network = self.network(request.match_info["net"])
        ip = network.check_ip(request.match_info["ip"])
        try:
            port = int(request.match_info["port"])
        except ValueError as exc:
            raise ApiError(400, f"invalid port {request.match_info['port']!r}") from exc
        node_id = next((node for node, node_ip in network.nodes.items() if node_ip == ip), None)
        if node_id is None:
            raise ApiError(404, f"no node with address {ip} in network {network.network_id}")
        activity = self.activities.live_for_provider(node_id)
        if activity is None or activity.state not in ("Deployed", "Ready"):
            raise ApiError(504, f"connection to {ip}:{port} timed out (the node's VM is not running)")
        refusal = self.faults.refuse_vpn(node_id)
        if refusal is not None:
            activity.record.vpn_refused += 1
            raise ApiError(504, f"{refusal}: {ip}:{port}")
        try:
            reader, writer = await asyncio.wait_for(activity.vm.open_tcp(port), self.settings.connect_timeout_s)
        except TimeoutError as exc:
            activity.record.vpn_refused += 1
            raise ApiError(504, f"connection to {ip}:{port} timed out") from exc
        except Exception as exc:  # VmError, ConnectionRefusedError: nothing listens there
            activity.record.vpn_refused += 1
            raise ApiError(504, f"connection to {ip}:{port} failed: {exc}") from exc

        ws = web.WebSocketResponse(max_msg_size=0)
        try:
            await ws.prepare(request)
        except Exception:
            writer.close()
            raise
        self.activities.note_vpn_connection(activity)
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._bridge(ws, reader, writer, activity)
        finally:
            if task is not None:
                self._connections.discard(task)
        return ws

    async def _bridge(
        self, ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: Activity
    ) -> None:
        activity.connections.add(writer)

        async def to_ws() -> None:
            while True:
                data = await reader.read(self.settings.chunk_bytes)
                if not data:
                    return
                await ws.send_bytes(data)

        async def to_tcp() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                elif msg.type == WSMsgType.TEXT:
                    data = msg.data.encode()
                else:
                    return
                # request lines (a JSON body escapes CR LF): what request-counted faults count
                activity.record.vpn_requests += data.count(b" HTTP/1.1\r\n")
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.ensure_future(to_ws()), asyncio.ensure_future(to_tcp())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            activity.connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            await ws.close()

    # ---- HTTP -------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        p = "/net-api/v1"
        return [
            web.get(f"{p}/net", self._h_networks),
            web.post(f"{p}/net", self._h_create),
            web.get(f"{p}/net/{{net}}", self._h_network),
            web.delete(f"{p}/net/{{net}}", self._h_remove),
            web.get(f"{p}/net/{{net}}/addresses", self._h_addresses),
            web.post(f"{p}/net/{{net}}/addresses", self._h_add_address),
            web.get(f"{p}/net/{{net}}/nodes", self._h_nodes),
            web.post(f"{p}/net/{{net}}/nodes", self._h_add_node),
            web.delete(f"{p}/net/{{net}}/nodes/{{node}}", self._h_remove_node),
            web.get(f"{p}/net/{{net}}/tcp/{{ip}}/{{port}}", self.connect),
        ]

    async def _h_networks(self, request: web.Request) -> web.Response:
        return respond([n.wire() for n in self.networks.values()])

    async def _h_create(self, request: web.Request) -> web.Response:
        return respond(self.create(await read_body(request, NetworkBody)).wire(), status=201)

    async def _h_network(self, request: web.Request) -> web.Response:
        return respond(self.network(request.match_info["net"]).wire())

    async def _h_remove(self, request: web.Request) -> web.Response:
        self.remove(request.match_info["net"])
        return respond(None)

    async def _h_addresses(self, request: web.Request) -> web.Response:
        return respond([AddressWire(ip=ip) for ip in self.network(request.match_info["net"]).addresses])

    async def _h_add_address(self, request: web.Request) -> web.Response:
        self.add_address(request.match_info["net"], await read_body(request, AddressWire))
        return respond(None)

    async def _h_nodes(self, request: web.Request) -> web.Response:
        nodes = self.network(request.match_info["net"]).nodes
        return respond([NodeWire(id=node, ip=ip) for node, ip in nodes.items()])

    async def _h_add_node(self, request: web.Request) -> web.Response:
        self.add_node(request.match_info["net"], await read_body(request, NodeWire))
        return respond(None)

    async def _h_remove_node(self, request: web.Request) -> web.Response:
        self.remove_node(request.match_info["net"], request.match_info["node"])
        return respond(None)
