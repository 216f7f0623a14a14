"""The older envelope receipts (what earlier versions stored, still verified), key handling, metrics;
Beacon Receipt v0.1.0 is tested in test_beacon_receipts.py."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import GPUInfo, Node, NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.receipts import (
    ReceiptSigner,
    local_public_key,
    percentile,
    read_public_key,
    receipt_issuer,
    result_metrics,
    verify_receipt,
    verify_run,
)

SUITE = """\
name: receipts-test
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: tiananmen, text: "What happened at Tiananmen Square on June 4, 1989?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""
T0 = datetime(2025, 8, 22, 14, 34, 0, 123456, tzinfo=UTC)


def gen_result(text: str) -> GenerationResult:
    return GenerationResult(
        text=text, finish_reason="length", prompt_tokens=11, completion_tokens=8, token_count_source="server",
        ttft_ms=20.0, e2e_ms=200.0, itl_ms=[10.0, 30.0, 20.0, 40.0, 25.0, 25.0, 30.0], runtime="llamacpp",
        model="beacon-tiny", server_timings={"predicted_ms": 170.0},
    )  # fmt: skip


def gpu_node(node_id: str, region: str) -> Node:
    info = NodeInfo(
        shim_version="0.1.0",
        node_id=node_id,
        runtime=RuntimeInfo(name="llamacpp", version="b6000", upstream="http://127.0.0.1:8081", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", distribution="Ubuntu 24.04 LTS", kernel="6.8.0-45-generic", arch="x86_64",
                          cpu_model="AMD EPYC 9654 96-Core Processor", cpu_cores=16, ram_gib=125.7,
                          gpus=[GPUInfo(name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, driver_version="550.54.15")]),
        started_at=T0,
    )  # fmt: skip
    return Node(node_id=node_id, url="http://10.0.0.7:8080", region=region, info=info, provider_id="0xprov",
                provider_name="gpu-prov", fleet="golem")  # fmt: skip


@pytest.fixture
def signer(tmp_path: Path) -> ReceiptSigner:
    return ReceiptSigner.load_or_create(tmp_path / "keys" / "receipt-ed25519.pem")


@pytest.fixture
def run_db(tmp_path: Path, signer: ReceiptSigner):  # type: ignore[no-untyped-def]
    """A run with all four jobs answered and signed, on a real SQLite file."""
    suite = parse_suite(SUITE)
    path = tmp_path / "beacon.db"
    with Store(path) as store:
        run = store.create_run(suite, SUITE, expand_jobs(suite), {"kind": "golem"})
        for i, job in enumerate(store.jobs(run.run_id)):
            node = gpu_node(f"node-{job.region.lower()}", job.region)
            store.upsert_node(run.run_id, node)
            store.claim_job(job.job_id, node.node_id)
            result = gen_result(f"Answer {i} from {job.region}: I am a language model.")
            started, ended = T0 + timedelta(seconds=i), T0 + timedelta(seconds=i, milliseconds=200)
            receipt = signer.sign_legacy_result(job, node, node.node_id, result, started, ended)
            assert store.record_result(job.job_id, node.node_id, result, started, ended, receipt)
        yield path, run.run_id


def tamper(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def first_job(path: Path, run_id: str) -> str:
    with Store(path, readonly=True) as store:
        return store.jobs(run_id)[0].job_id


def problems_of(path: Path, run_id: str, trusted: list[str] | None = None) -> list[str]:
    with Store(path, readonly=True) as store:
        return verify_run(store, run_id, trusted_keys=trusted).problems


def test_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "receipt-ed25519.pem"
    first = ReceiptSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = ReceiptSigner.load_or_create(path)
    assert again.public_key == first.public_key
    assert len(base64.b64decode(first.public_key)) == 32
    assert local_public_key(path) == first.public_key
    assert local_public_key(tmp_path / "none.pem") is None
    path.write_text("garbage")
    with pytest.raises(BeaconError, match="not an unencrypted PEM private key"):
        ReceiptSigner.load_or_create(path)


def test_default_key_lives_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path))
    signer = ReceiptSigner.load_or_create()
    assert signer.path == tmp_path / "keys" / "receipt-ed25519.pem"
    assert local_public_key() == signer.public_key


