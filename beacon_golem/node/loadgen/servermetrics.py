"""The runtime's own counters, read before and after each step and set beside the client's figures.

- llama-server (`--metrics`): `llamacpp:tokens_predicted_total`, `llamacpp:prompt_tokens_total`
  (excluding cached) plus `llamacpp:prompt_tokens_cached_total`, queue gauge
  `llamacpp:requests_deferred`, `llamacpp:requests_processing`.
- vLLM: `vllm:generation_tokens_total`, `vllm:prompt_tokens_total`,
  `vllm:request_success_total`, gauges `vllm:num_requests_waiting`, `vllm:num_requests_running`.
- Docker Model Runner: llama.cpp's metrics at `/metrics`.
- Ollama has no metrics endpoint: the cross-check sums the `eval_count` / `eval_duration` the
  runtime returned with each answer (`server_timings`) instead.

Prometheus text is parsed with prometheus_client's parser; labelled series are summed.
A counter delta is only the step's own traffic when nothing else uses the server meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from beacon_golem.core.bench import ServerCrossCheck
from beacon_golem.core.metrics import RequestRecord, mean


@dataclass(frozen=True)
class CounterNames:
    output_tokens: tuple[str, ...]
    input_tokens: tuple[str, ...]
    requests: tuple[str, ...] = ()
    queue: tuple[str, ...] = ()
    running: tuple[str, ...] = ()


LLAMACPP = CounterNames(
    output_tokens=("llamacpp:tokens_predicted_total",),
    input_tokens=("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
    queue=("llamacpp:requests_deferred",),
    running=("llamacpp:requests_processing",),
)
VLLM = CounterNames(
    output_tokens=("vllm:generation_tokens_total",),
    input_tokens=("vllm:prompt_tokens_total",),
    requests=("vllm:request_success_total",),
    queue=("vllm:num_requests_waiting",),
    running=("vllm:num_requests_running",),
)
COUNTERS: dict[str, CounterNames] = {"llamacpp": LLAMACPP, "dmr": LLAMACPP, "vllm": VLLM}


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample name -> value, summed over label sets (e.g. vLLM's per-model series)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


class ServerMetricsReader:
    """Scrapes one runtime's /metrics; `available` is False when it has none or is unreachable."""

    def __init__(self, session: aiohttp.ClientSession, url: str | None, runtime: str) -> None:
        self.session = session
        self.url = url
        self.runtime = runtime
        self.names = COUNTERS.get(runtime)
        self.reason: str | None = None
        if url is None:
            self.reason = "no runtime /metrics URL reachable from here"
        elif self.names is None:
            self.reason = f"{runtime} exposes no Prometheus metrics"

    @property
    def available(self) -> bool:
        return self.url is not None and self.names is not None and self.reason is None

    async def scrape(self) -> dict[str, float] | None:
        if self.url is None or self.names is None:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with self.session.get(self.url, timeout=timeout) as resp:
                if resp.status != 200:
                    self.reason = f"{self.url} answered HTTP {resp.status} (llama-server needs --metrics)"
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.reason = f"{self.url} unreachable: {exc}"
            return None
        try:
            values = parse_prometheus(text)
        except ValueError as exc:
            self.reason = f"{self.url} is not Prometheus text: {exc}"
            return None
        if not any(n in values for n in self.names.output_tokens):
            self.reason = f"{self.url} has none of {', '.join(self.names.output_tokens)}"
            return None
        self.reason = None
        return values

    def queue_depth(self, values: dict[str, float] | None) -> float | None:
        if values is None or self.names is None or not self.names.queue:
            return None
        found = [values[n] for n in self.names.queue if n in values]
        return sum(found) if found else None


def _total(values: dict[str, float], names: Sequence[str]) -> float | None:
    found = [values[n] for n in names if n in values]
    return sum(found) if found else None


def discrepancy_pct(server: float | None, client: float | None) -> float | None:
    """(client - server) / server in percent; None when either is missing or server is 0."""
    if server is None or client is None or server == 0:
        return None
    return (client - server) / server * 100.0




def per_request_server_tpot(records: Sequence[RequestRecord]) -> float | None:
    values = []
    for r in records:
        t = r.server_timings or {}
        if not r.ok:
            continue
        if "predicted_per_token_ms" in t:
            values.append(t["predicted_per_token_ms"])
        elif "eval_ms" in t and r.output_tokens > 0 and r.token_count_source == "server":
            values.append(t["eval_ms"] / r.output_tokens)
    return mean(values) if values else None


def cross_check(
    runtime: str,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    records: Sequence[RequestRecord],
    duration_s: float,
    reader: ServerMetricsReader | None,
    max_queue: float | None = None,
) -> ServerCrossCheck:
    ok = [r for r in records if r.ok]
    client_out = sum(r.output_tokens for r in ok)
    client_in = [r.server_prompt_tokens for r in ok]
    client_in_total = sum(v for v in client_in if v is not None) if all(v is not None for v in client_in) else None
    tpots = [t for t in (r.tpot_ms for r in ok) if t is not None]
    client_tpot = mean(tpots) if tpots else None
    server_tpot = per_request_server_tpot(ok)
    common = {
        "client_output_tokens": client_out,
        "client_input_tokens": client_in_total,
        "client_requests": len(ok),
        "client_output_throughput": client_out / duration_s if duration_s > 0 else None,
        "server_mean_tpot_ms": server_tpot,
        "client_mean_tpot_ms": client_tpot,
        "tpot_discrepancy_pct": discrepancy_pct(server_tpot, client_tpot),
        "max_server_queue": max_queue,
    }
    if reader is not None and reader.names is not None and before is not None and after is not None:
        names = reader.names
        out_b, out_a = _total(before, names.output_tokens), _total(after, names.output_tokens)
        in_b, in_a = _total(before, names.input_tokens), _total(after, names.input_tokens)
        rq_b, rq_a = _total(before, names.requests), _total(after, names.requests)
        server_out = None if out_a is None or out_b is None else out_a - out_b
        server_in = None if in_a is None or in_b is None else in_a - in_b
        server_rq = None if rq_a is None or rq_b is None else rq_a - rq_b
        return ServerCrossCheck(
            source=f"{runtime} {reader.url}",
            available=True,
            server_output_tokens=server_out,
            output_tokens_discrepancy_pct=discrepancy_pct(server_out, client_out),
            server_input_tokens=server_in,
            input_tokens_discrepancy_pct=discrepancy_pct(server_in, client_in_total),
            server_requests=server_rq,
            server_output_throughput=server_out / duration_s if server_out is not None and duration_s > 0 else None,
            **common,
        )
    # No Prometheus counters: sum the runtime's per-answer counts (Ollama eval_count).
    evals = [r for r in ok if r.server_timings and "eval_ms" in r.server_timings]
    if evals and all(r.token_count_source == "server" for r in ok):
        server_out_f = float(sum(r.output_tokens for r in ok))
        return ServerCrossCheck(
            source=f"{runtime} per-answer eval_count",
            available=True,
            note="token counts come from the runtime's answers themselves, so they agree by construction; "
            "the timing comparison is the check",
            server_output_tokens=server_out_f,
            output_tokens_discrepancy_pct=discrepancy_pct(server_out_f, client_out),
            server_output_throughput=server_out_f / duration_s if duration_s > 0 else None,
            **common,
        )
    reason = reader.reason if reader is not None else "no server metrics"
    return ServerCrossCheck(source=runtime, available=False, note=reason, **common)
