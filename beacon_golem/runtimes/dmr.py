"""Docker Model Runner (DMR), run directly as its `model-runner` server (no Docker engine in a VM).

Reference: Docker docs, "DMR REST API" (docs.docker.com/ai/model-runner/api-reference):
OpenAI endpoints under /engines/llama.cpp/v1/ (also /engines/v1/), model management under
/models, engine state at /engines/status; default TCP port 12434. DMR runs llama.cpp
underneath, so streamed chunks carry llama.cpp's `timings` when the engine sends them.
"""

from __future__ import annotations

from typing import ClassVar

from beacon_golem.errors import RuntimeUnavailable, UpstreamError
from beacon_golem.runtimes.base import LaunchSpec, RuntimeStatus
from beacon_golem.runtimes.llamacpp import LlamaCppAdapter


class DockerModelRunnerAdapter(LlamaCppAdapter):
    name: ClassVar[str] = "dmr"
    default_port: ClassVar[int] = 12434
    openai_base: ClassVar[str] = "/engines/llama.cpp/v1"

    @classmethod
    def launch(
        cls, model: str, *, host: str = "127.0.0.1", port: int | None = None, parallel: int = 4
    ) -> LaunchSpec:
        # The standalone server from github.com/docker/model-runner; it listens on
        # MODEL_RUNNER_PORT and keeps models under MODELS_PATH.
        return LaunchSpec(
            argv=["model-runner"],
            env={
                "MODEL_RUNNER_PORT": str(port or cls.default_port),
                "MODEL_RUNNER_HOST": host,
                "LLAMA_ARGS": f"--parallel {parallel}",
            },
        )

    async def status(self) -> RuntimeStatus:
        try:
            await self.get_ok("/engines/status")
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=False, ready=False, reason=str(exc))
        models = await self.openai_models()
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            settings=dict(self.launch_settings),
            reason=None if models else "Docker Model Runner holds no model (POST /models/create)",
        )
