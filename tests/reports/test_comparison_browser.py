"""The report of a runtime comparison in a real browser: its charts draw, one line per runtime that ran.

A comparison with a known answer is stored (tests/requestor/test_recommend.py: Ollama and
llama.cpp measured at concurrency 1 and 4, vLLM never started), its report written from the
store alone and opened in headless Chromium (tests/reports/test_html_browser.py's harness).
"""

from __future__ import annotations

from pathlib import Path

from beacon_golem.reports.html import write_run_report
from beacon_golem.requestor.store.store import Store
from tests.reports.test_html_browser import CHARTS_JS, chromium_binary, chromium_page
from tests.requestor.test_recommend import stored_comparison


async def test_the_comparison_section_draws_a_line_per_runtime_and_names_the_winner(tmp_path: Path) -> None:
    chromium_binary()
    db = tmp_path / "beacon.db"
    run_id = stored_comparison(db)
    html = tmp_path / "report.html"
    with Store(db, readonly=True) as store:
        write_run_report(store, run_id, html)
    async with chromium_page(tmp_path / "profile") as page:
        await page.open(html.as_uri())
        charts = await page.evaluate(CHARTS_JS)
        errors = page.console_errors()
        sections = await page.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)")
        badge = await page.evaluate("document.querySelector('#comparison .lead .badge.ok').textContent")
    assert errors == []
    assert sections[:2] == ["summary", "comparison"]
    assert badge == "llamacpp"
    compare = [c for c in charts if c["id"].startswith("chart-compare-0-")]
    assert [c["id"] for c in compare] == ["chart-compare-0-throughput", "chart-compare-0-ttft", "chart-compare-0-tpot"]
    for chart in compare:
        assert chart["width"] > 100 and chart["height"] > 100, chart
        drawn = {s["name"]: s for s in chart["series"] if s["points"]}
        assert set(drawn) == {"ollama", "llamacpp"}, chart  # vLLM never started: no line
        assert all(s["points"] == 2 and s["rendered"] > 0 for s in drawn.values()), chart
