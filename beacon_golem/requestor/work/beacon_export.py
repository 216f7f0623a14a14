"""A stored result as Project Beacon stores an execution (`beacon runs export RUN --format beacon`).

Beacon's runner keeps, per execution (runner-app/internal/worker/executor_hybrid.go and
job_runner.go `InsertExecutionWithModelAndQuestion`): the job id, provider, region, status,
start and end, the model and question ids, the output `{response, provider, metadata}` (the
metadata being what its hybrid router answered: `provider_type`, `region`, `model`, `receipt`)
and the receipt.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from beacon_golem.core.beacon import go_time, is_beacon_receipt, router_region_name
from beacon_golem.requestor.store.rows import JobRow, NodeRow, ResultRow, RunRow


class BeaconRouterMetadata(BaseModel):
    provider_type: str
    #: The region as Beacon's router names it (us-east, eu-west, asia-pacific).
    region: str | None
    model: str
    receipt: dict[str, Any] | None = None


class BeaconExecutionOutput(BaseModel):
    response: str
    provider: str
    metadata: BeaconRouterMetadata


class BeaconExecution(BaseModel):
    #: The Beacon JobSpec's id (a suite run: the run id).
    job_id: str
    #: This project's job id: one execution.
    execution_id: str
    provider_id: str
    region: str
    status: Literal["completed"] = "completed"
    started_at: str
    completed_at: str
    model_id: str
    question_id: str
    output: BeaconExecutionOutput
    receipt: dict[str, Any] | None
    #: "v0.1.0" (Beacon's Receipt), or "envelope-1.0" for a result an earlier version stored.
    receipt_format: Literal["v0.1.0", "envelope-1.0", "none"]


def beacon_execution(run: RunRow, job: JobRow, result: ResultRow, node: NodeRow | None) -> BeaconExecution:
    receipt = result.receipt
    fmt: Literal["v0.1.0", "envelope-1.0", "none"] = (
        "v0.1.0" if is_beacon_receipt(receipt) else "envelope-1.0" if receipt is not None else "none"
    )
    provider = (node.provider_id if node is not None and node.provider_id else None) or (
        f"{node.fleet}:{node.node_id}" if node is not None else result.node_id
    )
    model_id = str(job.spec.get("beacon_model") or job.model)
    return BeaconExecution(
        job_id=run.jobspec.jobspec_id if run.jobspec is not None else run.run_id,
        execution_id=job.job_id,
        provider_id=provider,
        region=job.region,
        started_at=go_time(result.started_at),
        completed_at=go_time(result.ended_at),
        model_id=model_id,
        question_id=job.question_id,
        output=BeaconExecutionOutput(
            response=result.text,
            provider=provider,
            metadata=BeaconRouterMetadata(
                provider_type=node.fleet if node is not None else "unknown",
                region=router_region_name(job.region),
                model=model_id,
                receipt=receipt,
            ),
        ),
        receipt=receipt,
        receipt_format=fmt,
    )
