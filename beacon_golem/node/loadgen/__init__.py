"""Performance benchmarks: load profiles, prompts, the load generator, metrics, server cross-checks.

One idea per module: `profiles` (how load is issued and when a step stops), `prompts`
(what is sent), `target` (shim or runtime, resolved to an adapter), `loadgen` (sending and
timing), `metrics` (records to vLLM's aggregates), `servermetrics` (the runtime's own
counters), `results` (the result models) and `runner` (`run_bench`).
"""

from beacon_golem.core.bench import BenchResult, PromptSpec, StepResult
from beacon_golem.core.metrics import SLO, RequestRecord, ServingMetrics, aggregate, vllm_keys
from beacon_golem.core.profiles import (
    ConcurrencyProfile,
    OverloadPolicy,
    PoissonProfile,
    Profile,
    RateProfile,
    SweepProfile,
    SynchronousProfile,
)
from beacon_golem.node.loadgen.run_bench import run_bench
from beacon_golem.node.loadgen.target import Target

__all__ = [
    "SLO",
    "BenchResult",
    "ConcurrencyProfile",
    "OverloadPolicy",
    "PoissonProfile",
    "Profile",
    "PromptSpec",
    "RateProfile",
    "RequestRecord",
    "ServingMetrics",
    "StepResult",
    "SweepProfile",
    "SynchronousProfile",
    "Target",
    "aggregate",
    "run_bench",
    "vllm_keys",
]
