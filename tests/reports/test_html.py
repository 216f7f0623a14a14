"""`beacon report`: the self-contained HTML report and the Markdown summary, from the store alone.

The main case reads a store written by a real small run (two local nodes, questions in two
regions, a perf sweep on each node: tests/perf_support.py). Charts are checked as SVG text
here; tests/reports/test_html_browser.py checks that a browser draws them.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from beacon_golem.core.errors import UsageError
from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.reports.charts import ChartSpec, Series, line_chart, nice_ticks
from beacon_golem.reports.html import build_run_report, render_html, render_markdown_summary
from beacon_golem.requestor.store.store import Store
from tests.perf_support import PerfRun

SECTIONS = ("summary", "throughput", "latency", "benchmarks", "differences", "fingerprints", "cost")


def copy_store(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    import beacon_golem.cli.report  # noqa: F401  (registers the command)
    from beacon_golem.cli import app

    return CliRunner().invoke(app, list(args))


def polylines(html: str, chart_id: str) -> list[tuple[str, int, str]]:
    svg = re.search(rf'<svg class="chart" id="{chart_id}".*?</svg>', html, re.S)
    assert svg is not None, chart_id
    found = re.findall(r'<polyline class="series" data-series="([^"]*)" data-points="(\d+)" points="([^"]*)"', svg[0])
    return [(name, int(n), points) for name, n, points in found]


@pytest.fixture
def report_store(perf_run: PerfRun, tmp_path: Path) -> Path:
    """A copy of the real run's store, with GLM spent on one node as a Golem fleet would record it."""
    db = copy_store(perf_run.db, tmp_path / "beacon.db")
    with Store(db) as store:
        store.set_node_extra(perf_run.run_id, "local-0", glm_spent=0.5)
    return db


def test_html_report_of_a_real_run_has_every_section(perf_run: PerfRun, report_store: Path, tmp_path: Path) -> None:
    html_path, md_path = tmp_path / "out" / "report.html", tmp_path / "out" / "summary.md"
    before = digest(report_store)
    done = invoke("report", perf_run.run_id[:12], "--html", str(html_path), "--md", str(md_path), "--db", str(report_store))
    assert done.exit_code == 0, done.output
    assert f"run {perf_run.run_id}: 2 benchmarks, 2 nodes" in done.output
    assert digest(report_store) == before  # the report only reads the store
    html = html_path.read_text()

    assert html.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    # Self-contained: no script, no stylesheet or image to fetch, no web font; the only URL is SVG's namespace.
    assert "<script" not in html and "@import" not in html and "url(" not in html and " src=" not in html
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) == {"http://www.w3.org/2000/svg"}

    # Throughput: one line per node (both where=node), two points each (concurrency 1 and 2).
    lines = polylines(html, "chart-throughput")
    assert sorted(name for name, _, _ in lines) == ["local-0 · llamacpp · node", "local-1 · llamacpp · node"]
    assert all(n == 2 and len(points.split()) == 2 for _, n, points in lines)
    # TTFT and TPOT: p50, p90 and p99 for each node.
    for chart in ("chart-ttft", "chart-tpot"):
        names = sorted(name for name, n, _ in polylines(html, chart) if n == 2)
        assert names == sorted(f"local-{i} · llamacpp · node {p}" for i in (0, 1) for p in ("p50", "p90", "p99")), chart
    assert html.count('<svg class="chart"') == 3
    assert "concurrency (requests in flight)" in html and ">p90<" in html

    with Store(report_store, readonly=True) as store:
        benches = store.bench_results(perf_run.run_id)
        answers = store.results(perf_run.run_id)
        nodes = store.nodes(perf_run.run_id)
    # The benchmark tables: every step with its figures as stored.
    for bench in benches:
        for step in bench.steps:
            assert f"{step['output_throughput']:,.1f}" in html
            assert f"{step['p99_ttft_ms']:,.2f}" in html
    # Differences by region: both regions, both questions, side by side.
    diff = html.split('<section id="differences">')[1].split("</section>")[0]
    assert "<th>US</th>" in diff and "<th>EU</th>" in diff and "identity" in diff and "taiwan" in diff
    # Fingerprints: the runtime, its settings and the machine each node reported.
    prints = html.split('<section id="fingerprints">')[1].split("</section>")[0]
    info = nodes[0].info
    assert info is not None
    assert "total_slots" in prints and "llamacpp" in prints and f"{info.system.ram_gib:.1f} GiB" in prints
    assert str(info.system.cpu_model) in prints
    # Cost: GLM per million output tokens where GLM spent is known, n/a elsewhere.
    tokens = sum(r.result.completion_tokens or 0 for r in answers if r.node_id == "local-0") + sum(
        s["total_output_tokens"] for b in benches if b.node_id == "local-0" for s in b.steps
    )
    cost = html.split('<section id="cost">')[1].split("</section>")[0]
    assert f"{0.5 / tokens * 1e6:,.4f}" in cost and f"{tokens:,}" in cost and "n/a" in cost

    md = md_path.read_text()
    assert md.startswith(f"# Beacon run {perf_run.run_id}: perf-and-questions")
    for heading in ("## Performance", "## Nodes", "## Cost", "## Differences by region"):
        assert heading in md
    assert re.search(r"^\| local-0 \| (US|EU) \| node \| llamacpp \| beacon-tiny \| c=[12] \|", md, re.M)
    assert f"{0.5 / tokens * 1e6:,.4f}" in md and "| US | 2 | 0 | 0 |" in md


