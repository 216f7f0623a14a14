"""What every runtime adapter does, and the shim in front of it: one test, run against each fake.

The fakes (tests/fakes/ollama.py, dmr.py, vllm.py) are real servers on loopback that follow
their runtime's documented protocol: Ollama's docs/api.md
(https://github.com/ollama/ollama/blob/main/docs/api.md), Docker's "DMR REST API" page
(https://docs.docker.com/ai/model-runner/api-reference/) with github.com/docker/model-runner,
and vLLM's OpenAI-compatible server
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html); tests/node/runtimes/cases.py
lists the documents each follows. Where a runtime differs (its numbers, its error texts,
what it is sent), the row for it says so. What only one runtime does is in test_ollama.py,
test_dmr.py and test_vllm.py; no real runtime runs here (test_vllm_real.py, opt-in, runs
real vLLM).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beacon_golem.core.errors import BadUpstream, RuntimeUnavailable, UpstreamError
from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes import adapter_class
from tests.fakes.dmr import RUNNING
from tests.fakes.ollama import DOC_PROMPT_EVAL_COUNT
from tests.fakes.shim import read_sse, running_shim
from tests.fakes.vllm import VERSION
from tests.node.runtimes.cases import DMR, OLLAMA, RUNTIMES, VLLM, Runtime, case

#: docs/api.md's "Chat request (Streaming)" final response durations, in milliseconds.
OLLAMA_DOC_MS = {"total_ms": 4883.583458, "load_ms": 1.334875, "prompt_eval_ms": 342.546, "eval_ms": 4535.599}
#: The `timings` of the fake DMR's usage chunk (llama-server's, in milliseconds).
DMR_TIMINGS = {"prompt_ms": 2.498, "predicted_ms": 0.671, "predicted_per_token_ms": 0.3355}

each_runtime = pytest.mark.parametrize("runtime", [case(r) for r in RUNTIMES])


def subset(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The entries of `actual` that `expected` names, for `== expected`."""
    return {key: actual.get(key) for key in expected}


def as_json(value: Any) -> str:
    """For comparing JSON exactly: `true` is not `1`."""
    return json.dumps(value, sort_keys=True)


# ---- launch ---------------------------------------------------------------------------------
@each_runtime
def test_adapter_class_is_found_by_the_runtimes_name(runtime: Runtime) -> None:
    assert adapter_class(runtime.name) is runtime.adapter


# ---- generation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """The normalized result one runtime's fake answer must give."""

    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int
    server_timings: Any  # what `result.server_timings` must equal
    gaps: int  # inter-token gaps: content chunks after the first one
    ttft_at_least_ms: float  # the first token came after the fake's first delay, or at once


@pytest.mark.parametrize(
    ("runtime", "ask", "answer"),
    [
        case(
            OLLAMA,
            {"max_tokens": 64},
            # eval_count tokens, prompt_eval_count, nanoseconds -> milliseconds. Five content lines:
            # TTFT at the first, four gaps after it, none for the empty done object.
            Answer("The sky is blue.", "stop", 5, DOC_PROMPT_EVAL_COUNT, pytest.approx(OLLAMA_DOC_MS), 4, 0),
        ),
        case(
            DMR,
            {"max_tokens": 4},
            # usage and llama.cpp's timings. The first chunk is role-only (content null): TTFT
            # waits for " the"; 4 tokens -> 3 gaps.
            Answer(" the token by token", "length", 4, 25, DMR_TIMINGS, 3, 15),
        ),
        case(
            VLLM,
            {"max_tokens": 8, "ignore_eos": True},
            # ignore_eos gives max_tokens, counted by the server. Tokens: "Hello", "" (an incomplete
            # byte-level token), " world", ...; 9 chunks before usage: role-only, then 8 tokens of
            # which one has empty content. TTFT is at "Hello" (the role chunk came ~0 ms in);
            # 7 non-empty content chunks -> 6 gaps. vLLM sends no timings.
            Answer("Hello world, how are you?", "length", 8, 12, None, 6, 15),
        ),
    ],
)
async def test_result_is_normalized_from_the_stream(
    session: aiohttp.ClientSession, runtime: Runtime, ask: dict[str, Any], answer: Answer
) -> None:
    async with runtime.fake(delay_s=0.02) as fake:
        result = await runtime.adapter(fake.url, session).generate(runtime.ask(**ask), runtime.model)
    assert result.text == answer.text
    assert result.finish_reason == answer.finish_reason
    assert result.completion_tokens == answer.completion_tokens
    assert result.prompt_tokens == answer.prompt_tokens
    assert result.token_count_source == "server"
    assert result.runtime == runtime.name and result.model == runtime.model
    assert result.server_timings == answer.server_timings
    assert len(result.itl_ms) == answer.gaps
    assert all(gap >= 15 for gap in result.itl_ms)
    assert result.ttft_ms is not None and 0 < result.ttft_ms and result.ttft_ms >= answer.ttft_at_least_ms
    assert result.ttft_ms <= result.e2e_ms
    assert result.warnings == []


