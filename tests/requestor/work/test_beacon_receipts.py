"""Receipts in Beacon's Receipt v0.1.0, checked by an independent verifier written from beacon.md
(tests/beacon_reference.py); a store written by the previous version migrates and still verifies."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beacon_golem.cli import main
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import GPUInfo, Node, NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.requestor.store.schema import SCHEMA_VERSION
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.receipts import ReceiptSigner, build_beacon_receipt, verify_receipt, verify_run
from tests import beacon_reference as ref

SUITE = """\
name: beacon-receipts
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""
T0 = datetime(2025, 8, 22, 14, 34, 0, 120000, tzinfo=UTC)
#: Every field of Beacon's Receipt struct that is not omitempty.
RECEIPT_FIELDS = {"schema_version", "id", "jobspec_id", "execution_details", "output", "provenance", "created_at",
                  "completed_at", "signature", "public_key"}  # fmt: skip


def result(text: str) -> GenerationResult:
    return GenerationResult(
        text=text, finish_reason="stop", prompt_tokens=11, completion_tokens=8, token_count_source="server",
        ttft_ms=20.0, e2e_ms=200.0, itl_ms=[10.0, 30.0, 20.0, 40.0, 25.0, 25.0, 30.0], runtime="llamacpp",
        model="beacon-tiny",
    )  # fmt: skip


def golem_node(region: str) -> Node:
    info = NodeInfo(
        shim_version="0.1.0", node_id=f"n-{region}",
        runtime=RuntimeInfo(name="llamacpp", version="b6000", upstream="http://127.0.0.1:8081", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", distribution="Ubuntu 24.04 LTS", kernel="6.8.0", arch="x86_64", cpu_model="EPYC",
                          ram_gib=125.7, gpus=[GPUInfo(name="NVIDIA H100", memory_total_mib=81559, driver_version="550")]),
        started_at=T0,
    )  # fmt: skip
    return Node(node_id=f"n-{region}", url="http://10.0.0.7:8080", region=region, info=info, provider_id="0xprov",
                fleet="golem", extra={"offer": {"hourly_glm": "0.36"}, "glm_spent": 0.01})  # fmt: skip


@pytest.fixture
def signer(tmp_path: Path) -> ReceiptSigner:
    return ReceiptSigner.load_or_create(tmp_path / "keys" / "receipt-ed25519.pem")


