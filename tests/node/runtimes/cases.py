"""The runtimes whose adapters are tested against fakes, as the tests in this folder use them.

Each fake is a real HTTP server on loopback that follows its runtime's documented protocol
and names the document in its docstring and `DOCUMENT`:

- Ollama, tests/fakes/ollama.py: https://github.com/ollama/ollama/blob/main/docs/api.md (POST
  /api/chat NDJSON ending in `"done": true` with nanosecond durations, GET /api/tags, GET
  /api/version), docs/api/streaming.mdx, docs/api/errors.mdx, api/types.go, and for
  /v1/chat/completions docs/api/openai-compatibility.mdx and openai/openai.go.
- Docker Model Runner, tests/fakes/dmr.py: Docker's "DMR REST API" page,
  https://docs.docker.com/ai/model-runner/api-reference/, and github.com/docker/model-runner
  (pkg/inference/scheduling/http_handler.go, pkg/inference/models/api.go,
  pkg/envconfig/envconfig.go, pkg/server/server.go); its stream is llama-server's
  (llama.cpp tools/server/README.md), which DMR passes through unchanged.
- vLLM, tests/fakes/vllm.py: docs/serving/online_serving/openai_compatible_server.md
  (https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html) and the vLLM 0.32
  source it points to; its chunk shapes were checked against a real vLLM 0.32 on this CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from beacon_golem.core.inference import GenerationRequest
from beacon_golem.node.runtimes.base import RuntimeAdapter
from beacon_golem.node.runtimes.dmr import DockerModelRunnerAdapter
from beacon_golem.node.runtimes.ollama import OllamaAdapter
from beacon_golem.node.runtimes.vllm import VLLMAdapter
from tests.fakes import dmr, ollama, vllm
from tests.fakes.base import FakeServer


@dataclass(frozen=True)
class Runtime:
    """One runtime: its adapter, the fake that stands in for it, and what the tests send it."""

    name: str  # the shim's `runtime` and adapter_class()'s key
    adapter: type[RuntimeAdapter]
    fake: type[FakeServer]
    model: str  # the model the fake holds unless told otherwise
    messages: list[dict[str, str]]  # the chat the tests ask for
    chat_path: str  # where the runtime takes OpenAI chat completions
    models_path: str  # where it lists its models the OpenAI way

    def ask(self, **kw: Any) -> GenerationRequest:
        return GenerationRequest.model_validate({"messages": self.messages, **kw})


OLLAMA = Runtime(
    name="ollama",
    adapter=OllamaAdapter,
    fake=ollama.FakeOllama,
    model=ollama.MODEL,
    messages=[{"role": "user", "content": "why is the sky blue?"}],
    chat_path="/v1/chat/completions",
    models_path="/v1/models",
)
DMR = Runtime(
    name="dmr",
    adapter=DockerModelRunnerAdapter,
    fake=dmr.FakeDMR,
    model=dmr.MODEL,
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
    ],
    chat_path="/engines/llama.cpp/v1/chat/completions",
    models_path="/engines/llama.cpp/v1/models",
)
VLLM = Runtime(
    name="vllm",
    adapter=VLLMAdapter,
    fake=vllm.FakeVLLM,
    model=vllm.MODEL,
    messages=[{"role": "user", "content": "Hello!"}],
    chat_path="/v1/chat/completions",
    models_path="/v1/models",
)
RUNTIMES = (OLLAMA, DMR, VLLM)


def case(runtime: Runtime, *values: Any) -> Any:
    """One row of a test parametrized over the runtimes, named after its runtime."""
    return pytest.param(runtime, *values, id=runtime.name)
