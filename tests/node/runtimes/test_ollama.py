"""OllamaAdapter and the shim in front of it, against a fake Ollama on loopback.

The fake (tests/fakes/ollama.py) follows Ollama's documented protocol:
https://github.com/ollama/ollama/blob/main/docs/api.md (POST /api/chat NDJSON stream ending
in `"done": true` with nanosecond durations, GET /api/tags, GET /api/version), with
docs/api/streaming.mdx, docs/api/errors.mdx, api/types.go and, for /v1/chat/completions,
docs/api/openai-compatibility.mdx and openai/openai.go. No real Ollama runs here (it cannot
be installed on these machines): what is NOT covered is listed in docs/runtimes.md.
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
from beacon_golem.node.runtimes.ollama import OllamaAdapter, ns_to_ms
from tests.fakes.ollama import DOC_DURATIONS_NS, DOC_PROMPT_EVAL_COUNT, FakeOllama
from tests.fakes.shim import read_sse, running_shim

MODEL = "llama3.2:latest"
MESSAGES = [{"role": "user", "content": "why is the sky blue?"}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def ask(**kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate({"messages": MESSAGES, **kw})


# ---- launch ---------------------------------------------------------------------------------
def test_launch_is_ollama_serve_with_host_parallel_and_keep_alive() -> None:
    spec = OllamaAdapter.launch("ignored", host="0.0.0.0", port=11500, parallel=8)
    assert spec.argv == ["ollama", "serve"]
    assert spec.env == {"OLLAMA_HOST": "0.0.0.0:11500", "OLLAMA_NUM_PARALLEL": "8", "OLLAMA_KEEP_ALIVE": "-1"}
    assert OllamaAdapter.launch("m").env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert adapter_class("ollama") is OllamaAdapter


def test_ns_to_ms_converts_docs_example() -> None:
    # docs/api.md, "Chat request (Streaming)", final response.
    assert ns_to_ms({"done": True, **DOC_DURATIONS_NS}) == pytest.approx(
        {"total_ms": 4883.583458, "load_ms": 1.334875, "prompt_eval_ms": 342.546, "eval_ms": 4535.599}
    )
    assert ns_to_ms({"done": True}) is None


# ---- generation -----------------------------------------------------------------------------
async def test_request_body_is_native_chat_with_num_predict_and_no_ignore_eos(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        adapter = OllamaAdapter(fake.url, session)
        result = await adapter.generate(
            ask(max_tokens=3, temperature=0.0, seed=7, stop=["\n"], ignore_eos=True), MODEL
        )
    assert fake.paths() == ["POST /api/chat"]
    assert fake.bodies("/api/chat") == [
        {
            "model": MODEL,
            "messages": MESSAGES,
            "stream": True,
            "options": {"num_predict": 3, "temperature": 0.0, "seed": 7, "stop": ["\n"]},
        }
    ]
    assert "ignore_eos" not in fake.received[0].raw.decode()
    assert "max_tokens" not in fake.received[0].raw.decode()
    assert any("no ignore_eos" in w for w in result.warnings)
    assert result.text == "The sky is"
    assert result.finish_reason == "length"


async def test_result_is_normalized_from_the_final_done_object(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(delay_s=0.02) as fake:
        result = await OllamaAdapter(fake.url, session).generate(ask(max_tokens=64), MODEL)
    assert result.text == "The sky is blue."
    assert result.finish_reason == "stop"
    assert result.completion_tokens == 5  # eval_count
    assert result.prompt_tokens == DOC_PROMPT_EVAL_COUNT
    assert result.token_count_source == "server"
    assert result.runtime == "ollama" and result.model == MODEL
    # nanoseconds -> milliseconds
    assert result.server_timings == pytest.approx(
        {"total_ms": 4883.583458, "load_ms": 1.334875, "prompt_eval_ms": 342.546, "eval_ms": 4535.599}
    )
    # Five content lines: TTFT at the first, four gaps after it, none for the empty done object.
    assert len(result.itl_ms) == 4
    assert all(gap >= 15 for gap in result.itl_ms)
    assert result.ttft_ms is not None and 0 < result.ttft_ms <= result.e2e_ms
    assert result.warnings == []


async def test_content_in_the_final_object_counts(session: aiohttp.ClientSession) -> None:
    # docs/api/streaming.mdx: the `done: true` object itself may carry the last token.
    async with FakeOllama(content_in_done=True) as fake:
        result = await OllamaAdapter(fake.url, session).generate(ask(), MODEL)
    assert result.text == "The sky is blue."
    assert len(result.itl_ms) == 4


async def test_missing_done_reason_is_left_unknown(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(send_done_reason=False) as fake:
        result = await OllamaAdapter(fake.url, session).generate(ask(max_tokens=2), MODEL)
    assert result.text == "The sky"
    assert result.finish_reason is None


async def test_absent_eval_count_means_zero_tokens(session: aiohttp.ClientSession) -> None:
    # api/types.go: eval_count is omitempty, so an empty answer's final object has none.
    async with FakeOllama(tokens=()) as fake:
        result = await OllamaAdapter(fake.url, session).generate(ask(), MODEL)
    assert result.text == ""
    assert result.completion_tokens == 0
    assert result.token_count_source == "server"
    assert result.ttft_ms is None


async def test_thinking_is_not_the_first_token(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(thinking=("Let me", " think", " first"), delay_s=0.05) as fake:
        result = await OllamaAdapter(fake.url, session).generate(ask(), MODEL)
    assert result.text == "The sky is blue."
    assert result.ttft_ms is not None and result.ttft_ms >= 140  # after three thinking lines
    assert any("thinking" in w for w in result.warnings)


# ---- status ---------------------------------------------------------------------------------
async def test_status_ready_lists_tags_version_and_parallelism(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models=(MODEL, "deepseek-r1:latest")) as fake:
        launched = OllamaAdapter(fake.url, session, settings={"parallel": 8, "env_ollama_num_parallel": "8"})
        status = await launched.status()
        plain = await OllamaAdapter(fake.url, session).status()
    assert status.reachable and status.ready
    assert status.models == [MODEL, "deepseek-r1:latest"]
    assert status.version == "0.5.1"
    assert status.settings == {"num_parallel": 8, "num_parallel_source": "launch"}
    assert plain.settings["num_parallel"] == 1  # Ollama's default: requests run one at a time
    assert "default" in plain.settings["num_parallel_source"]
    assert {"GET /api/tags", "GET /api/version"} <= set(fake.paths())


async def test_status_reachable_without_a_model(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models=()) as fake:
        status = await OllamaAdapter(fake.url, session).status()
    assert status.reachable and not status.ready
    assert status.reason is not None and "ollama pull" in status.reason


async def test_status_when_tags_fail_or_nothing_listens(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(mode="tags_500") as fake:
        failing = await OllamaAdapter(fake.url, session).status()
    assert failing.reachable and not failing.ready and "500" in (failing.reason or "")
    down = await OllamaAdapter(f"http://127.0.0.1:{free_port()}", session).status()
    assert not down.reachable and not down.ready


# ---- errors ---------------------------------------------------------------------------------
async def test_http_500_becomes_upstream_error(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(mode="http500") as fake:
        with pytest.raises(UpstreamError) as info:
            await OllamaAdapter(fake.url, session).generate(ask(), MODEL)
    assert info.value.status == 500 and info.value.http_status == 502
    assert "the model failed to generate a response" in str(info.value)


async def test_unknown_model_is_the_callers_error(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        with pytest.raises(UpstreamError) as info:
            await OllamaAdapter(fake.url, session).generate(ask(), "nope:latest")
    assert info.value.status == 404 and info.value.http_status == 422


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("malformed", "malformed"),
        ("midstream_error", "an error was encountered while running the model"),
        ("no_done", "done: true"),
    ],
)
async def test_broken_streams_become_bad_upstream(session: aiohttp.ClientSession, mode: str, needle: str) -> None:
    async with FakeOllama(mode=mode) as fake:
        with pytest.raises(BadUpstream) as info:
            await OllamaAdapter(fake.url, session).generate(ask(), MODEL)
    assert needle in str(info.value)


async def test_runtime_down_is_runtime_unavailable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        await OllamaAdapter(f"http://127.0.0.1:{free_port()}", session).generate(ask(), MODEL)
    assert type(info.value) is RuntimeUnavailable
    assert info.value.http_status == 503


# ---- through the shim -----------------------------------------------------------------------
async def test_shim_health_is_503_without_a_model_and_200_with_one(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as client:
        async with FakeOllama(models=()) as empty, running_shim("ollama", empty.url, tmp_path / "a") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503
                body = await resp.json()
        assert body["status"] == "unavailable" and "ollama pull" in body["reason"]
        async with FakeOllama() as fake, running_shim("ollama", fake.url, tmp_path / "b") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 200
                assert (await resp.json())["models"] == [MODEL]
        async with running_shim("ollama", f"http://127.0.0.1:{free_port()}", tmp_path / "c") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503


async def test_shim_inference_and_info(tmp_path: Path) -> None:
    settings = {"parallel": 4, "env_ollama_num_parallel": "4"}
    async with FakeOllama() as fake, running_shim("ollama", fake.url, tmp_path, launch_settings=settings) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.post(shim + "/inference", json={"prompt": "hi", "max_tokens": 4}) as resp:
                assert resp.status == 200
                result = await resp.json()
            async with client.get(shim + "/info") as resp:
                info = await resp.json()
    assert result["text"] == "The sky is blue"
    assert result["completion_tokens"] == 4 and result["token_count_source"] == "server"
    assert result["server_timings"]["eval_ms"] == pytest.approx(4535.599)
    assert result["finish_reason"] == "length"
    assert fake.bodies("/api/chat")[-1]["options"] == {"num_predict": 4}
    assert info["runtime"]["settings"]["num_parallel"] == 4
    assert info["runtime"]["version"] == "0.5.1"


async def test_shim_passthrough_maps_max_completion_tokens_and_drops_ignore_eos(tmp_path: Path) -> None:
    async with FakeOllama() as fake, running_shim("ollama", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 2, "ignore_eos": True}
            async with client.post(shim + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                raw = await resp.read()
                assert resp.headers["Content-Length"] == str(len(raw))
                assert "Transfer-Encoding" not in resp.headers
    assert fake.bodies("/v1/chat/completions") == [{"model": MODEL, "messages": MESSAGES, "max_tokens": 2}]
    answer = json.loads(raw)
    assert answer["choices"][0]["message"]["content"] == "The sky"  # the limit held
    assert answer["usage"]["completion_tokens"] == 2


async def test_shim_passthrough_streams_sse_from_ollama_v1(tmp_path: Path) -> None:
    async with FakeOllama() as fake, running_shim("ollama", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            body = {
                "messages": MESSAGES,
                "max_completion_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with client.post(shim + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(resp)
    sent = fake.bodies("/v1/chat/completions")[0]
    assert sent["max_tokens"] == 3 and "max_completion_tokens" not in sent
    assert sent["model"] == MODEL  # the shim filled in the node's model
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "The sky is"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
