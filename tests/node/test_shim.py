"""The shim against a real llama-server serving the generated tiny model, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from beacon_golem.api.bodies import JobSubmission
from beacon_golem.api.client import ShimClient, ShimError
from beacon_golem.core.config import ShimLimits
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter
from beacon_golem.node.shim.app import ShimConfig, create_app
from tests.support import llama_server_binary, serve_app

PROMPT = {"prompt": "Who governs Taiwan?", "max_tokens": 24, "ignore_eos": True, "temperature": 0}


async def test_health_is_503_until_the_model_is_loaded_then_200(tmp_path: Path, tiny_model: Path) -> None:
    llama_server_binary()
    port = free_port()
    config = ShimConfig(runtime="llamacpp", upstream=f"http://127.0.0.1:{port}", data_dir=tmp_path)
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["status"] == "unavailable" and "not reachable" in body["reason"]
        spec = LlamaCppAdapter.launch(str(tiny_model), port=port, parallel=2)
        proc = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            seen = []
            for _ in range(300):
                async with http.get(url + "/health") as resp:
                    seen.append(resp.status)
                    body = await resp.json()
                if resp.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert seen[0] == 503 and seen[-1] == 200
            assert body == {"status": "ok", "runtime": "llamacpp", "models": ["beacon-tiny"], "reason": None,
                            "switching_s": None}  # fmt: skip
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


async def test_info_fingerprints_runtime_and_machine(shim_url: str) -> None:
    async with ShimClient(shim_url) as client:
        info = await client.info()
        again = await client.info()
    assert info.runtime.name == "llamacpp"
    assert info.runtime.models == ["beacon-tiny"]
    assert info.runtime.settings["total_slots"] == 8
    assert info.runtime.version  # llama-server's build_info
    assert info.system.os == "Linux" and info.system.kernel and info.system.arch
    assert info.system.ram_gib > 0 and info.system.cpu_cores
    assert info.system.gpus == []  # no nvidia-smi on this machine
    assert again == info  # computed once


async def test_inference_with_ignore_eos_gives_exactly_max_tokens(shim_url: str) -> None:
    async with ShimClient(shim_url) as client:
        for max_tokens in (1, 7, 64):
            result = await client.infer(GenerationRequest(prompt="Hello", max_tokens=max_tokens, ignore_eos=True))
            assert result.completion_tokens == max_tokens
            assert result.token_count_source == "server"
            assert result.finish_reason == "length"
            assert result.prompt_tokens and result.prompt_tokens > 0
            assert result.runtime == "llamacpp" and result.model == "beacon-tiny"
            assert result.ttft_ms is not None and 0 < result.ttft_ms <= result.e2e_ms
            assert all(gap >= 0 for gap in result.itl_ms)
            assert result.server_timings and result.server_timings["predicted_ms"] > 0


async def test_inference_takes_chat_messages_and_stop(shim_url: str) -> None:
    async with ShimClient(shim_url) as client:
        result = await client.infer(
            GenerationRequest(
                messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}],
                max_tokens=16,
                seed=3,
                temperature=0.0,
            )
        )
        same = await client.infer(
            GenerationRequest(
                messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}],
                max_tokens=16,
                seed=3,
                temperature=0.0,
            )
        )
    assert result.text and result.text == same.text  # greedy decoding is deterministic


async def test_openai_passthrough_non_streamed_has_content_length(shim_url: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "ignore_eos": True}
    async with aiohttp.ClientSession() as http, http.post(shim_url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Length") and "chunked" not in resp.headers.get("Transfer-Encoding", "")
        data = await resp.json()
    assert data["usage"]["completion_tokens"] == 8
    assert data["choices"][0]["message"]["role"] == "assistant"


async def test_openai_passthrough_streams_sse(shim_url: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 12,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as http, http.post(shim_url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [line[5:].strip() for line in raw.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert any(c.get("usage", {}) and c["usage"]["completion_tokens"] == 12 for c in chunks)
    assert "".join(
        (ch.get("delta") or {}).get("content") or "" for c in chunks for ch in c.get("choices") or []
    )


async def test_v1_models_lists_the_model(shim_url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(shim_url + "/v1/models") as resp:
        data = await resp.json()
    assert [m["id"] for m in data["data"]] == ["beacon-tiny"]


async def test_job_runs_every_request_and_writes_results_to_disk(shim_url: str, shim_config: ShimConfig) -> None:
    spec = JobSubmission(requests=[GenerationRequest(**{**PROMPT, "max_tokens": 5 + i}) for i in range(6)], concurrency=3)
    async with ShimClient(shim_url) as client:
        accepted = await client.submit_job(spec)
        assert accepted.state in ("queued", "running") and accepted.total == 6
        view = await client.wait_job(accepted.id, poll_s=0.05)
    assert view.state == "done" and view.completed == 6 and view.failed == 0
    assert [item.index for item in view.results or []] == list(range(6))
    assert [item.result.completion_tokens for item in view.results or [] if item.result] == [5, 6, 7, 8, 9, 10]
    lines = (shim_config.data_dir / "jobs" / accepted.id / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6


async def test_shim_restart_mid_job_keeps_finished_results(tmp_path: Path, llama_server: str) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path / "shim")
    spec = JobSubmission(requests=[GenerationRequest(**{**PROMPT, "max_tokens": 200}) for _ in range(30)], concurrency=1)
    async with serve_app(create_app(config)) as url, ShimClient(url) as client:
        job_id = (await client.submit_job(spec)).id
        for _ in range(400):
            partial = await client.job(job_id, partial=True)
            if partial.completed >= 3:
                break
            await asyncio.sleep(0.02)
    # The first shim is gone mid-job; what it finished is on disk.
    results_file = config.data_dir / "jobs" / job_id / "results.jsonl"
    before = {json.loads(line)["index"]: line for line in results_file.read_text().splitlines()}
    assert 3 <= len(before) < 30
    async with serve_app(create_app(config)) as url, ShimClient(url) as client:
        view = await client.wait_job(job_id, poll_s=0.05)
    assert view.state == "done" and view.completed == 30
    assert sorted(item.index for item in view.results or []) == list(range(30))  # none twice
    after = results_file.read_text().splitlines()
    assert after[: len(before)] == list(before.values())  # finished results kept as they were


async def test_cancel_job_keeps_what_finished(shim_url: str) -> None:
    spec = JobSubmission(requests=[GenerationRequest(**{**PROMPT, "max_tokens": 300}) for _ in range(50)], concurrency=1)
    async with ShimClient(shim_url) as client:
        job_id = (await client.submit_job(spec)).id
        await asyncio.sleep(0.3)
        view = await client.cancel_job(job_id)
        later = await client.job(job_id)
    assert view.state == "cancelled" and later.state == "cancelled"
    assert view.completed < 50 and later.completed == view.completed


async def test_metrics_count_requests_tokens_and_latency(shim_url: str) -> None:
    async with ShimClient(shim_url) as client:
        await client.infer(GenerationRequest(**PROMPT))
        await client.infer(GenerationRequest(**PROMPT))
    async with aiohttp.ClientSession() as http, http.get(shim_url + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert 'beacon_shim_requests_total{route="/inference",status="200"} 2.0' in text
    assert 'beacon_shim_tokens_total{kind="completion"} 48.0' in text
    assert 'beacon_shim_generations_total{outcome="ok",runtime="llamacpp"} 2.0' in text
    assert "beacon_shim_ttft_seconds_count 2.0" in text
    assert "beacon_shim_requests_in_flight" in text


async def test_bearer_token_guards_every_route_but_health(tmp_path: Path, llama_server: str) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path, token="s3cret")
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            assert resp.status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            async with http.get(url + "/info", headers=headers) as resp:
                assert resp.status == 401
                assert "bearer token" in (await resp.json())["error"]
        async with http.get(url + "/info", headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200
        async with ShimClient(url, token="s3cret") as client:
            assert (await client.info()).runtime.name == "llamacpp"
        async with ShimClient(url) as client:
            assert (await client.health()).status == "ok"
            with pytest.raises(ShimError) as err:
                await client.info()
            assert err.value.status == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/inference", b"{not json", 400, "not valid JSON"),
        ("POST", "/inference", b"", 400, "empty"),
        ("POST", "/inference", b'{"max_tokens": 5}', 422, "exactly one of 'messages' or 'prompt'"),
        ("POST", "/inference", b'{"prompt": "x", "max_tokens": 0}', 422, "max_tokens"),
        ("POST", "/inference", b'{"prompt": "x", "bogus": 1}', 422, "bogus"),
        ("POST", "/inference", b'{"prompt": "x", "temperature": "hot"}', 422, "temperature"),
        ("POST", "/jobs", b'{"requests": []}', 422, "requests"),
        ("POST", "/jobs", b'{"requests": [{"prompt": "x"}], "concurrency": 0}', 422, "concurrency"),
        ("POST", "/v1/chat/completions", b'{"model": "x"}', 422, "messages"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 422, "JSON object"),
        ("GET", "/jobs/nope", None, 404, "no job nope"),
        ("DELETE", "/jobs/nope", None, 404, "no job nope"),
        ("GET", "/nothing-here", None, 404, "no route GET /nothing-here"),
        ("GET", "/inference", None, 405, "not allowed"),
    ],
)
async def test_bad_input_gets_a_clear_json_error(
    shim_url: str, method: str, path: str, body: bytes | None, status: int, needle: str
) -> None:
    async with aiohttp.ClientSession() as http, http.request(method, shim_url + path, data=body) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"].startswith("application/json")
        error = await resp.json()
    assert error["status"] == status
    assert needle in error["error"]
    assert "Traceback" not in error["error"]


async def test_body_over_the_limit_is_413(tmp_path: Path, llama_server: str) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path, limits=ShimLimits(max_body_bytes=1024))
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/inference", json={"prompt": "x" * 4096}) as resp:
            assert resp.status == 413
            assert "too large" in (await resp.json())["error"]


async def test_runtime_down_is_503(tmp_path: Path) -> None:
    config = ShimConfig(runtime="llamacpp", upstream=f"http://127.0.0.1:{free_port()}", data_dir=tmp_path)
    async with serve_app(create_app(config)) as url, ShimClient(url) as client:
        with pytest.raises(ShimError) as err:
            await client.infer(GenerationRequest(prompt="x", model="beacon-tiny"))
    assert err.value.status == 503 and "not reachable" in str(err.value)


async def _misbehaving_runtime(mode: str) -> web.Application:
    """A runtime that breaks in one way: slow (timeout), 500s, or half a stream."""

    async def chat(request: web.Request) -> web.StreamResponse:
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "error":
            return web.json_response({"error": {"message": "out of memory"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: {oops\n\n')
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize(("mode", "status", "needle"), [("slow", 504, "time"), ("error", 502, "HTTP 500"), ("torn", 502, "malformed")])
async def test_runtime_failures_map_to_gateway_errors(tmp_path: Path, mode: str, status: int, needle: str) -> None:
    async with serve_app(await _misbehaving_runtime(mode)) as upstream:
        config = ShimConfig(runtime="llamacpp", upstream=upstream, data_dir=tmp_path, limits=ShimLimits(read_timeout_s=0.5))
        async with serve_app(create_app(config)) as url, ShimClient(url) as client:
            with pytest.raises(ShimError) as err:
                await client.infer(GenerationRequest(prompt="x", model="m"))
    assert err.value.status == status and needle in str(err.value)
