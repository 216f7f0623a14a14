"""The async load generator: runs one `Step` against one adapter and returns per-request records.

One event loop, one aiohttp session, one adapter `generate()` per request; requests are
built before the clock starts, so the only work per request is sending and parsing the
stream. The generator measures itself too: process CPU seconds over the step and the event
loop's lag (a timer that should fire every 10 ms), so a saturated client shows in the result
rather than as slower server figures.

Fixed concurrency runs N workers that each send their next request the moment the last
one ends. Rate steps send on a precomputed schedule (constant or seeded gamma gaps),
optionally capped in flight by a semaphore. Both stop at `num_prompts` or `duration_s`,
whichever comes first; requests in flight then run to their end. An overload monitor can
stop a step early (errors, TTFT growth, the server's queue gauge); in-flight requests then
get `drain_timeout_s` before they are cancelled (and counted as neither completed nor failed).
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Literal

from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.metrics import RequestRecord, percentile
from beacon_golem.core.profiles import OverloadPolicy, Step
from beacon_golem.node.loadgen.prompts import Prompt
from beacon_golem.node.loadgen.servermetrics import ServerMetricsReader
from beacon_golem.node.runtimes import RuntimeAdapter

Phase = Literal["prompts", "warmup", "running", "draining", "done"]


@dataclass(slots=True)
class ProgressEvent:
    step: int
    label: str
    phase: Phase
    completed: int = 0
    failed: int = 0
    total: int | None = None
    elapsed_s: float = 0.0
    duration_s: float | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(slots=True)
class ClientStats:
    cpu_s: float
    wall_s: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float

    @property
    def cpu_util(self) -> float:
        """CPU seconds per wall second: 1.0 is one core fully busy."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class StepRun:
    records: list[RequestRecord]
    duration_s: float
    client: ClientStats
    #: `time.perf_counter()` when the step began: records' `start_s`/`end_s` count from it.
    t0: float = 0.0
    stop_reason: str | None = None
    max_server_queue: float | None = None
    warmup_failed: int = 0
    warnings: list[str] = field(default_factory=list)