# ---- status ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("runtime", "fake_kw", "launch", "models", "version", "settings", "paths"),
    [
        case(
            OLLAMA,
            {"models": (OLLAMA.model, "deepseek-r1:latest")},
            {"parallel": 8, "env_ollama_num_parallel": "8"},
            [OLLAMA.model, "deepseek-r1:latest"],
            "0.5.1",
            {"num_parallel": 8, "num_parallel_source": "launch"},
            ["GET /api/tags", "GET /api/version"],
        ),
        case(
            DMR,
            {"models": (DMR.model, "ai/gemma3:latest")},
            {"parallel": 8},
            [DMR.model, "ai/gemma3:latest"],
            "v1.0.9",
            {"parallel": 8, "engine_status": RUNNING},
            ["GET /engines/status", "GET /models", "GET /version"],
        ),
        case(
            VLLM,
            {"max_model_len": 512},
            {"parallel": 32},
            [VLLM.model],
            VERSION,
            {"max_model_len": 512, "max_num_seqs": 32},
            ["GET /health", "GET /v1/models", "GET /version"],
        ),
    ],
)
async def test_status_ready_lists_models_version_and_settings(
    session: aiohttp.ClientSession,
    runtime: Runtime,
    fake_kw: dict[str, Any],
    launch: dict[str, Any],
    models: list[str],
    version: str,
    settings: dict[str, Any],
    paths: list[str],
) -> None:
    async with runtime.fake(**fake_kw) as fake:
        status = await runtime.adapter(fake.url, session, settings=launch).status()
    assert status.reachable and status.ready
    assert status.models == models
    assert status.version == version
    assert status.settings == settings
    assert fake.paths() == paths


@pytest.mark.parametrize(
    ("runtime", "fake_kw", "reason"),
    [
        case(OLLAMA, {"models": ()}, r"ollama pull"),
        case(DMR, {"models": ()}, r"/models/create"),
        case(VLLM, {"mode": "no_models"}, r"\AvLLM serves no model\Z"),  # exactly this
    ],
)
async def test_status_reachable_without_a_model(
    session: aiohttp.ClientSession, runtime: Runtime, fake_kw: dict[str, Any], reason: str
) -> None:
    async with runtime.fake(**fake_kw) as fake:
        status = await runtime.adapter(fake.url, session).status()
    assert status.reachable and not status.ready
    assert status.reason is not None and re.search(reason, status.reason)


@pytest.mark.parametrize(
    ("runtime", "mode", "needle"),
    [
        case(OLLAMA, "tags_500", "500"),  # GET /api/tags fails
        case(DMR, "status_500", "500"),  # GET /engines/status fails
        case(VLLM, "dead", "503"),  # /health is 503: EngineDeadError
    ],
)
async def test_status_when_the_runtime_says_it_is_failing(
    session: aiohttp.ClientSession, runtime: Runtime, mode: str, needle: str
) -> None:
    async with runtime.fake(mode=mode) as fake:
        failing = await runtime.adapter(fake.url, session).status()
    assert failing.reachable and not failing.ready and needle in (failing.reason or "")


@each_runtime
async def test_status_when_nothing_listens(session: aiohttp.ClientSession, runtime: Runtime) -> None:
    down = await runtime.adapter(f"http://127.0.0.1:{free_port()}", session).status()
    assert not down.reachable and not down.ready


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("runtime", "needle"),
    [
        case(OLLAMA, "the model failed to generate a response"),
        case(DMR, "unable to load runner"),
        case(VLLM, "EngineCore encountered an issue."),
    ],
)
async def test_http_500_becomes_upstream_error(session: aiohttp.ClientSession, runtime: Runtime, needle: str) -> None:
    async with runtime.fake(mode="http500") as fake:
        with pytest.raises(UpstreamError) as info:
            await runtime.adapter(fake.url, session).generate(runtime.ask(), runtime.model)
    assert info.value.status == 500 and info.value.http_status == 502
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("runtime", "model", "needle"),
    [
        case(OLLAMA, "nope:latest", "not found"),
        case(DMR, "ai/gemma3", "model not found"),  # a model not pulled
        case(VLLM, "other/model", "does not exist"),
    ],
)
async def test_unknown_model_is_the_callers_error(
    session: aiohttp.ClientSession, runtime: Runtime, model: str, needle: str
) -> None:
    async with runtime.fake() as fake:
        with pytest.raises(UpstreamError) as info:
            await runtime.adapter(fake.url, session).generate(runtime.ask(), model)
    assert info.value.status == 404 and info.value.http_status == 422
    assert needle in str(info.value)