def test_a_receipt_beacons_verifier_accepts_carrying_what_we_record(tmp_path: Path, signer: ReceiptSigner) -> None:
    suite = parse_suite(SUITE)
    with Store(tmp_path / "b.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        job = store.jobs(run.run_id)[0]
    res = result("I am a language model <trained> & tested — café.")
    receipt = signer.sign_beacon(build_beacon_receipt(job, golem_node("US"), "n-US", res, T0, T0 + timedelta(milliseconds=200),
                                 jobspec_id="who-are-you-1", benchmark_hash="sha256:abc"))  # fmt: skip
    assert set(receipt) == RECEIPT_FIELDS  # omitempty fields (attestations, cross_region_data) left out
    assert ref.verify_beacon_receipt(receipt)
    assert verify_receipt(receipt, res.text, trusted_keys=[signer.public_key], result_json=res.model_dump_json()) == []
    d = receipt["execution_details"]
    assert (d["task_id"], d["provider_id"], d["region"], d["status"]) == (job.job_id, "0xprov", "US", "completed")
    assert d["started_at"] == "2025-08-22T14:34:00.12Z" and d["duration"] == 200_000_000  # Go's forms
    assert receipt["jobspec_id"] == "who-are-you-1" and receipt["provenance"]["benchmark_hash"] == "sha256:abc"
    assert receipt["output"]["data"] == {"response": res.text}
    assert receipt["output"]["hash"] == hashlib.sha256(ref.canonical({"response": res.text})).hexdigest()
    meta = receipt["output"]["metadata"]
    assert (meta["completion_tokens"], meta["token_count_source"], meta["tok_per_s"], meta["p95_latency_ms"]) == (
        8,
        "server",
        40.0,
        37.0,
    )
    assert meta["result_hash"].startswith("sha256:") and meta["job_spec_hash"].startswith("sha256:")
    info = receipt["provenance"]["provider_info"]
    assert info["fingerprint_hash"].startswith("sha256:") and info["hardware"]["gpu"] == "NVIDIA H100"
    assert info["glm"]["hourly_glm"] == 0.36 and info["glm"]["estimate_glm"] == pytest.approx(0.36 * 0.2 / 3600)
    assert receipt["provenance"]["execution_env"]["runtime_version"] == "b6000"

    for path, value in ((("output", "data", "response"), "I am a censored model."),
                        (("output", "metadata", "tok_per_s"), 4000.0),
                        (("provenance", "provider_info", "glm"), None),
                        (("execution_details", "region"), "EU")):  # fmt: skip
        altered = copy.deepcopy(receipt)
        node = altered
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert not ref.verify_beacon_receipt(altered), path
        assert "signature invalid: the receipt was altered after signing (or signed by another key)" in verify_receipt(
            altered, None
        )
    extra = receipt | {"note": "added later"}
    assert verify_receipt(extra, None) == ["fields outside Beacon's Receipt are not signed: note"]


def _old_store(tmp_path: Path, signer: ReceiptSigner) -> tuple[Path, str]:
    """A run as the previous version stored it: schema 3, envelope receipts, one job left to do."""
    from tests.requestor.test_store import as_schema_3

    suite = parse_suite(SUITE)
    path = tmp_path / "old.db"
    with Store(path) as store:
        run = store.create_run(suite, SUITE, expand_jobs(suite), {"kind": "golem"})
        for i, job in enumerate(store.jobs(run.run_id)[:3]):
            node = golem_node(job.region)
            store.upsert_node(run.run_id, node)
            store.claim_job(job.job_id, node.node_id)
            res = result(f"Answer {i}")
            t = T0 + timedelta(seconds=i)
            store.record_result(
                job.job_id, node.node_id, res, t, t, signer.sign_legacy_result(job, node, node.node_id, res, t, t)
            )
        store.finish_run(run.run_id, "interrupted")
    as_schema_3(path)
    return path, run.run_id


def _receipts(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT job_id, receipt_json FROM results ORDER BY job_id").fetchall()


def answer_one_pending(store: Store, run_id: str, signer: ReceiptSigner) -> None:
    """A pending job of an old store answered now, with Beacon's receipt."""
    job = store.jobs(run_id, states=["pending"])[0]
    node = golem_node(job.region)
    res = result("Answer 3")
    receipt = signer.sign_beacon(build_beacon_receipt(job, node, node.node_id, res, T0, T0))
    store.record_result(job.job_id, node.node_id, res, T0, T0, receipt)


def test_a_store_of_the_previous_version_migrates_keeps_and_verifies_its_receipts(
    tmp_path: Path, signer: ReceiptSigner
) -> None:
    path, run_id = _old_store(tmp_path, signer)
    before = _receipts(path)
    with Store(path, readonly=True) as ro:  # read as it is
        assert ro.schema_version() == 3 and ro.get_run(run_id).jobspec is None
        assert verify_run(ro, run_id, trusted_keys=[signer.public_key]).ok
    with Store(path) as store:  # migrated for writing; a resumed job gets Beacon's receipt beside the old ones
        assert store.schema_version() == SCHEMA_VERSION  # 3 -> 4 -> 5 (runs.jobspec_json) -> ...
        answer_one_pending(store, run_id, signer)
        report = verify_run(store, run_id, trusted_keys=[signer.public_key])
        assert report.ok and report.checked == 4
    after = _receipts(path)
    assert after[:3] == before  # nothing re-signed, nothing lost
    assert json.loads(after[3][1])["schema_version"] == "v0.1.0"
    assert all("schema_version" not in json.loads(r) for _, r in after[:3])


def test_export_as_beacon_stores_executions(
    tmp_path: Path, signer: ReceiptSigner, capsys: pytest.CaptureFixture[str]
) -> None:
    path, run_id = _old_store(tmp_path, signer)
    with Store(path) as store:
        answer_one_pending(store, run_id, signer)
    with pytest.raises(SystemExit) as done:
        main(["runs", "export", run_id, "--format", "beacon", "--db", str(path)])
    assert done.value.code in (0, None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    new = lines[3]
    assert set(new["output"]) == {"response", "provider", "metadata"} and new["output"]["response"] == "Answer 3"
    assert new["output"]["metadata"]["region"] == "eu-west" and new["output"]["metadata"]["provider_type"] == "golem"
    assert new["receipt_format"] == "v0.1.0" and ref.verify_beacon_receipt(new["receipt"])
    assert new["job_id"] == run_id and new["region"] == "EU" and new["completed_at"].endswith("Z")
    assert [line["receipt_format"] for line in lines[:3]] == ["envelope-1.0"] * 3
