"""The run store: one SQLite file holding runs, jobs, results, nodes and events.

Every method that changes state commits before it returns (WAL journal, synchronous=FULL),
so what the dispatcher acts on is already on disk: a crash loses at most the request in
flight, never a recorded answer. Stored results are never deleted: a trigger refuses it,
and `results.job_id` is UNIQUE, so each job has at most one result (`record_result`
returns False for a second one and changes nothing).

Job states: pending -> running (claim_job) -> done (record_result) | failed (fail_job);
running -> pending (release_job, reset_running after a crash).

Schema 2 adds `bench_results`: one performance benchmark (a `BenchResult`, vLLM-keyed) per
node and place it ran from. Opening a schema-1 file for writing migrates it in one
transaction (a new table, nothing else touched); a read-only open of one reads no bench results.

Schema 3 adds the compatibility pilot (`beacon pilot`): `runs.kind` ('suite', or 'pilot' for a
run without jobs or suite) and, on `nodes`, the node's probe report (`probe_json`), or why there
is none (`probe_error`), and when it was asked for (`probed_at`). The migration only adds columns.

Schema 7 adds the run manifest (`requestor.store.manifest`): `record_result(...,
manifest_signer=...)` adds the result's entry and signs the run's statement again in the same
transaction as the result.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
from pydantic import BaseModel, ValidationError

from beacon_golem.core.beacon import JobSpecProvenance
from beacon_golem.core.bench import BenchResult
from beacon_golem.core.canonical import canonical_json
from beacon_golem.core.clock import to_ts, utcnow
from beacon_golem.core.compare import ComparisonPlan, RuntimeTrial
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import BeaconError, UsageError, one_line
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import Node
from beacon_golem.core.profiles import Profile
from beacon_golem.core.suite import PlannedJob, Suite
from beacon_golem.requestor.store.manifest import ManifestSigner, chain, entry_hash, genesis, sign_statement
from beacon_golem.requestor.store.rows import (
    JOB_STATES,
    BenchResultRow,
    BenchWhere,
    EventRow,
    JobRow,
    ManifestEntryRow,
    NodeRow,
    RawResultRow,
    RawRunRow,
    ResultRow,
    RunJobState,
    RunLockRow,
    RunManifestRow,
    RunRow,
    RunStatus,
    TrialRow,
    job_id_for,
    new_run_id,
    to_json_text,
)
from beacon_golem.requestor.store.schema import SCHEMA_VERSION, create_schema, migrate

DB_FILENAME = "beacon.db"

#: A run lock held from another machine counts as abandoned when its heartbeat is this old
#: (on this machine the holder's process is looked at instead).
LOCK_STALE_S = 120.0


class RunLocked(UsageError):
    """Another live process drives this run (`beacon run --resume` twice at once)."""


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _holder_alive(lock: RunLockRow, stale_after_s: float) -> bool:
    """Whether the process holding a run lock still runs: looked up on this machine, judged by
    its heartbeat from another one."""
    if lock.host != socket.gethostname():
        return (utcnow() - lock.heartbeat_at).total_seconds() < stale_after_s
    try:
        proc = psutil.Process(lock.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    except (psutil.Error, OSError):
        return True  # it exists but cannot be looked at (another user's): held
    return lock.proc_started is None or abs(started - lock.proc_started) < 1.0









def default_db_path() -> Path:
    return load_settings().data_dir / DB_FILENAME






# ---------------------------------------------------------------------------------------
# Row models: one per table, what every read returns.
















# ---------------------------------------------------------------------------------------


class Store:
    """One SQLite file. Safe to share between threads (one connection behind a lock).

    `readonly=True` opens an existing database for reading and never writes to it;
    `create=False` refuses to create a database that is not there.
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn = self._open(create=create and not readonly)

    # -- opening -----------------------------------------------------------------------

    def _fail(self, what: str) -> BeaconError:
        return BeaconError(f"{self.path}: {what}")

    def _open(self, create: bool) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise self._fail("is a directory, not a database file")
        exists = path.exists()
        if not exists and not create:
            raise UsageError(f"{path}: no such database (nothing recorded yet, or pass --db PATH)")
        if exists and not os.access(path, os.R_OK):
            raise self._fail("cannot read the database file (permission denied)")
        if not self.readonly and exists and not os.access(path, os.W_OK):
            raise self._fail("the database file is not writable")
        if not exists:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._fail(f"cannot create its directory: {exc.strerror or exc}") from None
            if not os.access(path.parent, os.W_OK):
                raise self._fail("cannot create the database: its directory is not writable")
        mode = "ro" if self.readonly else ("rwc" if create else "rw")
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(path.absolute()))}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
            )
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open the database: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                if self.readonly:
                    raise self._fail("an empty database: no runs recorded")
                self._create_schema(conn)
            elif "schema_version" not in tables:
                raise self._fail("a SQLite database, but not a beacon-golem one (no schema_version table)")
            else:
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                version = row[0] if row else None
                if version is None:
                    raise self._fail("a beacon-golem database without a schema version")
                if version > SCHEMA_VERSION:
                    raise self._fail(
                        f"written by a newer beacon-golem (schema {version}; this one reads {SCHEMA_VERSION})"
                    )
                if version < SCHEMA_VERSION and not self.readonly:
                    migrate(conn, version)
            if not self.readonly:
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            msg = str(exc)
            if "not a database" in msg or "malformed" in msg:
                raise self._fail("not a SQLite database (file is not a database)") from None
            raise self._fail(f"cannot open the database: {msg}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if not mode or str(mode[0]).lower() != "wal":
            raise self._fail("cannot switch the database to WAL mode")
        create_schema(conn)

    def schema_version(self) -> int:
        row = self._query("SELECT MAX(version) FROM schema_version")
        return int(row[0][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (and synced) before the block's caller returns."""
        if self.readonly:
            raise self._fail("opened read-only")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail(f"cannot write: {exc}") from None
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise self._fail(f"cannot write: {exc}") from None
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise self._fail(f"cannot write: {exc}") from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(f"cannot read: {exc}") from None

    def _parse(self, model: type[BaseModel], data: dict[str, Any], what: str) -> Any:
        try:
            return model.model_validate(data)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise self._fail(f"stored {what} is not readable: {first}") from None

    # -- runs --------------------------------------------------------------------------

    def create_run(
        self,
        suite: Suite,
        suite_source: str | None,
        planned_jobs: Sequence[PlannedJob],
        fleet_desc: Any = None,
        *,
        run_id: str | None = None,
        jobspec: JobSpecProvenance | None = None,
    ) -> RunRow:
        """Record a run and all its jobs (pending) in one transaction.

        `jobspec`: where a run imported from a Beacon JobSpec came from (its signature verdict
        included), stored with the run (schema 5).
        """
        if not planned_jobs and suite.perf is None:
            raise UsageError("the suite plans no jobs")
        run_id = run_id or new_run_id()
        now = to_ts(utcnow())
        suite_hash = suite.suite_hash()
        suite_json = canonical_json(suite.canonical())
        try:  # never store a suite that would not read back as itself
            if Suite.model_validate_json(suite_json).suite_hash() != suite_hash:
                raise ValueError("it reads back as another suite")
        except ValueError as exc:
            first = one_line(exc) if isinstance(exc, ValidationError) else str(exc)
            raise UsageError(f"the suite cannot be stored: {first}") from None
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO runs (run_id, suite_name, suite_hash, suite_json, suite_source, fleet_json,"
                    " status, created_at, jobspec_json) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                    (run_id, suite.name, suite_hash, suite_json, suite_source, to_json_text(fleet_desc), now,
                     jobspec.model_dump_json() if jobspec is not None else None),
                )  # fmt: skip
                conn.executemany(
                    "INSERT INTO jobs (job_id, run_id, seq, job_key, question_id, category, model, runtime,"
                    " region, repetition, spec_json, state, attempts, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                    [
                        (job_id_for(run_id, j.seq), run_id, j.seq, j.key, j.question_id, j.category, j.model,
                         j.runtime, j.region, j.repetition, canonical_json(j.spec(suite_hash)), now)
                        for j in planned_jobs
                    ],
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise BeaconError(f"cannot record run {run_id}: {exc}") from None
        return self.get_run(run_id)

    def create_pilot_run(self, fleet_desc: Any = None, *, run_id: str | None = None) -> RunRow:
        """Record a compatibility pilot: a run with no suite and no jobs (`kind == "pilot"`)."""
        run_id = run_id or new_run_id()
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO runs (run_id, kind, suite_name, suite_hash, suite_json, suite_source, fleet_json,"
                    " status, created_at) VALUES (?, 'pilot', 'pilot', '', 'null', 'beacon pilot', ?, 'running', ?)",
                    (run_id, to_json_text(fleet_desc), to_ts(utcnow())),
                )
            except sqlite3.IntegrityError as exc:
                raise BeaconError(f"cannot record run {run_id}: {exc}") from None
        return self.get_run(run_id)

    def _run_row(self, row: sqlite3.Row) -> RunRow:
        counts = dict.fromkeys(JOB_STATES, 0)
        for c in self._query("SELECT state, COUNT(*) FROM jobs WHERE run_id = ? GROUP BY state", (row["run_id"],)):
            counts[c[0]] = c[1]
        try:
            suite = json.loads(row["suite_json"])
            fleet = json.loads(row["fleet_json"])
        except ValueError as exc:
            raise self._fail(f"stored run {row['run_id']} is not readable: {exc}") from None
        # A suite that no longer reads (stored by an older version that let `.inf` through, or
        # edited by hand) must not take every other run down with it: the run reads without it.
        suite_error = None
        if suite is not None:
            try:
                suite = Suite.model_validate(suite)
            except ValueError as exc:  # a ValidationError too
                suite = None
                suite_error = one_line(exc) if isinstance(exc, ValidationError) else str(exc).splitlines()[0]
        data = dict(row) | {"suite": suite, "suite_error": suite_error, "fleet_desc": fleet, "job_counts": counts}
        data.pop("jobspec_json", None)
        if "jobspec_json" in row.keys() and row["jobspec_json"]:  # no such column in an older file opened read-only
            try:
                data["jobspec"] = JobSpecProvenance.model_validate_json(row["jobspec_json"])
            except ValueError as exc:
                raise self._fail(f"stored JobSpec of run {row['run_id']} is not readable: {str(exc).splitlines()[0]}") from None
        return self._parse(RunRow, data, f"run {row['run_id']}")

    def get_run(self, run_id: str) -> RunRow:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise UsageError(f"no run '{run_id}' in {self.path}")
        return self._run_row(rows[0])

    def find_run(self, ref: str) -> RunRow:
        """A run by its id, a unique prefix of it, or `latest`."""
        if ref == "latest":
            rows = self._query("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 1")
            if not rows:
                raise UsageError(f"no runs in {self.path}")
            return self._run_row(rows[0])
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (ref,))
        if not rows:
            escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self._query("SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",))
            if len(rows) > 1:
                raise UsageError(f"'{ref}' matches more than one run in {self.path}; give more of the id")
        if not rows:
            raise UsageError(f"no run '{ref}' in {self.path}")
        return self._run_row(rows[0])

    def list_runs(self) -> list[RunRow]:
        """Every run, newest first."""
        return [self._run_row(r) for r in self._query("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC")]

    def finish_run(self, run_id: str, status: RunStatus) -> RunRow:
        if status == "running":
            raise ValueError("finish_run needs a final status, not 'running'")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", (status, to_ts(utcnow()), run_id)
            )
            if cur.rowcount == 0:
                raise UsageError(f"no run '{run_id}' in {self.path}")
        return self.get_run(run_id)

    def reopen_run(self, run_id: str) -> RunRow:
        """Mark a finished or interrupted run running again (for resume)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", (run_id,)
            )
            if cur.rowcount == 0:
                raise UsageError(f"no run '{run_id}' in {self.path}")
        return self.get_run(run_id)

    # -- run locks (schema 4) -----------------------------------------------------------

    def _lock_row(self, conn: sqlite3.Connection, run_id: str) -> RunLockRow | None:
        row = conn.execute("SELECT * FROM run_locks WHERE run_id = ?", (run_id,)).fetchone()
        return self._parse(RunLockRow, dict(row), f"lock of run {run_id}") if row else None

    def lock_run(self, run_id: str, *, stale_after_s: float = LOCK_STALE_S) -> str:
        """Take the run for this process: one run, one process. Returns the lock's token (for
        `heartbeat_run_lock` and `unlock_run`). A lock whose holder died (its process is gone, or
        its heartbeat from another machine is older than `stale_after_s`) is taken over, with a
        `lock_taken_over` event; a live holder raises `RunLocked` naming it."""
        token = secrets.token_hex(8)
        now = to_ts(utcnow())
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UsageError(f"no run '{run_id}' in {self.path}")
            held = self._lock_row(conn, run_id)
            if held is not None:
                if _holder_alive(held, stale_after_s):
                    raise RunLocked(
                        f"run {run_id} is being driven by {held.describe()}"
                        f"{': ' + held.command if held.command else ''}; one process drives a run at a time "
                        "(wait for it to end, or stop it, then resume)"
                    )
                conn.execute("DELETE FROM run_locks WHERE run_id = ?", (run_id,))
                conn.execute(
                    "INSERT INTO events (run_id, ts, kind, node_id, job_id, detail_json) VALUES (?, ?, ?, NULL, NULL, ?)",
                    (run_id, now, "lock_taken_over", to_json_text({"previous": held.describe(), "pid": held.pid,
                                                                    "host": held.host})),
                )  # fmt: skip
            pid = os.getpid()
            conn.execute(
                "INSERT INTO run_locks (run_id, token, pid, host, proc_started, command, acquired_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, token, pid, socket.gethostname(), _process_started(pid),
                 " ".join(["beacon", *sys.argv[1:]])[:300] if sys.argv else None, now, now),
            )  # fmt: skip
        return token

    def heartbeat_run_lock(self, run_id: str, token: str) -> bool:
        """The holder is alive: False when the lock is no longer this token's (it was taken over)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE run_locks SET heartbeat_at = ? WHERE run_id = ? AND token = ?", (to_ts(utcnow()), run_id, token)
            )
        return cur.rowcount > 0

    def unlock_run(self, run_id: str, token: str) -> bool:
        """Release the run; False when this token did not hold it (any more)."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM run_locks WHERE run_id = ? AND token = ?", (run_id, token))
        return cur.rowcount > 0

    def run_lock(self, run_id: str) -> RunLockRow | None:
        """Who drives the run now (None: nobody, or a file of schema 3 or older opened read-only)."""
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'run_locks'"):
            return None
        with self._lock:
            return self._lock_row(self._conn, run_id)

    # -- jobs --------------------------------------------------------------------------

    def _job_row(self, row: sqlite3.Row) -> JobRow:
        try:
            spec = json.loads(row["spec_json"])
        except ValueError as exc:
            raise self._fail(f"stored job {row['job_id']} is not readable: {exc}") from None
        data = {k: row[k] for k in row.keys() if k != "spec_json"} | {"spec": spec}
        return self._parse(JobRow, data, f"job {row['job_id']}")

    def jobs(self, run_id: str, states: Sequence[RunJobState] | None = None) -> list[JobRow]:
        """The run's jobs in plan order, optionally only those in `states`."""
        sql, params = "SELECT * FROM jobs WHERE run_id = ?", [run_id]
        if states is not None:
            if not states:
                return []
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            params += list(states)
        return [self._job_row(r) for r in self._query(sql + " ORDER BY seq", params)]

    def get_job(self, job_id: str) -> JobRow:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise BeaconError(f"no job '{job_id}' in {self.path}")
        return self._job_row(rows[0])

    def job_counts(self, run_id: str) -> dict[str, int]:
        return self.get_run(run_id).job_counts

    def _require_job(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise BeaconError(f"no job '{job_id}' in {self.path}")
        return row

    def claim_job(self, job_id: str, node_id: str) -> JobRow | None:
        """pending -> running on `node_id`, attempts + 1. None when the job is not pending."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, node_id = ?, updated_at = ?"
                " WHERE job_id = ? AND state = 'pending'",
                (node_id, to_ts(utcnow()), job_id),
            )
            if cur.rowcount == 0:
                self._require_job(conn, job_id)
                return None
        return self.get_job(job_id)

    def record_result(
        self,
        job_id: str,
        node_id: str,
        result: GenerationResult,
        started_at: datetime,
        ended_at: datetime,
        receipt: dict[str, Any] | BaseModel | None,
        manifest_signer: ManifestSigner | None = None,
    ) -> bool:
        """Store a job's answer and mark it done, exactly once.

        Returns False, changing nothing, when the job already has a result. A result is
        accepted from any state (a late answer for a released or failed job still counts).
        With `manifest_signer`, the run's manifest gets the result's entry and is signed again,
        in the same transaction (`requestor.store.manifest`).
        """
        if isinstance(receipt, BaseModel):
            receipt = receipt.model_dump(mode="json")
        receipt_json = to_json_text(receipt) if receipt is not None else None
        with self._tx() as conn:
            job = self._require_job(conn, job_id)
            if conn.execute("SELECT 1 FROM results WHERE job_id = ?", (job_id,)).fetchone():
                return False
            now = to_ts(utcnow())
            row = (job_id, job["run_id"], node_id, result.text, result.model_dump_json(), to_ts(started_at),
                   to_ts(ended_at), receipt_json)  # fmt: skip
            try:
                conn.execute(
                    "INSERT INTO results (job_id, run_id, node_id, text, result_json, started_at, ended_at,"
                    " receipt_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, now),
                )
            except sqlite3.IntegrityError:
                return False
            conn.execute(
                "UPDATE jobs SET state = 'done', node_id = ?, error = NULL, updated_at = ? WHERE job_id = ?",
                (node_id, now, job_id),
            )
            if manifest_signer is not None:
                self._extend_manifest(conn, job["run_id"], job_id, manifest_signer, now)
        return True

    _RESULT_ROW = "job_id, run_id, node_id, text, result_json, started_at, ended_at, receipt_json"

    def _extend_manifest(
        self, conn: sqlite3.Connection, run_id: str, job_id: str, signer: ManifestSigner, now: str
    ) -> None:
        """Add the result of `job_id` (just stored) to the run's manifest and sign it again.

        A run whose results were stored before it had a manifest (a run resumed across versions)
        first takes those in, in the order they were stored (`adopted` in the statement)."""
        held = conn.execute("SELECT statement_json FROM run_manifests WHERE run_id = ?", (run_id,)).fetchone()
        adopted = 0
        if held is not None:
            try:
                statement = json.loads(held[0])
                count, digest = int(statement["count"]), str(statement["digest"])
                adopted = int(statement.get("adopted", 0))
            except (ValueError, TypeError, KeyError):
                raise self._fail(f"the manifest of run {run_id} is not readable: no result can be added") from None
            rows = conn.execute(f"SELECT {self._RESULT_ROW} FROM results WHERE job_id = ?", (job_id,)).fetchall()
        else:
            count, digest = 0, genesis(run_id)
            rows = conn.execute(
                f"SELECT {self._RESULT_ROW} FROM results r WHERE r.run_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM manifest_entries e WHERE e.job_id = r.job_id)"
                " ORDER BY (r.job_id = ?), r.result_id",
                (run_id, job_id),
            ).fetchall()
            adopted = len(rows) - 1
        for r in rows:
            entry = entry_hash(*(r[k] for k in range(8)))
            count += 1
            digest = chain(digest, count, r["job_id"], entry)
            conn.execute(
                "INSERT INTO manifest_entries (run_id, position, job_id, entry_hash) VALUES (?, ?, ?, ?)",
                (run_id, count, r["job_id"], entry),
            )
        statement = sign_statement(signer, run_id, count, digest, now, adopted)
        conn.execute(
            "INSERT INTO run_manifests (run_id, statement_json, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET statement_json = excluded.statement_json,"
            " updated_at = excluded.updated_at",
            (run_id, to_json_text(statement), now),
        )

    def release_job(self, job_id: str, reason: str) -> bool:
        """running -> pending (to be tried again), keeping `reason` as the job's last error."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', node_id = NULL, error = ?, updated_at = ?"
                " WHERE job_id = ? AND state = 'running'",
                (reason, to_ts(utcnow()), job_id),
            )
            if cur.rowcount == 0:
                self._require_job(conn, job_id)
        return cur.rowcount > 0

    def fail_job(self, job_id: str, error: str) -> bool:
        """pending or running -> failed (no more attempts). False when already done or failed."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, updated_at = ?"
                " WHERE job_id = ? AND state IN ('pending', 'running')",
                (error, to_ts(utcnow()), job_id),
            )
            if cur.rowcount == 0:
                self._require_job(conn, job_id)
        return cur.rowcount > 0

    def reset_running(self, run_id: str) -> int:
        """After a crash: every running job of the run back to pending. Returns how many."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', node_id = NULL,"
                " error = 'interrupted: the runner stopped while this job ran', updated_at = ?"
                " WHERE run_id = ? AND state = 'running'",
                (to_ts(utcnow()), run_id),
            )
        return cur.rowcount

    def retry_failed(self, run_id: str) -> int:
        """Every failed job of the run back to pending (attempts are kept). Returns how many."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', node_id = NULL, updated_at = ?"
                " WHERE run_id = ? AND state = 'failed'",
                (to_ts(utcnow()), run_id),
            )
        return cur.rowcount

    # -- results -------------------------------------------------------------------------

    def _result_row(self, row: sqlite3.Row) -> ResultRow:
        try:
            result = json.loads(row["result_json"])
            receipt = json.loads(row["receipt_json"]) if row["receipt_json"] is not None else None
        except ValueError as exc:
            raise self._fail(f"stored result of job {row['job_id']} is not readable: {exc}") from None
        data = {k: row[k] for k in row.keys() if k not in ("result_json", "receipt_json")}
        return self._parse(ResultRow, data | {"result": result, "receipt": receipt}, f"result of job {row['job_id']}")

    def results(self, run_id: str) -> list[ResultRow]:
        """The run's results in plan order."""
        rows = self._query(
            "SELECT r.* FROM results r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = ? ORDER BY j.seq",
            (run_id,),
        )
        return [self._result_row(r) for r in rows]

    def get_result(self, job_id: str) -> ResultRow | None:
        rows = self._query("SELECT * FROM results WHERE job_id = ?", (job_id,))
        return self._result_row(rows[0]) if rows else None

    def raw_results(self, run_id: str) -> list[RawResultRow]:
        """Every result and every job marked done, exactly as stored, in plan order."""
        rows = self._query(
            "SELECT j.job_id, j.run_id, j.seq, j.job_key, j.question_id, j.category, j.model, j.runtime, j.region,"
            " j.repetition, j.state AS job_state, j.spec_json, r.result_id IS NOT NULL AS has_result, r.node_id,"
            " r.text, r.result_json, r.started_at, r.ended_at, r.receipt_json"
            " FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id"
            " WHERE j.run_id = ? AND (r.result_id IS NOT NULL OR j.state = 'done') ORDER BY j.seq",
            (run_id,),
        )
        return [RawResultRow.model_validate({k: r[k] for k in r.keys()}) for r in rows]

    def raw_run(self, run_id: str) -> RawRunRow:
        """The run's suite columns exactly as stored."""
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise UsageError(f"no run '{run_id}' in {self.path}")
        row = rows[0]
        return RawRunRow.model_validate({k: row[k] for k in ("run_id", "suite_name", "suite_hash", "suite_json")}
                                        | {"kind": row["kind"] if "kind" in row.keys() else "suite"})  # fmt: skip

    def has_manifests(self) -> bool:
        """Whether the file keeps run manifests (schema 7; an older file opened read-only does not)."""
        return self._has_table("run_manifests")

    def run_manifest(self, run_id: str) -> RunManifestRow | None:
        """The run's manifest as stored: None when it has none (or the file is older than schema 7)."""
        if not self.has_manifests():
            return None
        rows = self._query("SELECT run_id, statement_json, updated_at FROM run_manifests WHERE run_id = ?", (run_id,))
        entries = [
            ManifestEntryRow(position=e["position"], job_id=e["job_id"], entry_hash=e["entry_hash"])
            for e in self._query(
                "SELECT position, job_id, entry_hash FROM manifest_entries WHERE run_id = ? ORDER BY position",
                (run_id,),
            )
        ]
        if not rows:
            if not entries:
                return None
            return RunManifestRow(run_id=run_id, statement_json="", updated_at="", entries=entries)
        return RunManifestRow(run_id=run_id, statement_json=rows[0]["statement_json"], updated_at=rows[0]["updated_at"],
                              entries=entries)  # fmt: skip

    def job_labels(self, run_id: str) -> dict[str, tuple[int, str, str, str]]:
        """job id -> (seq, question_id, model, region) as stored, for every job of the run (no spec parsed)."""
        rows = self._query("SELECT job_id, seq, question_id, model, region FROM jobs WHERE run_id = ?", (run_id,))
        return {r["job_id"]: (r["seq"], r["question_id"], r["model"], r["region"]) for r in rows}

    def raw_result_rows(self, run_id: str) -> dict[str, str]:
        """job id -> the manifest entry hash of its stored result row, for every result of the run."""
        rows = self._query(f"SELECT {self._RESULT_ROW} FROM results WHERE run_id = ?", (run_id,))
        return {r["job_id"]: entry_hash(*(r[k] for k in range(8))) for r in rows}

    # -- nodes ---------------------------------------------------------------------------

    def _node_row(self, row: sqlite3.Row) -> NodeRow:
        try:
            info = json.loads(row["info_json"]) if row["info_json"] else None
            extra = json.loads(row["extra_json"] or "{}")
        except ValueError as exc:
            raise self._fail(f"stored node {row['node_id']} is not readable: {exc}") from None
        data = {k: row[k] for k in row.keys() if k not in ("info_json", "extra_json", "probe_json")}
        probe = None
        if "probe_json" in row.keys() and row["probe_json"]:  # no such column in a schema-2 file opened read-only
            try:
                probe = json.loads(row["probe_json"])
            except ValueError:
                data["probe_error"] = data.get("probe_error") or "the stored probe is not valid JSON"
        return self._parse(NodeRow, data | {"info": info, "extra": extra, "probe": probe}, f"node {row['node_id']}")

    def upsert_node(self, run_id: str, node: Node) -> NodeRow:
        """Record a node of the run (alive); a node seen again is updated and alive again.

        Its token is never stored. A node given without `info` keeps the info stored before.
        """
        now = to_ts(utcnow())
        info = node.info.model_dump_json() if node.info is not None else None
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO nodes (run_id, node_id, url, region, fleet, provider_id, provider_name, info_json,"
                    " extra_json, status, lost_reason, first_seen, last_seen)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'alive', NULL, ?, ?)"
                    " ON CONFLICT (run_id, node_id) DO UPDATE SET url = excluded.url, region = excluded.region,"
                    " fleet = excluded.fleet, provider_id = excluded.provider_id,"
                    " provider_name = excluded.provider_name, info_json = COALESCE(excluded.info_json, info_json),"
                    " extra_json = excluded.extra_json, status = 'alive', lost_reason = NULL,"
                    " last_seen = excluded.last_seen",
                    (run_id, node.node_id, node.url, node.region, node.fleet, node.provider_id, node.provider_name,
                     info, to_json_text(node.extra), now, now),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise UsageError(f"no run '{run_id}' in {self.path}") from None
        return self.get_node(run_id, node.node_id)  # type: ignore[return-value]

    def set_node_probe(self, run_id: str, node_id: str, probe: dict[str, Any] | BaseModel | None, error: str | None = None) -> bool:
        """Keep a node's probe report (or why there is none) with the node.

        A stored report is never overwritten: a later report leaves it as it is (the machine under
        a node does not change), and a later failed attempt only records its error next to it.
        """
        if isinstance(probe, BaseModel):
            probe = probe.model_dump(mode="json")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE nodes SET probe_json = COALESCE(probe_json, ?), probe_error = ?, probed_at = ?"
                " WHERE run_id = ? AND node_id = ?",
                (to_json_text(probe) if probe is not None else None, error, to_ts(utcnow()), run_id, node_id),
            )
        return cur.rowcount > 0

    def mark_node_lost(self, run_id: str, node_id: str, reason: str) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE nodes SET status = 'lost', lost_reason = ?, last_seen = ? WHERE run_id = ? AND node_id = ?",
                (reason, to_ts(utcnow()), run_id, node_id),
            )
        return cur.rowcount > 0

    def get_node(self, run_id: str, node_id: str) -> NodeRow | None:
        rows = self._query("SELECT * FROM nodes WHERE run_id = ? AND node_id = ?", (run_id, node_id))
        return self._node_row(rows[0]) if rows else None

    def set_node_extra(self, run_id: str, node_id: str, **values: Any) -> None:
        """Merge `values` into a node's `extra` (e.g. `glm_spent` once the fleet has settled)."""
        node = self.get_node(run_id, node_id)
        if node is None:
            return
        with self._tx() as conn:
            conn.execute(
                "UPDATE nodes SET extra_json = ? WHERE run_id = ? AND node_id = ?",
                (to_json_text({**node.extra, **values}), run_id, node_id),
            )

    def provider_history(self, provider_id: str) -> tuple[int, int]:
        """(runs the provider served in, runs in which we lost it), over every run in the store."""
        row = self._query(
            "SELECT COUNT(DISTINCT run_id), COUNT(DISTINCT CASE WHEN status = 'lost' THEN run_id END)"
            " FROM nodes WHERE provider_id = ?",
            (provider_id,),
        )[0]
        return int(row[0]), int(row[1])

    def nodes(self, run_id: str) -> list[NodeRow]:
        return [self._node_row(r) for r in self._query("SELECT * FROM nodes WHERE run_id = ? ORDER BY first_seen, node_id", (run_id,))]

    # -- bench results -------------------------------------------------------------------

    def add_bench_result(
        self,
        run_id: str,
        node_id: str,
        where: BenchWhere,
        label: str | None,
        profile: Profile | dict[str, Any],
        result: BenchResult | dict[str, Any],
    ) -> BenchResultRow:
        """Store one benchmark of a node. Every call adds a row; none is ever replaced or deleted.

        `result` is stored as `BenchResult.to_json_dict()` writes it (vLLM keys per step); a dict is
        taken as already in that form (results of earlier versions, tests of unreadable rows).
        """
        if where not in ("node", "requestor"):
            raise ValueError(f"where must be 'node' or 'requestor', not {where!r}")
        if isinstance(profile, BaseModel):
            profile = profile.model_dump(mode="json")
        if isinstance(result, BenchResult):
            result = result.to_json_dict()
        now = to_ts(utcnow())
        with self._tx() as conn:
            try:
                cur = conn.execute(
                    'INSERT INTO bench_results (run_id, node_id, "where", label, profile_json, result_json, created_at)'
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, node_id, where, label, to_json_text(profile), to_json_text(result), now),
                )
            except sqlite3.IntegrityError:
                raise UsageError(f"no run '{run_id}' in {self.path}") from None
            bench_id = cur.lastrowid
        rows = self._query("SELECT * FROM bench_results WHERE bench_id = ?", (bench_id,))
        return self._bench_row(rows[0])

    def _bench_row(self, row: sqlite3.Row) -> BenchResultRow:
        try:
            profile = json.loads(row["profile_json"])
            result = json.loads(row["result_json"])
        except ValueError as exc:
            raise self._fail(f"stored bench result {row['bench_id']} is not readable: {exc}") from None
        data = {k: row[k] for k in row.keys() if k not in ("profile_json", "result_json")}
        return self._parse(BenchResultRow, data | {"profile": profile, "result": result}, f"bench result {row['bench_id']}")

    def bench_results(self, run_id: str, where: BenchWhere | None = None) -> list[BenchResultRow]:
        """The run's benchmarks in the order they were stored (none in a schema-1 file opened read-only)."""
        exists = self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bench_results'")
        if not exists:
            return []
        sql, params = "SELECT * FROM bench_results WHERE run_id = ?", [run_id]
        if where is not None:
            sql += ' AND "where" = ?'
            params.append(where)
        return [self._bench_row(r) for r in self._query(sql + " ORDER BY bench_id", params)]

    # -- comparisons (schema 6) -----------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def create_comparison(self, run_id: str, plan: ComparisonPlan) -> None:
        """Mark a run as a runtime comparison and keep its plan (once; a second call changes nothing)."""
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO comparisons (run_id, plan_json, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (run_id, plan.model_dump_json(), to_ts(utcnow())),
                )
            except sqlite3.IntegrityError:
                raise UsageError(f"no run '{run_id}' in {self.path}") from None

    def comparison_plan(self, run_id: str) -> ComparisonPlan | None:
        """The plan of a comparison run; None for any other run (or a file older than schema 6)."""
        if not self._has_table("comparisons"):
            return None
        rows = self._query("SELECT plan_json FROM comparisons WHERE run_id = ?", (run_id,))
        if not rows:
            return None
        try:
            return ComparisonPlan.model_validate_json(rows[0]["plan_json"])
        except ValueError as exc:
            raise self._fail(f"stored comparison plan of run {run_id} is not readable: {str(exc).splitlines()[0]}") from None

    def record_trial(self, run_id: str, trial: RuntimeTrial) -> TrialRow:
        """Keep what one runtime gave on one machine; a trial recorded again (a resumed comparison)
        replaces the one before for that machine and runtime."""
        now = to_ts(utcnow())
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO runtime_trials (run_id, machine, variant, runtime, node_id, status, provider_id,"
                    " hostname, gpu_model, bench_id, trial_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id, machine, variant) DO UPDATE SET runtime = excluded.runtime,"
                    " node_id = excluded.node_id, status = excluded.status, provider_id = excluded.provider_id,"
                    " hostname = excluded.hostname, gpu_model = excluded.gpu_model, bench_id = excluded.bench_id,"
                    " trial_json = excluded.trial_json, created_at = excluded.created_at",
                    (run_id, trial.machine, trial.variant, trial.runtime, trial.node_id, trial.status,
                     trial.provider_id, trial.hostname, trial.gpu_model, trial.bench_id, trial.model_dump_json(), now),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise UsageError(f"cannot record the trial of run '{run_id}': {exc}") from None
        rows = self._query(
            "SELECT * FROM runtime_trials WHERE run_id = ? AND machine = ? AND variant = ?",
            (run_id, trial.machine, trial.variant),
        )
        return self._trial_row(rows[0])

    def _trial_row(self, row: sqlite3.Row) -> TrialRow:
        try:
            trial = RuntimeTrial.model_validate_json(row["trial_json"])
        except ValueError as exc:
            raise self._fail(f"stored runtime trial {row['trial_id']} is not readable: {str(exc).splitlines()[0]}") from None
        return TrialRow(trial_id=row["trial_id"], run_id=row["run_id"], created_at=row["created_at"], trial=trial)

    def trials(self, run_id: str) -> list[TrialRow]:
        """A comparison's trials in the order they were recorded."""
        if not self._has_table("runtime_trials"):
            return []
        rows = self._query("SELECT * FROM runtime_trials WHERE run_id = ? ORDER BY trial_id", (run_id,))
        return [self._trial_row(r) for r in rows]

    def earlier_trials(
        self, *, provider_id: str | None = None, hostname: str | None = None, gpu_model: str | None = None
    ) -> list[TrialRow]:
        """Trials of every comparison on this provider, host or GPU model (the first given that matches),
        newest first: what `--runtime auto` chooses from."""
        if not self._has_table("runtime_trials"):
            return []
        for column, value in (("provider_id", provider_id), ("hostname", hostname), ("gpu_model", gpu_model)):
            if value:
                rows = self._query(
                    f"SELECT * FROM runtime_trials WHERE {column} = ? ORDER BY created_at DESC, trial_id DESC", (value,)
                )
                if rows:
                    return [self._trial_row(r) for r in rows]
        return []

    # -- events --------------------------------------------------------------------------

    def add_event(
        self, run_id: str, kind: str, node_id: str | None = None, job_id: str | None = None, **detail: Any
    ) -> EventRow:
        now = utcnow()
        with self._tx() as conn:
            try:
                cur = conn.execute(
                    "INSERT INTO events (run_id, ts, kind, node_id, job_id, detail_json) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, to_ts(now), kind, node_id, job_id, to_json_text(detail)),
                )
            except sqlite3.IntegrityError:
                raise UsageError(f"no run '{run_id}' in {self.path}") from None
            event_id = cur.lastrowid
        return EventRow(
            event_id=event_id or 0, run_id=run_id, ts=now, kind=kind, node_id=node_id, job_id=job_id,
            detail=json.loads(to_json_text(detail)),
        )  # fmt: skip

    def events(self, run_id: str, kinds: Sequence[str] | None = None) -> list[EventRow]:
        sql, params = "SELECT * FROM events WHERE run_id = ?", [run_id]
        if kinds is not None:
            if not kinds:
                return []
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += list(kinds)
        out = []
        for r in self._query(sql + " ORDER BY event_id", params):
            data = {k: r[k] for k in r.keys() if k != "detail_json"}
            try:
                data["detail"] = json.loads(r["detail_json"])
            except ValueError:
                data["detail"] = {"unreadable": r["detail_json"]}
            out.append(EventRow.model_validate(data))
        return out




def open_store(path: str | Path | None = None, *, readonly: bool = False, create: bool = True) -> Store:
    return Store(path, readonly=readonly, create=create)