def broken(runtime: Runtime, mode: str, needle: str, **ask: Any) -> Any:
    return pytest.param(runtime, mode, needle, ask, id=f"{runtime.name}-{mode}")


@pytest.mark.parametrize(
    ("runtime", "mode", "needle", "ask"),
    [
        broken(OLLAMA, "malformed", "malformed"),
        broken(OLLAMA, "midstream_error", "an error was encountered while running the model"),
        broken(OLLAMA, "no_done", "done: true"),
        broken(DMR, "malformed", "malformed"),
        broken(VLLM, "malformed", "malformed", ignore_eos=True),
        broken(VLLM, "midstream_error", "Internal server error", ignore_eos=True),
        broken(VLLM, "legacy_error", "Internal server error", ignore_eos=True),
        broken(VLLM, "no_done", "[DONE]", ignore_eos=True),
    ],
)
async def test_broken_streams_become_bad_upstream(
    session: aiohttp.ClientSession, runtime: Runtime, mode: str, needle: str, ask: dict[str, Any]
) -> None:
    async with runtime.fake(mode=mode) as fake:
        with pytest.raises(BadUpstream) as info:
            await runtime.adapter(fake.url, session).generate(runtime.ask(**ask), runtime.model)
    assert needle in str(info.value)


@each_runtime
async def test_runtime_down_is_runtime_unavailable(session: aiohttp.ClientSession, runtime: Runtime) -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        await runtime.adapter(f"http://127.0.0.1:{free_port()}", session).generate(runtime.ask(), runtime.model)
    assert type(info.value) is RuntimeUnavailable
    assert info.value.http_status == 503


# ---- through the shim -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("runtime", "unready", "reason"),
    [
        case(OLLAMA, {"models": ()}, "ollama pull"),
        case(DMR, {"models": ()}, "/models/create"),
        case(VLLM, {"mode": "dead"}, "503"),
    ],
)
async def test_shim_health_is_503_until_the_runtime_is_ready_and_200_with_its_model(
    tmp_path: Path, runtime: Runtime, unready: dict[str, Any], reason: str
) -> None:
    async with aiohttp.ClientSession() as client:
        async with runtime.fake(**unready) as fake, running_shim(runtime.name, fake.url, tmp_path / "a") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503
                body = await resp.json()
        assert body["status"] == "unavailable" and reason in body["reason"]
        async with runtime.fake() as fake, running_shim(runtime.name, fake.url, tmp_path / "b") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 200
                assert (await resp.json())["models"] == [runtime.model]
        async with running_shim(runtime.name, f"http://127.0.0.1:{free_port()}", tmp_path / "c") as shim:
            async with client.get(shim + "/health") as resp:
                assert resp.status == 503


@pytest.mark.parametrize(
    ("runtime", "launch", "request_body", "text", "tokens", "upstream", "sent", "timings"),
    [
        # Ollama's native chat: max_tokens becomes options.num_predict and nothing else, even
        # with the launch's parallelism set; durations -> ms.
        case(OLLAMA, {"parallel": 4, "env_ollama_num_parallel": "4"}, {"prompt": "hi", "max_tokens": 4},
             "The sky is blue", 4, "/api/chat", {"options": {"num_predict": 4}}, {"eval_ms": pytest.approx(4535.599)}),
        # DMR's llama.cpp engine: the node's model is named, llama.cpp's timings are kept.
        case(DMR, None, {"prompt": "hi", "max_tokens": 2}, " the token", 2, DMR.chat_path,
             {"model": DMR.model}, {"prompt_ms": pytest.approx(2.498)}),
        # vLLM: ignore_eos goes through, usage is asked for; vLLM sends no timings.
        case(VLLM, None, {"prompt": "Hello!", "max_tokens": 6, "ignore_eos": True}, "Hello world, how are", 6,
             VLLM.chat_path, {"ignore_eos": True, "stream_options": {"include_usage": True}}, None),
    ],
)  # fmt: skip
async def test_shim_inference_uses_the_servers_usage(
    tmp_path: Path,
    runtime: Runtime,
    launch: dict[str, Any] | None,
    request_body: dict[str, Any],
    text: str,
    tokens: int,
    upstream: str,
    sent: dict[str, Any],
    timings: dict[str, Any] | None,
) -> None:
    shim_kw = {} if launch is None else {"launch_settings": launch}
    async with runtime.fake() as fake, running_shim(runtime.name, fake.url, tmp_path, **shim_kw) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.post(shim + "/inference", json=request_body) as resp:
                assert resp.status == 200
                result = await resp.json()
    assert result["text"] == text
    assert result["completion_tokens"] == tokens and result["token_count_source"] == "server"
    assert result["finish_reason"] == "length"
    assert result["runtime"] == runtime.name and result["model"] == runtime.model
    if timings is None:
        assert result["server_timings"] is None
    else:
        assert subset(result["server_timings"], timings) == timings
    assert as_json(subset(fake.bodies(upstream)[-1], sent)) == as_json(sent)


