"""The shim's HTTP bodies: what a node says and what it accepts, shared by server and client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from beacon_golem.inference import GenerationRequest, GenerationResult
from beacon_golem.probe.hardware import SystemInfo

API_VERSION = 1


class ErrorBody(BaseModel):
    error: str
    status: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    runtime: str
    models: list[str] = Field(default_factory=list)
    reason: str | None = None


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


JobState = Literal["queued", "running", "done", "cancelled"]


class JobSpec(BaseModel):
    """POST /jobs: a batch of normalized requests run next to the runtime."""

    model_config = ConfigDict(extra="forbid")

    requests: list[GenerationRequest] = Field(min_length=1)
    concurrency: int = Field(default=1, ge=1, le=1024)
    label: str | None = Field(default=None, max_length=200)


class JobItem(BaseModel):
    """One request's outcome inside a job, written to disk as soon as it completes."""

    index: int
    ok: bool
    result: GenerationResult | None = None
    error: str | None = None
    error_status: int | None = None


class JobAccepted(BaseModel):
    id: str
    state: JobState
    total: int


class JobView(BaseModel):
    id: str
    state: JobState
    label: str | None = None
    total: int
    completed: int
    failed: int
    created_at: datetime
    finished_at: datetime | None = None
    results: list[JobItem] | None = None
