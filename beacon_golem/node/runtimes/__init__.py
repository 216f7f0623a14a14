"""Inference runtime adapters, one module each behind `RuntimeAdapter`."""

from __future__ import annotations

from beacon_golem.core.errors import UsageError
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeAdapter, RuntimeStatus, Timeouts
from beacon_golem.node.runtimes.dmr import DockerModelRunnerAdapter
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter
from beacon_golem.node.runtimes.ollama import OllamaAdapter
from beacon_golem.node.runtimes.vllm import VLLMAdapter

ADAPTERS: dict[str, type[RuntimeAdapter]] = {
    a.name: a for a in (LlamaCppAdapter, OllamaAdapter, DockerModelRunnerAdapter, VLLMAdapter)
}
RUNTIME_NAMES = tuple(ADAPTERS)


def adapter_class(name: str) -> type[RuntimeAdapter]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise UsageError(f"unknown runtime {name!r}: choose one of {', '.join(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "RUNTIME_NAMES", "LaunchSpec", "RuntimeAdapter", "RuntimeStatus", "Timeouts", "adapter_class"]
