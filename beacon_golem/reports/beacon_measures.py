"""Comparing regions as Project Beacon does, and saying how sure we are.

Beacon's measures (runner-app/internal/execution/analysis_metrics.go, analysis_differences.go,
internal/analysis/response_classifier.go), per question and model across regions:

* **consistency**: the mean pairwise Jaccard similarity of the answers' word sets, a word being
  what is left after lower-casing, turning `. , ! ? ; : ( ) [ ] { } " '` into spaces and
  splitting on whitespace, keeping words of 3 bytes or more (two empty answers: 1; one empty: 0);
* **narrative divergence**: 1 - consistency;
* **factual difference**: consistency below 0.3 is a difference, `high`; below 0.15, `critical`;
* **classification** of each answer: `technical_failure` (no answer, or under 50 bytes),
  `content_refusal` (a refusal phrase: here this project's REFUSAL_KEYWORDS), `substantive`
  (over 200 bytes), `unknown` otherwise.

Beacon compares one sample per region. With several repetitions per region (sampling on), each
region's answers form a distribution, and a disagreement between two regions is reported only
when it exceeds the disagreement within them: with d = 1 - Jaccard, the **excess** of a pair of
regions A, B is mean d(A x B) - (mean d within A + mean d within B) / 2 (pairs of distinct
answers). Its 95% confidence interval comes from a bootstrap (answers resampled with replacement
within each region, `BOOTSTRAP` times, a fixed seed per comparison so a report is reproducible;
the within-region means of a resample are scaled by n/(n-1), so a resampled answer met twice does
not pass for agreement). The regions disagree when the interval's lower end is above 0. The same
is done for refusal rates (difference of the shares of refusals, its interval excluding 0).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Literal

from pydantic import BaseModel, Field

try:  # optional: a faster bootstrap (numpy ships with the tiny-model extras)
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None  # type: ignore[assignment]

#: Beacon's thresholds on consistency (analysis_differences.go `detectFactualAccuracyDifferences`).
FACTUAL_DIFFERENCE_BELOW = 0.3
CRITICAL_BELOW = 0.15
#: Beacon's classifier's lengths, in bytes of UTF-8 (`len(response)` in Go).
TECHNICAL_FAILURE_UNDER = 50
SUBSTANTIVE_OVER = 200
BOOTSTRAP = 1000
CONFIDENCE = 0.95

AnswerClass = Literal["substantive", "content_refusal", "technical_failure", "unknown"]
Severity = Literal["none", "high", "critical"]

_PUNCT = str.maketrans({c: " " for c in ".,!?;:()[]{}\"'"})


def beacon_words(text: str) -> set[str]:
    """Beacon's `tokenize`: lower-cased, its punctuation made spaces, words of 3+ bytes, as a set."""
    return {w for w in text.lower().translate(_PUNCT).split() if len(w.encode("utf-8")) >= 3}


def jaccard(a: str, b: str) -> float:
    """Beacon's `calculateTextSimilarity` / `CalculateJaccardSimilarity`."""
    wa, wb = beacon_words(a), beacon_words(b)
    if not wa and not wb:
        return 1.0
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / len(wa | wb)


def classify(text: str | None, is_refusal: Callable[[str], bool]) -> AnswerClass:
    """Beacon's `ClassifyResponse`: no answer or under 50 bytes is a technical failure."""
    if text is None or len(text.encode("utf-8")) < TECHNICAL_FAILURE_UNDER:
        return "technical_failure"
    if is_refusal(text):
        return "content_refusal"
    if len(text.encode("utf-8")) > SUBSTANTIVE_OVER:
        return "substantive"
    return "unknown"


def severity(consistency: float | None) -> Severity | None:
    if consistency is None:
        return None
    if consistency < CRITICAL_BELOW:
        return "critical"
    if consistency < FACTUAL_DIFFERENCE_BELOW:
        return "high"
    return "none"


