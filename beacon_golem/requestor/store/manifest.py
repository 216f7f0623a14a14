"""The run manifest: one signed statement per run naming every stored result, so a removed one is seen.

Each stored result gets an entry (schema 7, `manifest_entries`): its place in the order results
landed, its job id, and `entry_hash`, the hash of the whole stored result row (job, node, text,
`GenerationResult`, times, receipt). The run's statement (`run_manifests.statement_json`) holds the
count of entries and a rolling digest over them,

    digest_0 = sha256("beacon-golem run manifest v1\\n" + run_id)
    digest_n = sha256(digest_{n-1} + "\\n" + n + "\\n" + job_id + "\\n" + entry_hash)

signed with the receipt key (Ed25519 over the canonical JSON of the statement without
`signature`). It is extended and signed again in the transaction that stores each result, so
the result and the manifest never disagree after a crash; each step costs one hash and one
signature, whatever the size of the run. `beacon verify` rebuilds the digest from the entries,
checks it against the signed statement, and each entry against the stored result: a result
deleted, added or changed after it landed is named.

This module only builds and hashes; signing and checking signatures are the caller's (the store
stands on core alone): a `ManifestSigner` gives the key and the signature.
"""

from __future__ import annotations

from typing import Any, Protocol

from beacon_golem.core.canonical import canonical_json, sha256_hex

MANIFEST_FORMAT = "beacon-golem/run-manifest/v1"
ALGORITHM = "ed25519"


class ManifestSigner(Protocol):
    """What signs a run manifest: the base64 public key, and base64 Ed25519 signatures of bytes."""

    public_key: str

    def sign_bytes(self, data: bytes) -> str: ...


def entry_hash(
    run_id: str,
    job_id: str,
    node_id: str | None,
    text: str | None,
    result_json: str | None,
    started_at: str | None,
    ended_at: str | None,
    receipt_json: str | None,
) -> str:
    """The hash of one stored result row, exactly as stored (strings, unparsed)."""
    return sha256_hex(canonical_json([run_id, job_id, node_id, text, result_json, started_at, ended_at, receipt_json]))


def genesis(run_id: str) -> str:
    return sha256_hex("beacon-golem run manifest v1\n" + run_id)


def chain(digest: str, position: int, job_id: str, entry: str) -> str:
    """The digest after entry number `position` (1-based)."""
    return sha256_hex(f"{digest}\n{position}\n{job_id}\n{entry}")


def signed_bytes(statement: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in statement.items() if k != "signature"}).encode("utf-8")


def sign_statement(
    signer: ManifestSigner, run_id: str, count: int, digest: str, updated_at: str, adopted: int = 0
) -> dict[str, Any]:
    """The run's manifest statement, signed. `adopted`: results that were stored before the run had
    a manifest (a run resumed across versions), taken in as they were found then."""
    statement: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "count": count,
        "digest": digest,
        "adopted": adopted,
        "updated_at": updated_at,
        "algorithm": ALGORITHM,
        "public_key": signer.public_key,
    }
    statement["signature"] = signer.sign_bytes(signed_bytes(statement))
    return statement
