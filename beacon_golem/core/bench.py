"""Result models: one `StepResult` per load level (vLLM's result JSON keys plus ours), one `BenchResult` per run.

A `StepResult` dumped with `to_vllm_dict()` is a superset of what `vllm bench serve
--save-result` writes for one run: its config keys (`date`, `backend`, `model_id`,
`num_prompts`, `request_rate`, `burstiness`, `max_concurrency`, ...) and its aggregates
(`duration`, `completed`, ..., `mean_ttft_ms`, `p99_ttft_ms`, ...), so tools that read vLLM's
files read these. Our extras sit beside them under names vLLM does not use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from beacon_golem.core.metrics import SLO, ServingMetrics
from beacon_golem.core.profiles import Profile

DETAIL_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "errors")
SCHEMA_VERSION = 1


class PromptSpec(BaseModel):
    """What to send: `input_len` tokens of random prompt (or a file) and `output_len` tokens back."""

    model_config = ConfigDict(extra="forbid")

    input_len: int = Field(default=128, ge=1, le=131_072)
    output_len: int = Field(default=128, ge=1, le=131_072)
    #: Ask for exactly `output_len` tokens (ignore_eos) where the runtime takes it.
    fixed_output: bool = True
    prompt_file: Path | None = None
    seed: int = 0
    temperature: float | None = None


class ServerCrossCheck(BaseModel):
    """The runtime's own figures for a step beside the client's, with the discrepancy in percent."""

    source: str
    available: bool
    note: str | None = None
    server_output_tokens: float | None = None
    client_output_tokens: int | None = None
    output_tokens_discrepancy_pct: float | None = None
    server_input_tokens: float | None = None
    client_input_tokens: int | None = None
    input_tokens_discrepancy_pct: float | None = None
    server_requests: float | None = None
    client_requests: int | None = None
    #: Server's output tokens over the client's step duration.
    server_output_throughput: float | None = None
    client_output_throughput: float | None = None
    #: Mean per-token decode time the runtime reports (llama.cpp `predicted_per_token_ms`,
    #: Ollama eval_duration / eval_count) beside the client's mean TPOT.
    server_mean_tpot_ms: float | None = None
    client_mean_tpot_ms: float | None = None
    tpot_discrepancy_pct: float | None = None
    max_server_queue: float | None = None


class ClientFigures(BaseModel):
    """How hard the load generator itself worked during the step (one process, one event loop)."""

    cpu_s: float
    cpu_util: float = Field(description="CPU seconds per wall second; 1.0 is one core fully busy")
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float


class StepResult(ServingMetrics):
    # ---- vLLM's config keys -------------------------------------------------------------------
    date: str
    backend: str
    label: str | None = None
    model_id: str
    tokenizer_id: str | None = None
    num_prompts: int
    request_rate: float | str = Field(description='requests per second, or "inf" (vLLM writes the string)')
    burstiness: float = 1.0
    max_concurrency: int | None = None

    # ---- ours ---------------------------------------------------------------------------------
    step: int
    step_label: str
    mode: str
    via: str
    endpoint: str
    warmup_requests: int
    cancelled: int = 0
    input_len: int | None
    output_len: int
    output_len_fixed: bool
    input_tokens_method: str
    stopped_early: bool = False
    stop_reason: str | None = None
    overloaded: bool = False
    client: ClientFigures
    server_check: ServerCrossCheck
    error_counts: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    # ---- vLLM's --save-detailed lists (only with detailed=True) ------------------------------
    input_lens: list[int] | None = None
    output_lens: list[int] | None = None
    ttfts: list[float] | None = None
    itls: list[list[float]] | None = None
    latencies: list[float] | None = None
    start_times: list[float] | None = None
    errors: list[str] | None = None

    def to_vllm_dict(self) -> dict[str, Any]:
        """JSON-ready dict under vLLM's names (`p99.9_ttft_ms`), the detail lists only when kept."""
        data = self.model_dump(mode="json", by_alias=True)
        for key in DETAIL_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TargetSummary(BaseModel):
    url: str
    via: str
    runtime: str
    model: str
    endpoint: str
    runtime_url: str | None = None
    runtime_version: str | None = None


class BenchResult(BaseModel):
    """A whole run: what was measured, where, how, and one result per step."""

    model_config = ConfigDict(populate_by_name=True)

    schema_version: int = SCHEMA_VERSION
    date: str
    target: TargetSummary
    #: The node's fingerprint: the shim's GET /info, or this machine's when the runtime is local.
    node: dict[str, Any] | None = None
    #: The runtime's parallelism and limits (llama-server total_slots, n_ctx; OLLAMA_NUM_PARALLEL; ...).
    server_settings: dict[str, Any] = Field(default_factory=dict)
    profile: Profile
    prompts: PromptSpec
    slo: SLO | None = None
    steps: list[StepResult] = Field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str | None = None
    client_host: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True, exclude={"steps"})
        data["steps"] = [s.to_vllm_dict() for s in self.steps]
        return data

    def best_step(self) -> StepResult | None:
        """The step with the highest output throughput among those that were not overloaded."""
        usable = [s for s in self.steps if not s.overloaded and s.completed] or self.steps
        return max(usable, key=lambda s: s.output_throughput, default=None)


def rate_key(rate: float | None) -> float | str:
    return "inf" if rate is None or math.isinf(rate) else rate


class PerfPlan(BaseModel):
    """A performance benchmark: a load profile, the prompts, optional SLOs (beacon_golem.node.loadgen)."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile
    prompts: PromptSpec = Field(default_factory=PromptSpec)
    slo: SLO | None = None
    #: The model to load; default: the first the node serves.
    model: str | None = Field(default=None, min_length=1, max_length=300)
    #: Keep the per-request lists in the result (vLLM's --save-detailed).
    detailed: bool = False

    @model_validator(mode="after")
    def _finite_rate(self) -> PerfPlan:
        rate = getattr(self.profile, "rate", None)
        if rate is not None and rate == float("inf"):
            raise ValueError("profile.rate: give a finite rate (an infinite one does not survive JSON)")
        return self
