"""One run, one process (issue 12, finding 5): the run's lock in the store, a crashed holder taken
over, `--resume` retrying failed jobs (or keeping them), and a fleet that fails to start.

Real parts: a SQLite file, real processes (a holder that is SIGKILLed), the real CLI, and a real
local node (llama-server + shim) behind a static fleet.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from beacon_golem.cli import main
from beacon_golem.core.suite import parse_suite
from beacon_golem.node.launcher import LocalNode
from beacon_golem.requestor.store.store import RunLocked, Store
from beacon_golem.requestor.work.driver import FleetChoice, plan_run

SUITE = """
name: lock-test
questions: [{id: q1, text: "Who are you?"}, {id: q2, text: "What is 2+2?"}]
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US]
generation: {max_tokens: 8}
limits: {job_timeout_s: 60, retries: 1, backoff_s: 0, backoff_max_s: 0}
"""


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BEACON_SHIM_TOKEN", raising=False)
    return tmp_path / "data"


def new_run(path: Path, node_url: str = "http://127.0.0.1:9") -> str:
    with Store(path) as store:
        return plan_run(store, parse_suite(SUITE), "s.yaml", FleetChoice(kind="static", node_urls=[f"{node_url}@US"])).run_id


def cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def test_a_live_holder_keeps_the_run_and_is_named(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    run_id = new_run(path)
    with Store(path) as store:
        token = store.lock_run(run_id)
        with pytest.raises(RunLocked) as err:
            store.lock_run(run_id)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(err.value) and err.value.exit_code == 2
        assert store.heartbeat_run_lock(run_id, token)
        assert store.unlock_run(run_id, token) and not store.unlock_run(run_id, token)
        store.unlock_run(run_id, store.lock_run(run_id))  # free again


def test_a_crashed_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    run_id = new_run(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from beacon_golem.requestor.store.store import Store;"
         f" Store(sys.argv[1]).lock_run({run_id!r}); print('locked', flush=True); time.sleep(600)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Store(path) as store, pytest.raises(RunLocked) as err:
            store.lock_run(run_id)
        assert f"pid {holder.pid}" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Store(path) as store:
        store.lock_run(run_id)  # the holder is dead: taken over
        taken = store.events(run_id, ["lock_taken_over"])
        assert len(taken) == 1 and taken[0].detail["pid"] == holder.pid


def test_a_holder_on_another_machine_counts_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    run_id = new_run(path)
    with Store(path) as store:
        store.lock_run(run_id)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE run_locks SET host = 'elsewhere', pid = 1")
    conn.commit()
    with Store(path) as store, pytest.raises(RunLocked, match="pid 1 on elsewhere"):
        store.lock_run(run_id)
    conn.execute("UPDATE run_locks SET heartbeat_at = '2020-01-01T00:00:00.000000+00:00'")
    conn.commit()
    conn.close()
    with Store(path) as store:
        store.lock_run(run_id)  # no heartbeat for years: abandoned


def test_a_second_resume_says_who_holds_the_run_exits_2_and_changes_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "b.db"
    run_id = new_run(path)
    with Store(path) as store:
        store.lock_run(run_id)  # the first `beacon run` drives it (this process)
        first = store.jobs(run_id)[0]
        store.claim_job(first.job_id, "static-0")  # ... and runs a job right now
        before = [(j.state, j.attempts, j.node_id) for j in store.jobs(run_id)]
    assert cli(["run", "--resume", run_id, "--db", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"is being driven by pid {os.getpid()}" in err and "Traceback" not in err
    with Store(path) as store:
        assert [(j.state, j.attempts, j.node_id) for j in store.jobs(run_id)] == before  # no job reset
        assert store.get_run(run_id).status == "running" and store.events(run_id, ["resumed"]) == []


async def test_resume_retries_failed_jobs_unless_told_to_keep_them(tmp_path: Path, local_node: LocalNode) -> None:
    path = tmp_path / "b.db"
    run_id = new_run(path, local_node.url)
    with Store(path) as store:
        for job in store.jobs(run_id):  # the run's only US node died: every job failed
            store.claim_job(job.job_id, "gone")
            store.fail_job(job.job_id, "failed after 2 attempts: node gone")
        store.finish_run(run_id, "failed")

    assert await asyncio.to_thread(cli, ["run", "--resume", run_id, "--keep-failed", "--db", str(path)]) == 1
    with Store(path) as store:
        assert [j.state for j in store.jobs(run_id)] == ["failed", "failed"]

    assert await asyncio.to_thread(cli, ["run", "--resume", run_id, "--db", str(path)]) == 0
    with Store(path) as store:
        run = store.get_run(run_id)
        assert run.status == "done" and [j.state for j in store.jobs(run_id)] == ["done", "done"]
        assert [e.detail for e in store.events(run_id, ["failed_retried"])] == [{"jobs": 2}]
        assert store.run_lock(run_id) is None  # released at the end


def test_a_fleet_that_fails_to_start_ends_the_run_failed_with_the_reason(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    path = tmp_path / "b.db"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli(["run", str(suite), "--node", f"http://127.0.0.1:{port}@US", "--db", str(path)]) == 1
    assert "no static node is usable" in capsys.readouterr().err
    with Store(path) as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and run.finished_at is not None
        (failed,) = store.events(run.run_id, ["run_failed"])
        assert "no static node is usable" in failed.detail["reason"]
        assert store.run_lock(run.run_id) is None
