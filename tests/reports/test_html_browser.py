"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package), driven over
the DevTools protocol with aiohttp's websocket client (no driver download, no extra library).

Checks that every chart drew (each `svg.chart` has a non-zero bounding box, each series
polyline has points and extent), that the console shows no error, and that the page fetched
nothing but itself. A control page with a deliberate console error proves the error check
can fail. Skipped where no Chromium is installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beacon_golem.reports.html import write_run_report
from beacon_golem.requestor.store.store import Store
from tests.perf_support import PerfRun

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
)  # fmt: skip

CHARTS_JS = """
Array.from(document.querySelectorAll('svg.chart')).map(svg => {
  const box = svg.getBoundingClientRect();
  return {
    id: svg.id,
    width: box.width,
    height: box.height,
    series: Array.from(svg.querySelectorAll('polyline.series, path.series')).map(el => {
      const b = el.getBBox();
      return {name: el.dataset.series, points: el.points ? el.points.numberOfItems : 0, w: b.width, h: b.height,
              rendered: el.getBoundingClientRect().width};
    }),
  };
})
"""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")


class Page:
    """One page target over the DevTools protocol: commands, and every event kept in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def open(self, url: str) -> None:
        self.loaded.clear()
        self.events.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 30)
        await asyncio.sleep(0.3)  # late console messages

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append("log: " + str(params["entry"].get("text")))
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


@contextlib.asynccontextmanager
async def chromium_page(profile: Path) -> AsyncIterator[Page]:
    """Start a headless Chromium with a fresh profile and attach to its first page."""
    binary = chromium_binary()
    log = (profile.parent / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = [t for t in await resp.json() if t.get("type") == "page"]
                if targets:
                    break
                await asyncio.sleep(0.1)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.send(f"{domain}.enable")
                try:
                    yield page
                finally:
                    page.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


async def test_every_chart_draws_and_the_console_stays_clean(perf_run: PerfRun, tmp_path: Path) -> None:
    chromium_binary()
    html = tmp_path / "report.html"
    with Store(perf_run.db, readonly=True) as store:
        write_run_report(store, perf_run.run_id, html)
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><html><body><script>console.error('deliberate')</script></body></html>")

    async with chromium_page(tmp_path / "profile") as page:
        # The check catches a console error when there is one...
        await page.open(control.as_uri())
        assert any("deliberate" in e for e in page.console_errors()), page.events

        # ...and the report has none.
        await page.open(html.as_uri())
        charts = await page.evaluate(CHARTS_JS)
        errors = page.console_errors()
        requests = page.requests()
        title = await page.evaluate("document.title")
        sections = await page.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)")
        shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)

    assert errors == []
    assert requests == [html.as_uri()]  # nothing fetched but the page itself
    assert title.startswith(f"Beacon run {perf_run.run_id}")
    assert sections == ["summary", "throughput", "latency", "benchmarks", "differences", "fingerprints", "cost"]
    assert [c["id"] for c in charts] == ["chart-throughput", "chart-ttft", "chart-tpot"]
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 100, chart
        assert chart["series"], chart["id"]
        for series in chart["series"]:
            assert series["points"] == 2, (chart["id"], series)  # concurrency 1 and 2
            assert series["w"] > 0 and series["rendered"] > 0, (chart["id"], series)
    assert len(charts[0]["series"]) == 2 and len(charts[1]["series"]) == len(charts[2]["series"]) == 6
    png = tmp_path / "report.png"
    import base64

    png.write_bytes(base64.b64decode(shot["data"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
