"""A runtime comparison read back from the store: per machine, every runtime's figures and its verdict.

`comparison_from_store(store, run_id)` joins a comparison run's plan, its trials, the benchmark
each trial stored and each machine's probe into `TrialFigures`, and runs `core.compare.recommend`
over every machine's trials. The report, `beacon compare show` and `--runtime auto` all read a
comparison through here, so they can never disagree about what won.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from beacon_golem.core.bench import BenchResult
from beacon_golem.core.compare import (
    ComparisonPlan,
    RuntimeTrial,
    StepFigure,
    TrialFigures,
    Verdict,
    like_for_like,
    recommend,
    winners_by_load,
)
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.metrics import SLO
from beacon_golem.core.probe import ProbeReport
from beacon_golem.requestor.store.rows import NodeRow
from beacon_golem.requestor.store.store import Store


class TrialView(BaseModel):
    trial: RuntimeTrial
    figures: TrialFigures
    verdict: Verdict
    #: The sweep's result, when it was stored and still reads.
    bench: BenchResult | None = None


class MachineComparison(BaseModel):
    machine: str
    provider: str | None = None
    gpu: str | None = None
    hostname: str | None = None
    probe_status: str | None = None
    trials: list[TrialView] = Field(default_factory=list)
    #: The recommended variant's label; None when no runtime qualified.
    recommended: str | None = None
    #: Concurrency -> the variant with the highest output throughput there (meeting the SLOs).
    winners_by_load: dict[int, str] = Field(default_factory=dict)
    #: Where the runtimes' weights differ (format, quantization, context).
    notes: list[str] = Field(default_factory=list)


class Comparison(BaseModel):
    run_id: str
    plan: ComparisonPlan
    slo: SLO | None = None
    machines: list[MachineComparison] = Field(default_factory=list)


def step_figures(result: BenchResult) -> list[StepFigure]:
    out = []
    for s in result.steps:
        share = None
        if s.request_goodput is not None and s.request_throughput > 0:
            share = min(s.request_goodput / s.request_throughput, 1.0)
        out.append(
            StepFigure(
                concurrency=s.max_concurrency if s.mode == "concurrency" else None,
                label=s.step_label,
                completed=s.completed,
                failed=s.failed,
                overloaded=s.overloaded,
                output_throughput=s.output_throughput,
                ttft_p50_ms=s.median_ttft_ms,
                tpot_p50_ms=s.median_tpot_ms,
                e2el_p50_ms=s.median_e2el_ms,
                goodput_share=share,
            )
        )
    return out


def figures_of(trial: RuntimeTrial, bench: BenchResult | None, probe: ProbeReport | None) -> TrialFigures:
    """One trial as the recommendation reads it: its sweep's steps, its price, the probe's verdict."""
    load_s, load_source = trial.model_load
    can_run: bool | None = None
    reasons: list[str] = []
    if probe is not None:
        verdict = next((v for v in probe.runtimes if v.runtime == trial.runtime), None)
        if verdict is not None:
            can_run, reasons = verdict.can_run, list(verdict.reasons)
    return TrialFigures(
        machine=trial.machine,
        variant=trial.variant,
        runtime=trial.runtime,
        status=trial.status,
        reason=trial.reason,
        cold_start_s=trial.cold_start_s,
        model_load_s=load_s,
        model_load_source=load_source,
        steps=step_figures(bench) if bench is not None and trial.status == "done" else [],
        price=trial.price,
        can_run=can_run,
        probe_reasons=reasons,
        weights=trial.weights,
        first_ttft_ms=trial.first_request.ttft_ms if trial.first_request else None,
        idle_ttft_ms=trial.idle_request.ttft_ms if trial.idle_request else None,
        idle_load_ms=trial.idle_request.load_ms if trial.idle_request else None,
    )


def _probe(node: NodeRow | None) -> ProbeReport | None:
    if node is None:
        return None
    try:
        return node.probe_report()
    except BeaconError:
        return None


def comparison_from_store(store: Store, run_id: str) -> Comparison | None:
    """The comparison run `run_id` with every machine's verdicts; None when the run is no comparison."""
    plan = store.comparison_plan(run_id)
    if plan is None:
        return None
    run = store.get_run(run_id)
    slo = run.suite.perf.slo if run.suite is not None and run.suite.perf is not None else None
    benches = {b.bench_id: b for b in store.bench_results(run_id)}
    nodes = {n.node_id: n for n in store.nodes(run_id)}
    order = {v.label: i for i, v in enumerate(plan.variants)}
    by_machine: dict[str, list[RuntimeTrial]] = {}
    for row in store.trials(run_id):
        by_machine.setdefault(row.trial.machine, []).append(row.trial)
    machines = []
    for machine, trials in by_machine.items():
        trials.sort(key=lambda t: order.get(t.variant, len(order)))
        node = nodes.get(machine)
        probe = _probe(node)
        views: list[tuple[RuntimeTrial, TrialFigures, BenchResult | None]] = []
        for t in trials:
            bench = None
            row = benches.get(t.bench_id) if t.bench_id is not None else None
            if row is not None:
                try:
                    bench = row.bench_result()
                except BeaconError:
                    bench = None
            views.append((t, figures_of(t, bench, probe), bench))
        figures = [f for _, f, _ in views]
        verdicts = recommend(figures, slo, plan.slo_share)
        first = trials[0]
        machines.append(
            MachineComparison(
                machine=machine,
                provider=" ".join(p for p in (first.provider_name, first.provider_id) if p) or None,
                gpu=first.gpu_model,
                hostname=first.hostname,
                probe_status=probe.status if probe is not None else None,
                trials=[TrialView(trial=t, figures=f, verdict=v, bench=b)
                        for (t, f, b), v in zip(views, verdicts, strict=True)],  # fmt: skip
                recommended=next((v.variant for v in verdicts if v.recommended), None),
                winners_by_load=winners_by_load(figures, slo, plan.slo_share),
                notes=like_for_like({t.variant: t.weights for t in trials if t.status == "done"}),
            )
        )
    return Comparison(run_id=run_id, plan=plan, slo=slo, machines=machines)
