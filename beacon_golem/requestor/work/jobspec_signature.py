"""A Project Beacon JobSpec's Ed25519 signature, checked as Beacon's runner checks it.

Beacon signs the canonical JSON bytes of a JobSpec (Go's `encoding/json` output, keys sorted:
`beacon_golem.core.gojson`), not a hash. `public_key` is the standard base64 of the raw 32
bytes, `signature` the standard base64 of the 64-byte signature. Which bytes were signed
depends on who signed; the runner (and this module) tries, in order:

* **V1** (`CanonicalizeJobSpecV1`, what the portal and the runner sign now): the job read into
  Beacon's Go struct and written back (keys the struct does not know drop out, fields without
  `omitempty` appear with their zero values), then `id`, `created_at`, `signature` and
  `public_key` deleted, nulls, empty strings and objects left empty deleted recursively (arrays
  and what is inside them stay), `constraints.min_success_rate` deleted when 0;
* **RAW** (`VerifySignatureRaw`, the runner's fallback): the body as received less its
  top-level `id`, `signature` and `public_key` (`created_at` stays);
* **ZEROED** (the old sigtool, runner-app/docs/signing.md): the job read into the struct and
  written back with `signature` and `public_key` set to "" and every other field kept;
* **STRIPPED** (older fixtures): the body as received less `signature` and `public_key` only.

A job without `signature` and `public_key` is unsigned (Beacon accepts it). A trust list in
Beacon's format (a JSON array of {kid, public_key, status, not_before, not_after}) says
whether the key that verified is trusted, revoked, expired, not yet valid or unknown.
"""

from __future__ import annotations

import base64
import binascii
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from beacon_golem.core.beacon import Scheme, SchemeCheck, SignatureVerdict, TrustStatus
from beacon_golem.core.errors import UsageError
from beacon_golem.core.gojson import (
    RFC3339,
    GoAny,
    GoBool,
    GoDecodeError,
    GoFloat,
    GoInt,
    GoJSONError,
    GoMap,
    GoPtr,
    GoSlice,
    GoString,
    GoStruct,
    GoTime,
    go_canonical_json,
    go_json_loads,
)
from beacon_golem.core.suite import one_line, read_text_file

SCHEMES: tuple[Scheme, ...] = ("V1", "RAW", "ZEROED", "STRIPPED")


# ---------------------------------------------------------------------------------------
# Beacon's Go JobSpec struct (runner-app/pkg/models/types.go), as a decoder and encoder.


_S, _I, _F, _B = GoString(), GoInt(), GoFloat(), GoBool()
_DURATION = GoInt("time.Duration")
_MAP_ANY = GoMap(GoAny())

_CONTAINER = GoStruct(
    ("image", _S, False),
    ("tag", _S, False),
    ("command", GoSlice(_S), True),
    ("environment", GoMap(_S), True),
    ("resources", GoStruct(("cpu", _S, False), ("memory", _S, False), ("gpu", _S, True)), False),
)
_BENCHMARK = GoStruct(
    ("name", _S, False),
    ("version", _S, True),
    ("description", _S, False),
    ("container", _CONTAINER, False),
    ("input", GoStruct(("type", _S, False), ("data", _MAP_ANY, False), ("hash", _S, False)), False),
    ("scoring", GoStruct(("method", _S, False), ("parameters", _MAP_ANY, False)), False),
    ("metadata", _MAP_ANY, False),
)
_PROVIDER = GoStruct(
    ("region", _S, False),
    ("min_score", _F, True),
    ("max_price", _F, True),
    ("whitelist", GoSlice(_S), True),
    ("blacklist", GoSlice(_S), True),
)
_CONSTRAINTS = GoStruct(
    ("regions", GoSlice(_S), False),
    ("min_regions", _I, False),
    ("min_success_rate", _F, False),
    ("timeout", _DURATION, False),
    ("provider_timeout", _DURATION, False),
    ("max_cost", _F, True),
    ("providers", GoSlice(_PROVIDER), True),
)
_MODEL = GoStruct(
    ("id", _S, False),
    ("name", _S, False),
    ("provider", _S, False),
    ("container_image", _S, False),
    ("regions", GoSlice(_S), False),
)
_WALLET = GoStruct(
    ("address", _S, False),
    ("signature", _S, False),
    ("message", _S, False),
    ("chainId", _I, False),
    ("nonce", _S, False),
    ("expiresAt", _S, False),
)
#: runner-app/pkg/models/types.go `JobSpec`, field by field, in declaration order.
JOBSPEC_STRUCT = GoStruct(
    ("id", _S, True),
    ("jobspec_id", _S, True),
    ("version", _S, False),
    ("benchmark", _BENCHMARK, False),
    ("constraints", _CONSTRAINTS, False),
    ("metadata", _MAP_ANY, False),
    ("created_at", GoTime(), False),
    ("questions", GoSlice(_S), True),
    ("models", GoSlice(_MODEL), True),
    ("runs", _I, True),
    ("wallet_auth", GoPtr(_WALLET), True),
    ("signature", _S, False),
    ("public_key", _S, False),
)