def test_a_run_without_benchmarks_or_cost_says_so(tmp_path: Path) -> None:
    suite = parse_suite("name: q\nquestions: [{id: q1, text: hi}]\nmodels: [{name: m}]\nregions: [US, EU]\n")
    with Store(tmp_path / "beacon.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), {"kind": "static"})
        job = store.jobs(run.run_id)[0]
        store.record_result(job.job_id, "n1", GenerationResult(text="I cannot discuss that.", finish_reason="stop",
                            prompt_tokens=3, completion_tokens=5, token_count_source="server", ttft_ms=2.0, e2e_ms=10.0,
                            runtime="llamacpp", model="m"), run.created_at,
                            run.created_at, None)  # fmt: skip
        report = build_run_report(store, run.run_id)
    html = render_html(report)
    assert "holds no performance benchmark" in html and '<svg class="chart"' not in html
    assert 'href="#latency"' not in html  # no empty sections in the navigation
    assert "refusal" in html and "no answer" in html  # EU never answered
    assert "<td>n1</td>" in html and "n/a" in html.split('<section id="cost">')[1]
    md = render_markdown_summary(report)
    assert "No performance benchmark in this run." in md and "| n1 | n/a | 5 | n/a |" in md


def test_report_usage_errors(tmp_path: Path, perf_run: PerfRun) -> None:
    missing = invoke("report", perf_run.run_id, "--db", str(perf_run.db))
    assert isinstance(missing.exception, UsageError) and "give --html PATH" in str(missing.exception)
    nope = invoke("report", "nope", "--html", str(tmp_path / "r.html"), "--db", str(perf_run.db))
    assert isinstance(nope.exception, UsageError) and "no run 'nope'" in str(nope.exception)
    nodb = invoke("report", "latest", "--html", str(tmp_path / "r.html"), "--db", str(tmp_path / "none.db"))
    assert isinstance(nodb.exception, UsageError) and not (tmp_path / "none.db").exists()
    assert not (tmp_path / "r.html").exists()


# ---- charts ---------------------------------------------------------------------------------------
def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0, 3867) == [0, 1000, 2000, 3000, 4000]
    assert nice_ticks(0, 0.9) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = nice_ticks(3.2, 51.7)
    assert ticks[0] <= 3.2 and ticks[-1] >= 51.7


def test_line_chart_axes_log_scale_single_points_and_escaping() -> None:
    sweep = [(c, c * 10.0) for c in (1, 2, 4, 8, 16, 32)]
    svg = line_chart(ChartSpec(title="T <1>", x_label="concurrency", y_label="tok/s",
                               series=[Series(name="a<b>", points=sweep), Series(name="one", points=[(4, 5.0)])]))  # fmt: skip
    assert svg.startswith('<svg class="chart"') and svg.endswith("</svg>")
    assert "concurrency (log scale)" in svg  # 1..32 spans 32x
    assert 'data-series="a&lt;b&gt;" data-points="6"' in svg and 'data-points="1"' in svg
    assert "T &lt;1&gt;" in svg and "<b>" not in svg
    assert svg.count('<circle class="point"') == 7
    x_ticks = re.findall(r'text-anchor="middle" fill="#5b6470">([^<]+)<', svg)
    assert x_ticks == ["1", "2", "4", "8", "16", "32"]
    linear = line_chart(ChartSpec(title="t", x_label="rate", y_label="y", series=[Series(name="s", points=[(1, 1), (2, 3)])]))
    assert "log scale" not in linear
    empty = line_chart(ChartSpec(title="t", x_label="x", y_label="y", series=[]))
    assert ">no data<" in empty and "<polyline" not in empty
