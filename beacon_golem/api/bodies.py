"""The shim's HTTP bodies: what a node says and what it accepts, shared by server and client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from beacon_golem.core.beacon import BeaconFailure, split_role_prompt
from beacon_golem.core.bench import BenchResult, PerfPlan
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.runtime_settings import RuntimeSettings


class ErrorBody(BaseModel):
    error: str
    status: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    runtime: str
    models: list[str] = Field(default_factory=list)
    reason: str | None = None
    #: Seconds the runtime switch under way (POST /runtime) has lasted; None when none is. A 503
    #: with it set is a node changing runtime, not a broken one (watchers bound how long it may take).
    switching_s: float | None = None






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


class RuntimeSwitch(BaseModel):
    """POST /runtime: stop the node's runtime (freeing its memory), start this one, answer once it serves.

    Only a node that launched its runtime can switch (not one fronting a runtime at a given URL).
    The answer is the node's new `/info`, whose `startup` holds the new runtime's start times.
    """

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["llamacpp", "ollama", "dmr", "vllm"]
    #: The model this runtime loads; default: the node's own (llama.cpp: its model file or the tiny model).
    model: str | None = Field(default=None, min_length=1, max_length=500)
    settings: RuntimeSettings = Field(default_factory=RuntimeSettings)
    #: Drop the machine's page cache before the start (root only; best effort), so that every
    #: runtime of a comparison reads its weights from disk, not from what the one before read.
    drop_page_cache: bool = False
    #: Seconds the new runtime may take to load its model; default: the node's own limit.
    ready_timeout_s: float | None = Field(default=None, gt=0, le=7200)


# ---- POST /inference: the normalized request, and Beacon's hybrid-router body -------------------

#: `error_code` of a failed POST /inference (Beacon's router passes it on), by HTTP status.
INFERENCE_ERROR_CODES: dict[int, str] = {
    400: "INVALID_REQUEST",
    401: "AUTH_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "INVALID_REQUEST",
    409: "PROVIDER_BUSY",
    413: "REQUEST_TOO_LARGE",
    415: "INVALID_REQUEST",
    422: "INVALID_REQUEST",
    429: "PROVIDER_BUSY",
    500: "PROVIDER_INTERNAL_ERROR",
    502: "PROVIDER_ERROR",
    503: "PROVIDER_UNAVAILABLE",
    504: "PROVIDER_TIMEOUT",
}


def inference_error_code(status: int) -> str:
    return INFERENCE_ERROR_CODES.get(status, f"PROVIDER_HTTP_{status}")


class InferenceBody(GenerationRequest):
    """POST /inference: a `GenerationRequest`, or what Beacon's hybrid router posts to a Golem
    provider (`{model, prompt, temperature, max_tokens}`; the runner's `region_preference`,
    `cost_priority` and `trace_id` are accepted and not used by a node)."""

    region_preference: str | None = None
    cost_priority: bool | None = None
    trace_id: str | None = Field(default=None, max_length=200)

    def generation(self) -> GenerationRequest:
        """The normalized request; Beacon's flattened "system\\n...\\nuser\\n...\\nassistant\\n" prompt
        becomes a system and a user message."""
        data = self.model_dump(exclude={"region_preference", "cost_priority", "trace_id"})
        if self.prompt is not None and self.messages is None:
            system, user = split_role_prompt(self.prompt)
            if system is not None:
                data["prompt"] = None
                data["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return GenerationRequest.model_validate(data)


class InferenceAnswer(GenerationResult):
    """POST /inference's 200 answer: the normalized result, and beside it the fields Beacon's router
    reads (`success`, `response`, `error`, `error_code`, `receipt`: the node's signed Receipt v0.1.0)."""

    success: bool = True
    response: str
    error: str | None = None
    error_code: str | None = None
    receipt: dict[str, Any] | None = None


class InferenceError(ErrorBody):
    """POST /inference's error answer, with the status it has: `{error, status}` as every route, and
    Beacon's fields (`success: false`, `error_code`, `failure`) so its router can tell what failed."""

    success: bool = False
    response: str | None = None
    error_code: str
    failure: BeaconFailure
    receipt: dict[str, Any] | None = None
