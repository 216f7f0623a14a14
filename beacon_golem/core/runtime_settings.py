"""How a node launches its runtime: the settings a comparison varies, passed through to the node and stored.

One `RuntimeSettings` per runtime launch. Each field means the same thing on every runtime that
has it, and maps onto that runtime's own flag or variable (the adapters in
beacon_golem/node/runtimes/ do the mapping):

| field | llama.cpp | Docker Model Runner | Ollama | vLLM |
|---|---|---|---|---|
| parallel | `--parallel` | `--parallel` in `LLAMA_ARGS` | `OLLAMA_NUM_PARALLEL` | `--max-num-seqs` |
| ctx_size | `--ctx-size` (shared by the slots) | `--ctx-size` in `LLAMA_ARGS` | `OLLAMA_CONTEXT_LENGTH` | `--max-model-len` |
| quantization | - | - | - | `--quantization` (fp8, awq, ...) |
| gpu_memory_utilization | - | - | - | `--gpu-memory-utilization` |
| max_queue | - | - | `OLLAMA_MAX_QUEUE` | - |
| keep_alive | - | - | `OLLAMA_KEEP_ALIVE` (this node's default: -1) | - |
| extra_args | appended to argv | appended to `LLAMA_ARGS` | - (`ollama serve` takes none) | appended to argv |
| env | extra variables for the runtime's process (OLLAMA_*, VLLM_*, ...) ||||

A setting a runtime does not have is refused (`check_for`), never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from beacon_golem.core.errors import UsageError, one_line

#: Which fields each runtime takes (extra_args and env aside).
SUPPORTED: dict[str, frozenset[str]] = {
    "llamacpp": frozenset({"parallel", "ctx_size", "extra_args", "env"}),
    "dmr": frozenset({"parallel", "ctx_size", "extra_args", "env"}),
    "ollama": frozenset({"parallel", "ctx_size", "max_queue", "keep_alive", "env"}),
    "vllm": frozenset({"parallel", "ctx_size", "quantization", "gpu_memory_utilization", "extra_args", "env"}),
}
#: Variables a launch may add to the runtime's environment: the runtimes' own, CUDA's and Hugging Face's.
ENV_NAME = re.compile(r"^(OLLAMA|VLLM|LLAMA|GGML|MODEL_RUNNER|CUDA|HF|TORCH|OMP)_[A-Z0-9_]+$")
#: Short names a `--runtimes` entry may use (`llamacpp:parallel=1:ctx=4096`).
ALIASES = {"ctx": "ctx_size", "context": "ctx_size", "max_model_len": "ctx_size", "max_num_seqs": "parallel",
           "num_parallel": "parallel", "quant": "quantization", "gpu_mem": "gpu_memory_utilization"}  # fmt: skip


class RuntimeSettings(BaseModel):
    """What the node launches its runtime with; None (or empty) leaves the node's own default."""

    model_config = ConfigDict(extra="forbid")

    parallel: int | None = Field(default=None, ge=1, le=1024)
    ctx_size: int | None = Field(default=None, ge=16, le=10_000_000)
    quantization: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    max_queue: int | None = Field(default=None, ge=1, le=1_000_000)
    keep_alive: str | None = Field(default=None, max_length=20, pattern=r"^-?[0-9]+(ns|us|ms|s|m|h)?$")
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [k for k in env if not ENV_NAME.match(k)]
        if bad:
            raise ValueError(
                f"{', '.join(sorted(bad))}: a runtime's environment takes only OLLAMA_*, VLLM_*, LLAMA_*, GGML_*, "
                "MODEL_RUNNER_*, CUDA_*, HF_*, TORCH_* and OMP_* variables"
            )
        return env

    @field_validator("extra_args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        if any("\0" in a or "\n" in a for a in args):
            raise ValueError("an argument may not hold a NUL or a newline")
        return args

    def given(self) -> dict[str, Any]:
        """Only what was set, as plain JSON (what is stored and shown)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def unsupported(self, runtime: str) -> list[str]:
        """The fields set here that `runtime` has no equivalent for."""
        allowed = SUPPORTED.get(runtime, frozenset())
        return sorted(k for k in self.given() if k not in allowed)

    def check_for(self, runtime: str) -> RuntimeSettings:
        """This, when every field set means something to `runtime`; UsageError naming the others."""
        extra = self.unsupported(runtime)
        if extra:
            raise UsageError(f"{runtime} has no setting {', '.join(extra)} (docs/benchmarks.md, runtime settings)")
        return self

    def merged(self, over: RuntimeSettings) -> RuntimeSettings:
        """These settings with `over`'s given fields on top (lists and maps are joined)."""
        data = self.given()
        for key, value in over.given().items():
            if key == "extra_args":
                data[key] = [*data.get(key, []), *value]
            elif key == "env":
                data[key] = {**data.get(key, {}), **value}
            else:
                data[key] = value
        return RuntimeSettings.model_validate(data)

    def describe(self) -> str:
        """`parallel=1 ctx_size=4096` (or `defaults`), for labels and tables."""
        parts = []
        for key, value in self.given().items():
            if key == "extra_args":
                parts.append("args=" + " ".join(value))
            elif key == "env":
                parts += [f"{k}={v}" for k, v in value.items()]
            else:
                parts.append(f"{key}={value}")
        return " ".join(parts) or "defaults"

    @classmethod
    def parse_pairs(cls, pairs: list[str], what: str = "settings") -> RuntimeSettings:
        """`["parallel=1", "ctx=4096", "arg=--flash-attn", "env=OLLAMA_FLASH_ATTENTION=1"]` as settings."""
        data: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = ALIASES.get(key.strip(), key.strip())
            if not sep or not key:
                raise UsageError(f"{what}: {pair!r} is not key=value")
            if key in ("arg", "extra_args"):
                data.setdefault("extra_args", []).append(value)
            elif key == "env":
                name, sep2, val = value.partition("=")
                if not sep2:
                    raise UsageError(f"{what}: env={value!r}: give env=NAME=VALUE")
                data.setdefault("env", {})[name] = val
            else:
                data[key] = value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UsageError(f"{what}: {one_line(exc)}") from None
