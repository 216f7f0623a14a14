"""The SQLite run store, on real files: commits, exactly-once results, nodes, events, open errors."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import GPUInfo, Node, NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.requestor.store.schema import SCHEMA_VERSION
from beacon_golem.requestor.store.store import Store, default_db_path

SUITE = """\
name: store-test
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""
T0 = datetime(2025, 8, 22, 14, 34, tzinfo=UTC)


def result(text: str = "I am a small model.", tokens: int = 5) -> GenerationResult:
    return GenerationResult(
        text=text, finish_reason="stop", prompt_tokens=9, completion_tokens=tokens, token_count_source="server",
        ttft_ms=12.5, e2e_ms=80.0, itl_ms=[15.0, 17.0, 16.0, 20.0], runtime="llamacpp", model="beacon-tiny",
    )  # fmt: skip


def node_info(node_id: str = "n1") -> NodeInfo:
    return NodeInfo(
        shim_version="0.1.0",
        node_id=node_id,
        runtime=RuntimeInfo(name="llamacpp", version="b6000", upstream="http://127.0.0.1:8081", models=["beacon-tiny"]),
        system=SystemInfo(os="Linux", distribution="Ubuntu 24.04", kernel="6.8.0", arch="x86_64",
                          cpu_model="AMD EPYC 9654", cpu_cores=16, ram_gib=125.7,
                          gpus=[GPUInfo(name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, driver_version="550.54.15")]),
        started_at=T0,
    )  # fmt: skip


def make_node(node_id: str = "n1", region: str = "US", **kw: object) -> Node:
    return Node(node_id=node_id, url=f"http://10.0.0.1:8080/{node_id}", region=region, info=node_info(node_id), **kw)  # type: ignore[arg-type]


@pytest.fixture
def suite():  # type: ignore[no-untyped-def]
    return parse_suite(SUITE)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store(tmp_path / "beacon.db") as s:
        yield s


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read through a separate connection: sees only what was committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_wal_foreign_keys_and_version(store: Store) -> None:
    path = store.path
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "jobs", "results", "nodes", "events", "schema_version"} <= tables
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        store._conn.execute(
            "INSERT INTO events (run_id, ts, kind, detail_json) VALUES ('nope', 'x', 'k', '{}')"
        )


