#!/usr/bin/env python
"""What the node's shim costs: the same load straight to llama-server and through the shim, side by side.

One run starts a real llama-server on the generated tiny model and a real shim in front of it
(`beacon shim`, its own process, as on a node), then alternates the two paths at each
concurrency for several rounds (direct first in even rounds, shim first in odd ones), each
measurement with fresh prompts so neither path gains from the other's prompt cache. It prints
medians over the rounds and the ratios: the goal is shim output throughput >= 0.95 of direct
and <= 1 ms added median latency.

    .venv/bin/python tools/perf/shim_overhead.py
    .venv/bin/python tools/perf/shim_overhead.py --rounds 5 --concurrency 1,32,256 --json out.json
    .venv/bin/python tools/perf/shim_overhead.py --profile-shim /tmp/shim.prof   # cProfile the shim

Not a test: it asserts nothing, and its figures depend on the machine (print them with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from loopback import wait_ok

from beacon_golem.core.net import free_port
from beacon_golem.node.loadgen import ConcurrencyProfile, OverloadPolicy, PromptSpec, run_bench
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter
from beacon_golem.node.tiny_model import write_tiny_model


def cpu_seconds(proc: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children."""
    user = system = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            user, system = user + t.user, system + t.system
        except psutil.NoSuchProcess:
            pass
    return user, system


