#!/usr/bin/env python
"""How many streamed chunks per second our load generator measures correctly on one core (and GuideLLM beside it).

A fake OpenAI-compatible SSE server (this script with --serve, its own process, on the other
CPU) streams every request at a fixed pace: one content chunk per stream every `--tick-ms`,
`--output-len` chunks per request, usage at the end. It records when it wrote each chunk
(CLOCK_MONOTONIC). The load generator, pinned to one CPU, runs fixed-concurrency steps of
rising stream counts; at each level its per-chunk receive times are set against the
server's write times (same clock), so the client's own measurement error is seen directly:

- correct: every request's chunk count equals what the server wrote; the client's median ITL
  is within 5% of the server's real median gap; the per-chunk delivery lag (client receive
  minus server write) stays under `--max-lag-p50-ms` (1 ms) at the median and under one tick
  at p99; and the client is below 90% of its core;
- capacity: the highest level correct in at least one round (neighbours on a shared machine
  only ever add lag), in chunks per second, with the client's CPU use.

When GuideLLM is installed in a separate venv (`--guidellm /work/guidellm-venv/bin/guidellm`,
never in the project's), the same server and level are run with it, pinned to the same CPU,
in the same run, alternating with ours: output throughput, TTFT, TPOT (GuideLLM's "ITL" is
vLLM's TPOT) and latency side by side with the difference in percent, and CPU per chunk.

    .venv/bin/python tools/perf/loadgen_capacity.py
    .venv/bin/python tools/perf/loadgen_capacity.py --streams 16,64,256 --guidellm /work/guidellm-venv/bin/guidellm

Not a test: it asserts nothing; print its figures with the machine they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loopback import get_json, write_tokenizer

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":" tok"}}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'


# ---- the fake server (--serve) ----------------------------------------------------------------------
class Pacer:
    """One global tick: every active stream gets one chunk per tick; write times are kept per prompt."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.streams: list[list[Any]] = []  # [transport, remaining, writes, tail]
        #: prompt key -> one entry per request: arrival time and the time of every chunk written.
        self.log: dict[str, list[dict[str, Any]]] = {}
        self.lateness: list[float] = []
        self.chunks = 0
        self.loop = asyncio.get_running_loop()
        self.next = self.loop.time() + tick_s
        self.loop.call_at(self.next, self.tick)

    def add(self, transport: asyncio.Transport, key: str, n: int, tail: bytes, arrival: float) -> None:
        writes: list[float] = []
        self.log.setdefault(key, []).append({"arrival": arrival, "writes": writes})
        self.streams.append([transport, n, writes, tail])

    def tick(self) -> None:
        now = self.loop.time()
        self.lateness.append(now - self.next)
        keep = []
        mono = time.monotonic
        for s in self.streams:
            transport = s[0]
            if transport.is_closing():
                continue
            s[2].append(mono())
            transport.write(EVENT)
            s[1] -= 1
            self.chunks += 1
            if s[1] <= 0:
                transport.write(s[3])
            else:
                keep.append(s)
        self.streams = keep
        self.next += self.tick_s
        if self.next < now:  # fell behind: skip ahead instead of bursting
            self.next = now + self.tick_s
        self.loop.call_at(self.next, self.tick)


class FakeSSE(asyncio.Protocol):
    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.arrival = time.monotonic()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            method, path = head[0].split(" ")[:2]
            self.handle(method, path.split("?")[0], body)

    def respond(self, status: str, body: bytes, ctype: str = "application/json") -> None:
        assert self.transport is not None
        self.transport.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )

    def handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path == "/health":
            self.respond("200 OK", b"{}")
        elif method == "GET" and path == "/v1/models":
            self.respond(
                "200 OK", b'{"object":"list","data":[{"id":"fake-sse","object":"model","max_model_len":4096}]}'
            )
        elif method == "GET" and path == "/version":
            self.respond("200 OK", b'{"version":"fake-sse"}')
        elif method == "GET" and path == "/stats":
            p = self.pacer
            late = sorted(p.lateness) or [0.0]
            stats = {
                "chunks": p.chunks,
                "tick_lateness_p50_ms": 1000 * late[len(late) // 2],
                "tick_lateness_p99_ms": 1000 * late[min(len(late) - 1, int(len(late) * 0.99))],
                "log": p.log,
            }
            p.log, p.lateness, p.chunks = {}, [], 0
            self.respond("200 OK", json.dumps(stats).encode())
        elif method == "POST" and path.endswith("/chat/completions"):
            req = json.loads(body)
            n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
            text = " ".join(str(m.get("content") or "") for m in req.get("messages") or [])
            key = hashlib.sha1(text.encode()).hexdigest()[:16]
            usage = {"choices": [], "usage": {"prompt_tokens": len(text.split()), "completion_tokens": n}}
            tail = FINISH + b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
            length = n * len(EVENT) + len(tail)
            self.transport.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {length}\r\n\r\n".encode()
            )
            self.pacer.add(self.transport, key, n, tail, self.arrival)
        else:
            self.respond("404 Not Found", b'{"error":"not found"}')


