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
"""

from __future__ import annotations

import asyncio
import json
import time
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
        super().__init__()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)
        router.add_get("/api/version", self.api_version)
        router.add_get("/api/tags", self.tags)
        router.add_post("/api/chat", self.chat)
        router.add_post("/v1/chat/completions", self.openai_chat)

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
