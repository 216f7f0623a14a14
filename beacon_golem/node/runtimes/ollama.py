"""Ollama, through its native API so that `num_predict` is honoured and durations come back.

Follows Ollama's docs/api.md (github.com/ollama/ollama/blob/main/docs/api.md), with
docs/api/streaming.mdx, docs/api/errors.mdx and docs/api/usage.mdx beside it, and the
field definitions in api/types.go:

- POST /api/chat streams NDJSON (`application/x-ndjson`) objects; the last one has
  `"done": true`, `done_reason` ("stop", "length", ...), `prompt_eval_count`, `eval_count`
  and `total_duration`, `load_duration`, `prompt_eval_duration`, `eval_duration`, all
  durations in nanoseconds. The final object may still carry content.
- Those count and duration fields are `omitempty` in api/types.go (`Metrics`): a final
  object without `eval_count` means the server counted 0.
- An error after the stream started arrives as one more NDJSON line `{"error": "..."}`
  with the HTTP status left at 200 (errors.mdx).
- GET /api/tags lists local models (`models[].name` / `.model`); GET /api/version gives
  `{"version": ...}`; there is no dedicated health route (GET / answers "Ollama is running").
- Sampling goes in `options` (Modelfile parameters): `num_predict`, `temperature`, `top_p`,
  `seed`, `stop`. Ollama has no `ignore_eos`, so output length cannot be fixed.
- Server settings are environment variables (envconfig/config.go): OLLAMA_HOST
  (`host:port`, default 127.0.0.1:11434), OLLAMA_NUM_PARALLEL (default 1: requests run
  one at a time), OLLAMA_KEEP_ALIVE (default 5m, negative = keep loaded forever).
- The OpenAI-style /v1/chat/completions ignores `max_completion_tokens` (ollama issue
  7125; openai/openai.go reads only `max_tokens`), so the pass-through maps it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from beacon_golem.core.errors import BadUpstream, RuntimeUnavailable, UpstreamError
from beacon_golem.core.inference import GenerationRequest, GenerationResult, estimate_tokens
from beacon_golem.core.node import WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes.base import (
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

#: Ollama's own default for OLLAMA_NUM_PARALLEL (envconfig/config.go).
OLLAMA_DEFAULT_NUM_PARALLEL = 1


def ns_to_ms(done: dict[str, Any]) -> dict[str, float] | None:
    """Ollama's nanosecond durations from the final object, in milliseconds."""
    out = {
        ms: done[ns] / 1e6
        for ns, ms in _NS_FIELDS.items()
        if isinstance(done.get(ns), int | float) and not isinstance(done.get(ns), bool)
    }
    return out or None


