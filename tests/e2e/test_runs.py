"""`beacon runs|verify|import-jobspec|diff` against real SQLite files: output, exit codes, one-line errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from beacon_golem.cli import main
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import Node
from beacon_golem.core.suite import expand_jobs, load_suite, parse_suite
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.receipts import ReceiptSigner, build_beacon_receipt
from tests.support import DATA, ROOT

BEACON = Path(sys.executable).with_name("beacon")
T0 = datetime(2025, 8, 22, 14, 34, tzinfo=UTC)

SUITE = """\
name: cli-test
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""
ANSWERS = {
    ("identity", "US"): "I am a helpful assistant.",
    ("identity", "EU"): "I am a helpful assistant.",
    ("taiwan", "US"): "Taiwan governs itself; its status is disputed.",
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data directory (receipt key, default database)."""
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BEACON_DB", raising=False)
    from beacon_golem.cli import runs

    monkeypatch.setattr(runs, "out", Console(width=250))
    return tmp_path / "data"


@pytest.fixture
def recorded(tmp_path: Path, data_dir: Path) -> tuple[Path, str]:
    """A finished run: three answers with signed receipts and the run's signed manifest, one failed job,
    two nodes, events."""
    suite = parse_suite(SUITE)
    signer = ReceiptSigner.load_or_create()  # the data directory's key
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run = store.create_run(suite, SUITE, expand_jobs(suite), {"kind": "local", "nodes": 2})
        for region in ("US", "EU"):
            node = Node(node_id=f"local-{region.lower()}", url="http://127.0.0.1:9000", region=region, fleet="local")
            store.upsert_node(run.run_id, node)
            store.add_event(run.run_id, "node_added", node_id=node.node_id, region=region)
        for i, job in enumerate(store.jobs(run.run_id)):
            node_id = f"local-{job.region.lower()}"
            store.claim_job(job.job_id, node_id)
            text = ANSWERS.get((job.question_id, job.region))
            if text is None:
                store.fail_job(job.job_id, "HTTP 502 three times")
                continue
            result = GenerationResult(text=text, finish_reason="stop", prompt_tokens=8, completion_tokens=6,
                                      token_count_source="server", ttft_ms=5.0, e2e_ms=60.0, itl_ms=[10.0] * 5,
                                      runtime="llamacpp", model="beacon-tiny")  # fmt: skip
            node = store.get_node(run.run_id, node_id)
            started, ended = T0 + timedelta(seconds=i), T0 + timedelta(seconds=i, milliseconds=60)
            receipt = signer.sign_beacon(
                build_beacon_receipt(job, node, node_id, result, started, ended, in_manifest=True)
            )
            store.record_result(job.job_id, node_id, result, started, ended, receipt, signer)  # as the dispatcher does
        store.finish_run(run.run_id, "failed")
    return path, run.run_id


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `beacon ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    code = info.value.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else (0 if code is None else 1)), captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0][len("error: ") :]


# ---------------------------------------------------------------------------------------
# runs list | show | export


def test_runs_list_and_show(recorded, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    before = digest(path)
    code, out, _ = cli(["runs", "list", "--db", str(path)], capsys)
    assert code == 0
    assert run_id in out and "cli-test" in out and "failed" in out
    code, out, _ = cli(["runs", "show", run_id[:12], "--db", str(path), "--events"], capsys)
    assert code == 0
    assert f"run {run_id}" in out
    assert "local-us" in out and "local-eu" in out
    assert "I am a helpful assistant." in out and "HTTP 502 three times" in out
    assert "node_added" in out
    assert digest(path) == before  # reading never writes


def test_runs_list_empty_and_missing_db(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(["runs", "list", "--db", str(tmp_path / "none.db")], capsys)
    assert code == 2 and one_error_line(err).startswith(f"{tmp_path / 'none.db'}: no such database")
    assert not (tmp_path / "none.db").exists()
    Store(tmp_path / "empty.db").close()
    code, out, _ = cli(["runs", "list", "--db", str(tmp_path / "empty.db")], capsys)
    assert code == 0 and "no runs in" in out


def test_show_unknown_run(recorded, capsys) -> None:  # type: ignore[no-untyped-def]
    path, _ = recorded
    code, _, err = cli(["runs", "show", "nope", "--db", str(path)], capsys)
    assert code == 2 and one_error_line(err) == f"no run 'nope' in {path}"


def test_export_jsonl_and_csv(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    code, out, _ = cli(["runs", "export", run_id, "--db", str(path)], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    first = records[0]
    assert (first["question_id"], first["region"], first["state"], first["text"]) == (
        "identity", "US", "done", "I am a helpful assistant.")  # fmt: skip
    assert (
        first["result"]["completion_tokens"] == 6
        and first["receipt"]["execution_details"]["task_id"] == first["job_id"]
    )
    assert first["request"]["messages"][-1]["content"] == "Who are you?"
    failed = records[3]
    assert failed["state"] == "failed" and failed["text"] is None and failed["error"] == "HTTP 502 three times"

    out_file = tmp_path / "out" / "run.csv"
    code, _, err = cli(["runs", "export", run_id, "--format", "csv", "--out", str(out_file), "--db", str(path)], capsys)
    assert code == 0 and "wrote 4 jobs" in err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert len(rows) == 4
    assert rows[2]["text"] == "Taiwan governs itself; its status is disputed."
    assert rows[2]["tok_per_s"] == "100.0" and rows[2]["outputs_hash"].startswith("sha256:")
    assert rows[3]["state"] == "failed" and rows[3]["text"] == ""

    code, _, err = cli(["runs", "export", run_id, "--format", "xml", "--db", str(path)], capsys)
    assert code == 2 and one_error_line(err) == "--format: 'xml' is not one of jsonl, csv, beacon"


# ---------------------------------------------------------------------------------------
# verify


def test_verify_run_ok_and_untouched(recorded, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    before = digest(path)
    code, out, _ = cli(["verify", run_id, "--db", str(path)], capsys)
    assert code == 0
    assert out.strip() == f"ok: 3 results of run {run_id} and its signed manifest (3 listed) verified, signed by trusted key"  # fmt: skip
    assert digest(path) == before


def test_verify_names_tampered_text_and_number(recorded, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    with Store(path, readonly=True) as store:
        jobs = store.jobs(run_id)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE results SET text = 'I am a different assistant.' WHERE job_id = ?", (jobs[0].job_id,))
    (raw,) = conn.execute("SELECT result_json FROM results WHERE job_id = ?", (jobs[2].job_id,)).fetchone()
    conn.execute("UPDATE results SET result_json = ? WHERE job_id = ?",
                 (raw.replace('"completion_tokens":6', '"completion_tokens":60'), jobs[2].job_id))  # fmt: skip
    conn.commit()
    conn.close()
    code, out, _ = cli(["verify", run_id, "--db", str(path)], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        f"{jobs[0].job_id} (identity/beacon-tiny/US): outputs_hash mismatch: the answer text differs from the one signed",
        f"{jobs[0].job_id} (identity/beacon-tiny/US): result.text differs from the stored answer text",
        f"{jobs[2].job_id} (taiwan/beacon-tiny/US): result_hash mismatch: the stored GenerationResult differs from the one signed",
        f"{jobs[2].job_id} (taiwan/beacon-tiny/US): output.metadata.tok_per_s mismatch: receipt says 100.0, the stored result gives 1000.0",
    ]


def test_verify_key_pinning(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    other = ReceiptSigner.load_or_create(tmp_path / "other.pem")
    code, out, _ = cli(["verify", run_id, "--db", str(path), "--public-key", other.public_key], capsys)
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 4 and all("not a trusted key" in line for line in lines)
    assert lines[3].startswith(f"run {run_id}: run manifest: public_key: not a trusted key")
    code, out, _ = cli(["verify", run_id, "--db", str(path), "--any-key"], capsys)
    assert code == 0 and "any key" in out


def test_verify_receipt_files(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    export = tmp_path / "run.jsonl"
    assert cli(["runs", "export", run_id, "--out", str(export), "--db", str(path)], capsys)[0] == 0
    code, out, _ = cli(["verify", "--receipt", str(export)], capsys)
    assert code == 0 and out.startswith("ok: 3 receipts in")

    lines = export.read_text().splitlines()
    doctored = json.loads(lines[1])
    doctored["text"] = "I am a doctored assistant."
    lines[1] = json.dumps(doctored)
    export.write_text("\n".join(lines) + "\n")
    code, out, _ = cli(["verify", "--receipt", str(export)], capsys)
    assert code == 1
    assert out.strip().splitlines() == [
        f"{export}:2 ({doctored['job_id']}): outputs_hash mismatch: the answer text differs from the one signed",
        f"{export}:2 ({doctored['job_id']}): result.text differs from the stored answer text",
    ]

    single = tmp_path / "receipt.json"
    single.write_text(json.dumps(json.loads(lines[0])["receipt"]))
    answer = tmp_path / "answer.txt"
    answer.write_text("I am a helpful assistant.")
    code, out, _ = cli(["verify", "--receipt", str(single), "--text", str(answer)], capsys)
    assert code == 0, out
    answer.write_text("I am a helpful assistant!")
    code, out, _ = cli(["verify", "--receipt", str(single), "--text", str(answer)], capsys)
    assert code == 1 and out.strip() == f"{single}: outputs_hash mismatch: the answer text differs from the one signed"
    code, out, _ = cli(["verify", "--receipt", str(single)], capsys)
    assert code == 0 and "signature only" in out


def test_verify_usage_errors(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    code, _, err = cli(["verify"], capsys)
    assert code == 2 and one_error_line(err) == "give a RUN_ID or --receipt FILE (one of them)"
    code, _, err = cli(["verify", run_id, "--receipt", "x.json"], capsys)
    assert code == 2
    (tmp_path / "x.json").write_text('{"hello": 1}')
    code, _, err = cli(["verify", "--receipt", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "not a signed receipt" in one_error_line(err)


def test_not_a_database_is_one_line_and_untouched(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    before = digest(junk)
    for args in (["runs", "list"], ["runs", "show", "x"], ["verify", "x"], ["diff", "x"], ["runs", "export", "x"]):
        code, _, err = cli([*args, "--db", str(junk)], capsys)
        assert code == 1
        assert one_error_line(err) == f"{junk}: not a SQLite database (file is not a database)"
    assert digest(junk) == before


# ---------------------------------------------------------------------------------------
# import-jobspec, runs plan: malformed input touches nothing


def test_import_jobspec_writes_a_loadable_suite(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out_file = tmp_path / "suite.yaml"
    args = ["import-jobspec", str(DATA / "jobspec-bias-detection-v1.json"), "--questions", str(DATA / "questions.json"),
            "--out", str(out_file)]  # fmt: skip
    code, _, err = cli(args, capsys)
    assert code == 0 and "8 questions x 1 models x 3 regions (US, EU, APAC) = 24 jobs" in err
    suite = load_suite(out_file)
    assert suite.name == "geographic-bias-detection-llama" and len(suite.questions) == 8
    assert out_file.read_text().startswith(f"# Imported from jobspec-bias-detection-v1.json by `beacon import-jobspec`; "
                                           f"suite hash {suite.suite_hash()}\n")  # fmt: skip
    before = digest(out_file)
    code, _, err = cli(args, capsys)
    assert code == 2 and one_error_line(err) == f"{out_file}: already exists (pass --force to overwrite)"
    assert digest(out_file) == before
    code, _, _ = cli([*args, "--force", "--model", "qwen2.5:1.5b", "--runtime", "ollama"], capsys)
    assert code == 0 and load_suite(out_file).models[0].name == "qwen2.5:1.5b"
    code, out, _ = cli(["import-jobspec", str(DATA / "jobspec-who-are-you.json")], capsys)
    assert code == 0 and parse_suite(out).questions[0].text == "Who are you?"
    code, _, err = cli(["import-jobspec", str(DATA / "jobspec-who-are-you.json"), "--runtime", "tgi"], capsys)
    assert code == 2 and one_error_line(err).startswith("--runtime: 'tgi' is not one of llamacpp, ollama")


def test_malformed_jobspec_exit_2_and_nothing_touched(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = json.loads((DATA / "jobspec-who-are-you.json").read_text())
    del spec["constraints"]["regions"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    existing = tmp_path / "suite.yaml"
    existing.write_text("# my suite, keep it\n")
    before = digest(existing)
    code, out, err = cli(["import-jobspec", str(bad), "--out", str(existing), "--force"], capsys)
    assert code == 2 and out == ""
    assert one_error_line(err) == f"{bad}: constraints.regions: Field required"
    assert digest(existing) == before


def test_malformed_suite_exit_2_and_db_untouched(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, _ = recorded
    before = digest(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.replace('  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}\n',
                                 "  - {id: q2, text: fine}\n  - {id: q3, category: bias}\n"))  # fmt: skip
    code, _, err = cli(["runs", "plan", str(bad)], capsys)
    assert code == 2 and one_error_line(err) == f"{bad}: questions.2.text: Field required"
    from beacon_golem.cli import app

    if any(c.name == "run" for c in app.registered_commands):  # `beacon run` (the dispatcher's command)
        code, _, err = cli(["run", str(bad), "--db", str(path)], capsys)
        assert code == 2 and one_error_line(err) == f"{bad}: questions.2.text: Field required"
    assert digest(path) == before
    assert not (tmp_path / "data" / "beacon.db").exists()


def test_runs_plan_quickstart(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli(["runs", "plan", str(ROOT / "examples" / "quickstart.yaml"), "--jobs"], capsys)
    assert code == 0
    assert "5 questions x 1 models x 2 regions x 1 repetitions = 10 jobs" in out
    assert "tiananmen_neutral|beacon-tiny|llamacpp|EU|0" in out


# ---------------------------------------------------------------------------------------
# diff


def test_diff_outputs(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    before = digest(path)
    code, out, _ = cli(["diff", "latest", "--db", str(path)], capsys)
    assert code == 0 and out.startswith("# Differences: cli-test") and "| Model | US | EU |" in out
    md, js = tmp_path / "d" / "diff.md", tmp_path / "d" / "diff.json"
    code, _, err = cli(["diff", run_id, "--md", str(md), "--json", str(js), "--db", str(path)], capsys)
    assert code == 0 and "1 where regions disagree" in err
    report = json.loads(js.read_text())
    assert report["run_id"] == run_id
    assert [d["question_id"] for d in report["summary"]["disagreements"]] == ["taiwan"]
    assert "no answer from EU" in md.read_text()
    assert digest(path) == before


# ---------------------------------------------------------------------------------------
# The installed entry point: no tracebacks


@pytest.mark.skipif(not BEACON.exists(), reason="the beacon script is not installed next to this Python")
def test_entry_point_one_line_errors(recorded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, run_id = recorded
    env = {**os.environ, "BEACON_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    conn = sqlite3.connect(path)
    conn.execute("UPDATE results SET text = text || ' (edited)' WHERE rowid = 2")
    conn.commit()
    conn.close()
    proc = subprocess.run([str(BEACON), "verify", run_id, "--db", str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2 and "outputs_hash mismatch" in proc.stdout
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"id": "x", "benchmark": {"name": "n"}, "constraints": {"regions": ["US"], "timeout": "5 parsecs"}}'
    )
    proc = subprocess.run([str(BEACON), "import-jobspec", str(bad)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"error: {bad}: constraints.timeout: not a duration: '5 parsecs' (use nanoseconds or e.g. '300s', '30m', '1h30m')"
    )