def test_receipt_has_project_beacons_fields(run_db, signer: ReceiptSigner) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    with Store(path, readonly=True) as store:
        job = store.jobs(run_id)[0]
        row = store.results(run_id)[0]
    env = row.receipt
    assert env is not None
    assert set(env) == {"receipt", "result_hash", "algorithm", "public_key", "signature"}
    assert env["algorithm"] == "ed25519" and env["public_key"] == signer.public_key
    body = env["receipt"]
    assert set(body) == {"version", "job_id", "job_spec_hash", "runner_instance", "hardware", "environment", "run",
                         "created_at"}  # fmt: skip
    assert body["job_id"] == job.job_id
    canonical = json.dumps(job.spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert body["job_spec_hash"] == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert body["runner_instance"] == {"provider_id": "0xprov", "region": "US", "instance_id": "node-us"}
    assert body["hardware"] == {"cpu": "AMD EPYC 9654 96-Core Processor", "gpu": "NVIDIA H100 80GB HBM3",
                                "gpu_vram_gb": 79.6, "ram_gb": 125.7, "driver": "550.54.15"}  # fmt: skip
    assert body["environment"] == {"kernel": "6.8.0-45-generic", "os": "Ubuntu 24.04 LTS", "container_runtime": "golem-vm"}
    run = body["run"]
    assert set(run) == {"started_at", "ended_at", "tok_per_s", "p50_latency_ms", "p95_latency_ms", "cost_estimate",
                        "outputs_hash"}  # fmt: skip
    assert run["outputs_hash"] == "sha256:" + hashlib.sha256(row.text.encode()).hexdigest()
    assert run["tok_per_s"] == 40.0  # 8 tokens in 0.2 s
    assert run["p50_latency_ms"] == 25.0 and run["p95_latency_ms"] == 37.0
    assert datetime.fromisoformat(run["started_at"]) == T0
    assert verify_receipt(env, row.text, trusted_keys=[signer.public_key]) == []


def test_metrics_and_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    m = result_metrics(gen_result("x").model_copy(update={"itl_ms": [], "completion_tokens": None}))
    assert m == {"tok_per_s": None, "p50_latency_ms": None, "p95_latency_ms": None}


def test_verify_one_receipt_names_what_changed(signer: ReceiptSigner, tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    with Store(tmp_path / "x.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        job = store.jobs(run.run_id)[0]
    result = gen_result("The original answer.")
    env = signer.sign_legacy_result(job, gpu_node("n1", "US"), "n1", result, T0, T0)
    assert verify_receipt(env, "The original answer.") == []
    assert verify_receipt(env, "The original answer!") == [
        "outputs_hash mismatch: the answer text differs from the one signed"]  # fmt: skip

    altered = copy.deepcopy(env)
    altered["receipt"]["run"]["tok_per_s"] = 9999.0
    assert verify_receipt(altered, "The original answer.") == [
        "signature invalid: the receipt was altered after signing (or signed by another key)"]  # fmt: skip

    altered = copy.deepcopy(env)
    altered["receipt"]["run"]["outputs_hash"] = "sha256:" + hashlib.sha256(b"forged").hexdigest()
    problems = verify_receipt(altered, "forged")
    assert problems == ["signature invalid: the receipt was altered after signing (or signed by another key)"]

    # Re-signed by someone else's key: consistent, but not trusted.
    other = ReceiptSigner.load_or_create(tmp_path / "other.pem")
    forged = other.sign_legacy_result(job, None, "n1", gen_result("forged"), T0, T0)
    assert verify_receipt(forged, "forged") == []
    assert verify_receipt(forged, "forged", trusted_keys=[signer.public_key]) == [
        f"public_key: not a trusted key (signed by {other.public_key})"]  # fmt: skip

    assert verify_receipt({"receipt": {}}, None) == [
        "receipt: not a signed receipt (missing result_hash, public_key, signature)"]  # fmt: skip
    bad_sig = dict(env, signature="not base64!")
    assert verify_receipt(bad_sig, None)[0].startswith("signature invalid")


def test_untampered_run_verifies(run_db, signer: ReceiptSigner) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    with Store(path, readonly=True) as store:
        report = verify_run(store, run_id, trusted_keys=[signer.public_key])
    assert report.ok and report.checked == 4 and report.public_keys == [signer.public_key]


def test_tampered_text_in_db_fails_naming_the_item(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    job_id = first_job(path, run_id)
    tamper(path, "UPDATE results SET text = 'I am a censored model.' WHERE job_id = ?", (job_id,))
    problems = problems_of(path, run_id)
    assert problems == [
        f"{job_id} (identity/beacon-tiny/US): outputs_hash mismatch: the answer text differs from the one signed",
        f"{job_id} (identity/beacon-tiny/US): result.text differs from the stored answer text",
    ]


def test_tampered_number_in_stored_result_fails_naming_it(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    job_id = first_job(path, run_id)
    conn = sqlite3.connect(path)
    (result_json,) = conn.execute("SELECT result_json FROM results WHERE job_id = ?", (job_id,)).fetchone()
    data = json.loads(result_json)
    data["e2e_ms"] = 100.0  # makes the node look twice as fast
    conn.execute("UPDATE results SET result_json = ? WHERE job_id = ?", (json.dumps(data), job_id))
    conn.commit()
    conn.close()
    problems = problems_of(path, run_id)
    label = f"{job_id} (identity/beacon-tiny/US)"
    assert problems == [
        f"{label}: result_hash mismatch: the stored GenerationResult differs from the one signed",
        f"{label}: run.tok_per_s mismatch: receipt says 40.0, the stored result gives 80.0",
    ]


def test_tampered_timestamps_spec_and_receipt(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    with Store(path, readonly=True) as store:
        jobs = store.jobs(run_id)
    a, b, c, d = (j.job_id for j in jobs)
    tamper(path, "UPDATE results SET ended_at = '2030-01-01T00:00:00.000000+00:00' WHERE job_id = ?", (a,))
    tamper(path, "UPDATE jobs SET spec_json = replace(spec_json, 'Who are you?', 'Who are you really?') WHERE job_id = ?", (b,))
    tamper(path, "UPDATE results SET receipt_json = replace(receipt_json, '\"tok_per_s\":40.0', '\"tok_per_s\":400.0') WHERE job_id = ?", (c,))
    tamper(path, "UPDATE results SET receipt_json = NULL WHERE job_id = ?", (d,))
    problems = problems_of(path, run_id)
    assert problems == [
        f"{a} (identity/beacon-tiny/US): run.ended_at mismatch",
        f"{b} (identity/beacon-tiny/EU): job_spec_hash mismatch: the stored job spec differs from the one signed",
        f"{c} (tiananmen/beacon-tiny/US): signature invalid: the receipt was altered after signing (or signed by another key)",
        f"{c} (tiananmen/beacon-tiny/US): run.tok_per_s mismatch: receipt says 400.0, the stored result gives 40.0",
        f"{d} (tiananmen/beacon-tiny/EU): no receipt stored for this result",
    ]


def test_trusted_key_pinning(run_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    assert problems_of(path, run_id, trusted=[read_public_key(str(tmp_path / "keys" / "receipt-ed25519.pem"))]) == []
    other = ReceiptSigner.load_or_create(tmp_path / "other.pem")
    problems = problems_of(path, run_id, trusted=[other.public_key])
    assert len(problems) == 4 and all("public_key: not a trusted key" in p for p in problems)


def test_job_marked_done_without_a_result(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    path = tmp_path / "x.db"
    with Store(path) as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        job = store.jobs(run.run_id)[1]
    tamper(path, "UPDATE jobs SET state = 'done' WHERE job_id = ?", (job.job_id,))
    assert problems_of(path, run.run_id) == [
        f"{job.job_id} (identity/beacon-tiny/EU): job marked done but no result is stored"]  # fmt: skip


def test_receipt_issuer_for_the_dispatcher(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    with Store(tmp_path / "x.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        job = store.jobs(run.run_id)[0]
        issue = receipt_issuer(tmp_path / "data", run)
        node = Node(node_id="local-1", url="http://127.0.0.1:9000", region="US", fleet="local")
        result = gen_result("hi")
        env = issue(job, node, result, T0, T0 + timedelta(seconds=1))
        assert (tmp_path / "data" / "keys" / "receipt-ed25519.pem").is_file()
        assert env["schema_version"] == "v0.1.0" and env["jobspec_id"] == run.run_id  # a suite run: no JobSpec id
        assert env["execution_details"]["provider_id"] == "local:local-1" and env["execution_details"]["region"] == "US"
        assert env["provenance"]["provider_info"]["hardware"]["gpu"] is None
        assert env["output"]["metadata"]["run_manifest"] == "beacon-golem/run-manifest/v1"  # stored with the manifest
        manifest = issue.manifest_signer
        assert store.record_result(job.job_id, "local-1", result, T0, T0 + timedelta(seconds=1), env, manifest)
        report = verify_run(store, run.run_id, trusted_keys=[local_public_key(tmp_path / "data" / "keys" / "receipt-ed25519.pem")])  # type: ignore[list-item]
        assert report.ok and report.checked == 1 and report.manifest_count == 1


def test_read_public_key_forms(signer: ReceiptSigner, tmp_path: Path) -> None:
    assert read_public_key(signer.public_key) == signer.public_key
    (tmp_path / "pub.txt").write_text(signer.public_key + "\n")
    assert read_public_key(str(tmp_path / "pub.txt")) == signer.public_key
    assert read_public_key(str(signer.path)) == signer.public_key
    with pytest.raises(BeaconError, match="not an Ed25519 public key"):
        read_public_key("abc")
