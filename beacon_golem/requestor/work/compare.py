"""`beacon compare`: every requested runtime on every machine, one after the other, stored as one run.

A machine is a node of the fleet as it came up (a local node, a static URL, a rented provider).
On each machine, for each runtime variant of the plan in turn:

1. the node switches runtime (`POST /runtime`): the runtime before stops and frees its memory,
   the page cache is dropped where the node may (so every runtime reads its weights from disk),
   the new one starts with the variant's settings and model; the node times the start (to the
   runtime answering, to the model loaded, to its own /health 200);
2. one timed request: the first after start (its TTFT, and the runtime's own load figure where
   it has one, Ollama's `load_duration`);
3. the sweep, the suite's perf section, the same for every variant (prompts, load profile,
   output lengths), stored in `bench_results` under the node `<machine>/<variant>`;
4. after `idle_s` seconds idle (when asked), one more timed request (Docker Model Runner evicts
   a model after 5 idle minutes: that request pays for the load again);
5. the trial (`core.compare.RuntimeTrial`) is stored: status, start times, requests, weights,
   settings given and reported, price, the bench row.

A runtime that does not start is a trial `failed`, with the node's reason, and the next variant
goes on. A machine lost mid-comparison (unreachable, or reported lost by its fleet) ends that
machine's comparison: its remaining trials are stored `lost`, and no other machine's figures
are ever put in their place (once a comparison begins its fleet rents no replacement, and the
fleet is told of a machine the comparison found unreachable).

Machines on separate hosts (static, Golem) are compared at the same time; local nodes share this
machine, so they go one after another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beacon_golem.api.bodies import RuntimeSwitch
from beacon_golem.api.client import NodeUnreachable, ShimClient, ShimError
from beacon_golem.core.clock import utcnow
from beacon_golem.core.compare import ComparisonPlan, Price, RequestProbe, RuntimeTrial, RuntimeVariant, machine_gpu
from beacon_golem.core.config import Settings
from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node, NodeInfo
from beacon_golem.core.suite import PerfSection, Suite
from beacon_golem.imaging import lookup_image
from beacon_golem.requestor.fleets.base import Fleet
from beacon_golem.requestor.store.rows import RunRow, TrialRow
from beacon_golem.requestor.store.store import DB_FILENAME, Store, open_store
from beacon_golem.requestor.work.driver import FleetChoice, build_fleet, check_fleet, drive, fleet_for_suite
from beacon_golem.requestor.work.perf_phase import perf_from_requestor, perf_on_node, perf_suite

log = get_logger(__name__)

#: (event kind, details) for a progress display: compare_switching, trial_done, trial_failed, trial_lost.
CompareListener = Callable[[str, dict[str, Any]], None]
#: Seconds a runtime may take to start and load its model (vLLM on a large model takes minutes).
DEFAULT_READY_TIMEOUT_S = 900.0


#: Why a lost machine's comparison is not finished on another one.
NO_STAND_IN = "another provider's figures never stand in for a lost one's"
#: Seconds a switch may take beyond the runtime's ready timeout: the runtime before stops (SIGTERM,
#: SIGKILL after 10 s), the page cache is dropped.
SWITCH_MARGIN_S = 60.0


class MachineLost(BeaconError):
    """The machine stopped answering, or its fleet reported it lost."""


def machine_price(node: Node, plan: ComparisonPlan) -> Price | None:
    """The provider's price from its Golem agreement (node extra `offer`), else the plan's given price."""
    offer = node.extra.get("offer") if isinstance(node.extra.get("offer"), dict) else None
    if offer is not None and offer.get("hourly_glm") is not None:
        try:
            return Price(glm_per_hour=float(offer["hourly_glm"]), start_glm=float(offer.get("start_glm") or 0),
                         source="agreement")  # fmt: skip
        except (TypeError, ValueError):
            pass
    if plan.glm_per_hour is not None:
        return Price(glm_per_hour=plan.glm_per_hour, source="given")
    return None


def gpu_model(node: Node, info: NodeInfo | None) -> str | None:
    """The machine's GPU as the node reports it (`2x NVIDIA H100`), else as its offer said."""
    return machine_gpu([g.name for g in info.system.gpus] if info is not None else [], node.extra)


def host_of(node: Node, info: NodeInfo | None) -> str | None:
    """The machine's host name, for local and static nodes (a Golem VM's says nothing about the provider)."""
    if node.fleet == "golem" or info is None:
        return None
    return info.system.hostname


