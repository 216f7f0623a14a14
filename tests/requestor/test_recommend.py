"""The recommendation, on stored figures where the answer is known; the comparison read back from the store.

`core.compare.recommend` is pure: trials with known sweeps, prices and probe verdicts in, a verdict
per runtime out. Then the same figures go through a real SQLite store (plan, trials, bench rows,
the machine's probe) and come back through `comparison_from_store` and `beacon compare show --json`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from beacon_golem.cli import main
from beacon_golem.core.compare import (
    ComparisonPlan,
    Price,
    RequestProbe,
    RuntimeTrial,
    RuntimeVariant,
    StepFigure,
    TrialFigures,
    like_for_like,
    machine_gpu,
    recommend,
    winners_by_load,
)
from beacon_golem.core.errors import UsageError
from beacon_golem.core.metrics import SLO
from beacon_golem.core.node import Node, StartupTimes, WeightsInfo
from beacon_golem.core.probe import CheckResult, MachineFacts, ProbeReport, RuntimeVerdict
from beacon_golem.core.profiles import SweepProfile
from beacon_golem.core.suite import PerfSection
from beacon_golem.reports.comparison import JSON_FIELDS, comparison_json
from beacon_golem.requestor.store.comparison import comparison_from_store
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.perf_phase import perf_suite

PRICE = Price(glm_per_hour=1.8, source="agreement")
SLO_500 = SLO(ttft_ms=500)


def step(c: int, tput: float, ttft: float = 100.0, share: float | None = 1.0, **kw: Any) -> StepFigure:
    return StepFigure(concurrency=c, label=f"concurrency {c}", completed=10, output_throughput=tput, ttft_p50_ms=ttft,
                      tpot_p50_ms=10.0, goodput_share=share, **kw)  # fmt: skip


def trial(variant: str, *steps: StepFigure, runtime: str | None = None, **kw: Any) -> TrialFigures:
    return TrialFigures(machine="m1", variant=variant, runtime=runtime or variant.split(":")[0], status=kw.pop("status", "done"),
                        steps=list(steps), price=kw.pop("price", PRICE), **kw)  # fmt: skip


def by_variant(verdicts: list[Any]) -> dict[str, Any]:
    return {v.variant: v for v in verdicts}


def test_the_cheapest_runtime_meeting_the_slos_wins_and_every_other_says_why_it_lost() -> None:
    trials = [
        # vLLM would be fastest, but it did not start: the probe had said why.
        trial("vllm", status="failed", reason="vllm exited with code 1 while starting; CUDA out of memory",
              can_run=False, probe_reasons=["VRAM 6.0 GiB: too little for the model"]),
        # Ollama meets the SLO but is slower: dearer per token at the same hourly price.
        trial("ollama", step(1, 200.0), step(4, 250.0)),
        # DMR is fast but its TTFT misses the SLO everywhere: too slow.
        trial("dmr", step(1, 900.0, ttft=800.0, share=0.2), step(4, 1500.0, ttft=2000.0, share=0.0)),
        # llama.cpp: 500 tok/s at c=4 meeting the SLO (its c=8 is faster but misses it).
        trial("llamacpp", step(1, 300.0), step(4, 500.0), step(8, 700.0, ttft=900.0, share=0.5)),
        trial("vllm:fp8", status="lost", reason="node unreachable"),
    ]
    verdicts = by_variant(recommend(trials, SLO_500, 0.9))
    assert [v for v, x in verdicts.items() if x.recommended] == ["llamacpp"]
    win = verdicts["llamacpp"]
    # 1.8 GLM/h over 500 tok/s * 3600 s = 1.0 GLM per million output tokens, at c=4 (not the faster c=8).
    assert win.score == pytest.approx(1.0)
    assert win.reason.startswith("lowest GLM per million output tokens meeting the suite's SLOs: 1 GLM/Mtok")
    assert "500.0 output tok/s at c=4" in win.reason
    # vllm:fp8's provider was lost before it ran: the winner says it won among what was measured.
    assert win.reason.endswith("; among the runtimes measured before the provider was lost (not measured: vllm:fp8)")
    assert verdicts["vllm"].reason.startswith("did not start: vllm exited with code 1")
    assert "the probe said it cannot run here: VRAM 6.0 GiB: too little" in verdicts["vllm"].reason
    assert verdicts["dmr"].reason.startswith("too slow for the suite's SLOs (TTFT <= 500 ms; a step needs 90%")
    assert "at its best step c=4 TTFT p50 2,000.0 ms" in verdicts["dmr"].reason and "0% of its requests" in verdicts["dmr"].reason
    # Ollama: 1.8 / (250 * 3600) * 1e6 = 2.0 GLM/Mtok, 2x the winner's.
    assert verdicts["ollama"].score == pytest.approx(2.0)
    assert verdicts["ollama"].reason == "dearer per token: 2 GLM/Mtok, 2.00x llamacpp's (250.0 tok/s at c=4)"
    assert verdicts["vllm:fp8"].reason.startswith("the provider was lost mid-comparison (node unreachable)")
    # Which runtime wins at which load (SLO met): DMR never; c=8 nobody meets it.
    assert winners_by_load(trials, SLO_500, 0.9) == {1: "llamacpp", 4: "llamacpp"}


def test_without_a_price_the_fastest_wins_and_without_slos_every_usable_step_counts() -> None:
    trials = [trial("a", step(1, 100.0), step(2, 180.0), price=None),
              trial("b", step(1, 120.0), step(2, 150.0, overloaded=True), price=None)]  # fmt: skip
    verdicts = by_variant(recommend(trials, None))
    assert verdicts["a"].recommended and verdicts["a"].score == 180.0
    assert "no price known" in verdicts["a"].reason and "(the suite sets no SLOs)" in verdicts["a"].reason
    # b's faster-looking c=2 was overloaded: its best is c=1.
    assert verdicts["b"].reason == "slower: 120.0 tok/s at c=1, 33% below a's 180.0"


def test_a_tie_goes_to_the_runtime_that_starts_faster_and_none_qualifying_recommends_none() -> None:
    tie = [trial("slow-start", step(1, 100.0), cold_start_s=30.0), trial("fast-start", step(1, 100.0), cold_start_s=2.0)]
    verdicts = by_variant(recommend(tie))
    assert verdicts["fast-start"].recommended and not verdicts["slow-start"].recommended
    assert verdicts["slow-start"].reason == "as fast as fast-start (100.0 tok/s at c=1) but slower to start"
    nothing = recommend([trial("x", status="failed", reason="boom"), trial("y", StepFigure(concurrency=1, label="c1",
                         completed=0, failed=5, output_throughput=0.0, ttft_p50_ms=0.0, tpot_p50_ms=0.0))])  # fmt: skip
    assert not any(v.recommended for v in nothing)
    assert nothing[1].reason == "no request of its benchmark completed"


def test_like_for_like_says_where_the_weights_differ() -> None:
    q4 = WeightsInfo(model="qwen-q4.gguf", format="gguf", quantization="Q4_K_M", context_length=4096)
    fp8 = WeightsInfo(model="Qwen/Qwen2.5", format="safetensors", quantization="fp8", context_length=4096)
    notes = like_for_like({"llamacpp": q4, "vllm": fp8, "ollama": None})
    assert "not like for like: the weight formats differ (llamacpp: gguf, vllm: safetensors)" in notes
    assert "not like for like: the quantizations differ (llamacpp: Q4_K_M, vllm: fp8)" in notes
    assert "quantization not reported by ollama: check the weights are the same" in notes
    assert like_for_like({"a": q4, "b": q4}) == []


def test_variants_parse_with_their_settings_and_refuse_what_a_runtime_has_not() -> None:
    v = RuntimeVariant.parse("llamacpp:parallel=1:ctx=4096:arg=--flash-attn")
    assert (v.label, v.runtime, v.settings.given()) == (
        "llamacpp:parallel=1:ctx=4096:arg=--flash-attn", "llamacpp",
        {"parallel": 1, "ctx_size": 4096, "extra_args": ["--flash-attn"]},
    )  # fmt: skip
    assert RuntimeVariant.parse("dmr:model=ai/smollm2").model == "ai/smollm2"
    with pytest.raises(UsageError, match="ollama has no setting quantization"):
        RuntimeVariant.parse("ollama:quantization=fp8")
    with pytest.raises(UsageError, match="'tgi' is not a runtime"):
        RuntimeVariant.parse("tgi")
    with pytest.raises(ValueError, match="llamacpp given twice"):
        ComparisonPlan(variants=[RuntimeVariant.parse("llamacpp"), RuntimeVariant.parse("llamacpp")])


# ---- through the store ---------------------------------------------------------------------------
def bench(tputs: dict[int, float], ttft: float = 50.0) -> dict[str, Any]:
    """A stored BenchResult as a node's perf job returns it (vLLM keys per step)."""
    steps = []
    for i, (c, tput) in enumerate(tputs.items()):
        steps.append({
            "date": "20260101-000000", "backend": "llamacpp", "model_id": "m", "num_prompts": 8, "request_rate": "inf",
            "max_concurrency": c, "duration": 1.0, "completed": 8, "failed": 0, "total_input_tokens": 128,
            "total_output_tokens": int(tput), "request_throughput": 8.0, "request_goodput": 8.0,
            "output_throughput": tput, "total_token_throughput": tput + 128, "max_output_tokens_per_s": tput,
            "max_concurrent_requests": c, "mean_ttft_ms": ttft, "median_ttft_ms": ttft, "std_ttft_ms": 0.0,
            "p50_ttft_ms": ttft, "p90_ttft_ms": ttft, "p95_ttft_ms": ttft, "p99_ttft_ms": ttft, "p99.9_ttft_ms": ttft,
            **{f"{s}_{m}_ms": 5.0 for m in ("tpot", "itl", "e2el") for s in ("mean", "median", "std", "p50", "p90",
                                                                               "p95", "p99", "p99.9")},
            "step": i, "step_label": f"concurrency {c}", "mode": "concurrency", "via": "runtime", "endpoint": "x",
            "warmup_requests": 0, "input_len": 16, "output_len": 8, "output_len_fixed": True,
            "input_tokens_method": "estimate", "client": {"cpu_s": 0.1, "cpu_util": 0.1, "loop_lag_p50_ms": 0.1,
                                                          "loop_lag_p99_ms": 0.2, "loop_lag_max_ms": 0.3},
            "server_check": {"source": "none", "available": False},
        })  # fmt: skip
    return {"date": "20260101-000000", "target": {"url": "u", "via": "runtime", "runtime": "llamacpp", "model": "m",
            "endpoint": "x"}, "profile": {"kind": "sweep", "concurrencies": list(tputs), "num_prompts": 8},
            "prompts": {"input_len": 16, "output_len": 8}, "slo": {"ttft_ms": 500.0}, "steps": steps}  # fmt: skip


