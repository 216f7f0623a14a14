"""Aggregation math against hand-computed examples, the TPOT and goodput rules, vLLM's key names."""

from __future__ import annotations

import math
import random

import pytest

from beacon_golem.core.metrics import (
    SLO,
    RequestRecord,
    aggregate,
    peak_concurrency,
    peak_output_chunks_per_s,
    percentile,
    summarize,
    vllm_keys,
)
from beacon_golem.core.profiles import DEFAULT_SWEEP, PoissonProfile, RateProfile, SweepProfile
from beacon_golem.node.loadgen.servermetrics import cross_check, discrepancy_pct, parse_prometheus

# The keys `vllm bench serve --save-result` writes that tools read (docs/benchmarks.md).
VLLM_RESULT_KEYS = [
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "max_concurrent_requests",
    "max_output_tokens_per_s",
] + [f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "std", "p99")]  # fmt: skip


def rec(index: int, ttft: float | None, e2el: float, out: int, itl: list[float] | None = None, inp: int = 10, start: float = 0.0, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        index=index,
        start_s=start,
        end_s=start + e2el / 1000.0,
        outcome="ok" if ok else "failed",
        ttft_ms=ttft,
        e2el_ms=e2el,
        itl_ms=itl or [],
        input_tokens=inp,
        output_tokens=out if ok else 0,
    )


def example() -> list[RequestRecord]:
    return [
        # TTFT 100, then three gaps of 100 ms: E2EL 400, 4 tokens -> TPOT (400 - 100) / 3 = 100.
        rec(0, 100.0, 400.0, 4, [100.0, 100.0, 100.0], inp=10),
        # One token: no TPOT (and TPOT 0 for goodput, as vLLM).
        rec(1, 200.0, 200.0, 1, [], inp=10),
        # Failed: counted in `failed`, in nothing else.
        rec(2, None, 50.0, 0, ok=False, inp=10),
    ]


def test_aggregate_hand_computed() -> None:
    m = aggregate(example(), duration_s=2.0)
    assert (m.completed, m.failed) == (2, 1)
    assert m.total_input_tokens == 20 and m.total_output_tokens == 5
    assert m.request_throughput == pytest.approx(1.0)
    assert m.output_throughput == pytest.approx(2.5)
    assert m.total_token_throughput == pytest.approx(12.5)
    assert m.request_goodput is None  # no SLO given: vLLM writes null
    assert (m.mean_ttft_ms, m.median_ttft_ms, m.std_ttft_ms) == pytest.approx((150.0, 150.0, 50.0))
    # Only the 4-token request has a TPOT.
    assert (m.mean_tpot_ms, m.median_tpot_ms, m.std_tpot_ms) == pytest.approx((100.0, 100.0, 0.0))
    assert m.mean_itl_ms == pytest.approx(100.0) and m.p99_itl_ms == pytest.approx(100.0)
    assert (m.mean_e2el_ms, m.median_e2el_ms) == pytest.approx((300.0, 300.0))
    # Linear interpolation: p90 of [200, 400] = 200 + 0.9 * 200.
    assert m.p90_e2el_ms == pytest.approx(380.0)
    assert m.max_concurrent_requests == 2


def test_tpot_rule() -> None:
    assert rec(0, 10.0, 10.0, 1).tpot_ms is None
    assert rec(0, 10.0, 110.0, 2).tpot_ms == pytest.approx(100.0)
    assert rec(0, 10.0, 100.0, 10).tpot_ms == pytest.approx(10.0)
    assert rec(0, None, 100.0, 10).tpot_ms is None


def test_goodput_against_slos() -> None:
    records = example()
    assert aggregate(records, 2.0, SLO(ttft_ms=150)).request_goodput == pytest.approx(0.5)
    # The one-token request counts as TPOT 0, so it meets any TPOT objective; the other does not.
    assert aggregate(records, 2.0, SLO(tpot_ms=50)).request_goodput == pytest.approx(0.5)
    # Every objective must hold.
    assert aggregate(records, 2.0, SLO(ttft_ms=150, tpot_ms=50)).request_goodput == pytest.approx(0.0)
    assert aggregate(records, 2.0, SLO(e2el_ms=1000)).request_goodput == pytest.approx(1.0)
    # A boundary value meets the objective (vLLM: slo >= value).
    assert aggregate(records, 2.0, SLO(ttft_ms=100)).request_goodput == pytest.approx(0.5)
    assert SLO().given() is False
    assert aggregate(records, 2.0, SLO()).request_goodput is None


def test_percentiles_match_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.expovariate(0.1) for _ in range(n)]
        for p in (0, 0.1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)), rel=1e-12)
        s = summarize(values)
        assert s["std"] == pytest.approx(float(np.std(values)), rel=1e-9)
        assert s["median"] == pytest.approx(float(np.median(values)), rel=1e-12)
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert summarize([]) == {"mean": 0.0, "median": 0.0, "std": 0.0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "p99.9": 0.0}


