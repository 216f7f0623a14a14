"""Receipts: one signed, tamper-evident record per stored result, in Project Beacon's Receipt v0.1.0.

Every result stored now gets a receipt exactly in the shape Beacon's runner signs and verifies
(runner-app/pkg/models/receipt_types.go; signing in `beacon_golem.api.beacon_receipts`): Beacon's
own verification accepts it byte for byte. What this project records beyond Beacon's fields goes
inside the signed receipt: `output.metadata` holds the timings and token counts (with their
source), `result_hash` (the whole stored `GenerationResult`), `job_spec_hash`, the job's key;
`provenance.provider_info` the node, its fingerprint and the GLM it cost; `provenance.execution_env`
the runtime, model and machine.

Results stored by earlier versions carry the older envelope receipt, which `beacon verify`
still checks:

    {
      "receipt": {"version": "1.0", "job_id", "job_spec_hash", "runner_instance", "hardware",
                  "environment", "run": {..., "outputs_hash"}, "created_at"},
      "result_hash": "sha256:<hex of the canonical JSON of the whole GenerationResult>",
      "algorithm": "ed25519",
      "public_key": "<base64 of the raw 32-byte Ed25519 public key>",
      "signature": "<base64 of the Ed25519 signature>"
    }

(the signature covers the canonical JSON of the envelope without its "signature" key).

`tok_per_s` is completion tokens / end-to-end seconds; `p50_latency_ms` and `p95_latency_ms` are
percentiles (linear interpolation) of the gaps between streamed output chunks of this generation
(null when it streamed fewer than two chunks).

The signing key is kept in the data directory (`keys/receipt-ed25519.pem`, created 0600
on first use).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from beacon_golem.api.beacon_receipts import (
    load_or_create_key,
    load_private_key,
    output_hash,
    public_key_b64,
    sign_receipt,
    verify_receipt_signature,
)
from beacon_golem.core.beacon import (
    BeaconReceipt,
    ExecutionDetails,
    ExecutionOutput,
    ProvenanceInfo,
    go_duration_ns,
    go_time,
    is_beacon_receipt,
)
from beacon_golem.core.canonical import canonical_json, sha256_hex
from beacon_golem.core.clock import to_ts, utcnow
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.requestor.store.rows import JobRow
from beacon_golem.requestor.store.store import Store

RECEIPT_VERSION = "1.0"
ALGORITHM = "ed25519"
KEY_FILENAME = "receipt-ed25519.pem"


# ---------------------------------------------------------------------------------------
# The receipt, in Project Beacon's shape


class RunnerInstance(BaseModel):
    provider_id: str | None = None
    region: str | None = None
    instance_id: str


class Hardware(BaseModel):
    cpu: str | None = None
    gpu: str | None = None
    gpu_vram_gb: float | None = None
    ram_gb: float | None = None
    driver: str | None = None


class Environment(BaseModel):
    kernel: str | None = None
    os: str | None = None
    container_runtime: str | None = None


class RunMetrics(BaseModel):
    started_at: str
    ended_at: str
    tok_per_s: float | None = None
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    cost_estimate: float | None = None
    outputs_hash: str


class Receipt(BaseModel):
    version: str = RECEIPT_VERSION
    job_id: str
    job_spec_hash: str
    runner_instance: RunnerInstance
    hardware: Hardware
    environment: Environment
    run: RunMetrics
    created_at: str


class SignedReceipt(BaseModel):
    receipt: Receipt
    result_hash: str
    algorithm: Literal["ed25519"] = ALGORITHM
    public_key: str
    signature: str


# ---------------------------------------------------------------------------------------
# Hashes and metrics


def outputs_hash(text: str) -> str:
    return sha256_hex(text)


def result_hash(result_json: str | GenerationResult) -> str:
    """Hash of the canonical JSON of a GenerationResult (given as the stored JSON text)."""
    raw = result_json.model_dump_json() if isinstance(result_json, GenerationResult) else result_json
    return sha256_hex(canonical_json(json.loads(raw)))


def spec_hash(spec: dict[str, Any] | str) -> str:
    return sha256_hex(canonical_json(json.loads(spec) if isinstance(spec, str) else spec))


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def result_metrics(result: GenerationResult | dict[str, Any]) -> dict[str, float | None]:
    """tok_per_s, p50_latency_ms, p95_latency_ms as a receipt states them."""
    data = result.model_dump() if isinstance(result, GenerationResult) else result
    tokens, e2e = data.get("completion_tokens"), data.get("e2e_ms")
    itl = [float(x) for x in data.get("itl_ms") or []]
    tok_per_s = tokens / (e2e / 1000.0) if tokens and e2e else None
    return {
        "tok_per_s": _round(tok_per_s),
        "p50_latency_ms": _round(percentile(itl, 50)),
        "p95_latency_ms": _round(percentile(itl, 95)),
    }


# ---------------------------------------------------------------------------------------
# Building


class _NodeLike(Protocol):
    node_id: str
    region: str | None
    provider_id: str | None
    fleet: str
    info: NodeInfo | None


def hardware_from_info(info: NodeInfo | None) -> Hardware:
    if info is None:
        return Hardware()
    system = info.system
    gpus = system.gpus
    gpu: str | None = None
    if gpus:
        names = [g.name for g in gpus]
        gpu = f"{len(names)}x {names[0]}" if len(set(names)) == 1 and len(names) > 1 else ", ".join(names)
    vram = gpus[0].memory_total_mib if gpus else None
    return Hardware(
        cpu=system.cpu_model,
        gpu=gpu,
        gpu_vram_gb=round(vram / 1024, 1) if vram else None,
        ram_gb=system.ram_gib,
        driver=gpus[0].driver_version if gpus else None,
    )


def environment_from_info(info: NodeInfo | None, fleet: str | None) -> Environment:
    container = None
    if info is not None and isinstance(info.extra.get("container_runtime"), str):
        container = info.extra["container_runtime"]
    elif fleet and fleet.startswith("golem"):
        container = "golem-vm"
    if info is None:
        return Environment(container_runtime=container)
    return Environment(
        kernel=info.system.kernel,
        os=info.system.distribution or info.system.os,
        container_runtime=container,
    )


def build_receipt(
    job: JobRow,
    node: _NodeLike | None,
    node_id: str,
    result: GenerationResult,
    started_at: datetime,
    ended_at: datetime,
    *,
    cost_estimate: float | None = None,
    created_at: datetime | None = None,
) -> Receipt:
    info = node.info if node is not None else None
    metrics = result_metrics(result)
    return Receipt(
        job_id=job.job_id,
        job_spec_hash=spec_hash(job.spec),
        runner_instance=RunnerInstance(
            provider_id=(node.provider_id or node.fleet) if node is not None else None,
            region=job.region,
            instance_id=node_id,
        ),
        hardware=hardware_from_info(info),
        environment=environment_from_info(info, node.fleet if node is not None else None),
        run=RunMetrics(
            started_at=to_ts(started_at),
            ended_at=to_ts(ended_at),
            cost_estimate=cost_estimate,
            outputs_hash=outputs_hash(result.text),
            **metrics,
        ),
        created_at=to_ts(created_at or utcnow()),
    )


def _provider_id(node: _NodeLike | None, node_id: str) -> str:
    if node is None:
        return node_id
    return node.provider_id or f"{node.fleet}:{node_id}"


def _glm(node: _NodeLike | None, result: GenerationResult) -> dict[str, Any] | None:
    """What this generation cost on a Golem node: the offer's hourly price x its end-to-end time."""
    extra = getattr(node, "extra", None) or {}
    offer = extra.get("offer") if isinstance(extra, dict) else None
    hourly = offer.get("hourly_glm") if isinstance(offer, dict) else None
    if hourly is None:
        return None
    try:
        per_hour = float(hourly)
    except (TypeError, ValueError):
        return None
    return {
        "hourly_glm": per_hour,
        "estimate_glm": round(per_hour * result.e2e_ms / 1000.0 / 3600.0, 12),
        "source": "offer hourly price x this generation's end-to-end time",
        "spent_glm_so_far": extra.get("glm_spent"),
    }


