"""What only VLLMAdapter does, and the shim in front of it, against a fake vLLM on loopback.

The fake (tests/fakes/vllm.py) follows vLLM's OpenAI-compatible server as documented in
docs/serving/online_serving/openai_compatible_server.md
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html) and the vLLM 0.32
source it points to (chat_completion/serving.py, serve/instrumentator/health.py and
basic.py, serve/engine/protocol.py); its chunk shapes were checked against a real vLLM 0.32
on this CPU. The opt-in tests/node/runtimes/test_vllm_real.py runs the same adapter against
real vLLM. What every adapter does (status, errors, the shim's health, inference and
passthrough) is tested against this fake and the others in test_adapters.py.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from beacon_golem.core.inference import GenerationRequest
from beacon_golem.node.runtimes.vllm import VLLMAdapter
from tests.fakes.shim import running_shim
from tests.fakes.vllm import FakeVLLM
from tests.node.runtimes.cases import VLLM

MODEL = VLLM.model
MESSAGES = VLLM.messages
ask = VLLM.ask


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
async def test_status_health_has_an_empty_body(session: aiohttp.ClientSession) -> None:
    async with FakeVLLM() as fake, session.get(fake.url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""  # the documented shape we rely on


# ---- through the shim -----------------------------------------------------------------------
async def test_shim_v1_models_passes_max_model_len(tmp_path: Path) -> None:
    async with FakeVLLM(max_model_len=2048) as fake, running_shim("vllm", fake.url, tmp_path) as shim:
        async with aiohttp.ClientSession() as client, client.get(shim + "/v1/models") as resp:
            data = await resp.json()
    assert data["data"][0]["id"] == MODEL and data["data"][0]["max_model_len"] == 2048
