#!/usr/bin/env python
"""How a node holds up: 3,000 requests at once, then 200 clients that drip their request heads,
with GET /health asked every 100 ms throughout (docs/performance.md, "A node under load").

One run starts a real node as a node runs (`beacon node up`, its own process: llama-server on
the generated tiny model with its API key, the shim with its bounds) on loopback, then:

1. sends `--requests` POST /inference at once (4 output tokens each) from one client process,
   and reports how many were answered 200, how many were told 503 (node busy: past
   BEACON_MAX_IN_FLIGHT + BEACON_MAX_WAITING), how long they took, the most upstream
   connections to llama-server seen at once, and the shim's memory;
2. opens `--drip-clients` connections that send a request head one byte a second, and reports
   how long the node kept them (BEACON_HEADER_TIMEOUT_S) and what its log says about them;

and for both, every /health answer (status, latency). Loopback only; bounded in count and time
(`--max-seconds`). Not a test: it asserts nothing; print its figures with the machine.

    .venv/bin/python tools/perf/node_under_load.py
    .venv/bin/python tools/perf/node_under_load.py --requests 3000 --drip-clients 200 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from loopback import wait_ok

from beacon_golem.core.net import free_port

HOST = "127.0.0.1"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class HealthWatch:
    """GET /health every `interval_s` on a fresh connection; every answer kept."""

    def __init__(self, url: str, interval_s: float = 0.1) -> None:
        self.url, self.interval_s = url, interval_s
        self.answers: list[tuple[float, int, float]] = []  # (at, status or 0, seconds)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            while True:
                started = time.monotonic()
                try:
                    async with http.get(self.url + "/health", timeout=timeout) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.answers.append((started, status, time.monotonic() - started))
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        latencies = [s for _, _, s in self.answers]
        return {
            "checks": len(self.answers),
            "ok": sum(1 for _, st, _ in self.answers if st == 200),
            "not_ok": sum(1 for _, st, _ in self.answers if st != 200),
            "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
            "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        }


class UpstreamWatch:
    """The most TCP connections to llama-server's port seen at once (sampled every 50 ms)."""

    def __init__(self, runtime: psutil.Process, port: int) -> None:
        self.runtime, self.port, self.most = runtime, port, 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                conns = self.runtime.net_connections(kind="tcp")
            except psutil.Error:
                conns = []
            here = sum(
                1 for c in conns if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED
            )
            self.most = max(self.most, here)
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.most


async def flood(url: str, n: int, max_seconds: float) -> dict[str, Any]:
    body = {"prompt": "Say hi", "max_tokens": 4, "temperature": 0}
    statuses: dict[str, int] = {}
    times: list[float] = []
    timeout = aiohttp.ClientTimeout(total=max_seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:

        async def one() -> None:
            started = time.monotonic()
            try:
                async with http.post(url + "/inference", json=body) as resp:
                    await resp.read()
                    key = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            times.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.monotonic() - started
    return {
        "requests": n,
        "statuses": dict(sorted(statuses.items())),
        "wall_s": round(wall, 2),
        "p50_s": round(pct(times, 0.5), 3),
        "p99_s": round(pct(times, 0.99), 3),
        "max_s": round(max(times, default=0.0), 3),
    }


async def drip(port: int, n: int, max_seconds: float) -> dict[str, Any]:
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + b"a" * 1000

    async def one() -> float:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            return 0.0
        try:
            for byte in head:
                if time.monotonic() - started > max_seconds:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:  # closed by the node: the read returns at once
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        break
                except TimeoutError:
                    pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        return time.monotonic() - started

    held = await asyncio.gather(*(one() for _ in range(n)))
    return {"clients": n, "held_p50_s": round(pct(list(held), 0.5), 2), "held_max_s": round(max(held, default=0.0), 2)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="beacon-load-"))
    port = free_port()
    env = {**os.environ, "BEACON_LOG_LEVEL": "info", "BEACON_LOG_FORMAT": "json"}
    env.pop("BEACON_SHIM_TOKEN", None)
    log_path = work / "node.log"
    beacon = Path(sys.executable).with_name("beacon")
    with log_path.open("wb") as log:
        node = subprocess.Popen(
            [str(beacon), "--log-level", "info", "--log-format", "json", "node", "up", "--port", str(port),
             "--data-dir", str(work / "node"), "--parallel", str(args.parallel)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    out: dict[str, Any] = {}
    try:
        wait_ok(url + "/health")
        shim = psutil.Process(node.pid)
        runtime = next(p for p in shim.children(recursive=True) if "llama-server" in p.name())
        runtime_port = next(c.laddr.port for c in runtime.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)
        out["shim_rss_mib_before"] = round(shim.memory_info().rss / 2**20, 1)

        health, upstream = HealthWatch(url), UpstreamWatch(runtime, runtime_port)
        health.start()
        upstream.start()
        out["flood"] = await asyncio.wait_for(flood(url, args.requests, args.max_seconds), args.max_seconds + 30)
        out["flood"]["most_upstream_connections"] = await upstream.stop()
        out["flood"]["health"] = await health.stop()
        out["shim_rss_mib_after_flood"] = round(shim.memory_info().rss / 2**20, 1)

        health = HealthWatch(url)
        health.start()
        out["drip"] = await asyncio.wait_for(drip(port, args.drip_clients, args.max_seconds), args.max_seconds + 30)
        out["drip"]["health"] = await health.stop()
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    text = log_path.read_text(errors="replace")
    out["log"] = {
        "client_head_timeout_lines": text.count('"client_head_timeout"'),
        "client_disconnected_lines": text.count('"client_disconnected"'),
        "tracebacks": text.count("Traceback"),
        "error_lines": sum(1 for line in text.splitlines() if '"level": "error"' in line),
    }
    out["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(x, 1) for x in os.getloadavg()],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests sent at once (at most 5000)")
    parser.add_argument("--drip-clients", type=int, default=200, help="slow-drip clients (at most 500)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="longest each phase may take")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.requests = max(1, min(args.requests, 5000))
    args.drip_clients = max(1, min(args.drip_clients, 500))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.requests + 1024)), hard))
    figures = asyncio.run(main_async(args))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
