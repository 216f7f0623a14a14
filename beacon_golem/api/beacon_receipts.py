"""Project Beacon Receipt v0.1.0: signed and verified byte for byte as Beacon's runner does it.

`Receipt.Sign` (runner-app/pkg/models/signature.go) sets `public_key`, then signs a copy with
`signature` and `public_key` set to "" (both stay in the signed bytes as empty strings):
`CanonicalJSON` of the Go struct (keys sorted, Go's escaping and number format), Ed25519, base64.
`VerifySignature` reads the JSON into the same struct first, so a field the struct does not know
is dropped before the bytes are rebuilt: this module reports such fields as unsigned.

The node signs the receipt it returns from POST /inference; the requestor signs one per stored
result. Both keep their key in `<data dir>/keys/receipt-ed25519.pem` (PKCS#8, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from beacon_golem.core.beacon import BeaconReceipt
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.gojson import (
    GoAny,
    GoDecodeError,
    GoInt,
    GoJSONError,
    GoMap,
    GoSlice,
    GoString,
    GoStruct,
    GoTime,
    go_canonical_json,
)

KEY_FILENAME = "receipt-ed25519.pem"

_S = GoString()
_T = GoTime()
_MAP_ANY = GoMap(GoAny())
#: runner-app/pkg/models/receipt_types.go `Receipt`, field by field.
RECEIPT_STRUCT = GoStruct(
    ("schema_version", _S, False),
    ("id", _S, False),
    ("jobspec_id", _S, False),
    (
        "execution_details",
        GoStruct(
            ("task_id", _S, False),
            ("provider_id", _S, False),
            ("region", _S, False),
            ("started_at", _T, False),
            ("completed_at", _T, False),
            ("duration", GoInt("time.Duration"), False),
            ("status", _S, False),
        ),
        False,
    ),
    ("output", GoStruct(("data", GoAny(), False), ("hash", _S, False), ("metadata", _MAP_ANY, False)), False),
    ("cross_region_data", GoAny(), True),  # never set here; kept as given when present
    (
        "provenance",
        GoStruct(("benchmark_hash", _S, False), ("provider_info", _MAP_ANY, False), ("execution_env", _MAP_ANY, False)),
        False,
    ),
    (
        "attestations",
        GoSlice(
            GoStruct(
                ("type", _S, False),
                ("source", _S, False),
                ("timestamp", _T, False),
                ("statement", _S, False),
                ("evidence", _S, False),
                ("signature", _S, False),
                ("public_key", _S, False),
            )
        ),
        True,
    ),
    ("created_at", _T, False),
    ("completed_at", _T, False),
    ("signature", _S, False),
    ("public_key", _S, False),
)
_KNOWN = {name for name, _, _ in RECEIPT_STRUCT.fields}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key_b64(key: Ed25519PublicKey) -> str:
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def output_hash(data: Any) -> str:
    """`output.hash`: SHA-256 hex (no prefix) of `json.Marshal(output.data)`."""
    return hashlib.sha256(go_canonical_json(data)).hexdigest()


def receipt_signed_bytes(wire: dict[str, Any]) -> bytes:
    """The bytes Beacon signs and verifies: the receipt read into its Go struct and written back,
    `signature` and `public_key` set to ""."""
    copy = RECEIPT_STRUCT.encode(RECEIPT_STRUCT.decode(wire, ""))
    copy["signature"] = ""
    copy["public_key"] = ""
    return go_canonical_json(copy)


def sign_receipt(receipt: BeaconReceipt, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The receipt as JSON with `public_key` and `signature` set (`Receipt.Sign`)."""
    wire = receipt.wire()
    # Built from the struct's own fields with Go's time forms: the struct round trip Beacon's
    # verifier does gives these same bytes (verify_receipt_signature checks it that way).
    message = go_canonical_json({**wire, "signature": "", "public_key": ""})
    wire["public_key"] = public_key_b64(key.public_key())
    wire["signature"] = _b64(key.sign(message))
    return wire


def verify_receipt_signature(wire: Any) -> list[str]:
    """What is wrong with a Beacon receipt's signature, one phrase each; empty when it verifies.

    Fields outside Beacon's struct are named: Beacon's verifier drops them, so the signature
    does not cover them.
    """
    if not isinstance(wire, dict):
        return ["receipt: not a JSON object"]
    signature, public_key = wire.get("signature"), wire.get("public_key")
    if not signature or not isinstance(signature, str):
        return ["signature is required"]
    if not public_key or not isinstance(public_key, str):
        return ["public key is required"]
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
    except (ValueError, binascii.Error):
        return ["invalid public key: not the base64 of a raw 32-byte Ed25519 key"]
    try:
        sig = base64.b64decode(signature, validate=True)
        message = receipt_signed_bytes(wire)
    except (ValueError, binascii.Error, GoDecodeError, GoJSONError) as exc:
        return [f"receipt cannot be read as Beacon's Receipt: {exc}"]
    problems: list[str] = []
    try:
        key.verify(sig, message)
    except InvalidSignature:
        problems.append("signature invalid: the receipt was altered after signing (or signed by another key)")
    unknown = sorted(set(wire) - _KNOWN)
    if unknown:
        problems.append(f"fields outside Beacon's Receipt are not signed: {', '.join(unknown)}")
    return problems


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BeaconError(f"{path}: cannot read the receipt signing key: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise BeaconError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BeaconError(f"{path}: not an Ed25519 private key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key at `path`, created (PKCS#8 PEM, mode 0600, directory 0700) on first use."""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            return key
        except FileExistsError:
            pass  # another process made it first: load theirs
        except OSError as exc:
            raise BeaconError(f"{path}: cannot create the receipt signing key: {exc.strerror or exc}") from None
    return load_private_key(path)
