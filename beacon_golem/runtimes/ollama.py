"""Ollama, through its native API so that `num_predict` is honoured and durations come back.

Reference: Ollama docs/api.md: POST /api/chat streams NDJSON objects, the last with
`"done": true`, `done_reason`, `prompt_eval_count`, `eval_count` and `total_duration`,
`load_duration`, `prompt_eval_duration`, `eval_duration` in nanoseconds; GET /api/tags lists
local models; GET /api/version gives the version; default port 11434. Ollama has no
`ignore_eos`, and its /v1 endpoint ignores `max_completion_tokens` (ollama issue 7125).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from beacon_golem.errors import BadUpstream, RuntimeUnavailable, UpstreamError
from beacon_golem.inference import GenerationRequest, GenerationResult, estimate_tokens
from beacon_golem.runtimes.base import (
    LaunchSpec,
    RuntimeAdapter,
    RuntimeStatus,
    StreamClock,
    drop_none,
    guarded,
    iter_lines,
)

_NS_FIELDS = {
    "total_duration": "total_ms",
    "load_duration": "load_ms",
    "prompt_eval_duration": "prompt_eval_ms",
    "eval_duration": "eval_ms",
}


def ns_to_ms(done: dict[str, Any]) -> dict[str, float] | None:
    out = {ms: done[ns] / 1e6 for ns, ms in _NS_FIELDS.items() if isinstance(done.get(ns), int | float)}
    return out or None


class OllamaAdapter(RuntimeAdapter):
    name: ClassVar[str] = "ollama"
    default_port: ClassVar[int] = 11434
    supports_ignore_eos: ClassVar[bool] = False

    @classmethod
    def launch(
        cls, model: str, *, host: str = "127.0.0.1", port: int | None = None, parallel: int = 4
    ) -> LaunchSpec:
        return LaunchSpec(
            argv=["ollama", "serve"],
            env={
                "OLLAMA_HOST": f"{host}:{port or cls.default_port}",
                # The default of 1 serializes every request: record and raise it.
                "OLLAMA_NUM_PARALLEL": str(parallel),
            },
        )

    async def status(self) -> RuntimeStatus:
        try:
            tags = await self.get_json("/api/tags", timeout_s=5)
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=False, ready=False, reason=str(exc))
        models = [m.get("name") or m.get("model") for m in tags.get("models", [])]
        models = [m for m in models if m]
        try:
            version = (await self.get_json("/api/version")).get("version")
        except RuntimeUnavailable:
            version = None
        settings = {"num_parallel": self.launch_settings.get("num_parallel", 1)}
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            version=version,
            settings=settings,
            reason=None if models else "Ollama holds no model (ollama pull MODEL)",
        )

    def chat_body(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        options = drop_none(
            {
                "num_predict": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p,
                "seed": request.seed,
                "stop": request.stop or None,
            }
        )
        return {"model": model, "messages": request.chat_messages(), "stream": True, "options": options}

    async def generate(self, request: GenerationRequest, model: str) -> GenerationResult:
        clock = StreamClock()
        parts: list[str] = []
        done: dict[str, Any] = {}
        async with self.request(
            "POST", self.url("/api/chat"), json=self.chat_body(request, model), timeout=self.timeouts.client_timeout()
        ) as resp:

            async def consume() -> None:
                nonlocal done
                async for line in iter_lines(resp):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise BadUpstream("ollama streamed a malformed line") from exc
                    if obj.get("error"):
                        raise BadUpstream(f"ollama error mid-stream: {obj['error']}")
                    text = (obj.get("message") or {}).get("content") or ""
                    if text:
                        clock.content()
                        parts.append(text)
                    if obj.get("done"):
                        done = obj
                        break

            await guarded("streaming", self, consume())

        text = "".join(parts)
        warnings = []
        if request.ignore_eos:
            warnings.append("ollama has no ignore_eos: output length was not fixed")
        if done.get("eval_count") is not None:
            completion, source = int(done["eval_count"]), "server"
        else:
            completion, source = estimate_tokens(text), "estimate"
            warnings.append("runtime reported no eval_count: token count estimated from text")
        return GenerationResult(
            text=text,
            finish_reason=done.get("done_reason") or ("stop" if done else None),
            prompt_tokens=done.get("prompt_eval_count"),
            completion_tokens=completion,
            token_count_source=source,
            ttft_ms=clock.ttft_ms,
            e2e_ms=clock.e2e_ms(),
            itl_ms=clock.gaps,
            server_timings=ns_to_ms(done),
            runtime=self.name,
            model=done.get("model") or model,
            warnings=warnings,
        )

    def adapt_openai_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ollama's /v1 ignores `max_completion_tokens` and `ignore_eos`: map and drop them."""
        body = dict(body)
        if "max_completion_tokens" in body:
            body.setdefault("max_tokens", body.pop("max_completion_tokens"))
        body.pop("ignore_eos", None)
        return body
