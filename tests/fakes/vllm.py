"""A fake vLLM OpenAI-compatible server.

Follows vLLM's docs/serving/online_serving/openai_compatible_server.md
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html) and the source it
points to, checked against vLLM 0.32 and a real vLLM 0.32 on this CPU:

- vllm/entrypoints/serve/instrumentator/health.py: GET /health is 200 with an EMPTY body
  (content-length 0), 503 when the engine is dead.
- vllm/entrypoints/serve/instrumentator/basic.py: GET /version is `{"version": "0.32.0"}`.
- vllm/entrypoints/serve/engine/protocol.py: GET /v1/models is a ModelList of ModelCards
  with `root`, `parent`, `max_model_len` and `permission`; errors are
  `{"error": {"message", "type", "param", "code"}}`.
- vllm/entrypoints/openai/chat_completion/serving.py (chat_completion_stream_generator):
  a first chunk with `delta: {"role": "assistant", "content": ""}`, one chunk per output
  step (content may be "" while a byte-level token is incomplete), the last with
  `finish_reason` and `stop_reason`; then ONLY when `stream_options.include_usage` is
  true, a chunk with `choices: []` and `usage`; then `data: [DONE]`. An error inside
  the stream is a `data: {"error": {...}}` event, then `data: [DONE]`.
- protocol.py: `ignore_eos` is an extra sampling parameter; output stops at `max_tokens`
  (or `max_completion_tokens`), and at EOS unless `ignore_eos`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .base import FakeServer, sse

DOCUMENT = "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html"
VERSION = "0.32.0"
#: The model the fake serves unless told otherwise.
MODEL = "meta-llama/Llama-3.2-1B-Instruct"


def error_body(message: str, err_type: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


class FakeVLLM(FakeServer):
    """vLLM serving `model`. Without ignore_eos the answer ends after `eos_after` tokens.

    mode: "ok", "http500" (chat answers 500), "malformed" (a chunk that is not JSON),
    "midstream_error" (an error event after some tokens), "legacy_error" (the same in older
    vLLM's flat `{"object": "error", "message"}` form), "no_done" (the stream stops
    without [DONE]), "dead" (/health is 503: EngineDeadError), "no_models".
    """

    DOCUMENT = DOCUMENT

    def __init__(
        self,
        *,
        model: str = MODEL,
        max_model_len: int = 4096,
        tokens: tuple[str, ...] = ("Hello", "", " world", ",", " how", " are", " you", "?"),
        eos_after: int = 3,
        mode: str = "ok",
        delay_s: float = 0.0,
        prompt_tokens: int = 12,
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.tokens = tokens
        self.eos_after = eos_after
        self.mode = mode
        self.delay_s = delay_s
        self.prompt_tokens = prompt_tokens
        super().__init__()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.health)
        router.add_get("/version", self.version)
        router.add_get("/v1/models", self.models)
        router.add_post("/v1/chat/completions", self.chat)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.mode == "dead" else 200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        cards = [
            {
                "id": self.model,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.model,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [{"id": "modelperm-0", "object": "model_permission", "created": now}],
            }
        ]
        return web.json_response({"object": "list", "data": [] if self.mode == "no_models" else cards})

    def output(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """One token per list item (content "" for an incomplete byte-level token)."""
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        limit = min(limit, self.max_model_len - self.prompt_tokens)
        pool = self.tokens if body.get("ignore_eos") else self.tokens[: self.eos_after]
        out = [pool[i % len(pool)] for i in range(limit)] if body.get("ignore_eos") else list(pool[:limit])
        return out, "length" if len(out) == limit else "stop"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.mode == "http500":
            return web.json_response(error_body("EngineCore encountered an issue.", "InternalServerError", 500), status=500)
        if body.get("model") != self.model:
            return web.json_response(
                error_body(f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404), status=404
            )
        tokens, reason = self.output(body)
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + len(tokens),
            "completion_tokens": len(tokens),
        }
        base = {"id": "chatcmpl-971094bc0d61beb2", "created": int(time.time()), "model": self.model}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": reason,
                            "stop_reason": None,
                        }
                    ],
                    "usage": usage,
                }
            )
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[Any] = [
            {
                **chunk,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
            }
        ]
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            choice: dict[str, Any] = {"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None}
            if last:
                choice.update(finish_reason=reason, stop_reason=None)
            events.append({**chunk, "choices": [choice]})
            if self.mode == "malformed" and i == 0:
                events.append("{not json")
            if self.mode == "midstream_error" and i == 1:
                events.append(error_body("Internal server error", "InternalServerError", 500))
                break
            if self.mode == "legacy_error" and i == 1:
                # vLLM before the nested `error` object: a flat ErrorResponse with object "error".
                flat = {"object": "error", "message": "Internal server error", "type": "InternalServerError"}
                events.append({**flat, "param": None, "code": 500})
                break
        if (body.get("stream_options") or {}).get("include_usage") and not self.mode.endswith("error"):
            events.append({**chunk, "choices": [], "usage": usage, "system_fingerprint": f"vllm-{VERSION}"})
        if self.mode != "no_done":
            events.append("[DONE]")
        return await sse(request, events, delay_s=self.delay_s)
