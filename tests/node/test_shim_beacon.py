"""The shim answers Project Beacon's hybrid router, over real HTTP in front of the real llama-server.

The client below sends exactly what Beacon's router sends to a Golem provider and reads what it
reads (Website/hybrid_router/core/router.py: `_check_provider_health`, `GET {endpoint}/health`
healthy when 200 within 5 s; `_run_golem_inference`, `POST {endpoint}/inference` with
`{model, prompt, temperature, max_tokens}`, a 200 body read for `success`, `response`, `error`,
`error_code`, `failure`, `receipt`; a non-200 turned into `PROVIDER_HTTP_<status>`). The prompt
is flattened as Beacon's runner flattens it (runner-app/internal/worker/helpers.go,
`formatRegionalPrompt`: "system\\n...\\nuser\\n...\\nassistant\\n").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from beacon_golem.core.net import free_port
from beacon_golem.node.shim.app import ShimConfig, create_app
from tests import beacon_reference as ref
from tests.support import serve_app

SYSTEM = "You are an assistant serving users in Europe. Answer plainly."
PROMPT = f"system\n{SYSTEM}\nuser\nWho are you?\nassistant\n"


async def beacon_router_calls(endpoint: str, payload: dict[str, Any]) -> tuple[bool, int, dict[str, Any]]:
    """What Beacon's router does with one Golem provider: health check, then one inference."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{endpoint}/health", timeout=aiohttp.ClientTimeout(total=5.0)) as resp:
            healthy = resp.status == 200
        async with http.post(f"{endpoint}/inference", json=payload) as resp:
            return healthy, resp.status, await resp.json(content_type=None)


async def test_beacons_router_body_gets_beacons_fields_and_a_receipt_beacon_accepts(shim_url: str) -> None:
    payload = {"model": "beacon-tiny", "prompt": PROMPT, "temperature": 0.1, "max_tokens": 12}
    healthy, status, body = await beacon_router_calls(shim_url, payload)
    assert healthy and status == 200
    assert body["success"] is True and body["error"] is None and body["error_code"] is None
    assert isinstance(body["response"], str) and body["response"] == body["text"]  # beside the normalized fields
    assert body["completion_tokens"] == 12 and body["token_count_source"] == "server" and body["e2e_ms"] > 0
    receipt = body["receipt"]
    assert ref.verify_beacon_receipt(receipt)
    assert receipt["output"]["data"] == {"response": body["response"]}
    assert receipt["output"]["metadata"]["completion_tokens"] == 12
    assert receipt["execution_details"]["duration"] > 0 and receipt["execution_details"]["started_at"].endswith("Z")
    # The same receipt key on every answer: the node's own, kept in its data directory.
    _, _, again = await beacon_router_calls(shim_url, payload)
    assert again["receipt"]["public_key"] == receipt["public_key"] and again["receipt"]["id"] != receipt["id"]

    # Beacon's flattened prompt became a system and a user message: the same answer as asked that way.
    async with aiohttp.ClientSession() as http:
        chat = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who are you?"}],
                "model": "beacon-tiny", "temperature": 0.0, "max_tokens": 12, "seed": 1}  # fmt: skip
        async with http.post(shim_url + "/inference", json=chat) as resp:
            as_messages = await resp.json()
        flat = {"model": "beacon-tiny", "prompt": PROMPT, "temperature": 0.0, "max_tokens": 12, "seed": 1}
        async with http.post(shim_url + "/inference", json=flat) as resp:
            as_prompt = await resp.json()
    assert as_prompt["prompt_tokens"] == as_messages["prompt_tokens"] and as_prompt["text"] == as_messages["text"]


async def test_every_error_has_beacons_fields_and_keeps_its_status(shim_url: str, tmp_path: Path, llama_server: str) -> None:
    _, status, body = await beacon_router_calls(shim_url, {"model": "beacon-tiny", "prompt": "hi", "max_tokens": 0})
    assert status == 422
    assert (body["success"], body["error_code"], body["failure"]["code"]) == (False, "INVALID_REQUEST", "INVALID_REQUEST")
    assert body["error"].startswith("max_tokens:") and body["failure"]["transient"] is False and body["response"] is None
    async with aiohttp.ClientSession() as http:
        async with http.post(shim_url + "/inference", data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["success"] is False

    guarded = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path / "guarded", token=SecretStr("s" * 40))
    async with serve_app(create_app(guarded)) as url:
        healthy, status, body = await beacon_router_calls(url, {"model": "beacon-tiny", "prompt": "hi", "max_tokens": 4})
    assert healthy and status == 401 and body["error_code"] == "AUTH_REQUIRED" and body["success"] is False

    dead = ShimConfig(runtime="llamacpp", upstream=f"http://127.0.0.1:{free_port()}", data_dir=tmp_path / "dead")
    async with serve_app(create_app(dead)) as url:
        healthy, status, body = await beacon_router_calls(url, {"model": "beacon-tiny", "prompt": "hi", "max_tokens": 4})
    assert not healthy and status >= 500
    assert body["success"] is False and body["error_code"] in ("PROVIDER_UNAVAILABLE", "PROVIDER_ERROR")
    assert body["failure"]["transient"] is True and body["failure"]["http_status"] == status and body["receipt"] is None
