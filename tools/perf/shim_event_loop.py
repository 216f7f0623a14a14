#!/usr/bin/env python
"""The shim on asyncio's event loop against the shim on uvloop, side by side in one run.

One llama-server on the generated tiny model, two shims in front of it (BEACON_EVENT_LOOP=asyncio
and =uvloop, each its own process), the same load through each, alternating order every round.
Prints medians over rounds of the shims' CPU per output token (the figure the loop changes; it
barely depends on what else the machine is doing) and of output throughput, with the ratios.

    .venv/bin/python tools/perf/shim_event_loop.py
    .venv/bin/python tools/perf/shim_event_loop.py --rounds 5 --concurrency 1,32

Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from loopback import wait_ok
from shim_overhead import machine, measure, med

from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter
from beacon_golem.node.tiny_model import write_tiny_model

LOOPS = ("asyncio", "uvloop")


async def run(args: argparse.Namespace) -> None:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="shim-loop-") as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_model(tmp / "tiny.gguf")
        llama_port = free_port()
        argv = LlamaCppAdapter.launch(str(model), port=llama_port, parallel=args.parallel).argv
        llama = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        direct = f"http://127.0.0.1:{llama_port}"
        shims: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        for loop in LOOPS:
            port = free_port()
            cmd = [sys.executable, "-m", "beacon_golem.cli", "shim", "--runtime", "llamacpp", "--upstream", direct,
                   "--port", str(port), "--data-dir", str(tmp / loop)]  # fmt: skip
            env = {**os.environ, "BEACON_EVENT_LOOP": loop}
            shims[loop] = (
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
                f"http://127.0.0.1:{port}",
            )
        try:
            wait_ok(direct + "/health")
            for _, url in shims.values():
                wait_ok(url + "/health")
            rows: dict[tuple[int, str], list[dict[str, float]]] = {}
            for r in range(args.rounds):
                for c in concurrencies:
                    for loop in LOOPS if r % 2 == 0 else reversed(LOOPS):
                        proc, url = shims[loop]
                        m = await measure(url, c, args, 1000 * r + 10 * c, {"shim": psutil.Process(proc.pid)})
                        us = 1e6 * m["cpu_s"]["shim"] / max(1, m["output_tokens"])
                        rows.setdefault((c, loop), []).append({"us_per_token": us, "tok_s": m["output_throughput"]})
                        print(
                            f"round {r} c={c:<4} {loop:<8} {m['output_throughput']:9.1f} tok/s  shim {us:6.1f} µs/token",
                            flush=True,
                        )
        finally:
            for proc, _ in shims.values():
                proc.send_signal(signal.SIGINT)
                proc.wait(15)
            os.killpg(llama.pid, signal.SIGTERM)
            llama.wait(10)
    print(f"\nmachine: {machine()}")
    print(
        f"{'conc':>5} {'asyncio µs/tok':>15} {'uvloop µs/tok':>14} {'CPU ratio':>10} {'asyncio tok/s':>14} {'uvloop tok/s':>13} {'tok/s ratio':>12}"
    )
    for c in concurrencies:
        a, u = rows[(c, "asyncio")], rows[(c, "uvloop")]
        ua, uu = med([x["us_per_token"] for x in a]), med([x["us_per_token"] for x in u])
        ta, tu = med([x["tok_s"] for x in a]), med([x["tok_s"] for x in u])
        print(f"{c:>5} {ua:15.1f} {uu:14.1f} {uu / ua:10.2f} {ta:14.1f} {tu:13.1f} {tu / ta:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--prompts-per-slot", type=int, default=4)
    parser.add_argument("--min-prompts", type=int, default=48)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