def fingerprint_hash(info: NodeInfo | None) -> str | None:
    """"sha256:" + hex of the canonical JSON of the node's `NodeInfo` (its GET /info)."""
    return sha256_hex(canonical_json(info.model_dump(mode="json"))) if info is not None else None


def build_beacon_receipt(
    job: JobRow,
    node: _NodeLike | None,
    node_id: str,
    result: GenerationResult,
    started_at: datetime,
    ended_at: datetime,
    *,
    jobspec_id: str | None = None,
    benchmark_hash: str | None = None,
    created_at: datetime | None = None,
) -> BeaconReceipt:
    """One stored result as Beacon's Receipt v0.1.0, everything this project records inside it."""
    info = node.info if node is not None else None
    metrics = result_metrics(result)
    provider_id = _provider_id(node, node_id)
    data = {"response": result.text}
    hardware = hardware_from_info(info)
    environment = environment_from_info(info, node.fleet if node is not None else None)
    metadata: dict[str, Any] = {
        "provider_used": provider_id,
        "region": job.region,
        "inference_time": round(result.e2e_ms / 1000.0, 6),
        "model": result.model,
        "beacon_model": job.spec.get("beacon_model"),
        "runtime": result.runtime,
        "run_id": job.run_id,
        "job_key": job.job_key,
        "question_id": job.question_id,
        "category": job.category,
        "repetition": job.repetition,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "token_count_source": result.token_count_source,
        "ttft_ms": result.ttft_ms,
        "e2e_ms": result.e2e_ms,
        **metrics,
        "outputs_hash": outputs_hash(result.text),
        "result_hash": result_hash(result),
        "job_spec_hash": spec_hash(job.spec),
    }
    provider_info: dict[str, Any] = {
        "id": provider_id,
        "name": node.provider_name if node is not None else None,
        "node_id": node_id,
        "fleet": node.fleet if node is not None else None,
        "region": node.region if node is not None else job.region,
        "fingerprint_hash": fingerprint_hash(info),
        "hardware": hardware.model_dump(mode="json"),
        "glm": _glm(node, result),
    }
    execution_env: dict[str, Any] = {
        "runtime": info.runtime.name if info else result.runtime,
        "runtime_version": info.runtime.version if info else None,
        "model": result.model,
        "shim_version": info.shim_version if info else None,
        **environment.model_dump(mode="json"),
    }
    return BeaconReceipt(
        id=f"receipt_{job.job_id}",
        jobspec_id=jobspec_id or job.run_id,
        execution_details=ExecutionDetails(
            task_id=job.job_id,
            provider_id=provider_id,
            region=job.region,
            started_at=go_time(started_at),
            completed_at=go_time(ended_at),
            duration=go_duration_ns(started_at, ended_at),
            status="completed",
        ),
        output=ExecutionOutput(data=data, hash=output_hash(data), metadata=metadata),
        provenance=ProvenanceInfo(
            benchmark_hash=benchmark_hash or str(job.spec.get("suite_hash") or ""),
            provider_info=provider_info,
            execution_env=execution_env,
        ),
        created_at=go_time(created_at or utcnow()),
        completed_at=go_time(ended_at),
    )


