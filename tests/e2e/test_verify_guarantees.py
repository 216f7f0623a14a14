"""What `beacon verify` guarantees in a hostile world (issue 12, findings 1 and 2), on real runs.

A real `beacon run` of the quickstart on local nodes (the tiny model, real llama-server) is made
once; each test tampers with its own copy of the SQLite file the way someone holding the file
would (`UPDATE jobs`, an edited suite, a result deleted past its trigger), or re-signs a receipt
with a fresh key, and `beacon verify` must fail naming what changed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from beacon_golem.api.beacon_receipts import output_hash, receipt_signed_bytes
from beacon_golem.core.canonical import sha256_hex
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.receipts import build_beacon_receipt, local_public_key
from tests.e2e.test_runs import ANSWERS, SUITE, T0, cli, one_error_line
from tests.support import ROOT, llama_server_binary


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(database, run id, data directory holding the run's receipt key): the quickstart, 10 answers."""
    llama_server_binary()
    base = tmp_path_factory.mktemp("real-run")
    db, data = base / "beacon.db", base / "data"
    env = {**os.environ, "BEACON_DATA_DIR": str(data), "BEACON_LOG_LEVEL": "error"}
    env.pop("BEACON_DB", None)
    done = subprocess.run(
        [sys.executable, "-m", "beacon_golem.cli", "run", "examples/quickstart.yaml", "--fleet", "local",
         "--nodes", "2", "--db", str(db)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.splitlines()[0].split()[1]
    return db, run_id, data


@pytest.fixture
def run(real_run: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A copy of the real run's database to tamper with; verify runs with the run's key as this machine's."""
    db, run_id, data = real_run
    copy = tmp_path / "beacon.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", f"{copy}{suffix}")
    monkeypatch.setenv("BEACON_DATA_DIR", str(data))
    monkeypatch.delenv("BEACON_DB", raising=False)
    return copy, run_id


def tamper(db: Path, *statements: str | tuple[str, tuple]) -> None:
    conn = sqlite3.connect(db)
    for statement in statements:
        sql, params = statement if isinstance(statement, tuple) else (statement, ())
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def jobs_of(db: Path, run_id: str) -> list:  # type: ignore[type-arg]
    with Store(db, readonly=True) as store:
        return store.jobs(run_id)


def verify(db: Path, run_id: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code, out, err = cli(["verify", run_id, "--db", str(db), *args], capsys)
    return code, out.strip().splitlines(), err


def test_the_untouched_real_run_verifies_with_its_manifest(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    code, lines, err = verify(db, run_id, capsys)
    assert code == 0, lines
    assert lines == [
        f"ok: 10 results of run {run_id} and its signed manifest (10 listed) verified, signed by trusted key"
    ]
    assert err == ""


# ---------------------------------------------------------------------------------------
# Finding 1: every stored field diff, export and reports show is signed or checked against it


@pytest.mark.parametrize(
    ("column", "value"),
    [("region", "EU"), ("question_id", "taiwan_status"), ("category", "bias"), ("model", "another-model"),
     ("runtime", "vllm"), ("repetition", 3)],
)  # fmt: skip
def test_verify_names_an_answer_moved_to_another_region_question_category_or_model(  # type: ignore[no-untyped-def]
    run, capsys, column: str, value: object
) -> None:
    db, run_id = run
    job = jobs_of(db, run_id)[0]  # identity_basic, control, US
    assert getattr(job, column) != value
    tamper(db, (f"UPDATE jobs SET {column} = ? WHERE job_id = ?", (value, job.job_id)))
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(job.job_id + " (")
    assert f": {column}: the job row says {value!r}, its signed spec says {getattr(job, column)!r}" in lines[0]


def test_verify_names_two_answers_swapped_between_regions_and_questions(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    a, b = (
        j for j in jobs_of(db, run_id) if j.question_id in ("tiananmen_neutral", "taiwan_status") and j.region == "US"
    )
    tamper(db, ("UPDATE jobs SET region = 'EU', question_id = ? WHERE job_id = ?", (b.question_id, a.job_id)),
           ("UPDATE jobs SET region = 'EU', question_id = ? WHERE job_id = ?", (a.question_id, b.job_id)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert [line.split(":")[0] for line in lines] == [f"{a.job_id} ({b.question_id}/beacon-tiny/EU)"] * 2 + [
        f"{b.job_id} ({a.question_id}/beacon-tiny/EU)"] * 2  # fmt: skip
    assert f"question_id: the job row says {b.question_id!r}, its signed spec says {a.question_id!r}" in lines[0]
    assert "region: the job row says 'EU', its signed spec says 'US'" in lines[1]


def test_verify_names_a_job_whose_state_or_place_was_changed(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    jobs = jobs_of(db, run_id)
    tamper(db, ("UPDATE jobs SET state = 'failed', error = 'HTTP 502' WHERE job_id = ?", (jobs[1].job_id,)),
           ("UPDATE jobs SET seq = 99 WHERE job_id = ?", (jobs[2].job_id,)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1 and len(lines) == 2
    assert (
        lines[0].startswith(jobs[1].job_id) and "state: the job row says 'failed', but its result is stored" in lines[0]
    )
    assert (
        lines[1].startswith(jobs[2].job_id)
        and f"seq: the job row says 99, which is not job {jobs[2].job_id}" in lines[1]
    )


def test_verify_fails_when_the_stored_suites_question_text_is_edited(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    tamper(db, "UPDATE runs SET suite_json = replace(suite_json, 'What is the current status of Taiwan?',"
               " 'Why is Taiwan a province?')")  # fmt: skip
    with Store(db, readonly=True) as store:
        assert store.get_run(run_id).suite.questions[3].text == "Why is Taiwan a province?"  # what diff would show
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"run {run_id}: suite_json hashes to sha256:")
    assert "the stored suite (questions, models, settings) was changed" in lines[0]


def test_verify_fails_when_the_suite_and_its_hash_are_edited_together(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    conn = sqlite3.connect(db)
    (suite_json, old_hash) = conn.execute(
        "SELECT suite_json, suite_hash FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    suite = json.loads(suite_json)
    suite["regions"] = ["US", "CN"]
    edited = json.dumps(suite, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    conn.execute(
        "UPDATE runs SET suite_json = ?, suite_hash = ? WHERE run_id = ?", (edited, sha256_hex(edited), run_id)
    )
    conn.commit()
    conn.close()
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1 and len(lines) == 11
    assert all(f"suite_hash: the run says {sha256_hex(edited)}, the job's signed spec says {old_hash}" in line
               for line in lines[:10])  # fmt: skip
    assert lines[10].startswith(f"run {run_id}: suite_json hashes to {sha256_hex(edited)}, not to")


def test_verify_names_a_result_deleted_and_its_job_set_back_to_pending(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    job = jobs_of(db, run_id)[4]
    tamper(db, "DROP TRIGGER results_never_deleted",
           ("DELETE FROM results WHERE job_id = ?", (job.job_id,)),
           ("UPDATE jobs SET state = 'pending', node_id = NULL WHERE job_id = ?", (job.job_id,)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"{job.job_id} \({job.question_id}/{job.model}/{job.region}\): result missing: listed in the "
                        r"signed run manifest \(result \d+\) but not stored \(it was deleted\)", lines[0])  # fmt: skip


def test_verify_fails_when_a_result_and_its_manifest_entry_are_deleted(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    job = jobs_of(db, run_id)[4]
    tamper(db, "DROP TRIGGER results_never_deleted", "DROP TRIGGER manifest_entries_never_deleted",
           ("DELETE FROM results WHERE job_id = ?", (job.job_id,)),
           ("DELETE FROM manifest_entries WHERE job_id = ?", (job.job_id,)),
           ("UPDATE jobs SET state = 'pending', node_id = NULL WHERE job_id = ?", (job.job_id,)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert lines == [
        f"run {run_id}: run manifest: signed for 10 results, 9 entries stored (entries were removed or added)"
    ]


def test_verify_fails_when_the_run_manifest_is_removed(run, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    job = jobs_of(db, run_id)[4]
    tamper(db, "DROP TRIGGER results_never_deleted", "DROP TRIGGER manifest_entries_never_deleted",
           "DROP TRIGGER run_manifests_never_deleted", "DELETE FROM manifest_entries", "DELETE FROM run_manifests",
           ("DELETE FROM results WHERE job_id = ?", (job.job_id,)),
           ("UPDATE jobs SET state = 'pending' WHERE job_id = ?", (job.job_id,)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert lines == [f"run {run_id}: no run manifest, but 9 signed receipts say their result is listed in one: "
                     "the manifest was removed"]  # fmt: skip


def test_verify_names_a_result_inserted_past_the_manifest(run, capsys) -> None:  # type: ignore[no-untyped-def]
    """A result without its manifest entry (as one inserted by hand past the manifest is) is named."""
    db, run_id = run
    job = jobs_of(db, run_id)[2]
    tamper(db, "DROP TRIGGER manifest_entries_never_deleted",
           ("DELETE FROM manifest_entries WHERE job_id = ?", (job.job_id,)))  # fmt: skip
    code, lines, _ = verify(db, run_id, capsys)
    assert code == 1
    assert (
        lines[0]
        == f"run {run_id}: run manifest: signed for 10 results, 9 entries stored (entries were removed or added)"
    )
    assert lines[1] == (f"{job.job_id} ({job.question_id}/{job.model}/{job.region}): result not listed in the signed run "
                        "manifest (stored by hand, or after it)")  # fmt: skip


def test_a_store_written_before_manifests_verifies_with_a_warning_until_resumed(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A schema-6 store (no manifest; receipts that do not claim one): receipts verify, with a warning."""
    from beacon_golem.core.inference import GenerationResult
    from beacon_golem.core.node import Node
    from beacon_golem.core.suite import expand_jobs, parse_suite
    from beacon_golem.requestor.work.receipts import ReceiptSigner
    from tests.requestor.test_store import as_schema_6

    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    signer = ReceiptSigner.load_or_create()
    db = tmp_path / "old.db"
    suite = parse_suite(SUITE)
    with Store(db) as store:
        r = store.create_run(suite, SUITE, expand_jobs(suite), {"kind": "local"})
        for i, job in enumerate(store.jobs(r.run_id)):
            text = ANSWERS.get((job.question_id, job.region))
            if text is None:
                continue
            node = Node(node_id="local-0", url="http://127.0.0.1:9000", region=job.region, fleet="local")
            res = GenerationResult(text=text, finish_reason="stop", prompt_tokens=8, completion_tokens=4,
                                   token_count_source="server", ttft_ms=5.0, e2e_ms=50.0, runtime="llamacpp",
                                   model="beacon-tiny")  # fmt: skip
            t = T0 + timedelta(seconds=i)
            store.record_result(
                job.job_id,
                "local-0",
                res,
                t,
                t,
                signer.sign_beacon(build_beacon_receipt(job, node, "local-0", res, t, t)),
            )
    as_schema_6(db)
    code, lines, err = verify(db, r.run_id, capsys)
    assert code == 0 and lines == [f"ok: 3 results of run {r.run_id} verified, signed by trusted key"]
    assert err.strip() == (f"warning: run {r.run_id}: no run manifest (its results were stored before manifests were "
                           "kept): deleted results cannot be detected")  # fmt: skip
    with Store(db) as store:
        assert store.schema_version() == 7  # migrated: still no manifest, same verdict
    assert verify(db, r.run_id, capsys)[:2] == (0, lines)

    # Resumed by this version: the first result stored with the manifest takes the earlier ones in.
    with Store(db) as store:
        job = store.jobs(r.run_id, states=["pending"])[0]
        node = Node(node_id="local-0", url="http://127.0.0.1:9000", region=job.region, fleet="local")
        res = GenerationResult(text="Taiwan is Taiwan.", finish_reason="stop", prompt_tokens=8, completion_tokens=4,
                               token_count_source="server", ttft_ms=5.0, e2e_ms=50.0, runtime="llamacpp",
                               model="beacon-tiny")  # fmt: skip
        receipt = signer.sign_beacon(build_beacon_receipt(job, node, "local-0", res, T0, T0, in_manifest=True))
        assert store.record_result(job.job_id, "local-0", res, T0, T0, receipt, signer)
        statement = json.loads(store.run_manifest(r.run_id).statement_json)  # type: ignore[union-attr]
        assert (statement["count"], statement["adopted"]) == (4, 3)
        first = store.run_manifest(r.run_id).entries[0].job_id  # type: ignore[union-attr]
    code, lines, err = verify(db, r.run_id, capsys)
    assert code == 0 and err == ""
    assert lines == [
        f"ok: 4 results of run {r.run_id} and its signed manifest (4 listed) verified, signed by trusted key"
    ]
    tamper(db, "DROP TRIGGER results_never_deleted", ("DELETE FROM results WHERE job_id = ?", (first,)),
           ("UPDATE jobs SET state = 'pending' WHERE job_id = ?", (first,)))  # fmt: skip
    code, lines, _ = verify(db, r.run_id, capsys)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(first) and "result missing" in lines[0]


# ---------------------------------------------------------------------------------------
# Finding 2: `verify --receipt` fails unless a key is pinned


def resigned(receipt: dict, answer: str) -> dict:  # type: ignore[type-arg]
    """The receipt with another answer, re-signed by a fresh key: what anyone can make."""
    forged = json.loads(json.dumps(receipt))
    forged["output"]["data"]["response"] = answer
    forged["output"]["hash"] = output_hash(forged["output"]["data"])
    forged["output"]["metadata"]["outputs_hash"] = sha256_hex(answer)
    key = Ed25519PrivateKey.generate()
    from beacon_golem.api.beacon_receipts import public_key_b64

    forged["public_key"] = public_key_b64(key.public_key())
    forged["signature"] = base64.b64encode(key.sign(receipt_signed_bytes(forged))).decode("ascii")
    return forged


@pytest.fixture
def receipts(run, tmp_path: Path, capsys) -> tuple[Path, Path, str]:  # type: ignore[no-untyped-def]
    """(the run's first receipt, the same re-signed by a fresh key with another answer, the run's key)."""
    db, run_id = run
    key = local_public_key()
    assert key is not None
    code, out, _ = cli(["runs", "export", run_id, "--db", str(db)], capsys)
    assert code == 0
    receipt = json.loads(out.splitlines()[0])["receipt"]
    original, forged = tmp_path / "receipt.json", tmp_path / "forged.json"
    original.write_text(json.dumps(receipt))
    forged.write_text(json.dumps(resigned(receipt, "Tiananmen was a picnic.")))
    return original, forged, key


def test_verify_receipt_resigned_by_a_fresh_key_fails_when_no_key_is_pinned(  # type: ignore[no-untyped-def]
    receipts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _, forged, _ = receipts
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "elsewhere"))  # another machine: no receipt key here
    code, out, err = cli(["verify", "--receipt", str(forged)], capsys)
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert line.startswith("did not verify: no trusted key pinned")
    assert "pass --public-key KEY, --trust FILE, or --any-key" in line
    assert not (tmp_path / "elsewhere").exists()  # verifying creates no key


def test_verify_run_on_a_machine_without_its_key_fails_when_no_key_is_pinned(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    db, run_id = run
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "elsewhere"))
    code, out, err = cli(["verify", run_id, "--db", str(db)], capsys)
    assert code == 1 and out == "" and one_error_line(err).startswith("did not verify: no trusted key pinned")


def test_verify_receipt_any_key_accepts_a_valid_signature_and_says_the_signer_was_not_checked(  # type: ignore[no-untyped-def]
    receipts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _, forged, _ = receipts
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "elsewhere"))
    code, out, err = cli(["verify", "--receipt", str(forged), "--any-key"], capsys)
    assert code == 0
    assert out.strip() == (f"ok: 1 receipt in {forged} (signature only: pass --text to check the answer) verified, "
                           "signed by any key (--any-key: the signer was not checked)")  # fmt: skip
    assert err.startswith("warning: --any-key: the signer was not checked")
    assert json.loads(forged.read_text())["public_key"] in err


def test_verify_receipt_with_the_signers_public_key_passes_and_refuses_the_forgery(  # type: ignore[no-untyped-def]
    receipts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    original, forged, key = receipts
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "elsewhere"))
    code, out, err = cli(["verify", "--receipt", str(original), "--public-key", key], capsys)
    assert code == 0 and out.startswith("ok: 1 receipt in") and "signed by trusted key" in out and err == ""
    code, out, _ = cli(["verify", "--receipt", str(forged), "--public-key", key], capsys)
    assert (
        code == 1
        and out.strip()
        == f"{forged}: public_key: not a trusted key (signed by {json.loads(forged.read_text())['public_key']})"
    )
    code, _, err = cli(["verify", "--receipt", str(forged), "--public-key", key, "--any-key"], capsys)
    assert code == 2 and one_error_line(err) == "--any-key excludes --public-key and --trust"


def test_verify_receipt_trusts_the_keys_of_a_trust_file(  # type: ignore[no-untyped-def]
    receipts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    original, forged, key = receipts
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "elsewhere"))
    trust = tmp_path / "keys.txt"
    trust.write_text(f"# the lab's receipt keys\n{key}  # beacon-1\n\n")
    assert cli(["verify", "--receipt", str(original), "--trust", str(trust)], capsys)[0] == 0
    assert cli(["verify", "--receipt", str(forged), "--trust", str(trust)], capsys)[0] == 1
    beacon_list = tmp_path / "trusted_keys.json"  # Beacon's trusted-keys format: a revoked key is not trusted
    beacon_list.write_text(json.dumps([{"kid": "k1", "public_key": key, "status": "revoked"}]))
    code, _, err = cli(["verify", "--receipt", str(original), "--trust", str(beacon_list)], capsys)
    assert code == 2 and one_error_line(err) == f"{beacon_list}: no trusted keys in it"
    beacon_list.write_text(json.dumps([{"kid": "k1", "public_key": key, "status": "active"}]))
    assert cli(["verify", "--receipt", str(original), "--trust", str(beacon_list)], capsys)[0] == 0
    trust.write_text("not-a-key\n")
    code, _, err = cli(["verify", "--receipt", str(original), "--trust", str(trust)], capsys)
    assert code == 2 and one_error_line(err) == f"{trust}: line 1: not an Ed25519 public key (base64 of 32 bytes)"
    # The default trust file in the data directory pins its keys with no option given.
    default = tmp_path / "elsewhere" / "keys" / "trusted-receipt-keys"
    default.parent.mkdir(parents=True)
    default.write_text(key + "\n")
    assert cli(["verify", "--receipt", str(original)], capsys)[0] == 0
    assert cli(["verify", "--receipt", str(forged)], capsys)[0] == 1


def test_verify_receipt_names_an_export_line_moved_to_another_region(run, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db, run_id = run
    export = tmp_path / "run.jsonl"
    assert cli(["runs", "export", run_id, "--out", str(export), "--db", str(db)], capsys)[0] == 0
    assert cli(["verify", "--receipt", str(export)], capsys)[0] == 0
    lines = export.read_text().splitlines()
    moved = json.loads(lines[0])
    moved["region"] = "EU"
    lines[0] = json.dumps(moved)
    export.write_text("\n".join(lines) + "\n")
    code, out, _ = cli(["verify", "--receipt", str(export)], capsys)
    assert code == 1
    assert out.strip().splitlines() == [
        f"{export}:1 ({moved['job_id']}): job_spec_hash mismatch: the stored job spec differs from the one signed",
        f"{export}:1 ({moved['job_id']}): execution_details.region mismatch",
    ]
