"""Docker Model Runner (DMR), run directly as its standalone server (no Docker engine, no VM).

Follows Docker's "DMR REST API" page (docs.docker.com/ai/model-runner/api-reference/) and
the server's source, github.com/docker/model-runner: README.md, pkg/envconfig/envconfig.go,
pkg/server/server.go, pkg/inference/scheduling/http_handler.go,
pkg/inference/models/{http_handler,api}.go and
pkg/inference/backends/llamacpp/llamacpp_config.go.

- OpenAI endpoints under /engines/llama.cpp/v1/ (the engine may be left out: /engines/v1/).
  The request body goes to the engine unchanged (http_handler.go), so llama-server's
  extras work: `ignore_eos`, `stream_options.include_usage`, and the `timings` object in
  the stream. `model` is required (400 without it; 404 when it is not pulled).
- GET /models lists local models as `[{"id": "sha256:...", "tags": ["ai/smollm2:latest"],
  "created", "config": {"format", "quantization", "parameters", "architecture", "size",
  "context_size"}}]`; a model is addressed by a tag. POST /models/create
  `{"from": "ai/smollm2"}` pulls one.
- GET /engines/status maps each backend to a status line: "Running: llama.cpp b...",
  "Not Installed: ...", "Installing: ...", "Error: ..." (pkg/inference/backend.go).
- GET /version gives `{"version": ...}` on the standalone server.
- The standalone server (`model-runner`, built by `make build`; `dmr serve` bundles the
  same server) listens on TCP `:MODEL_RUNNER_PORT` on all interfaces when that variable is
  set and on the Unix socket `model-runner.sock` otherwise; `dmr serve` defaults to 12434.
  MODEL_RUNNER_HOST is the *client's* variable and means nothing to the server. Models
  live under MODELS_PATH (default ~/.docker/models).
- LLAMA_ARGS *replaces* the llama.cpp default arguments (`-ngl 999 --metrics`) rather than
  adding to them, and may not set --model, --host, --embeddings or --mmproj.
- A model's llama.cpp runner starts on the first request for it and is evicted after 5 idle
  minutes (pkg/inference/scheduling/loader.go, `runnerIdleTimeout = 5 * time.Minute`, not
  configurable): the first request after start, and after idle, carries the model load.
"""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from beacon_golem.core.errors import BadUpstream, RuntimeUnavailable, UpstreamError
from beacon_golem.core.node import WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeStatus
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter

#: The backend DMR runs GGUF models on, as named in /engines/status.
ENGINE = "llama.cpp"
#: llama.cpp's arguments in DMR when LLAMA_ARGS is unset (llamacpp_config.go).
DEFAULT_LLAMA_ARGS = ("-ngl", "999", "--metrics")


def model_names(listing: Any) -> list[str]:
    """Model names from GET /models: each model's first tag, else its id."""
    names: list[str] = []
    for entry in listing if isinstance(listing, list) else []:
        if not isinstance(entry, dict):
            continue
        tags = [t for t in entry.get("tags") or [] if isinstance(t, str) and t]
        name = tags[0] if tags else entry.get("id")
        if name:
            names.append(str(name))
    return names


class DockerModelRunnerAdapter(LlamaCppAdapter):
    name: ClassVar[str] = "dmr"
    default_port: ClassVar[int] = 12434
    openai_base: ClassVar[str] = "/engines/llama.cpp/v1"

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
        # `model` is not an argument of the server: it must be pulled (POST /models/create).
        # `host` cannot be honoured: the server binds `:MODEL_RUNNER_PORT` on every interface.
        settings = (settings or RuntimeSettings()).check_for(cls.name)
        if shutil.which("model-runner") is None and shutil.which("dmr") is not None:
            argv = ["dmr", "serve"]
        else:
            argv = ["model-runner"]
        llama_args = [*DEFAULT_LLAMA_ARGS, "--parallel", str(settings.parallel or parallel)]
        if settings.ctx_size is not None:
            llama_args += ["--ctx-size", str(settings.ctx_size)]
        llama_args += settings.extra_args
        return LaunchSpec(
            argv=argv,
            env={
                **settings.env,
                "MODEL_RUNNER_PORT": str(port or cls.default_port),
                # Replaces DMR's defaults, so they are repeated here (GPU offload, metrics).
                "LLAMA_ARGS": " ".join(llama_args),
            },
        )

    async def status(self) -> RuntimeStatus:
        try:
            engines = await self.get_json("/engines/status", timeout_s=5)
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=isinstance(exc, BadUpstream), ready=False, reason=str(exc))
        engine = str(engines.get(ENGINE, "")) if isinstance(engines, dict) else ""
        settings: dict[str, Any] = dict(self.launch_settings)
        if engine:
            settings["engine_status"] = engine
        try:
            listing = await self.get_json("/models", timeout_s=5)
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=True, ready=False, settings=settings, reason=str(exc))
        models = model_names(listing)
        try:
            version = (await self.get_json("/version", timeout_s=5)).get("version")
        except (RuntimeUnavailable, AttributeError):
            version = None
        if not engine.lower().startswith("running"):
            reason: str | None = f"Docker Model Runner's {ENGINE} backend is not running: {engine or 'not listed'}"
        elif not models:
            reason = 'Docker Model Runner holds no model (POST /models/create {"from": "ai/smollm2"})'
        else:
            reason = None
        return RuntimeStatus(
            reachable=True,
            ready=reason is None,
            models=models,
            version=version,
            settings=settings,
            reason=reason,
            weights=self.weights(listing, models),
        )

    def weights(self, listing: Any, models: list[str]) -> WeightsInfo | None:
        """The first model's weights from GET /models `config` (format, quantization, context_size)."""
        entries = [e for e in listing if isinstance(e, dict)] if isinstance(listing, list) else []
        if not entries or not models:
            return None
        config = entries[0].get("config") if isinstance(entries[0].get("config"), dict) else {}
        args = str(self.launch_settings.get("env_llama_args") or "").split()
        ctx = args[args.index("--ctx-size") + 1] if "--ctx-size" in args[:-1] else None
        context = int(ctx) if ctx and ctx.isdigit() else config.get("context_size")
        return WeightsInfo(
            model=models[0],
            format=str(config.get("format") or "unknown"),
            quantization=config.get("quantization") or None,
            context_length=context if isinstance(context, int) else None,
            source="Docker Model Runner /models config" + (" + LLAMA_ARGS --ctx-size" if ctx else ""),
        )
