"""What Project Beacon's hybrid router needs from a node (Website/hybrid_router/core/router.py).

Its router health-checks `GET {endpoint}/health` (healthy: 200 within 5 s) and posts
`{model, prompt, temperature, max_tokens}` to `POST {endpoint}/inference`; from a 200 it reads
`success` (required), `response`, `error`, `error_code`, `failure` and `receipt`. The shim's
POST /inference answers with those fields beside the normalized result, and with them on every
error too (`success: false`, `error_code`, `failure`), keeping its HTTP status: Beacon's router
turns a non-200 into its own `PROVIDER_HTTP_<status>` failure, transient for a 5xx, and keeps
the body's text in its error.

Each answer carries a Receipt v0.1.0 signed with the node's own key
(`<data dir>/keys/receipt-ed25519.pem`), as Beacon's runner signs receipts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beacon_golem.api.beacon_receipts import KEY_FILENAME, load_or_create_key, output_hash, sign_receipt
from beacon_golem.api.bodies import InferenceAnswer, InferenceError, inference_error_code
from beacon_golem.api.server import Handler, json_response
from beacon_golem.core.beacon import (
    BeaconFailure,
    BeaconReceipt,
    ExecutionDetails,
    ExecutionOutput,
    ProvenanceInfo,
    go_duration_ns,
    go_time,
)
from beacon_golem.core.canonical import canonical_json
from beacon_golem.core.clock import utcnow
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import NodeInfo


class NodeReceipts:
    """Signs the node's receipts; the key is made on first use."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "keys" / KEY_FILENAME
        self._key: Ed25519PrivateKey | None = None

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_key(self.path)
        return self._key

    def receipt(
        self,
        info: NodeInfo | None,
        extra: dict[str, Any],
        request: GenerationRequest,
        result: GenerationResult,
        started: datetime,
        ended: datetime,
    ) -> dict[str, Any]:
        node_id = info.node_id if info is not None else "node"
        provider_id = str(extra.get("provider_id") or node_id)
        region = str(extra.get("region") or "")
        data = {"response": result.text}
        request_hash = hashlib.sha256(canonical_json(request.model_dump(mode="json")).encode()).hexdigest()
        tok_per_s = result.completion_tokens / (result.e2e_ms / 1000.0) if result.completion_tokens and result.e2e_ms else None
        receipt = BeaconReceipt(
            id=f"receipt_{uuid.uuid4().hex}",
            jobspec_id="",
            execution_details=ExecutionDetails(
                task_id=uuid.uuid4().hex,
                provider_id=provider_id,
                region=region,
                started_at=go_time(started),
                completed_at=go_time(ended),
                duration=go_duration_ns(started, ended),
                status="completed",
            ),
            output=ExecutionOutput(
                data=data,
                hash=output_hash(data),
                metadata={
                    "model": result.model,
                    "runtime": result.runtime,
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "token_count_source": result.token_count_source,
                    "ttft_ms": result.ttft_ms,
                    "e2e_ms": result.e2e_ms,
                    "tok_per_s": round(tok_per_s, 3) if tok_per_s else None,
                    "inference_time": round(result.e2e_ms / 1000.0, 6),
                    "request_sha256": request_hash,
                },
            ),
            provenance=ProvenanceInfo(
                benchmark_hash="",
                provider_info={
                    "id": provider_id,
                    "node_id": node_id,
                    "region": region or None,
                    "gpu": ", ".join(g.name for g in info.system.gpus) if info and info.system.gpus else None,
                    "cpu": info.system.cpu_model if info else None,
                },
                execution_env={
                    "runtime": info.runtime.name if info else result.runtime,
                    "runtime_version": info.runtime.version if info else None,
                    "model": result.model,
                    "shim_version": info.shim_version if info else None,
                    "os": (info.system.distribution or info.system.os) if info else None,
                    "kernel": info.system.kernel if info else None,
                },
            ),
            created_at=go_time(utcnow()),
            completed_at=go_time(ended),
        )
        return sign_receipt(receipt, self.key)


NODE_RECEIPTS: web.AppKey[NodeReceipts] = web.AppKey("node_receipts", NodeReceipts)


def answer(result: GenerationResult, receipt: dict[str, Any] | None) -> web.Response:
    body = InferenceAnswer(**result.model_dump(), response=result.text, receipt=receipt)
    return json_response(body)


@web.middleware
async def beacon_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer of POST /inference gets Beacon's fields (`success: false`, `error_code`,
    `failure`), whatever answered it: the body parser, the auth check, the runtime, a bound."""
    response = await handler(request)
    if request.path != "/inference" or response.status < 400 or not isinstance(response, web.Response):
        return response
    try:
        body = json.loads(response.text or "{}")
    except (ValueError, TypeError):
        body = {}
    message = str(body.get("error") or response.reason or f"HTTP {response.status}")
    code = inference_error_code(response.status)
    failure = BeaconFailure(
        code=code,
        stage="provider_execution" if response.status >= 500 else "request_validation",
        component="beacon_golem_shim",
        message=message,
        transient=response.status >= 500 or response.status == 429,
        http_status=response.status,
        timestamp=go_time(utcnow().replace(microsecond=0)),
    )
    shaped = json_response(
        InferenceError(error=message, status=response.status, error_code=code, failure=failure), response.status
    )
    for name in ("WWW-Authenticate", "Retry-After"):
        if name in response.headers:
            shaped.headers[name] = response.headers[name]
    return shaped
