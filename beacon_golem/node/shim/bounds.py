"""What one node holds at most: generations in flight, requests waiting, prompts per perf job.

`InFlight` caps the generations the shim sends its runtime at once, over every route and every
job (4 jobs of concurrency 1,024 open at most `max_in_flight` upstream sockets, not 4,096). An
HTTP request that finds every slot taken waits, up to `max_waiting` of them; one more is a 503
that says so. A job's workers always wait: a job is already accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from beacon_golem.api.bodies import PerfJob
from beacon_golem.core.errors import BeaconError, RuntimeUnavailable
from beacon_golem.node.loadgen.run_bench import prompt_count


class NodeBusy(RuntimeUnavailable):
    """Every generation slot is taken and too many requests already wait for one (503)."""


class InFlight:
    def __init__(self, max_in_flight: int, max_waiting: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(max_in_flight)
        self.running = 0
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self, *, may_refuse: bool) -> AsyncIterator[None]:
        """Hold one generation slot. `may_refuse`: an HTTP request, refused (NodeBusy) rather than
        queued past `max_waiting`; a job's worker (False) always waits."""
        if self._slots.locked() and may_refuse and self.waiting >= self.max_waiting:
            raise NodeBusy(
                f"node busy: {self.running} generations in flight and {self.waiting} waiting "
                f"(BEACON_MAX_IN_FLIGHT={self.max_in_flight}, BEACON_MAX_WAITING={self.max_waiting}); retry later"
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


class PerfJobTooLarge(BeaconError):
    http_status = 422


#: Steps one perf job may have (a sweep's levels): each is a full measurement.
MAX_PERF_STEPS = 256


def check_perf_job(perf: PerfJob, max_prompts: int) -> None:
    """Refuse, before anything is built, a benchmark that would build more than `max_prompts`
    prompts (every step's and every warm-up's) or have more than MAX_PERF_STEPS steps."""
    levels = getattr(perf.profile, "concurrencies", None)
    if levels is not None and len(levels) > MAX_PERF_STEPS:
        raise PerfJobTooLarge(f"perf.profile.concurrencies: {len(levels)} levels, more than the {MAX_PERF_STEPS} a node runs")
    total = sum(prompt_count(step) + step.warmup for step in perf.profile.steps())
    if total > max_prompts:
        raise PerfJobTooLarge(
            f"perf: {total:,} prompts over its steps and warm-ups, more than this node builds for one job "
            f"({max_prompts:,}, BEACON_MAX_PERF_PROMPTS)"
        )
