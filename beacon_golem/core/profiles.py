"""Load profiles: how requests are issued, when a step stops, and when the server counts as overloaded.

A `Profile` expands into one or more `Step`s; the load generator runs one step at a time.

- synchronous: one request at a time (concurrency 1).
- concurrency: N requests always in flight; a finished request is replaced at once.
- sweep: a concurrency step per level (default 1, 2, 4, ..., 256), stopping the sweep at
  the first step that overloads the server.
- rate: requests sent at a constant rate (evenly spaced), optionally capped in flight.
- poisson: request gaps drawn from a seeded gamma distribution as `vllm bench serve` does
  (burstiness 1 is a Poisson process; below 1 burstier, above 1 more even), rescaled so the
  n-th request is sent at n / rate like vLLM, optionally capped in flight.

Every step stops on whichever comes first of `num_prompts` requests and `duration_s`
seconds (requests in flight then run to their end), after `warmup` requests that are not counted.
"""

from __future__ import annotations

import random
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SWEEP: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class OverloadPolicy(BaseModel):
    """When to stop a step (and the sweep) early because the server is overloaded.

    Checked every `check_interval_s` while a step runs, once `min_requests` have finished:
    - error rate: failed / finished above `max_error_rate`;
    - TTFT growth: the median TTFT of the last `window` finished requests above
      `max_ttft_growth` times the median of the first `window`, and above `min_ttft_ms`
      (tiny TTFTs grow by large factors from noise alone);
    - server queue: the runtime's own queue gauge (llama-server `requests_deferred`,
      vLLM `num_requests_waiting`) above `max_server_queue`, when the runtime exposes it.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_error_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    min_requests: int = Field(default=8, ge=1)
    max_ttft_growth: float | None = Field(default=20.0, gt=1.0)
    min_ttft_ms: float = Field(default=2000.0, ge=0.0)
    window: int = Field(default=8, ge=1)
    max_server_queue: int | None = Field(default=None, ge=0)
    check_interval_s: float = Field(default=0.25, gt=0.0)
    #: After an early stop, how long requests in flight may run before they are cancelled.
    drain_timeout_s: float = Field(default=30.0, ge=0.0)


class Step(BaseModel):
    """One measured run at one load level."""

    model_config = ConfigDict(extra="forbid")

    index: int = 0
    label: str
    mode: Literal["concurrency", "rate"]
    #: Requests in flight (mode concurrency) or the in-flight cap (mode rate; None: no cap).
    concurrency: int | None = None
    #: Requests per second (mode rate); inf sends everything at once.
    rate: float | None = None
    burstiness: float | None = None
    seed: int = 0
    num_prompts: int | None = None
    duration_s: float | None = None
    warmup: int = 0
    overload: OverloadPolicy = Field(default_factory=OverloadPolicy)

    def send_offsets(self, n: int) -> list[float]:
        """When each of `n` requests is sent, in seconds from the step's start (mode rate).

        Constant rate: i / rate. Poisson/gamma: cumulative gamma(burstiness, 1 / (rate *
        burstiness)) gaps from a seeded generator, rescaled so the last lands at n / rate
        (vLLM's normalisation, which keeps throughput stable across seeds).
        """
        assert self.mode == "rate" and self.rate is not None
        if n <= 0:
            return []
        if self.rate == float("inf"):
            return [0.0] * n
        if self.burstiness is None:
            return [i / self.rate for i in range(n)]
        rng = random.Random(self.seed)
        theta = 1.0 / (self.rate * self.burstiness)
        offsets: list[float] = []
        total = 0.0
        for _ in range(n):
            total += rng.gammavariate(self.burstiness, theta)
            offsets.append(total)
        scale = (n / self.rate) / offsets[-1] if offsets[-1] > 0 else 1.0
        return [o * scale for o in offsets]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_prompts: int | None = Field(default=100, ge=1, description="Requests per step (stop condition)")
    duration_s: float | None = Field(default=None, gt=0, description="Seconds per step (stop condition)")
    warmup: int = Field(default=0, ge=0, description="Requests sent before each step and not counted")
    seed: int = 0
    overload: OverloadPolicy = Field(default_factory=OverloadPolicy)

    @model_validator(mode="after")
    def _some_stop(self) -> _Base:
        if self.num_prompts is None and self.duration_s is None:
            raise ValueError("give num_prompts or duration_s: a step needs a stop condition")
        return self

    def _step(self, index: int, label: str, **kw: object) -> Step:
        return Step(
            index=index,
            label=label,
            seed=self.seed + index,
            num_prompts=self.num_prompts,
            duration_s=self.duration_s,
            warmup=self.warmup,
            overload=self.overload,
            **kw,  # type: ignore[arg-type]
        )


class SynchronousProfile(_Base):
    kind: Literal["synchronous"] = "synchronous"

    def steps(self) -> list[Step]:
        return [self._step(0, "synchronous", mode="concurrency", concurrency=1)]


class ConcurrencyProfile(_Base):
    kind: Literal["concurrency"] = "concurrency"
    concurrency: int = Field(ge=1, le=100_000)

    def steps(self) -> list[Step]:
        return [self._step(0, f"concurrency {self.concurrency}", mode="concurrency", concurrency=self.concurrency)]


class SweepProfile(_Base):
    kind: Literal["sweep"] = "sweep"
    concurrencies: list[int] = Field(default_factory=lambda: list(DEFAULT_SWEEP), min_length=1)
    #: Each step sends at least this many requests per concurrent slot (so every slot is used).
    min_prompts_per_slot: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _positive(self) -> SweepProfile:
        if any(c < 1 for c in self.concurrencies):
            raise ValueError("concurrencies: every level must be at least 1")
        return self

    def steps(self) -> list[Step]:
        steps = []
        for i, c in enumerate(self.concurrencies):
            step = self._step(i, f"concurrency {c}", mode="concurrency", concurrency=c)
            if step.num_prompts is not None and step.num_prompts < c * self.min_prompts_per_slot:
                step.num_prompts = c * self.min_prompts_per_slot
            steps.append(step)
        return steps


class RateProfile(_Base):
    kind: Literal["rate"] = "rate"
    rate: float = Field(gt=0, description="Requests per second (inf: all at once)")
    max_concurrency: int | None = Field(default=None, ge=1)

    def steps(self) -> list[Step]:
        label = f"rate {self.rate:g}/s"
        return [self._step(0, label, mode="rate", rate=self.rate, concurrency=self.max_concurrency)]


class PoissonProfile(_Base):
    kind: Literal["poisson"] = "poisson"
    rate: float = Field(gt=0, description="Mean requests per second")
    burstiness: float = Field(default=1.0, gt=0, description="Gamma shape; 1 is a Poisson process")
    max_concurrency: int | None = Field(default=None, ge=1)

    def steps(self) -> list[Step]:
        label = f"poisson {self.rate:g}/s"
        return [
            self._step(
                0, label, mode="rate", rate=self.rate, burstiness=self.burstiness, concurrency=self.max_concurrency
            )
        ]


Profile = Annotated[
    SynchronousProfile | ConcurrencyProfile | SweepProfile | RateProfile | PoissonProfile,
    Field(discriminator="kind"),
]
PROFILE_KINDS = ("synchronous", "concurrency", "sweep", "rate", "poisson")
