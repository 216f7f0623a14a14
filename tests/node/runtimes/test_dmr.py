"""DockerModelRunnerAdapter and the shim in front of it, against a fake DMR on loopback.

The fake (tests/fakes/dmr.py) follows Docker's "DMR REST API" page,
https://docs.docker.com/ai/model-runner/api-reference/ (GET /models, OpenAI endpoints under
/engines/llama.cpp/v1/), and the standalone server's source, github.com/docker/model-runner
(pkg/inference/scheduling/http_handler.go: /engines/status, `model` required;
pkg/inference/models/api.go: the /models objects; pkg/envconfig/envconfig.go and
pkg/server/server.go: MODEL_RUNNER_PORT, LLAMA_ARGS). Its stream is llama-server's, which
DMR passes through unchanged (llama.cpp tools/server/README.md; the shape was checked against
a real llama-server here). No real DMR runs here: it cannot be installed on these machines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from beacon_golem.core.errors import BadUpstream, RuntimeUnavailable, UpstreamError
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes import adapter_class, dmr
from beacon_golem.node.runtimes.dmr import DockerModelRunnerAdapter, model_names
from tests.fakes.dmr import RUNNING, FakeDMR
from tests.fakes.shim import read_sse, running_shim

MODEL = "ai/smollm2:latest"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def ask(**kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate({"messages": MESSAGES, **kw})


# ---- launch ---------------------------------------------------------------------------------
def test_launch_sets_the_servers_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmr.shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = DockerModelRunnerAdapter.launch("ai/smollm2", host="127.0.0.1", port=13434, parallel=8)
    assert spec.argv == ["model-runner"]
    # MODEL_RUNNER_HOST is the CLI's variable, not the server's; LLAMA_ARGS replaces the
    # defaults (-ngl 999 --metrics), so they are kept.
    assert spec.env == {"MODEL_RUNNER_PORT": "13434", "LLAMA_ARGS": "-ngl 999 --metrics --parallel 8"}
    assert DockerModelRunnerAdapter.launch("m").env["MODEL_RUNNER_PORT"] == "12434"
    monkeypatch.setattr(dmr.shutil, "which", lambda name: "/usr/local/bin/dmr" if name == "dmr" else None)
    assert DockerModelRunnerAdapter.launch("m").argv == ["dmr", "serve"]
    assert adapter_class("dmr") is DockerModelRunnerAdapter


def test_model_names_take_the_first_tag_else_the_id() -> None:
    listing = [
        {"id": "sha256:aa", "tags": ["ai/smollm2:latest", "ai/smollm2:360M"], "created": 1, "config": {}},
        {"id": "sha256:bb", "tags": [], "created": 2, "config": {}},
    ]
    assert model_names(listing) == ["ai/smollm2:latest", "sha256:bb"]
    assert model_names({"object": "list"}) == []


# ---- generation -----------------------------------------------------------------------------
async def test_request_goes_to_the_llama_cpp_engine_path(session: aiohttp.ClientSession) -> None:
    async with FakeDMR() as fake:
        await DockerModelRunnerAdapter(fake.url, session).generate(ask(max_tokens=3, ignore_eos=True), MODEL)
    assert fake.paths() == ["POST /engines/llama.cpp/v1/chat/completions"]
    assert fake.bodies("/engines/llama.cpp/v1/chat/completions") == [
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,  # DMR hands the body to llama-server unchanged
        }
    ]


async def test_result_has_usage_and_llama_cpp_timings(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(delay_s=0.02) as fake:
        result = await DockerModelRunnerAdapter(fake.url, session).generate(ask(max_tokens=4), MODEL)
    assert result.text == " the token by token"
    assert result.completion_tokens == 4 and result.prompt_tokens == 25
    assert result.token_count_source == "server"
    assert result.finish_reason == "length"
    assert result.server_timings == {"prompt_ms": 2.498, "predicted_ms": 0.671, "predicted_per_token_ms": 0.3355}
    # The first chunk is role-only (content null): TTFT waits for " the"; 4 tokens -> 3 gaps.
    assert len(result.itl_ms) == 3
    assert result.ttft_ms is not None and result.ttft_ms >= 15
    assert result.runtime == "dmr" and result.model == MODEL


# ---- status ---------------------------------------------------------------------------------
async def test_status_ready(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(models=(MODEL, "ai/gemma3:latest")) as fake:
        status = await DockerModelRunnerAdapter(fake.url, session, settings={"parallel": 8}).status()
    assert status.reachable and status.ready
    assert status.models == [MODEL, "ai/gemma3:latest"]
    assert status.version == "v1.0.9"
    assert status.settings == {"parallel": 8, "engine_status": RUNNING}
    assert fake.paths() == ["GET /engines/status", "GET /models", "GET /version"]


async def test_status_reachable_without_a_model(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(models=()) as fake:
        status = await DockerModelRunnerAdapter(fake.url, session).status()
    assert status.reachable and not status.ready
    assert status.reason is not None and "/models/create" in status.reason


async def test_status_not_ready_while_the_backend_installs(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(engine="Installing: downloading") as fake:
        status = await DockerModelRunnerAdapter(fake.url, session).status()
    assert status.reachable and not status.ready
    assert "Installing: downloading" in (status.reason or "")
    assert status.models == [MODEL]


async def test_status_when_status_fails_or_nothing_listens(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(mode="status_500") as fake:
        failing = await DockerModelRunnerAdapter(fake.url, session).status()
    assert failing.reachable and not failing.ready
    down = await DockerModelRunnerAdapter(f"http://127.0.0.1:{free_port()}", session).status()
    assert not down.reachable and not down.ready


# ---- errors ---------------------------------------------------------------------------------
async def test_http_500_becomes_upstream_error(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(mode="http500") as fake:
        with pytest.raises(UpstreamError) as info:
            await DockerModelRunnerAdapter(fake.url, session).generate(ask(), MODEL)
    assert info.value.status == 500 and info.value.http_status == 502
    assert "unable to load runner" in str(info.value)


async def test_model_not_pulled_is_the_callers_error(session: aiohttp.ClientSession) -> None:
    async with FakeDMR() as fake:
        with pytest.raises(UpstreamError) as info:
            await DockerModelRunnerAdapter(fake.url, session).generate(ask(), "ai/gemma3")
    assert info.value.status == 404 and info.value.http_status == 422


async def test_malformed_stream_is_bad_upstream(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(mode="malformed") as fake:
        with pytest.raises(BadUpstream):
            await DockerModelRunnerAdapter(fake.url, session).generate(ask(), MODEL)


async def test_runtime_down_is_runtime_unavailable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        await DockerModelRunnerAdapter(f"http://127.0.0.1:{free_port()}", session).generate(ask(), MODEL)
    assert type(info.value) is RuntimeUnavailable


# ---- through the shim -----------------------------------------------------------------------
async def test_shim_health_503_then_200(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as client:
        async with FakeDMR(models=()) as fake, running_shim("dmr", fake.url, tmp_path / "a") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503
        async with FakeDMR() as fake, running_shim("dmr", fake.url, tmp_path / "b") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 200
                assert (await resp.json())["models"] == [MODEL]


async def test_shim_inference(tmp_path: Path) -> None:
    async with FakeDMR() as fake, running_shim("dmr", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.post(shim + "/inference", json={"prompt": "hi", "max_tokens": 2}) as resp:
                assert resp.status == 200
                result = await resp.json()
    assert result["text"] == " the token" and result["completion_tokens"] == 2
    assert result["server_timings"]["prompt_ms"] == pytest.approx(2.498)
    assert fake.bodies("/engines/llama.cpp/v1/chat/completions")[-1]["model"] == MODEL


async def test_shim_passthrough_non_streamed_and_streamed(tmp_path: Path) -> None:
    async with FakeDMR() as fake, running_shim("dmr", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
            async with client.post(shim + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                raw = await resp.read()
                assert resp.headers["Content-Length"] == str(len(raw))
            streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with client.post(shim + "/v1/chat/completions", json=streamed) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(resp)
            async with client.get(shim + "/v1/models") as resp:
                listed = await resp.json()
    assert fake.bodies("/engines/llama.cpp/v1/chat/completions") == [body, streamed]
    assert json.loads(raw)["choices"][0]["message"]["content"] == " the token"
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 2
    assert [m["id"] for m in listed["data"]] == [MODEL]
    assert "GET /engines/llama.cpp/v1/models" in fake.paths()