def go_struct_roundtrip(body: dict[str, Any]) -> dict[str, Any]:
    """The job as Beacon's runner holds it after `json.Unmarshal` into its struct, marshalled back."""
    result = JOBSPEC_STRUCT.encode(JOBSPEC_STRUCT.decode(body, ""))
    assert isinstance(result, dict)
    return result


def _remove_null_and_empty(m: dict[str, Any]) -> None:
    """`removeNullAndEmptyValues`: nulls, "" and objects left empty, recursively in objects only."""
    for key in list(m):
        value = m[key]
        if isinstance(value, dict):
            _remove_null_and_empty(value)
            if not value:
                del m[key]
        elif value is None or value == "":
            del m[key]


def signed_bytes(body: dict[str, Any], scheme: Scheme) -> bytes:
    """The bytes a scheme signs. GoDecodeError when Beacon's struct cannot read the job."""
    if scheme == "V1":
        m = copy.deepcopy(go_struct_roundtrip(body))
        for key in ("id", "created_at", "signature", "public_key"):
            m.pop(key, None)
        _remove_null_and_empty(m)
        constraints = m.get("constraints")
        if isinstance(constraints, dict) and constraints.get("min_success_rate") == 0:
            del constraints["min_success_rate"]
        return go_canonical_json(m)
    if scheme == "ZEROED":
        m = go_struct_roundtrip(body)
        m["signature"] = ""
        m["public_key"] = ""
        return go_canonical_json(m)
    drop = ("id", "signature", "public_key") if scheme == "RAW" else ("signature", "public_key")
    return go_canonical_json({k: v for k, v in body.items() if k not in drop})


# ---------------------------------------------------------------------------------------
# Trust list (runner-app/internal/config/trust.go)


