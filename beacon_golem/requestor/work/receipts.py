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
on first use). It also signs each run's manifest (`requestor.store.manifest`), extended with every
result the dispatcher stores. `verify_run` checks a run against all of it: each result against its
receipt, each job row against its signed spec, the stored suite against the suite hash the specs
name, and the manifest against the results stored (a result deleted, added or changed is named).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
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
from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.core.suite import read_text_file
from beacon_golem.requestor.store import manifest as run_manifest
from beacon_golem.requestor.store.rows import JobRow, RawResultRow, RawRunRow, job_id_for
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.jobspec_signature import evaluate_trust, load_trust_list

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
    """ "sha256:" + hex of the canonical JSON of the node's `NodeInfo` (its GET /info)."""
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
    in_manifest: bool = False,
) -> BeaconReceipt:
    """One stored result as Beacon's Receipt v0.1.0, everything this project records inside it.

    `in_manifest`: the result is stored with the run's signed manifest (what the dispatcher does):
    the receipt says so (`output.metadata.run_manifest`), so a manifest removed later is seen."""
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
    if in_manifest:
        metadata["run_manifest"] = run_manifest.MANIFEST_FORMAT
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

    def sign_bytes(self, data: bytes) -> str:
        """A base64 Ed25519 signature of `data` (what signs a run manifest)."""
        return _b64(self._key.sign(data))

    def sign_beacon(self, receipt: BeaconReceipt) -> dict[str, Any]:
        """A Beacon receipt signed as Beacon's `Receipt.Sign` does."""
        return sign_receipt(receipt, self._key)


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


#: Keys `beacon verify` trusts besides this machine's, when none is named: one a line.
TRUST_FILENAME = "trusted-receipt-keys"


def default_trust_path() -> Path:
    return load_settings().data_dir / "keys" / TRUST_FILENAME


def read_trust_file(path: str | Path) -> list[str]:
    """Trusted receipt keys from a file: one base64 key a line (`#` comments and blank lines skipped),
    or Beacon's trusted-keys JSON list (the keys whose entry is trusted now)."""

    path = Path(path)
    text = read_text_file(path)
    if text.lstrip().startswith("["):
        entries = load_trust_list(path)
        keys = [e.public_key for e in entries if evaluate_trust(entries, e.public_key)[0] == "trusted"]
    else:
        keys = []
        for n, line in enumerate(text.splitlines(), 1):
            value = line.split("#", 1)[0].strip()
            if not value:
                continue
            try:
                raw_key = base64.b64decode(value, validate=True)
                Ed25519PublicKey.from_public_bytes(raw_key)
            except ValueError:
                raise UsageError(f"{path}: line {n}: not an Ed25519 public key (base64 of 32 bytes)") from None
            keys.append(_b64(raw_key))
    if not keys:
        raise UsageError(f"{path}: no trusted keys in it")
    return list(dict.fromkeys(keys))


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


def _stored_result_problems(
    result_json: str, result_text: str | None, signed_hash: Any, signed: dict[str, Any], where: str
) -> list[str]:
    """The stored GenerationResult against the signed `result_hash` and the timings and token
    counts the receipt signs in `signed` (named `where` in the problems), both receipt formats."""
    try:
        stored = json.loads(result_json)
    except ValueError:
        return ["result: the stored GenerationResult is not valid JSON"]
    problems: list[str] = []
    if signed_hash != sha256_hex(canonical_json(stored)):
        problems.append("result_hash mismatch: the stored GenerationResult differs from the one signed")
    if not isinstance(stored, dict):
        return problems
    if result_text is not None and stored.get("text") != result_text:
        problems.append("result.text differs from the stored answer text")
    try:
        metrics = result_metrics(stored)
    except (TypeError, ValueError, ZeroDivisionError):
        problems.append("result: the stored timings or token counts are not numbers")
        metrics = {}
    for field, value in metrics.items():
        if _num_differs(signed.get(field), value):
            problems.append(
                f"{where}.{field} mismatch: receipt says {signed.get(field)}, the stored result gives {value}"
            )
    return problems