class LagMonitor:
    """Measures how late a 10 ms timer fires: the event loop's own queueing delay."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.lags_ms.append(max(0.0, (loop.time() - due) * 1000.0))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class LoadGenerator:
    """Runs steps against one adapter and model; holds nothing between steps but those."""

    def __init__(
        self,
        adapter: RuntimeAdapter,
        model: str,
        server: ServerMetricsReader | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.adapter = adapter
        self.model = model
        self.server = server
        self.progress = progress

    # ---- one request ---------------------------------------------------------------------------
    async def _one(
        self, index: int, request: GenerationRequest, prompt_tokens: int, t0: float, sink: Callable[[RequestRecord], None]
    ) -> None:
        """Send one request and hand its record to `sink`; a cancelled request is recorded, then re-raised."""
        start = time.perf_counter()
        try:
            result = await self.adapter.generate(request, self.model)
        except asyncio.CancelledError:
            now = time.perf_counter()
            sink(RequestRecord(index, start - t0, now - t0, "cancelled", input_tokens=prompt_tokens, error="cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a failed request, never a crash
            now = time.perf_counter()
            message = f"{type(exc).__name__}: {exc}"[:300]
            sink(
                RequestRecord(
                    index, start - t0, now - t0, "failed", e2el_ms=(now - start) * 1000.0, input_tokens=prompt_tokens, error=message
                )
            )
            return
        end = time.perf_counter()
        sink(
            RequestRecord(
                index=index,
                start_s=start - t0,
                end_s=end - t0,
                ttft_ms=result.ttft_ms,
                e2el_ms=result.e2e_ms,
                itl_ms=result.itl_ms,
                input_tokens=prompt_tokens,
                output_tokens=result.completion_tokens or 0,
                server_prompt_tokens=result.prompt_tokens,
                token_count_source=result.token_count_source,
                server_timings=result.server_timings,
            )
        )

    # ---- warmup --------------------------------------------------------------------------------
    async def warmup(self, step: Step, requests: Sequence[GenerationRequest]) -> int:
        """Send the warmup requests (at the step's concurrency); return how many failed."""
        if not requests:
            return 0
        self._emit(step, "warmup", total=len(requests))
        gate = asyncio.Semaphore(step.concurrency or len(requests))
        t0 = time.perf_counter()
        records: list[RequestRecord] = []

        async def one(i: int, r: GenerationRequest) -> None:
            async with gate:
                await self._one(i, r, 0, t0, records.append)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return sum(1 for r in records if not r.ok)

    # ---- a step --------------------------------------------------------------------------------
    async def run(self, step: Step, prompts: Sequence[Prompt], requests: Sequence[GenerationRequest]) -> StepRun:
        """Run `step` with prebuilt `requests` (cycled when the step runs past them)."""
        assert requests and len(prompts) == len(requests)
        records: list[RequestRecord] = []
        stop = asyncio.Event()
        state = _StepState(step, records, stop)
        total = step.num_prompts

        def finished(record: RequestRecord) -> None:
            records.append(record)
            state.count(record)
            if self.progress is not None:
                self._emit(step, "running", state=state)

        gc.collect()
        gc.freeze()
        lag = LagMonitor()
        lag.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        state.t0 = t0
        deadline = t0 + step.duration_s if step.duration_s else math.inf
        monitor = asyncio.create_task(self._watch(state, step.overload)) if step.overload.enabled else None
        tasks: list[asyncio.Task[None]] = []
        self._emit(step, "running", state=state)
        try:
            if step.mode == "concurrency":
                assert step.concurrency
                counter = iter(range(total if total is not None else 2**62))

                async def worker() -> None:
                    for i in counter:
                        if stop.is_set() or time.perf_counter() >= deadline:
                            return
                        k = i % len(requests)
                        await self._one(i, requests[k], prompts[k].tokens, t0, finished)

                tasks = [asyncio.create_task(worker()) for _ in range(step.concurrency)]
            else:
                n = total if total is not None else max(1, math.ceil((step.rate or 1.0) * (step.duration_s or 1.0)))
                offsets = step.send_offsets(n)
                gate = asyncio.Semaphore(step.concurrency) if step.concurrency else None

                async def send(i: int) -> None:
                    k = i % len(requests)
                    if gate is None:
                        await self._one(i, requests[k], prompts[k].tokens, t0, finished)
                        return
                    async with gate:
                        if stop.is_set() or time.perf_counter() >= deadline:
                            return
                        await self._one(i, requests[k], prompts[k].tokens, t0, finished)

                for i, offset in enumerate(offsets):
                    delay = t0 + offset - time.perf_counter()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), delay)
                        except TimeoutError:
                            pass
                    if stop.is_set() or time.perf_counter() >= deadline:
                        break
                    tasks.append(asyncio.create_task(send(i)))

            await self._finish(step, tasks, stop, state)
        except BaseException:
            # Cancelled from outside (or a bug): leave no request running behind us.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            end = time.perf_counter()
            cpu = time.process_time() - cpu0
            if monitor is not None:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            await lag.stop()
            gc.unfreeze()
        last_end = max((r.end_s for r in records), default=end - t0)
        duration = max(last_end, 1e-9)
        lags = lag.lags_ms
        client = ClientStats(
            cpu_s=cpu,
            wall_s=end - t0,
            loop_lag_p50_ms=percentile(lags, 50),
            loop_lag_p99_ms=percentile(lags, 99),
            loop_lag_max_ms=max(lags, default=0.0),
        )
        self._emit(step, "done", state=state)
        return StepRun(
            records=sorted(records, key=lambda r: r.index),
            duration_s=duration,
            client=client,
            t0=t0,
            stop_reason=state.stop_reason,
            max_server_queue=state.max_queue,
        )

    async def _finish(self, step: Step, tasks: list[asyncio.Task[None]], stop: asyncio.Event, state: _StepState) -> None:
        """Wait for the step's tasks; after an early stop give them `drain_timeout_s`, then cancel them."""
        if not tasks:
            return
        everything = asyncio.gather(*tasks, return_exceptions=True)
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({everything, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if everything in done:
            return
        self._emit(step, "draining", state=state)
        try:
            await asyncio.wait_for(asyncio.shield(everything), step.overload.drain_timeout_s)
        except TimeoutError:
            # Each request cut off leaves a "cancelled" record (see `_one`).
            for task in tasks:
                task.cancel()
            await everything

    async def _watch(self, state: _StepState, policy: OverloadPolicy) -> None:
        """Every `check_interval_s`: errors, TTFT growth and the server queue against the policy."""
        while not state.stop.is_set():
            await asyncio.sleep(policy.check_interval_s)
            reason = state.overload_reason(policy)
            if reason is None and policy.max_server_queue is not None and self.server is not None:
                values = await self.server.scrape()
                depth = self.server.queue_depth(values)
                if depth is not None:
                    state.max_queue = depth if state.max_queue is None else max(state.max_queue, depth)
                    if depth > policy.max_server_queue:
                        reason = (
                            f"server queue {depth:g} above {policy.max_server_queue} "
                            f"({', '.join(self.server.names.queue if self.server.names else ())})"
                        )
            if reason is not None:
                state.stop_reason = reason
                state.stop.set()
                return

    def _emit(self, step: Step, phase: Phase, state: _StepState | None = None, total: int | None = None) -> None:
        if self.progress is None:
            return
        if state is None:
            self.progress(ProgressEvent(step.index, step.label, phase, total=total, duration_s=step.duration_s))
            return
        failed = state.failed
        self.progress(
            ProgressEvent(
                step.index,
                step.label,
                phase,
                completed=len(state.records) - failed,
                failed=failed,
                total=step.num_prompts,
                elapsed_s=time.perf_counter() - state.t0 if state.t0 else 0.0,
                duration_s=step.duration_s,
            )
        )


class _StepState:
    def __init__(self, step: Step, records: list[RequestRecord], stop: asyncio.Event) -> None:
        self.step = step
        self.records = records
        self.stop = stop
        self.t0 = 0.0
        self.stop_reason: str | None = None
        self.max_queue: float | None = None
        self.failed = 0

    def count(self, record: RequestRecord) -> None:
        if record.outcome == "failed":
            self.failed += 1

    def overload_reason(self, policy: OverloadPolicy) -> str | None:
        finished = [r for r in self.records if r.outcome != "cancelled"]
        if len(finished) < policy.min_requests:
            return None
        failed = sum(1 for r in finished if r.outcome == "failed")
        rate = failed / len(finished)
        if rate > policy.max_error_rate:
            return f"error rate {rate:.0%} ({failed} of {len(finished)}) above {policy.max_error_rate:.0%}"
        if policy.max_ttft_growth is None:
            return None
        ttfts = [r.ttft_ms for r in sorted(finished, key=lambda r: r.end_s) if r.ok and r.ttft_ms is not None]
        if len(ttfts) < 2 * policy.window:
            return None
        first, last = median(ttfts[: policy.window]), median(ttfts[-policy.window :])
        if last > policy.min_ttft_ms and first > 0 and last / first > policy.max_ttft_growth:
            return (
                f"TTFT grew {last / first:.0f}x within the step (median of the last {policy.window} "
                f"{last:.0f} ms against {first:.0f} ms at the start): requests are queueing"
            )
        return None
