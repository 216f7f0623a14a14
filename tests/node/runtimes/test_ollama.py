"""What only OllamaAdapter does, and the shim in front of it, against a fake Ollama on loopback.

The fake (tests/fakes/ollama.py) follows Ollama's documented protocol:
https://github.com/ollama/ollama/blob/main/docs/api.md (POST /api/chat NDJSON stream ending
in `"done": true` with nanosecond durations, GET /api/tags, GET /api/version), with
docs/api/streaming.mdx, docs/api/errors.mdx, api/types.go and, for /v1/chat/completions,
docs/api/openai-compatibility.mdx and openai/openai.go. No real Ollama runs here (it cannot
be installed on these machines): what is NOT covered is listed in docs/runtimes.md. What
every adapter does (status, errors, the shim's health and passthrough) is tested against
this fake and the others in test_adapters.py.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from beacon_golem.node.runtimes.ollama import OllamaAdapter, ns_to_ms
from tests.fakes.ollama import DOC_DURATIONS_NS, FakeOllama
from tests.fakes.shim import running_shim
from tests.node.runtimes.cases import OLLAMA

MODEL = OLLAMA.model
MESSAGES = OLLAMA.messages
ask = OLLAMA.ask


# ---- launch ---------------------------------------------------------------------------------
def test_launch_is_ollama_serve_with_host_parallel_and_keep_alive() -> None:
    spec = OllamaAdapter.launch("ignored", host="0.0.0.0", port=11500, parallel=8)
    assert spec.argv == ["ollama", "serve"]
    assert spec.env == {"OLLAMA_HOST": "0.0.0.0:11500", "OLLAMA_NUM_PARALLEL": "8", "OLLAMA_KEEP_ALIVE": "-1"}
    assert OllamaAdapter.launch("m").env["OLLAMA_HOST"] == "127.0.0.1:11434"


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
async def test_status_without_launch_settings_is_ollamas_default_parallelism(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models=(MODEL, "deepseek-r1:latest")) as fake:
        plain = await OllamaAdapter(fake.url, session).status()
    assert plain.settings["num_parallel"] == 1  # Ollama's default: requests run one at a time
    assert "default" in plain.settings["num_parallel_source"]


# ---- through the shim -----------------------------------------------------------------------
async def test_shim_info_reports_the_launch_parallelism_and_version(tmp_path: Path) -> None:
    settings = {"parallel": 4, "env_ollama_num_parallel": "4"}
    async with FakeOllama() as fake, running_shim("ollama", fake.url, tmp_path, launch_settings=settings) as shim:
        async with aiohttp.ClientSession() as client:
            async with client.get(shim + "/info") as resp:
                info = await resp.json()
    assert info["runtime"]["settings"]["num_parallel"] == 4
    assert info["runtime"]["version"] == "0.5.1"
