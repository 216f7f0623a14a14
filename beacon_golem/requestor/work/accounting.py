"""What a fleet's nodes cost, stored with the run: each record as an event, the total on each node."""

from __future__ import annotations

from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.store.store import Store


def save_accounting(store: Store, run_id: str, fleet: Fleet) -> None:
    """Store what the fleet's nodes cost: each record as an event, the total on each node."""
    spent: dict[str, float] = {}
    for row in fleet.accounting():
        data = row.model_dump(mode="json")
        kind = str(data.pop("kind", type(row).__name__))
        node_id = data.pop("node_id", None)  # add_event's own argument: passing it twice is a TypeError
        store.add_event(run_id, f"cost_{kind}", node_id=node_id, **data)
        if kind == "node_cost" and node_id:
            spent[node_id] = spent.get(node_id, 0.0) + float(data["amount_glm"])
    for node in store.nodes(run_id):
        if node.node_id in spent:
            store.set_node_extra(run_id, node.node_id, glm_spent=round(spent[node.node_id], 8))
