"""`beacon router`'s routing over real local nodes: region picks the node, streaming passes through."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from beacon_golem.requestor.fleets.local import LocalFleet, LocalFleetConfig
from beacon_golem.requestor.gateway.gateway import REGION_HEADER, create_router_app
from tests.support import llama_server_binary, serve_app

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "ignore_eos": True}


async def test_router_sends_each_region_to_its_nodes_and_streams(tmp_path: Path, tiny_model: Path) -> None:
    llama_server_binary()
    config = LocalFleetConfig(nodes=3, regions=["US", "EU"], model=str(tiny_model), parallel=2, data_dir=tmp_path)
    async with LocalFleet(config) as fleet, serve_app(create_router_app(fleet, health_interval_s=0.2)) as url:
        regions = {n.node_id: n.region for n in fleet.nodes()}
        seen: Counter[tuple[str, str]] = Counter()
        async with aiohttp.ClientSession() as http:
            for region in ["US", "EU"] * 4:
                async with http.post(url + "/v1/chat/completions", json=CHAT, headers={REGION_HEADER: region}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["usage"]["completion_tokens"] == 6
                    seen[(region, resp.headers["X-Beacon-Node"])] += 1
            # body field instead of the header, streamed
            async with http.post(url + "/v1/chat/completions", json={**CHAT, "region": "EU", "stream": True}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
                assert regions[resp.headers["X-Beacon-Node"]] == "EU"
            async with http.post(url + "/v1/chat/completions", json=CHAT, headers={REGION_HEADER: "APAC"}) as resp:
                assert resp.status == 503
                assert "no healthy node in region APAC" in (await resp.json())["error"]
            async with http.get(url + "/v1/models") as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["beacon-tiny"]
            # a dead node is skipped once its health check fails
            us_nodes = sorted(n for n, r in regions.items() if r == "US")
            await fleet.kill(us_nodes[0])
            await asyncio.sleep(0.6)
            for _ in range(3):
                async with http.post(url + "/v1/chat/completions", json=CHAT, headers={REGION_HEADER: "US"}) as resp:
                    assert resp.status == 200 and resp.headers["X-Beacon-Node"] == us_nodes[1]
    assert all(regions[node] == region for region, node in seen)
    assert {node for region, node in seen if region == "US"} == set(us_nodes)  # load spread over both US nodes