async def timed_request(client: ShimClient, plan: ComparisonPlan, after_idle_s: float | None = None) -> RequestProbe:
    """One request through the node's /inference, timed by the node's adapter (TTFT at the first content)."""
    request = GenerationRequest(prompt=plan.probe_prompt, max_tokens=plan.probe_max_tokens, temperature=0.0,
                                ignore_eos=True)  # fmt: skip
    try:
        result = await client.infer(request)
    except NodeUnreachable:
        raise
    except BeaconError as exc:
        return RequestProbe(ok=False, error=str(exc), after_idle_s=after_idle_s)
    timings = result.server_timings or {}
    return RequestProbe(
        ok=True,
        ttft_ms=result.ttft_ms,
        e2e_ms=result.e2e_ms,
        completion_tokens=result.completion_tokens,
        load_ms=timings.get("load_ms"),
        after_idle_s=after_idle_s,
    )


class MachineRun:
    """The comparison on one machine: every variant in turn."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        node: Node,
        plan: ComparisonPlan,
        section: PerfSection,
        fleet: Fleet,
        listener: CompareListener | None,
        ready_timeout_s: float,
        poll_s: float,
    ) -> None:
        self.store, self.run_id, self.node, self.plan, self.section = store, run_id, node, plan, section
        self.fleet, self.listener, self.ready_timeout_s, self.poll_s = fleet, listener, ready_timeout_s, poll_s
        self.machine = node.node_id

    def tell(self, kind: str, **detail: Any) -> None:
        self.store.add_event(self.run_id, kind, node_id=self.machine, **detail)
        log.info(kind, run=self.run_id, machine=self.machine, **detail)
        if self.listener is not None:
            self.listener(kind, {"machine": self.machine, **detail})

    def client(self) -> ShimClient:
        return ShimClient(self.node.url, self.node.token, timeout_s=self.ready_timeout_s + 60)

    async def check_alive(self) -> None:
        """MachineLost when the fleet lost the node or its shim no longer answers."""
        if self.machine not in {n.node_id for n in self.fleet.nodes()}:
            raise MachineLost("its fleet reported it lost")
        try:
            async with ShimClient(self.node.url, self.node.token, timeout_s=15) as client:
                await client.health()
        except NodeUnreachable as exc:
            raise MachineLost(str(exc)) from None

    async def run(self) -> list[TrialRow]:
        info = self.node.info
        self.store.upsert_node(self.run_id, self.node)
        try:
            async with ShimClient(self.node.url, self.node.token, timeout_s=120) as client:
                self.store.set_node_probe(self.run_id, self.machine, await client.probe())
        except (BeaconError, OSError) as exc:
            self.store.set_node_probe(self.run_id, self.machine, None, error=str(exc))
        base = {
            "machine": self.machine,
            "provider_id": self.node.provider_id,
            "provider_name": self.node.provider_name,
            "gpu_model": gpu_model(self.node, info),
            "hostname": host_of(self.node, info),
            "price": machine_price(self.node, self.plan),
        }
        rows: list[TrialRow] = []
        lost: str | None = None
        for variant in self.plan.variants:
            if lost is not None:
                trial = RuntimeTrial(variant=variant.label, runtime=variant.runtime, status="lost", model=variant.model,
                                     settings=variant.settings.given(), reason=f"not measured: {lost}", **base)  # fmt: skip
            else:
                trial = await self.one(variant, base)
                if trial.status == "lost":
                    lost = f"the machine was lost while {variant.label} ran ({trial.reason})"
                    # the machine and each runtime's node on it (`<machine>/<variant>`) are lost together
                    for stored in self.store.nodes(self.run_id):
                        if stored.node_id == self.machine or stored.extra.get("machine") == self.machine:
                            self.store.mark_node_lost(self.run_id, stored.node_id, trial.reason or "lost")
                    # The fleet learns it too (when it has not already): it stops paying for the
                    # machine now, and says it rents none in its place.
                    if self.machine in {n.node_id for n in self.fleet.nodes()}:
                        await self.fleet.report_lost(self.machine, f"lost mid-comparison: {trial.reason or 'lost'}")
            rows.append(self.store.record_trial(self.run_id, trial))
            kind = {"done": "trial_done", "failed": "trial_failed", "lost": "trial_lost"}[trial.status]
            self.tell(kind, variant=variant.label, runtime=variant.runtime, reason=trial.reason, bench_id=trial.bench_id,
                      cold_start_s=trial.cold_start_s)  # fmt: skip
        return rows

    async def one(self, variant: RuntimeVariant, base: dict[str, Any]) -> RuntimeTrial:
        started_at = utcnow()
        node_id = f"{self.machine}/{variant.label}"
        trial = RuntimeTrial(variant=variant.label, runtime=variant.runtime, node_id=node_id, status="done",
                             model=variant.model, settings=variant.settings.given(), started_at=started_at, **base)  # fmt: skip
        self.tell("compare_switching", variant=variant.label, runtime=variant.runtime,
                  settings=variant.settings.describe())  # fmt: skip
        switch = RuntimeSwitch(runtime=variant.runtime, model=variant.model, settings=variant.settings,
                               drop_page_cache=self.plan.drop_page_cache, ready_timeout_s=self.ready_timeout_s)  # fmt: skip
        try:
            async with self.client() as client:
                begun = time.perf_counter()
                try:
                    info = await client.switch_runtime(switch)
                except ShimError as exc:
                    await self.check_alive()
                    return trial.model_copy(update={"status": "failed", "reason": _short_reason(exc),
                                                    "finished_at": utcnow()})  # fmt: skip
                trial.switch_s = round(time.perf_counter() - begun, 4)
                trial.startup = info.startup
                trial.weights = info.runtime.weights
                trial.server_settings = dict(info.runtime.settings)
                trial.runtime_version = info.runtime.version
                trial.model = trial.model or (info.runtime.models[0] if info.runtime.models else None)
                variant_node = self.node.model_copy(
                    update={"node_id": node_id, "info": info,
                            "extra": {**self.node.extra, "machine": self.machine, "variant": variant.label,
                                      "runtime_settings": variant.settings.given()}}  # fmt: skip
                )
                self.store.upsert_node(self.run_id, variant_node)
                trial.first_request = await timed_request(client, self.plan)
                if not trial.first_request.ok:
                    await self.check_alive()
                bench = await self.sweep(variant_node, variant)
                if bench is not None:
                    trial.bench_id = bench
                if self.plan.idle_s > 0:
                    await asyncio.sleep(self.plan.idle_s)
                    trial.idle_request = await timed_request(client, self.plan, after_idle_s=self.plan.idle_s)
        except MachineLost as exc:
            return trial.model_copy(update={"status": "lost", "reason": str(exc), "finished_at": utcnow()})
        except (NodeUnreachable, OSError) as exc:
            try:
                await self.check_alive()
            except MachineLost as lost:
                return trial.model_copy(update={"status": "lost", "reason": str(lost), "finished_at": utcnow()})
            return trial.model_copy(update={"status": "failed", "reason": str(exc), "finished_at": utcnow()})
        trial.finished_at = utcnow()
        if trial.bench_id is None:
            trial.status = "failed"
            trial.reason = trial.reason or "its benchmark stored no result"
        return trial

    async def sweep(self, node: Node, variant: RuntimeVariant) -> int | None:
        """The perf section on this variant; the stored bench row's id (None when it failed, with its reason)."""
        section = self.section
        label = f"{self.machine} {variant.label} {section.where}"
        try:
            if section.where == "node":
                result = await perf_on_node(node, section, f"beacon compare {self.run_id} {node.node_id}", self.poll_s)
            else:
                result = await perf_from_requestor(node, section)
        except NodeUnreachable:
            await self.check_alive()
            raise
        except (BeaconError, TimeoutError) as exc:
            self.tell("perf_failed", variant=variant.label, reason=str(exc) or type(exc).__name__)
            return None
        row = self.store.add_bench_result(self.run_id, node.node_id, section.where, label, section.profile, result)
        return row.bench_id


