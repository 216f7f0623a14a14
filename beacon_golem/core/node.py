"""A node as every side sees it: its fingerprint (`NodeInfo`, served at GET /info) and `Node`, a reachable node."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, SecretStr

API_VERSION = 1


class WeightsInfo(BaseModel):
    """The weights a runtime serves, as exactly as it can be told: a comparison says where they differ."""

    #: The model as the runtime names it (file stem, Ollama or DMR tag, Hugging Face id or directory).
    model: str
    #: "gguf", "safetensors", or "unknown".
    format: str = "unknown"
    #: Q4_K_M, Q8_0, F16, BF16, fp8 (vLLM's --quantization), ...; None when the runtime does not say.
    quantization: str | None = None
    #: Tokens one request may hold (llama.cpp: per slot; vLLM: max_model_len; Ollama: its context length).
    context_length: int | None = None
    size_bytes: int | None = None
    path: str | None = None
    #: Where these figures come from (the GGUF header, /api/tags, /models, config.json, the launch settings).
    source: str | None = None


class StartupTimes(BaseModel):
    """How long a node's runtime took to start, measured by the node that launched it."""

    runtime: str
    launched_at: datetime
    #: True when this node launched the runtime (False: it fronts one already running, times unknown).
    launched: bool = True
    #: Seconds from launching the runtime to its first HTTP answer (any status).
    answering_s: float | None = None
    #: ... to the runtime saying its model is loaded and listed (status ready).
    ready_s: float | None = None
    #: ... to the shim's own GET /health answering 200 (what a fleet waits for).
    health_s: float | None = None
    #: Seconds the runtime before it took to stop, when this start replaced one (a runtime switch).
    stopped_previous_s: float | None = None
    #: "dropped" when the page cache was emptied before the launch, else why not; None when not asked.
    page_cache: str | None = None


class RuntimeInfo(BaseModel):
    name: str
    version: str | None = None
    upstream: str
    settings: dict[str, Any] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    #: The runtime settings the node launched it with (`RuntimeSettings`, only what was given).
    launch: dict[str, Any] = Field(default_factory=dict)
    #: The weights it serves; None when the runtime does not say.
    weights: WeightsInfo | None = None


class NodeInfo(BaseModel):
    """A node's fingerprint, served at GET /info and stored with every result."""

    api_version: int = API_VERSION
    shim_version: str
    node_id: str
    runtime: RuntimeInfo
    system: SystemInfo
    started_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)
    #: How long the current runtime took to start (None for a node fronting a runtime it did not launch).
    startup: StartupTimes | None = None


class GPUInfo(BaseModel):
    name: str
    memory_total_mib: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    index: int | None = None
    #: "9.0" for an H100; from `--query-gpu=compute_cap` (drivers from about 510 on).
    compute_capability: str | None = None


class SystemInfo(BaseModel):
    os: str
    distribution: str | None = None
    kernel: str
    arch: str
    cpu_model: str | None = None
    cpu_cores: int | None = None
    ram_gib: float
    disk_total_gib: float | None = None
    disk_free_gib: float | None = None
    gpus: list[GPUInfo] = Field(default_factory=list)
    hostname: str | None = None


class Node(BaseModel):
    """A node the dispatcher can send work to: a shim URL plus what we know of it."""

    node_id: str
    url: str
    region: str | None = None
    token: SecretStr | None = None
    #: The key of the runtime behind the shim, known only for a node this process launched (the
    #: local fleet): a benchmark from here uses the runtime's own tokenizer and counters with it.
    #: Like `token`, never stored.
    runtime_token: SecretStr | None = None
    info: NodeInfo | None = None
    #: How many requests the dispatcher keeps in flight on this node.
    concurrency: int = Field(default=4, ge=1)
    provider_id: str | None = None
    provider_name: str | None = None
    fleet: str = "static"
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def runtime(self) -> str | None:
        return self.info.runtime.name if self.info else None

    @property
    def models(self) -> list[str]:
        return self.info.runtime.models if self.info else []