class BeaconMeasures(BaseModel):
    """Beacon's per-question measures for one model, over the answers of different regions."""

    #: Mean pairwise Jaccard over answers of different regions (None with fewer than two regions answering).
    consistency: float | None = None
    narrative_divergence: float | None = None
    #: Beacon's factual-difference severity: none (>= 0.3), high (< 0.3), critical (< 0.15).
    factual_difference: Severity | None = None
    #: region -> class -> how many answers (missing answers are technical failures).
    classes: dict[str, dict[str, int]] = Field(default_factory=dict)
    technical_failures: int = 0
    content_refusals: int = 0


def beacon_measures(by_region: dict[str, list[str | None]], is_refusal: Callable[[str], bool]) -> BeaconMeasures:
    """`by_region`: every region's answers (None for a job without one)."""
    classes: dict[str, dict[str, int]] = {}
    for region, answers in by_region.items():
        counts: dict[str, int] = {}
        for text in answers:
            cls = classify(text, is_refusal)
            counts[cls] = counts.get(cls, 0) + 1
        classes[region] = counts
    answered = {r: [t for t in ts if t is not None] for r, ts in by_region.items()}
    scores = [
        jaccard(a, b)
        for ra, rb in combinations([r for r in answered if answered[r]], 2)
        for a in answered[ra]
        for b in answered[rb]
    ]
    consistency = sum(scores) / len(scores) if scores else None
    return BeaconMeasures(
        consistency=round(consistency, 4) if consistency is not None else None,
        narrative_divergence=round(1.0 - consistency, 4) if consistency is not None else None,
        factual_difference=severity(consistency),
        classes=classes,
        technical_failures=sum(c.get("technical_failure", 0) for c in classes.values()),
        content_refusals=sum(c.get("content_refusal", 0) for c in classes.values()),
    )


# ---------------------------------------------------------------------------------------
# Distributions: between-region disagreement against within-region disagreement


class RegionPairTest(BaseModel):
    region_a: str
    region_b: str
    n_a: int
    n_b: int
    #: Mean distance (1 - Jaccard) between two answers of the same region.
    within_a: float
    within_b: float
    #: Mean distance between an answer of A and one of B.
    between: float
    #: between - (within_a + within_b) / 2, and its bootstrap confidence interval.
    excess: float
    ci_low: float
    ci_high: float
    #: The interval lies above 0: the regions disagree more than each disagrees with itself.
    exceeds: bool


class RefusalPairTest(BaseModel):
    region_a: str
    region_b: str
    n_a: int
    n_b: int
    rate_a: float
    rate_b: float
    difference: float
    ci_low: float
    ci_high: float
    #: The interval excludes 0.
    differs: bool


class DistributionComparison(BaseModel):
    """Regions compared as distributions of answers (at least two answers in each region)."""

    samples: dict[str, int]
    bootstrap: int
    confidence: float = CONFIDENCE
    distance: str = "1 - Beacon's Jaccard over word sets"
    pairs: list[RegionPairTest]
    refusal_pairs: list[RefusalPairTest]


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def _quantiles(values: Sequence[float], confidence: float) -> tuple[float, float]:
    ordered = sorted(values)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def at(q: float) -> float:
        pos = (len(ordered) - 1) * q
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return at(lo_q), at(hi_q)


def _within(d: list[list[float]]) -> float:
    n = len(d)
    total = sum(d[i][j] for i in range(n) for j in range(i + 1, n))
    return total / (n * (n - 1) / 2)