def probe_saying(cannot: dict[str, list[str]]) -> ProbeReport:
    return ProbeReport(
        status="warn",
        checks=[CheckResult(id="gpu", title="GPU", status="warn", reason="test")],
        runtimes=[RuntimeVerdict(runtime=r, status="fail" if r in cannot else "pass", can_run=r not in cannot,
                                 accelerator=None if r in cannot else "gpu", reasons=cannot.get(r, []))
                  for r in ("ollama", "dmr", "vllm", "llamacpp")],  # fmt: skip
        facts=MachineFacts(os="Linux", arch="x86_64", kernel="6.1"),
    )


def stored_comparison(path: Path) -> str:
    """A comparison whose answer is known: llama.cpp wins at 1.0 GLM/Mtok; Ollama dearer; vLLM never started."""
    section = PerfSection(profile=SweepProfile(concurrencies=[1, 4], num_prompts=8), slo=SLO_500, parallel=False)
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(t) for t in ("ollama", "vllm", "llamacpp")], beacon_concurrency=4)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with Store(path) as store:
        run = store.create_run(perf_suite(section, ["local"]), "tests", [], {"kind": "static"})
        store.create_comparison(run.run_id, plan)
        store.upsert_node(run.run_id, Node(node_id="static-0", url="http://gpu-7:8080", fleet="static",
                                           provider_id="0xabc", provider_name="gpu-7"))  # fmt: skip
        store.set_node_probe(run.run_id, "static-0", probe_saying({"vllm": ["driver 535 is below vLLM's 570.26"]}))
        base = {"machine": "static-0", "provider_id": "0xabc", "provider_name": "gpu-7", "gpu_model": "NVIDIA L4",
                "hostname": "gpu-7", "price": PRICE}  # fmt: skip
        startup = StartupTimes(runtime="x", launched_at=t0, answering_s=0.5, ready_s=4.0, health_s=4.1)
        for variant, tputs in (("ollama", {1: 100.0, 4: 250.0}), ("llamacpp", {1: 200.0, 4: 500.0})):
            row = store.add_bench_result(run.run_id, f"static-0/{variant}", "node", variant, {"kind": "sweep"}, bench(tputs))
            first = RequestProbe(ok=True, ttft_ms=900.0, load_ms=3500.0 if variant == "ollama" else None)
            store.record_trial(run.run_id, RuntimeTrial(variant=variant, runtime=variant, status="done", bench_id=row.bench_id,
                                                        startup=startup, first_request=first, **base))  # fmt: skip
        store.record_trial(run.run_id, RuntimeTrial(variant="vllm", runtime="vllm", status="failed",
                                                    reason="cannot start vllm: python3 not found", **base))  # fmt: skip
        store.finish_run(run.run_id, "done")
        return run.run_id