def test_empty_and_all_failed() -> None:
    m = aggregate([rec(0, None, 5.0, 0, ok=False)], 1.0)
    assert (m.completed, m.failed, m.mean_ttft_ms, m.p99_tpot_ms, m.max_concurrent_requests) == (0, 1, 0.0, 0.0, 0)
    with pytest.raises(ValueError):
        aggregate([], 0.0)


def test_cancelled_requests_are_neither_completed_nor_failed() -> None:
    cancelled = RequestRecord(index=3, start_s=0.0, end_s=1.0, outcome="cancelled")
    m = aggregate([*example(), cancelled], 2.0)
    assert (m.completed, m.failed) == (2, 1)


def test_vllm_keys_present_and_spelled_like_vllm() -> None:
    keys = vllm_keys()
    for key in VLLM_RESULT_KEYS:
        assert key in keys
    for m in ("ttft", "tpot", "itl", "e2el"):
        for p in ("p50", "p90", "p95", "p99", "p99.9"):
            assert f"{p}_{m}_ms" in keys
    dumped = aggregate(example(), 1.0).model_dump(mode="json")
    assert set(VLLM_RESULT_KEYS) <= set(dumped) and "p99.9_e2el_ms" in dumped


def test_peak_concurrency_half_open() -> None:
    assert peak_concurrency([(0, 1), (0.5, 1.5), (1, 2)]) == 2
    assert peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1
    assert peak_concurrency([(0, 10)] * 5) == 5
    assert peak_concurrency([]) == 0


def test_peak_chunks_per_second() -> None:
    # Chunks at 0.1, 0.6, 1.1 (request 0) and 0.5 (request 1): bucket 0 holds three.
    records = [rec(0, 100.0, 1100.0, 3, [500.0, 500.0]), rec(1, 500.0, 500.0, 1)]
    assert peak_output_chunks_per_s(records) == 3.0


def test_poisson_schedule_is_seeded_and_normalised() -> None:
    step = PoissonProfile(rate=10.0, num_prompts=50, seed=3).steps()[0]
    a, b = step.send_offsets(50), step.send_offsets(50)
    assert a == b
    assert a[-1] == pytest.approx(5.0)  # the n-th request at n / rate, as vLLM rescales
    assert all(x < y for x, y in zip(a, a[1:], strict=False))
    other = PoissonProfile(rate=10.0, num_prompts=50, seed=4).steps()[0].send_offsets(50)
    assert other != a
    constant = RateProfile(rate=4.0, num_prompts=5).steps()[0].send_offsets(5)
    assert constant == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert RateProfile(rate=math.inf, num_prompts=3).steps()[0].send_offsets(3) == [0.0, 0.0, 0.0]


def test_sweep_profile_steps() -> None:
    steps = SweepProfile(num_prompts=4).steps()
    assert [s.concurrency for s in steps] == list(DEFAULT_SWEEP)
    # Every slot gets at least one request; seeds differ per step (no shared prompts).
    assert steps[-1].num_prompts == 256 and steps[0].num_prompts == 4
    assert len({s.seed for s in steps}) == len(steps)
    with pytest.raises(ValueError):
        SweepProfile(num_prompts=None, duration_s=None)


def test_prometheus_parse_and_cross_check() -> None:
    text = (
        "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 110\n"
        "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 30\n"
        "# TYPE llamacpp:prompt_tokens_cached_total counter\nllamacpp:prompt_tokens_cached_total 5\n"
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="a"} 2\n'
        'vllm:num_requests_waiting{model_name="b"} 3\n'
    )
    values = parse_prometheus(text)
    assert values["llamacpp:tokens_predicted_total"] == 110
    assert values["vllm:num_requests_waiting"] == 5  # summed over label sets
    before = {"llamacpp:tokens_predicted_total": 100.0, "llamacpp:prompt_tokens_total": 0.0, "llamacpp:prompt_tokens_cached_total": 0.0}
    records = example()
    for r in records:
        r.server_prompt_tokens = 17 if r.ok else None

    class Reader:
        from beacon_golem.node.loadgen.servermetrics import LLAMACPP as names

        url = "http://x/metrics"
        reason = None

    check = cross_check("llamacpp", before, values, records, 2.0, Reader())  # type: ignore[arg-type]
    assert check.available and check.server_output_tokens == 10 and check.client_output_tokens == 5
    assert check.output_tokens_discrepancy_pct == pytest.approx(-50.0)
    assert check.server_input_tokens == 35 and check.client_input_tokens == 34
    assert discrepancy_pct(0, 5) is None and discrepancy_pct(None, 1) is None
    unavailable = cross_check("ollama", None, None, records, 2.0, None)
    assert not unavailable.available