def _stored_spec_problems(spec_json: str, signed_hash: Any, signed_region: Any, region_field: str) -> list[str]:
    """The stored job spec against the signed `job_spec_hash` and the region the receipt signs."""
    try:
        spec = json.loads(spec_json)
    except ValueError:
        return ["job spec: the stored spec is not valid JSON"]
    problems: list[str] = []
    if signed_hash != sha256_hex(canonical_json(spec)):
        problems.append("job_spec_hash mismatch: the stored job spec differs from the one signed")
    region = spec.get("region") if isinstance(spec, dict) else None
    if region is not None and signed_region != region:
        problems.append(f"{region_field} mismatch")
    return problems


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
        run = body.get("run") if isinstance(body.get("run"), dict) else {}
        problems += _stored_result_problems(result_json, result_text, env["result_hash"], run, "run")
    if spec_json is not None:
        region = _get(body, "runner_instance", "region")
        problems += _stored_spec_problems(spec_json, body.get("job_spec_hash"), region, "runner_instance.region")
    if job_id is not None and body.get("job_id") != job_id:
        problems.append(f"job_id mismatch: receipt says {body.get('job_id')}")
    if node_id is not None and _get(body, "runner_instance", "instance_id") != node_id:
        problems.append(
            f"runner_instance.instance_id mismatch: receipt says {_get(body, 'runner_instance', 'instance_id')}"
        )
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
        problems += _stored_result_problems(result_json, result_text, meta.get("result_hash"), meta, "output.metadata")
    if spec_json is not None:
        region = details.get("region")
        problems += _stored_spec_problems(spec_json, meta.get("job_spec_hash"), region, "execution_details.region")
    if job_id is not None and details.get("task_id") != job_id:
        problems.append(f"execution_details.task_id mismatch: receipt says {details.get('task_id')}")
    if node_id is not None and _get(receipt, "provenance", "provider_info", "node_id") != node_id:
        problems.append(
            f"provider_info.node_id mismatch: receipt says {_get(receipt, 'provenance', 'provider_info', 'node_id')}"
        )
    if started_at is not None and not _same_time(details.get("started_at"), started_at):
        problems.append("execution_details.started_at mismatch")
    if ended_at is not None and not _same_time(details.get("completed_at"), ended_at):
        problems.append("execution_details.completed_at mismatch")
    return problems


class VerifyReport(BaseModel):
    run_id: str
    checked: int
    #: One line per altered item: `<job_id> (<question>/<model>/<region>): <what>`, or `run <id>: <what>`.
    problems: list[str]
    public_keys: list[str]
    #: What verify cannot vouch for without it being a fault (a run stored before manifests were kept).
    warnings: list[str] = []
    #: Results the run's signed manifest lists; None when the run has no manifest.
    manifest_count: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


#: Job columns that `diff`, export and reports show, and the key of the signed job spec each must equal.
JOB_SPEC_FIELDS = (
    ("job_key", "key"), ("question_id", "question_id"), ("category", "category"), ("model", "model"),
    ("runtime", "runtime"), ("region", "region"), ("repetition", "repetition"),
)  # fmt: skip


def _label(job_id: str, question_id: str, model: str, region: str) -> str:
    return f"{job_id} ({question_id}/{model}/{region})"


def _job_against_spec(row: RawResultRow, run: RawRunRow) -> tuple[list[str], str | None]:
    """The job row's columns against its stored spec (which the receipt's job_spec_hash signs), and
    the suite hash that spec names."""
    problems: list[str] = []
    try:
        spec = json.loads(row.spec_json)
    except ValueError:
        return problems, None  # the receipt check says the spec is not valid JSON
    if not isinstance(spec, dict):
        return problems, None
    for column, key in JOB_SPEC_FIELDS:
        if key in spec and spec[key] != getattr(row, column):
            problems.append(f"{column}: the job row says {getattr(row, column)!r}, its signed spec says {spec[key]!r}")
    if row.job_id != job_id_for(row.run_id, row.seq):
        problems.append(f"seq: the job row says {row.seq}, which is not job {row.job_id} of run {row.run_id}")
    if row.has_result and row.job_state != "done":
        problems.append(f"state: the job row says {row.job_state!r}, but its result is stored "
                        "(a stored result marks its job done)")  # fmt: skip
    suite_hash = spec.get("suite_hash") if isinstance(spec.get("suite_hash"), str) else None
    if suite_hash is not None and suite_hash != run.suite_hash:
        problems.append(f"suite_hash: the run says {run.suite_hash}, the job's signed spec says {suite_hash}")
    return problems, suite_hash


def _suite_against_signed(run: RawRunRow, signed: set[str]) -> list[str]:
    """The stored suite (what diff and reports show: the questions' text, the models, the regions)
    against the suite hash the signed job specs name."""
    if run.kind != "suite" or not signed:
        return []
    where = f"run {run.run_id}"
    try:
        suite = json.loads(run.suite_json)
        actual = sha256_hex(canonical_json(suite))
    except ValueError:
        return [f"{where}: suite_json is not valid JSON: the stored suite is not the one the answers were signed for"]
    problems: list[str] = []
    if actual not in signed:
        problems.append(f"{where}: suite_json hashes to {actual}, not to the suite hash the signed job specs name "
                        f"({', '.join(sorted(signed))}): the stored suite (questions, models, settings) was changed")  # fmt: skip
    name = suite.get("name") if isinstance(suite, dict) else None
    if name is not None and name != run.suite_name:
        problems.append(f"{where}: suite_name: the run says {run.suite_name!r}, the stored suite says {name!r}")
    return problems


