"""An independent implementation of what Project Beacon's runner does, written for the tests from
/work/shared/reference/beacon.md (and docs/runs.md), not from this package's code:

* canonical JSON as Go writes it: keys sorted by bytes, compact, `<` `>` `&` as `\\u003c` `\\u003e`
  `\\u0026`, U+2028/U+2029 escaped, other non-ASCII raw UTF-8, numbers through float64 (numpy's
  own shortest-digits formatter here, positional between 1e-6 and 1e21);
* Receipt v0.1.0 verification: a copy with `signature` and `public_key` set to "" (kept in the
  bytes), canonical JSON, Ed25519 over those bytes; `output.hash` the SHA-256 hex of the JSON of
  `output.data`;
* JobSpec signing under scheme V1 (for jobs holding only fields of Beacon's struct), RAW, and the
  two older ones, with our own test keys.

Nothing here imports beacon_golem.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _num(value: float) -> str:
    f = float(value)
    if f == 0:
        return "0"
    if 1e-6 <= abs(f) < 1e21:
        return np.format_float_positional(f, unique=True, trim="-")
    mantissa, _, exp = np.format_float_scientific(f, unique=True, trim="-").partition("e")
    sign, digits = exp[0], exp[1:].lstrip("0") or "0"
    return f"{mantissa}e{sign}{digits if sign == '-' else digits.zfill(2)}"


def _str(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace(
        "\u2028", "\\u2028").replace("\u2029", "\\u2029")  # fmt: skip


def canonical(value: Any) -> bytes:
    def enc(v: Any) -> str:
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if isinstance(v, str):
            return _str(v)
        if isinstance(v, int | float):
            return _num(v)
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: k.encode("utf-8"))
            return "{" + ",".join(_str(k) + ":" + enc(v[k]) for k in keys) + "}"
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        raise TypeError(type(v))

    return enc(value).encode("utf-8")


def verify_beacon_receipt(receipt: dict[str, Any]) -> bool:
    """Beacon's `Receipt.VerifySignature` as beacon.md describes it."""
    if receipt.get("schema_version") != "v0.1.0":
        return False
    body = copy.deepcopy(receipt)
    signature, public_key = body["signature"], body["public_key"]
    body["signature"], body["public_key"] = "", ""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    try:
        key.verify(base64.b64decode(signature), canonical(body))
    except Exception:
        return False
    data_hash = hashlib.sha256(canonical(receipt["output"]["data"])).hexdigest()
    return receipt["output"]["hash"] == data_hash


#: Fields of Beacon's JobSpec struct that come back as zeros when left out (no omitempty, numbers):
#: V1 keeps zero numbers, and deletes the zero min_success_rate.
_ZERO_NUMBERS = {"constraints": ("min_regions", "timeout", "provider_timeout")}


def _drop_empty(m: dict[str, Any]) -> None:
    for k in list(m):
        v = m[k]
        if isinstance(v, dict):
            _drop_empty(v)
            if not v:
                del m[k]
        elif v is None or v == "":
            del m[k]


def v1_bytes(job: dict[str, Any]) -> bytes:
    """Scheme V1 for a job whose keys are all Beacon struct fields (what the portal signs)."""
    m = copy.deepcopy(job)
    for section, fields in _ZERO_NUMBERS.items():
        for f in fields:
            m.setdefault(section, {}).setdefault(f, 0)
    for k in ("id", "created_at", "signature", "public_key"):
        m.pop(k, None)
    _drop_empty(m)
    if m.get("constraints", {}).get("min_success_rate", None) == 0:
        del m["constraints"]["min_success_rate"]
    return canonical(m)


def sign(job: dict[str, Any], key: Ed25519PrivateKey, scheme: str) -> dict[str, Any]:
    """The job signed under one of Beacon's schemes with our own key."""
    signed = copy.deepcopy(job)
    signed["public_key"] = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    if scheme == "V1":
        message = v1_bytes(signed)
    elif scheme == "RAW":
        message = canonical({k: v for k, v in signed.items() if k not in ("id", "signature", "public_key")})
    elif scheme == "ZEROED":  # the old sigtool: every struct field kept, these two as "" (for full-struct jobs)
        message = canonical({**signed, "signature": "", "public_key": ""})
    elif scheme == "STRIPPED":
        message = canonical({k: v for k, v in signed.items() if k not in ("signature", "public_key")})
    else:
        raise ValueError(scheme)
    signed["signature"] = base64.b64encode(key.sign(message)).decode()
    return signed
