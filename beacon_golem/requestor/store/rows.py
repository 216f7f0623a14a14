"""The store's row models: one per table, what every read returns, and the states a run, a job and a node go through."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from beacon_golem.core.beacon import JobSpecProvenance
from beacon_golem.core.bench import BenchResult
from beacon_golem.core.clock import utcnow
from beacon_golem.core.compare import RuntimeTrial
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.core.probe import ProbeReport
from beacon_golem.core.suite import Suite

RunJobState = Literal["pending", "running", "done", "failed"]


JOB_STATES: tuple[RunJobState, ...] = ("pending", "running", "done", "failed")


RunStatus = Literal["running", "done", "failed", "cancelled", "interrupted"]


NodeStatus = Literal["alive", "lost"]


BenchWhere = Literal["node", "requestor"]


#: 'suite': a suite's questions and/or perf; 'pilot': the compatibility pilot (no suite, no jobs).
RunKind = Literal["suite", "pilot"]


def new_run_id(now: datetime | None = None) -> str:
    """`20250822-143400-3fa9c1`: sortable by time, unique by its random tail."""
    return f"{(now or utcnow()).astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def to_json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class RunRow(BaseModel):
    run_id: str
    kind: RunKind = "suite"
    suite_name: str
    suite_hash: str
    #: None for a pilot run (`kind == "pilot"`): it has no suite and no jobs; None too when the
    #: stored suite no longer reads (`suite_error` says why): the run is still listed and shown.
    suite: Suite | None = None
    suite_error: str | None = None
    suite_source: str | None = None
    #: For a run imported from a Project Beacon JobSpec: which job, read how, its signature verdict.
    jobspec: JobSpecProvenance | None = None
    fleet_desc: Any = None
    status: RunStatus
    created_at: datetime
    finished_at: datetime | None = None
    #: Jobs per state, every state present (0 when none).
    job_counts: dict[str, int] = Field(default_factory=dict)

    @property
    def total_jobs(self) -> int:
        return sum(self.job_counts.values())


class JobRow(BaseModel):
    job_id: str
    run_id: str
    seq: int
    job_key: str
    question_id: str
    category: str
    model: str
    runtime: str
    region: str
    repetition: int
    #: The job's spec (suite hash, key, question, model, region, request): what a receipt's
    #: `job_spec_hash` is the hash of.
    spec: dict[str, Any]
    state: RunJobState
    attempts: int
    node_id: str | None = None
    error: str | None = None
    updated_at: datetime

    @property
    def request(self) -> GenerationRequest:
        return GenerationRequest.model_validate(self.spec["request"])


class ResultRow(BaseModel):
    result_id: int
    job_id: str
    run_id: str
    node_id: str
    text: str
    result: GenerationResult
    started_at: datetime
    ended_at: datetime
    receipt: dict[str, Any] | None = None
    created_at: datetime


class RawResultRow(BaseModel):
    """A done job and its result exactly as stored (strings, unparsed): what `verify` reads."""

    job_id: str
    run_id: str
    seq: int
    job_key: str
    question_id: str
    category: str
    model: str
    runtime: str
    region: str
    repetition: int
    job_state: str
    spec_json: str
    has_result: bool
    node_id: str | None = None
    text: str | None = None
    result_json: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    receipt_json: str | None = None


class RawRunRow(BaseModel):
    """A run's suite columns exactly as stored: what `verify` checks against the signed job specs."""

    run_id: str
    kind: str = "suite"
    suite_name: str
    suite_hash: str
    suite_json: str


class ManifestEntryRow(BaseModel):
    """One result in a run's manifest (schema 7): its place in landing order, job, and row hash."""

    position: int
    job_id: str
    entry_hash: str


class RunManifestRow(BaseModel):
    """A run's manifest as stored: the signed statement (unparsed) and its entries in order."""

    run_id: str
    statement_json: str
    updated_at: str
    entries: list[ManifestEntryRow] = Field(default_factory=list)


class NodeRow(BaseModel):
    run_id: str
    node_id: str
    url: str
    region: str | None = None
    fleet: str
    provider_id: str | None = None
    provider_name: str | None = None
    info: NodeInfo | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    status: NodeStatus
    lost_reason: str | None = None
    first_seen: datetime
    last_seen: datetime
    #: The node's probe report (GET /probe) as stored, plain JSON; None when not asked or it failed.
    probe: dict[str, Any] | None = None
    #: Why the node has no probe report (it did not answer, or answered something else).
    probe_error: str | None = None
    probed_at: datetime | None = None

    def probe_report(self) -> ProbeReport | None:
        """The stored probe as a `ProbeReport` (None when there is none; BeaconError when it no longer reads)."""
        if self.probe is None:
            return None
        try:
            return ProbeReport.model_validate(self.probe)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise BeaconError(f"stored probe of node {self.node_id} is not readable: {first}") from None


class BenchResultRow(BaseModel):
    """One stored benchmark: which node, run from where, with what profile, and its result."""

    bench_id: int
    run_id: str
    node_id: str
    where: BenchWhere
    label: str | None = None
    #: The load profile as given (`beacon_golem.core.profiles`), plain JSON.
    profile: dict[str, Any]
    #: The `BenchResult` as `to_json_dict()` writes it: vLLM's keys per step.
    result: dict[str, Any]
    created_at: datetime

    @property
    def steps(self) -> list[dict[str, Any]]:
        steps = self.result.get("steps")
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []

    def bench_result(self) -> BenchResult:
        """The result as a `BenchResult` model (raises BeaconError when its schema no longer reads)."""
        try:
            return BenchResult.model_validate(self.result)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise BeaconError(f"stored bench result {self.bench_id} is not readable: {first}") from None


class RunLockRow(BaseModel):
    """The process driving a run right now (schema 4): one row while a run is driven."""

    run_id: str
    token: str
    pid: int
    host: str
    #: When the process started (seconds since the epoch): a pid reused by another process is not the holder.
    proc_started: float | None = None
    command: str | None = None
    acquired_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC)"


class EventRow(BaseModel):
    event_id: int
    run_id: str
    ts: datetime
    kind: str
    node_id: str | None = None
    job_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


def job_id_for(run_id: str, seq: int) -> str:
    return f"{run_id}-{seq:05d}"


class TrialRow(BaseModel):
    """One runtime on one machine of a comparison run (`beacon compare`), as stored."""

    trial_id: int
    run_id: str
    created_at: datetime
    trial: RuntimeTrial
