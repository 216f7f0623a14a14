"""Per-request records in, aggregates out: the serving metrics exactly as `vllm bench serve` computes them.

Definitions (docs/benchmarks.md, from vllm/benchmarks/serve.py `calculate_metrics`):

- TTFT: from just before the request is sent to the first streamed chunk with non-empty
  content (vLLM counts any chunk with `choices`; we require content, like AIPerf and SGLang).
- ITL: the gaps between successive content chunks (per chunk, not per token).
- E2EL: to the last content chunk (the trailing usage-only chunk does not count).
- TPOT: (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one output
  token; for goodput a single-token request counts as TPOT 0, as in vLLM.
- Output tokens: the server's `usage.completion_tokens` (re-estimated only when it gives none).
- request_throughput = completed / duration; output_throughput = sum(output) / duration;
  total_token_throughput = (sum(input) + sum(output)) / duration; request_goodput = requests
  meeting every SLO given (TTFT, TPOT, E2EL in ms) / duration.
- Statistics: mean, median, population std and linear-interpolated percentiles (numpy's
  defaults, which vLLM uses); an empty list gives 0.0 for every statistic, as vLLM writes.

Pure Python on purpose: the node image need not carry numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")


# ---- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return _percentile_sorted(ordered, p)


def _percentile_sorted(ordered: Sequence[float], p: float) -> float:
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is outside 0..100")
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def std(values: Sequence[float]) -> float:
    """Population standard deviation (numpy's `np.std` default, ddof=0)."""
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def p_word(p: float) -> str:
    """vLLM's spelling of a percentile in a key: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def summarize(values: Sequence[float], percentiles: Iterable[float] = PERCENTILES) -> dict[str, float]:
    """{"mean", "median", "std", "p50", ...} of `values` (all 0.0 when empty)."""
    ordered = sorted(values)
    out = {"mean": mean(ordered), "median": _percentile_sorted(ordered, 50.0), "std": std(ordered)}
    for p in percentiles:
        out[f"p{p_word(p)}"] = _percentile_sorted(ordered, p)
    return out


# ---- records ---------------------------------------------------------------------------------
RequestOutcome = Literal["ok", "failed", "cancelled"]


@dataclass(slots=True)
class RequestRecord:
    """One measured request. Times in ms from just before it was sent; `start_s`/`end_s` are
    seconds since the step began (the clock the timeline and concurrency are read from).

    `input_tokens` is the prompt's own length (the dataset's count, as vLLM sums it);
    `server_prompt_tokens` is what the server reported (chat template included).
    """

    index: int
    start_s: float
    end_s: float
    outcome: RequestOutcome = "ok"
    ttft_ms: float | None = None
    e2el_ms: float = 0.0
    itl_ms: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    server_prompt_tokens: int | None = None
    token_count_source: str = "server"
    server_timings: dict[str, float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def tpot_ms(self) -> float | None:
        """(E2EL - TTFT) / (output - 1), only when more than one token came back."""
        if self.output_tokens > 1 and self.ttft_ms is not None:
            return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)
        return None


class SLO(BaseModel):
    """Service-level objectives for goodput, in milliseconds; a request is good when it meets all given."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(default=None, ge=0)
    tpot_ms: float | None = Field(default=None, ge=0)
    e2el_ms: float | None = Field(default=None, ge=0)

    def given(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def met_by(self, record: RequestRecord) -> bool:
        # vLLM: a request without a TTFT (nothing streamed) cannot meet a TTFT objective;
        # with output <= 1 its TPOT counts as 0.
        if self.ttft_ms is not None and (record.ttft_ms is None or record.ttft_ms > self.ttft_ms):
            return False
        if self.tpot_ms is not None and (record.tpot_ms or 0.0) > self.tpot_ms:
            return False
        return not (self.e2el_ms is not None and record.e2el_ms > self.e2el_ms)


# ---- aggregates ------------------------------------------------------------------------------
class ServingMetrics(BaseModel):
    """The aggregates of one step, under vLLM's JSON key names (see `vllm_keys`).

    Percentile keys with a dot (`p99.9_ttft_ms`) are aliases; dump with `by_alias=True`
    (the default for this model's JSON).
    """

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int

    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p50_ttft_ms: float
    p90_ttft_ms: float
    p95_ttft_ms: float
    p99_ttft_ms: float
    p99_9_ttft_ms: float = Field(alias="p99.9_ttft_ms")

    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p50_tpot_ms: float
    p90_tpot_ms: float
    p95_tpot_ms: float
    p99_tpot_ms: float
    p99_9_tpot_ms: float = Field(alias="p99.9_tpot_ms")

    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p50_itl_ms: float
    p90_itl_ms: float
    p95_itl_ms: float
    p99_itl_ms: float
    p99_9_itl_ms: float = Field(alias="p99.9_itl_ms")

    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    p50_e2el_ms: float
    p90_e2el_ms: float
    p95_e2el_ms: float
    p99_e2el_ms: float
    p99_9_e2el_ms: float = Field(alias="p99.9_e2el_ms")


def vllm_keys() -> list[str]:
    """Every aggregate key this module writes, spelled as vLLM's result JSON spells it."""
    return [f.alias or name for name, f in ServingMetrics.model_fields.items()]


def peak_concurrency(intervals: Iterable[tuple[float, float]]) -> int:
    """Most requests in flight at once over half-open [start, end) intervals (sweep line)."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    # A departure sorts before an arrival at the same instant (half-open intervals).
    events.sort()
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def peak_output_chunks_per_s(records: Sequence[RequestRecord]) -> float:
    """vLLM's `max_output_tokens_per_s`: the busiest one-second bucket of content chunks.

    Like vLLM it counts streamed chunks (first at TTFT, then one per ITL gap), so it is a
    token rate only where every chunk holds one token.
    """
    ok = [r for r in records if r.ok and r.ttft_ms is not None]
    if not ok:
        return 0.0
    origin = min(r.start_s for r in ok)
    buckets: dict[int, int] = {}
    for r in ok:
        t = r.start_s + (r.ttft_ms or 0.0) / 1000.0
        buckets[int(t - origin)] = buckets.get(int(t - origin), 0) + 1
        for gap in r.itl_ms:
            t += gap / 1000.0
            key = int(t - origin)
            buckets[key] = buckets.get(key, 0) + 1
    return float(max(buckets.values()))


def aggregate(records: Sequence[RequestRecord], duration_s: float, slo: SLO | None = None) -> ServingMetrics:
    """Aggregate one step's records (warmup already excluded) over `duration_s` seconds.

    Cancelled requests (cut off at an early stop) count as neither completed nor failed.
    """
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    ok = [r for r in records if r.ok]
    failed = sum(1 for r in records if r.outcome == "failed")
    ttfts = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    tpots = [t for t in (r.tpot_ms for r in ok) if t is not None]
    itls = [gap for r in ok for gap in r.itl_ms]
    e2els = [r.e2el_ms for r in ok]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    goodput = None
    if slo is not None and slo.given():
        goodput = sum(1 for r in ok if slo.met_by(r)) / duration_s

    values: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": failed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": goodput,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
        "max_output_tokens_per_s": peak_output_chunks_per_s(ok),
        "max_concurrent_requests": peak_concurrency((r.start_s, r.end_s) for r in ok),
    }
    for name, series in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        for stat, value in summarize(series).items():
            values[f"{stat}_{name}_ms"] = value
    return ServingMetrics.model_validate(values)


def detailed_lists(records: Sequence[RequestRecord]) -> dict[str, list[Any]]:
    """vLLM's `--save-detailed` per-request lists (times in seconds, as vLLM writes them)."""
    return {
        "input_lens": [r.input_tokens for r in records],
        "output_lens": [r.output_tokens if r.ok else 0 for r in records],
        "ttfts": [(r.ttft_ms or 0.0) / 1000.0 for r in records],
        "itls": [[g / 1000.0 for g in r.itl_ms] for r in records],
        "latencies": [r.e2el_ms / 1000.0 for r in records],
        "start_times": [r.start_s for r in records],
        "errors": [r.error or "" for r in records],
    }
