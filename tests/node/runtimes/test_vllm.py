"""VLLMAdapter and the shim in front of it, against a fake vLLM on loopback.

The fake (tests/fakes/vllm.py) follows vLLM's OpenAI-compatible server as documented in
docs/serving/online_serving/openai_compatible_server.md
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html) and the vLLM 0.32
source it points to (chat_completion/serving.py, serve/instrumentator/health.py and
basic.py, serve/engine/protocol.py); its chunk shapes were checked against a real vLLM 0.32
on this CPU. The opt-in tests/test_vllm_real.py runs the same adapter against real vLLM.
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
from beacon_golem.node.runtimes import adapter_class
from beacon_golem.node.runtimes.vllm import VLLMAdapter
from tests.fakes.shim import read_sse, running_shim
from tests.fakes.vllm import VERSION, FakeVLLM

MODEL = "meta-llama/Llama-3.2-1B-Instruct"
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def ask(**kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate({"messages": MESSAGES, **kw})


# ---- launch ---------------------------------------------------------------------------------
def test_launch_runs_the_api_server_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEACON_VLLM_PYTHON", "/opt/vllm/bin/python")
    spec = VLLMAdapter.launch("/models/tiny", host="0.0.0.0", port=8123, parallel=32)
    assert spec.argv == [
        "/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/tiny", "--host", "0.0.0.0", "--port", "8123", "--max-num-seqs", "32",
    ]  # fmt: skip
    monkeypatch.delenv("BEACON_VLLM_PYTHON")
    assert VLLMAdapter.launch("m").argv[-3:] == ["8000", "--max-num-seqs", "256"]
    assert adapter_class("vllm") is VLLMAdapter


# ---- generation -----------------------------------------------------------------------------
async def test_request_body_has_ignore_eos_and_include_usage(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM() as fake:
        await VLLMAdapter(fake.url, session).generate(
            ask(max_tokens=5, temperature=0.5, top_p=0.9, seed=1, stop=["\n\n"], ignore_eos=True), MODEL
        )
    assert fake.bodies("/v1/chat/completions") == [
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 5,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 1,
            "stop": ["\n\n"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    ]


async def test_ignore_eos_gives_max_tokens_counted_by_the_server(session: aiohttp.ClientSession) -> None:
    # Tokens: "Hello", "" (an incomplete byte-level token), " world", ... ; after the role chunk.
    async with FakeVLLM(delay_s=0.02) as fake:
        result = await VLLMAdapter(fake.url, session).generate(ask(max_tokens=8, ignore_eos=True), MODEL)
    assert result.completion_tokens == 8
    assert result.prompt_tokens == 12
    assert result.token_count_source == "server"
    assert result.finish_reason == "length"
    assert result.text == "Hello world, how are you?"
    # 9 chunks before usage: role-only, then 8 tokens of which one has empty content.
    # TTFT is at "Hello" (not the role chunk); 7 non-empty content chunks -> 6 gaps.
    assert len(result.itl_ms) == 6
    assert result.ttft_ms is not None and result.ttft_ms >= 15  # the role chunk came ~0 ms in
    assert result.ttft_ms <= result.e2e_ms
    assert result.server_timings is None
    assert result.warnings == []
    assert result.model == MODEL


async def test_without_ignore_eos_the_answer_stops_early(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(eos_after=3) as fake:
        result = await VLLMAdapter(fake.url, session).generate(ask(max_tokens=8), MODEL)
    assert "ignore_eos" not in fake.bodies("/v1/chat/completions")[0]
    assert result.finish_reason == "stop"
    assert result.completion_tokens == 3 and result.text == "Hello world"


async def test_max_tokens_cut_by_max_model_len_is_warned(session: aiohttp.ClientSession) -> None:
    # vLLM lowers max_tokens to max_model_len - prompt length without an error.
    async with FakeVLLM(max_model_len=16, prompt_tokens=12) as fake:
        result = await VLLMAdapter(fake.url, session).generate(ask(max_tokens=8, ignore_eos=True), MODEL)
    assert result.completion_tokens == 4
    assert any("4 of 8" in w and "max_model_len" in w for w in result.warnings)


async def test_usage_only_comes_with_include_usage(session: aiohttp.ClientSession) -> None:
    """The fake, like vLLM, sends usage only when asked: without it the count is an estimate."""

    class NoUsage(VLLMAdapter):
        def chat_body(self, request: GenerationRequest, model: str) -> dict[str, object]:
            body = super().chat_body(request, model)
            body.pop("stream_options")
            return body

    async with FakeVLLM() as fake:
        with_usage = await VLLMAdapter(fake.url, session).generate(ask(max_tokens=8, ignore_eos=True), MODEL)
        without = await NoUsage(fake.url, session).generate(ask(max_tokens=8, ignore_eos=True), MODEL)
    assert with_usage.token_count_source == "server" and with_usage.completion_tokens == 8
    assert without.token_count_source == "estimate" and without.completion_tokens != 8
    assert any("no usage" in w for w in without.warnings)


# ---- status ---------------------------------------------------------------------------------
async def test_status_ready_reads_models_max_model_len_and_version(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(max_model_len=512) as fake:
        status = await VLLMAdapter(fake.url, session, settings={"parallel": 32}).status()
    assert status.reachable and status.ready
    assert status.models == [MODEL]
    assert status.version == VERSION
    assert status.settings == {"max_model_len": 512, "max_num_seqs": 32}
    assert fake.paths() == ["GET /health", "GET /v1/models", "GET /version"]


async def test_status_health_has_an_empty_body(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM() as fake, session.get(fake.url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""  # the documented shape we rely on


async def test_status_not_ready(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(mode="no_models") as fake:
        empty = await VLLMAdapter(fake.url, session).status()
    assert empty.reachable and not empty.ready and empty.reason == "vLLM serves no model"
    async with FakeVLLM(mode="dead") as fake:
        dead = await VLLMAdapter(fake.url, session).status()
    assert dead.reachable and not dead.ready and "503" in (dead.reason or "")
    down = await VLLMAdapter(f"http://127.0.0.1:{free_port()}", session).status()
    assert not down.reachable and not down.ready


# ---- errors ---------------------------------------------------------------------------------
async def test_http_500_becomes_upstream_error(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM(mode="http500") as fake:
        with pytest.raises(UpstreamError) as info:
            await VLLMAdapter(fake.url, session).generate(ask(), MODEL)
    assert info.value.status == 500 and info.value.http_status == 502


async def test_unknown_model_is_the_callers_error(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM() as fake:
        with pytest.raises(UpstreamError) as info:
            await VLLMAdapter(fake.url, session).generate(ask(), "other/model")
    assert info.value.status == 404 and info.value.http_status == 422
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("malformed", "malformed"),
        ("midstream_error", "Internal server error"),
        ("legacy_error", "Internal server error"),
        ("no_done", "[DONE]"),
    ],
)
async def test_broken_streams_become_bad_upstream(session: aiohttp.ClientSession, mode: str, needle: str) -> None:
    async with FakeVLLM(mode=mode) as fake:
        with pytest.raises(BadUpstream) as info:
            await VLLMAdapter(fake.url, session).generate(ask(ignore_eos=True), MODEL)
    assert needle in str(info.value)


async def test_runtime_down_is_runtime_unavailable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        await VLLMAdapter(f"http://127.0.0.1:{free_port()}", session).generate(ask(), MODEL)
    assert type(info.value) is RuntimeUnavailable


# ---- through the shim -----------------------------------------------------------------------
async def test_shim_health_follows_vllm(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as client:
        async with FakeVLLM(mode="dead") as fake, running_shim("vllm", fake.url, tmp_path / "a") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503
        async with FakeVLLM() as fake, running_shim("vllm", fake.url, tmp_path / "b") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 200
                assert (await resp.json())["models"] == [MODEL]


async def test_shim_inference_uses_server_usage(tmp_path: Path) -> None:
    async with FakeVLLM() as fake, running_shim("vllm", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {"prompt": "Hello!", "max_tokens": 6, "ignore_eos": True}
            async with client.post(shim + "/inference", json=body) as resp:
                assert resp.status == 200
                result = await resp.json()
    assert result["completion_tokens"] == 6 and result["token_count_source"] == "server"
    assert result["runtime"] == "vllm" and result["model"] == MODEL
    sent = fake.bodies("/v1/chat/completions")[-1]
    assert sent["ignore_eos"] is True and sent["stream_options"] == {"include_usage": True}


async def test_shim_passthrough_non_streamed_has_content_length(tmp_path: Path) -> None:
    async with FakeVLLM() as fake, running_shim("vllm", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 4, "ignore_eos": True}
            async with client.post(shim + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                raw = await resp.read()
                assert resp.headers["Content-Length"] == str(len(raw))
    # vLLM takes both fields: nothing is rewritten on the way.
    assert fake.bodies("/v1/chat/completions") == [body]
    assert json.loads(raw)["usage"]["completion_tokens"] == 4


async def test_shim_passthrough_streams_sse(tmp_path: Path) -> None:
    async with FakeVLLM() as fake, running_shim("vllm", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {
                "model": MODEL,
                "messages": MESSAGES,
                "max_tokens": 3,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with client.post(shim + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(resp)
    assert fake.bodies("/v1/chat/completions") == [body]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_shim_v1_models_passes_max_model_len(tmp_path: Path) -> None:
    async with FakeVLLM(max_model_len=2048) as fake, running_shim("vllm", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client, client.get(shim + "/v1/models") as resp:
            data = await resp.json()
    assert data["data"][0]["id"] == MODEL and data["data"][0]["max_model_len"] == 2048
