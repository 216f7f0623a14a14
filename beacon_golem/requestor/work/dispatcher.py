"""The dispatcher: every job of a run to a node that can serve it, exactly once.

(Beacon calls this part its hybrid router; our `beacon router` is the HTTP gateway in requestor/gateway.)
It sends every pending job of a run to a node that matches the job's model, runtime and
region, keeps each node at its concurrency limit, health-checks the nodes, moves the jobs
of a node that fails or disappears to another matching node with backoff, and ends every
job exactly once: the store accepts one result per job, and every state change is on disk
before the dispatcher acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from beacon_golem.api.client import MAX_NODE_BODY_BYTES, NodeUnreachable, ShimClient, ShimError
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node
from beacon_golem.core.suite import Limits
from beacon_golem.requestor.fleets.base import Fleet, FleetEvent
from beacon_golem.requestor.store.manifest import ManifestSigner
from beacon_golem.requestor.store.rows import JobRow
from beacon_golem.requestor.store.store import Store

log = get_logger(__name__)


class DispatchConfig(BaseModel):
    #: Job timeout, retries and backoff, as the suite sets them.
    limits: Limits = Field(default_factory=Limits)
    per_node_concurrency: int | None = None
    health_interval_s: float = 2.0
    #: How long one health check may take: a busy node answers slowly, a dead one refuses at once.
    #: Its own setting (BEACON_HEALTH_TIMEOUT_S), never the suite's job timeout.
    health_timeout_s: float = Field(default=10.0, gt=0)
    #: Largest body read from a node (a larger one fails the request, and nothing more of it is read).
    max_body_bytes: int = Field(default=MAX_NODE_BODY_BYTES, ge=1024)
    #: Consecutive failures (health checks or requests) after which a node counts as lost.
    node_failures_to_lose: int = 2
    #: How long jobs no node can serve wait for a matching node to join (Golem fleets add nodes).
    unmatched_wait_s: float = 0.0


class NodeProgress(BaseModel):
    node_id: str
    region: str | None
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    tokens: int = 0
    alive: bool = True
    first_at: float | None = None
    last_at: float | None = None

    @property
    def tokens_per_s(self) -> float:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.tokens / (self.last_at - self.first_at)


class RunProgress(BaseModel):
    total: int
    done: int = 0
    failed: int = 0
    nodes: dict[str, NodeProgress] = Field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.done + self.failed


class Receipts(Protocol):
    """Signs each result's receipt (`receipts.ReceiptIssuer`); its `manifest_signer` signs the
    run's manifest again with each result stored (`Store.record_result`)."""

    manifest_signer: ManifestSigner | None

    def __call__(
        self, job: JobRow, node: Node, result: GenerationResult, started_at: datetime, ended_at: datetime
    ) -> dict[str, Any] | None: ...


