"""The run report: one self-contained HTML file (and a Markdown summary), from the store alone.

`build_run_report(store, run_id)` gathers what the store holds about a run into a
`RunReport`; `render_html` and `render_markdown_summary` turn it into text;
`write_run_report` writes the files. Nothing is fetched: the CSS is inline, the charts
are SVG drawn in Python (`reports/charts.py`), there is no script and no web font.

Sections (see docs/reports.md):
- output token throughput against concurrency (or request rate), one line per node,
  runtime and place the load came from (node or requestor);
- TTFT and TPOT percentiles (p50 solid, p90 dashed, p99 dotted) against concurrency;
- each benchmark step by step, as `vllm bench serve` reports it;
- the per-region difference table (reports/differences.py) when the run asked questions;
- the nodes' fingerprints: GPU, driver, CPU, RAM, OS, runtime and its settings;
- cost per million output tokens where the store holds GLM spent for a node
  (`extra.glm_spent`, written by the Golem fleet), "n/a" elsewhere;
- the compatibility matrix (probe checks and runtimes per node) when the run's nodes were
  probed (`beacon pilot`, beacon_golem/probe/pilot.py);
- for a runtime comparison (`beacon compare`), per machine: one line per runtime, the table of
  best throughput, latency at 1 and at Beacon's concurrency, cold start and GLM per million
  tokens, which runtime wins at which load, and the recommendation (reports/comparison.py);
- the runtime `--runtime auto` chose for each node, and why (with the node's fingerprint).
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from beacon_golem.core.bench import StepResult
from beacon_golem.core.clock import utcnow
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.files import write_text_atomic
from beacon_golem.core.matrix import Matrix
from beacon_golem.reports.charts import DASHES, PALETTE, ChartSpec, LegendEntry, Series, fmt_num, line_chart
from beacon_golem.reports.comparison import comparison_markdown, comparison_section
from beacon_golem.reports.differences import DifferenceReport, build_report
from beacon_golem.reports.markdown import md_cell
from beacon_golem.reports.matrix import runtimes_text
from beacon_golem.requestor.store.comparison import Comparison, comparison_from_store
from beacon_golem.requestor.store.matrix import matrix_from_store
from beacon_golem.requestor.store.rows import BenchResultRow, NodeRow
from beacon_golem.requestor.store.store import Store

PERCENTILES = ("p50", "p90", "p99")
#: Charts are drawn at the width of the page's content; the browser scales them down on narrower screens.
CHART_W = 1120
XMode = Literal["concurrency", "rate"]


class StepPoint(BaseModel):
    """One load level of one benchmark, with what the charts and tables show."""

    label: str
    mode: str
    #: Where the step sits on the x axis: its concurrency, or its request rate.
    x: float | None
    completed: int = 0
    failed: int = 0
    duration: float = 0.0
    request_throughput: float = 0.0
    output_throughput: float = 0.0
    total_token_throughput: float = 0.0
    request_goodput: float | None = None
    total_output_tokens: int = 0
    ttft_ms: dict[str, float] = Field(default_factory=dict)
    tpot_ms: dict[str, float] = Field(default_factory=dict)
    e2el_ms: dict[str, float] = Field(default_factory=dict)
    overloaded: bool = False


def short_step(step: StepPoint) -> str:
    """`c=4` for a concurrency step, its own label (`rate 2/s`, `synchronous`) otherwise."""
    if step.mode == "concurrency" and step.x is not None and step.label != "synchronous":
        return f"c={step.x:g}"
    return step.label


class PerfBench(BaseModel):
    """One stored benchmark of one node."""

    bench_id: int
    node_id: str
    region: str | None = None
    where: str
    runtime: str = "?"
    runtime_version: str | None = None
    model: str = "?"
    via: str | None = None
    profile_kind: str = "?"
    steps: list[StepPoint] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    stop_reason: str | None = None
    slo: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.node_id} · {self.runtime} · {self.where}"

    @property
    def best(self) -> StepPoint | None:
        usable = [s for s in self.steps if s.completed and not s.overloaded] or [s for s in self.steps if s.completed]
        return max(usable, key=lambda s: s.output_throughput, default=None)


class Fingerprint(BaseModel):
    node_id: str
    region: str | None = None
    fleet: str | None = None
    provider: str | None = None
    status: str | None = None
    gpu: str = "none"
    driver: str = "n/a"
    cpu: str = "?"
    ram: str = "?"
    os: str = "?"
    runtime: str = "?"
    settings: dict[str, str] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    shim_version: str | None = None
    #: `--runtime auto`: which runtime was chosen for the node and why (None when not asked).
    runtime_choice: str | None = None


class CostRow(BaseModel):
    node_id: str
    region: str | None = None
    provider: str | None = None
    glm_spent: float | None = None
    question_tokens: int = 0
    bench_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.question_tokens + self.bench_tokens

    @property
    def glm_per_million(self) -> float | None:
        if self.glm_spent is None or not self.tokens:
            return None
        return self.glm_spent / self.tokens * 1e6


class RunReport(BaseModel):
    run_id: str
    #: "suite", or "pilot" for a compatibility pilot (no suite, no jobs).
    kind: str = "suite"
    suite_name: str
    suite_hash: str
    status: str
    created_at: datetime
    finished_at: datetime | None = None
    fleet: dict[str, Any] = Field(default_factory=dict)
    job_counts: dict[str, int] = Field(default_factory=dict)
    generated_at: datetime
    x_mode: XMode = "concurrency"
    perf: list[PerfBench] = Field(default_factory=list)
    fingerprints: list[Fingerprint] = Field(default_factory=list)
    costs: list[CostRow] = Field(default_factory=list)
    #: None when the run asked no questions.
    differences: DifferenceReport | None = None
    #: None when no node of the run was probed.
    compatibility: Matrix | None = None
    #: None unless the run is a runtime comparison (`beacon compare`).
    comparison: Comparison | None = None


# ---------------------------------------------------------------------------------------
# From the store


def _float(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _step_point(step: StepResult) -> StepPoint:
    if step.mode == "rate":
        x = _finite(step.request_rate) if isinstance(step.request_rate, float | int) else None
    else:
        x = _finite(float(step.max_concurrency)) if step.max_concurrency is not None else None

    def pcts(metric: str) -> dict[str, float]:
        return {name: _float(getattr(step, f"{name}_{metric}_ms")) for name in ("p50", "p90", "p99", "mean")}

    return StepPoint(
        label=step.step_label or step.label or f"step {step.step}",
        mode=step.mode,
        x=x,
        completed=step.completed,
        failed=step.failed,
        duration=_float(step.duration),
        request_throughput=_float(step.request_throughput),
        output_throughput=_float(step.output_throughput),
        total_token_throughput=_float(step.total_token_throughput),
        request_goodput=_finite(step.request_goodput),
        total_output_tokens=step.total_output_tokens,
        ttft_ms=pcts("ttft"),
        tpot_ms=pcts("tpot"),
        e2el_ms=pcts("e2el"),
        overloaded=step.overloaded,
    )


def _perf_bench(row: BenchResultRow, node: NodeRow | None) -> PerfBench:
    base = PerfBench(
        bench_id=row.bench_id, node_id=row.node_id, region=node.region if node else None, where=row.where,
        profile_kind=str(row.profile.get("kind") or "?"),
    )  # fmt: skip
    try:
        result = row.bench_result()
    except BeaconError as exc:  # a row an older version wrote, or a node's broken answer: shown, not fatal
        return base.model_copy(update={"warnings": [str(exc)]})
    warnings = list(result.warnings)
    for step in result.steps:
        warnings += [f"{step.step_label}: {w}" for w in step.warnings]
    target = result.target
    return base.model_copy(
        update={
            "runtime": target.runtime or "?",
            "runtime_version": target.runtime_version,
            "model": target.model or "?",
            "via": target.via,
            "steps": [_step_point(s) for s in result.steps],
            "warnings": warnings,
            "stop_reason": result.stop_reason,
            "slo": result.slo.model_dump(mode="json") if result.slo is not None else None,
        }
    )


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _fingerprint(node_id: str, node: NodeRow | None, fallback: dict[str, Any] | None) -> Fingerprint:
    info: dict[str, Any] = {}
    if node is not None and node.info is not None:
        info = node.info.model_dump(mode="json")
    elif isinstance(fallback, dict):
        info = fallback
    system = info.get("system") if isinstance(info.get("system"), dict) else {}
    runtime = info.get("runtime") if isinstance(info.get("runtime"), dict) else {}
    gpus = [g for g in system.get("gpus") or [] if isinstance(g, dict)]
    gpu_names: dict[str, int] = {}
    for g in gpus:
        mem = g.get("memory_total_mib")
        name = str(g.get("name") or "GPU") + (f" ({mem / 1024:.0f} GiB)" if isinstance(mem, int | float) and mem else "")
        gpu_names[name] = gpu_names.get(name, 0) + 1
    drivers = sorted({f"{g.get('driver_version')}" + (f" / CUDA {g['cuda_version']}" if g.get("cuda_version") else "")
                      for g in gpus if g.get("driver_version")})  # fmt: skip
    cpu = system.get("cpu_model") or "?"
    if system.get("cpu_cores"):
        cpu = f"{cpu} ({system['cpu_cores']} cores)"
    os_name = " ".join(str(p) for p in (system.get("distribution") or system.get("os"), system.get("kernel")) if p) or "?"
    version = runtime.get("version")
    settings = {str(k): _short(v) for k, v in (runtime.get("settings") or {}).items() if v not in (None, "", [], {})}
    choice = node.extra.get("runtime_choice") if node is not None else None
    choice_text = None
    if isinstance(choice, dict):
        applied = "" if choice.get("applied") else " (not applied)"
        choice_text = f"--runtime auto: {choice.get('variant') or choice.get('runtime')}{applied}: {choice.get('reason')}"
        if choice.get("note"):
            choice_text += f" ({choice['note']})"
    provider = None
    if node is not None and (node.provider_name or node.provider_id):
        provider = " ".join(p for p in (node.provider_name, f"({node.provider_id})" if node.provider_id else None) if p)
    return Fingerprint(
        node_id=node_id,
        region=node.region if node else None,
        fleet=node.fleet if node else None,
        provider=provider,
        status=node.status if node else None,
        gpu=", ".join(f"{n}× {name}" if n > 1 else name for name, n in gpu_names.items()) or "none",
        driver=", ".join(drivers) or "n/a",
        cpu=str(cpu),
        ram=f"{_float(system.get('ram_gib')):.1f} GiB" if system.get("ram_gib") is not None else "?",
        os=os_name,
        runtime=f"{runtime.get('name') or '?'}" + (f" {version}" if version else ""),
        settings=settings,
        models=[str(m) for m in runtime.get("models") or []],
        shim_version=info.get("shim_version"),
        runtime_choice=choice_text,
    )


def _glm(extra: dict[str, Any]) -> float | None:
    value = extra.get("glm_spent")
    if value is None:
        return None
    out = _float(value, math.nan)
    return out if math.isfinite(out) else None


def build_run_report(store: Store, run_id: str) -> RunReport:
    """Everything the report shows about one run, read from the store (never written)."""
    run = store.get_run(run_id)
    nodes = {n.node_id: n for n in store.nodes(run_id)}
    benches = store.bench_results(run_id)
    perf = [_perf_bench(b, nodes.get(b.node_id)) for b in benches]
    modes = {s.mode for p in perf for s in p.steps}
    x_mode: XMode = "rate" if modes == {"rate"} else "concurrency"

    answers = store.results(run_id)
    node_ids = sorted({*nodes, *(b.node_id for b in benches), *(r.node_id for r in answers)})
    fallback = {b.node_id: b.result.get("node") for b in benches}  # the fingerprint as the benchmark saw it
    fingerprints = [_fingerprint(n, nodes.get(n), fallback.get(n)) for n in node_ids]

    question_tokens: dict[str, int] = {}
    for r in answers:
        question_tokens[r.node_id] = question_tokens.get(r.node_id, 0) + (r.result.completion_tokens or 0)
    bench_tokens: dict[str, int] = {}
    for p in perf:
        bench_tokens[p.node_id] = bench_tokens.get(p.node_id, 0) + sum(s.total_output_tokens for s in p.steps)
    costs = []
    for n in node_ids:
        node = nodes.get(n)
        costs.append(
            CostRow(
                node_id=n,
                region=node.region if node else None,
                provider=(node.provider_name or node.provider_id) if node else None,
                glm_spent=_glm(node.extra) if node else None,
                question_tokens=question_tokens.get(n, 0),
                bench_tokens=bench_tokens.get(n, 0),
            )
        )
    differences = build_report(store, run_id) if run.total_jobs else None
    return RunReport(
        run_id=run.run_id,
        kind=run.kind,
        suite_name=run.suite_name,
        suite_hash=run.suite_hash,
        status=run.status,
        created_at=run.created_at,
        finished_at=run.finished_at,
        fleet=run.fleet_desc if isinstance(run.fleet_desc, dict) else {},
        job_counts=run.job_counts,
        generated_at=utcnow(),
        x_mode=x_mode,
        perf=perf,
        fingerprints=fingerprints,
        costs=costs,
        differences=differences,
        compatibility=matrix_from_store(store, run_id),
        comparison=comparison_from_store(store, run_id),
    )


# ---------------------------------------------------------------------------------------
# Charts


def _x_label(mode: XMode) -> str:
    return "request rate (req/s)" if mode == "rate" else "concurrency (requests in flight)"


def throughput_chart(report: RunReport) -> str:
    series = [
        Series(
            name=p.name,
            points=[(s.x, s.output_throughput) for s in p.steps if s.x is not None and s.completed],
            color=PALETTE[i % len(PALETTE)],
            dash=DASHES[(i // len(PALETTE)) % len(DASHES)],
            unit="tok/s",
        )
        for i, p in enumerate(report.perf)
    ]
    title = "Output token throughput vs " + ("request rate" if report.x_mode == "rate" else "concurrency")
    return line_chart(
        ChartSpec(title=title, x_label=_x_label(report.x_mode), y_label="output tokens / s", series=series,
                  chart_id="chart-throughput", width=CHART_W, height=400)
    )  # fmt: skip


def percentile_chart(report: RunReport, metric: Literal["ttft", "tpot"]) -> str:
    series: list[Series] = []
    legend: list[LegendEntry] = []
    for i, p in enumerate(report.perf):
        color = PALETTE[i % len(PALETTE)]
        legend.append(LegendEntry(name=p.name, color=color))
        for j, pct in enumerate(PERCENTILES):
            points = [
                (s.x, getattr(s, f"{metric}_ms")[pct])
                for s in p.steps
                if s.x is not None and s.completed and pct in getattr(s, f"{metric}_ms")
            ]
            series.append(Series(name=f"{p.name} {pct}", points=points, color=color, dash=DASHES[j], unit="ms"))
    legend += [LegendEntry(name=pct, color="#5b6470", dash=DASHES[j]) for j, pct in enumerate(PERCENTILES)]
    what = "TTFT (time to first token)" if metric == "ttft" else "TPOT (time per output token)"
    vs = "request rate" if report.x_mode == "rate" else "concurrency"
    return line_chart(
        ChartSpec(
            title=f"{what}: p50, p90, p99 vs {vs}",
            x_label=_x_label(report.x_mode),
            y_label=f"{metric.upper()} (ms)",
            series=series,
            legend=legend,
            chart_id=f"chart-{metric}",
            width=CHART_W,
        )
    )


# ---------------------------------------------------------------------------------------
# HTML

CSS = """
:root { --ink:#1f2429; --muted:#5b6470; --line:#e3e6ea; --bg:#f6f7f9; --card:#fff; --accent:#4e79a7;
        --ok:#2e7d4f; --bad:#b3261e; --warn:#8a5a00; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, sans-serif; }
header { background: #1f2a37; color: #fff; padding: 28px 40px 22px; }
header h1 { margin: 0 0 6px; font-size: 22px; font-weight: 650; letter-spacing: .2px; }
header .meta { color: #c9d2dc; font-size: 13px; }
header code { color: #fff; background: rgba(255,255,255,.12); padding: 1px 6px; border-radius: 4px; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 40px; display: flex; gap: 18px; flex-wrap: wrap; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 60px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px;
          margin: 0 0 22px; }
h2 { margin: 0 0 4px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
p.lead { margin: 0 0 14px; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fbfcfd; }
.card .v { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
.charts { display: grid; grid-template-columns: 1fr; gap: 18px; }
figure { margin: 0; overflow-x: auto; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0 4px; }
th, td { text-align: left; padding: 6px 9px; border-bottom: 1px solid var(--line); vertical-align: top; }
table.perf-best td, table.perf-steps td, table.costs td, table.regions td { white-space: nowrap; }
table.regions { width: auto; min-width: 420px; }
table.perf-steps, table.perf-best, table.compare-table { font-size: 12.5px; }
th { background: #f1f3f6; font-weight: 600; color: #39414a; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #e3f3e9; color: var(--ok); }
.badge.bad { background: #fbe4e2; color: var(--bad); }
.badge.warn { background: #fdf1d8; color: var(--warn); }
.badge.info { background: #e6eef7; color: #2f5b88; }
.muted { color: var(--muted); }
.settings { margin: 0; padding: 0; list-style: none; font-size: 12px; color: #39414a; }
.settings li { white-space: nowrap; }
.settings b { font-weight: 600; color: var(--muted); }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--accent); }
ul.warnings { margin: 6px 0 0; padding-left: 18px; color: var(--warn); font-size: 12.5px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px 0 30px; }
@media print { nav { display: none; } section { break-inside: avoid; } }
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _n(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ts(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else "—"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, cls: str = "") -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _status_badge(status: str) -> str:
    kind = {"done": "ok", "failed": "bad", "running": "info"}.get(status, "warn")
    return f'<span class="badge {kind}">{_e(status)}</span>'


def _summary_section(report: RunReport) -> str:
    best = max((p.best.output_throughput for p in report.perf if p.best), default=None)
    diff = report.differences
    cards = [
        ("nodes", str(len(report.fingerprints))),
        ("benchmarks", str(len(report.perf))),
        ("peak output tok/s", _n(best, 0) if best is not None else "n/a"),
        ("questions", str(diff.summary.questions) if diff else "0"),
        ("regions disagree", str(len(diff.summary.disagreements)) if diff else "n/a"),
        ("jobs done / failed", f"{report.job_counts.get('done', 0)} / {report.job_counts.get('failed', 0)}"),
    ]
    html = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards)
    fleet = report.fleet.get("kind") or "?"
    what = "A compatibility pilot" if report.kind == "pilot" else f"Suite <b>{_e(report.suite_name)}</b>"
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<p class="lead">{what} on a {_e(fleet)} fleet, status {_status_badge(report.status)}; '
        f"started {_e(_ts(report.created_at))}, finished {_e(_ts(report.finished_at))}.</p>"
        f'<div class="cards">{html}</div></section>'
    )


def _perf_sections(report: RunReport) -> str:
    if not report.perf:
        return (
            '<section id="throughput"><h2>Performance</h2><p class="lead">This run holds no performance benchmark '
            "(a suite's <code>perf</code> section, or <code>beacon bench --fleet</code>).</p></section>"
        )
    x_what = "request rate" if report.x_mode == "rate" else "concurrency"
    parts = [
        '<section id="throughput"><h2>Throughput</h2>'
        f'<p class="lead">Output tokens per second at each {x_what}, one line per node, runtime and place the load '
        "came from (<i>node</i>: the load generator next to the runtime; <i>requestor</i>: from this machine through "
        "the node's URL, network included). Higher is better.</p>"
        f'<figure>{throughput_chart(report)}<figcaption>output_throughput = output tokens of completed requests / '
        "step duration (vLLM's definition).</figcaption></figure></section>",
        '<section id="latency"><h2>Latency</h2>'
        '<p class="lead">Percentiles over the requests of each step: p50 solid, p90 dashed, p99 dotted; one colour per '
        "node. TTFT runs to the first streamed chunk with content; TPOT = (E2EL − TTFT) / (output tokens − 1). "
        "Lower is better.</p>"
        f'<div class="charts"><figure>{percentile_chart(report, "ttft")}</figure>'
        f'<figure>{percentile_chart(report, "tpot")}</figure></div></section>',
    ]
    rows = []
    for p in report.perf:
        b = p.best
        rows.append([
            _e(p.node_id), _e(p.region or "—"), _e(p.where), _e(p.runtime + (f" {p.runtime_version}" if p.runtime_version else "")),
            _e(p.model), _e(p.profile_kind), _e(short_step(b) if b else "—"), _n(b.output_throughput if b else None),
            _n(b.request_throughput if b else None, 2), _n(b.ttft_ms.get("p50") if b else None, 2),
            _n(b.tpot_ms.get("p50") if b else None, 2), _n(b.e2el_ms.get("p99") if b else None, 1),
        ])  # fmt: skip
    best_table = _table(
        ["node", "region", "where", "runtime", "model", "profile", "best step", "output tok/s", "req/s",
         "TTFT p50", "TPOT p50", "E2EL p99"],
        rows, numeric={7, 8, 9, 10, 11}, cls="perf-best",
    )  # fmt: skip
    details = []
    for p in report.perf:
        step_rows = [
            [
                _e(short_step(s)) + (' <span class="badge bad">overloaded</span>' if s.overloaded else ""),
                f"{s.completed} / {s.failed}", _n(s.duration, 2), _n(s.request_throughput, 2), _n(s.output_throughput),
                _n(s.request_goodput, 2) if s.request_goodput is not None else "—",
                *(_n(s.ttft_ms.get(k), 2) for k in PERCENTILES), *(_n(s.tpot_ms.get(k), 2) for k in PERCENTILES),
                _n(s.e2el_ms.get("p99"), 1),
            ]
            for s in p.steps
        ]  # fmt: skip
        table = _table(
            ["step", "ok / failed", "seconds", "req/s", "output tok/s", "goodput req/s",
             "TTFT p50", "TTFT p90", "TTFT p99", "TPOT p50", "TPOT p90", "TPOT p99", "E2EL p99"],
            step_rows, numeric=set(range(1, 13)), cls="perf-steps",
        )  # fmt: skip
        warn = ""
        if p.warnings or p.stop_reason:
            items = ([f"stopped early: {p.stop_reason}"] if p.stop_reason else []) + p.warnings
            warn = (f"<details><summary>{len(items)} note(s)</summary><ul class=\"warnings\">"
                    + "".join(f"<li>{_e(w)}</li>" for w in items[:40]) + "</ul></details>")  # fmt: skip
        slo = ""
        if p.slo:
            slo = " · SLO " + ", ".join(f"{_e(k)} ≤ {_e(v)}" for k, v in p.slo.items() if v is not None)
        details.append(
            f"<h3>{_e(p.name)} <span class=\"muted\">({_e(p.model)}, {_e(p.profile_kind)}, via {_e(p.via or '?')}{slo})</span></h3>"
            f"{table}{warn}"
        )
    parts.append(
        '<section id="benchmarks"><h2>Benchmarks</h2><p class="lead">The best step of each benchmark (highest output '
        "throughput short of overload), then every step as <code>vllm bench serve</code> reports it; latencies in ms."
        f"</p>{best_table}{''.join(details)}</section>"
    )
    return "".join(parts)


def _differences_section(report: RunReport) -> str:
    diff = report.differences
    if diff is None:
        return (
            '<section id="differences"><h2>Differences by region</h2><p class="lead">This run asked no questions: '
            "there are no answers to compare.</p></section>"
        )
    s = diff.summary
    regions = diff.regions
    region_table = _table(
        ["region", "answers", "refusals", "missing"],
        [[_e(r), str(s.answers_by_region.get(r, 0)), str(s.refusals_by_region.get(r, 0)), str(s.missing_by_region.get(r, 0))]
         for r in regions],
        numeric={1, 2, 3}, cls="regions",
    )  # fmt: skip
    rows = []
    for q in diff.questions:
        for c in q.comparisons:
            cells = []
            for r in regions:
                answers = [a for a in c.answers if a.region == r]
                if not answers:
                    cells.append('<span class="muted">—</span>')
                    continue
                bits = []
                for a in answers:
                    if a.text is None:
                        bits.append(f'<span class="badge warn">no answer</span> <span class="muted">{_e(a.state)}</span>')
                    else:
                        flat = " ".join(a.text.split())
                        snippet = flat if len(flat) <= 140 else flat[:139] + "…"
                        flag = '<span class="badge bad">refusal</span> ' if a.refusal else ""
                        bits.append(flag + _e(snippet))
                cells.append("<br>".join(bits))
            if c.exact_match:
                verdict = '<span class="badge ok">identical</span>'
            elif c.disagree:
                verdict = '<span class="badge bad">disagree</span><br><span class="muted">' + _e("; ".join(c.reasons)) + "</span>"
            else:
                verdict = '<span class="badge info">agree</span>'
            sim = _n(c.min_similarity, 2) if c.min_similarity is not None else "—"
            rows.append([f"<b>{_e(q.question_id)}</b><br><span class=\"muted\">{_e(q.category)}</span>",
                         _e(c.model), *cells, sim, verdict])  # fmt: skip
    table = _table(["question", "model", *(_e(r) for r in regions), "min sim.", "verdict"], rows,
                   numeric={2 + len(regions)}, cls="differences")  # fmt: skip
    return (
        '<section id="differences"><h2>Differences by region</h2>'
        f'<p class="lead">{s.questions} questions, {s.comparisons} question × model comparisons, {s.exact_matches} '
        f"identical in every region, {len(s.disagreements)} where regions disagree (similarity below "
        f"{diff.threshold:.2f}, a refusal in some regions only, or a missing answer). Similarity: "
        f"{_e(diff.similarity_method)}.</p>{region_table}<h3>Answers side by side</h3>{table}</section>"
    )


def _fingerprint_section(report: RunReport) -> str:
    rows = []
    for f in report.fingerprints:
        settings = "".join(f"<li><b>{_e(k)}</b> {_e(v)}</li>" for k, v in list(f.settings.items())[:14])
        rows.append([
            f"<b>{_e(f.node_id)}</b>" + (f'<br><span class="muted">{_e(f.provider)}</span>' if f.provider else "")
            + (' <span class="badge bad">lost</span>' if f.status == "lost" else ""),
            _e(f.region or "—"), _e(f.gpu), _e(f.driver), _e(f.cpu), _e(f.ram), _e(f.os),
            _e(f.runtime) + (f'<br><span class="muted">{_e(", ".join(f.models))}</span>' if f.models else "")
            + (f'<br><span class="badge info">{_e(f.runtime_choice)}</span>' if f.runtime_choice else ""),
            f'<ul class="settings">{settings}</ul>' if settings else '<span class="muted">—</span>',
        ])  # fmt: skip
    return (
        '<section id="fingerprints"><h2>Node fingerprints</h2><p class="lead">What each node reported at '
        "<code>GET /info</code>: the machine, the runtime, and the runtime's settings (parallel slots, context, ...).</p>"
        + _table(["node", "region", "GPU", "driver", "CPU", "RAM", "OS", "runtime", "settings"], rows, cls="fingerprints")
        + "</section>"
    )


_PROBE_BADGE = {"pass": "ok", "warn": "warn", "fail": "bad", "error": "bad", "skip": "info"}


def _probe_badge(status: str, title: str | None = None) -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return f'<span class="badge {_PROBE_BADGE.get(status, "info")}"{tip}>{_e(status.upper())}</span>'


def _compatibility_section(report: RunReport) -> str:
    m = report.compatibility
    if m is None:
        return ""
    counts = {s: sum(1 for r in m.rows if r.status == s) for s in ("pass", "warn", "fail", "error")}
    node_rows = []
    for r in m.rows:
        possible = " ".join(
            f'<span class="badge {"ok" if rt.accelerator == "gpu" else "info"}" title="{_e("; ".join(rt.reasons))}">'
            f"{_e(rt.label)}</span>" for rt in r.possible
        ) or '<span class="muted">—</span>'
        impossible = " ".join(
            f'<span class="badge bad" title="{_e("; ".join(rt.reasons))}">{_e(rt.runtime)}</span>' for rt in r.not_possible
        ) or '<span class="muted">—</span>'
        probe = _probe_badge(r.status) + (f'<br><span class="muted">{_e(r.error)}</span>' if r.error else "")
        node_rows.append([
            f"<b>{_e(r.node_id)}</b>" + (f'<br><span class="muted">{_e(r.provider)}</span>' if r.provider else ""),
            _e(r.region or "—"), _e(r.gpu), _n(r.vram_gib, 0) + " GiB" if r.vram_gib else "—", _e(r.driver or "—"),
            _e(r.cuda or "—"), probe, possible, impossible,
        ])  # fmt: skip
    parts = [
        '<section id="compatibility"><h2>Compatibility</h2>'
        f'<p class="lead">What each node\'s Linux compatibility probe (<code>GET /probe</code>) found: {len(m.rows)} '
        f"node(s), {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, {counts['error']} without a "
        "probe. Runtimes possible say where they would run (GPU or CPU); hover a badge for the reasons.</p>"
        + _table(["node", "region", "GPU", "VRAM", "driver", "CUDA", "probe", "runtimes possible", "not possible"],
                 node_rows, cls="compat-nodes")  # fmt: skip
    ]
    probed = m.probed
    if probed:
        check_rows = []
        for check_id, title in m.checks.items():
            cells = []
            for r in probed:
                c = r.check(check_id)
                cells.append(_probe_badge(c.status, c.reason) if c else '<span class="muted">—</span>')
            check_rows.append([_e(title), *cells])
        parts.append("<h3>Checks</h3>" + _table(["check", *(_e(r.node_id) for r in probed)], check_rows, cls="compat-checks"))
        details = []
        for r in m.rows:
            items = [f"<li>no probe: {_e(r.error)}</li>"] if r.error else []
            items += [f"<li>{_probe_badge(c.status)} <b>{_e(c.title)}</b>: {_e(c.reason)}</li>"
                      for c in r.checks if c.status in ("warn", "fail")]  # fmt: skip
            items += [f"<li><b>{_e(rt.runtime)}</b> ({_e(rt.label if rt.can_run else 'not possible')}): "
                      f"{_e('; '.join(rt.reasons))}</li>" for rt in r.runtimes]  # fmt: skip
            items += [f"<li>{_e(n)}</li>" for n in r.notes]
            details.append(f"<details><summary>{_e(r.node_id)}: why</summary><ul>{''.join(items)}</ul></details>")
        parts.append("".join(details))
    if m.notes:
        parts.append("<h3>Fleet notes</h3><ul class=\"warnings\">" + "".join(f"<li>{_e(n)}</li>" for n in m.notes) + "</ul>")
    return "".join(parts) + "</section>"


def _cost_section(report: RunReport) -> str:
    rows = [
        [_e(c.node_id), _e(c.region or "—"), _e(c.provider or "—"),
         _n(c.glm_spent, 6) if c.glm_spent is not None else "n/a",
         f"{c.question_tokens:,}", f"{c.bench_tokens:,}", f"{c.tokens:,}",
         _n(c.glm_per_million, 4) if c.glm_per_million is not None else "n/a"]
        for c in report.costs
    ]  # fmt: skip
    return (
        '<section id="cost"><h2>Cost</h2><p class="lead">GLM per million output tokens = GLM spent on the node / output '
        "tokens it generated in this run (answers plus benchmark requests) × 10⁶. Only Golem nodes have a cost "
        "(<code>glm_spent</code>); others show n/a.</p>"
        + _table(["node", "region", "provider", "GLM spent", "answer tokens", "benchmark tokens", "output tokens",
                  "GLM / 1M tokens"], rows, numeric={3, 4, 5, 6, 7}, cls="costs")  # fmt: skip
        + "</section>"
    )


def render_html(report: RunReport) -> str:
    """The whole report as one HTML document: inline CSS and SVG, no script, nothing to fetch."""
    nav = "".join(
        f'<a href="#{i}">{t}</a>'
        for i, t in (("summary", "Summary"), ("comparison", "Comparison"), ("compatibility", "Compatibility"),
                     ("throughput", "Throughput"),
                     ("latency", "Latency"), ("benchmarks", "Benchmarks"), ("differences", "Differences"),
                     ("fingerprints", "Nodes"), ("cost", "Cost"))
        if (i not in ("latency", "benchmarks") or report.perf) and (i != "compatibility" or report.compatibility)
        and (i != "comparison" or report.comparison)
    )  # fmt: skip
    body = (
        _summary_section(report) + comparison_section(report.comparison, CHART_W) + _compatibility_section(report)
        + _perf_sections(report) + _differences_section(report)
        + _fingerprint_section(report) + _cost_section(report)
    )  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>Beacon run {_e(report.run_id)} · {_e(report.suite_name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Beacon run report</h1><div class=\"meta\">run <code>{_e(report.run_id)}</code> · "
        + (f"suite <b>{_e(report.suite_name)}</b> · <code>{_e(report.suite_hash[:19])}…</code>" if report.kind != "pilot"
           else "<b>compatibility pilot</b>")
        + f" · generated {_e(_ts(report.generated_at))}</div></header><nav>{nav}</nav><main>{body}</main>"
        f"<footer>beacon-golem · from the run store only · {_e(report.run_id)}</footer></body></html>\n"
    )


# ---------------------------------------------------------------------------------------
# Markdown


def render_markdown_summary(report: RunReport) -> str:
    lines = [
        f"# Beacon run {report.run_id}: {md_cell(report.suite_name)}",
        "",
        f"Status **{report.status}** on a {report.fleet.get('kind', '?')} fleet; started {_ts(report.created_at)}, "
        f"finished {_ts(report.finished_at)}. "
        + ("A compatibility pilot." if report.kind == "pilot" else f"Suite `{report.suite_hash}`."),
        "",
        "## Performance",
        "",
    ]
    if report.perf:
        lines += [
            "| Node | Region | Where | Runtime | Model | Best step | Output tok/s | Req/s | TTFT p50 ms | TPOT p50 ms |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|",
        ]
        for p in report.perf:
            b = p.best
            lines.append(
                f"| {md_cell(p.node_id)} | {md_cell(p.region or '-')} | {p.where} | {md_cell(p.runtime)} | {md_cell(p.model)} | "
                f"{md_cell(short_step(b) if b else '-')} | {_n(b.output_throughput if b else None)} | "
                f"{_n(b.request_throughput if b else None, 2)} | {_n(b.ttft_ms.get('p50') if b else None, 2)} | "
                f"{_n(b.tpot_ms.get('p50') if b else None, 2)} |"
            )
    else:
        lines.append("No performance benchmark in this run.")
    lines += comparison_markdown(report.comparison)
    lines += ["", "## Nodes", "", "| Node | Region | GPU | Driver | CPU | RAM | Runtime |", "|---|---|---|---|---|---|---|"]
    for f in report.fingerprints:
        lines.append(f"| {md_cell(f.node_id)} | {md_cell(f.region or '-')} | {md_cell(f.gpu)} | {md_cell(f.driver)} | {md_cell(f.cpu)} | "
                     f"{md_cell(f.ram)} | {md_cell(f.runtime)} |")  # fmt: skip
    lines += ["", "## Cost", "", "| Node | GLM spent | Output tokens | GLM / 1M tokens |", "|---|---:|---:|---:|"]
    for c in report.costs:
        spent = _n(c.glm_spent, 6) if c.glm_spent is not None else "n/a"
        per = _n(c.glm_per_million, 4) if c.glm_per_million is not None else "n/a"
        lines.append(f"| {md_cell(c.node_id)} | {spent} | {c.tokens:,} | {per} |")
    if report.compatibility is not None:
        m = report.compatibility
        lines += ["", "## Compatibility", "", "| Node | Region | GPU | Driver | CUDA | Probe | Runtimes possible | Not possible |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in m.rows:
            probe = r.status.upper() + (f": {r.error}" if r.error else "")
            lines.append(f"| {md_cell(r.node_id)} | {md_cell(r.region or '-')} | {md_cell(r.gpu)} | {md_cell(r.driver or '-')} | "
                         f"{md_cell(r.cuda or '-')} | {md_cell(probe)} | {md_cell(runtimes_text(r.runtimes, True))} | "
                         f"{md_cell(runtimes_text(r.runtimes, False))} |")  # fmt: skip
    lines += ["", "## Differences by region", ""]
    diff = report.differences
    if diff is None:
        lines.append("This run asked no questions.")
    else:
        s = diff.summary
        lines += [
            f"{s.questions} questions, {s.comparisons} comparisons, {s.exact_matches} identical in every region, "
            f"{len(s.disagreements)} where regions disagree.",
            "",
            "| Region | Answers | Refusals | Missing |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {md_cell(r)} | {s.answers_by_region.get(r, 0)} | {s.refusals_by_region.get(r, 0)} | "
                  f"{s.missing_by_region.get(r, 0)} |" for r in diff.regions]  # fmt: skip
        if s.disagreements:
            lines += ["", "| Question | Model | Why |", "|---|---|---|"]
            lines += [f"| {md_cell(d.question_id)} | {md_cell(d.model)} | {md_cell('; '.join(d.reasons))} |" for d in s.disagreements]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------


def write_run_report(store: Store, run_id: str, html_path: Path | None, md_path: Path | None = None) -> RunReport:
    """Write the HTML report and/or the Markdown summary of a run; returns what they show."""
    report = build_run_report(store, run_id)
    if html_path is not None:
        write_text_atomic(html_path, render_html(report))
    if md_path is not None:
        write_text_atomic(md_path, render_markdown_summary(report))
    return report


__all__ = [
    "RunReport",
    "build_run_report",
    "fmt_num",
    "render_html",
    "render_markdown_summary",
    "write_run_report",
]