def _receipt_in_manifest(envelope: Any) -> bool:
    return _get(envelope, "output", "metadata", "run_manifest") == run_manifest.MANIFEST_FORMAT


def _verify_statement(statement_json: str, run_id: str, trusted: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """The signed statement of a run manifest: its shape, its signature, its signer."""
    try:
        statement = json.loads(statement_json)
    except ValueError:
        return ["its signed statement is not valid JSON"], {}
    if not isinstance(statement, dict) or statement.get("format") != run_manifest.MANIFEST_FORMAT:
        return [f"its statement is not a {run_manifest.MANIFEST_FORMAT} statement"], {}
    problems: list[str] = []
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(statement.get("public_key")), validate=True))
        signature = base64.b64decode(str(statement.get("signature")), validate=True)
        pub.verify(signature, run_manifest.signed_bytes(statement))
    except (InvalidSignature, ValueError):
        problems.append("signature invalid: the manifest was altered after signing (or signed by another key)")
    else:
        if trusted is not None and statement["public_key"] not in set(trusted):
            problems.append(f"public_key: not a trusted key (signed by {statement['public_key']})")
    if statement.get("run_id") != run_id:
        problems.append(f"it is the manifest of run {statement.get('run_id')!r}")
    if not isinstance(statement.get("count"), int) or not isinstance(statement.get("digest"), str):
        problems.append("its statement has no count or digest")
    return problems, statement


def verify_manifest(
    store: Store, run_id: str, rows: list[RawResultRow], trusted: list[str] | None, already: set[str]
) -> tuple[list[str], list[str], int | None, str | None]:
    """The run's signed manifest against the stored results: (problems, warnings, count listed, signer).

    `already`: jobs whose result already has a problem (a changed row is not named twice)."""
    manifest = store.run_manifest(run_id)
    where = f"run {run_id}"
    flagged = sum(1 for r in rows if r.receipt_json is not None and _receipt_in_manifest(_loads(r.receipt_json)))
    if manifest is None:
        if flagged:
            return ([f"{where}: no run manifest, but {flagged} signed receipt{'s' if flagged != 1 else ''} say their "
                     "result is listed in one: the manifest was removed"], [], None, None)  # fmt: skip
        if any(r.has_result for r in rows):
            return [], [f"{where}: no run manifest (its results were stored before manifests were kept): "
                        "deleted results cannot be detected"], None, None  # fmt: skip
        return [], [], None, None
    problems: list[str] = []
    statement: dict[str, Any] = {}
    if not manifest.statement_json:
        problems.append(f"{where}: run manifest: its entries are stored but its signed statement is missing")
    else:
        found, statement = _verify_statement(manifest.statement_json, run_id, trusted)
        problems += [f"{where}: run manifest: {p}" for p in found]
    digest = run_manifest.genesis(run_id)
    for n, entry in enumerate(manifest.entries, 1):
        digest = run_manifest.chain(digest, n, entry.job_id, entry.entry_hash)
    count = statement.get("count")
    if statement and isinstance(count, int):
        if count != len(manifest.entries):
            problems.append(f"{where}: run manifest: signed for {count} results, {len(manifest.entries)} entries stored "
                            "(entries were removed or added)")  # fmt: skip
        elif digest != statement.get("digest") or any(e.position != n for n, e in enumerate(manifest.entries, 1)):
            problems.append(f"{where}: run manifest: the stored entries do not match the signed digest "
                            "(an entry was removed, added or changed)")  # fmt: skip
    jobs = store.job_labels(run_id)

    def label(job_id: str) -> str:
        j = jobs.get(job_id)
        return _label(job_id, *j[1:]) if j is not None else job_id

    stored = store.raw_result_rows(run_id)
    listed = {e.job_id: e for e in manifest.entries}
    for e in manifest.entries:
        if e.job_id not in stored:
            problems.append(f"{label(e.job_id)}: result missing: listed in the signed run manifest "
                            f"(result {e.position}) but not stored (it was deleted)")  # fmt: skip
        elif stored[e.job_id] != e.entry_hash and e.job_id not in already:
            problems.append(f"{label(e.job_id)}: the stored result differs from the one the signed run manifest lists")
    for job_id in sorted(set(stored) - set(listed), key=lambda j: jobs[j][0] if j in jobs else 0):
        problems.append(f"{label(job_id)}: result not listed in the signed run manifest (stored by hand, or after it)")
    signer = statement.get("public_key") if isinstance(statement.get("public_key"), str) else None
    return problems, [], count if isinstance(count, int) else None, signer


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def verify_run(store: Store, run_id: str, *, trusted_keys: Iterable[str] | None = None) -> VerifyReport:
    """Check a run: every stored result against its receipt; the job rows, the stored suite and the run
    against what the receipts sign (the job specs, the suite hash they name); and the run's signed
    manifest against the results stored (a result deleted, added or changed after it landed)."""
    store.get_run(run_id)
    run = store.raw_run(run_id)
    trusted = list(trusted_keys) if trusted_keys is not None else None
    problems: list[str] = []
    keys: list[str] = []
    signed_suites: set[str] = set()
    faulty: set[str] = set()
    rows = store.raw_results(run_id)
    for row in rows:
        label = _label(row.job_id, row.question_id, row.model, row.region)
        before = len(problems)
        if not row.has_result:
            problems.append(f"{label}: job marked done but no result is stored")
            faulty.add(row.job_id)
            continue
        if row.receipt_json is None:
            problems.append(f"{label}: no receipt stored for this result")
            faulty.add(row.job_id)
            continue
        try:
            envelope = json.loads(row.receipt_json)
        except ValueError:
            problems.append(f"{label}: receipt is not valid JSON")
            faulty.add(row.job_id)
            continue
        if isinstance(envelope, dict) and isinstance(envelope.get("public_key"), str):
            if envelope["public_key"] not in keys:
                keys.append(envelope["public_key"])
        receipt_problems = verify_receipt(
            envelope,
            row.text,
            trusted_keys=trusted,
            result_json=row.result_json,
            spec_json=row.spec_json,
            job_id=row.job_id,
            node_id=row.node_id,
            started_at=row.started_at,
            ended_at=row.ended_at,
        )
        job_problems, suite_hash = _job_against_spec(row, run)
        run_id_signed = _get(envelope, "output", "metadata", "run_id")
        if is_beacon_receipt(envelope) and run_id_signed is not None and run_id_signed != row.run_id:
            job_problems.append(f"run_id: the job row says {row.run_id!r}, its receipt says {run_id_signed!r}")
        problems += [f"{label}: {p}" for p in receipt_problems + job_problems]
        if not receipt_problems and suite_hash is not None:
            signed_suites.add(suite_hash)
        if len(problems) > before:
            faulty.add(row.job_id)
    problems += _suite_against_signed(run, signed_suites)
    found, warnings, count, signer = verify_manifest(store, run_id, rows, trusted, faulty)
    problems += found
    if signer is not None and signer not in keys:
        keys.append(signer)
    return VerifyReport(run_id=run_id, checked=len(rows), problems=problems, public_keys=keys, warnings=warnings,
                        manifest_count=count)  # fmt: skip


