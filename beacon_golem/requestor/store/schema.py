"""The store's SQLite schema and its migrations: each older schema is brought up in one transaction per step.

Schema 2 adds `bench_results`: one performance benchmark (a `BenchResult`, vLLM-keyed) per
node and place it ran from. Schema 3 adds the compatibility pilot: `runs.kind` ('suite', or
'pilot' for a run without jobs or suite) and, on `nodes`, the node's probe report
(`probe_json`), or why there is none (`probe_error`), and when it was asked for (`probed_at`).
Schema 4 adds `run_locks`: which process drives a run right now (one run, one process), so a
second `beacon run --resume` of the same run is refused and a crashed holder is recognised.
Schema 5 adds `runs.jobspec_json`: for a run imported from a Project Beacon JobSpec, which job it
was, its layout, file hash and signature verdict (`core.beacon.JobSpecProvenance`).
Schema 6 adds runtime comparisons (`beacon compare`): `comparisons` (the plan of a comparison
run: its runtimes, settings, idle time, price) and `runtime_trials` (one row per machine and
runtime: whether it started, its start times, the timed requests, weights, price, and the
`bench_results` row of its sweep), indexed by provider, host and GPU model for `--runtime auto`.
Schema 7 adds the run manifest (`requestor.store.manifest`): `manifest_entries` (one row per stored
result: its place, its job, the hash of the stored row) and `run_manifests` (per run, the signed
statement of the count and rolling digest of its entries); entries are never deleted or changed.
A run stored before schema 7 has no manifest until a result lands in it again.
Migrations only add tables and columns; no stored row is touched.
"""

from __future__ import annotations

import sqlite3

from beacon_golem.core.clock import to_ts, utcnow

SCHEMA_VERSION = 7


#: Schema 2: performance benchmarks. Shared by new databases and the migration from 1.
_BENCH_SCHEMA = """
CREATE TABLE bench_results (
    bench_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    node_id      TEXT NOT NULL,
    "where"      TEXT NOT NULL CHECK ("where" IN ('node','requestor')),
    label        TEXT,
    profile_json TEXT NOT NULL,
    result_json  TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX bench_results_run ON bench_results(run_id, bench_id);
CREATE TRIGGER bench_results_never_deleted BEFORE DELETE ON bench_results
BEGIN
    SELECT RAISE(ABORT, 'stored bench results are never deleted');
END;
"""


#: Schema 3: the compatibility pilot. Shared by new databases and the migration from 2.
_PILOT_SCHEMA = """
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'suite' CHECK (kind IN ('suite','pilot'));
ALTER TABLE nodes ADD COLUMN probe_json TEXT;
ALTER TABLE nodes ADD COLUMN probe_error TEXT;
ALTER TABLE nodes ADD COLUMN probed_at TEXT;
"""


#: Schema 4: the process driving each run (one row while a run is driven; released at its end).
#: `pid`, `host` and `proc_started` (the process's start time, so a reused pid is not taken for
#: the holder) tell a live holder from a crashed one; `heartbeat_at` does across machines.
_LOCK_SCHEMA = """
CREATE TABLE run_locks (
    run_id       TEXT PRIMARY KEY REFERENCES runs(run_id),
    token        TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    proc_started REAL,
    command      TEXT,
    acquired_at  TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
"""


#: Schema 5: where a run imported from a Beacon JobSpec came from, its signature verdict included.
_JOBSPEC_SCHEMA = """
ALTER TABLE runs ADD COLUMN jobspec_json TEXT;
"""


#: Schema 6: runtime comparisons (`beacon compare`). Shared by new databases and the migration from 5.
_COMPARE_SCHEMA = """
CREATE TABLE comparisons (
    run_id      TEXT PRIMARY KEY REFERENCES runs(run_id),
    plan_json   TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE runtime_trials (
    trial_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    machine      TEXT NOT NULL,
    variant      TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    node_id      TEXT,
    status       TEXT NOT NULL CHECK (status IN ('done','failed','lost')),
    provider_id  TEXT,
    hostname     TEXT,
    gpu_model    TEXT,
    bench_id     INTEGER REFERENCES bench_results(bench_id),
    trial_json   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (run_id, machine, variant)
);
CREATE INDEX runtime_trials_run ON runtime_trials(run_id, trial_id);
CREATE INDEX runtime_trials_provider ON runtime_trials(provider_id);
CREATE INDEX runtime_trials_host ON runtime_trials(hostname);
CREATE INDEX runtime_trials_gpu ON runtime_trials(gpu_model);
CREATE TRIGGER runtime_trials_never_deleted BEFORE DELETE ON runtime_trials
BEGIN
    SELECT RAISE(ABORT, 'stored runtime trials are never deleted');
END;
"""


