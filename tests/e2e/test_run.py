"""`beacon run` end to end as a user runs it: real processes, real local nodes, a real SQLite file."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, llama_server_binary

BEACON = [sys.executable, "-m", "beacon_golem.cli"]


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "BEACON_DATA_DIR": str(tmp_path / "data"), "BEACON_LOG_LEVEL": "error"}


def beacon(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEACON, *args], capture_output=True, text=True, timeout=timeout, env=env_for(tmp_path), cwd=ROOT)


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_quickstart_on_three_local_nodes_stores_verifies_and_reports(tmp_path: Path) -> None:
    llama_server_binary()
    db = tmp_path / "beacon.db"
    done = beacon(tmp_path, "run", "examples/quickstart.yaml", "--fleet", "local", "--nodes", "3", "--db", str(db))
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("run ") and "10 jobs" in first
    run_id = first.split()[1]
    assert f"store:       {db}" in done.stdout
    diff_md = Path(done.stdout.split("differences: ")[1].split()[0])
    assert diff_md.is_file() and "tiananmen_neutral" in diff_md.read_text()
    assert diff_md.parent == db.parent / "reports" / run_id  # beside the store --db names, not in the data dir

    assert query(db, f"SELECT state, COUNT(*) FROM jobs WHERE run_id = '{run_id}' GROUP BY state") == [("done", 10)]
    assert query(db, "SELECT COUNT(DISTINCT job_id), COUNT(*) FROM results") == [(10, 10)]
    regions = query(db, "SELECT region, COUNT(*) FROM nodes GROUP BY region ORDER BY region")
    assert regions == [("EU", 1), ("US", 2)]
    assert query(db, "SELECT COUNT(*) FROM results WHERE receipt_json IS NULL") == [(0,)]

    verified = beacon(tmp_path, "verify", run_id, "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # A tampered answer fails verify, naming the job.
    job_id = query(db, "SELECT job_id FROM results ORDER BY job_id LIMIT 1")[0][0]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE results SET text = 'Tiananmen was a picnic.' WHERE job_id = ?", (job_id,))
    tampered = beacon(tmp_path, "verify", run_id, "--db", str(db))
    assert tampered.returncode == 1
    assert job_id in tampered.stdout + tampered.stderr


def test_killed_run_resumes_and_reruns_only_unfinished_jobs(tmp_path: Path) -> None:
    llama_server_binary()
    suite = tmp_path / "long.yaml"
    suite.write_text(
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("max_tokens: 32", "max_tokens: 300")
        .replace("repetitions: 1", "repetitions: 6")
        .replace("per_node_concurrency: 4", "per_node_concurrency: 1")
    )
    db = tmp_path / "beacon.db"
    proc = subprocess.Popen(
        [*BEACON, "run", str(suite), "--fleet", "local", "--nodes", "2", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
        cwd=ROOT,
    )
    run_id = proc.stdout.readline().split()[1]  # printed at once, before the nodes start
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if db.exists() and query(db, "SELECT COUNT(*) FROM results")[0][0] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = dict(query(db, "SELECT job_id, created_at FROM results"))
    assert 8 <= len(before) < 60
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("running",)]

    resumed = beacon(tmp_path, "run", "--resume", run_id, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    after = dict(query(db, "SELECT job_id, created_at FROM results"))
    assert len(after) == 60 and query(db, "SELECT COUNT(*) FROM results")[0][0] == 60
    assert {k: after[k] for k in before} == before  # finished answers untouched
    attempts = dict(query(db, "SELECT job_id, attempts FROM jobs"))
    assert all(attempts[j] == 1 for j in before)  # nothing finished ran again
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("done",)]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("name: x\nquestions: []\nmodels: [{name: m}]\nregions: [US]\n", "questions"),
        ("name: x\nquestions: [{id: q, text: hi}]\nmodels: [{name: m}]\nregions: [US]\ngeneration: {max_tokens: -1}\n", "generation.max_tokens"),
        ("name: x\nquestions: [{id: q}]\nmodels: [{name: m}]\nregions: [US]\n", "questions.0.text"),
        ("{{not yaml", "YAML"),
    ],
)
def test_a_malformed_suite_is_one_line_exit_2_and_the_store_is_untouched(tmp_path: Path, content: str, needle: str) -> None:
    llama_server_binary()
    db = tmp_path / "beacon.db"
    ok = beacon(tmp_path, "run", "examples/quickstart.yaml", "--nodes", "2", "--db", str(db))
    assert ok.returncode == 0, ok.stderr
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    done = beacon(tmp_path, "run", str(bad), "--db", str(db))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0] and str(bad) in lines[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_malformed_jobspec_is_refused_the_same_way(tmp_path: Path) -> None:
    bad = tmp_path / "jobspec.json"
    bad.write_text('{"id": "bad id!", "version": "1", "benchmark": {"name": "b", "input": {"type": "prompt"}}}')
    db = tmp_path / "none.db"
    done = beacon(tmp_path, "run", str(bad), "--db", str(db))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(bad) in done.stderr
    assert not db.exists()


def test_too_few_local_nodes_for_the_regions_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = beacon(tmp_path, "run", "examples/quickstart.yaml", "--nodes", "1", "--db", str(tmp_path / "b.db"))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: the suite asks for 2 regions (US, EU): start at least that many local nodes (--nodes 2)"
    assert not (tmp_path / "b.db").exists()


def test_run_needs_a_suite_or_resume(tmp_path: Path) -> None:
    done = beacon(tmp_path, "run")
    assert done.returncode == 2 and "give a SUITE file or --resume RUN_ID" in done.stderr
    done = beacon(tmp_path, "run", "--resume", "nope", "--db", str(tmp_path / "none.db"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
