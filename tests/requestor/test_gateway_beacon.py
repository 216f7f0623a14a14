"""`beacon router` serves Beacon's hybrid-router contract to a client that sends what Beacon's
runner sends, over real shims in front of the real llama-server.

The client follows runner-app/internal/hybrid/client.go (`postInference`: POST {base}/inference
with `{model, prompt, temperature, max_tokens, region_preference (omitempty), cost_priority}`,
Content-Type and Accept JSON; a non-2xx is an HTTP error; the body decoded into `{success,
response, error, provider_used, inference_time, metadata}`; `GetProviders`: GET {base}/providers)
and runner-app/internal/worker/executor_hybrid.go (temperature 0.1, max_tokens 500, the region
mapped by `mapRegionToRouter`, the receipt taken from `metadata.receipt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from beacon_golem.node.shim.app import ShimConfig, create_app
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.gateway.gateway import create_router_app
from tests import beacon_reference as ref
from tests.support import serve_app

PROMPT = "system\nYou are an assistant serving users in the US. Answer plainly.\nuser\nWhat is 2+2?\nassistant\n"


class RunnerClient:
    """Beacon's runner's hybrid client, field for field."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base, self.http = base.rstrip("/"), http

    async def run_inference(self, model: str, prompt: str, region: str) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "temperature": 0.1, "max_tokens": 500, "cost_priority": False}
        if region:
            body["region_preference"] = region  # omitempty
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with self.http.post(self.base + "/inference", data=json.dumps(body), headers=headers) as resp:
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"router http {resp.status}: {(await resp.read())[:2048]!r}")
            out = await resp.json()
        return {k: out.get(k) for k in ("success", "response", "error", "provider_used", "inference_time", "metadata")} | {
            "error_code": out.get("error_code"), "failure": out.get("failure"), "cost_estimate": out.get("cost_estimate")}  # fmt: skip

    async def get_providers(self) -> list[dict[str, Any]]:
        async with self.http.get(self.base + "/providers") as resp:
            assert resp.status == 200
            return (await resp.json())["providers"]


@contextlib.asynccontextmanager
async def two_regions(tmp_path: Path, llama_server: str) -> AsyncIterator[tuple[str, StaticFleet]]:
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for region in ("US", "EU"):
            config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path / region,
                                extra_info={"region": region})  # fmt: skip
            urls[region] = await stack.enter_async_context(serve_app(create_app(config)))
        fleet = StaticFleet([StaticNodeSpec.parse(f"{u}@{r}") for r, u in urls.items()])
        await stack.enter_async_context(fleet)
        app = create_router_app(fleet, health_interval_s=0.2, beacon_model_map={"llama3.2-1b": "beacon-tiny"})
        yield await stack.enter_async_context(serve_app(app)), fleet


async def test_beacons_runner_can_use_our_router(tmp_path: Path, llama_server: str) -> None:
    async with two_regions(tmp_path, llama_server) as (url, fleet), aiohttp.ClientSession() as http:
        regions = {n.node_id: n.region for n in fleet.nodes()}
        runner = RunnerClient(url, http)
        await asyncio.sleep(0.3)  # one health round
        for beacon_region, ours in (("us-east", "US"), ("eu-west", "EU"), ("EU", "EU"), ("usa", "US")):
            out = await runner.run_inference("llama3.2-1b", PROMPT, beacon_region)
            assert out["success"] is True and isinstance(out["response"], str) and out["error"] in (None, "")
            meta = out["metadata"]
            assert regions[out["provider_used"]] == ours and meta["node_id"] == out["provider_used"]
            assert meta["region"] == {"US": "us-east", "EU": "eu-west"}[ours] and meta["model"] == "llama3.2-1b"
            assert meta["provider_type"] == "static" and meta["node_model"] == "beacon-tiny"
            assert out["inference_time"] > 0 and out["cost_estimate"] == 0.0
            assert ref.verify_beacon_receipt(meta["receipt"])  # the node's receipt, what the runner stores
            assert meta["receipt"]["output"]["data"]["response"] == out["response"]

        # What Beacon's router answers when it cannot serve: a 200 with success false and a code.
        none = await runner.run_inference("llama3.2-1b", PROMPT, "asia-pacific")
        assert (none["success"], none["error_code"]) == (False, "PROVIDER_UNAVAILABLE")
        assert "No healthy providers available in region asia-pacific" in none["error"]
        unknown = await runner.run_inference("llama3.2-1b", PROMPT, "mars-1")
        assert unknown["error_code"] == "UNKNOWN_REGION" and "accepted: US, us-east" in unknown["error"]
        unmapped = await runner.run_inference("mistral-7b", PROMPT, "us-east")
        assert unmapped["success"] is False and unmapped["error_code"] == "PROVIDER_UNAVAILABLE"
        assert unmapped["failure"]["model"] == "mistral-7b"
        async with http.post(url + "/inference", json={"model": "llama3.2-1b"}) as resp:  # no prompt: a malformed body
            assert resp.status == 422 and (await resp.json())["error_code"] == "INVALID_REQUEST"

        providers = await runner.get_providers()
        assert sorted(p["region"] for p in providers) == ["eu-west", "us-east"]
        assert all(p["healthy"] and p["type"] == "static" and "url" not in p for p in providers)
        assert all(set(p) >= {"name", "type", "region", "healthy", "cost_per_second", "avg_latency", "success_rate",
                              "last_health_check"} for p in providers)  # fmt: skip
        assert all(p["success_rate"] == 1.0 and p["last_health_check"] > 0 for p in providers)
        async with http.get(url + "/providers?region=us-east") as resp:
            assert [p["region"] for p in (await resp.json())["providers"]] == ["us-east"]
        async with http.get(url + "/health") as resp:
            health = await resp.json()
        assert resp.status == 200 and health["providers_healthy"] == 2 and health["regions"] == ["eu-west", "us-east"]