class OllamaAdapter(RuntimeAdapter):
    name: ClassVar[str] = "ollama"
    default_port: ClassVar[int] = 11434
    supports_ignore_eos: ClassVar[bool] = False

    @classmethod
    def launch(
        cls,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        parallel: int = 4,
        settings: RuntimeSettings | None = None,
    ) -> LaunchSpec:
        # `ollama serve` takes no model (nor any argument): the model must already be pulled.
        settings = (settings or RuntimeSettings()).check_for(cls.name)
        env = {
            **settings.env,
            "OLLAMA_HOST": f"{host}:{port or cls.default_port}",
            # The default of 1 serializes every request: raise it, and record it.
            "OLLAMA_NUM_PARALLEL": str(settings.parallel or parallel),
            # Keep the model loaded between benchmark phases: an unload after the
            # default 5 minutes idle puts a model load into the next request's time.
            "OLLAMA_KEEP_ALIVE": settings.keep_alive or "-1",
        }
        if settings.max_queue is not None:
            env["OLLAMA_MAX_QUEUE"] = str(settings.max_queue)  # default 512, then 503 "server busy"
        if settings.ctx_size is not None:
            env["OLLAMA_CONTEXT_LENGTH"] = str(settings.ctx_size)
        return LaunchSpec(argv=["ollama", "serve"], env=env)

    def num_parallel(self) -> tuple[int, str]:
        """The server's parallelism and where that figure comes from."""
        s = self.launch_settings
        for key in ("env_ollama_num_parallel", "num_parallel", "OLLAMA_NUM_PARALLEL"):
            if s.get(key) not in (None, ""):
                try:
                    return int(s[key]), "launch"
                except (TypeError, ValueError):
                    break
        # Not launched by us: Ollama does not report it, so assume its documented default.
        return OLLAMA_DEFAULT_NUM_PARALLEL, "ollama default (not set by this node)"

    async def status(self) -> RuntimeStatus:
        try:
            tags = await self.get_json("/api/tags", timeout_s=5)
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            # BadUpstream (non-JSON) means something answers, but not Ollama as expected.
            reachable = isinstance(exc, BadUpstream)
            return RuntimeStatus(reachable=reachable, ready=False, reason=str(exc))
        entries = [m for m in (tags.get("models") if isinstance(tags, dict) else None) or [] if isinstance(m, dict)]
        models = [m for m in (e.get("name") or e.get("model") for e in entries) if m]
        try:
            version = (await self.get_json("/api/version")).get("version")
        except (RuntimeUnavailable, AttributeError):
            version = None
        parallel, source = self.num_parallel()
        settings: dict[str, Any] = {"num_parallel": parallel, "num_parallel_source": source}
        for key, env in (("max_queue", "env_ollama_max_queue"), ("keep_alive", "env_ollama_keep_alive"),
                         ("context_length", "env_ollama_context_length")):  # fmt: skip
            if self.launch_settings.get(env) not in (None, ""):
                settings[key] = self.launch_settings[env]
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            version=version,
            settings=settings,
            reason=None if models else "Ollama holds no model (ollama pull MODEL)",
            weights=self.weights(entries[0]) if entries else None,
        )

    def weights(self, entry: dict[str, Any]) -> WeightsInfo:
        """The first model's weights from /api/tags `details` (format, quantization_level)."""
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        context = self.launch_settings.get("env_ollama_context_length")
        size = entry.get("size")
        return WeightsInfo(
            model=str(entry.get("name") or entry.get("model")),
            format=str(details.get("format") or "unknown"),
            quantization=details.get("quantization_level") or None,
            context_length=int(context) if isinstance(context, str) and context.isdigit() else None,
            size_bytes=size if isinstance(size, int) else None,
            source="ollama /api/tags" + (" + OLLAMA_CONTEXT_LENGTH" if context else " (context: Ollama's default)"),
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
        thinking_chars = 0
        done: dict[str, Any] | None = None
        async with self.request(
            "POST", self.url("/api/chat"), json=self.chat_body(request, model), timeout=self.timeouts.client_timeout()
        ) as resp:

            async def consume() -> None:
                nonlocal done, thinking_chars
                async for line in iter_lines(resp):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise BadUpstream("ollama streamed a malformed line") from exc
                    if not isinstance(obj, dict):
                        raise BadUpstream("ollama streamed a line that is not a JSON object")
                    if obj.get("error"):
                        raise BadUpstream(f"ollama error mid-stream: {obj['error']}")
                    message = obj.get("message") or {}
                    text = message.get("content") or ""
                    if text:
                        clock.content()
                        parts.append(text)
                    thinking_chars += len(message.get("thinking") or "")
                    if obj.get("done"):
                        done = obj
                        break

            await guarded("streaming", self, consume())

        if done is None:
            raise BadUpstream("ollama's stream ended without its final `done: true` object")

        text = "".join(parts)
        warnings = []
        if request.ignore_eos:
            warnings.append("ollama has no ignore_eos: output length was not fixed")
        if thinking_chars:
            warnings.append(
                f"model streamed {thinking_chars} characters of thinking (message.thinking): "
                "not in text, and TTFT counts from the first visible content"
            )
        # api/types.go: the counts are `omitempty`, so an absent count in the final object is 0.
        eval_count = done.get("eval_count", 0)
        if isinstance(eval_count, int) and (eval_count > 0 or not text):
            completion, source = eval_count, "server"
        else:
            completion, source = estimate_tokens(text), "estimate"
            warnings.append("runtime reported no eval_count: token count estimated from text")
        prompt_tokens = done.get("prompt_eval_count", 0)
        return GenerationResult(
            text=text,
            # Older servers send no done_reason: leave it unknown rather than guess "stop".
            finish_reason=done.get("done_reason") or None,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
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
            value = body.pop("max_completion_tokens")
            if body.get("max_tokens") is None and value is not None:
                body["max_tokens"] = value
        body.pop("ignore_eos", None)
        return body