class TrustedKey(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kid: str = Field(min_length=1)
    public_key: str = Field(min_length=1)
    status: Literal["", "active", "revoked"] = ""
    not_before: str | None = None
    not_after: str | None = None


def _rfc3339(value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    if not RFC3339.match(value):
        raise UsageError(f"{where}: {value!r} is not an RFC 3339 time")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def load_trust_list(path: Path) -> list[TrustedKey]:
    """Beacon's trusted-keys file; every problem is one line naming the entry."""
    text = read_text_file(path)
    try:
        data = go_json_loads(text)
    except (ValueError, GoJSONError) as exc:
        line = f": line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise UsageError(f"{path}: not valid JSON{line}: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON array of {{kid, public_key, status, not_before, not_after}}")
    keys: list[TrustedKey] = []
    for i, raw in enumerate(data):
        try:
            entry = TrustedKey.model_validate(raw)
        except ValidationError as exc:
            raise UsageError(f"{path}: {i}.{one_line(exc)}") from None
        nb = _rfc3339(entry.not_before, f"{path}: {i}.not_before")
        na = _rfc3339(entry.not_after, f"{path}: {i}.not_after")
        if nb and na and nb > na:
            raise UsageError(f"{path}: {i}: not_before is after not_after (kid {entry.kid})")
        if any(k.kid == entry.kid for k in keys):
            raise UsageError(f"{path}: {i}: kid {entry.kid!r} is listed twice")
        if any(k.public_key == entry.public_key for k in keys):
            raise UsageError(f"{path}: {i}: public_key of kid {entry.kid!r} is listed twice")
        keys.append(entry)
    return keys


def evaluate_trust(keys: list[TrustedKey], public_key: str, now: datetime | None = None) -> tuple[TrustStatus, str | None]:
    """`EvaluateKeyTrust`: (status, the entry's kid)."""
    entry = next((k for k in keys if k.public_key == public_key), None)
    if entry is None:
        return "unknown", None
    now = now or datetime.now(UTC)
    if entry.status == "revoked":
        return "revoked", entry.kid
    nb = _rfc3339(entry.not_before, "not_before")
    na = _rfc3339(entry.not_after, "not_after")
    if nb is not None and now < nb:
        return "not_yet_valid", entry.kid
    if na is not None and now > na:
        return "expired", entry.kid
    return "trusted", entry.kid


# ---------------------------------------------------------------------------------------
# The verdict


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def verify_jobspec_signature(
    body: dict[str, Any], *, trusted: list[TrustedKey] | None = None, now: datetime | None = None
) -> SignatureVerdict:
    """Check a JobSpec's signature under every scheme; the first that verifies is the verdict."""
    signature, public_key = body.get("signature"), body.get("public_key")
    if signature in (None, "") and public_key in (None, ""):
        return SignatureVerdict(status="unsigned")
    if not isinstance(signature, str) or not signature:
        return SignatureVerdict(status="invalid", reason="public_key is given but signature is missing",
                                public_key=public_key if isinstance(public_key, str) else None)  # fmt: skip
    if not isinstance(public_key, str) or not public_key:
        return SignatureVerdict(status="invalid", reason="signature is given but public_key is missing")
    try:
        raw_key = _b64(public_key)
        key = Ed25519PublicKey.from_public_bytes(raw_key)
    except (ValueError, binascii.Error):
        return SignatureVerdict(
            status="invalid", public_key=public_key,
            reason="public_key is not the standard base64 of a raw 32-byte Ed25519 key",
        )  # fmt: skip
    try:
        sig = _b64(signature)
    except (ValueError, binascii.Error):
        return SignatureVerdict(status="invalid", public_key=public_key, reason="signature is not standard base64")
    if len(sig) != 64:
        return SignatureVerdict(status="invalid", public_key=public_key,
                                reason=f"signature is {len(sig)} bytes, an Ed25519 signature is 64")  # fmt: skip
    checks: list[SchemeCheck] = []
    for scheme in SCHEMES:
        try:
            message = signed_bytes(body, scheme)
        except (GoDecodeError, GoJSONError) as exc:
            checks.append(SchemeCheck(scheme=scheme, verified=False, error=str(exc)))
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            checks.append(SchemeCheck(scheme=scheme, verified=False))
            continue
        checks.append(SchemeCheck(scheme=scheme, verified=True))
        verdict = SignatureVerdict(status="valid", scheme=scheme, public_key=public_key, checks=checks)
        if trusted is not None:
            verdict.trust, verdict.kid = evaluate_trust(trusted, public_key, now)
        return verdict
    unreadable = [c for c in checks if c.error]
    reason = "the signature verifies under none of Beacon's schemes (V1, RAW, ZEROED, STRIPPED): the job was changed after signing, or signed by another key"
    if unreadable:
        reason += f"; Beacon's struct cannot read it: {unreadable[0].error}"
    return SignatureVerdict(status="invalid", public_key=public_key, reason=reason, checks=checks)


# ---------------------------------------------------------------------------------------
# Signing (for tests and fixtures: Beacon's own tools sign with V1)


def sign_jobspec(body: dict[str, Any], key: Ed25519PrivateKey, scheme: Scheme = "V1") -> dict[str, Any]:
    """The job with `public_key` and `signature` set, signed under `scheme`."""
    from_key = key.public_key().public_bytes_raw()
    signed = dict(body)
    signed["public_key"] = base64.b64encode(from_key).decode("ascii")
    signed["signature"] = ""
    signed["signature"] = base64.b64encode(key.sign(signed_bytes(signed, scheme))).decode("ascii")
    return signed