# ---------------------------------------------------------------------------------------
# Keys and signing


def default_key_path() -> Path:
    return load_settings().data_dir / "keys" / KEY_FILENAME


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _signed_bytes(envelope: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in envelope.items() if k != "signature"}).encode("utf-8")


class ReceiptSigner:
    """Signs receipts with an Ed25519 key kept in a PEM file (PKCS#8, mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path
        self.public_key = public_key_b64(private_key.public_key())

    @classmethod
    def load_or_create(cls, path: str | Path | None = None) -> ReceiptSigner:
        """The key at `path` (default: the data directory's), created on first use."""
        path = Path(path) if path is not None else default_key_path()
        return cls(load_or_create_key(path), path)

    def sign(self, receipt: Receipt, result: GenerationResult | str) -> dict[str, Any]:
        """The older envelope receipt (what earlier versions stored), signed; kept to check and to test them."""
        envelope: dict[str, Any] = {
            "receipt": receipt.model_dump(mode="json"),
            "result_hash": result_hash(result),
            "algorithm": ALGORITHM,
            "public_key": self.public_key,
        }
        envelope["signature"] = _b64(self._key.sign(_signed_bytes(envelope)))
        return envelope

    def sign_legacy_result(
        self,
        job: JobRow,
        node: _NodeLike | None,
        node_id: str,
        result: GenerationResult,
        started_at: datetime,
        ended_at: datetime,
        *,
        cost_estimate: float | None = None,
    ) -> dict[str, Any]:
        """The older envelope receipt of one result, as earlier versions stored it."""
        receipt = build_receipt(job, node, node_id, result, started_at, ended_at, cost_estimate=cost_estimate)
        return self.sign(receipt, result)

    def sign_beacon(self, receipt: BeaconReceipt) -> dict[str, Any]:
        """A Beacon receipt signed as Beacon's `Receipt.Sign` does."""
        return sign_receipt(receipt, self._key)

    def sign_result(
        self,
        job: JobRow,
        node: _NodeLike | None,
        node_id: str,
        result: GenerationResult,
        started_at: datetime,
        ended_at: datetime,
        *,
        jobspec_id: str | None = None,
        benchmark_hash: str | None = None,
        created_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Build and sign the Beacon receipt of one result: what the dispatcher passes to record_result."""
        receipt = build_beacon_receipt(
            job, node, node_id, result, started_at, ended_at,
            jobspec_id=jobspec_id, benchmark_hash=benchmark_hash, created_at=created_at,
        )  # fmt: skip
        return self.sign_beacon(receipt)


def local_public_key(path: str | Path | None = None) -> str | None:
    """This machine's receipt public key (base64), or None when no key was made yet."""
    path = Path(path) if path is not None else default_key_path()
    if not path.exists():
        return None
    return public_key_b64(load_private_key(path).public_key())


def read_public_key(value: str) -> str:
    """A trusted key given as base64, a file holding base64, or a PEM public/private key file."""
    candidate = Path(value)
    text = value
    if candidate.is_file():
        raw = candidate.read_bytes()
        if b"-----BEGIN" in raw:
            try:
                if b"PRIVATE" in raw:
                    return public_key_b64(load_private_key(candidate).public_key())
                key = serialization.load_pem_public_key(raw)
            except ValueError:
                raise BeaconError(f"{value}: not a PEM key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise BeaconError(f"{value}: not an Ed25519 public key")
            return public_key_b64(key)
        text = raw.decode("ascii", errors="replace").strip()
    try:
        raw_key = base64.b64decode(text, validate=True)
        Ed25519PublicKey.from_public_bytes(raw_key)
    except ValueError:
        raise BeaconError(f"{value}: not an Ed25519 public key (base64 of 32 bytes, or a key file)") from None
    return _b64(raw_key)


# ---------------------------------------------------------------------------------------
# Verifying


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _num_differs(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is not b
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return a != b
    return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def _same_time(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return datetime.fromisoformat(str(a)).astimezone(UTC) == datetime.fromisoformat(str(b)).astimezone(UTC)
    except ValueError:
        return False


def verify_receipt(
    receipt: dict[str, Any] | SignedReceipt,
    result_text: str | None,
    *,
    trusted_keys: Iterable[str] | None = None,
    result_json: str | None = None,
    spec_json: str | None = None,
    job_id: str | None = None,
    node_id: str | None = None,
    started_at: str | None = None,
    ended_at: str | None = None,
) -> list[str]:
    """Everything that does not match, one short phrase each; an empty list means intact.

    A Beacon Receipt v0.1.0 is checked by `verify_beacon_receipt`; an older envelope here.
    Always checks the envelope and its signature; `result_text` against `outputs_hash`;
    the other arguments, when given, against what the receipt states (they are the stored
    values `beacon verify` reads from the database).
    """
    if is_beacon_receipt(receipt):
        assert isinstance(receipt, dict)
        return verify_beacon_receipt(
            receipt, result_text, trusted_keys=trusted_keys, result_json=result_json, spec_json=spec_json,
            job_id=job_id, node_id=node_id, started_at=started_at, ended_at=ended_at,
        )  # fmt: skip
    env = receipt.model_dump(mode="json") if isinstance(receipt, SignedReceipt) else receipt
    if not isinstance(env, dict):
        return ["receipt: not a JSON object"]
    missing = [k for k in ("receipt", "result_hash", "public_key", "signature") if k not in env]
    if missing:
        return [f"receipt: not a signed receipt (missing {', '.join(missing)})"]
    problems: list[str] = []
    body = env["receipt"] if isinstance(env["receipt"], dict) else {}

    if env.get("algorithm", ALGORITHM) != ALGORITHM:
        problems.append(f"algorithm: '{env.get('algorithm')}' is not {ALGORITHM}")
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(env["public_key"]), validate=True))
        sig = base64.b64decode(str(env["signature"]), validate=True)
        pub.verify(sig, _signed_bytes(env))
    except (InvalidSignature, ValueError):
        problems.append("signature invalid: the receipt was altered after signing (or signed by another key)")
    else:
        if trusted_keys is not None and env["public_key"] not in set(trusted_keys):
            problems.append(f"public_key: not a trusted key (signed by {env['public_key']})")

    if result_text is not None and _get(body, "run", "outputs_hash") != outputs_hash(result_text):
        problems.append("outputs_hash mismatch: the answer text differs from the one signed")
    if result_json is not None:
        try:
            stored = json.loads(result_json)
        except ValueError:
            problems.append("result: the stored GenerationResult is not valid JSON")
        else:
            if env["result_hash"] != sha256_hex(canonical_json(stored)):
                problems.append("result_hash mismatch: the stored GenerationResult differs from the one signed")
            if result_text is not None and isinstance(stored, dict) and stored.get("text") != result_text:
                problems.append("result.text differs from the stored answer text")
            if isinstance(stored, dict):
                try:
                    metrics = result_metrics(stored)
                except (TypeError, ValueError, ZeroDivisionError):
                    problems.append("result: the stored timings or token counts are not numbers")
                    metrics = {}
                for field, value in metrics.items():
                    signed = _get(body, "run", field)
                    if _num_differs(signed, value):
                        problems.append(f"run.{field} mismatch: receipt says {signed}, the stored result gives {value}")
    if spec_json is not None:
        try:
            spec = json.loads(spec_json)
        except ValueError:
            problems.append("job spec: the stored spec is not valid JSON")
        else:
            if body.get("job_spec_hash") != sha256_hex(canonical_json(spec)):
                problems.append("job_spec_hash mismatch: the stored job spec differs from the one signed")
            region = spec.get("region") if isinstance(spec, dict) else None
            if region is not None and _get(body, "runner_instance", "region") != region:
                problems.append("runner_instance.region mismatch")
    if job_id is not None and body.get("job_id") != job_id:
        problems.append(f"job_id mismatch: receipt says {body.get('job_id')}")
    if node_id is not None and _get(body, "runner_instance", "instance_id") != node_id:
        problems.append(f"runner_instance.instance_id mismatch: receipt says {_get(body, 'runner_instance', 'instance_id')}")
    if started_at is not None and not _same_time(_get(body, "run", "started_at"), started_at):
        problems.append("run.started_at mismatch")
    if ended_at is not None and not _same_time(_get(body, "run", "ended_at"), ended_at):
        problems.append("run.ended_at mismatch")
    return problems


def verify_beacon_receipt(
    receipt: dict[str, Any],
    result_text: str | None,
    *,
    trusted_keys: Iterable[str] | None = None,
    result_json: str | None = None,
    spec_json: str | None = None,
    job_id: str | None = None,
    node_id: str | None = None,
    started_at: str | None = None,
    ended_at: str | None = None,
) -> list[str]:
    """A Beacon Receipt v0.1.0 against its signature (Beacon's own bytes) and the stored values."""
    problems = verify_receipt_signature(receipt)
    if not problems and trusted_keys is not None and receipt["public_key"] not in set(trusted_keys):
        problems.append(f"public_key: not a trusted key (signed by {receipt['public_key']})")
    output = receipt.get("output") if isinstance(receipt.get("output"), dict) else {}
    meta = output.get("metadata") if isinstance(output.get("metadata"), dict) else {}
    details = receipt.get("execution_details") if isinstance(receipt.get("execution_details"), dict) else {}
    data = output.get("data")
    try:
        hash_ok = output.get("hash") == output_hash(data)
    except ValueError:
        hash_ok = False
    if not hash_ok:
        problems.append("output.hash mismatch: output.data differs from the one hashed")
    if result_text is not None:
        response = data.get("response") if isinstance(data, dict) else None
        if response != result_text or meta.get("outputs_hash") != outputs_hash(result_text):
            problems.append("outputs_hash mismatch: the answer text differs from the one signed")
    if result_json is not None:
        try:
            stored = json.loads(result_json)
        except ValueError:
            problems.append("result: the stored GenerationResult is not valid JSON")
        else:
            if meta.get("result_hash") != sha256_hex(canonical_json(stored)):
                problems.append("result_hash mismatch: the stored GenerationResult differs from the one signed")
            if result_text is not None and isinstance(stored, dict) and stored.get("text") != result_text:
                problems.append("result.text differs from the stored answer text")
            if isinstance(stored, dict):
                try:
                    metrics = result_metrics(stored)
                except (TypeError, ValueError, ZeroDivisionError):
                    problems.append("result: the stored timings or token counts are not numbers")
                    metrics = {}
                for field, value in metrics.items():
                    if _num_differs(meta.get(field), value):
                        problems.append(f"output.metadata.{field} mismatch: receipt says {meta.get(field)}, "
                                        f"the stored result gives {value}")  # fmt: skip
    if spec_json is not None:
        try:
            spec = json.loads(spec_json)
        except ValueError:
            problems.append("job spec: the stored spec is not valid JSON")
        else:
            if meta.get("job_spec_hash") != sha256_hex(canonical_json(spec)):
                problems.append("job_spec_hash mismatch: the stored job spec differs from the one signed")
            region = spec.get("region") if isinstance(spec, dict) else None
            if region is not None and details.get("region") != region:
                problems.append("execution_details.region mismatch")
    if job_id is not None and details.get("task_id") != job_id:
        problems.append(f"execution_details.task_id mismatch: receipt says {details.get('task_id')}")
    if node_id is not None and _get(receipt, "provenance", "provider_info", "node_id") != node_id:
        problems.append(f"provider_info.node_id mismatch: receipt says {_get(receipt, 'provenance', 'provider_info', 'node_id')}")
    if started_at is not None and not _same_time(details.get("started_at"), started_at):
        problems.append("execution_details.started_at mismatch")
    if ended_at is not None and not _same_time(details.get("completed_at"), ended_at):
        problems.append("execution_details.completed_at mismatch")
    return problems


class VerifyReport(BaseModel):
    run_id: str
    checked: int
    #: One line per altered item: `<job_id> (<question>/<model>/<region>): <what>`.
    problems: list[str]
    public_keys: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(store: Store, run_id: str, *, trusted_keys: Iterable[str] | None = None) -> VerifyReport:
    """Check every stored result of a run against its receipt and the stored job spec."""
    store.get_run(run_id)
    trusted = list(trusted_keys) if trusted_keys is not None else None
    problems: list[str] = []
    keys: list[str] = []
    rows = store.raw_results(run_id)
    for row in rows:
        label = f"{row.job_id} ({row.question_id}/{row.model}/{row.region})"
        if not row.has_result:
            problems.append(f"{label}: job marked done but no result is stored")
            continue
        if row.receipt_json is None:
            problems.append(f"{label}: no receipt stored for this result")
            continue
        try:
            envelope = json.loads(row.receipt_json)
        except ValueError:
            problems.append(f"{label}: receipt is not valid JSON")
            continue
        if isinstance(envelope, dict) and isinstance(envelope.get("public_key"), str):
            if envelope["public_key"] not in keys:
                keys.append(envelope["public_key"])
        for problem in verify_receipt(
            envelope,
            row.text,
            trusted_keys=trusted,
            result_json=row.result_json,
            spec_json=row.spec_json,
            job_id=row.job_id,
            node_id=row.node_id,
            started_at=row.started_at,
            ended_at=row.ended_at,
        ):
            problems.append(f"{label}: {problem}")
    return VerifyReport(run_id=run_id, checked=len(rows), problems=problems, public_keys=keys)


def receipt_issuer(
    data_dir: str | Path | None = None, run: Any = None
) -> Callable[[JobRow, Any, GenerationResult, datetime, datetime], dict[str, Any]]:
    """A callable for the dispatcher: (job, node, result, started_at, ended_at) -> signed envelope.

    The key is `<data_dir>/keys/receipt-ed25519.pem` (default: the configured data
    directory), created 0600 on first use. A run imported from a Beacon JobSpec gives its
    receipts the JobSpec's id and benchmark hash.
    """
    path = Path(data_dir) / "keys" / KEY_FILENAME if data_dir is not None else None
    signer = ReceiptSigner.load_or_create(path)
    jobspec = getattr(run, "jobspec", None)
    jobspec_id = jobspec.jobspec_id if jobspec is not None else None
    benchmark_hash = jobspec.benchmark_hash if jobspec is not None else None

    def issue(job: JobRow, node: Any, result: GenerationResult, started_at: datetime, ended_at: datetime) -> dict[str, Any]:
        return signer.sign_result(job, node, node.node_id, result, started_at, ended_at,
                                  jobspec_id=jobspec_id, benchmark_hash=benchmark_hash)  # fmt: skip

    return issue
