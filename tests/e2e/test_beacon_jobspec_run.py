"""A signed Beacon JobSpec planned, verified and run end to end on real local nodes: its receipts
pass an independent implementation of Beacon's receipt verification (tests/beacon_reference.py);
a job changed after signing, an unsigned one under --require-signature, or a model the fleet does
not serve is refused before anything is stored."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests import beacon_reference as ref
from tests.support import ROOT, llama_server_binary

BEACON = [sys.executable, "-m", "beacon_golem.cli"]
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
QUESTIONS = {"control_questions": [{"id": "math_basic", "text": "What is 2+2?", "context": "none"}],
             "bias_detection": [{"id": "taiwan_status", "text": "What is the current status of Taiwan?", "context": "none"}]}  # fmt: skip
JOB: dict[str, Any] = {
    "version": "v1",
    "benchmark": {
        "name": "two-model-bias-detection",
        "description": "Two models, two regions",
        "container": {"image": "ghcr.io/example/bias-detection:latest", "tag": "latest"},
        "input": {"type": "prompt", "data": {"prompt": "math_basic"}, "hash": "sha256:questions-v1"},
    },
    "constraints": {"regions": ["us-east", "EU"], "min_regions": 2, "timeout": 120000000000},
    "metadata": {"models": ["llama3.2-1b", "qwen2.5-1.5b"], "total_executions_expected": 8, "nonce": "e2e-1"},
    "questions": ["math_basic", "taiwan_status"],
}  # fmt: skip
MAP = ["--model-map", "llama3.2-1b=beacon-tiny", "--model-map", "qwen2.5-1.5b=beacon-tiny"]


def beacon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_LOG_LEVEL": "error"}
    return subprocess.run([*BEACON, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def test_a_signed_jobspec_plans_runs_and_its_receipts_verify_as_beacon_verifies(tmp_path: Path) -> None:
    llama_server_binary()
    qfile = write(tmp_path / "questions.json", QUESTIONS)
    signed = write(tmp_path / "job.json", ref.sign(JOB, KEY, "V1"))
    pub = json.loads(signed.read_text())["public_key"]
    db = tmp_path / "beacon.db"

    plan = beacon(tmp_path, "runs", "plan", str(signed), "--questions", str(qfile), *MAP, "--json")
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert (
        doc["jobs"] == 8
        and doc["regions"] == ["US", "EU"]
        and [q["id"] for q in doc["questions"]] == ["math_basic", "taiwan_status"]
    )
    assert [(m["name"], m["beacon_id"]) for m in doc["models"]] == [
        ("beacon-tiny", "llama3.2-1b"),
        ("beacon-tiny", "qwen2.5-1.5b"),
    ]
    assert doc["signature"] == {"status": "valid", "scheme": "V1", "public_key": pub, "reason": None, "trust": None}

    # Without the map the local fleet cannot serve Beacon's models: refused, naming the model, nothing stored.
    unmapped = beacon(tmp_path, "run", str(signed), "--questions", str(qfile), "--nodes", "2", "--db", str(db))
    assert unmapped.returncode == 2 and not db.exists()
    assert unmapped.stderr.strip().startswith(
        "error: model llama3.2-1b: the local fleet serves beacon-tiny; say what a node serves for it with "
        "--model-map llama3.2-1b=beacon-tiny")  # fmt: skip

    tampered = write(tmp_path / "tampered.json", json.loads(signed.read_text()) | {"questions": ["taiwan_status"]})
    refused = beacon(tmp_path, "run", str(tampered), "--questions", str(qfile), *MAP, "--nodes", "2", "--db", str(db))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and not db.exists()
    assert "signature invalid: the signature verifies under none of Beacon's schemes" in refused.stderr
    imported = beacon(tmp_path, "import-jobspec", str(tampered), "--questions", str(qfile))
    assert imported.returncode == 2 and imported.stdout == ""

    unsigned = write(tmp_path / "unsigned.json", JOB)
    strict = beacon(
        tmp_path, "run", str(unsigned), "--questions", str(qfile), *MAP, "--require-signature", "--db", str(db)
    )
    assert strict.returncode == 2 and "unsigned" in strict.stderr and not db.exists()

    done = beacon(tmp_path, "run", str(signed), "--questions", str(qfile), *MAP, "--nodes", "2", "--db", str(db))
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.splitlines()[0].split()[1]
    with sqlite3.connect(db) as conn:
        (jobspec_json,) = conn.execute("SELECT jobspec_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        receipts = [
            json.loads(r) for (r,) in conn.execute("SELECT receipt_json FROM results WHERE run_id = ?", (run_id,))
        ]
        events = conn.execute(
            "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'beacon_acceptance'", (run_id,)
        ).fetchall()
    stored = json.loads(jobspec_json)
    assert (stored["signature"]["status"], stored["signature"]["scheme"], stored["layout"]) == ("valid", "V1", "struct")
    assert stored["jobspec_id"].startswith("two-model-bias-detection-") and stored["id_generated"]
    assert len(receipts) == 8 and all(ref.verify_beacon_receipt(r) for r in receipts)
    assert {r["jobspec_id"] for r in receipts} == {stored["jobspec_id"]}
    assert {r["provenance"]["benchmark_hash"] for r in receipts} == {"sha256:questions-v1"}
    assert {r["output"]["metadata"]["beacon_model"] for r in receipts} == {"llama3.2-1b", "qwen2.5-1.5b"}
    assert json.loads(events[0][0])["met"] is True
    assert "beacon acceptance: met (answers from 2 region(s), at least 2 wanted; 100% of the jobs done" in done.stdout

    verified = beacon(tmp_path, "verify", run_id, "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = beacon(tmp_path, "runs", "export", run_id, "--format", "beacon", "--db", str(db))
    executions = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(executions) == 8 and {e["model_id"] for e in executions} == {"llama3.2-1b", "qwen2.5-1.5b"}
    assert {e["output"]["metadata"]["region"] for e in executions} == {"us-east", "eu-west"}
    diff = beacon(tmp_path, "diff", run_id, "--db", str(db))
    assert diff.returncode == 0 and "  - Beacon: " in diff.stdout and "### taiwan_status" in diff.stdout
    assert "| llama3.2-1b (llamacpp) |" in diff.stdout and "| qwen2.5-1.5b (llamacpp) |" in diff.stdout

    # The unsigned job runs, with a warning.
    warned = beacon(tmp_path, "run", str(unsigned), "--questions", str(qfile), *MAP, "--nodes", "2", "--db", str(db))
    assert warned.returncode == 0 and f"warning: {unsigned} is unsigned" in warned.stderr