#: Schema 7: the run manifest. Shared by new databases and the migration from 6.
_MANIFEST_SCHEMA = """
CREATE TABLE manifest_entries (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    position    INTEGER NOT NULL,
    job_id      TEXT NOT NULL UNIQUE REFERENCES jobs(job_id),
    entry_hash  TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE run_manifests (
    run_id          TEXT PRIMARY KEY REFERENCES runs(run_id),
    statement_json  TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE TRIGGER manifest_entries_never_deleted BEFORE DELETE ON manifest_entries
BEGIN
    SELECT RAISE(ABORT, 'run manifest entries are never deleted');
END;
CREATE TRIGGER manifest_entries_never_changed BEFORE UPDATE ON manifest_entries
BEGIN
    SELECT RAISE(ABORT, 'run manifest entries are never changed');
END;
CREATE TRIGGER run_manifests_never_deleted BEFORE DELETE ON run_manifests
BEGIN
    SELECT RAISE(ABORT, 'run manifests are never deleted');
END;
"""


#: version -> the script that brings the version before it up to it.
_MIGRATIONS: dict[int, str] = {
    2: _BENCH_SCHEMA, 3: _PILOT_SCHEMA, 4: _LOCK_SCHEMA, 5: _JOBSPEC_SCHEMA, 6: _COMPARE_SCHEMA,
    7: _MANIFEST_SCHEMA,
}  # fmt: skip


_SCHEMA = f"""
CREATE TABLE schema_version (
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    suite_name   TEXT NOT NULL,
    suite_hash   TEXT NOT NULL,
    suite_json   TEXT NOT NULL,
    suite_source TEXT,
    fleet_json   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running','done','failed','cancelled','interrupted')),
    created_at   TEXT NOT NULL,
    finished_at  TEXT
);
CREATE TABLE jobs (
    job_id      TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    seq         INTEGER NOT NULL,
    job_key     TEXT NOT NULL,
    question_id TEXT NOT NULL,
    category    TEXT NOT NULL,
    model       TEXT NOT NULL,
    runtime     TEXT NOT NULL,
    region      TEXT NOT NULL,
    repetition  INTEGER NOT NULL,
    spec_json   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending','running','done','failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    node_id     TEXT,
    error       TEXT,
    updated_at  TEXT NOT NULL,
    UNIQUE (run_id, job_key),
    UNIQUE (run_id, seq)
);
CREATE INDEX jobs_run_state ON jobs(run_id, state);
CREATE TABLE results (
    result_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL UNIQUE REFERENCES jobs(job_id),
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    node_id      TEXT NOT NULL,
    text         TEXT NOT NULL,
    result_json  TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    ended_at     TEXT NOT NULL,
    receipt_json TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX results_run ON results(run_id);
CREATE TRIGGER results_never_deleted BEFORE DELETE ON results
BEGIN
    SELECT RAISE(ABORT, 'stored results are never deleted');
END;
CREATE TRIGGER jobs_never_deleted BEFORE DELETE ON jobs
BEGIN
    SELECT RAISE(ABORT, 'stored jobs are never deleted');
END;
CREATE TRIGGER runs_never_deleted BEFORE DELETE ON runs
BEGIN
    SELECT RAISE(ABORT, 'stored runs are never deleted');
END;
CREATE TABLE nodes (
    run_id        TEXT NOT NULL REFERENCES runs(run_id),
    node_id       TEXT NOT NULL,
    url           TEXT NOT NULL,
    region        TEXT,
    fleet         TEXT NOT NULL,
    provider_id   TEXT,
    provider_name TEXT,
    info_json     TEXT,
    extra_json    TEXT NOT NULL DEFAULT '{{}}',
    status        TEXT NOT NULL CHECK (status IN ('alive','lost')),
    lost_reason   TEXT,
    first_seen    TEXT NOT NULL,
    last_seen     TEXT NOT NULL,
    PRIMARY KEY (run_id, node_id)
);
CREATE TABLE events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    ts          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    node_id     TEXT,
    job_id      TEXT,
    detail_json TEXT NOT NULL
);
CREATE INDEX events_run ON events(run_id, event_id);
{_BENCH_SCHEMA}
{_PILOT_SCHEMA}
{_LOCK_SCHEMA}
{_JOBSPEC_SCHEMA}
{_COMPARE_SCHEMA}
{_MANIFEST_SCHEMA}
INSERT INTO schema_version (version, created_at) VALUES ({SCHEMA_VERSION}, '{{now}}');
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """One script, one transaction: a crash leaves either none of it or all of it."""
    try:
        conn.executescript("BEGIN IMMEDIATE;\n" + script + "\nCOMMIT;")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def create_schema(conn: sqlite3.Connection) -> None:
    """The whole schema on an empty database (already in WAL mode)."""
    _run_script(conn, _SCHEMA.replace("{now}", to_ts(utcnow())))


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file of an older schema up to this one, one transaction per step; no data is touched."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _run_script(
            conn,
            _MIGRATIONS[target]
            + f"\nINSERT INTO schema_version (version, created_at) VALUES ({target}, '{to_ts(utcnow())}');",
        )
