"""A fake Docker Model Runner (the standalone `model-runner` server).

Follows Docker's "DMR REST API" page (https://docs.docker.com/ai/model-runner/api-reference/:
GET /models, POST /models/create, OpenAI endpoints under /engines/llama.cpp/v1/ and
/engines/v1/) and the server source, github.com/docker/model-runner:
pkg/inference/scheduling/http_handler.go (routes; GET /engines/status maps backend name to
a status line; `model` is required, 400 without it; 404 for a model not pulled; the body
goes to llama-server unchanged), pkg/inference/backend.go (status lines "Running: ...",
"Not Installed: ...", "Installing: ...", "Error: ..."), pkg/inference/models/api.go (the
`Model` objects of GET /models and the OpenAI list), pkg/server/server.go (GET /version).
The stream itself is llama-server's, which DMR proxies: llama.cpp tools/server/README.md,
checked against a real llama-server here: a first chunk with `delta: {"role":
"assistant", "content": null}`, content chunks, a finish chunk with `delta: {}`, then with
`stream_options.include_usage` a chunk with `choices: []`, `usage` and `timings` (ms),
then `data: [DONE]`.

Scheduling, when asked for (`load_s`, `idle_unload_s`, `parallel`), as
pkg/inference/scheduling/loader.go does it: a model's llama.cpp runner is started by the first
request for it (that request waits for the load; DMR reports no load figure), and a runner
left without requests for `runnerIdleTimeout` (5 minutes, a constant) is evicted, so the next
request loads it again; the runner serves `--parallel` requests at once (its LLAMA_ARGS).
`GET /_fake/stats` is the fake's own (not DMR's): the most requests it ran at once, its loads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .base import FakeServer, sse

DOCUMENT = "https://docs.docker.com/ai/model-runner/api-reference/"
#: The model the fake holds unless told otherwise.
MODEL = "ai/smollm2:latest"
RUNNING = "Running: llama.cpp latest-cpu (sha256:4ad1b2c0) b8840"
#: pkg/inference/scheduling/loader.go: runnerIdleTimeout = 5 * time.Minute.
RUNNER_IDLE_TIMEOUT_S = 300.0


class FakeDMR(FakeServer):
    """DMR holding `models` (tags), its llama.cpp backend in state `engine`.

    mode: "ok", "http500" (chat answers 500), "malformed" (a chunk that is not JSON),
    "status_500" (/engines/status fails).
    """

    DOCUMENT = DOCUMENT

    def __init__(
        self,
        *,
        models: tuple[str, ...] = (MODEL,),
        engine: str = RUNNING,
        tokens: tuple[str, ...] = (" the", " token", " by", " token"),
        mode: str = "ok",
        delay_s: float = 0.0,
        version: str = "v1.0.9",
        load_s: float = 0.0,
        idle_unload_s: float | None = None,
        parallel: int | None = None,
    ) -> None:
        self.models = models
        self.engine = engine
        self.tokens = tokens
        self.mode = mode
        self.delay_s = delay_s
        self.version_string = version
        self.load_s = load_s
        #: Idle seconds after which the runner is evicted (None: never).
        self.idle_unload_s = idle_unload_s
        self._slots = asyncio.Semaphore(parallel) if parallel else None
        self._load_lock = asyncio.Lock()
        self._loaded = False
        self._released_at = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.loads = 0
        super().__init__()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)
        router.add_get("/version", self.version)
        router.add_get("/engines/status", self.status)
        router.add_get("/models", self.list_models)
        for prefix in ("/engines/llama.cpp/v1", "/engines/v1"):
            router.add_get(prefix + "/models", self.openai_models)
            router.add_post(prefix + "/chat/completions", self.chat)
        router.add_get("/_fake/stats", self.stats)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"max_in_flight": self.max_in_flight, "loads": self.loads})

    async def _runner(self) -> None:
        """The model's runner: started when there is none, or when the last one sat idle past the timeout."""
        async with self._load_lock:
            idle = self.in_flight == 0 and asyncio.get_running_loop().time() - self._released_at
            evicted = self.idle_unload_s is not None and self._loaded and idle is not False and idle > self.idle_unload_s
            if self.load_s > 0 and (not self._loaded or evicted):
                await asyncio.sleep(self.load_s)
                self.loads += 1
            self._loaded = True

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Docker Model Runner is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version_string})

    async def status(self, request: web.Request) -> web.Response:
        if self.mode == "status_500":
            return web.Response(status=500, text="failed to encode response")
        return web.json_response(
            {
                "llama.cpp": self.engine,
                "vllm": "Not Installed: package not installed",
                "mlx": "Not Installed: only supported on Apple Silicon",
                "sglang": "Not Installed: package not installed",
            }
        )

    def _known(self, model: str) -> bool:
        return model in self.models or f"{model}:latest" in self.models

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "id": f"sha256:{i:064x}",
                    "tags": [tag],
                    "created": 1742816981,
                    "config": {
                        "format": "gguf",
                        "quantization": "IQ2_XXS/Q4_K_M",
                        "parameters": "361.82 M",
                        "architecture": "llama",
                        "size": "256.35 MiB",
                        "context_size": 8192,
                    },
                }
                for i, tag in enumerate(self.models)
            ]
        )

    async def openai_models(self, request: web.Request) -> web.Response:
        data = [{"id": tag, "object": "model", "created": 1742816981, "owned_by": "docker"} for tag in self.models]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model") or ""
        if not model:
            return web.Response(status=400, text="model is required\n")
        if not self._known(model):
            return web.Response(status=404, text=f"model not found: {model}\n")
        if self.mode == "http500":
            return web.Response(status=500, text="unable to load runner: llama.cpp exited\n")
        if self._slots is not None:
            await self._slots.acquire()
        try:
            await self._runner()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._answer(request, body, model)
            finally:
                self.in_flight -= 1
                self._released_at = asyncio.get_running_loop().time()
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _answer(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        limit = body.get("max_tokens") or len(self.tokens)
        tokens = list(self.tokens[:limit])
        reason = "length" if len(tokens) == limit else "stop"
        usage = {"completion_tokens": len(tokens), "prompt_tokens": 25, "total_tokens": 25 + len(tokens)}
        timings = {
            "cache_n": 0,
            "prompt_n": 25,
            "prompt_ms": 2.498,
            "prompt_per_token_ms": 0.09992,
            "prompt_per_second": 10008.0,
            "predicted_n": len(tokens),
            "predicted_ms": 0.671,
            "predicted_per_token_ms": 0.3355,
            "predicted_per_second": 2980.6,
        }
        base = {"created": int(time.time()), "id": "chatcmpl-auW7yZKiSRs8O1DYLFKRmLPrOIioUxC7", "model": model}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {"finish_reason": reason, "index": 0, "message": {"role": "assistant", "content": "".join(tokens)}}
                    ],
                    "usage": usage,
                    "timings": timings,
                }
            )
        chunk = {**base, "system_fingerprint": "b8840-unknown", "object": "chat.completion.chunk"}
        events: list[Any] = [
            {**chunk, "choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]}
        ]
        for i, token in enumerate(tokens):
            events.append({**chunk, "choices": [{"finish_reason": None, "index": 0, "delta": {"content": token}}]})
            if self.mode == "malformed" and i == 0:
                events.append("{not json")
        events.append({**chunk, "choices": [{"finish_reason": reason, "index": 0, "delta": {}}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage, "timings": timings})
        events.append("[DONE]")
        return await sse(request, events, delay_s=self.delay_s)
