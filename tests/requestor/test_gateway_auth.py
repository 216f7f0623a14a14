"""Who may use `beacon router` (issue 12, finding 6), over a real node server on loopback that
requires a token and records every Authorization header it gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from beacon_golem.cli import main
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.gateway.gateway import create_router_app
from tests.requestor.work.test_lying_node import node_info
from tests.support import serve_app

NODE_TOKEN = "node-secret-1234"
ROUTER_TOKEN = "router-secret-5678"
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@asynccontextmanager
async def token_node(seen: list[str | None]) -> AsyncIterator[str]:
    """A node that requires NODE_TOKEN on everything but /health, and records what it was sent."""

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path != "/health":  # the router's own health checks are not a caller's request
            seen.append(request.headers.get("Authorization"))
        if request.path != "/health" and request.headers.get("Authorization") != f"Bearer {NODE_TOKEN}":
            return web.json_response({"error": "no", "status": 401}, status=401)
        return await handler(request)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "runtime": "llamacpp", "models": ["beacon-tiny"]})

    async def info(_: web.Request) -> web.Response:
        return web.json_response(node_info())

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"choices": [{"message": {"content": "hello"}}]})

    app = web.Application(middlewares=[auth])
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        yield url


@asynccontextmanager
async def router(node_url: str, token: str | None) -> AsyncIterator[str]:
    fleet = StaticFleet([StaticNodeSpec.parse(f"{node_url}@US", SecretStr(NODE_TOKEN))])
    async with fleet:
        app = create_router_app(fleet, health_interval_s=0.1, token=SecretStr(token) if token else None)
        async with serve_app(app) as url:
            await asyncio.sleep(0.2)
            yield url


async def test_a_router_without_its_own_token_never_sends_a_request_with_the_nodes_token() -> None:
    seen: list[str | None] = []
    async with token_node(seen) as node, router(node, None) as url, aiohttp.ClientSession() as http:
        seen.clear()
        async with http.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 401 and "BEACON_ROUTER_TOKEN" in (await resp.json())["error"]
        async with http.get(url + "/nodes") as resp:
            rows = await resp.json()
            assert resp.status == 200 and rows[0]["node_id"] == "static-0" and "url" not in rows[0]
            assert node not in json.dumps(rows)
    assert f"Bearer {NODE_TOKEN}" not in seen  # the node never saw its token for an unauthenticated caller


async def test_a_router_with_a_token_answers_only_callers_that_present_it() -> None:
    seen: list[str | None] = []
    async with token_node(seen) as node, router(node, ROUTER_TOKEN) as url, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer n\u00e9e"}, {"Authorization": "Basic x"}):
            seen.clear()
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/nodes"), ("GET", "/v1/models")):
                async with http.request(method, url + path, json=CHAT if method == "POST" else None, headers=headers) as resp:
                    assert resp.status == 401, (headers, path)
                    assert "Traceback" not in await resp.text()
            assert seen == []  # nothing reached the node
        good = {"Authorization": f"Bearer {ROUTER_TOKEN}"}
        async with http.post(url + "/v1/chat/completions", json=CHAT, headers=good) as resp:
            assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "hello"
        assert seen[-1] == f"Bearer {NODE_TOKEN}"  # forwarded with the node's token, not the caller's
        async with http.get(url + "/nodes", headers=good) as resp:
            assert (await resp.json())[0]["url"] == node
        async with http.get(url + "/health") as resp:  # health needs no token
            assert resp.status == 200


def test_a_router_beyond_loopback_without_its_own_token_is_refused(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("BEACON_ROUTER_TOKEN", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["router", "--fleet", "static", "--node", "http://127.0.0.1:9@US", "--host", "0.0.0.0"])
    assert info.value.code == 2
    assert "needs its own token: set BEACON_ROUTER_TOKEN" in capsys.readouterr().err


async def test_a_tokenless_router_refuses_browser_pages_and_deep_json() -> None:
    seen: list[str | None] = []
    async with token_node(seen) as node, router(node, None) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/chat/completions", data=json.dumps(CHAT), headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        async with http.get(url + "/nodes", headers={"Host": "evil.example:8000"}) as resp:
            assert resp.status == 403
        deep = b"[" * 100_000 + b"]" * 100_000
        async with http.post(url + "/v1/chat/completions", data=deep, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and "nested deeper" in (await resp.json())["error"]
