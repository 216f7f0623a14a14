"""A fake Ollama server that speaks Ollama's documented native API and its /v1 layer.

Follows github.com/ollama/ollama docs/api.md ("Generate a chat completion": POST /api/chat
streams NDJSON objects, the final one `"done": true` with `done_reason`,
`prompt_eval_count`, `eval_count` and `total_duration`, `load_duration`,
`prompt_eval_duration`, `eval_duration` in nanoseconds; "List Local Models": GET /api/tags;
"Version": GET /api/version), docs/api/streaming.mdx (the final object may carry content),
docs/api/errors.mdx (`{"error": "..."}` bodies; mid-stream errors are one more NDJSON line
with the status left at 200; 404 for an unknown model), api/types.go (count and duration
fields are `omitempty`), server/routes.go (GET / answers "Ollama is running"), and for
/v1/chat/completions docs/api/openai-compatibility.mdx with middleware/openai.go and
openai/openai.go (only `max_tokens` is read, `max_completion_tokens` is ignored: issue
7125; stream: role chunk, content chunks, finish chunk, a `choices: []` usage chunk when
`stream_options.include_usage`, then `data: [DONE]`).

Scheduling, as envconfig/config.go and docs/faq.md ("How does Ollama handle concurrent
requests?") describe it, when asked for (`num_parallel`, `max_queue`, `keep_alive_s`,
`load_s`): at most OLLAMA_NUM_PARALLEL requests run at once (default 1: one at a time), the
others wait; past OLLAMA_MAX_QUEUE waiting ones the server answers 503 "server busy, please
try again.  maximum pending requests exceeded" (server/sched.go, ErrMaxQueue); the model is
loaded by the first request that needs it (its `load_duration` is that load) and unloaded
after OLLAMA_KEEP_ALIVE idle (default 5m; negative: never). `GET /_fake/stats` is the fake's
own (not Ollama's): the most requests it ran at once, its loads, its busy refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .base import FakeServer, sse

DOCUMENT = "https://github.com/ollama/ollama/blob/main/docs/api.md"
#: The model the fake holds unless told otherwise.
MODEL = "llama3.2:latest"

#: The durations of docs/api.md's "Chat request (Streaming)" final response, in ns.
DOC_DURATIONS_NS = {
    "total_duration": 4883583458,
    "load_duration": 1334875,
    "prompt_eval_duration": 342546000,
    "eval_duration": 4535599000,
}
DOC_PROMPT_EVAL_COUNT = 26
#: server/sched.go's ErrMaxQueue, answered with HTTP 503.
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def parse_keep_alive(text: str | None, default_s: float = 300.0) -> float | None:
    """OLLAMA_KEEP_ALIVE as envconfig reads it: integer seconds or a Go duration; negative: never unload (None)."""
    if text is None or not text.strip():
        return default_s
    text = text.strip().strip("\"'")
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        value = float(int(text))
    except ValueError:
        for unit in sorted(units, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    value = float(text[: -len(unit)]) * units[unit]
                except ValueError:
                    return default_s
                break
        else:
            return default_s
    return None if value < 0 else value


def created_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class FakeOllama(FakeServer):
    """Ollama with `models` pulled, answering every chat with `tokens` (one per line).

    mode: "ok", "http500" (POST /api/chat answers 500), "malformed" (a line that is not
    JSON), "midstream_error" (an `{"error"}` line after some tokens), "no_done" (the
    stream stops before the `done: true` object), "tags_500" (GET /api/tags fails).
    """

    DOCUMENT = DOCUMENT

    def __init__(
        self,
        *,
        models: tuple[str, ...] = (MODEL,),
        tokens: tuple[str, ...] = ("The", " sky", " is", " blue", "."),
        version: str = "0.5.1",
        mode: str = "ok",
        delay_s: float = 0.0,
        durations_ns: dict[str, int] | None = None,
        send_done_reason: bool = True,
        thinking: tuple[str, ...] = (),
        content_in_done: bool = False,
        load_s: float = 0.0,
        num_parallel: int | None = None,
        max_queue: int | None = None,
        keep_alive_s: float | None = None,
    ) -> None:
        self.models = models
        self.tokens = tokens
        self.version = version
        self.mode = mode
        self.delay_s = delay_s
        self.durations_ns = DOC_DURATIONS_NS if durations_ns is None else durations_ns
        self.send_done_reason = send_done_reason
        self.thinking = thinking
        self.content_in_done = content_in_done
        #: Seconds a model load takes (0: no load emulated; the documented durations are sent).
        self.load_s = load_s
        self.max_queue = max_queue
        #: Idle seconds after which the model is unloaded (None: never).
        self.keep_alive_s = keep_alive_s
        self._slots = asyncio.Semaphore(num_parallel) if num_parallel else None
        self._load_lock = asyncio.Lock()
        self._loaded = False
        self._last_used = 0.0
        self.waiting = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.loads = 0
        self.busy_refusals = 0
        super().__init__()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)
        router.add_get("/api/version", self.api_version)
        router.add_get("/api/tags", self.tags)
        router.add_post("/api/chat", self.chat)
        router.add_post("/v1/chat/completions", self.openai_chat)
        router.add_get("/_fake/stats", self.stats)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"max_in_flight": self.max_in_flight, "loads": self.loads,
                                  "busy_refusals": self.busy_refusals})  # fmt: skip

    async def _ensure_loaded(self) -> int:
        """Load the model when it is not loaded (first use, or idle past keep_alive); the ns it took."""
        begun = time.perf_counter()
        async with self._load_lock:
            idle = self.in_flight == 0 and time.monotonic() - self._last_used
            expired = self.keep_alive_s is not None and self._loaded and idle is not False and idle > self.keep_alive_s
            if self.load_s > 0 and (not self._loaded or expired):
                await asyncio.sleep(self.load_s)
                self.loads += 1
            self._loaded = True
        return int((time.perf_counter() - begun) * 1e9)

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[int]:
        """One request's turn: queued behind OLLAMA_NUM_PARALLEL, refused past OLLAMA_MAX_QUEUE; yields its load ns."""
        if self._slots is not None and self._slots.locked() and self.max_queue is not None and self.waiting >= self.max_queue:
            self.busy_refusals += 1
            raise web.HTTPServiceUnavailable(text=json.dumps({"error": BUSY}), content_type="application/json")
        self.waiting += 1
        try:
            if self._slots is not None:
                await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            load_ns = await self._ensure_loaded()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                yield load_ns
            finally:
                self.in_flight -= 1
                self._last_used = time.monotonic()
        finally:
            if self._slots is not None:
                self._slots.release()

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def api_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def tags(self, request: web.Request) -> web.Response:
        if self.mode == "tags_500":
            return web.json_response({"error": "internal error"}, status=500)
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                "size": 2019393189,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "3.2B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for name in self.models
        ]
        return web.json_response({"models": models})

    def _known(self, model: Any) -> bool:
        names = set(self.models) | {m.removesuffix(":latest") for m in self.models}
        return model in names

    def _answer(self, limit: int | None) -> tuple[list[str], str]:
        """The tokens a request gets, and why it stopped (`length` when cut by the limit)."""
        if limit is not None and 0 <= limit < len(self.tokens):
            return list(self.tokens[:limit]), "length"
        return list(self.tokens), "stop"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.mode == "http500":
            return web.json_response({"error": "the model failed to generate a response"}, status=500)
        model = body.get("model")
        if not self._known(model):
            return web.json_response({"error": f'model "{model}" not found, try pulling it first'}, status=404)
        limit = (body.get("options") or {}).get("num_predict")
        tokens, reason = self._answer(limit)
        async with self._serving() as load_ns:
            return await self._chat_stream(request, model, tokens, reason, load_ns)

    async def _chat_stream(
        self, request: web.Request, model: str, tokens: list[str], reason: str, load_ns: int
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)

        async def line(obj: dict[str, Any] | str) -> None:
            text = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(text.encode() + b"\n")

        def message(content: str, **extra: Any) -> dict[str, Any]:
            return {"model": model, "created_at": created_at(), "message": {"role": "assistant", "content": content, **extra}}

        for thought in self.thinking:
            await line({**message("", thinking=thought), "done": False})
            await asyncio.sleep(self.delay_s)
        streamed = tokens[:-1] if self.content_in_done and tokens else tokens
        for i, token in enumerate(streamed):
            if i:
                await asyncio.sleep(self.delay_s)
            await line({**message(token, images=None), "done": False})
            if self.mode == "malformed" and i == 0:
                await line("{this is not json")
            if self.mode == "midstream_error" and i == 1:
                await line({"error": "an error was encountered while running the model"})
                await resp.write_eof()
                return resp
        if self.mode == "no_done":
            await resp.write_eof()
            return resp
        await asyncio.sleep(self.delay_s)
        final: dict[str, Any] = {**message(tokens[-1] if self.content_in_done and tokens else ""), "done": True}
        if self.send_done_reason:
            final["done_reason"] = reason
        final.update(self.durations_ns)
        if self.load_s > 0:  # the load this request waited for (about 0 when the model was loaded)
            final["load_duration"] = load_ns
        final["prompt_eval_count"] = DOC_PROMPT_EVAL_COUNT
        if tokens:  # omitempty (api/types.go): a count of 0 is left out
            final["eval_count"] = len(tokens)
        await line(final)
        await resp.write_eof()
        return resp

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        if not self._known(model):
            return web.json_response(
                {"error": {"message": f'model "{model}" not found, try pulling it first', "type": "api_error"}},
                status=404,
            )
        # openai/openai.go reads only max_tokens into num_predict; max_completion_tokens is ignored.
        tokens, reason = self._answer(body.get("max_tokens"))
        async with self._serving():
            return await self._openai_answer(request, body, model, tokens, reason)

    async def _openai_answer(
        self, request: web.Request, body: dict[str, Any], model: str, tokens: list[str], reason: str
    ) -> web.StreamResponse:
        usage = {
            "prompt_tokens": DOC_PROMPT_EVAL_COUNT,
            "completion_tokens": len(tokens),
            "total_tokens": DOC_PROMPT_EVAL_COUNT + len(tokens),
        }
        base = {"id": "chatcmpl-123", "created": int(time.time()), "model": model, "system_fingerprint": "fp_ollama"}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": reason}
                    ],
                    "usage": usage,
                }
            )
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[Any] = []
        for i, token in enumerate(tokens):
            delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            events.append({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        events.append("[DONE]")
        return await sse(request, events, delay_s=self.delay_s)
