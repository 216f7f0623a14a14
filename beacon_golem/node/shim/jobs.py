"""Batch jobs on a node: run a list of requests with bounded concurrency, durably.

Each job lives in `<data_dir>/jobs/<id>/`: `spec.json` (what was asked), `state.json`
(queued, running, done, cancelled) and `results.jsonl`, one `JobItem` appended and flushed
to disk as each request completes. A shim that restarts reloads every job, keeps every
finished result and runs only the requests that had not finished.

A perf job (`JobSubmission.perf`) runs one benchmark next to the runtime: each finished step is
appended to `steps.jsonl` (with the attempt number), and the whole `BenchResult` is written
to `bench.json` (or the reason it failed to `error.json`) before the job is done. A shim
that restarts mid-benchmark runs the benchmark again from its first step (a measurement cut
by a restart is not one), keeping the earlier attempt's steps in `steps.jsonl`.

A node keeps at most `max_jobs` jobs and `max_bytes` of them on disk: past either, the oldest
finished (done or cancelled) jobs are deleted, files and memory; when only unfinished jobs are
left and the node is still full, a new job is refused (503).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from beacon_golem.api.bodies import JobItem, JobSubmission, JobView, NodeJobState, PerfJob
from beacon_golem.core.bench import BenchResult, StepResult
from beacon_golem.core.errors import BeaconError, RuntimeUnavailable
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.log import get_logger

log = get_logger(__name__)

Generate = Callable[[GenerationRequest], Awaitable[GenerationResult]]
#: Runs one benchmark on the node: (plan, called with each finished step) -> its BenchResult.
PerfRunner = Callable[[PerfJob, Callable[[StepResult], None]], Awaitable[BenchResult]]


class _StateFile(BaseModel):
    state: NodeJobState
    created_at: datetime
    finished_at: datetime | None = None
    #: Perf jobs: how many times the benchmark was started (a restart starts it again).
    attempts: int = 0


def _now() -> datetime:
    return datetime.now(UTC)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class JobsFull(RuntimeUnavailable):
    """The node keeps as many unfinished jobs (or bytes of them) as it may: try again later (503)."""


def _dir_bytes(directory: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


class Job:
    def __init__(self, job_id: str, spec: JobSubmission, directory: Path, state: _StateFile) -> None:
        self.id = job_id
        self.spec = spec
        self.dir = directory
        self.state = state
        self.items: dict[int, JobItem] = {}
        self.task: asyncio.Task[None] | None = None
        #: Perf jobs: the result, or why there is none, and the steps finished in this attempt.
        self.bench: BenchResult | None = None
        self.error: str | None = None
        self.steps_done = 0

        #: Bytes of the job's files on disk, kept up to date as they grow.
        self.bytes = 0
        #: Called with the bytes each write added (the manager keeps the node within its bounds).
        self.on_growth: Callable[[Job, int], None] | None = None

    @property
    def finished(self) -> bool:
        return self.state.state in ("done", "cancelled")

    def _grew(self, added: int) -> None:
        self.bytes += added
        if self.on_growth is not None:
            self.on_growth(self, added)

    def save_state(self) -> None:
        _write_atomic(self.dir / "state.json", self.state.model_dump_json())

    def append(self, item: JobItem) -> None:
        line = item.model_dump_json() + "\n"
        with (self.dir / "results.jsonl").open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.items[item.index] = item
        self._grew(len(line.encode()))

    def write_json(self, name: str, data: Any) -> None:
        text = json.dumps(data)
        _write_atomic(self.dir / name, text)
        self._grew(len(text.encode()))

    def append_line(self, name: str, data: Any) -> None:
        line = json.dumps(data) + "\n"
        with (self.dir / name).open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._grew(len(line.encode()))

    def view(self, with_results: bool) -> JobView:
        if self.spec.perf is not None:
            return JobView(
                id=self.id,
                state=self.state.state,
                kind="perf",
                label=self.spec.label,
                total=self.spec.total,
                completed=len(self.bench.steps) if self.bench is not None else self.steps_done,
                failed=1 if self.error else 0,
                created_at=self.state.created_at,
                finished_at=self.state.finished_at,
                bench_result=self.bench if with_results else None,
                error=self.error,
            )
        items = sorted(self.items.values(), key=lambda i: i.index)
        return JobView(
            id=self.id,
            state=self.state.state,
            label=self.spec.label,
            total=self.spec.total,
            completed=sum(1 for i in items if i.ok),
            failed=sum(1 for i in items if not i.ok),
            created_at=self.state.created_at,
            finished_at=self.state.finished_at,
            results=items if with_results else None,
        )


class JobManager:
    """Owns every job of one shim; `generate` runs one request against the runtime."""

    def __init__(
        self,
        root: Path,
        generate: Generate,
        perf: PerfRunner | None = None,
        *,
        max_jobs: int = 200,
        max_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.root = root
        self.generate = generate
        self.perf = perf
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.jobs: dict[str, Job] = {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def total_bytes(self) -> int:
        return sum(j.bytes for j in self.jobs.values())

    def _track(self, job: Job) -> None:
        job.on_growth = lambda grown, _added: self._prune(keep=grown)
        self.jobs[job.id] = job

    def _prune(self, *, keep: Job | None = None, room_for_one: bool = False, new_bytes: int = 0) -> None:
        """Delete the oldest finished jobs while the node holds more than its bounds allow
        (`room_for_one`: leave room for one more job of `new_bytes`)."""
        def over() -> bool:
            count = len(self.jobs) + (1 if room_for_one else 0)
            return count > self.max_jobs or self.total_bytes + new_bytes > self.max_bytes

        if not over():
            return
        for job in sorted((j for j in self.jobs.values() if j.finished and j is not keep), key=lambda j: j.state.created_at):
            if not over():
                break
            self.jobs.pop(job.id, None)
            shutil.rmtree(job.dir, ignore_errors=True)
            log.info("job_pruned", job=job.id, bytes=job.bytes, jobs=len(self.jobs), total_bytes=self.total_bytes)

    def load(self) -> None:
        """Read every job back from disk and resume the unfinished ones."""
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                spec = JobSubmission.model_validate_json((directory / "spec.json").read_text())
                state = _StateFile.model_validate_json((directory / "state.json").read_text())
            except (OSError, ValidationError) as exc:
                log.warning("job_unreadable", job=directory.name, error=str(exc).splitlines()[0])
                continue
            job = Job(directory.name, spec, directory, state)
            try:
                job.bench = BenchResult.model_validate_json((directory / "bench.json").read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("job_file_unreadable", job=directory.name, file="bench.json", error=str(exc).splitlines()[0])
            try:
                job.error = json.loads((directory / "error.json").read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("job_file_unreadable", job=directory.name, file="error.json", error=str(exc))
            results = directory / "results.jsonl"
            if results.exists():
                for line in results.read_text().splitlines():
                    try:
                        item = JobItem.model_validate_json(line)
                    except ValidationError:
                        continue  # a line torn by a crash mid-write: that request runs again
                    job.items[item.index] = item
            job.bytes = _dir_bytes(directory)
            self._track(job)
            if state.state in ("queued", "running"):
                log.info("job_resumed", job=job.id, finished=len(job.items), total=spec.total)
                self._start(job)
        self._prune()  # a store left larger than the bounds (by an older version) is brought within them

    def submit(self, spec: JobSubmission) -> Job:
        text = spec.model_dump_json()
        self._prune(room_for_one=True, new_bytes=len(text))
        if len(self.jobs) >= self.max_jobs or self.total_bytes + len(text) > self.max_bytes:
            raise JobsFull(
                f"this node holds {len(self.jobs)} unfinished jobs ({self.total_bytes:,} bytes): the most it keeps is "
                f"{self.max_jobs} jobs and {self.max_bytes:,} bytes (BEACON_MAX_STORED_JOBS, BEACON_MAX_STORED_JOB_BYTES); "
                "wait for one to finish or cancel one"
            )
        job_id = uuid.uuid4().hex
        directory = self.root / job_id
        directory.mkdir()
        _write_atomic(directory / "spec.json", text)
        job = Job(job_id, spec, directory, _StateFile(state="queued", created_at=_now()))
        job.save_state()
        job.bytes = _dir_bytes(directory)
        self._track(job)
        self._start(job)
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(job_id) from None

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state.state in ("queued", "running"):
            if job.task:
                job.task.cancel()
                await asyncio.gather(job.task, return_exceptions=True)
            job.state.state = "cancelled"
            job.state.finished_at = _now()
            job.save_state()
        return job

    async def close(self) -> None:
        """Stop running jobs without marking them ended: a restart resumes them."""
        tasks = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, job: Job) -> None:
        job.task = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    async def _run(self, job: Job) -> None:
        if job.spec.perf is not None:
            await self._run_perf(job, job.spec.perf)
            return
        assert job.spec.requests is not None
        job.state.state = "running"
        job.save_state()
        pending = [i for i in range(len(job.spec.requests)) if i not in job.items]
        requests = job.spec.requests
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in pending:
            queue.put_nowait(index)

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                job.append(await self._one(requests[index], index))

        workers = min(job.spec.concurrency, len(pending)) or 1
        await asyncio.gather(*(worker() for _ in range(workers)))
        job.state.state = "done"
        job.state.finished_at = _now()
        job.save_state()
        log.info("job_done", job=job.id, total=len(job.spec.requests))

    async def _run_perf(self, job: Job, plan: PerfJob) -> None:
        job.state.state = "running"
        job.state.attempts += 1
        job.save_state()
        attempt = job.state.attempts
        job.steps_done = 0

        def on_step(step: StepResult) -> None:  # may be called from the benchmark's own thread
            job.append_line("steps.jsonl", {"attempt": attempt, "step": step.to_vllm_dict()})
            job.steps_done += 1

        error: str | None = None
        result: BenchResult | None = None
        try:
            if self.perf is None:
                raise BeaconError("this node does not run benchmarks")
            result = await self.perf(plan, on_step)
        except BeaconError as exc:
            error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the benchmark is another package's code: keep the shim serving
            log.exception("perf_job_crashed", job=job.id)
            error = f"the benchmark failed: {type(exc).__name__}: {exc}"
        if result is not None:
            job.write_json("bench.json", result.to_json_dict())
            job.bench = result
        else:
            job.write_json("error.json", error)
            job.error = error
        job.state.state = "done"
        job.state.finished_at = _now()
        job.save_state()
        log.info("perf_job_done", job=job.id, ok=result is not None, error=error)

    async def _one(self, request: GenerationRequest, index: int) -> JobItem:
        try:
            result = await self.generate(request)
        except BeaconError as exc:
            return JobItem(index=index, ok=False, error=str(exc), error_status=exc.http_status)
        return JobItem(index=index, ok=True, result=result)