@pytest.mark.parametrize(
    ("runtime", "request_body", "upstream", "content", "tokens"),
    [
        # Ollama's /v1 reads only max_tokens and has no ignore_eos: the shim rewrites the body.
        case(OLLAMA,
             {"model": OLLAMA.model, "messages": OLLAMA.messages, "max_completion_tokens": 2, "ignore_eos": True},
             {"model": OLLAMA.model, "messages": OLLAMA.messages, "max_tokens": 2},
             "The sky", 2),  # the limit held
        # DMR hands the body to llama-server unchanged.
        case(DMR, {"model": DMR.model, "messages": DMR.messages, "max_tokens": 2}, None, " the token", 2),
        # vLLM takes both fields: nothing is rewritten on the way.
        case(VLLM,
             {"model": VLLM.model, "messages": VLLM.messages, "max_completion_tokens": 4, "ignore_eos": True},
             None, "Hello world,", 4),
    ],
)  # fmt: skip
async def test_shim_passthrough_non_streamed_has_content_length(
    tmp_path: Path,
    runtime: Runtime,
    request_body: dict[str, Any],
    upstream: dict[str, Any] | None,
    content: str,
    tokens: int,
) -> None:
    async with runtime.fake() as fake, running_shim(runtime.name, fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.post(shim + "/v1/chat/completions", json=request_body) as resp:
                assert resp.status == 200
                raw = await resp.read()
                assert resp.headers["Content-Length"] == str(len(raw))
                assert "Transfer-Encoding" not in resp.headers
    assert fake.bodies(runtime.chat_path) == [request_body if upstream is None else upstream]
    answer = json.loads(raw)
    assert answer["choices"][0]["message"]["content"] == content
    assert answer["usage"]["completion_tokens"] == tokens


STREAM = {"stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    ("runtime", "request_body", "upstream", "first_delta", "text", "tokens"),
    [
        # Ollama's /v1: max_completion_tokens becomes max_tokens, and the shim fills in the
        # node's model. Its first chunk carries the role and the first token.
        case(OLLAMA, {"messages": OLLAMA.messages, "max_completion_tokens": 3, **STREAM},
             {"messages": OLLAMA.messages, "max_tokens": 3, **STREAM, "model": OLLAMA.model},
             {"role": "assistant", "content": "The"}, "The sky is", 3),
        # DMR: llama-server's stream, its first chunk role-only with content null.
        case(DMR, {"model": DMR.model, "messages": DMR.messages, "max_tokens": 2, **STREAM}, None,
             {"role": "assistant", "content": None}, " the token", 2),
        # vLLM: the first chunk is role-only with content "".
        case(VLLM, {"model": VLLM.model, "messages": VLLM.messages, "max_tokens": 3, "ignore_eos": True, **STREAM},
             None, {"role": "assistant", "content": ""}, "Hello world", 3),
    ],
)  # fmt: skip
async def test_shim_passthrough_streams_sse(
    tmp_path: Path,
    runtime: Runtime,
    request_body: dict[str, Any],
    upstream: dict[str, Any] | None,
    first_delta: dict[str, Any],
    text: str,
    tokens: int,
) -> None:
    async with runtime.fake() as fake, running_shim(runtime.name, fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.post(shim + "/v1/chat/completions", json=request_body) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(resp)
    assert fake.bodies(runtime.chat_path) == [request_body if upstream is None else upstream]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == first_delta
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == tokens


@pytest.mark.parametrize("runtime", [case(DMR), case(VLLM)])
async def test_shim_v1_models_lists_the_runtimes_models(tmp_path: Path, runtime: Runtime) -> None:
    async with runtime.fake() as fake, running_shim(runtime.name, fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client, client.get(shim + "/v1/models") as resp:
            listed = await resp.json()
    assert [m["id"] for m in listed["data"]] == [runtime.model]
    assert f"GET {runtime.models_path}" in fake.paths()