def test_create_run_records_run_and_pending_jobs_in_one_go(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    planned = expand_jobs(suite)
    run = store.create_run(suite, SUITE, planned, {"kind": "local", "nodes": 2})
    assert run.status == "running" and run.finished_at is None
    assert run.suite == suite and run.suite_hash == suite.suite_hash() and run.suite_source == SUITE
    assert run.fleet_desc == {"kind": "local", "nodes": 2}
    assert run.job_counts == {"pending": 4, "running": 0, "done": 0, "failed": 0} and run.total_jobs == 4
    assert raw(store.path, "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state = 'pending'", (run.run_id,)) == [(4,)]
    jobs = store.jobs(run.run_id)
    assert [j.job_key for j in jobs] == [p.key for p in planned]
    assert jobs[0].request == planned[0].request
    assert jobs[0].spec["suite_hash"] == suite.suite_hash()
    assert (jobs[1].question_id, jobs[1].region, jobs[1].category) == ("identity", "EU", "control")
    assert store.get_run(run.run_id) == run
    with pytest.raises(UsageError, match="no jobs"):
        store.create_run(suite, None, [], None)
    with pytest.raises(BeaconError):  # the same run id twice: nothing half-written
        store.create_run(suite, None, planned, None, run_id=run.run_id)
    assert raw(store.path, "SELECT COUNT(*) FROM jobs") == [(4,)]


def test_job_lifecycle_commits_every_change(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    a, b, c, d = store.jobs(run.run_id)
    path = store.path

    claimed = store.claim_job(a.job_id, "n1")
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1 and claimed.node_id == "n1"
    assert raw(path, "SELECT state, attempts, node_id FROM jobs WHERE job_id = ?", (a.job_id,)) == [("running", 1, "n1")]
    assert store.claim_job(a.job_id, "n2") is None  # not pending any more

    assert store.release_job(a.job_id, "node n1 lost") is True
    assert raw(path, "SELECT state, attempts, node_id, error FROM jobs WHERE job_id = ?", (a.job_id,)) == [
        ("pending", 1, None, "node n1 lost")]  # fmt: skip
    assert store.release_job(a.job_id, "again") is False
    assert store.claim_job(a.job_id, "n2").attempts == 2  # type: ignore[union-attr]

    assert store.record_result(a.job_id, "n2", result(), T0, T0 + timedelta(seconds=1), {"r": 1}) is True
    assert raw(path, "SELECT state, node_id, error FROM jobs WHERE job_id = ?", (a.job_id,)) == [("done", "n2", None)]
    assert raw(path, "SELECT text, node_id FROM results WHERE job_id = ?", (a.job_id,)) == [("I am a small model.", "n2")]

    store.claim_job(b.job_id, "n1")
    assert store.fail_job(b.job_id, "HTTP 500 three times") is True
    assert raw(path, "SELECT state, error FROM jobs WHERE job_id = ?", (b.job_id,)) == [("failed", "HTTP 500 three times")]
    assert store.fail_job(a.job_id, "too late") is False  # done stays done
    assert store.claim_job(b.job_id, "n1") is None

    store.claim_job(c.job_id, "n1")
    store.claim_job(d.job_id, "n2")
    assert store.reset_running(run.run_id) == 2
    assert raw(path, "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND state = 'pending'", (run.run_id,)) == [(2,)]
    assert store.retry_failed(run.run_id) == 1
    assert store.get_run(run.run_id).job_counts == {"pending": 3, "running": 0, "done": 1, "failed": 0}
    assert [j.job_id for j in store.jobs(run.run_id, states=["done"])] == [a.job_id]
    assert store.jobs(run.run_id, states=[]) == []

    with pytest.raises(BeaconError, match="no job 'missing'"):
        store.claim_job("missing", "n1")
    with pytest.raises(BeaconError, match="no job"):
        store.record_result("missing", "n1", result(), T0, T0, None)


def test_record_result_is_exactly_once(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    job = store.jobs(run.run_id)[0]
    store.claim_job(job.job_id, "n1")
    first = result("first answer")
    assert store.record_result(job.job_id, "n1", first, T0, T0 + timedelta(seconds=2), {"sig": "a"}) is True
    before = raw(store.path, "SELECT * FROM results")
    jobs_before = raw(store.path, "SELECT * FROM jobs WHERE job_id = ?", (job.job_id,))
    # A late duplicate (the job was retried elsewhere) changes nothing.
    assert store.record_result(job.job_id, "n2", result("second answer"), T0, T0, {"sig": "b"}) is False
    assert raw(store.path, "SELECT * FROM results") == before
    assert raw(store.path, "SELECT * FROM jobs WHERE job_id = ?", (job.job_id,)) == jobs_before
    stored = store.results(run.run_id)
    assert len(stored) == 1
    row = stored[0]
    assert row.text == "first answer" and row.result == first and row.node_id == "n1"
    assert row.started_at == T0 and row.ended_at == T0 + timedelta(seconds=2)
    assert row.receipt == {"sig": "a"}
    assert store.get_result(job.job_id) == row
    # A late answer for a job that was given up still counts, once.
    other = store.jobs(run.run_id)[1]
    store.fail_job(other.job_id, "gave up")
    assert store.record_result(other.job_id, "n3", result("late"), T0, T0, None) is True
    assert store.get_job(other.job_id).state == "done"


def test_concurrent_claims_and_results_from_threads(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    job = store.jobs(run.run_id)[0]
    claims: list[object] = []
    records: list[bool] = []

    def worker(n: int) -> None:
        claims.append(store.claim_job(job.job_id, f"n{n}"))
        records.append(store.record_result(job.job_id, f"n{n}", result(f"answer {n}"), T0, T0, None))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c is not None for c in claims) == 1
    assert records.count(True) == 1
    assert raw(store.path, "SELECT COUNT(*) FROM results") == [(1,)]


def test_second_process_sees_committed_state(tmp_path: Path, suite) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "beacon.db"
    writer = Store(path)
    run = writer.create_run(suite, None, expand_jobs(suite), None)
    job = writer.jobs(run.run_id)[0]
    writer.claim_job(job.job_id, "n1")
    writer.record_result(job.job_id, "n1", result(), T0, T0, None)
    # No close: as after a crash. Another connection sees everything already.
    with Store(path, readonly=True) as reader:
        assert reader.get_run(run.run_id).job_counts["done"] == 1
        assert reader.results(run.run_id)[0].text == "I am a small model."
    writer.close()


def test_results_are_never_deleted(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    job = store.jobs(run.run_id)[0]
    store.record_result(job.job_id, "n1", result(), T0, T0, None)
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        conn.execute("DELETE FROM results")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):  # nor its job or run
        conn.execute("DELETE FROM jobs WHERE job_id = ?", (job.job_id,))
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        conn.execute("DELETE FROM runs")
    conn.rollback()
    conn.close()
    assert raw(store.path, "SELECT COUNT(*) FROM results") == [(1,)]


def test_nodes_upsert_lost_and_back(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    node = make_node("n1", "EU", token=SecretStr("s3cret-token"), provider_id="0xabc", provider_name="prov-1",
                     fleet="golem", extra={"price_glm_per_hour": 0.5})  # fmt: skip
    row = store.upsert_node(run.run_id, node)
    assert (row.node_id, row.url, row.region, row.fleet, row.provider_id, row.provider_name, row.status) == (
        "n1", node.url, "EU", "golem", "0xabc", "prov-1", "alive")  # fmt: skip
    assert row.info == node.info and row.extra == {"price_glm_per_hour": 0.5}
    assert b"s3cret-token" not in store.path.read_bytes() + (store.path.with_name("beacon.db-wal").read_bytes()
                                                             if store.path.with_name("beacon.db-wal").exists() else b"")  # fmt: skip
    assert store.mark_node_lost(run.run_id, "n1", "health check failed 3 times") is True
    assert raw(store.path, "SELECT status, lost_reason FROM nodes") == [("lost", "health check failed 3 times")]
    assert store.mark_node_lost(run.run_id, "ghost", "x") is False
    # Seen again (without info this time): alive, info kept.
    back = store.upsert_node(run.run_id, Node(node_id="n1", url="http://10.0.0.2:8080", region="EU", fleet="golem"))
    assert back.status == "alive" and back.lost_reason is None and back.info == node.info
    assert back.url == "http://10.0.0.2:8080" and back.first_seen == row.first_seen
    store.upsert_node(run.run_id, make_node("n2", "US"))
    assert [n.node_id for n in store.nodes(run.run_id)] == ["n1", "n2"]
    assert store.get_node(run.run_id, "n3") is None
    with pytest.raises(UsageError, match="no run"):
        store.upsert_node("no-such-run", make_node())


def test_events(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    run = store.create_run(suite, None, expand_jobs(suite), None)
    job = store.jobs(run.run_id)[0]
    e1 = store.add_event(run.run_id, "node_added", node_id="n1", url="http://x", region="US")
    e2 = store.add_event(run.run_id, "job_requeued", node_id="n1", job_id=job.job_id, reason="timeout", at=T0)
    assert e1.event_id < e2.event_id and e2.detail == {"reason": "timeout", "at": str(T0)}
    events = store.events(run.run_id)
    assert [(e.kind, e.node_id, e.job_id) for e in events] == [("node_added", "n1", None), ("job_requeued", "n1", job.job_id)]
    assert events[0].detail == {"url": "http://x", "region": "US"}
    assert [e.kind for e in store.events(run.run_id, kinds=["job_requeued"])] == ["job_requeued"]
    assert raw(store.path, "SELECT COUNT(*) FROM events") == [(2,)]
    with pytest.raises(UsageError):
        store.add_event("no-such-run", "x")


def test_runs_list_find_finish_reopen(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    r1 = store.create_run(suite, None, expand_jobs(suite), None, run_id="20250101-000000-aaaaaa")
    r2 = store.create_run(suite, None, expand_jobs(suite), None, run_id="20250102-000000-bbbbbb")
    assert [r.run_id for r in store.list_runs()] == [r2.run_id, r1.run_id]
    assert store.find_run("latest").run_id == r2.run_id
    assert store.find_run("20250101").run_id == r1.run_id
    with pytest.raises(UsageError, match="more than one run"):
        store.find_run("2025")
    with pytest.raises(UsageError, match="no run 'zzz'"):
        store.find_run("zzz")
    with pytest.raises(UsageError, match="no run"):
        store.get_run("2025")  # get_run wants the exact id
    done = store.finish_run(r1.run_id, "done")
    assert done.status == "done" and done.finished_at is not None
    assert raw(store.path, "SELECT status FROM runs WHERE run_id = ?", (r1.run_id,)) == [("done",)]
    again = store.reopen_run(r1.run_id)
    assert again.status == "running" and again.finished_at is None
    with pytest.raises(ValueError):
        store.finish_run(r1.run_id, "running")


def test_readonly_never_writes(tmp_path: Path, suite) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "beacon.db"
    with Store(path) as s:
        run = s.create_run(suite, None, expand_jobs(suite), None)
    before = digest(path)
    with Store(path, readonly=True) as ro:
        assert ro.list_runs()[0].run_id == run.run_id
        ro.jobs(run.run_id), ro.results(run.run_id), ro.nodes(run.run_id), ro.events(run.run_id)
        with pytest.raises(BeaconError, match="read-only"):
            ro.claim_job(ro.jobs(run.run_id)[0].job_id, "n1")
    assert digest(path) == before
    with pytest.raises(UsageError, match="no such database"):
        Store(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(UsageError, match="no such database"):
        Store(tmp_path / "missing.db", create=False)


def test_open_errors_are_one_line_and_touch_nothing(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are my notes, not a database\n" * 200)
    before = digest(junk)
    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(BeaconError) as info:
            Store(junk, **kwargs)  # type: ignore[arg-type]
        assert str(info.value) == f"{junk}: not a SQLite database (file is not a database)"
    assert digest(junk) == before

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = digest(other)
    with pytest.raises(BeaconError, match="not a beacon-golem one"):
        Store(other)
    assert digest(other) == before

    newer = tmp_path / "newer.db"
    Store(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(BeaconError, match="written by a newer beacon-golem"):
        Store(newer)

    with pytest.raises(BeaconError, match="is a directory"):
        Store(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_places(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BeaconError, match="not writable"):
            Store(locked / "beacon.db")
    finally:
        locked.chmod(0o700)
    path = tmp_path / "ro.db"
    Store(path).close()
    path.chmod(0o400)
    with pytest.raises(BeaconError, match="not writable"):
        Store(path)
    Store(path, readonly=True).close()


def test_unwritable_file_as_root_still_one_line(tmp_path: Path) -> None:
    # Works for every user: a database path whose parent is a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BeaconError) as info:
        Store(blocker / "beacon.db")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(blocker / "beacon.db"))


def test_default_path_is_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "beacon.db"
    with Store() as s:
        assert s.path == tmp_path / "data" / "beacon.db"
    assert (tmp_path / "data" / "beacon.db").is_file()


# ---- schema 2: bench results, and the migration from schema 1 ---------------------------------------
def as_schema_6(path: Path) -> None:
    """Turn a fresh file into what schema 6 wrote: schema 7 only added the run manifest tables."""
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER manifest_entries_never_deleted; DROP TRIGGER manifest_entries_never_changed;"
        " DROP TRIGGER run_manifests_never_deleted; DROP TABLE manifest_entries; DROP TABLE run_manifests;"
        " UPDATE schema_version SET version = 6;"
    )
    conn.close()


def as_schema_5(path: Path) -> None:
    """Turn a fresh file into what schema 5 wrote: schema 6 only added the comparison tables."""
    as_schema_6(path)
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER runtime_trials_never_deleted; DROP TABLE runtime_trials; DROP TABLE comparisons;"
        " UPDATE schema_version SET version = 5;"
    )
    conn.close()


def as_schema_4(path: Path) -> None:
    """Turn a fresh file into what schema 4 wrote: schema 5 only added runs.jobspec_json."""
    as_schema_5(path)
    conn = sqlite3.connect(path)
    conn.executescript("ALTER TABLE runs DROP COLUMN jobspec_json; UPDATE schema_version SET version = 4;")
    conn.close()


def as_schema_3(path: Path) -> None:
    """Turn a fresh file into what schema 3 wrote: schema 4 only added the run_locks table."""
    as_schema_4(path)
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE run_locks; UPDATE schema_version SET version = 3;")
    conn.close()


def as_schema_2(path: Path) -> None:
    """Turn a fresh file into what schema 2 wrote: schema 3 only added columns (runs.kind, nodes.probe_*)."""
    as_schema_3(path)
    conn = sqlite3.connect(path)
    conn.executescript(
        "ALTER TABLE runs DROP COLUMN kind; ALTER TABLE nodes DROP COLUMN probe_json;"
        " ALTER TABLE nodes DROP COLUMN probe_error; ALTER TABLE nodes DROP COLUMN probed_at;"
        " UPDATE schema_version SET version = 2;"
    )
    conn.close()


def _as_schema_1(path: Path) -> None:
    """Turn a fresh file into what schema 1 wrote: schema 2 only added bench_results (table, index, trigger)."""
    as_schema_2(path)
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER bench_results_never_deleted; DROP INDEX bench_results_run; DROP TABLE bench_results;"
        " UPDATE schema_version SET version = 1;"
    )
    conn.close()


def kept(after: dict[str, list[tuple]], before: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """`after` cut to the columns `before` had: a migration only appends columns (ALTER TABLE ADD COLUMN)."""
    return {t: [row[: len(old)] for row, old in zip(after[t], before[t], strict=True)] for t in before}


def _dump(path: Path) -> dict[str, list[tuple]]:
    return {t: raw(path, f"SELECT * FROM {t} ORDER BY rowid") for t in ("runs", "jobs", "results", "nodes", "events")}


BENCH = {"target": {"runtime": "llamacpp", "via": "runtime"}, "steps": [
    {"max_concurrency": 1, "completed": 4, "output_throughput": 120.5, "p99.9_ttft_ms": 9.5},
    {"max_concurrency": 2, "completed": 4, "output_throughput": 200.0, "p99.9_ttft_ms": 12.0},
]}  # fmt: skip


def test_a_schema_1_file_migrates_in_place_and_keeps_every_row(tmp_path: Path, suite) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "beacon.db"
    with Store(path) as s:
        run = s.create_run(suite, SUITE, expand_jobs(suite), {"kind": "local"})
        job = s.jobs(run.run_id)[0]
        s.claim_job(job.job_id, "n1")
        s.record_result(job.job_id, "n1", result(), T0, T0, {"sig": "x"})
        s.upsert_node(run.run_id, make_node("n1", "US", extra={"glm_spent": 0.25}))
        s.add_event(run.run_id, "node_added", node_id="n1")
        s.finish_run(run.run_id, "done")
    _as_schema_1(path)
    before, digest_before = _dump(path), digest(path)
    assert raw(path, "SELECT name FROM sqlite_master WHERE name = 'bench_results'") == []

    # Read-only: everything reads, there are no bench results, and the file is not touched.
    with Store(path, readonly=True) as ro:
        assert ro.schema_version() == 1
        assert ro.bench_results(run.run_id) == []
        assert ro.results(run.run_id)[0].text == "I am a small model."
    assert digest(path) == digest_before

    # Opened for writing: migrated to schema 2, 3, 4, 5, 6 then 7, no old row changed, bench results work.
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 7
        assert s.get_run(run.run_id).status == "done" and s.nodes(run.run_id)[0].extra == {"glm_spent": 0.25}
        row = s.add_bench_result(run.run_id, "n1", "node", "n1 US node", {"kind": "sweep"}, BENCH)
        assert s.bench_results(run.run_id) == [row]
    assert kept(_dump(path), before) == before
    assert raw(path, "SELECT version FROM schema_version ORDER BY version") == [(v,) for v in range(1, 8)]
    with Store(path) as s:  # opening again migrates nothing more
        assert s.schema_version() == 7 and len(s.bench_results(run.run_id)) == 1
    assert raw(path, "SELECT version FROM schema_version ORDER BY version") == [(v,) for v in range(1, 8)]


def test_bench_results_round_trip_and_are_never_deleted(store: Store, suite) -> None:  # type: ignore[no-untyped-def]
    from beacon_golem.core.profiles import SweepProfile

    run = store.create_run(suite, None, expand_jobs(suite), None)
    profile = SweepProfile(concurrencies=[1, 2], num_prompts=4)
    first = store.add_bench_result(run.run_id, "n1", "node", "n1 US node", profile, BENCH)
    second = store.add_bench_result(run.run_id, "n2", "requestor", None, profile.model_dump(mode="json"), BENCH)
    again = store.add_bench_result(run.run_id, "n1", "node", "n1 US node, again", profile, BENCH)  # each call adds a row
    assert first.bench_id < second.bench_id < again.bench_id
    assert (first.run_id, first.node_id, first.where, first.label) == (run.run_id, "n1", "node", "n1 US node")
    assert first.profile == profile.model_dump(mode="json") and first.profile["kind"] == "sweep"
    assert first.result == BENCH and [s["max_concurrency"] for s in first.steps] == [1, 2]
    assert first.steps[0]["p99.9_ttft_ms"] == 9.5  # vLLM's keys, as given
    assert store.bench_results(run.run_id) == [first, second, again]
    assert store.bench_results(run.run_id, where="requestor") == [second]
    assert store.bench_results("another-run") == []
    with pytest.raises(BeaconError, match="not readable"):
        first.bench_result()  # not a whole BenchResult: says so in one line
    with pytest.raises(UsageError, match="no run"):
        store.add_bench_result("no-such-run", "n1", "node", None, {}, BENCH)
    with pytest.raises(ValueError, match="where"):
        store.add_bench_result(run.run_id, "n1", "gpu", None, {}, BENCH)  # type: ignore[arg-type]
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        conn.execute("DELETE FROM bench_results")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("""INSERT INTO bench_results (run_id, node_id, "where", profile_json, result_json, created_at)
                        VALUES (?, 'n1', 'moon', '{}', '{}', 'x')""", (run.run_id,))  # fmt: skip
    conn.rollback()
    conn.close()
    assert raw(store.path, "SELECT COUNT(*) FROM bench_results") == [(3,)]


def test_a_perf_only_suite_records_a_run_without_jobs(store: Store) -> None:
    perf_only = parse_suite("name: p\nregions: [US]\nperf: {profile: {kind: synchronous, num_prompts: 2}}\n")
    run = store.create_run(perf_only, None, [], {"kind": "local"})
    assert run.total_jobs == 0 and run.suite.perf is not None and run.suite.perf.profile.kind == "synchronous"
    assert store.get_run(run.run_id).suite == perf_only
