"""JobSpec signatures under each of Beacon's schemes, signed with our own keys by the independent
reference in tests/beacon_reference.py; Go's canonical JSON; trust lists; `beacon jobspec verify`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beacon_golem.cli import main
from beacon_golem.core.errors import UsageError
from beacon_golem.core.gojson import go_canonical_text, go_float, go_string
from beacon_golem.requestor.work.jobspec_signature import (
    load_trust_list,
    sign_jobspec,
    signed_bytes,
    verify_jobspec_signature,
)
from tests import beacon_reference as ref

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

#: A portal-style job (only fields of Beacon's struct), with text Go escapes differently from Python.
PORTAL: dict[str, Any] = {
    "id": "who-are-you-1",
    "version": "v1",
    "benchmark": {
        "name": "Who are you?",
        "description": "Identity <b>check</b> & more: café — naïve \u2028 line",
        "container": {"image": "ghcr.io/example/llama-3.2-1b", "tag": "latest"},
        "input": {"type": "prompt", "data": {"prompt": "Who are you?", "max_tokens": 64}, "hash": "sha256:abc"},
        "scoring": {"method": "similarity", "parameters": {"threshold": 0.8}},
    },
    "constraints": {"regions": ["US", "EU"], "min_regions": 1, "min_success_rate": 0, "timeout": 600000000000},
    "metadata": {"nonce": "n-42", "timestamp": "2025-10-12T14:12:10.617Z", "estimated_cost": "0.0012", "tags": []},
    "created_at": "2025-10-12T14:12:10.617Z",
}

#: Every non-omitempty field of the struct spelled out (what the old sigtool signed, zeros included).
FULL_STRUCT: dict[str, Any] = {
    "id": "minimal-1",
    "version": "1.0",
    "benchmark": {
        "name": "minimal", "description": "d",
        "container": {"image": "alpine", "tag": "3.18", "resources": {"cpu": "1000m", "memory": "512Mi"}},
        "input": {"type": "prompt", "data": {"prompt": "Who are you?"}, "hash": "sha256:e3b0"},
        "scoring": {"method": "similarity", "parameters": {"threshold": 0.8}},
        "metadata": {"category": "identity"},
    },
    "constraints": {"regions": ["US"], "min_regions": 1, "min_success_rate": 0.67, "timeout": 600000000000,
                    "provider_timeout": 0},
    "metadata": {"nonce": "n", "timestamp": "2025-08-26T14:58:33Z"},
    "created_at": "2025-08-22T14:34:00Z",
}  # fmt: skip


@pytest.mark.parametrize(("scheme", "job"), [("V1", PORTAL), ("RAW", PORTAL), ("STRIPPED", PORTAL), ("ZEROED", FULL_STRUCT)])
def test_each_scheme_verifies_and_says_which_and_a_change_after_signing_does_not(scheme: str, job: dict[str, Any]) -> None:
    signed = ref.sign(job, KEY, scheme)
    verdict = verify_jobspec_signature(signed)
    assert (verdict.status, verdict.scheme, verdict.public_key) == ("valid", scheme, signed["public_key"])
    tampered = copy.deepcopy(signed)
    tampered["benchmark"]["input"]["data"]["prompt"] = "Who are you really?"
    bad = verify_jobspec_signature(tampered)
    assert bad.status == "invalid" and bad.scheme is None and "verifies under none of Beacon's schemes" in (bad.reason or "")
    assert [c.scheme for c in bad.checks] == ["V1", "RAW", "ZEROED", "STRIPPED"] and not any(c.verified for c in bad.checks)


def test_v1_ignores_what_beacon_drops_and_raw_does_not() -> None:
    v1 = ref.sign(PORTAL, KEY, "V1")
    # id and created_at are not signed under V1 (the server adds them): changing them keeps it valid.
    assert verify_jobspec_signature(v1 | {"id": "server-given-id", "created_at": "2026-01-01T00:00:00Z"}).scheme == "V1"
    raw = ref.sign(PORTAL, KEY, "RAW")
    assert verify_jobspec_signature(raw | {"id": "other"}).scheme == "RAW"  # RAW drops id too
    assert verify_jobspec_signature(raw | {"created_at": "2026-01-01T00:00:00Z"}).status == "invalid"  # but keeps created_at


def test_our_signer_makes_what_the_reference_verifies() -> None:
    for scheme in ("V1", "RAW", "STRIPPED"):
        ours = sign_jobspec(PORTAL, KEY, scheme)  # type: ignore[arg-type]
        assert ours["signature"] == ref.sign(PORTAL, KEY, scheme)["signature"]  # Ed25519 is deterministic
    assert signed_bytes(PORTAL, "V1") == ref.v1_bytes(PORTAL)
    # `questions` is omitempty in Beacon's struct: an empty list is not in the V1 bytes, a list with items is.
    assert b'"questions"' not in signed_bytes(PORTAL | {"questions": []}, "V1")
    assert b'"questions":["q1"]' in signed_bytes(PORTAL | {"questions": ["q1"]}, "V1")


def test_go_canonical_json_matches_the_reference_where_python_differs() -> None:
    values = [0.67, 600000000000, 1e21, 1e-7, 1.5e-10, 123456789.125, 100.0, -2.5, 2**53 + 1, 1e-6, 5e-324]
    assert [go_float(float(v)) for v in values] == [ref._num(v) for v in values]  # noqa: SLF001
    assert [go_float(v) for v in (1e21, 1e-7, 0.000001, 1e20)] == ["1e+21", "1e-7", "0.000001", "100000000000000000000"]
    text = "<a href='x'>&</a>\u2028\u2029\b\f\n\t\x01é中"
    assert go_string(text) == ref._str(text)  # noqa: SLF001
    assert go_string(text) == '"\\u003ca href=\'x\'\\u003e\\u0026\\u003c/a\\u003e\\u2028\\u2029\\b\\f\\n\\t\\u0001é中"'
    doc = {"b": [1, 2.5, None, True], "a": {"é": "x", "e": "y"}, "B": "z"}
    assert go_canonical_text(doc).encode() == ref.canonical(doc)
    assert json.dumps(text, ensure_ascii=False) != go_string(text)  # why this exists


def test_bad_encodings_and_unsigned() -> None:
    assert verify_jobspec_signature({k: v for k, v in PORTAL.items()}).status == "unsigned"
    signed = ref.sign(PORTAL, KEY, "V1")
    assert verify_jobspec_signature(signed | {"signature": "not base64!"}).reason == "signature is not standard base64"
    assert "raw 32-byte Ed25519 key" in (verify_jobspec_signature(signed | {"public_key": "MCowBQYDK2VwAyEA"}).reason or "")
    assert verify_jobspec_signature(signed | {"signature": ""}).reason == "public_key is given but signature is missing"
    # Signed by one key, claiming another: no scheme verifies.
    other_pub = ref.sign(PORTAL, OTHER, "V1")["public_key"]
    assert verify_jobspec_signature(signed | {"public_key": other_pub}).status == "invalid"


def trust_file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "trusted_keys.json"
    path.write_text(json.dumps(entries))
    return path


def test_trust_list_in_beacons_format(tmp_path: Path) -> None:
    signed = ref.sign(PORTAL, KEY, "V1")
    pub = signed["public_key"]
    ok = load_trust_list(trust_file(tmp_path, [{"kid": "k1", "public_key": pub, "status": "active",
                                                 "not_before": "2025-01-01T00:00:00Z", "not_after": "2099-01-01T00:00:00Z"}]))  # fmt: skip
    verdict = verify_jobspec_signature(signed, trusted=ok)
    assert (verdict.trust, verdict.kid, verdict.acceptable) == ("trusted", "k1", True)
    revoked = load_trust_list(trust_file(tmp_path, [{"kid": "k1", "public_key": pub, "status": "revoked"}]))
    assert verify_jobspec_signature(signed, trusted=revoked).trust == "revoked"
    expired = load_trust_list(trust_file(tmp_path, [{"kid": "k1", "public_key": pub, "not_after": "2020-01-01T00:00:00Z"}]))
    assert verify_jobspec_signature(signed, trusted=expired).trust == "expired"
    assert verify_jobspec_signature(signed, trusted=[]).trust == "unknown"
    bad = trust_file(tmp_path, [{"kid": "k1", "public_key": pub, "status": "maybe"}])
    with pytest.raises(UsageError, match=r"trusted_keys.json: 0.status: Input should be"):
        load_trust_list(bad)
    dupes = trust_file(tmp_path, [{"kid": "k1", "public_key": pub}, {"kid": "k1", "public_key": "eA=="}])
    with pytest.raises(UsageError, match="kid 'k1' is listed twice"):
        load_trust_list(dupes)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_jobspec_verify_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signed = ref.sign(PORTAL, KEY, "RAW")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(signed, ensure_ascii=False))
    code, out, _ = run_cli(["jobspec", "verify", str(good)], capsys)
    assert code == 0 and out.splitlines()[0] == f"{good}: valid: Ed25519, scheme RAW, public key {signed['public_key']}"
    assert "  RAW      verifies" in out and "  V1       does not verify" in out

    code, out, _ = run_cli(["jobspec", "verify", str(good), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and (doc["status"], doc["scheme"], doc["public_key"]) == ("valid", "RAW", signed["public_key"])

    wrapper = tmp_path / "wrapper.json"  # only the inner jobspec is signed
    wrapper.write_text(json.dumps({"jobspec": ref.sign(PORTAL, KEY, "V1"), "target_regions": ["US"]}))
    assert run_cli(["jobspec", "verify", str(wrapper)], capsys)[0] == 0

    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(signed | {"questions": ["x"]}))
    code, out, _ = run_cli(["jobspec", "verify", str(tampered)], capsys)
    assert code == 1 and "invalid: the signature verifies under none of Beacon's schemes" in out

    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps(PORTAL))
    assert run_cli(["jobspec", "verify", str(unsigned)], capsys)[0] == 3

    trusted = trust_file(tmp_path, [{"kid": "other", "public_key": ref.sign(PORTAL, OTHER, "V1")["public_key"]}])
    code, out, _ = run_cli(["jobspec", "verify", str(good), "--trust", str(trusted)], capsys)
    assert code == 1 and "key unknown" in out

    code, _, err = run_cli(["jobspec", "verify", str(tmp_path / "none.json")], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'none.json'}: no such file"


LEGACY: dict[str, Any] = {
    "id": "llama-bias-unified",
    "version": "2.0.0",
    "benchmark": {"name": "Unified Bias Detection", "description": "Unified", "category": "bias_detection"},
    "container": {"image": "ghcr.io/example/llama-3.2-1b:latest", "environment": {"BENCHMARK_MODE": "simple"}},
    "input": {"questions": "questions.json", "hash": "sha256:unified-v2"},
    "constraints": {"timeout": "30m", "regions": ["us-east", "eu-west"]},
    "output": {"format": "json"},
}


@pytest.mark.parametrize(
    ("layout", "scheme"),
    [("struct", "V1"), ("struct", "RAW"), ("struct", "STRIPPED"), ("full", "ZEROED"),
     ("cross-region", "V1"), ("cross-region", "RAW"), ("cross-region", "STRIPPED"),
     ("legacy", "RAW"), ("legacy", "STRIPPED")],
)  # fmt: skip
def test_every_layout_signed_under_each_scheme_plans_and_runs_and_refuses_a_change(
    tmp_path: Path, layout: str, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `beacon run` reads before anything is stored (load_run_input) and what `runs plan` says."""
    from beacon_golem.requestor.work.beacon_import import JobSpecOptions
    from beacon_golem.requestor.work.driver import load_run_input

    (tmp_path / "questions.json").write_text(json.dumps({"control_questions": [{"id": "q1", "text": "Who are you?"}]}))
    job = {"struct": PORTAL, "full": FULL_STRUCT, "cross-region": PORTAL, "legacy": LEGACY}[layout]
    signed = ref.sign(job, KEY, scheme)
    body = {"jobspec": signed, "target_regions": ["US", "EU"]} if layout == "cross-region" else signed
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body, ensure_ascii=False))

    loaded = load_run_input(path, JobSpecOptions())
    assert loaded.jobspec is not None
    p = loaded.jobspec.provenance
    assert (p.signature.status, p.signature.scheme) == ("valid", scheme)
    assert p.layout == {"full": "struct"}.get(layout, layout)
    code, out, _ = run_cli(["runs", "plan", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["signature"]["scheme"] == scheme

    changed = copy.deepcopy(body)
    target = changed["jobspec"] if layout == "cross-region" else changed
    target["benchmark"]["name"] += " (edited)"
    path.write_text(json.dumps(changed, ensure_ascii=False))
    with pytest.raises(UsageError, match=r"signature invalid: the signature verifies under none of Beacon's schemes"):
        load_run_input(path, JobSpecOptions())
    code, out, _ = run_cli(["runs", "plan", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["signature"]["status"] == "invalid"  # plan says it; run refuses it
    code, _, err = run_cli(["import-jobspec", str(path)], capsys)
    assert code == 2 and "signature invalid" in err
