"""`VpnTunnel`: a local TCP port carried to one instance's port over Golem's VPN.

yagna exposes each VPN node's TCP port as a websocket (`GET /net-api/v2/vpn/net/{net}/tcp/{ip}/{port}`,
the URI yapapi's `Node.get_websocket_uri` gives). Every TCP connection to the local port becomes
one such websocket; bytes go through unchanged, both ways.

Why not yapapi's `SocketProxy` (yapapi 0.13.1, `contrib/service/socket_proxy.py`): it opens an
aiohttp session per connection and closes it only after a websocket that opened, so each upgrade
yagna refuses (a VM that died, a VPN not up yet, the retries of a first contact) leaves an unclosed
session behind, reported as "Unclosed client session" on the user's terminal when it is collected;
and it takes a port chosen beforehand, which someone else can bind first. Here one session serves
every connection of a tunnel and is closed with it, and the server binds port 0 and reads back
the port it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import aiohttp

from beacon_golem.requestor.fleets.golem.progress import log
from beacon_golem.requestor.fleets.golem.service import BeaconNodeService

#: Bytes read from the local socket at a time (also the largest websocket frame sent).
CHUNK_BYTES = 64 * 1024


class VpnTunnel:
    """One instance's remote port, served on 127.0.0.1 at `url` until `close()`."""

    def __init__(self, ws_uri: str, app_key: str, idle_timeout_s: float) -> None:
        self.ws_uri = ws_uri
        self.url = ""
        self._headers = {"Authorization": f"Bearer {app_key}"}
        self._idle_timeout_s = idle_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, service: BeaconNodeService, remote_port: int, timeout_s: float) -> VpnTunnel:
        """The tunnel to `remote_port` of a service started on a VPN; the app key is yapapi's own
        (YAGNA_APPKEY, which the engine read at start)."""
        node = service.network_node
        if node is None:
            raise RuntimeError("the instance is not on a VPN")
        tunnel = cls(node.get_websocket_uri(remote_port), os.environ.get("YAGNA_APPKEY", ""), timeout_s)
        await tunnel.start()
        return tunnel

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._carry(reader, writer)
        except asyncio.CancelledError:
            pass
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # a refused upgrade or a dropped VPN: the local client sees its connection closed
            log.info("golem.tunnel_connection_failed", ws=self.ws_uri, error=str(exc) or type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.ws_uri, headers=self._headers, autoping=True) as ws:

            async def upstream() -> None:
                while data := await reader.read(CHUNK_BYTES):
                    await ws.send_bytes(data)
                await ws.close()

            async def downstream() -> None:
                while True:
                    message = await ws.receive(timeout=self._idle_timeout_s)
                    if message.type != aiohttp.WSMsgType.BINARY:
                        return  # CLOSE, CLOSED, ERROR (text frames are not part of the protocol)
                    writer.write(message.data)
                    await writer.drain()

            tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
            try:
                # either side ending ends the connection: the local client closed, or the remote did
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._session is not None:
            await self._session.close()
            self._session = None
