"""Perf jobs on the node: the load generator runs next to the runtime, against its own URL.

The benchmark gets its own event loop in its own thread, so the shim's loop (health checks,
`GET /jobs/{id}` polls) neither delays the load generator's timings nor waits behind it.
The result's `node` is the shim's own fingerprint (`GET /info`): the machine, the runtime and
its settings, exactly what a question job's result is stored with.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import SecretStr

from beacon_golem.api.bodies import PerfJob
from beacon_golem.core.bench import BenchResult, StepResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.node.loadgen.run_bench import run_bench
from beacon_golem.node.loadgen.target import Target
from beacon_golem.node.runtimes import RuntimeAdapter
from beacon_golem.node.shim.jobs import PerfRunner

T = TypeVar("T")


async def run_in_own_loop(make: Callable[[], Awaitable[T]], name: str = "perf") -> T:
    """Await `make()` on a fresh event loop in a thread of its own; cancelling this cancels it there."""
    caller = asyncio.get_running_loop()
    done: asyncio.Future[T] = caller.create_future()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def settle(ok: bool, value: Any) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)
        elif isinstance(value, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(value)

    def main() -> None:
        outcome: tuple[bool, Any] = (False, RuntimeError("the benchmark's thread ended without an outcome"))
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(make())  # type: ignore[arg-type]
            holder["loop"], holder["task"] = loop, task
            started.set()
            outcome = (True, loop.run_until_complete(task))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller as is)
            outcome = (False, exc)
        finally:
            started.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: no one to tell
                caller.call_soon_threadsafe(settle, *outcome)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits for it now
        started.wait()
        loop, task = holder.get("loop"), holder.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        await asyncio.to_thread(thread.join)
        raise


class PerfHost(Protocol):
    """What a perf job needs of the shim that runs it."""

    runtime: RuntimeAdapter

    @property
    def runtime_key(self) -> SecretStr | None: ...

    async def default_model(self) -> str: ...

    async def info(self) -> NodeInfo: ...


def node_perf_runner(shim: PerfHost) -> PerfRunner:
    """The `PerfRunner` a shim gives its JobManager: `run_bench` against the shim's runtime URL."""

    async def run(plan: PerfJob, on_step: Callable[[StepResult], None]) -> BenchResult:
        model = plan.model or await shim.default_model()
        info = await shim.info()
        # Straight at the runtime, with the key the node launched it with (none: a runtime it fronts).
        target = Target(url=shim.runtime.base_url, runtime=shim.runtime.name, model=model, token=shim.runtime_key,
                        launch_settings=dict(shim.runtime.launch_settings))  # fmt: skip

        result = await run_in_own_loop(
            lambda: run_bench(
                target, plan.profile, plan.prompts, slo=plan.slo, detailed=plan.detailed, on_step=on_step
            ),
            name="perf-job",
        )
        result.node = info.model_dump(mode="json")
        return result

    return run