async def serve(port: int, tick_ms: float) -> None:
    pacer = Pacer(tick_ms / 1000.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeSSE(pacer), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def server_truth(stats: dict[str, Any]) -> dict[str, Any]:
    """What the server did, from its own log: the reference both clients are held against.

    TTFT from the request's arrival to its first chunk written; TPOT (last - first) / (n - 1);
    E2EL arrival to last chunk; throughput all chunks over first arrival to last write.
    """
    entries = [e for lst in stats["log"].values() for e in lst if e["writes"]]
    if not entries:
        return {"median_gap_ms": None}
    gaps = [1000.0 * (b - a) for e in entries for a, b in zip(e["writes"], e["writes"][1:], strict=False)]
    ttft = [1000.0 * (e["writes"][0] - e["arrival"]) for e in entries]
    tpot = [
        1000.0 * (e["writes"][-1] - e["writes"][0]) / (len(e["writes"]) - 1) for e in entries if len(e["writes"]) > 1
    ]
    e2el = [1000.0 * (e["writes"][-1] - e["arrival"]) for e in entries]
    span = max(e["writes"][-1] for e in entries) - min(e["arrival"] for e in entries)
    chunks = sum(len(e["writes"]) for e in entries)
    return {
        "requests": len(entries),
        "median_gap_ms": statistics.median(gaps) if gaps else None,
        "median_ttft_ms": statistics.median(ttft),
        "mean_tpot_ms": statistics.fmean(tpot) if tpot else None,
        "median_e2el_ms": statistics.median(e2el),
        "output_throughput": chunks / span if span > 0 else None,
    }


# ---- our load generator ----------------------------------------------------------------------------
def key_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


async def run_ours(url: str, streams: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import aiohttp

    from beacon_golem.core.bench import PromptSpec
    from beacon_golem.core.metrics import aggregate, percentile
    from beacon_golem.core.profiles import ConcurrencyProfile, OverloadPolicy
    from beacon_golem.node.loadgen.generator import LoadGenerator
    from beacon_golem.node.loadgen.prompts import random_prompts
    from beacon_golem.node.loadgen.target import Target, resolve_target

    spec = PromptSpec(input_len=args.input_len, output_len=args.output_len, seed=seed)
    num = streams * args.requests_per_stream
    step = ConcurrencyProfile(
        concurrency=streams, num_prompts=num, seed=seed, overload=OverloadPolicy(enabled=False)
    ).steps()[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        resolved = await resolve_target(session, Target(url=url, runtime="vllm"))
        prompts = (await random_prompts(num, spec, seed)).prompts
        requests = [p.request(spec, resolved.model) for p in prompts]
        get_json(url + "/stats")  # reset the server's log
        run = await LoadGenerator(resolved.adapter, resolved.model).run(step, prompts, requests)
    stats = get_json(url + "/stats")
    metrics = aggregate(run.records, run.duration_s)
    # Per-chunk delivery lag: client receive time minus server write time, on the same clock.
    lags: list[float] = []
    count_mismatch = 0
    used: dict[str, int] = {}
    for rec in run.records:
        key = key_of(prompts[rec.index % len(prompts)].text or "")
        entries = stats["log"].get(key) or [{"writes": []}]
        k = used.get(key, 0)
        used[key] = k + 1
        writes = entries[min(k, len(entries) - 1)]["writes"]
        if not rec.ok or rec.ttft_ms is None:
            count_mismatch += 1
            continue
        received = [run.t0 + rec.start_s + rec.ttft_ms / 1000.0]
        for gap in rec.itl_ms:
            received.append(received[-1] + gap / 1000.0)
        if len(received) != len(writes) or rec.output_tokens != args.output_len:
            count_mismatch += 1
            continue
        lags.extend(1000.0 * (r - w) for r, w in zip(received, writes, strict=True))
    truth = server_truth(stats)
    return {
        "streams": streams,
        "requests": num,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "chunks_per_s": metrics.output_throughput,
        "output_throughput": metrics.output_throughput,
        "median_ttft_ms": metrics.median_ttft_ms,
        "mean_ttft_ms": metrics.mean_ttft_ms,
        "mean_tpot_ms": metrics.mean_tpot_ms,
        "median_itl_ms": metrics.median_itl_ms,
        "p99_itl_ms": metrics.p99_itl_ms,
        "median_e2el_ms": metrics.median_e2el_ms,
        "server_median_gap_ms": truth["median_gap_ms"],
        "truth": truth,
        "server_chunks": stats["chunks"],
        "server_tick_lateness_p99_ms": stats["tick_lateness_p99_ms"],
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags, default=0.0),
        "count_mismatches": count_mismatch,
        "client_cpu_s": run.client.cpu_s,
        "client_cpu_util": run.client.cpu_util,
        "client_cpu_us_per_chunk": 1e6 * run.client.cpu_s / max(1, metrics.total_output_tokens),
        "loop_lag_p99_ms": run.client.loop_lag_p99_ms,
    }


class TreeCPU:
    """Samples a process tree's CPU seconds every 50 ms, so CPU inside a time window can be read."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0.0
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    try:
                        t = p.cpu_times()
                        total += t.user + t.system
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.time(), total))
            time.sleep(0.05)

    def between(self, start: float, end: float) -> float | None:
        def at(t: float) -> float | None:
            before = [s for s in self.samples if s[0] <= t]
            after = [s for s in self.samples if s[0] >= t]
            if not before or not after:
                return None
            (t0, c0), (t1, c1) = before[-1], after[0]
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)

        a, b = at(start), at(end)
        return None if a is None or b is None else b - a


def run_guidellm(
    guidellm: Path, url: str, streams: int, args: argparse.Namespace, tokenizer: Path, out: Path, cpu: int
) -> dict[str, Any]:
    num = streams * args.requests_per_stream
    cmd = [
        "taskset", "-c", str(cpu), str(guidellm), "run",
        "--backend", f"kind=openai_http,target={url},model=fake-sse",
        "--profile", f"kind=concurrent,streams={streams}",
        "--constraint", f"kind=max_requests,count={num}",
        "--data", f"kind=synthetic_text,prompt_tokens={args.input_len},output_tokens={args.output_len}",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--output", f"kind=json,path={out}",
        "--disable-progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    get_json(url + "/stats")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    sampler = TreeCPU(proc.pid)
    output, _ = proc.communicate(timeout=args.guidellm_timeout)
    sampler.stop.set()
    stats = get_json(url + "/stats")
    if proc.returncode != 0 or not out.exists():
        return {"error": f"guidellm exited {proc.returncode}: {output.decode(errors='replace')[-800:]}"}
    bench = json.loads(out.read_text())["benchmarks"][0]
    m = bench["metrics"]

    def stat(name: str, which: str = "median") -> float:
        return float(m[name]["successful"][which])

    duration = float(bench["duration"])
    tokens = float(m["output_token_count"]["successful"]["total_sum"])
    cpu_s = sampler.between(float(bench["start_time"]), float(bench["end_time"]))
    return {
        "streams": streams,
        "requests": num,
        "completed": int(m["request_totals"]["successful"]),
        "failed": int(m["request_totals"]["errored"]),
        "output_throughput": tokens / duration if duration else 0.0,
        "median_ttft_ms": stat("time_to_first_token_ms"),
        "mean_ttft_ms": stat("time_to_first_token_ms", "mean"),
        # GuideLLM's inter_token_latency_ms is (latency - TTFT) / (tokens - 1): vLLM's TPOT.
        "mean_tpot_ms": stat("inter_token_latency_ms", "mean"),
        "median_e2el_ms": 1000.0 * stat("request_latency"),
        "server_chunks": stats["chunks"],
        "truth": server_truth(stats),
        "client_cpu_s": cpu_s,
        "client_cpu_util": cpu_s / duration if cpu_s is not None and duration else None,
        "client_cpu_us_per_chunk": 1e6 * cpu_s / tokens if cpu_s is not None and tokens else None,
    }


# ---- the run ----------------------------------------------------------------------------------------
def pct(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return (ours - theirs) / theirs * 100.0


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field median of several rounds' rows (nested dicts too; non-numbers from the first)."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r.get(key) for r in rows]
        if isinstance(first, dict):
            out[key] = median_row([v for v in values if isinstance(v, dict)])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            nums = [v for v in values if isinstance(v, (int, float))]
            out[key] = statistics.median(nums) if nums else None
        else:
            out[key] = first
    return out


def compare_lines(ours: dict[str, Any], guide: dict[str, Any]) -> str:
    """Ours, GuideLLM and the server's own truth for the same level, one metric a line."""
    rows = [
        ("output tok/s", "output_throughput", "{:10.0f}"),
        ("TTFT p50 ms", "median_ttft_ms", "{:10.2f}"),
        ("TPOT mean ms", "mean_tpot_ms", "{:10.3f}"),
        ("E2EL p50 ms", "median_e2el_ms", "{:10.1f}"),
    ]
    out = [f"{'':17}{'ours':>10} {'server':>10} {'guidellm':>10} {'server':>10} {'ours/gl':>8}"]
    for label, key, fmt in rows:
        o, g = ours[key], guide[key]
        ot, gt = ours["truth"].get(key), guide["truth"].get(key)
        diff = pct(o, g)
        out.append(
            f"{'':3}{label:<14}"
            + fmt.format(o)
            + " "
            + fmt.format(ot or 0)
            + " "
            + fmt.format(g)
            + " "
            + fmt.format(gt or 0)
            + f" {diff:+7.1f}%"
        )
    out.append(
        f"{'':3}{'client CPU':<14}{ours['client_cpu_us_per_chunk']:10.1f} {'':>10} {guide['client_cpu_us_per_chunk'] or 0:10.1f}"
        f" {'':>10} µs/chunk (ours {ours['client_cpu_util']:.0%}, guidellm {guide['client_cpu_util'] or 0:.0%} of the core)"
    )
    return "\n".join(out)


def correct(row: dict[str, Any], args: argparse.Namespace) -> bool:
    """Counts exact, the client's median ITL within 5% of the server's real gaps, delivery lag small."""
    server_gap = row["server_median_gap_ms"] or args.tick_ms
    return (
        row["failed"] == 0
        and row["count_mismatches"] == 0
        and abs(row["median_itl_ms"] - server_gap) <= 0.05 * server_gap
        and row["lag_p50_ms"] <= args.max_lag_p50_ms
        and row["lag_p99_ms"] <= (args.max_lag_p99_ms or args.tick_ms)
        and row["client_cpu_util"] < 0.9
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="8,32,64,128,256,512")
    parser.add_argument("--tick-ms", type=float, default=5.0, help="one chunk per stream every this many ms")
    parser.add_argument("--output-len", type=int, default=100, help="chunks per request")
    parser.add_argument("--input-len", type=int, default=16)
    parser.add_argument("--requests-per-stream", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per level (medians reported)")
    parser.add_argument(
        "--max-lag-p50-ms", type=float, default=1.0, help="median delivery lag allowed for 'measured correctly'"
    )
    parser.add_argument(
        "--max-lag-p99-ms", type=float, default=None, help="p99 delivery lag allowed (default: one tick)"
    )
    parser.add_argument("--guidellm", type=Path, default=Path("/work/guidellm-venv/bin/guidellm"))
    parser.add_argument("--guidellm-timeout", type=float, default=600.0)
    parser.add_argument("--no-guidellm", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.serve is not None:
        asyncio.run(serve(args.serve, args.tick_ms))
        return

    from beacon_golem.core.net import free_port

    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpus = cpus[0], cpus[1:] or cpus
    os.sched_setaffinity(0, {client_cpu})
    port = free_port()
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            ",".join(map(str, server_cpus)),
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--tick-ms",
            str(args.tick_ms),
        ]
    )
    url = f"http://127.0.0.1:{port}"
    guidellm = None if args.no_guidellm or not args.guidellm.exists() else args.guidellm
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "client_cpu": client_cpu,
            "server_cpus": server_cpus,
            "python": sys.version.split()[0],
            "load_average_at_start": os.getloadavg(),
        },
        "levels": [],
    }
    try:
        for _ in range(100):
            try:
                get_json(url + "/health")
                break
            except OSError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="loadgen-capacity-") as tmp_name:
            tmp = Path(tmp_name)
            if guidellm is not None:
                write_tokenizer(guidellm.parent / "python", tmp / "tokenizer")
            for i, streams in enumerate(int(s) for s in args.streams.split(",")):
                ours_rounds: list[dict[str, Any]] = []
                guide_rounds: list[dict[str, Any]] = []
                for r in range(args.rounds):
                    order = ["ours", "guidellm"] if (i + r) % 2 == 0 else ["guidellm", "ours"]
                    for who in order:
                        if who == "ours":
                            row = asyncio.run(run_ours(url, streams, args, seed=1000 * r + streams))
                            row["correct"] = correct(row, args)
                            ours_rounds.append(row)
                            print(
                                f"  streams {streams:4d} round {r}: ours {row['chunks_per_s']:8.0f} chunks/s  lag p50/p99 "
                                f"{row['lag_p50_ms']:.3f}/{row['lag_p99_ms']:.3f} ms  ITL p50 {row['median_itl_ms']:.2f} ms "
                                f"(server {row['server_median_gap_ms'] or 0:.2f})  CPU {row['client_cpu_util']:.0%}  "
                                f"{'correct' if row['correct'] else 'NOT correct'}",
                                flush=True,
                            )
                        elif guidellm is not None:
                            g = run_guidellm(
                                guidellm,
                                url,
                                streams,
                                args,
                                tmp / "tokenizer",
                                tmp / f"g{streams}-{r}.json",
                                client_cpu,
                            )
                            guide_rounds.append(g)
                            if "error" in g:
                                print(f"  streams {streams:4d} round {r}: guidellm {g['error']}", flush=True)
                ours = median_row(ours_rounds)
                # Other processes on the machine only ever add lag: one clean round shows what the client can do.
                ours["correct_rounds"] = sum(row["correct"] for row in ours_rounds)
                ours["correct"] = ours["correct_rounds"] > 0
                level: dict[str, Any] = {
                    "streams": streams,
                    "target_chunks_per_s": streams * 1000.0 / args.tick_ms,
                    "ours": ours,
                    "ours_rounds": ours_rounds,
                }
                keys = ("output_throughput", "median_ttft_ms", "mean_tpot_ms", "median_e2el_ms")
                level["ours_vs_server_pct"] = {k: pct(ours[k], ours["truth"].get(k)) for k in keys}
                line = (
                    f"streams {streams:4d} (median of {len(ours_rounds)}): ours {ours['chunks_per_s']:.0f} chunks/s, "
                    f"lag p50/p99 {ours['lag_p50_ms']:.3f}/{ours['lag_p99_ms']:.3f} ms, CPU {ours['client_cpu_util']:.0%} "
                    f"({ours['client_cpu_us_per_chunk']:.1f} µs/chunk): correct in {ours['correct_rounds']} of {len(ours_rounds)} rounds"
                )
                ok_guide = [g for g in guide_rounds if "error" not in g]
                if ok_guide:
                    guide = median_row(ok_guide)
                    level["guidellm"] = guide
                    level["guidellm_rounds"] = guide_rounds
                    level["diff_pct"] = {k: pct(ours[k], guide[k]) for k in keys}
                    level["guidellm_vs_server_pct"] = {k: pct(guide[k], guide["truth"].get(k)) for k in keys}
                    line += "\n" + compare_lines(ours, guide)
                print(line, flush=True)
                results["levels"].append(level)
    finally:
        server.terminate()
        server.wait(10)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    good = [lv for lv in results["levels"] if lv["ours"]["correct"]]
    best = max(good, key=lambda lv: lv["ours"]["chunks_per_s"], default=None)
    results["capacity_chunks_per_s"] = best["ours"]["chunks_per_s"] if best else None
    print()
    if best:
        print(
            f"capacity: {best['ours']['chunks_per_s']:.0f} chunks/s measured correctly on one core "
            f"({best['streams']} streams, p99 lag {best['ours']['lag_p99_ms']:.3f} ms, client CPU {best['ours']['client_cpu_util']:.0%})"
        )
    else:
        print("no level was measured correctly")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
