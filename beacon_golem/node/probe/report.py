"""The probe's answer: facts, checks and runtime verdicts in one JSON-ready model."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from beacon_golem.core.probe import MachineFacts, ProbeReport, worst
from beacon_golem.node.probe.checks import run_checks
from beacon_golem.node.probe.facts import gather_facts
from beacon_golem.node.probe.verdicts import runtime_verdicts


def evaluate(facts: MachineFacts) -> ProbeReport:
    """Judge given facts (a test's fake GPU machine, or facts read from a node's /probe)."""
    checks = run_checks(facts)
    return ProbeReport(
        status=worst([c.status for c in checks]), checks=checks, runtimes=runtime_verdicts(facts), facts=facts
    )


async def run_probe(disk_path: Path | None = None, network: bool = False, network_timeout_s: float = 3.0) -> ProbeReport:
    """Read this machine and judge it. The network check runs only when asked for."""
    return evaluate(await gather_facts(disk_path, network=network, network_timeout_s=network_timeout_s))


_CACHE: weakref.WeakKeyDictionary[Any, asyncio.Task[ProbeReport]] = weakref.WeakKeyDictionary()


def cached_probe(owner: Any, disk_path: Path | None = None) -> asyncio.Future[ProbeReport]:
    """The probe of this machine, run once per `owner` (a shim instance) and then reused.

    The machine does not change under a running node; the outbound check is never run here.
    A failed probe is not cached, so the next call tries again.
    """
    task = _CACHE.get(owner)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        task = asyncio.ensure_future(run_probe(disk_path))
        _CACHE[owner] = task
    return asyncio.shield(task)