def test_a_stored_comparison_reads_back_with_its_recommendation_and_the_json_has_exactly_the_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "beacon.db"
    run_id = stored_comparison(db)
    with Store(db, readonly=True) as store:
        comparison = comparison_from_store(store, run_id)
        assert comparison_from_store(store, "nope") is None
    assert comparison is not None and [m.machine for m in comparison.machines] == ["static-0"]
    m = comparison.machines[0]
    assert m.recommended == "llamacpp" and m.gpu == "NVIDIA L4" and m.provider == "gpu-7 0xabc"
    assert [t.trial.variant for t in m.trials] == ["ollama", "vllm", "llamacpp"]  # the plan's order
    # The CLI prints the same thing the store says.
    with pytest.raises(SystemExit) as done:
        main(["compare", "show", run_id[:12], "--json", "--db", str(db)])
    assert done.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data == comparison_json(comparison)
    node = data["nodes"][0]
    assert node["node"] == "static-0" and node["recommended"] == "llamacpp"
    rows = {r["runtime"]: r for r in node["runtimes"]}
    assert all(tuple(r) == JSON_FIELDS for r in node["runtimes"])
    assert rows["llamacpp"] == {
        "runtime": "llamacpp", "started": True, "cold_start_s": 5.0, "model_load_s": 3.5,
        "best_output_throughput": 500.0, "ttft_p50_ms_at_1": 50.0, "glm_per_million_tokens": 1.0,
        "recommended": True, "reason": rows["llamacpp"]["reason"],
    }  # fmt: skip
    assert rows["ollama"]["model_load_s"] == 3.5  # Ollama's own load_duration, not answering -> ready
    assert rows["ollama"]["glm_per_million_tokens"] == 2.0 and not rows["ollama"]["recommended"]
    assert rows["vllm"]["started"] is False and rows["vllm"]["best_output_throughput"] is None
    assert rows["vllm"]["reason"] == ("did not start: cannot start vllm: python3 not found (the probe said it cannot "
                                      "run here: driver 535 is below vLLM's 570.26)")  # fmt: skip
    # llama.cpp's load: answering -> ready = 4.0 - 0.5 s, since it has no load figure of its own.
    assert m.trials[2].figures.model_load_s == 3.5 and "answering -> model ready" in (m.trials[2].figures.model_load_source or "")


