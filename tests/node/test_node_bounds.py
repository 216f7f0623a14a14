"""What one node holds and how long it waits (issue 12, finding 7): stored jobs pruned, generations
capped over every job, perf jobs bounded, request heads and bodies timed, a client that leaves
cancels its generation, 500s counted, and a disconnect is one info line, never a traceback.

The runtime here is a small real server on loopback speaking vLLM's OpenAI stream slowly (tokens
at a set pace) and counting the generations it serves at once and the ones cut off; the shim is
the real one, served as a node serves it (`api.server.serve`: header timeout, handler cancellation).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from beacon_golem.api.bodies import JobSubmission
from beacon_golem.api.server import serve
from beacon_golem.core.config import ShimLimits
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.node.shim.app import SHIM, Shim, ShimConfig, create_app
from beacon_golem.node.shim.jobs import JobManager, JobsFull
from tests.fakes.base import FakeServer


class SlowRuntime(FakeServer):
    """vLLM's routes (/health, /version, /v1/models, streamed /v1/chat/completions), `tokens`
    tokens at one per `delay_s`; counts generations at once (`max_active`) and cut off (`aborted`)."""

    def __init__(self, tokens: int = 4, delay_s: float = 0.02) -> None:
        self.tokens, self.delay_s = tokens, delay_s
        self.active = self.max_active = self.aborted = self.finished = 0
        super().__init__()

    def routes(self, router: web.UrlDispatcher) -> None:
        async def health(_: web.Request) -> web.Response:
            return web.Response()

        async def version(_: web.Request) -> web.Response:
            return web.json_response({"version": "0.32.0"})

        async def models(_: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "m", "max_model_len": 64}]})

        router.add_get("/health", health)
        router.add_get("/version", version)
        router.add_get("/v1/models", models)
        router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            for i in range(self.tokens):
                await asyncio.sleep(self.delay_s)
                chunk = {"model": "m", "choices": [{"delta": {"content": f"t{i} "}, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": self.tokens}}
            await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            await resp.write_eof()
            self.finished += 1
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            self.aborted += 1
        finally:
            self.active -= 1
        return resp


@asynccontextmanager
async def node(tmp_path: Path, runtime: SlowRuntime, **limits: object) -> AsyncIterator[tuple[str, Shim]]:
    config = ShimConfig(runtime="vllm", upstream=runtime.url, data_dir=tmp_path / "shim", limits=ShimLimits(**limits))
    app = create_app(config)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}", app[SHIM]
    finally:
        await runner.cleanup()


def result(text: str) -> GenerationResult:
    return GenerationResult(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                            token_count_source="server", ttft_ms=1.0, e2e_ms=2.0, runtime="r", model="m")  # fmt: skip


async def until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---- stored jobs -------------------------------------------------------------------------------
async def test_stored_jobs_are_bounded_in_count_and_bytes_oldest_finished_first(tmp_path: Path) -> None:
    async def generate(request: GenerationRequest) -> GenerationResult:
        return result("x" * 50_000)

    root = tmp_path / "jobs"
    manager = JobManager(root, generate, max_jobs=3, max_bytes=400_000)
    spec = JobSubmission(requests=[GenerationRequest(prompt="hi")] * 2, concurrency=2)
    ids = []
    for _ in range(6):
        job = manager.submit(spec)
        ids.append(job.id)
        await asyncio.wait_for(job.task, 10)  # type: ignore[arg-type]
    assert list(manager.jobs) == ids[-3:]  # the oldest finished went, files and memory
    assert sorted(p.name for p in root.iterdir()) == sorted(ids[-3:])
    assert manager.total_bytes <= 400_000

    big = manager.submit(JobSubmission(requests=[GenerationRequest(prompt="hi")] * 10, concurrency=1))
    await until(lambda: big.finished)  # 10 x 50 KB: past the bytes bound as it runs, the finished ones make room
    assert list(manager.jobs) == [big.id] and sorted(p.name for p in root.iterdir()) == [big.id]
    after = manager.submit(spec)  # and once it has finished, it goes first when a new job needs room
    assert big.id not in manager.jobs and not (root / big.id).exists()
    await asyncio.wait_for(after.task, 10)  # type: ignore[arg-type]

    blocked = asyncio.Event()

    async def stuck(request: GenerationRequest) -> GenerationResult:
        await blocked.wait()
        return result("y")

    manager.generate = stuck
    for _ in range(3):
        manager.submit(spec)  # unfinished: never pruned
    with pytest.raises(JobsFull) as err:
        manager.submit(spec)
    assert err.value.http_status == 503 and "BEACON_MAX_STORED_JOBS" in str(err.value)
    blocked.set()
    await until(lambda: all(j.finished for j in manager.jobs.values()))
    await manager.close()

    reloaded = JobManager(root, generate, max_jobs=2, max_bytes=400_000)  # a restart with a lower bound
    reloaded.load()
    assert len(reloaded.jobs) == 2 and len(list(root.iterdir())) == 2
    await reloaded.close()


# ---- generations in flight ---------------------------------------------------------------------
async def test_generations_in_flight_are_capped_over_every_job_and_health_answers(tmp_path: Path) -> None:
    async with SlowRuntime(tokens=5, delay_s=0.02) as runtime, node(tmp_path, runtime, max_in_flight=4) as (url, _):
        spec = {"requests": [{"prompt": "hi", "max_tokens": 5}] * 24, "concurrency": 64}
        async with aiohttp.ClientSession() as http:
            ids = []
            for _ in range(4):  # 4 jobs x concurrency 64 would be 256 sockets to the runtime
                async with http.post(url + "/jobs", json=spec) as resp:
                    ids.append((await resp.json())["id"])
            healthy = 0
            while True:
                async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    healthy += resp.status == 200
                    assert resp.status == 200
                states = []
                for job_id in ids:
                    async with http.get(url + f"/jobs/{job_id}") as resp:
                        states.append((await resp.json())["state"])
                if all(s == "done" for s in states):
                    break
                await asyncio.sleep(0.05)
    assert runtime.finished == 96 and runtime.max_active <= 4 and healthy >= 1


async def test_http_requests_past_the_waiting_bound_are_503(tmp_path: Path) -> None:
    async with SlowRuntime(tokens=10, delay_s=0.03) as runtime, node(tmp_path, runtime, max_in_flight=1, max_waiting=2) as (url, _):
        async with aiohttp.ClientSession() as http:

            async def one() -> tuple[int, str]:
                async with http.post(url + "/inference", json={"prompt": "hi", "max_tokens": 10}) as resp:
                    return resp.status, await resp.text()

            answers = await asyncio.gather(*(one() for _ in range(8)))
    statuses = sorted(s for s, _ in answers)
    assert statuses.count(200) == 3 and statuses.count(503) == 5, statuses
    assert all("node busy" in text for s, text in answers if s == 503)
    assert runtime.max_active == 1


async def test_a_perf_job_of_a_billion_prompts_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    async with SlowRuntime() as runtime, node(tmp_path, runtime, max_perf_prompts=1000) as (url, _):
        async with aiohttp.ClientSession() as http:
            for profile in ({"kind": "concurrency", "concurrency": 4, "num_prompts": 10**9},
                            {"kind": "sweep", "concurrencies": [1, 2], "num_prompts": 600, "warmup": 10},
                            {"kind": "sweep", "concurrencies": list(range(1, 400)), "num_prompts": 1}):  # fmt: skip
                started = time.monotonic()
                async with http.post(url + "/jobs", json={"perf": {"profile": profile}}) as resp:
                    body = await resp.json()
                assert resp.status == 422 and ("prompts" in body["error"] or "levels" in body["error"]), body
                assert time.monotonic() - started < 2


# ---- slow clients ------------------------------------------------------------------------------
def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


async def test_a_client_that_drips_its_request_head_is_disconnected_with_one_info_line(tmp_path: Path) -> None:
    async with SlowRuntime() as runtime, node(tmp_path, runtime, header_timeout_s=0.5) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with structlog.testing.capture_logs() as logs:
            sock = _raw(port)
            started = time.monotonic()
            closed_after = None
            try:
                for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                    await asyncio.to_thread(sock.sendall, bytes([byte]))
                    await asyncio.sleep(0.05)
            except OSError:
                closed_after = time.monotonic() - started
            if closed_after is None:
                data = await asyncio.to_thread(sock.recv, 100)
                assert data == b""  # closed
                closed_after = time.monotonic() - started
            sock.close()
            idle = _raw(port)  # a connection that never sends a byte
            assert await asyncio.to_thread(idle.recv, 100) == b""
            idle.close()
            async with aiohttp.ClientSession() as http, http.get(url + "/health") as resp:
                assert resp.status == 200  # everyone else is served
    assert closed_after < 3
    timeouts = [e for e in logs if e["event"] == "client_head_timeout"]
    assert len(timeouts) == 2 and all(e["log_level"] == "info" for e in timeouts)
    assert not [e for e in logs if e["log_level"] in ("error", "exception") or e.get("exc_info")]


async def test_a_body_that_does_not_arrive_in_time_is_408_and_one_that_stops_is_one_info_line(tmp_path: Path) -> None:
    async with SlowRuntime() as runtime, node(tmp_path, runtime, body_timeout_s=0.5) as (url, shim):
        port = int(url.rsplit(":", 1)[1])
        with structlog.testing.capture_logs() as logs:
            sock = _raw(port)
            sock.sendall(b"POST /inference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"prompt\"")  # fmt: skip
            answer = await asyncio.to_thread(sock.recv, 4096)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 408")
            gone = _raw(port)  # a client that leaves mid-body
            gone.sendall(b"POST /inference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"prompt\"")  # fmt: skip
            await asyncio.sleep(0.1)
            gone.close()
            await asyncio.sleep(0.3)
    assert [e["event"] for e in logs if e["event"].startswith("client_")] == ["client_body_timeout", "client_disconnected"]
    assert not [e for e in logs if e["log_level"] in ("error", "exception") or e.get("exc_info")]
    assert 'status="408"' in shim.metrics.render().decode()


@pytest.mark.parametrize("stream", [False, True], ids=["inference", "streamed_pass_through"])
async def test_a_client_that_disconnects_cancels_its_generation(tmp_path: Path, stream: bool) -> None:
    async with SlowRuntime(tokens=100, delay_s=0.05) as runtime, node(tmp_path, runtime) as (url, _):
        async with aiohttp.ClientSession() as http:
            path, body = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}) \
                if stream else ("/inference", {"prompt": "hi", "max_tokens": 100})  # fmt: skip
            request = asyncio.ensure_future(http.post(url + path, json=body))
            await until(lambda: runtime.active == 1)
            request.cancel()  # the client goes away, 5 s of generation left
        await until(lambda: runtime.aborted == 1, timeout_s=3)
    assert runtime.finished == 0


async def test_500s_are_counted_in_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Shim, refresh: bool = False) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Shim, "info", broken)
    async with SlowRuntime() as runtime, node(tmp_path, runtime) as (url, _), aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(url + "/info") as resp:
                assert resp.status == 500 and "Traceback" not in await resp.text()
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    assert 'beacon_shim_requests_total{route="/info",status="500"} 2.0' in text
    assert 'beacon_shim_errors_total{route="/info",status="500"} 2.0' in text


async def test_max_tokens_above_the_runtimes_context_is_warned(tmp_path: Path) -> None:
    async with SlowRuntime(tokens=2) as runtime, node(tmp_path, runtime) as (url, _), aiohttp.ClientSession() as http:
        async with http.post(url + "/inference", json={"prompt": "hi", "max_tokens": 500}) as resp:
            warnings = (await resp.json())["warnings"]
        async with http.post(url + "/inference", json={"prompt": "hi", "max_tokens": 16}) as resp:
            fine = (await resp.json())["warnings"]
    assert any("more than the runtime's context (64 tokens" in w for w in warnings)
    assert not any("context" in w for w in fine)
