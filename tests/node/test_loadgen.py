"""The load generator against a real llama-server, straight and through a real node's shim.

Nothing here asserts on time: machines are noisy. Counts, in-flight levels, token numbers and
stop reasons are what is checked. Fake servers (in-process aiohttp apps) stand in only where a
failing or overloaded runtime is needed.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from beacon_golem.node.launcher import LocalNode
from beacon_golem.node.loadgen import (
    ConcurrencyProfile,
    OverloadPolicy,
    PoissonProfile,
    PromptSpec,
    SweepProfile,
    SynchronousProfile,
    Target,
    run_bench,
)
from beacon_golem.node.loadgen.prompts import LlamaServerTokenizer, random_prompts


class SlotWatcher:
    """Polls llama-server's /slots and keeps the most slots it ever saw processing at once."""

    def __init__(self, url: str, key: SecretStr | None = None) -> None:
        self.url = url
        #: The runtime's API key (a node launches llama-server with one: docs/shim.md).
        self.headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        self.max_busy = 0
        self.polls = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        # A fresh connection each poll: llama-server closes streamed connections anyway.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), headers=self.headers) as session:
            while not self._stop.is_set():
                async with session.get(self.url + "/slots") as resp:
                    slots = await resp.json()
                self.polls += 1
                self.max_busy = max(self.max_busy, sum(1 for s in slots if s.get("is_processing")))
                await asyncio.sleep(0.003)

    async def __aenter__(self) -> SlotWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


# ---- against llama-server straight ---------------------------------------------------------------
async def test_fixed_concurrency_keeps_n_in_flight(llama_server: str) -> None:
    profile = ConcurrencyProfile(concurrency=4, num_prompts=24)
    async with SlotWatcher(llama_server) as slots:
        result = await run_bench(llama_server, profile, PromptSpec(input_len=16, output_len=192))
    step = result.steps[0]
    assert step.completed == 24 and step.failed == 0
    assert step.max_concurrent_requests == 4
    assert step.max_concurrency == 4 and step.request_rate == "inf"
    # The server itself never had more than 4 of its 8 slots busy, and it did have 4.
    assert slots.polls > 3
    assert slots.max_busy == 4


async def test_ignore_eos_gives_exact_output_length_and_server_agrees(llama_server: str) -> None:
    spec = PromptSpec(input_len=24, output_len=48)
    result = await run_bench(llama_server, ConcurrencyProfile(concurrency=3, num_prompts=9), spec, detailed=True)
    step = result.steps[0]
    assert step.output_lens == [48] * 9
    assert step.total_output_tokens == 9 * 48
    assert step.output_len_fixed is True
    # Random prompts were cut to exactly 24 tokens with llama-server's own tokenizer.
    assert step.input_tokens_method == "server-tokenizer"
    assert step.input_lens == [24] * 9 and step.total_input_tokens == 9 * 24
    # The runtime's own counters agree with the client's figures.
    check = step.server_check
    assert check.available and check.source.startswith("llamacpp")
    assert check.server_output_tokens == 9 * 48
    assert check.output_tokens_discrepancy_pct is not None and abs(check.output_tokens_discrepancy_pct) < 1.0
    assert check.input_tokens_discrepancy_pct is not None and abs(check.input_tokens_discrepancy_pct) < 1.0
    assert result.server_settings.get("total_slots") == 8
    assert result.target.via == "runtime" and result.target.runtime == "llamacpp"
    # TPOT only where more than one token came back; every request did here.
    assert step.mean_tpot_ms > 0 and step.mean_ttft_ms > 0 and len(step.ttfts or []) == 9


async def test_warmup_not_counted_and_request_count_stop(llama_server: str) -> None:
    profile = SynchronousProfile(num_prompts=7, warmup=5)
    result = await run_bench(llama_server, profile, PromptSpec(input_len=8, output_len=16))
    step = result.steps[0]
    assert step.completed + step.failed == 7 and step.completed == 7
    assert step.warmup_requests == 5
    # The server's counters were read after the warmup: they saw exactly the 7 counted requests.
    assert step.server_check.server_output_tokens == 7 * 16
    assert step.max_concurrent_requests == 1