def _short_reason(exc: BaseException) -> str:
    """The node's own reason, without the request line in front (`node URL POST /runtime: 502 ...`)."""
    text = str(exc)
    marker = "/runtime: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip()


async def run_comparison(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    plan: ComparisonPlan,
    listener: CompareListener | None = None,
    *,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    poll_s: float = 0.25,
) -> bool:
    """The comparison on every machine the fleet holds now; True when each has at least one runtime measured
    and none was lost."""
    section = run.suite.perf if run.suite is not None else None
    if section is None:
        raise BeaconError(f"run {run.run_id} has no perf section to compare runtimes with")
    # The machines are the nodes up now: one lost from here on is not replaced (a replacement's
    # figures are another machine's, never the lost one's).
    fleet.stop_replacing(f"a runtime comparison compares the machines it began with ({NO_STAND_IN})")
    machines = sorted(fleet.nodes(), key=lambda n: n.node_id)
    if not machines:
        store.add_event(run.run_id, "compare_failed", reason="no live node to compare runtimes on")
        return False
    store.add_event(run.run_id, "compare_planned", machines=[n.node_id for n in machines],
                    variants=[v.label for v in plan.variants])  # fmt: skip
    runs = [MachineRun(store, run.run_id, n, plan, section, fleet, listener, ready_timeout_s, poll_s) for n in machines]
    if all(n.fleet != "local" for n in machines):
        results = await asyncio.gather(*(m.run() for m in runs))
    else:
        results = [await m.run() for m in runs]
    # A runtime that does not start is a finding; a machine lost mid-comparison leaves it incomplete.
    return all(any(r.trial.status == "done" for r in rows) and all(r.trial.status != "lost" for r in rows)
               for rows in results)  # fmt: skip


