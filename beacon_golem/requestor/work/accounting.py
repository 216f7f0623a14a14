"""What a fleet's nodes cost, stored with the run: each record as an event, the total on each node."""

from __future__ import annotations

from pydantic import BaseModel

from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.store.store import Store


def save_accounting(store: Store, run_id: str, fleet: Fleet) -> None:
    """Store what the fleet's nodes cost: each record as an event, the total on each node."""
    rows = fleet.accounting()
    for row in rows:
        data = row.model_dump(mode="json")
        kind = str(data.pop("kind", type(row).__name__))
        node_id = data.pop("node_id", None)  # add_event's own argument: passing it twice is a TypeError
        store.add_event(run_id, f"cost_{kind}", node_id=node_id, **data)
    _save_node_totals(store, run_id, rows)


def save_spent_so_far(store: Store, run_id: str, fleet: Fleet) -> None:
    """While the run goes on: each node's total so far, so a requestor killed mid-run (SIGKILL,
    a lost machine) leaves what its nodes had cost by then, not nothing. Idempotent: no event."""
    _save_node_totals(store, run_id, fleet.accounting())


def _save_node_totals(store: Store, run_id: str, rows: list[BaseModel]) -> None:
    spent: dict[str, float] = {}
    for row in rows:
        data = row.model_dump(mode="json")
        node_id = data.get("node_id")
        if data.get("kind") == "node_cost" and node_id:
            spent[node_id] = spent.get(node_id, 0.0) + float(data["amount_glm"])
    for node in store.nodes(run_id):
        if node.node_id in spent and node.extra.get("glm_spent") != round(spent[node.node_id], 8):
            store.set_node_extra(run_id, node.node_id, glm_spent=round(spent[node.node_id], 8))
