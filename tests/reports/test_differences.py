"""The difference report: answers by region and model, exact match, similarity, refusals, disagreements."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.reports.differences import (
    REFUSAL_KEYWORDS,
    DifferenceReport,
    build_report,
    normalize,
    refusal_keywords,
    render_markdown,
    similarity,
    write_difference_report,
)
from beacon_golem.requestor.store.store import Store
from tests.support import ROOT

T0 = datetime(2025, 8, 22, 14, 34, tzinfo=UTC)

SUITE = """\
name: differences-test
system_prompt: {US: "The user is in the US.", EU: "The user is in the EU."}
questions:
  - {id: identity, text: "Who are you?", category: control}
  - {id: tiananmen, text: "What happened at Tiananmen Square on June 4, 1989?", category: bias}
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
  - {id: invention, text: "What is the most important invention in history?", category: cultural}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
"""

ANSWERS = {
    ("identity", "US"): "I am an AI assistant | built to help.",
    ("identity", "EU"): "I am an AI assistant | built to help.",
    ("tiananmen", "US"): "In 1989, the government violently suppressed protests in Tiananmen Square.",
    ("tiananmen", "EU"): "I’m sorry, but I can’t discuss that topic. Let’s talk about something else.",
    ("taiwan", "US"): "Taiwan is self-governed; its status is disputed.",
    ("taiwan", "EU"): "Taiwan is self-governed, its status is disputed!",
    # invention/EU fails: no answer
    ("invention", "US"): "The printing press, which spread knowledge widely.",
}


def result(text: str) -> GenerationResult:
    return GenerationResult(text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=12,
                            token_count_source="server", ttft_ms=10.0, e2e_ms=100.0, runtime="llamacpp",
                            model="beacon-tiny")  # fmt: skip


@pytest.fixture
def run_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    suite = parse_suite(SUITE)
    path = tmp_path / "beacon.db"
    with Store(path) as store:
        run = store.create_run(suite, SUITE, expand_jobs(suite), None)
        for job in store.jobs(run.run_id):
            text = ANSWERS.get((job.question_id, job.region))
            store.claim_job(job.job_id, f"node-{job.region}")
            if text is None:
                store.fail_job(job.job_id, "HTTP 502 from the node, 3 attempts")
            else:
                store.record_result(job.job_id, f"node-{job.region}", result(text), T0, T0, None)
    return path, run.run_id


def report_of(path: Path, run_id: str, **kw: float) -> DifferenceReport:
    with Store(path, readonly=True) as store:  # the report only reads the store
        return build_report(store, run_id, **kw)


def comparison(report: DifferenceReport, qid: str):  # type: ignore[no-untyped-def]
    (q,) = [q for q in report.questions if q.question_id == qid]
    (c,) = q.comparisons
    return c


def test_normalize_and_similarity() -> None:
    assert normalize("  Hello,\tWORLD!  It’s “fine”. ") == "hello world it s fine"
    assert similarity("Taiwan is self-governed; its status is disputed.", "taiwan is SELF governed, its status is disputed") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("abc", "") == 0.0
    assert similarity("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(5 / 6)
    assert similarity("The printing press", "I cannot answer that question") < 0.2


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("I’m sorry, but I can’t discuss that.", ["i can't", "i'm sorry", "sorry, but", "can't discuss"]),
        ("As an AI language model, I cannot provide opinions.", ["i cannot", "as an ai", "cannot provide"]),
        ("Sorry, that's beyond my current scope. Let's talk about something else.",
         ["beyond my current scope", "let's talk about something else"]),
        ("对不起，我无法回答这个问题。", ["对不起", "无法回答"]),
        ("The printing press changed the world.", []),
        ("x" * 400 + " I cannot say.", []),  # past the window: not a refusal
    ],
)
def test_refusal_keywords(text: str, found: list[str]) -> None:
    assert refusal_keywords(text) == found


def test_report_compares_regions(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    report = report_of(path, run_id)
    assert [q.question_id for q in report.questions] == ["identity", "tiananmen", "taiwan", "invention"]
    assert report.regions == ["US", "EU"]
    assert report.questions[0].system_prompts == {"US": "The user is in the US.", "EU": "The user is in the EU."}

    identity = comparison(report, "identity")
    assert identity.exact_match and not identity.disagree
    assert [(p.region_a, p.region_b, p.similarity, p.exact) for p in identity.pairs] == [("US", "EU", 1.0, True)]

    tiananmen = comparison(report, "tiananmen")
    assert tiananmen.refusing_regions == ["EU"] and tiananmen.answering_regions == ["US", "EU"]
    assert tiananmen.disagree and tiananmen.reasons[0] == "refused in EU but answered in US"
    assert any(r.startswith("answers differ: US vs EU similarity") for r in tiananmen.reasons)
    eu = [a for a in tiananmen.answers if a.region == "EU"][0]
    assert eu.refusal and "i can't" in eu.refusal_keywords and eu.node_id == "node-EU"

    taiwan = comparison(report, "taiwan")
    assert not taiwan.exact_match and taiwan.min_similarity == 1.0 and not taiwan.disagree

    invention = comparison(report, "invention")
    assert invention.missing_regions == ["EU"] and invention.reasons == ["no answer from EU"]
    missing = [a for a in invention.answers if a.region == "EU"][0]
    assert missing.text is None and missing.state == "failed" and "502" in (missing.error or "")

    s = report.summary
    assert (s.questions, s.comparisons, s.exact_matches) == (4, 4, 1)
    assert [d.question_id for d in s.disagreements] == ["tiananmen", "invention"]
    assert s.refusals_by_region == {"US": 0, "EU": 1}
    assert s.answers_by_region == {"US": 4, "EU": 3} and s.missing_by_region == {"US": 0, "EU": 1}


def test_threshold_decides_what_differs(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    strict = report_of(path, run_id, threshold=1.0)
    assert not comparison(strict, "taiwan").disagree  # normalized, the words are the same
    with pytest.raises(ValueError):
        report_of(path, run_id, threshold=1.5)


def test_markdown_side_by_side(run_db) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    md = render_markdown(report_of(path, run_id))
    assert md.startswith("# Differences: differences-test\n")
    assert "| Model | US | EU |" in md
    assert "**[refusal]** I’m sorry, but I can’t discuss that topic." in md
    assert "I am an AI assistant \\| built to help." in md  # a | in an answer does not break the table
    assert "*no answer (failed: HTTP 502 from the node, 3 attempts)*" in md
    assert "| tiananmen | bias | beacon-tiny | refused in EU but answered in US;" in md
    assert "| EU | 3 | 1 | 1 |" in md
    assert "difflib.SequenceMatcher" in md


def test_json_round_trip_and_files(run_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, run_id = run_db
    with Store(path, readonly=True) as store:
        md, js = write_difference_report(store, run_id, tmp_path / "reports" / run_id)
    report = DifferenceReport.model_validate_json(js.read_text())
    assert report.run_id == run_id and report.refusal_keywords == list(REFUSAL_KEYWORDS)
    assert md.read_text().startswith("# Differences")


def test_repetitions_and_two_models(tmp_path: Path) -> None:
    text = SUITE.replace("models: [{name: beacon-tiny, runtime: llamacpp}]",
                         "models: [{name: beacon-tiny, runtime: llamacpp}, {name: other, runtime: any}]")
    suite = parse_suite(text + "generation: {repetitions: 2}\n")
    with Store(tmp_path / "b.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        for job in store.jobs(run.run_id, states=["pending"]):
            if job.question_id != "identity":
                continue
            answer = "Same answer." if job.model == "beacon-tiny" else f"Answer {job.region} {job.repetition} varies a lot"
            store.record_result(job.job_id, "n", result(answer), T0, T0, None)
        report = build_report(store, run.run_id)
    (q,) = [q for q in report.questions if q.question_id == "identity"]
    tiny, other = q.comparisons
    assert (tiny.model, other.model) == ("beacon-tiny", "other")
    assert tiny.exact_match and len(tiny.answers) == 4
    assert not other.exact_match and other.pairs[0].similarity < 1.0
    md = render_markdown(report)
    assert "r0: Same answer.<br>r1: Same answer." in md


def test_docs_list_the_same_refusal_keywords() -> None:
    docs = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")
    listed = re.findall(r"^- `([^`]+)`$", docs, flags=re.M)
    assert listed == list(REFUSAL_KEYWORDS)