async def test_duration_stop_and_poisson(llama_server: str) -> None:
    result = await run_bench(
        llama_server, ConcurrencyProfile(concurrency=2, num_prompts=None, duration_s=0.5), PromptSpec(input_len=8, output_len=8)
    )
    step = result.steps[0]
    assert step.completed >= 1 and step.failed == 0 and step.num_prompts == step.completed
    poisson = await run_bench(
        llama_server, PoissonProfile(rate=200.0, num_prompts=10, seed=1), PromptSpec(input_len=8, output_len=8)
    )
    p = poisson.steps[0]
    assert p.completed == 10 and p.request_rate == 200.0 and p.burstiness == 1.0 and p.mode == "rate"


async def test_prompts_hit_the_length_and_are_seeded(llama_server: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        tokenizer = LlamaServerTokenizer(session, llama_server)
        spec = PromptSpec(input_len=40)
        a = await random_prompts(6, spec, seed=11, tokenizer=tokenizer)
        b = await random_prompts(6, spec, seed=11, tokenizer=tokenizer)
        assert [p.text for p in a.prompts] == [p.text for p in b.prompts]
        assert len({p.text for p in a.prompts}) == 6
        for p in a.prompts:
            assert len(await tokenizer.tokenize(p.text or "")) == 40 == p.tokens
        estimated = await random_prompts(3, spec, seed=11)
        assert estimated.method == "estimate" and all(len((p.text or "").split()) == 40 for p in estimated.prompts)


# ---- through a real node's shim -------------------------------------------------------------------
async def test_through_the_shim(local_node: LocalNode) -> None:
    spec = PromptSpec(input_len=16, output_len=96)
    profile = ConcurrencyProfile(concurrency=4, num_prompts=16, warmup=2)
    async with SlotWatcher(local_node.runtime_url, local_node.runtime_api_key) as slots:
        target = Target(url=local_node.url, runtime_token=local_node.runtime_api_key)
        result = await run_bench(target, profile, spec, detailed=True)
    step = result.steps[0]
    assert result.target.via == "shim" and step.via == "shim"
    assert step.endpoint == local_node.url + "/v1/chat/completions"
    assert step.completed == 16 and step.failed == 0
    assert step.output_lens == [96] * 16
    assert step.max_concurrent_requests == 4 and slots.max_busy == 4
    # The node's fingerprint and the runtime's settings come with the result.
    assert result.node is not None and result.node["node_id"] and result.node["system"]["cpu_cores"]
    assert result.server_settings.get("total_slots") == 4
    # The shim's upstream answers from here, and its key was given, so its tokenizer and counters were used.
    assert step.input_tokens_method == "server-tokenizer"
    assert step.server_check.server_output_tokens == 16 * 96


# ---- failing and overloaded runtimes (fakes) -------------------------------------------------------
Chat = Callable[[web.Request, "FakeRuntime"], Awaitable[web.StreamResponse]]


class FakeRuntime:
    """Just enough of llama-server for the llamacpp adapter: /health, /props, /v1/models, chat, /metrics."""

    def __init__(self, chat: Chat, deferred: int = 0) -> None:
        self.chat = chat
        self.deferred = deferred
        self.requests = 0
        self.tokens = 0

    def app(self) -> web.Application:
        app = web.Application()

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def props(_: web.Request) -> web.Response:
            return web.json_response({"total_slots": 2, "default_generation_settings": {"n_ctx": 512}})

        async def models(_: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "fake"}]})

        async def chat(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            return await self.chat(request, self)

        async def metrics(_: web.Request) -> web.Response:
            text = (
                "# TYPE llamacpp:tokens_predicted_total counter\n"
                f"llamacpp:tokens_predicted_total {self.tokens}\n"
                "# TYPE llamacpp:requests_deferred gauge\n"
                f"llamacpp:requests_deferred {self.deferred}\n"
            )
            return web.Response(text=text)

        app.router.add_get("/health", health)
        app.router.add_get("/props", props)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/metrics", metrics)
        return app


async def stream(request: web.Request, fake: FakeRuntime, tokens: int = 4, delay_s: float = 0.0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if delay_s:
        await asyncio.sleep(delay_s)
    await resp.write(b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n')
    for _ in range(tokens):
        await resp.write(b'data: {"choices":[{"delta":{"content":" w"}}]}\n\n')
    fake.tokens += tokens
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": tokens}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    await resp.write_eof()
    return resp


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def failing_runtime() -> AsyncIterator[tuple[str, FakeRuntime]]:
    async def fail(_: web.Request, __: FakeRuntime) -> web.StreamResponse:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    fake = FakeRuntime(fail)
    async for url in serve(fake.app()):
        yield url, fake


async def test_early_stop_on_error_rate(failing_runtime: tuple[str, FakeRuntime]) -> None:
    url, fake = failing_runtime
    policy = OverloadPolicy(max_error_rate=0.5, min_requests=5, check_interval_s=0.02)
    profile = SweepProfile(concurrencies=[2, 4], num_prompts=5000, overload=policy)
    result = await run_bench(Target(url=url, runtime="llamacpp"), profile, PromptSpec(input_len=4, output_len=4))
    assert result.stopped_early and "error rate" in (result.stop_reason or "")
    assert len(result.steps) == 1  # the sweep went no further
    step = result.steps[0]
    assert step.stopped_early and step.overloaded and step.completed == 0
    assert 5 <= step.failed < 5000 and fake.requests < 5000
    assert any("HTTP 500" in e for e in step.error_counts)


async def test_early_stop_on_server_queue() -> None:
    async def slow(request: web.Request, fake: FakeRuntime) -> web.StreamResponse:
        return await stream(request, fake, tokens=4, delay_s=0.01)

    fake = FakeRuntime(slow, deferred=50)
    async for url in serve(fake.app()):
        policy = OverloadPolicy(max_server_queue=10, check_interval_s=0.02, min_requests=1)
        profile = ConcurrencyProfile(concurrency=2, num_prompts=5000, overload=policy)
        result = await run_bench(Target(url=url, runtime="llamacpp"), profile, PromptSpec(input_len=4, output_len=4))
        step = result.steps[0]
        assert step.stopped_early and "server queue 50" in (step.stop_reason or "")
        assert step.server_check.max_server_queue == 50
        assert step.completed < 5000 and step.failed == 0


async def test_early_stop_on_ttft_growth() -> None:
    async def growing(request: web.Request, fake: FakeRuntime) -> web.StreamResponse:
        # Each request waits longer than the last before its first token: a queue building up.
        return await stream(request, fake, tokens=2, delay_s=min(2.0, 0.001 * 1.3**fake.requests))

    fake = FakeRuntime(growing)
    async for url in serve(fake.app()):
        policy = OverloadPolicy(max_ttft_growth=5.0, min_ttft_ms=0.0, window=3, min_requests=6, check_interval_s=0.01)
        profile = SynchronousProfile(num_prompts=60, overload=policy)
        result = await run_bench(Target(url=url, runtime="llamacpp"), profile, PromptSpec(input_len=4, output_len=2))
        step = result.steps[0]
        assert step.stopped_early and "TTFT grew" in (step.stop_reason or "")
        assert step.completed < 60


async def test_ollama_output_length_not_fixed_is_recorded() -> None:
    """A runtime without ignore_eos (Ollama): the result says the output length was not fixed."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert "ignore_eos" not in body and body["options"]["num_predict"] == 6
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        n = random.randint(1, 6)
        for _ in range(n):
            await resp.write(json.dumps({"message": {"content": " w"}, "done": False}).encode() + b"\n")
        done = {"done": True, "done_reason": "stop", "eval_count": n, "eval_duration": 1_000_000 * n, "prompt_eval_count": 3}
        await resp.write(json.dumps(done).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "tiny:latest"}]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.0-fake"})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/chat", chat)
    async for url in serve(app):
        result = await run_bench(url, SynchronousProfile(num_prompts=4), PromptSpec(input_len=4, output_len=6))
        step = result.steps[0]
        assert result.target.runtime == "ollama"
        assert step.output_len_fixed is False
        assert any("output length was not fixed" in w for w in result.warnings)
        assert step.input_tokens_method == "estimate"
        # No /metrics: the cross-check sums the runtime's own eval_count per answer.
        assert step.server_check.available and "eval_count" in step.server_check.source
        assert step.server_check.server_mean_tpot_ms == pytest.approx(1.0)


async def test_cancelling_a_run_leaves_no_request_running(llama_server: str) -> None:
    running = asyncio.Event()

    def progress(event: Any) -> None:
        if event.phase == "running" and event.completed >= 2:
            running.set()

    profile = ConcurrencyProfile(concurrency=4, num_prompts=None, duration_s=120)
    task = asyncio.create_task(run_bench(llama_server, profile, PromptSpec(input_len=8, output_len=64), progress=progress))
    await asyncio.wait_for(running.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
