"""A runtime comparison, side by side: the JSON of `beacon compare show --json`, the report's section.

Everything comes from the store (`requestor/store/comparison.py`: the plan, the trials, their
sweeps, each machine's probe, and `core.compare.recommend` over them). Per machine: throughput,
TTFT and TPOT against concurrency with one line per runtime; a table of best throughput, latency
at concurrency 1 and at Beacon's concurrency, cold start and GLM per million output tokens;
which runtime wins at which load; where the weights differ; and the recommendation with the
reason each other runtime lost.
"""

from __future__ import annotations

from html import escape
from typing import Any

from beacon_golem.core.compare import StepFigure, TrialFigures
from beacon_golem.reports.charts import PALETTE, ChartSpec, Series, line_chart
from beacon_golem.reports.markdown import md_cell
from beacon_golem.requestor.store.comparison import Comparison, MachineComparison, TrialView

#: The fields of each runtime in `beacon compare show --json`, in order (issue 13 lists them).
JSON_FIELDS = (
    "runtime", "started", "cold_start_s", "model_load_s", "best_output_throughput", "ttft_p50_ms_at_1",
    "glm_per_million_tokens", "recommended", "reason",
)  # fmt: skip


def _r(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def incomplete(m: MachineComparison) -> str | None:
    """Why this machine's comparison is incomplete (its provider lost mid-way), or None when it is not."""
    lost = [v.trial for v in m.trials if v.trial.status == "lost"]
    if not lost:
        return None
    return (
        f"incomplete: the provider was lost mid-comparison ({lost[0].reason or 'no reason given'}); "
        f"{', '.join(t.variant for t in lost)} not measured on it, and no other machine's figures stand in for them"
    )


def machine_notes(m: MachineComparison) -> list[str]:
    """What to say above a machine's figures: whether its comparison is incomplete, where the weights differ."""
    first = incomplete(m)
    return ([first] if first else []) + list(m.notes)


def runtime_entry(view: TrialView, comparison: Comparison) -> dict[str, Any]:
    """One runtime on one machine with exactly the fields of JSON_FIELDS."""
    f, plan = view.figures, comparison.plan
    best, at_1 = f.best, f.step_at(1)
    return {
        "runtime": view.trial.variant,
        "started": view.trial.startup is not None,
        "cold_start_s": _r(f.cold_start_s),
        "model_load_s": _r(f.model_load_s),
        "best_output_throughput": _r(best.output_throughput if best else None),
        "ttft_p50_ms_at_1": _r(at_1.ttft_p50_ms if at_1 else None),
        "glm_per_million_tokens": _r(f.glm_per_million(f.best_meeting(comparison.slo, plan.slo_share)), 6),
        "recommended": view.verdict.recommended,
        "reason": view.verdict.reason,
    }


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """`{"run_id", "nodes": [{"node", "provider", "gpu", "recommended", "incomplete", "runtimes": [...]}]}`
    (`incomplete`: why, when the provider was lost mid-comparison; else null)."""
    nodes = [
        {"node": m.machine, "provider": m.provider, "gpu": m.gpu, "recommended": m.recommended,
         "incomplete": incomplete(m), "runtimes": [runtime_entry(v, comparison) for v in m.trials]}
        for m in comparison.machines
    ]  # fmt: skip
    return {"run_id": comparison.run_id, "nodes": nodes}


# ---------------------------------------------------------------------------------------
# Figures shown per runtime


def _step_name(step: StepFigure | None) -> str:
    if step is None:
        return "—"
    return f"c={step.concurrency}" if step.concurrency is not None else step.label


def _n(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _weights(view: TrialView) -> str:
    w = view.trial.weights
    if w is None:
        return "not reported"
    parts = [w.format, w.quantization or "quantization ?", f"ctx {w.context_length:,}" if w.context_length else "ctx ?"]
    return " · ".join(parts)


def machine_rows(m: MachineComparison, comparison: Comparison) -> list[dict[str, Any]]:
    """One row per runtime: what the table shows (plain values, formatted by the renderers)."""
    plan, slo = comparison.plan, comparison.slo
    rows = []
    for view in m.trials:
        f: TrialFigures = view.figures
        best, good = f.best, f.best_meeting(slo, plan.slo_share)
        at_1, at_b = f.step_at(1), f.step_at(plan.beacon_concurrency)
        price = view.trial.price
        rows.append({
            "variant": view.trial.variant, "runtime": view.trial.runtime, "status": view.trial.status,
            "version": view.trial.runtime_version, "model": view.trial.model, "weights": _weights(view),
            "settings": " ".join(f"{k}={v}" for k, v in view.trial.settings.items()) or "defaults",
            "best": best, "best_meeting": good, "at_1": at_1, "at_beacon": at_b,
            "cold_start_s": f.cold_start_s, "model_load_s": f.model_load_s, "model_load_source": f.model_load_source,
            "first_ttft_ms": f.first_ttft_ms, "idle_ttft_ms": f.idle_ttft_ms, "idle_load_ms": f.idle_load_ms,
            "glm_per_hour": price.glm_per_hour if price else None, "price_source": price.source if price else None,
            "glm_per_mtok": f.glm_per_million(good), "glm_per_mtok_beacon": f.glm_per_million(at_b),
            "recommended": view.verdict.recommended, "reason": view.verdict.reason,
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------
# HTML


def _chart(m: MachineComparison, metric: str, title: str, y_label: str, unit: str, chart_id: str, width: int) -> str:
    series = []
    for i, view in enumerate(m.trials):
        points = []
        for s in view.figures.steps:
            if s.concurrency is None or not s.completed:
                continue
            points.append((float(s.concurrency), float(getattr(s, metric))))
        series.append(Series(name=view.trial.variant, points=points, color=PALETTE[i % len(PALETTE)], unit=unit))
    return line_chart(ChartSpec(title=title, x_label="concurrency (requests in flight)", y_label=y_label,
                                series=series, chart_id=chart_id, width=width, height=340))  # fmt: skip


def _table(headers: list[str], rows: list[list[str]], numeric: set[int], cls: str) -> str:
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _tip(text: str, tip: str | None) -> str:
    return f'<span title="{_e(tip)}">{text}</span>' if tip else text


def machine_html(m: MachineComparison, comparison: Comparison, index: int, width: int) -> str:
    plan = comparison.plan
    rows = machine_rows(m, comparison)
    badge = {"done": "ok", "failed": "bad", "lost": "warn"}
    c = plan.beacon_concurrency
    results, verdicts, ran = [], [], []
    for r, view in zip(rows, m.trials, strict=True):
        name = f"<b>{_e(r['variant'])}</b>"
        status = f'<span class="badge {badge[r["status"]]}">{_e(r["status"])}</span>'
        results.append([
            name, status,
            _n(r["best"].output_throughput if r["best"] else None) + f' <span class="muted">{_e(_step_name(r["best"]))}</span>',
            _n(r["at_1"].ttft_p50_ms if r["at_1"] else None, 1),
            _n(r["at_1"].tpot_p50_ms if r["at_1"] else None, 2),
            _n(r["at_beacon"].output_throughput if r["at_beacon"] else None),
            _n(r["at_beacon"].ttft_p50_ms if r["at_beacon"] else None, 1),
            _n(r["cold_start_s"], 2),
            _tip(_n(r["model_load_s"], 2), r["model_load_source"]),
            _n(r["idle_ttft_ms"], 1) if plan.idle_s else '<span class="muted">not measured</span>',
            _n(r["glm_per_mtok"], 4) + (f' <span class="muted">{_e(_step_name(r["best_meeting"]))}</span>'
                                        if r["glm_per_mtok"] is not None else ""),
            _n(r["glm_per_mtok_beacon"], 4),
        ])  # fmt: skip
        verdicts.append([name, ('<span class="badge ok">recommended</span> ' if r["recommended"] else "") + _e(r["reason"])])
        w, st = view.trial.weights, view.trial.startup
        starts = (f"{_n(st.answering_s, 2)} / {_n(st.ready_s, 2)} / {_n(st.health_s, 2)}" if st is not None else "—")
        ran.append([
            name, _e(r["version"] or "—"), _e(r["model"] or "—"), _e(w.format if w else "?"),
            _e((w.quantization if w else None) or "?"), _e(f"{w.context_length:,}" if w and w.context_length else "?"),
            _e(r["settings"]), starts, _e(st.page_cache if st is not None and st.page_cache else "—"),
        ])  # fmt: skip
    results_table = _table(
        ["runtime", "status", "best output tok/s", "TTFT p50 c=1", "TPOT p50 c=1", f"tok/s c={c}", f"TTFT p50 c={c}",
         "cold start s", "model load s", f"TTFT after {plan.idle_s:g} s idle" if plan.idle_s else "TTFT after idle",
         "GLM / 1M tokens", f"GLM / 1M c={c}"],
        results, numeric=set(range(2, 12)), cls="compare-table",
    )  # fmt: skip
    verdict_table = _table(["runtime", "verdict"], verdicts, numeric=set(), cls="compare-verdicts")
    ran_table = _table(
        ["runtime", "version", "model", "format", "quantization", "context", "settings given",
         "answering / ready / health s", "page cache"],
        ran, numeric={7}, cls="compare-ran",
    )  # fmt: skip
    wins = ", ".join(f"c={level}: <b>{_e(v)}</b>" for level, v in m.winners_by_load.items()) or "no runtime met the SLOs at any load"
    price = next((r for r in rows if r["glm_per_hour"] is not None), None)
    price_text = (f"{price['glm_per_hour']:.4g} GLM/h ({'the agreement' if price['price_source'] == 'agreement' else 'given'})"
                  if price else "no price known (local or static node without --glm-per-hour)")  # fmt: skip
    notes = "".join(f"<li>{_e(n)}</li>" for n in machine_notes(m))
    rec = m.recommended
    head = (
        f'<h3 id="compare-{index}">{_e(m.machine)}'
        + (f' <span class="muted">{_e(m.provider)}</span>' if m.provider else "")
        + "</h3>"
        f'<p class="lead">GPU {_e(m.gpu or "none")} · probe {_e(m.probe_status or "not probed")} · price {_e(price_text)}. '
        + (f'Recommended: <span class="badge ok">{_e(rec)}</span></p>' if rec else
           '<span class="badge bad">no runtime qualifies</span></p>')
    )  # fmt: skip
    charts = (
        '<div class="charts">'
        f"<figure>{_chart(m, 'output_throughput', 'Output token throughput vs concurrency', 'output tokens / s', 'tok/s', f'chart-compare-{index}-throughput', width)}</figure>"
        f"<figure>{_chart(m, 'ttft_p50_ms', 'TTFT p50 vs concurrency', 'TTFT p50 (ms)', 'ms', f'chart-compare-{index}-ttft', width)}</figure>"
        f"<figure>{_chart(m, 'tpot_p50_ms', 'TPOT p50 vs concurrency', 'TPOT p50 (ms)', 'ms', f'chart-compare-{index}-tpot', width)}</figure>"
        "</div>"
    )  # fmt: skip
    return (
        head + (f'<ul class="warnings">{notes}</ul>' if notes else "") + charts
        + "<h4>Figures</h4>" + results_table
        + f'<p class="lead">Wins at each load (highest output tok/s meeting the SLOs): {wins}.</p>'
        + "<h4>Verdicts</h4>" + verdict_table + "<h4>What each runtime ran</h4>" + ran_table
    )


def comparison_section(comparison: Comparison | None, width: int = 1120) -> str:
    if comparison is None:
        return ""
    plan, slo = comparison.plan, comparison.slo
    slo_text = ", ".join(f"{k} ≤ {v:g}" for k, v in slo.model_dump().items() if v is not None) if slo else ""
    lead = (
        f"{len(plan.variants)} runtime(s) ({_e(', '.join(v.label for v in plan.variants))}) benchmarked one after the "
        "other on the same machine with the same prompts, load profile and output lengths. The recommendation is the "
        "runtime with the lowest GLM per million output tokens among those meeting the suite's SLOs"
        + (f" ({_e(slo_text)}: a step qualifies when {plan.slo_share:.0%} of its requests meet them)" if slo_text
           else " (the suite sets none: every step short of overload qualifies)")
        + "; without a price, the fastest on the same machine. Cold start: launch to the first token of the first "
        f"request. Beacon's concurrency: {plan.beacon_concurrency}."
    )  # fmt: skip
    parts = [machine_html(m, comparison, i, width) for i, m in enumerate(comparison.machines)]
    return f'<section id="comparison"><h2>Runtime comparison</h2><p class="lead">{lead}</p>{"".join(parts)}</section>'


def comparison_markdown(comparison: Comparison | None) -> list[str]:
    if comparison is None:
        return []
    plan = comparison.plan
    c = plan.beacon_concurrency
    lines = ["", "## Runtime comparison", ""]
    for m in comparison.machines:
        lines += [f"### {md_cell(m.machine)} ({md_cell(m.gpu or 'no GPU')}): recommended {md_cell(m.recommended or 'none')}", ""]
        lines += [n for n in (f"- {md_cell(x)}" for x in machine_notes(m))]
        lines += [f"| Runtime | Status | Best tok/s | TTFT p50 c=1 ms | tok/s c={c} | Cold start s | GLM / 1M tokens | Verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in machine_rows(m, comparison):
            lines.append(
                f"| {md_cell(r['variant'])} | {r['status']} | {_n(r['best'].output_throughput if r['best'] else None)} | "
                f"{_n(r['at_1'].ttft_p50_ms if r['at_1'] else None)} | "
                f"{_n(r['at_beacon'].output_throughput if r['at_beacon'] else None)} | {_n(r['cold_start_s'], 2)} | "
                f"{_n(r['glm_per_mtok'], 4)} | {md_cell(('**recommended**: ' if r['recommended'] else '') + r['reason'])} |"
            )
        lines.append("")
    return lines