class ReceiptIssuer:
    """What the dispatcher signs with: called as (job, node, result, started_at, ended_at) -> the
    signed receipt; `manifest_signer` is what it passes to `Store.record_result` so the run's
    manifest is signed again with each result (the receipts say they are in it)."""

    def __init__(self, signer: ReceiptSigner, jobspec_id: str | None = None, benchmark_hash: str | None = None) -> None:
        self.signer = signer
        self.manifest_signer: run_manifest.ManifestSigner = signer
        self.jobspec_id = jobspec_id
        self.benchmark_hash = benchmark_hash

    def __call__(
        self, job: JobRow, node: Any, result: GenerationResult, started_at: datetime, ended_at: datetime
    ) -> dict[str, Any]:
        return self.signer.sign_beacon(build_beacon_receipt(job, node, node.node_id, result, started_at, ended_at, jobspec_id=self.jobspec_id,
                                       benchmark_hash=self.benchmark_hash, in_manifest=True))  # fmt: skip


def receipt_issuer(data_dir: str | Path | None = None, run: Any = None) -> ReceiptIssuer:
    """A callable for the dispatcher: (job, node, result, started_at, ended_at) -> signed receipt.

    The key is `<data_dir>/keys/receipt-ed25519.pem` (default: the configured data
    directory), created 0600 on first use. A run imported from a Beacon JobSpec gives its
    receipts the JobSpec's id and benchmark hash.
    """
    path = Path(data_dir) / "keys" / KEY_FILENAME if data_dir is not None else None
    signer = ReceiptSigner.load_or_create(path)
    jobspec = getattr(run, "jobspec", None)
    jobspec_id = jobspec.jobspec_id if jobspec is not None else None
    benchmark_hash = jobspec.benchmark_hash if jobspec is not None else None
    return ReceiptIssuer(signer, jobspec_id, benchmark_hash)
