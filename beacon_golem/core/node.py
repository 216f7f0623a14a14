"""A node as every side sees it: its fingerprint (`NodeInfo`, served at GET /info) and `Node`, a reachable node."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, SecretStr

API_VERSION = 1


class RuntimeInfo(BaseModel):
    name: str
    version: str | None = None
    upstream: str
    settings: dict[str, Any] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)


class NodeInfo(BaseModel):
    """A node's fingerprint, served at GET /info and stored with every result."""

    api_version: int = API_VERSION
    shim_version: str
    node_id: str
    runtime: RuntimeInfo
    system: SystemInfo
    started_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)


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
