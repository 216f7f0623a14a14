"""The shim's Prometheus metrics, one registry per app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from beacon_golem.core.inference import GenerationResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ShimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("beacon_shim_requests", "HTTP requests", ["route", "status"], registry=r)
        self.errors = Counter("beacon_shim_errors", "HTTP requests that ended in an error", ["route", "status"], registry=r)
        self.in_flight = Gauge("beacon_shim_requests_in_flight", "HTTP requests being served", registry=r)
        self.request_seconds = Histogram(
            "beacon_shim_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.generations = Counter("beacon_shim_generations", "Generations run", ["runtime", "outcome"], registry=r)
        self.tokens = Counter("beacon_shim_tokens", "Tokens counted in generations", ["kind"], registry=r)
        self.ttft_seconds = Histogram(
            "beacon_shim_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.e2e_seconds = Histogram(
            "beacon_shim_e2e_seconds", "Generation end-to-end latency", buckets=LATENCY_BUCKETS, registry=r
        )

    def generation(self, result: GenerationResult) -> None:
        self.generations.labels(result.runtime, "ok").inc()
        self.tokens.labels("prompt").inc(result.prompt_tokens or 0)
        self.tokens.labels("completion").inc(result.completion_tokens or 0)
        if result.ttft_ms is not None:
            self.ttft_seconds.observe(result.ttft_ms / 1000.0)
        self.e2e_seconds.observe(result.e2e_ms / 1000.0)

    def failed_generation(self, runtime: str) -> None:
        self.generations.labels(runtime, "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
