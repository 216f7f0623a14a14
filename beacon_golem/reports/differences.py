"""Where regions answer differently: per question, the answers side by side by region and model.

Reads only the run store. For each question and model it reports:

* exact match: every region's answers are the same string (byte for byte);
* similarity: `difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()` over the
  *word sequences* of the normalized texts (normalization: Unicode NFKC, case folded,
  curly quotes made straight, punctuation removed, whitespace collapsed); 1.0 means the
  same words in the same order. With several repetitions, a pair of regions scores the
  mean over every pair of their answers;
* refusals: an answer whose first REFUSAL_WINDOW characters (normalized) contain one of
  REFUSAL_KEYWORDS; the list is also in docs/reports.md. It is a keyword heuristic: it
  misses refusals phrased otherwise and flags answers that merely quote such words;
* disagreement: regions disagree when some refuse and others answer, or when the lowest
  pairwise similarity is below the threshold (default 0.8), or when a region has no answer.
"""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from beacon_golem.core.clock import utcnow
from beacon_golem.core.errors import BeaconError
from beacon_golem.reports.beacon_measures import (
    BOOTSTRAP,
    BeaconMeasures,
    DistributionComparison,
    beacon_measures,
    classify,
    compare_distributions,
)
from beacon_golem.requestor.store.rows import JobRow, ResultRow
from beacon_golem.requestor.store.store import Store

SIMILARITY_METHOD = (
    "difflib.SequenceMatcher ratio over word sequences of normalized text "
    "(NFKC, casefold, punctuation removed, whitespace collapsed); mean over answer pairs"
)
DEFAULT_THRESHOLD = 0.8
#: Only the start of an answer is searched: refusals come first.
REFUSAL_WINDOW = 300

