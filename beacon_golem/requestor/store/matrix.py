"""The compatibility matrix of a stored run: what the pilot stored of each node, read back as `Matrix` rows."""

from __future__ import annotations

from beacon_golem.core.errors import BeaconError
from beacon_golem.core.matrix import NOTE_EVENT, Matrix, NodeProbe, build_matrix
from beacon_golem.requestor.store.rows import NodeRow
from beacon_golem.requestor.store.store import Store


def matrix_from_store(store: Store, run_id: str) -> Matrix | None:
    """The matrix of a stored run; None when no node of it was ever probed (and it is no pilot)."""
    run = store.get_run(run_id)
    nodes = store.nodes(run_id)
    if run.kind != "pilot" and not any(n.probe is not None or n.probe_error for n in nodes):
        return None
    notes = [str(e.detail.get("message")) for e in store.events(run_id, [NOTE_EVENT]) if e.detail.get("message")]
    fleet = run.fleet_desc.get("kind") if isinstance(run.fleet_desc, dict) else None
    return build_matrix([node_probe_from_row(n) for n in nodes], run_id=run_id, fleet=fleet, notes=notes)


def node_probe_from_row(row: NodeRow) -> NodeProbe:
    """What the pilot stored of one node, as the matrix reads it."""
    error = row.probe_error
    try:
        probe = row.probe_report()
    except BeaconError as exc:
        probe, error = None, str(exc)
    if probe is None and error is None:
        error = "not probed"
    return NodeProbe(
        node_id=row.node_id, fleet=row.fleet, url=row.url, region=row.region, provider_id=row.provider_id,
        provider_name=row.provider_name, info=row.info, probe=probe, error=None if probe else error,
        extra=row.extra, probed_at=row.probed_at,
    )  # fmt: skip