async def measure(
    url: str, concurrency: int, args: argparse.Namespace, seed: int, procs: dict[str, psutil.Process]
) -> dict[str, Any]:
    num = max(args.min_prompts, args.prompts_per_slot * concurrency)
    profile = ConcurrencyProfile(
        concurrency=concurrency,
        num_prompts=num,
        warmup=min(concurrency, 16),
        seed=seed,
        overload=OverloadPolicy(enabled=False),
    )
    spec = PromptSpec(input_len=args.input_len, output_len=args.output_len, seed=seed)
    before = {name: cpu_seconds(p) for name, p in procs.items()}
    result = await run_bench(url, profile, spec)
    after = {name: cpu_seconds(p) for name, p in procs.items()}
    step = result.steps[0]
    return {
        "output_throughput": step.output_throughput,
        "request_throughput": step.request_throughput,
        "median_e2el_ms": step.median_e2el_ms,
        "median_ttft_ms": step.median_ttft_ms,
        "median_tpot_ms": step.median_tpot_ms,
        "p99_e2el_ms": step.p99_e2el_ms,
        "completed": step.completed,
        "failed": step.failed,
        "errors": step.error_counts,
        "duration_s": step.duration,
        "client_cpu_util": step.client.cpu_util,
        "cpu_s": {name: sum(after[name]) - sum(before[name]) for name in procs},
        "cpu_sys_s": {name: after[name][1] - before[name][1] for name in procs},
        "output_tokens": step.total_output_tokens,
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="shim-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_model(tmp / "tiny.gguf")
        llama_port, shim_port = free_port(), free_port()
        argv = LlamaCppAdapter.launch(str(model), port=llama_port, parallel=args.parallel).argv
        cpus = sorted(os.sched_getaffinity(0))
        pin = args.pin and len(cpus) >= 2
        if args.threads or pin:
            argv += ["--threads", str(args.threads or 1)]
        if pin:
            # The runtime gets the last CPU to itself; the shim and this load generator share the rest,
            # so the shim's CPU cannot slow the runtime down, only itself and the client.
            argv = ["taskset", "-c", str(cpus[-1]), *argv]
            os.sched_setaffinity(0, set(cpus[:-1]))
        llama_log = (tmp / "llama.log").open("wb")
        llama = subprocess.Popen(argv, stdout=llama_log, stderr=subprocess.STDOUT, start_new_session=True)
        direct = f"http://127.0.0.1:{llama_port}"
        shim_cli = [
            "shim", "--runtime", "llamacpp", "--upstream", direct, "--port", str(shim_port), "--data-dir", str(tmp / "shim"),
        ]  # fmt: skip
        if args.profile_shim:
            # cProfile on CPU time, not wall time: a send() that lets the woken client run counts as nothing.
            code = (
                "import cProfile, sys, time; from beacon_golem.cli import main; p = cProfile.Profile(time.process_time)\n"
                "try: p.runcall(main, sys.argv[2:])\nexcept (SystemExit, KeyboardInterrupt): pass\n"
                "finally: p.dump_stats(sys.argv[1])"
            )
            shim_argv = [sys.executable, "-c", code, args.profile_shim, *shim_cli]
        else:
            shim_argv = [sys.executable, "-m", "beacon_golem.cli", *shim_cli]
        if pin:
            shim_argv = ["taskset", "-c", ",".join(map(str, cpus[:-1])), *shim_argv]
        shim_log = (tmp / "shim.log").open("wb")
        shim = subprocess.Popen(shim_argv, stdout=shim_log, stderr=subprocess.STDOUT, start_new_session=True)
        via_shim = f"http://127.0.0.1:{shim_port}"
        try:
            wait_ok(direct + "/health")
            wait_ok(via_shim + "/health")
            procs = {"llama_server": psutil.Process(llama.pid), "shim": psutil.Process(shim.pid)}
            rows: dict[int, dict[str, list[dict[str, Any]]]] = {c: {"direct": [], "shim": []} for c in concurrencies}
            for r in range(args.rounds):
                for c in concurrencies:
                    order = ["direct", "shim"] if r % 2 == 0 else ["shim", "direct"]
                    for path in order:
                        seed = 1000 * r + 10 * c + (0 if path == "direct" else 1)
                        m = await measure(direct if path == "direct" else via_shim, c, args, seed, procs)
                        rows[c][path].append(m)
                        print(
                            f"round {r} c={c:<4} {path:<6} {m['output_throughput']:9.1f} tok/s  "
                            f"p50 E2EL {m['median_e2el_ms']:8.2f} ms  p50 TTFT {m['median_ttft_ms']:8.2f} ms  "
                            f"failed {m['failed']}  shim CPU {m['cpu_s']['shim']:.2f} s",
                            flush=True,
                        )
        finally:
            shim.send_signal(signal.SIGINT)  # web.run_app exits cleanly (and cProfile writes its file)
            try:
                shim.wait(15)
            except subprocess.TimeoutExpired:
                shim.kill()
            os.killpg(llama.pid, signal.SIGTERM)
            llama.wait(10)
            llama_log.close()
            shim_log.close()

    summary: dict[str, Any] = {}
    for c in concurrencies:
        d, s = rows[c]["direct"], rows[c]["shim"]
        ratios = [b["output_throughput"] / a["output_throughput"] for a, b in zip(d, s, strict=True)]
        added_e2el = [b["median_e2el_ms"] - a["median_e2el_ms"] for a, b in zip(d, s, strict=True)]
        added_ttft = [b["median_ttft_ms"] - a["median_ttft_ms"] for a, b in zip(d, s, strict=True)]
        shim_us_per_token = [1e6 * m["cpu_s"]["shim"] / m["output_tokens"] for m in s if m["output_tokens"]]
        shim_sys_share = [m["cpu_sys_s"]["shim"] / m["cpu_s"]["shim"] for m in s if m["cpu_s"]["shim"] > 0]
        summary[str(c)] = {
            "direct_output_throughput": med([m["output_throughput"] for m in d]),
            "shim_output_throughput": med([m["output_throughput"] for m in s]),
            "throughput_ratio": med(ratios),
            "direct_median_e2el_ms": med([m["median_e2el_ms"] for m in d]),
            "shim_median_e2el_ms": med([m["median_e2el_ms"] for m in s]),
            "added_median_e2el_ms": med(added_e2el),
            "added_median_ttft_ms": med(added_ttft),
            "failed_direct": sum(m["failed"] for m in d),
            "failed_shim": sum(m["failed"] for m in s),
            "shim_cpu_us_per_output_token": med(shim_us_per_token),
            "shim_cpu_system_share": med(shim_sys_share),
            "llama_cpu_s_direct": med([m["cpu_s"]["llama_server"] for m in d]),
            "llama_cpu_s_shim": med([m["cpu_s"]["llama_server"] for m in s]),
            "errors": sorted({e for m in d + s for e in m["errors"]}),
        }
    return {
        "machine": machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join(sys.argv),
        "summary": summary,
        "rounds": {str(c): rows[c] for c in rows},
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or _cpu_model(),
        "python": sys.version.split()[0],
        "load_average_at_end": os.getloadavg(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def print_summary(result: dict[str, Any]) -> None:
    print()
    print(f"machine: {result['machine']}")
    header = f"{'conc':>5} {'direct tok/s':>13} {'shim tok/s':>11} {'ratio':>6} {'p50 E2EL d/s (ms)':>19} {'+p50 E2EL':>10} {'+p50 TTFT':>10} {'shim µs/tok':>11} {'kernel':>8} {'failed d/s':>10}"
    print(header)
    for c, s in result["summary"].items():
        print(
            f"{c:>5} {s['direct_output_throughput']:13.1f} {s['shim_output_throughput']:11.1f} {s['throughput_ratio']:6.3f} "
            f"{s['direct_median_e2el_ms']:8.2f}/{s['shim_median_e2el_ms']:<9.2f} {s['added_median_e2el_ms']:+10.2f} "
            f"{s['added_median_ttft_ms']:+10.2f} {s['shim_cpu_us_per_output_token']:11.1f} {s['shim_cpu_system_share']:>8.0%} {s['failed_direct']:>4}/{s['failed_shim']:<4}"
        )
        for e in s["errors"]:
            print(f"      error seen: {e}")
    print("goal: ratio >= 0.95 and +p50 E2EL <= 1 ms (medians over rounds of paired, alternating runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parallel", type=int, default=8, help="llama-server slots (more slots made this build slower here)"
    )
    parser.add_argument("--threads", type=int, default=0, help="llama-server --threads (0: its default; 1 with --pin)")
    parser.add_argument(
        "--pin", action="store_true", help="llama-server alone on the last CPU, shim and client on the others"
    )
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--prompts-per-slot", type=int, default=4)
    parser.add_argument("--min-prompts", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    parser.add_argument("--profile-shim", default=None, help="run the shim under cProfile, write the stats here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"written: {args.json}")
    if args.profile_shim and Path(args.profile_shim).exists():
        print(f"\nshim profile ({args.profile_shim}), top 25 by own time:")
        pstats.Stats(args.profile_shim).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
