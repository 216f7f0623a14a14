"""`--runtime auto`: give each node the runtime earlier comparisons found best for its machine.

For every node of a run started with `--runtime auto`, before any job is sent:

1. the earlier comparisons that measured this machine are looked up in the store: the same
   provider (Golem), else the same host (local, static), else the same GPU model;
2. the newest one with a recommendation wins (`core.compare.recommend`, read back through
   `requestor/store/comparison.py`: lowest GLM per million tokens meeting its suite's SLOs),
   unless the node's probe says that runtime cannot run here;
3. when one is found and the node runs something else, the node switches to it (`POST /runtime`,
   with the variant's model and settings); a switch that fails puts the node back on the runtime
   it had. Nothing known: the node keeps the runtime it started with, which for a Golem fleet is
   Ollama's image (Beacon's fallback).

The choice, its basis and whether it was applied are stored with the node (`extra.runtime_choice`)
and as a `runtime_chosen` event; the report shows them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from beacon_golem.api.bodies import RuntimeSwitch
from beacon_golem.api.client import ShimClient
from beacon_golem.core.compare import machine_gpu
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node, NodeInfo
from beacon_golem.core.probe import ProbeReport
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.requestor.fleets.base import Fleet, NodePreparer
from beacon_golem.requestor.store.comparison import Comparison, comparison_from_store
from beacon_golem.requestor.store.store import Store

log = get_logger(__name__)

AUTO = "auto"
#: What a local fleet starts with under --runtime auto: its embedded default (llama.cpp on the tiny model).
LOCAL_AUTO_START = "llamacpp"
#: Seconds a switch may take (a model load included).
SWITCH_TIMEOUT_S = 960.0


class RuntimeChoice(BaseModel):
    runtime: str
    variant: str | None = None
    model: str | None = None
    settings: dict[str, object] = Field(default_factory=dict)
    source: Literal["comparison", "fallback"]
    #: What matched: "provider 0xabc", "host gpu-7", "GPU model NVIDIA H100 80GB HBM3".
    basis: str | None = None
    comparison_run: str | None = None
    reason: str
    #: Whether the node runs it now.
    applied: bool = False
    note: str | None = None


def _gpu(info: NodeInfo | None, node: Node) -> str | None:
    return machine_gpu([g.name for g in info.system.gpus] if info is not None else [], node.extra)


def choose_runtime(store: Store, node: Node, probe: ProbeReport | None, current: str) -> RuntimeChoice:
    """The runtime for `node` from earlier comparisons of its machine; `current` when none says better."""
    info = node.info
    host = info.system.hostname if info is not None and node.fleet != "golem" else None
    keys = (("provider", "provider_id", node.provider_id), ("host", "hostname", host), ("GPU model", "gpu_model", _gpu(info, node)))
    passed: list[str] = []
    cache: dict[str, Comparison | None] = {}
    for what, column, value in keys:
        if not value:
            continue
        rows = store.earlier_trials(**{column: value})
        seen: list[tuple[str, str]] = []
        for row in rows:
            key = (row.run_id, row.trial.machine)
            if key not in seen:
                seen.append(key)
        for run_id, machine in seen:
            if run_id not in cache:
                try:
                    cache[run_id] = comparison_from_store(store, run_id)
                except BeaconError:
                    cache[run_id] = None
            comparison = cache[run_id]
            if comparison is None:
                continue
            m = next((x for x in comparison.machines if x.machine == machine), None)
            if m is None or m.recommended is None:
                continue
            view = next(t for t in m.trials if t.trial.variant == m.recommended)
            verdict = next((r for r in probe.runtimes if r.runtime == view.trial.runtime), None) if probe else None
            if verdict is not None and not verdict.can_run:
                passed.append(f"{view.trial.variant} (comparison {run_id}): the probe says it cannot run here: "
                              + "; ".join(verdict.reasons))  # fmt: skip
                continue
            variant = comparison.plan.variant(m.recommended)
            return RuntimeChoice(
                runtime=variant.runtime, variant=variant.label, model=variant.model, settings=variant.settings.given(),
                source="comparison", basis=f"{what} {value}", comparison_run=run_id,
                reason=f"comparison {run_id} on {what} {value} recommends {variant.label}: {view.verdict.reason}",
                note="; ".join(passed) or None,
            )  # fmt: skip
    return RuntimeChoice(
        runtime=current, source="fallback",
        reason="no earlier comparison of this provider, host or GPU model recommends a runtime: "
        f"the node keeps {current}" + (" (Ollama's image: Beacon's fallback)" if node.fleet == "golem" else ""),
        note="; ".join(passed) or None, applied=True,
    )  # fmt: skip


def _differs(choice: RuntimeChoice, info: NodeInfo | None) -> bool:
    if info is None:
        return True
    if choice.runtime != info.runtime.name or dict(choice.settings) != dict(info.runtime.launch):
        return True
    return choice.model is not None and choice.model not in info.runtime.models


async def apply_runtime_choice(store: Store, run_id: str, node: Node) -> RuntimeChoice:
    """Choose, switch and record the runtime of one node (its `info` and `extra` updated in place)."""
    if store.get_node(run_id, node.node_id) is None:
        store.upsert_node(run_id, node)
    current = node.runtime or LOCAL_AUTO_START
    probe: ProbeReport | None = None
    async with ShimClient(node.url, node.token, timeout_s=SWITCH_TIMEOUT_S) as client:
        try:
            probe = await client.probe()
            store.set_node_probe(run_id, node.node_id, probe)
        except BeaconError as exc:
            store.set_node_probe(run_id, node.node_id, None, error=str(exc))
        choice = choose_runtime(store, node, probe, current)
        if choice.source == "comparison" and _differs(choice, node.info):
            switch = RuntimeSwitch(runtime=choice.runtime, model=choice.model,  # type: ignore[arg-type]
                                   settings=RuntimeSettings.model_validate(choice.settings))  # fmt: skip
            try:
                node.info = await client.switch_runtime(switch)
                choice.applied = True
            except BeaconError as exc:
                choice.note = f"the switch to {choice.variant} failed ({exc}): the node went back to {current}"
                try:
                    node.info = await client.switch_runtime(RuntimeSwitch(runtime=current))  # type: ignore[arg-type]
                except BeaconError as again:
                    choice.note += f", which failed too ({again})"
        elif choice.source == "comparison":
            choice.applied = True
    # With the node itself too: whoever stores the node again keeps the choice.
    node.extra = {**node.extra, "runtime_choice": choice.model_dump(mode="json")}
    store.upsert_node(run_id, node)
    store.add_event(run_id, "runtime_chosen", node_id=node.node_id, runtime=choice.runtime, variant=choice.variant,
                    source=choice.source, applied=choice.applied, reason=choice.reason, note=choice.note)  # fmt: skip
    log.info("runtime_chosen", run=run_id, node=node.node_id, runtime=choice.runtime, source=choice.source)
    return choice


async def apply_runtime_choices(store: Store, run_id: str, fleet: Fleet) -> list[RuntimeChoice]:
    """Choose, switch and record the runtime of every node the fleet holds now that has none yet
    (a fleet that prepares its nodes as they join, see `runtime_choice_hook`, chose for them already)."""
    out = []
    for node in sorted(fleet.nodes(), key=lambda n: n.node_id):
        if "runtime_choice" in node.extra:
            continue
        out.append(await apply_runtime_choice(store, run_id, node))
    return out


def runtime_choice_hook(store: Store, run_id: str) -> NodePreparer:
    """`Fleet.prepare_node` for --runtime auto: every node a fleet adds mid-run (a Golem replacement)
    gets its machine's choice before the dispatcher sees it, exactly as the first nodes do."""

    async def prepare(node: Node) -> None:
        await apply_runtime_choice(store, run_id, node)

    return prepare
