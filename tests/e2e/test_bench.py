"""`beacon bench --local`: starts its own node, runs a tiny sweep, writes vLLM-keyed JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import beacon_golem.cli.bench as bench_cli
from beacon_golem.cli import app
from beacon_golem.core.bench import BenchResult

VLLM_KEYS = (
    "date", "backend", "model_id", "num_prompts", "request_rate", "burstiness", "max_concurrency",
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "max_concurrent_requests",
    "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
    "std_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p99_e2el_ms",
)  # fmt: skip


def test_bench_local_writes_vllm_json(llama_server: str, tiny_model: Path, tmp_path: Path) -> None:
    # `llama_server` only makes the test skip where no llama-server binary exists.
    out = tmp_path / "result.json"
    args = [
        "bench", "--local", "--local-model", str(tiny_model), "--data-dir", str(tmp_path / "node"),
        "--parallel", "2", "--profile", "sweep", "--concurrency", "1,2", "--num-prompts", "4",
        "--warmup", "1", "--input-len", "16", "--output-len", "8", "--slo-ttft-ms", "60000", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best:" in result.output
    data = json.loads(out.read_text())
    assert data["target"]["via"] == "shim" and data["target"]["runtime"] == "llamacpp"
    assert data["node"]["node_id"] and data["server_settings"]["total_slots"] == 2
    assert [s["max_concurrency"] for s in data["steps"]] == [1, 2]
    for step in data["steps"]:
        for key in VLLM_KEYS:
            assert key in step, key
        assert step["completed"] == 4 and step["failed"] == 0
        assert step["total_output_tokens"] == 4 * 8
        assert step["request_goodput"] == step["request_throughput"]  # a 60 s TTFT objective: all good
        assert step["backend"] == "llamacpp" and step["request_rate"] == "inf"
        assert "p99.9_ttft_ms" in step and "ttfts" not in step  # detail lists only with --detailed

    # The file reads back into the model, and the .jsonl form is one flat vLLM result per line.
    model = BenchResult.model_validate(data)
    assert model.steps[1].max_concurrent_requests == 2
    lines_path = tmp_path / "result.jsonl"
    bench_cli.write_result(model, lines_path)
    lines = [json.loads(line) for line in lines_path.read_text().splitlines()]
    assert len(lines) == 2 and all("median_ttft_ms" in line for line in lines)


def test_bench_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["bench"]).exit_code != 0
    assert runner.invoke(app, ["bench", "--url", "http://127.0.0.1:9", "--profile", "rate"]).exit_code != 0
    assert bench_cli.parse_concurrency("1, 2,4") == [1, 2, 4]


def test_bench_fleet_out_writes_every_nodes_result(llama_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out works with --fleet too (it used to write nothing and say nothing)."""
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "fleet.json"
    args = [
        "bench", "--fleet", "local", "--nodes", "1", "--parallel", "1", "--profile", "sweep", "--concurrency", "1",
        "--num-prompts", "2", "--input-len", "8", "--output-len", "4", "--db", str(tmp_path / "b.db"), "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"results written to {out}" in result.output
    (entry,) = json.loads(out.read_text())
    assert entry["node_id"] == "local-0" and entry["where"] == "node"
    assert BenchResult.model_validate(entry["result"]).steps[0].completed == 2
