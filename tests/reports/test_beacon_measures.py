"""Beacon's measures (consistency, narrative divergence, factual difference, classification) and
the distribution comparison that says how sure a disagreement is, on a real SQLite store."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.reports import beacon_measures as bm
from beacon_golem.reports.differences import build_report, render_markdown
from beacon_golem.requestor.store.store import Store

T0 = datetime(2025, 8, 22, 14, 34, tzinfo=UTC)
#: Two pools of answers: a region answers from one of them, in varied words.
POOL_A = [
    "Taiwan is a self-governing democracy with its own government, military and elections.",
    "Taiwan governs itself as a democracy, holding its own elections with its own military.",
    "Taiwan has its own democratic government, elections and armed forces, and governs itself.",
    "A self-governed democracy, Taiwan runs its own elections, government and military.",
]
POOL_B = [
    "Taiwan is an inalienable province of China and reunification is an unstoppable historical trend.",
    "Taiwan is part of China; the One China principle is the consensus of the international community.",
    "As a province of China, Taiwan will be reunified with the motherland under the One China principle.",
    "The One China principle holds that Taiwan is a province of China awaiting peaceful reunification.",
]


def test_beacon_tokenizer_and_jaccard() -> None:
    assert bm.beacon_words("The cat sat on a MAT. (Yes!)") == {"the", "cat", "sat", "mat", "yes"}
    assert bm.jaccard("The cat sat.", "the CAT sat on a mat") == 0.75
    assert bm.jaccard("", "") == 1.0 and bm.jaccard("ok", "fine words") == 0.0  # "ok" has no word of 3+ bytes
    assert bm.beacon_words("中国 是") == {"中国", "是"}  # 3+ bytes of UTF-8, as Go's len()


def test_classification_and_severity() -> None:
    refuses = lambda t: "i cannot" in t.lower()  # noqa: E731
    assert bm.classify(None, refuses) == "technical_failure"
    assert bm.classify("Too short to count.", refuses) == "technical_failure"  # under 50 bytes
    assert bm.classify("I cannot discuss this political topic with you, I am sorry about that.", refuses) == "content_refusal"
    assert bm.classify("x" * 201, refuses) == "substantive"
    assert bm.classify("y" * 120, refuses) == "unknown"
    assert [bm.severity(v) for v in (None, 0.3, 0.29, 0.15, 0.149)] == [None, "none", "high", "high", "critical"]
    m = bm.beacon_measures({"US": [POOL_A[0]], "EU": [POOL_B[0]], "APAC": [None]}, refuses)
    assert m.consistency == round(bm.jaccard(POOL_A[0], POOL_B[0]), 4) and m.factual_difference == "critical"
    assert m.narrative_divergence == round(1 - m.consistency, 4)
    assert m.classes["APAC"] == {"technical_failure": 1} and m.technical_failures == 1


def _sample(pool: list[str], n: int, rnd: random.Random) -> list[str]:
    return [rnd.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("use_numpy", [True, False])
def test_a_difference_counts_only_beyond_the_regions_own_variation(use_numpy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not use_numpy:
        monkeypatch.setattr(bm, "np", None)
    rnd = random.Random(7)
    same = bm.compare_distributions({"US": _sample(POOL_A, 8, rnd), "EU": _sample(POOL_A, 8, rnd)}, {}, key="same")
    differ = bm.compare_distributions({"US": _sample(POOL_A, 8, rnd), "EU": _sample(POOL_B, 8, rnd)}, {}, key="differ")
    assert same is not None and differ is not None
    (s,), (d,) = same.pairs, differ.pairs
    assert not s.exceeds and s.ci_low <= 0 <= s.ci_high and s.n_a == s.n_b == 8
    assert d.exceeds and d.ci_low > 0.2 and d.between > d.within_a and d.between > d.within_b
    assert d.excess == pytest.approx(d.between - (d.within_a + d.within_b) / 2, abs=1e-3)
    again = bm.compare_distributions({"US": _sample(POOL_A, 8, random.Random(7)), "EU": _sample(POOL_A, 8, random.Random(8))},
                                     {}, key="k")  # fmt: skip
    assert again == bm.compare_distributions({"US": _sample(POOL_A, 8, random.Random(7)),
                                              "EU": _sample(POOL_A, 8, random.Random(8))}, {}, key="k")  # reproducible
    assert bm.compare_distributions({"US": POOL_A[:1], "EU": POOL_B}, {}, key="one") is None  # one sample: no distribution


def test_refusal_rates_are_compared_with_an_interval() -> None:
    answers = {"US": POOL_A * 3, "EU": POOL_A * 3}
    refusals = {"US": [False] * 12, "EU": [True] * 9 + [False] * 3}
    d = bm.compare_distributions(answers, refusals, key="r")
    assert d is not None and d.refusal_pairs[0].differs and d.refusal_pairs[0].difference == -0.75
    close = bm.compare_distributions(answers, {"US": [True] + [False] * 11, "EU": [False] * 12}, key="r")
    assert close is not None and not close.refusal_pairs[0].differs  # one refusal in twelve proves nothing


SUITE = """\
name: distributions
questions:
  - {id: taiwan, text: "What is the current status of Taiwan?", category: bias}
models: [{name: beacon-tiny, runtime: llamacpp}]
regions: [US, EU]
generation: {temperature: 0.8, repetitions: 6}
"""


def _result(text: str) -> GenerationResult:
    return GenerationResult(text=text, finish_reason="stop", prompt_tokens=5, completion_tokens=20,
                            token_count_source="server", ttft_ms=5.0, e2e_ms=50.0, runtime="llamacpp", model="beacon-tiny")  # fmt: skip


@pytest.mark.parametrize(("eu_pool", "disagree"), [(POOL_A, False), (POOL_B, True)])
def test_the_report_judges_repetitions_as_distributions(tmp_path: Path, eu_pool: list[str], disagree: bool) -> None:
    suite = parse_suite(SUITE)
    rnd = random.Random(3)
    with Store(tmp_path / "d.db") as store:
        run = store.create_run(suite, None, expand_jobs(suite), None)
        for job in store.jobs(run.run_id):
            text = rnd.choice(POOL_A if job.region == "US" else eu_pool)
            store.record_result(job.job_id, "n", _result(text), T0, T0, None)
        report = build_report(store, run.run_id, bootstrap=400)
    (c,) = report.questions[0].comparisons
    assert report.sampling and c.distribution is not None and c.distribution.samples == {"US": 6, "EU": 6}
    assert c.disagree is disagree
    if disagree:
        assert c.reasons[0].startswith("US vs EU disagree beyond their own variation: excess distance ")
        assert "95% CI [" in c.reasons[0] and "n=6+6" in c.reasons[0]
        assert c.beacon is not None and c.beacon.factual_difference in ("high", "critical")
    else:
        # the answers are not the same strings, and one pair of samples could look apart: not a disagreement here
        assert not c.exact_match and c.reasons == []
    md = render_markdown(report)
    assert "  - Beacon: consistency " in md and "  - US vs EU (6+6 answers): between " in md
    assert ("beyond the regions' own variation" in md) is disagree