@dataclass
class _NodeState:
    node: Node
    client: ShimClient
    failures: int = 0
    alive: bool = True
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def node_matches(node: Node, job: JobRow) -> bool:
    """A node serves a job when region, runtime and model agree ('any' runtime matches all)."""
    if job.region and node.region and job.region != node.region:
        return False
    if job.region and not node.region:
        return False
    if job.runtime not in (None, "", "any") and node.runtime and node.runtime != job.runtime:
        return False
    return not (node.models and job.model not in node.models)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        run_id: str,
        fleet: Fleet,
        config: DispatchConfig | None = None,
        receipts: Receipts | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.fleet = fleet
        self.config = config or DispatchConfig()
        self.receipts = receipts
        self.on_progress = on_progress
        self.nodes: dict[str, _NodeState] = {}
        self.pending: dict[str, JobRow] = {}
        self.not_before: dict[str, float] = {}
        self.wakeup = asyncio.Event()
        self.progress = RunProgress(total=0)
        self._no_match_since: float | None = None
        #: Attempts each job had before this dispatch: a resumed run gives every job its retries again.
        self._attempts_before: dict[str, int] = {}
        self._closing: set[asyncio.Future[None]] = set()

    # ---- entry ---------------------------------------------------------------------------------
    async def run(self) -> RunProgress:
        jobs = self.store.jobs(self.run_id)
        self.progress.total = len(jobs)
        self.progress.done = sum(1 for j in jobs if j.state == "done")
        self.progress.failed = sum(1 for j in jobs if j.state == "failed")
        self.pending = {j.job_id: j for j in jobs if j.state == "pending"}
        self._attempts_before = {j.job_id: j.attempts for j in self.pending.values()}
        for node in self.fleet.nodes():
            self._add_node(node)
        self._drain_fleet_events()
        health = asyncio.create_task(self._health_loop(), name="health")
        try:
            await self._schedule_loop()
        finally:
            health.cancel()
            for state in self.nodes.values():
                for task in list(state.tasks):
                    task.cancel()
            tasks = [t for s in self.nodes.values() for t in s.tasks] + [health]
            await asyncio.gather(*tasks, return_exceptions=True)
            for state in self.nodes.values():
                await state.client.close()
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._emit()
        return self.progress

    # ---- nodes -----------------------------------------------------------------------------------
    def _add_node(self, node: Node) -> None:
        if node.node_id in self.nodes and self.nodes[node.node_id].alive:
            return
        if self.config.per_node_concurrency:
            node = node.model_copy(update={"concurrency": self.config.per_node_concurrency})
        client = ShimClient(
            node.url, node.token, timeout_s=self.config.limits.job_timeout_s, max_body_bytes=self.config.max_body_bytes
        )
        replaced = self.nodes.get(node.node_id)
        if replaced is not None:  # a lost node back again: its old client's session is closed, not leaked
            self._closing.add(asyncio.ensure_future(replaced.client.close()))
        self.nodes[node.node_id] = _NodeState(node=node, client=client)
        self.progress.nodes[node.node_id] = NodeProgress(node_id=node.node_id, region=node.region)
        self.store.upsert_node(self.run_id, node)
        self.store.add_event(self.run_id, "node_added", node_id=node.node_id, url=node.url, region=node.region)
        log.info("node_added", node=node.node_id, region=node.region, url=node.url)
        self._warn_context(node)
        self.wakeup.set()

    def _warn_context(self, node: Node) -> None:
        """Say so (an event and a warning) when the jobs ask for more tokens than the node's runtime
        holds for one request: their answers would be cut at the context's end."""
        settings = node.info.runtime.settings if node.info is not None else {}
        context = next((v for k in ("n_ctx", "max_model_len") if isinstance(v := settings.get(k), int) and v > 0), None)
        wanted = max((j.request.max_tokens for j in self.pending.values() if node_matches(node, j)), default=0)
        if context is not None and wanted > context:
            self.store.add_event(self.run_id, "max_tokens_over_context", node_id=node.node_id, max_tokens=wanted, context=context)
            log.warning("max_tokens_over_context", node=node.node_id, max_tokens=wanted, context=context)

    async def _lose_node(self, node_id: str, reason: str) -> None:
        """We found the node broken: stop using it, then tell the fleet (which may replace it)."""
        if not self._mark_lost(node_id, reason):
            return
        with contextlib.suppress(Exception):
            await self.fleet.report_lost(node_id, reason)
        self.wakeup.set()

    def _mark_lost(self, node_id: str, reason: str) -> bool:
        """Stop using a node now (no job is sent to it after this); its in-flight jobs go back to pending.
        False when the node is unknown or already lost."""
        state = self.nodes.get(node_id)
        if state is None or not state.alive:
            return False
        state.alive = False
        self.progress.nodes[node_id].alive = False
        self.store.mark_node_lost(self.run_id, node_id, reason)
        self.store.add_event(self.run_id, "node_lost", node_id=node_id, reason=reason)
        log.warning("node_lost", node=node_id, reason=reason)
        current = asyncio.current_task()
        for task in list(state.tasks):
            if task is not current:  # the job task that found the node broken has handled its job
                task.cancel()  # each cancelled job goes back to pending in _job_task_done
        self.wakeup.set()
        return True

    def _drain_fleet_events(self) -> None:
        while (event := self.fleet.next_event_nowait()) is not None:
            self._on_fleet_event(event)

    def _on_fleet_event(self, event: FleetEvent) -> None:
        if event.kind == "added":
            self._add_node(event.node)
        else:
            # Synchronously, before the scheduler runs again: a node the fleet has already lost
            # must not be handed jobs. The fleet knows, so it is not told back.
            self._mark_lost(event.node.node_id, event.reason or "removed by the fleet")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            self._drain_fleet_events()
            await asyncio.gather(*(self._check(s) for s in list(self.nodes.values()) if s.alive))

    async def _check(self, state: _NodeState) -> None:
        try:
            timeout = self.config.health_timeout_s  # its own setting: a job's timeout says nothing of a health check
            health = await asyncio.wait_for(state.client.health(timeout_s=timeout), timeout=timeout + 1)
            ok, reason = health.status == "ok", health.reason or "unhealthy"
        except (TimeoutError, BeaconError) as exc:
            ok, reason = False, str(exc) or "health check timed out"
        if ok:
            state.failures = 0
            return
        await self._node_failed(state, f"health check failed: {reason}")

    async def _node_failed(self, state: _NodeState, reason: str) -> None:
        state.failures += 1
        if state.failures >= self.config.node_failures_to_lose:
            await self._lose_node(state.node.node_id, reason)

    # ---- scheduling ------------------------------------------------------------------------------
    async def _schedule_loop(self) -> None:
        while self.pending or any(s.tasks for s in self.nodes.values()):
            self._drain_fleet_events()
            self._fail_unservable()
            now = time.monotonic()
            for state in self.nodes.values():
                while state.alive and len(state.tasks) < state.node.concurrency:
                    job = self._next_job_for(state.node, now)
                    if job is None:
                        break
                    self._start(state, job)
            self._emit()
            self.wakeup.clear()
            delay = min((t - now for t in self.not_before.values() if t > now), default=1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=max(0.01, min(delay, 1.0)))

    def _next_job_for(self, node: Node, now: float) -> JobRow | None:
        for job_id, job in self.pending.items():
            if self.not_before.get(job_id, 0.0) <= now and node_matches(node, job):
                return job
        return None

    def _fail_unservable(self) -> None:
        """Fail jobs that no live node can serve, once the fleet had its chance to add one."""
        alive = [s.node for s in self.nodes.values() if s.alive]
        orphans = [j for j in self.pending.values() if not any(node_matches(n, j) for n in alive)]
        if not orphans:
            self._no_match_since = None
            return
        now = time.monotonic()
        self._no_match_since = self._no_match_since or now
        # Wait for a node only while one may still join (a Golem fleet renting a replacement);
        # one that rents no more (budget spent, replacements used up) fails them now, saying why.
        expecting = self.fleet.expecting_nodes()
        if now - self._no_match_since < self.config.unmatched_wait_s and expecting:
            return
        why = "" if expecting else self.fleet.why_no_more_nodes()
        for job in orphans:
            where = f"region {job.region}, " if job.region else ""
            reason = f"no live node serves {where}model {job.model} (runtime {job.runtime or 'any'})"
            self._fail(job, f"{reason}: {why}" if why else reason)

    def _start(self, state: _NodeState, job: JobRow) -> None:
        del self.pending[job.job_id]
        self.not_before.pop(job.job_id, None)
        claimed = self.store.claim_job(job.job_id, state.node.node_id)
        if claimed is None:  # not pending in the store: someone else ended it
            return
        job = claimed
        self.progress.nodes[state.node.node_id].in_flight += 1
        task = asyncio.create_task(self._run_job(state, job), name=f"job-{job.job_id}")
        state.tasks.add(task)
        task.add_done_callback(lambda t: self._job_task_done(state, job, t))

    def _job_task_done(self, state: _NodeState, job: JobRow, task: asyncio.Task[None]) -> None:
        """Every job task ends here, also one cancelled before its first step (its body never
        sees that cancellation): a cancelled job goes back to pending for another node. A task
        that raised (its body handles every exception, so only a failure of that handling itself)
        has its exception retrieved and its job ended here: no job is left running."""
        state.tasks.discard(task)
        self.progress.nodes[state.node.node_id].in_flight -= 1
        if task.cancelled():
            self._requeue(job, state.node.node_id, f"node {state.node.node_id} lost mid-job")
        elif (exc := task.exception()) is not None:
            log.error("job_task_failed", job=job.job_id, node=state.node.node_id, error=repr(exc))
            try:
                self._retry_or_fail(job, state.node.node_id, f"internal error: {exc!r}")
            except Exception:  # the store itself failed: the run's final check finds the job unfinished
                log.exception("job_not_ended", job=job.job_id)
        self.wakeup.set()

    async def _run_job(self, state: _NodeState, job: JobRow) -> None:
        """One job on one node, every step of it (the request, the answer's checks, the receipt,
        the store) inside one `try`: whatever a node sends, the job ends done, requeued or failed."""
        node = state.node
        progress = self.progress.nodes[node.node_id]
        started = datetime.now(UTC)
        try:
            result = await state.client.infer(job.request)
            ended = datetime.now(UTC)
            receipt = self.receipts(job, node, result, started, ended) if self.receipts else None
            manifest = self.receipts.manifest_signer if self.receipts else None
            recorded = self.store.record_result(job.job_id, node.node_id, result, started, ended, receipt, manifest)
        except ShimError as exc:
            if exc.status in (400, 404, 413, 422):  # the request itself is wrong: retrying won't help
                self._fail(job, str(exc), node.node_id)
            else:
                self._retry_or_fail(job, node.node_id, str(exc))
                await self._node_failed(state, str(exc))
            return
        except (NodeUnreachable, BeaconError) as exc:
            self._retry_or_fail(job, node.node_id, str(exc))
            await self._node_failed(state, str(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an answer we cannot sign or store, or a bug of ours: never a job left running
            log.exception("job_error", job=job.job_id, node=node.node_id)
            self._retry_or_fail(job, node.node_id, f"internal error: {exc!r}")
            return
        state.failures = 0
        if recorded:
            self.progress.done += 1
            progress.done += 1
            progress.tokens += result.completion_tokens or 0
            progress.first_at = progress.first_at or time.monotonic() - result.e2e_ms / 1000
            progress.last_at = time.monotonic()

    def _requeue(self, job: JobRow, node_id: str, reason: str, delay_s: float = 0.0) -> None:
        if not self.store.release_job(job.job_id, reason):
            return  # not running any more (answered, failed or already released): nothing to retry
        self.store.add_event(self.run_id, "job_requeued", node_id=node_id, job_id=job.job_id, reason=reason)
        if delay_s:
            self.not_before[job.job_id] = time.monotonic() + delay_s
        self.pending[job.job_id] = job.model_copy(update={"state": "pending"})
        self.wakeup.set()

    def _retry_or_fail(self, job: JobRow, node_id: str, reason: str) -> None:
        attempts = job.attempts - self._attempts_before.get(job.job_id, 0)  # in this dispatch
        if attempts > self.config.limits.retries:
            self._fail(job, f"failed after {job.attempts} attempts: {reason}", node_id)
            return
        self._requeue(job, node_id, reason, self.config.limits.backoff_for(attempts + 1))

    def _fail(self, job: JobRow, reason: str, node_id: str | None = None) -> None:
        self.pending.pop(job.job_id, None)
        self.store.fail_job(job.job_id, reason)
        self.progress.failed += 1
        if node_id:
            self.progress.nodes[node_id].failed += 1
        log.warning("job_failed", job=job.job_id, reason=reason)

    def _emit(self) -> None:
        if self.on_progress:
            self.on_progress(self.progress)