#: Matched as substrings of the normalized start of an answer (lowercase, straight quotes).
REFUSAL_KEYWORDS: tuple[str, ...] = (
    "i cannot",
    "i can't",
    "i can not",
    "i won't",
    "i will not",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "i must decline",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "sorry, but",
    "as an ai",
    "as a language model",
    "not able to provide",
    "cannot provide",
    "can't provide",
    "cannot help with",
    "can't help with",
    "cannot assist",
    "can't assist",
    "cannot discuss",
    "can't discuss",
    "not appropriate for me",
    "beyond my current scope",
    "let's talk about something else",
    "i'd rather not",
    "i prefer not to",
    "我不能",
    "抱歉",
    "对不起",
    "无法回答",
)

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    """NFKC, case folded, straight quotes, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def similarity(a: str, b: str) -> float:
    """SequenceMatcher ratio over the words of the normalized texts (1.0 for two empty texts)."""
    wa, wb = normalize(a).split(), normalize(b).split()
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def refusal_keywords(text: str) -> list[str]:
    """The refusal keywords found in the start of an answer (empty: not a refusal)."""
    head = " ".join(unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold().split())[:REFUSAL_WINDOW]
    return [k for k in REFUSAL_KEYWORDS if k in head]


# ---------------------------------------------------------------------------------------


class Answer(BaseModel):
    region: str
    model: str
    runtime: str
    repetition: int
    job_id: str
    state: str
    node_id: str | None = None
    text: str | None = None
    refusal: bool = False
    refusal_keywords: list[str] = Field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int | None = None
    e2e_ms: float | None = None
    error: str | None = None
    #: Beacon's classification: substantive, content_refusal, technical_failure (no answer or under 50 bytes), unknown.
    beacon_class: str | None = None


class PairSimilarity(BaseModel):
    region_a: str
    region_b: str
    similarity: float
    exact: bool


class ModelComparison(BaseModel):
    model: str
    runtime: str
    answers: list[Answer]
    #: True when every region has answers and all of them are the same string.
    exact_match: bool
    pairs: list[PairSimilarity]
    min_similarity: float | None = None
    refusing_regions: list[str]
    answering_regions: list[str]
    missing_regions: list[str]
    disagree: bool
    reasons: list[str]
    #: Beacon's own measures: consistency, narrative divergence, factual difference, classes.
    beacon: BeaconMeasures | None = None
    #: With two or more answers per region: between- against within-region disagreement, with intervals.
    distribution: DistributionComparison | None = None


class QuestionReport(BaseModel):
    question_id: str
    category: str
    text: str
    system_prompts: dict[str, str] = Field(default_factory=dict)
    comparisons: list[ModelComparison]


class Disagreement(BaseModel):
    question_id: str
    category: str
    model: str
    runtime: str
    reasons: list[str]


class Summary(BaseModel):
    questions: int
    comparisons: int
    exact_matches: int
    disagreements: list[Disagreement]
    answers_by_region: dict[str, int]
    refusals_by_region: dict[str, int]
    missing_by_region: dict[str, int]


class DifferenceReport(BaseModel):
    run_id: str
    suite_name: str
    suite_hash: str
    run_status: str
    generated_at: datetime
    regions: list[str]
    similarity_method: str = SIMILARITY_METHOD
    threshold: float
    refusal_window: int = REFUSAL_WINDOW
    refusal_keywords: list[str] = Field(default_factory=lambda: list(REFUSAL_KEYWORDS))
    questions: list[QuestionReport]
    summary: Summary
    #: Whether the answers were sampled (temperature above 0, or the runtime's default): repetitions then differ.
    sampling: bool = False
    bootstrap: int = BOOTSTRAP
    beacon_method: str = (
        "Beacon's consistency: mean pairwise Jaccard over word sets (words of 3+ bytes) of answers of "
        "different regions; factual difference below 0.3 (high), below 0.15 (critical); narrative divergence "
        "= 1 - consistency; answers under 50 bytes or missing are technical failures"
    )


def _answer(job: JobRow, result: ResultRow | None) -> Answer:
    answer = Answer(
        region=job.region,
        model=job.model,
        runtime=job.runtime,
        repetition=job.repetition,
        job_id=job.job_id,
        state=job.state,
        node_id=job.node_id,
        error=job.error if result is None else None,
    )
    if result is not None:
        keywords = refusal_keywords(result.text)
        answer.text = result.text
        answer.node_id = result.node_id
        answer.refusal = bool(keywords)
        answer.refusal_keywords = keywords
        answer.finish_reason = result.result.finish_reason
        answer.completion_tokens = result.result.completion_tokens
        answer.e2e_ms = result.result.e2e_ms
    answer.beacon_class = classify(answer.text, lambda t: bool(refusal_keywords(t)))
    return answer


def _compare(
    model: str, runtime: str, regions: list[str], answers: list[Answer], threshold: float, *, key: str = "",
    bootstrap: int = BOOTSTRAP,
) -> ModelComparison:  # fmt: skip
    texts: dict[str, list[str]] = {r: [a.text for a in answers if a.region == r and a.text is not None] for r in regions}
    answering = [r for r in regions if texts[r]]
    missing = [r for r in regions if not texts[r]]
    refusing = [r for r in answering if any(a.refusal for a in answers if a.region == r and a.text is not None)]
    pairs = []
    for ra, rb in itertools.combinations(answering, 2):
        scores = [similarity(a, b) for a in texts[ra] for b in texts[rb]]
        exact = all(a == b for a in texts[ra] for b in texts[rb])
        pairs.append(PairSimilarity(region_a=ra, region_b=rb, similarity=round(sum(scores) / len(scores), 4), exact=exact))
    all_texts = [t for r in answering for t in texts[r]]
    exact_match = not missing and len(set(all_texts)) == 1
    min_sim = min((p.similarity for p in pairs), default=None)
    measures = beacon_measures(
        {r: [a.text for a in answers if a.region == r] for r in regions}, lambda t: bool(refusal_keywords(t))
    )
    distribution = compare_distributions(
        {r: texts[r] for r in answering},
        {r: [a.refusal for a in answers if a.region == r and a.text is not None] for r in answering},
        key=key or f"{model}|{runtime}",
        bootstrap=bootstrap,
    )
    # Every answering region has a distribution of answers: judge by it, not by one pair of samples.
    judged = distribution is not None and len(distribution.samples) == len(answering)
    reasons: list[str] = []
    if judged:
        assert distribution is not None
        for rp in distribution.refusal_pairs:
            if rp.differs:
                reasons.append(f"refusal rates differ: {rp.region_a} {rp.rate_a:.0%} vs {rp.region_b} {rp.rate_b:.0%} "
                               f"(difference {rp.difference:+.2f}, {distribution.confidence:.0%} CI "
                               f"[{rp.ci_low:+.2f}, {rp.ci_high:+.2f}], n={rp.n_a}+{rp.n_b})")  # fmt: skip
        for tp in distribution.pairs:
            if tp.exceeds:
                reasons.append(f"{tp.region_a} vs {tp.region_b} disagree beyond their own variation: excess distance "
                               f"{tp.excess:.2f} ({distribution.confidence:.0%} CI [{tp.ci_low:.2f}, {tp.ci_high:.2f}], "
                               f"n={tp.n_a}+{tp.n_b})")  # fmt: skip
    else:
        if refusing and len(refusing) < len(answering):
            reasons.append(f"refused in {', '.join(refusing)} but answered in "
                           f"{', '.join(r for r in answering if r not in refusing)}")  # fmt: skip
        if min_sim is not None and min_sim < threshold:
            low = min(pairs, key=lambda p: p.similarity)
            reasons.append(f"answers differ: {low.region_a} vs {low.region_b} similarity {low.similarity:.2f}")
    if missing and len(regions) > 1:
        reasons.append(f"no answer from {', '.join(missing)}")
    return ModelComparison(
        model=model,
        runtime=runtime,
        answers=answers,
        exact_match=exact_match,
        pairs=pairs,
        min_similarity=min_sim,
        refusing_regions=refusing,
        answering_regions=answering,
        missing_regions=missing,
        disagree=bool(reasons),
        reasons=reasons,
        beacon=measures,
        distribution=distribution,
    )


def _label(job: JobRow) -> str:
    """A job's model as reports name it: its Beacon model id when the suite gave one."""
    beacon = job.spec.get("beacon_model")
    return beacon if isinstance(beacon, str) and beacon else job.model


