"""Who may use a node (issue 12, findings 6, 8 and 9): tokens that mean something, the browser guard
of tokenless nodes (CSRF, DNS rebinding), deep JSON, the runtime's own key, local and Golem tokens.

Real parts: the shim in front of the shared real llama-server, real local nodes, real HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from beacon_golem.cli import main
from beacon_golem.core.config import ShimLimits
from beacon_golem.node.launcher import LocalNode
from beacon_golem.node.shim.app import ShimConfig, create_app
from beacon_golem.requestor.fleets.local import LocalFleet, LocalFleetConfig
from tests.support import llama_server_binary, serve_app

PROMPT = {"prompt": "Hi", "max_tokens": 2}
DEEP = b"[" * 100_000 + b"]" * 100_000


def test_an_empty_or_unsendable_token_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    for bad in ("", "   ", "caf\u00e9", "two words"):
        with pytest.raises(ValidationError):
            ShimConfig(runtime="llamacpp", upstream="http://x", data_dir=Path("/tmp"), token=SecretStr(bad))
    monkeypatch.setenv("BEACON_SHIM_TOKEN", "")
    with pytest.raises(SystemExit) as info:
        main(["shim", "--runtime", "llamacpp", "--port", "0"])
    assert info.value.code == 2
    assert "BEACON_SHIM_TOKEN is set but empty" in capsys.readouterr().err


async def test_a_non_ascii_bearer_token_is_401_not_500(tmp_path: Path, llama_server: str) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path, token=SecretStr("s3cret"))
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession() as http:
        for header in ("Bearer n\u00e9e", "Bearer \u2603\u2603", "Bearer s3cret\u00e9", "Bearer"):
            async with http.get(url + "/info", headers={"Authorization": header.encode().decode("latin-1")}) as resp:
                assert resp.status == 401 and (await resp.json())["status"] == 401
        async with http.get(url + "/info", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "text/plain;charset=UTF-8"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({"Content-Type": ""}, 415),
        ({"Content-Type": "application/json", "Host": "evil.example"}, 403),
        ({"Content-Type": "application/json", "Host": "attacker.test:8080"}, 403),
        ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ({"Content-Type": "application/json", "Origin": "null"}, 403),
        ({"Content-Type": "application/json"}, 200),
        ({"Content-Type": "application/json", "Host": "localhost:8080", "Origin": "http://localhost:8080"}, 200),
        ({"Content-Type": "application/json", "Host": "[::1]:8080"}, 200),
        ({"Content-Type": "application/json", "Host": "gpu-box.lan"}, 200),  # in allowed_hosts
        ({"Content-Type": "application/json", "Host": "node:8080"}, 200),  # single label: not rebindable
        ({"Content-Type": "application/json", "Host": "other-box.lan"}, 403),
    ],
)
async def test_a_tokenless_node_refuses_what_a_browser_page_could_send(
    tmp_path: Path, llama_server: str, headers: dict[str, str], status: int
) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path,
                        limits=ShimLimits(allowed_hosts=["gpu-box.lan"]))  # fmt: skip
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http:
        async with http.post(url + "/inference", data=json.dumps(PROMPT).encode(), headers=headers) as resp:
            assert resp.status == status, await resp.text()
        if status == 403:
            async with http.get(url + "/info", headers={k: v for k, v in headers.items() if k != "Content-Type"}) as resp:
                assert resp.status == 403  # DNS rebinding reads nothing either


@pytest.mark.parametrize("path", ["/inference", "/jobs", "/v1/chat/completions"])
async def test_json_nested_100000_deep_is_400_not_500(shim_url: str, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(shim_url + path, data=DEEP, headers={"Content-Type": "application/json"}) as resp:
            body = await resp.json()
        assert resp.status == 400 and "nested deeper than 64 levels" in body["error"]
        async with http.get(shim_url + "/metrics") as resp:
            assert 'status="500"' not in await resp.text()


async def test_local_fleet_nodes_get_the_token_when_one_is_set(tmp_path: Path, tiny_model: Path) -> None:
    llama_server_binary()
    token = SecretStr("fleet-token-123")
    config = LocalFleetConfig(nodes=1, regions=["US"], model=str(tiny_model), parallel=1, data_dir=tmp_path, token=token)
    async with LocalFleet(config) as fleet, aiohttp.ClientSession() as http:
        (node,) = fleet.nodes()
        assert node.token == token and node.info is not None
        async with http.get(node.url + "/info") as resp:
            assert resp.status == 401
        async with http.get(node.url + "/info", headers={"Authorization": "Bearer fleet-token-123"}) as resp:
            assert resp.status == 200
    assert "fleet-token-123" not in json.dumps(fleet.describe())


async def test_the_runtime_behind_the_shim_listens_on_loopback_with_an_api_key(local_node: LocalNode) -> None:
    key = local_node.runtime_api_key.get_secret_value()
    assert local_node.runtime_url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as http:
        async with http.get(local_node.runtime_url + "/props") as resp:
            assert resp.status == 401  # llama-server refuses whoever lacks the key
        async with http.get(local_node.runtime_url + "/props", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
        async with http.post(local_node.url + "/inference", json=PROMPT) as resp:
            assert resp.status == 200  # the shim has it
        async with http.get(local_node.url + "/info") as resp:
            assert key not in await resp.text()
    assert key not in (local_node.log_path.read_text(errors="replace") if local_node.log_path.exists() else "")


def test_every_golem_provider_gets_its_own_token() -> None:
    from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
    from beacon_golem.requestor.fleets.golem.fleet import GolemFleet

    config = GolemFleetConfig(image="a" * 56, budget=1, max_price_glm_per_hour=1, shim_token=SecretStr("static-one"))
    fleet = GolemFleet(config)
    specs = [fleet._instance_params()["spec"] for _ in range(3)]
    tokens = [s.shim_token.get_secret_value() for s in specs]
    assert len(set(tokens)) == 3 and "static-one" not in tokens and all(len(t) >= 32 for t in tokens)
    for spec, token in zip(specs, tokens, strict=True):
        assert f"BEACON_SHIM_TOKEN={token}" in spec.env_lines()
    assert set(tokens) <= set(fleet._secrets())  # scrubbed from whatever the fleet says