def test_show_refuses_a_run_that_is_not_a_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "beacon.db"
    with Store(db) as store:
        section = PerfSection(profile=SweepProfile(concurrencies=[1], num_prompts=1))
        run = store.create_run(perf_suite(section, ["US"]), "tests", [], {})
    with pytest.raises(SystemExit) as done:
        main(["compare", "show", run.run_id, "--db", str(db)])
    assert done.value.code == 2
    assert f"run {run.run_id} is not a runtime comparison" in capsys.readouterr().err


def test_trials_are_never_deleted_and_a_second_record_replaces_the_first(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "beacon.db"
    run_id = stored_comparison(db)
    with Store(db) as store:
        again = RuntimeTrial(machine="static-0", variant="vllm", runtime="vllm", status="lost", reason="gone",
                             provider_id="0xabc", gpu_model="NVIDIA L4")  # fmt: skip
        store.record_trial(run_id, again)
        assert [t.trial.status for t in store.trials(run_id)] == ["done", "done", "lost"]
        assert [t.trial.variant for t in store.earlier_trials(provider_id="0xabc")][0] == "vllm"
        assert store.earlier_trials(provider_id="0xnone", gpu_model="NVIDIA L4")  # falls back to the GPU model
        assert store.earlier_trials(provider_id="0xnone") == []
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        conn.execute("DELETE FROM runtime_trials")


def test_a_machines_gpu_is_what_the_node_reports_else_what_its_golem_offer_says() -> None:
    offer = {"gpu": {"devices": [{"model": "NVIDIA H100 PCIe", "quantity": 2}], "layout": "multi"}}
    assert machine_gpu(["NVIDIA L4"], offer) == "NVIDIA L4"  # the node's own view wins
    assert machine_gpu(["NVIDIA A30", "NVIDIA A30"], {}) == "2x NVIDIA A30"
    assert machine_gpu([], offer) == "2x NVIDIA H100 PCIe"  # a VM that sees no GPU: the offer's devices
    assert machine_gpu([], {"gpu": {"devices": [{"model": "NVIDIA A100-SXM4-80GB"}]}}) == "NVIDIA A100-SXM4-80GB"
    assert machine_gpu([], {"gpu": {"model": "NVIDIA L4"}}) == "NVIDIA L4"
    assert machine_gpu([], {}) is None and machine_gpu([], {"gpu": "?"}) is None