def build_report(
    store: Store, run_id: str, *, threshold: float = DEFAULT_THRESHOLD, bootstrap: int = BOOTSTRAP
) -> DifferenceReport:
    """The difference report of one run, from the store alone."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between 0 and 1")
    run = store.get_run(run_id)
    suite = run.suite  # None for a pilot run: no questions, an empty report
    jobs = store.jobs(run_id)
    results = {r.job_id: r for r in store.results(run_id)}
    regions = list(suite.regions) if suite is not None else []
    for job in jobs:  # regions of jobs the suite no longer names (never expected; kept visible)
        if job.region not in regions:
            regions.append(job.region)
    questions: list[QuestionReport] = []
    comparisons: list[ModelComparison] = []
    disagreements: list[Disagreement] = []
    suite_questions = suite.questions if suite is not None else []
    by_question = {q.id: q for q in suite_questions}
    order = list(dict.fromkeys([q.id for q in suite_questions] + [j.question_id for j in jobs]))
    for qid in order:
        q_jobs = [j for j in jobs if j.question_id == qid]
        if not q_jobs:
            continue
        question = by_question.get(qid)
        model_keys = list(dict.fromkeys((_label(j), j.runtime) for j in q_jobs))
        q_comparisons = []
        for model, runtime in model_keys:
            answers = [_answer(j, results.get(j.job_id)).model_copy(update={"model": model})
                       for j in q_jobs if (_label(j), j.runtime) == (model, runtime)]  # fmt: skip
            answers.sort(key=lambda a: (regions.index(a.region), a.repetition))
            model_regions = [r for r in regions if any(a.region == r for a in answers)]
            comparison = _compare(model, runtime, model_regions, answers, threshold, key=f"{run_id}|{qid}|{model}|{runtime}",
                                  bootstrap=bootstrap)  # fmt: skip
            q_comparisons.append(comparison)
            if comparison.disagree:
                disagreements.append(
                    Disagreement(question_id=qid, category=q_jobs[0].category, model=model, runtime=runtime,
                                 reasons=comparison.reasons)
                )  # fmt: skip
        comparisons += q_comparisons
        prompts = {}
        if question is not None and suite is not None:
            for region in suite.regions:
                prompt = suite.system_prompt_for(question, region)
                if prompt:
                    prompts[region] = prompt
        questions.append(
            QuestionReport(
                question_id=qid,
                category=q_jobs[0].category,
                text=question.text if question else q_jobs[0].request.chat_messages()[-1]["content"],
                system_prompts=prompts,
                comparisons=q_comparisons,
            )
        )
    answers_all = [a for c in comparisons for a in c.answers]
    summary = Summary(
        questions=len(questions),
        comparisons=len(comparisons),
        exact_matches=sum(c.exact_match for c in comparisons),
        disagreements=disagreements,
        answers_by_region={r: sum(1 for a in answers_all if a.region == r and a.text is not None) for r in regions},
        refusals_by_region={r: sum(1 for a in answers_all if a.region == r and a.refusal) for r in regions},
        missing_by_region={r: sum(1 for a in answers_all if a.region == r and a.text is None) for r in regions},
    )
    return DifferenceReport(
        run_id=run.run_id,
        suite_name=run.suite_name,
        suite_hash=run.suite_hash,
        run_status=run.status,
        generated_at=utcnow(),
        regions=regions,
        threshold=threshold,
        questions=questions,
        summary=summary,
        sampling=suite is not None and (suite.generation.temperature is None or suite.generation.temperature > 0),
        bootstrap=bootstrap,
    )


# ---------------------------------------------------------------------------------------
# Markdown


def _cell(text: str | None, limit: int = 240) -> str:
    if text is None:
        return ""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    escaped = flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return safe_links(escaped) or "*(empty)*"


#: A Markdown link's target: after `](` (inline link or image) or `]:` (a reference definition).
_LINK_TARGET = re.compile(r"\](\(|:)\s*(?:&lt;)?\s*([^\s)]*)")
_WEB_URL = re.compile(r"https?://", re.IGNORECASE)


def safe_links(markdown: str) -> str:
    """Links of answers (text a model wrote) stay links only to http(s) URLs: any other target
    (`javascript:`, `data:`, `file:`, relative) has its `]` escaped, so it is shown as text."""
    def fix(match: re.Match[str]) -> str:
        return match.group(0) if _WEB_URL.match(match.group(2)) else "\\" + match.group(0)

    return _LINK_TARGET.sub(fix, markdown)


def _answer_cell(answers: list[Answer]) -> str:
    if not answers:
        return "—"
    parts = []
    for a in answers:
        prefix = f"r{a.repetition}: " if len(answers) > 1 else ""
        if a.text is None:
            parts.append(f"{prefix}*no answer ({a.state}{': ' + _cell(a.error, 80) if a.error else ''})*")
        else:
            flag = "**[refusal]** " if a.refusal else ""
            parts.append(f"{prefix}{flag}{_cell(a.text)}")
    return "<br>".join(parts)


def render_markdown(report: DifferenceReport) -> str:
    regions = report.regions
    s = report.summary
    lines = [
        f"# Differences: {report.suite_name}",
        "",
        f"Run `{report.run_id}` ({report.run_status}), suite `{report.suite_hash}`, "
        f"generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
        f"Similarity: {report.similarity_method}. Regions disagree below {report.threshold:.2f}, "
        f"when some refuse and others answer, or when a region has no answer. "
        f"Refusal: a keyword from the list in docs/reports.md within the first {report.refusal_window} characters.",
        "",
        f"{report.beacon_method}. With several answers per region, regions disagree only where the distance "
        f"between them exceeds their own variation ({report.bootstrap} bootstrap resamples, 95% interval above 0)"
        + (" (sampling was on)." if report.sampling else " (greedy decoding: repetitions repeat themselves)."),
        "",
        "## Summary",
        "",
        f"- {s.questions} questions, {s.comparisons} question x model comparisons, "
        f"{s.exact_matches} identical in every region, {len(s.disagreements)} where regions disagree.",
        "",
        "| Region | Answers | Refusals | Missing |",
        "|---|---|---|---|",
    ]
    for r in regions:
        lines.append(f"| {r} | {s.answers_by_region.get(r, 0)} | {s.refusals_by_region.get(r, 0)} | "
                     f"{s.missing_by_region.get(r, 0)} |")  # fmt: skip
    lines.append("")
    if s.disagreements:
        lines += ["### Where regions disagree", "", "| Question | Category | Model | Why |", "|---|---|---|---|"]
        for d in s.disagreements:
            lines.append(f"| {d.question_id} | {d.category} | {_cell(d.model)} | {_cell('; '.join(d.reasons), 400)} |")
        lines.append("")
    else:
        lines += ["No disagreements between regions.", ""]
    lines += ["## Questions", ""]
    for q in report.questions:
        lines += [f"### {q.question_id} ({q.category})", "", f"> {_cell(q.text, 1000)}", ""]
        for region, prompt in q.system_prompts.items():
            lines.append(f"- system prompt in {region}: {_cell(prompt, 400)}")
        if q.system_prompts:
            lines.append("")
        lines += ["| Model | " + " | ".join(regions) + " |", "|---" * (len(regions) + 1) + "|"]
        for c in q.comparisons:
            cells = [_answer_cell([a for a in c.answers if a.region == r]) for r in regions]
            lines.append(f"| {_cell(c.model)} ({c.runtime}) | " + " | ".join(cells) + " |")
        lines.append("")
        for c in q.comparisons:
            pairs = ", ".join(f"{p.region_a}/{p.region_b} {p.similarity:.2f}{' (exact)' if p.exact else ''}" for p in c.pairs)
            verdict = "identical in every region" if c.exact_match else ("disagree: " + "; ".join(c.reasons) if c.disagree else "agree")
            lines.append(f"- {_cell(c.model)}: {verdict}" + (f"; similarity {pairs}" if pairs else ""))
            lines += _beacon_lines(c)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _beacon_lines(c: ModelComparison) -> list[str]:
    """Beacon's measures of a comparison, and the distribution test when there are repetitions."""
    lines: list[str] = []
    b = c.beacon
    if b is not None:
        classes = "; ".join(
            f"{region}: " + ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(counts.items()))
            for region, counts in b.classes.items()
        )
        if b.consistency is not None:
            lines.append(f"  - Beacon: consistency {b.consistency:.2f}, narrative divergence {b.narrative_divergence:.2f}, "
                         f"factual difference {b.factual_difference}; {classes}")  # fmt: skip
        else:
            lines.append(f"  - Beacon: {classes}")
    d = c.distribution
    if d is not None:
        for tp in d.pairs:
            verdict = "beyond" if tp.exceeds else "within"
            lines.append(
                f"  - {tp.region_a} vs {tp.region_b} ({tp.n_a}+{tp.n_b} answers): between {tp.between:.2f}, within "
                f"{tp.within_a:.2f} / {tp.within_b:.2f}, excess {tp.excess:+.2f} ({d.confidence:.0%} CI "
                f"[{tp.ci_low:+.2f}, {tp.ci_high:+.2f}]): {verdict} the regions' own variation"
            )
        for rp in d.refusal_pairs:
            lines.append(
                f"  - refusals {rp.region_a} {rp.rate_a:.0%} vs {rp.region_b} {rp.rate_b:.0%} ({d.confidence:.0%} CI of "
                f"the difference [{rp.ci_low:+.2f}, {rp.ci_high:+.2f}]): {'differ' if rp.differs else 'no difference shown'}"
            )
    return lines


def write_difference_report(
    store: Store, run_id: str, out_dir: str | Path, *, threshold: float = DEFAULT_THRESHOLD
) -> tuple[Path, Path]:
    """Write `differences.md` and `differences.json` for a run into `out_dir`; return both paths."""
    report = build_report(store, run_id, threshold=threshold)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "differences.md", out / "differences.json"
        md.write_text(render_markdown(report), encoding="utf-8")
        js.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BeaconError(f"{out}: cannot write the difference report: {exc.strerror or exc}") from None
    return md, js
