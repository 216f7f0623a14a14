"""The shim's HTTP bodies: what a node says and what it accepts, shared by server and client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from beacon_golem.core.bench import BenchResult, PerfPlan
from beacon_golem.core.inference import GenerationRequest, GenerationResult


class ErrorBody(BaseModel):
    error: str
    status: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    runtime: str
    models: list[str] = Field(default_factory=list)
    reason: str | None = None






NodeJobState = Literal["queued", "running", "done", "cancelled"]
JobKind = Literal["requests", "perf"]




class PerfJob(PerfPlan):
    """The `perf` of a POST /jobs: the load generator runs on the node, against its runtime."""

    @model_validator(mode="after")
    def _no_files(self) -> PerfJob:
        if self.prompts.prompt_file is not None:
            raise ValueError("prompts.prompt_file: a node job cannot read the sender's files; use random prompts")
        return self


class JobSubmission(BaseModel):
    """POST /jobs: a batch of normalized requests, or one performance benchmark, run next to the runtime."""

    model_config = ConfigDict(extra="forbid")

    requests: list[GenerationRequest] | None = Field(default=None, min_length=1)
    perf: PerfJob | None = None
    concurrency: int = Field(default=1, ge=1, le=1024)
    label: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_kind(self) -> JobSubmission:
        if (self.requests is None) == (self.perf is None):
            raise ValueError("give exactly one of 'requests' (a batch) or 'perf' (a benchmark)")
        return self

    @property
    def kind(self) -> JobKind:
        return "perf" if self.perf is not None else "requests"

    @property
    def total(self) -> int:
        """Requests in a batch; steps of a benchmark."""
        if self.perf is not None:
            return len(self.perf.profile.steps())
        return len(self.requests or [])


class JobItem(BaseModel):
    """One request's outcome inside a job, written to disk as soon as it completes."""

    index: int
    ok: bool
    result: GenerationResult | None = None
    error: str | None = None
    error_status: int | None = None


class JobAccepted(BaseModel):
    id: str
    state: NodeJobState
    total: int


class JobView(BaseModel):
    id: str
    state: NodeJobState
    kind: JobKind = "requests"
    label: str | None = None
    #: Requests in a batch; steps of a benchmark (completed: steps finished so far).
    total: int
    completed: int
    failed: int
    created_at: datetime
    finished_at: datetime | None = None
    results: list[JobItem] | None = None
    #: A finished benchmark; on the wire as `to_json_dict()` writes it (vLLM keys per step).
    bench_result: BenchResult | None = None
    #: Why a benchmark produced no result.
    error: str | None = None

    @field_serializer("bench_result")
    def _vllm_keys(self, bench: BenchResult | None) -> dict[str, Any] | None:
        return bench.to_json_dict() if bench is not None else None