#: The image lock's name for the image that holds several runtimes (docs/images.md, "One provider, several runtimes").
MULTI_RUNTIME_IMAGE = "multi"


def golem_image_for(plan: ComparisonPlan, golem: dict[str, Any]) -> dict[str, Any]:
    """On Golem every runtime of a comparison runs in the one image the provider was rented with: an
    image that holds them all (the lock's "multi" entry) unless --image names one or only one runtime is compared."""
    kinds = sorted({v.runtime for v in plan.variants})
    if "image" in golem or len(kinds) == 1:
        return golem
    entry = lookup_image(MULTI_RUNTIME_IMAGE)
    if entry is None:
        raise UsageError(
            f"--fleet golem: comparing {', '.join(kinds)} on one provider needs an image that holds them all "
            f"(docs/images.md, one image for a comparison): none is in the image lock file; give --image"
        )
    return {**golem, "image": entry.hash}


async def compare_fleet(
    settings: Settings,
    plan: ComparisonPlan,
    section: PerfSection,
    choice: FleetChoice,
    *,
    db: Path | None = None,
    on_planned: Callable[[Store, RunRow], None] | None = None,
    listener: CompareListener | None = None,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
) -> tuple[Store, RunRow, list[TrialRow]]:
    """`beacon compare`: record a comparison run, bring the fleet up (on the first variant), compare, close the run."""
    if section.model is not None:
        raise UsageError("a comparison's model is per runtime (--model, --model-for RUNTIME=M), not the perf section's")
    first = plan.variants[0]
    if choice.kind == "golem":
        golem = golem_image_for(plan, choice.golem)
        # The fleet's health checks take a node switching runtime for a live one this long.
        golem = {"switch_timeout_s": ready_timeout_s + SWITCH_MARGIN_S, **golem}
        choice = choice.model_copy(update={"golem": golem})
    choice = choice.model_copy(
        update={"runtime": first.runtime, "model": choice.model or first.model,
                "runtime_settings": first.settings.given()}  # fmt: skip
    )
    suite: Suite = perf_suite(section.model_copy(update={"parallel": False}), choice.regions or ["local"],
                              name=f"compare-{'-'.join(v.runtime for v in plan.variants)}")  # fmt: skip
    suite = suite.model_copy(update={"description": "Runtime comparison (beacon compare)"})
    choice = fleet_for_suite(choice, suite)
    check_fleet(suite, choice)
    store = open_store(db or settings.data_dir / DB_FILENAME)
    fleet = build_fleet(choice, settings.data_dir, settings.shim_token, store)
    fleet_desc = {**choice.model_dump(mode="json"), "compare": [v.label for v in plan.variants]}
    run = store.create_run(suite, "beacon compare", [], fleet_desc)
    store.create_comparison(run.run_id, plan)
    if on_planned is not None:
        on_planned(store, run)

    async def phase(up: Fleet) -> bool:
        return await run_comparison(store, run, up, plan, listener, ready_timeout_s=ready_timeout_s)

    final = await drive(store, run, fleet, [phase])
    return store, final, store.trials(run.run_id)
