"""The Linux compatibility pilot: probe every node of a fleet, then one matrix of what each can run.

`run_pilot(store, run, fleet)` brings the fleet up and, as each node comes up, asks its shim for
the fingerprint (GET /info) and the probe (GET /probe), keeps both with the node in the store and
adds a row to the `Matrix`: provider, region, GPU(s) and VRAM, driver, CUDA, each check's
pass/warn/fail, and which runtimes can run there (on the GPU or the CPU) and why the others
cannot. A node that does not answer its probe gets a row saying why; the pilot goes on.

The same matrix comes from stored nodes (`matrix_from_store`, for `beacon report`) and from
fingerprints and probe reports given by hand (`build_matrix` over `NodeProbe`s, for tests).
`render_markdown` and `Matrix.model_dump_json` are the two files `beacon pilot` writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from beacon_golem.api.client import ShimClient
from beacon_golem.core.clock import utcnow
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.log import get_logger
from beacon_golem.core.matrix import NOTE_EVENT, Matrix, MatrixRow, NodeProbe, matrix_row
from beacon_golem.core.node import Node
from beacon_golem.requestor.fleets.base import Fleet, FleetEvent
from beacon_golem.requestor.store.matrix import matrix_from_store
from beacon_golem.requestor.store.rows import RunRow
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.driver import drive

log = get_logger(__name__)



# ---------------------------------------------------------------------------------------
# The matrix




























# ---------------------------------------------------------------------------------------
# Markdown and files












# ---------------------------------------------------------------------------------------
# The pilot


async def probe_node(node: Node, timeout_s: float = 120.0) -> NodeProbe:
    """Ask one node for its fingerprint and probe; never raises for a node that fails (the row says why)."""
    info, probe, error = node.info, None, None
    try:
        client = ShimClient(node.url, node.token, timeout_s=timeout_s, connect_timeout_s=min(20.0, timeout_s))
        async with client:
            try:
                info = await asyncio.wait_for(client.info(), timeout_s)
            except (BeaconError, TimeoutError) as exc:
                if info is None:
                    error = f"GET /info: {str(exc) or 'timed out'}"
            probe = await asyncio.wait_for(client.probe(), timeout_s)
    except TimeoutError:
        error = f"GET /probe: no answer in {timeout_s:g} s"
    except BeaconError as exc:
        error = str(exc)
    except Exception as exc:  # a node must not end the pilot
        error = f"{type(exc).__name__}: {exc}"
    if probe is not None:
        error = None
    return NodeProbe.from_node(node.model_copy(update={"info": info}), probe=probe, error=error, probed_at=utcnow())


async def run_pilot(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    *,
    on_row: Callable[[MatrixRow], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    probe_timeout_s: float = 120.0,
) -> Matrix:
    """Bring the fleet up, probe each node as it comes up, store everything, close the run.

    The run is `done` when at least one node answered its probe, `failed` otherwise.
    """
    run_id = run.run_id
    tasks: dict[str, asyncio.Task[NodeProbe]] = {}

    async def probe_and_store(node: Node) -> NodeProbe:
        result = await probe_node(node, probe_timeout_s)
        if result.info is not None and node.info is None:
            store.upsert_node(run_id, node.model_copy(update={"info": result.info}))
        store.set_node_probe(run_id, node.node_id, result.probe, result.error)
        if result.probe is not None:
            store.add_event(run_id, "probe_done", node_id=node.node_id, status=result.probe.status)
        else:
            store.add_event(run_id, "probe_failed", node_id=node.node_id, reason=result.error)
        log.info("pilot_probe", run=run_id, node=node.node_id, status=result.probe.status if result.probe else "error")
        if on_row is not None:
            on_row(matrix_row(result))
        return result

    def handle(event: FleetEvent) -> None:
        node = event.node
        if event.kind == "added":
            store.upsert_node(run_id, node)
            store.add_event(run_id, "node_added", node_id=node.node_id, url=node.url, region=node.region)
            if node.node_id not in tasks:
                tasks[node.node_id] = asyncio.create_task(probe_and_store(node))
        else:
            store.mark_node_lost(run_id, node.node_id, event.reason or "lost")
            store.add_event(run_id, "node_lost", node_id=node.node_id, reason=event.reason)

    async def probe_all(up: Fleet) -> bool:
        try:
            while True:
                while (event := up.next_event_nowait()) is not None:
                    handle(event)
                pending = [t for t in tasks.values() if not t.done()]
                if not pending:
                    break
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            return any(t.result().probe is not None for t in tasks.values())
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def keep_notes(stopped: Fleet) -> None:
        for line in [*getattr(stopped, "refusals", []), *getattr(stopped, "failures", [])]:
            store.add_event(run_id, NOTE_EVENT, message=str(line))

    await drive(store, run, fleet, [probe_all], on_note=on_note, while_starting=handle, on_stopped=keep_notes)
    matrix = matrix_from_store(store, run_id)
    assert matrix is not None  # a pilot run always has one
    return matrix