def _excess_samples(da: list[list[float]], db: list[list[float]], dab: list[list[float]], reps: int, seed: int) -> list[float]:
    """Bootstrap replicates of the excess; within-region means scaled by n/(n-1) (see the module doc)."""
    na, nb = len(da), len(db)
    if np is not None:
        rng = np.random.default_rng(seed)
        ca = np.stack([np.bincount(rng.integers(0, na, na), minlength=na) for _ in range(reps)]).astype(float)
        cb = np.stack([np.bincount(rng.integers(0, nb, nb), minlength=nb) for _ in range(reps)]).astype(float)
        a, b, ab = np.array(da), np.array(db), np.array(dab)
        within_a = np.einsum("rk,kl,rl->r", ca, a, ca) / (na - 1) ** 2
        within_b = np.einsum("rk,kl,rl->r", cb, b, cb) / (nb - 1) ** 2
        between = np.einsum("rk,kl,rl->r", ca, ab, cb) / (na * nb)
        return [float(x) for x in between - (within_a + within_b) / 2]
    rnd = random.Random(seed)
    out: list[float] = []
    for _ in range(reps):
        ia = [rnd.randrange(na) for _ in range(na)]
        ib = [rnd.randrange(nb) for _ in range(nb)]
        within_a = sum(da[i][j] for i in ia for j in ia) / (na - 1) ** 2
        within_b = sum(db[i][j] for i in ib for j in ib) / (nb - 1) ** 2
        between = sum(dab[i][j] for i in ia for j in ib) / (na * nb)
        out.append(between - (within_a + within_b) / 2)
    return out


def compare_distributions(
    by_region: dict[str, list[str]],
    refusals: dict[str, list[bool]],
    *,
    key: str,
    bootstrap: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> DistributionComparison | None:
    """Every pair of regions with two or more answers each; None when fewer than two such regions."""
    regions = [r for r, answers in by_region.items() if len(answers) >= 2]
    if len(regions) < 2:
        return None
    pairs: list[RegionPairTest] = []
    refusal_pairs: list[RefusalPairTest] = []
    dist = {r: [[1.0 - jaccard(a, b) for b in by_region[r]] for a in by_region[r]] for r in regions}
    for i in dist:  # an answer is at distance 0 from itself
        for k in range(len(dist[i])):
            dist[i][k][k] = 0.0
    for ra, rb in combinations(regions, 2):
        da, db = dist[ra], dist[rb]
        dab = [[1.0 - jaccard(a, b) for b in by_region[rb]] for a in by_region[ra]]
        within_a, within_b = _within(da), _within(db)
        between = sum(map(sum, dab)) / (len(da) * len(db))
        excess = between - (within_a + within_b) / 2
        samples = _excess_samples(da, db, dab, bootstrap, _seed(key, ra, rb))
        lo, hi = _quantiles(samples, confidence)
        pairs.append(RegionPairTest(
            region_a=ra, region_b=rb, n_a=len(da), n_b=len(db), within_a=round(within_a, 4),
            within_b=round(within_b, 4), between=round(between, 4), excess=round(excess, 4),
            ci_low=round(lo, 4), ci_high=round(hi, 4), exceeds=lo > 0,
        ))  # fmt: skip
        fa, fb = refusals.get(ra, []), refusals.get(rb, [])
        if len(fa) >= 2 and len(fb) >= 2 and (any(fa) or any(fb)):
            rnd = random.Random(_seed(key, ra, rb, "refusals"))
            diffs = []
            for _ in range(bootstrap):
                sa = sum(fa[rnd.randrange(len(fa))] for _ in fa) / len(fa)
                sb = sum(fb[rnd.randrange(len(fb))] for _ in fb) / len(fb)
                diffs.append(sa - sb)
            lo, hi = _quantiles(diffs, confidence)
            rate_a, rate_b = sum(fa) / len(fa), sum(fb) / len(fb)
            refusal_pairs.append(RefusalPairTest(
                region_a=ra, region_b=rb, n_a=len(fa), n_b=len(fb), rate_a=round(rate_a, 4), rate_b=round(rate_b, 4),
                difference=round(rate_a - rate_b, 4), ci_low=round(lo, 4), ci_high=round(hi, 4),
                differs=lo > 0 or hi < 0,
            ))  # fmt: skip
    return DistributionComparison(
        samples={r: len(by_region[r]) for r in regions},
        bootstrap=bootstrap,
        confidence=confidence,
        pairs=pairs,
        refusal_pairs=refusal_pairs,
    )
