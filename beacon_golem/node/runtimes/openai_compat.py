"""Shared streaming client for runtimes that speak OpenAI's chat completions over SSE.

llama-server, vLLM and Docker Model Runner all do; they differ in paths, extras and the
per-request timing fields they add, which subclasses describe.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from beacon_golem.core.errors import BadUpstream
from beacon_golem.core.inference import GenerationRequest, GenerationResult, estimate_tokens
from beacon_golem.node.runtimes.base import RuntimeAdapter, StreamClock, drop_none, guarded, iter_lines


class OpenAIChatAdapter(RuntimeAdapter):
    """Generation through `{openai_base}/chat/completions` with `stream: true`."""

    #: Whether the runtime always ends its stream with `data: [DONE]`, so that a stream
    #: without it was cut short (BadUpstream). Off by default: lenient for runtimes that
    #: do not document it.
    requires_done_marker: ClassVar[bool] = False

    def chat_body(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        body = drop_none(
            {
                "model": model,
                "messages": request.chat_messages(),
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p,
                "seed": request.seed,
                "stop": request.stop or None,
                "stream": True,
                # Without this, usage never arrives in a stream (vLLM, llama-server).
                "stream_options": {"include_usage": True},
            }
        )
        if request.ignore_eos and self.supports_ignore_eos:
            body["ignore_eos"] = True
        return body

    def server_timings(self, chunk: dict[str, Any]) -> dict[str, float] | None:
        """The runtime's own per-request timings in a chunk, in ms (none by default)."""
        return None

    async def generate(self, request: GenerationRequest, model: str) -> GenerationResult:
        body = self.chat_body(request, model)
        clock = StreamClock()
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, Any] | None = None
        timings: dict[str, float] | None = None
        served_model = model
        saw_done = False
        async with self.request(
            "POST", self.openai_url("chat/completions"), json=body, timeout=self.timeouts.client_timeout()
        ) as resp:

            async def consume() -> None:
                nonlocal finish, usage, timings, served_model, saw_done
                async for line in iter_lines(resp):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        saw_done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise BadUpstream(f"{self.name} streamed a malformed chunk") from exc
                    if not isinstance(chunk, dict):
                        raise BadUpstream(f"{self.name} streamed a chunk that is not a JSON object")
                    if "error" in chunk:
                        raise BadUpstream(f"{self.name} error mid-stream: {chunk['error']}")
                    if chunk.get("object") == "error":  # older vLLM: a flat ErrorResponse
                        raise BadUpstream(f"{self.name} error mid-stream: {chunk.get('message')}")
                    served_model = chunk.get("model") or served_model
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            clock.content()
                            parts.append(text)
                        finish = choice.get("finish_reason") or finish
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    timings = self.server_timings(chunk) or timings

            await guarded("streaming", self, consume())

        if self.requires_done_marker and not saw_done:
            raise BadUpstream(f"{self.name}'s stream ended without data: [DONE]")
        return self.finish_result(request, parts, finish, usage, timings, clock, served_model)

    def finish_result(
        self,
        request: GenerationRequest,
        parts: list[str],
        finish: str | None,
        usage: dict[str, Any] | None,
        timings: dict[str, float] | None,
        clock: StreamClock,
        model: str,
    ) -> GenerationResult:
        text = "".join(parts)
        warnings: list[str] = []
        if request.ignore_eos and not self.supports_ignore_eos:
            warnings.append(f"{self.name} has no ignore_eos: output length was not fixed")
        if usage and usage.get("completion_tokens") is not None:
            prompt_tokens, completion_tokens, source = (
                usage.get("prompt_tokens"),
                usage["completion_tokens"],
                "server",
            )
        else:
            prompt_tokens, completion_tokens, source = None, estimate_tokens(text), "estimate"
            warnings.append("runtime reported no usage: token count estimated from text")
        return GenerationResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_count_source=source,
            ttft_ms=clock.ttft_ms,
            e2e_ms=clock.e2e_ms(),
            itl_ms=clock.gaps,
            server_timings=timings,
            runtime=self.name,
            model=model,
            warnings=warnings,
        )

    async def openai_models(self) -> list[str]:
        data = await self.get_json(self.openai_base + "/models")
        return [m.get("id") for m in data.get("data", []) if m.get("id")]
