"""A runtime comparison: the plan, what was measured per machine and runtime, and the recommendation.

`beacon compare` benchmarks several runtimes (or several settings of one runtime: each is a
`RuntimeVariant`) one after the other on the same machine, with the same prompts, load profile
and output lengths. What one variant gave on one machine is a `RuntimeTrial`: whether it started
and how long that took, the timed requests after start and after idle, the sweep's stored
benchmark, the weights and settings it ran with, and the machine's price.

`recommend` turns the trials of one machine into a verdict per variant, computed from what was
measured and probed, never asserted: the variant with the lowest GLM per million output tokens
among those meeting the suite's SLOs wins, and every other variant says why it lost (it did not
start, the provider was lost, no request completed, too slow for the SLOs, or dearer per token).

Pure functions over typed figures: the requestor (`requestor/work/compare.py`), the report
(`reports/comparison.py`) and `--runtime auto` all call the same code.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from beacon_golem.core.errors import UsageError
from beacon_golem.core.metrics import SLO
from beacon_golem.core.node import StartupTimes, WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings

RuntimeKind = Literal["llamacpp", "ollama", "dmr", "vllm"]
RUNTIME_KINDS: tuple[str, ...] = ("llamacpp", "ollama", "dmr", "vllm")
#: The runtime a provider gets when no comparison says better (Beacon's plan: Ollama as the fallback).
FALLBACK_RUNTIME = "ollama"


def machine_gpu(gpu_names: list[str], extra: dict[str, object]) -> str | None:
    """A machine's GPU as one key (`NVIDIA L4`, `2x NVIDIA H100`): as the node reports it, else as
    its Golem offer says (`extra.gpu`: the devices of GAP-35, in a VM that sees no GPU itself)."""
    names = list(gpu_names)
    if not names:
        gpu = extra.get("gpu")
        devices = gpu.get("devices") if isinstance(gpu, dict) else None
        for device in devices if isinstance(devices, list) else []:
            if isinstance(device, dict) and device.get("model"):
                quantity = device.get("quantity")
                names += [str(device["model"])] * (quantity if isinstance(quantity, int) and quantity > 0 else 1)
        if not names and isinstance(gpu, dict) and gpu.get("model"):
            names = [str(gpu["model"])]
    if not names:
        return None
    return names[0] if len(names) == 1 else f"{len(names)}x {names[0]}"


#: Weight formats each runtime loads: GGUF for the llama.cpp family, safetensors for vLLM.
WEIGHT_FORMAT = {"llamacpp": "gguf", "ollama": "gguf", "dmr": "gguf", "vllm": "safetensors"}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]*$")


class RuntimeVariant(BaseModel):
    """One runtime with one set of settings (and its model), as a comparison names it."""

    model_config = ConfigDict(extra="forbid")

    #: Unique within a comparison: `vllm`, or `llamacpp:parallel=1` for a second llama.cpp.
    label: str = Field(min_length=1, max_length=120)
    runtime: RuntimeKind
    #: The model this runtime loads (a GGUF file, an Ollama or DMR name, a Hugging Face id); None: the node's.
    model: str | None = Field(default=None, min_length=1, max_length=500)
    settings: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _LABEL.match(value):
            raise ValueError("letters, digits and _ . : = + - only, starting with a letter or digit")
        return value

    @classmethod
    def parse(cls, text: str) -> RuntimeVariant:
        """`vllm`, `llamacpp:parallel=1`, `ollama:parallel=4:max_queue=64`, `dmr:model=ai/smollm2`."""
        text = text.strip()
        name, *pairs = text.split(":")
        if name not in RUNTIME_KINDS:
            raise UsageError(f"--runtimes {text!r}: {name!r} is not a runtime (choose {', '.join(RUNTIME_KINDS)})")
        model = None
        rest = []
        for pair in pairs:
            if pair.startswith("model="):
                model = pair.removeprefix("model=") or None
            else:
                rest.append(pair)
        settings = RuntimeSettings.parse_pairs(rest, f"--runtimes {text}").check_for(name)
        label = text if not model else ":".join([name, *rest]) or name
        return cls(label=label, runtime=name, model=model, settings=settings)  # type: ignore[arg-type]


class ComparisonPlan(BaseModel):
    """What `beacon compare` runs on every machine, stored with the run."""

    model_config = ConfigDict(extra="forbid")

    variants: list[RuntimeVariant] = Field(min_length=1)
    #: Requests Beacon's jobs keep in flight on one node (a suite's limits.per_node_concurrency).
    beacon_concurrency: int = Field(default=4, ge=1, le=1024)
    #: Seconds left idle before the after-idle request (0: not measured). DMR unloads after 300.
    idle_s: float = Field(default=0.0, ge=0.0, le=86_400.0)
    #: The timed requests after start and after idle.
    probe_prompt: str = Field(default="Say hello in one short sentence.", min_length=1, max_length=2000)
    probe_max_tokens: int = Field(default=16, ge=1, le=4096)
    #: GLM per hour for machines without a Golem agreement (local, static): stored as a given price.
    glm_per_hour: float | None = Field(default=None, ge=0.0)
    #: A step meets the suite's SLOs when at least this share of its requests met every one of them.
    slo_share: float = Field(default=0.9, gt=0.0, le=1.0)
    #: Drop the machine's page cache before each start (root only), so each runtime reads its weights from disk.
    drop_page_cache: bool = True

    def variant(self, label: str) -> RuntimeVariant:
        return next(v for v in self.variants if v.label == label)

    @field_validator("variants")
    @classmethod
    def _unique(cls, variants: list[RuntimeVariant]) -> list[RuntimeVariant]:
        labels = [v.label for v in variants]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} given twice: give each setting its own label (llamacpp:parallel=1)")
        return variants


class RequestProbe(BaseModel):
    """One timed request outside the sweep (the first after start, or the first after idle)."""

    ok: bool
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    completion_tokens: int | None = None
    #: The runtime's own model-load time inside this request (Ollama's load_duration), in ms.
    load_ms: float | None = None
    #: Seconds the node was left idle before this request (after-idle requests only).
    after_idle_s: float | None = None
    error: str | None = None


class Price(BaseModel):
    glm_per_hour: float = Field(ge=0.0)
    start_glm: float = Field(default=0.0, ge=0.0)
    #: "agreement": the provider's offer in the Golem agreement; "given": `--glm-per-hour` for local or static.
    source: Literal["agreement", "given"]


TrialStatus = Literal["done", "failed", "lost"]


class RuntimeTrial(BaseModel):
    """One variant on one machine: did it start, how fast, what it served, what the sweep measured."""

    machine: str
    variant: str
    runtime: str
    #: The stored node of this runtime on that machine (`<machine>/<variant>`).
    node_id: str | None = None
    status: TrialStatus
    reason: str | None = None
    model: str | None = None
    #: The settings given (`RuntimeSettings.given()`) and what the runtime reported (`/info` settings).
    settings: dict[str, object] = Field(default_factory=dict)
    server_settings: dict[str, object] = Field(default_factory=dict)
    weights: WeightsInfo | None = None
    runtime_version: str | None = None
    startup: StartupTimes | None = None
    #: Seconds the requestor waited for the node to switch to this runtime.
    switch_s: float | None = None
    first_request: RequestProbe | None = None
    idle_request: RequestProbe | None = None
    bench_id: int | None = None
    provider_id: str | None = None
    provider_name: str | None = None
    gpu_model: str | None = None
    hostname: str | None = None
    price: Price | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def cold_start_s(self) -> float | None:
        """Launch to the first token of the first request: what a fresh rental waits before it is served."""
        if self.startup is None or self.startup.health_s is None:
            return None
        if self.first_request is None or self.first_request.ttft_ms is None:
            return None
        return self.startup.health_s + self.first_request.ttft_ms / 1000.0

    @property
    def model_load(self) -> tuple[float | None, str | None]:
        """Seconds to load the model and where the figure comes from: the runtime's own (Ollama's
        load_duration in the first request) where it has one, else from answering to ready."""
        if self.first_request is not None and self.first_request.load_ms is not None:
            return self.first_request.load_ms / 1000.0, f"{self.runtime}'s own figure (load_duration)"
        s = self.startup
        if s is not None and s.ready_s is not None and s.answering_s is not None:
            return max(s.ready_s - s.answering_s, 0.0), "measured: runtime answering -> model ready"
        return None, None


# ---------------------------------------------------------------------------------------
# What the recommendation reads


class StepFigure(BaseModel):
    """One step of a sweep, reduced to what the recommendation compares."""

    concurrency: int | None
    label: str
    completed: int
    failed: int = 0
    overloaded: bool = False
    output_throughput: float
    ttft_p50_ms: float
    tpot_p50_ms: float
    e2el_p50_ms: float = 0.0
    #: Requests meeting every SLO per second, over completed per second (None without SLOs).
    goodput_share: float | None = None

    @property
    def usable(self) -> bool:
        return self.completed > 0 and not self.overloaded


class TrialFigures(BaseModel):
    """A trial with its sweep's steps and the machine's probe verdict: all `recommend` needs."""

    machine: str
    variant: str
    runtime: str
    status: TrialStatus
    reason: str | None = None
    cold_start_s: float | None = None
    model_load_s: float | None = None
    model_load_source: str | None = None
    steps: list[StepFigure] = Field(default_factory=list)
    price: Price | None = None
    #: The probe's verdict for this runtime on the machine (None: not probed).
    can_run: bool | None = None
    probe_reasons: list[str] = Field(default_factory=list)
    weights: WeightsInfo | None = None
    idle_ttft_ms: float | None = None
    idle_load_ms: float | None = None
    first_ttft_ms: float | None = None

    def step_at(self, concurrency: int) -> StepFigure | None:
        return next((s for s in self.steps if s.concurrency == concurrency and s.completed), None)

    @property
    def best(self) -> StepFigure | None:
        """The highest output throughput short of overload (as `BenchResult.best_step`)."""
        usable = [s for s in self.steps if s.usable]
        return max(usable, key=lambda s: s.output_throughput, default=None)

    def meets(self, step: StepFigure, slo: SLO | None, share: float) -> bool:
        if not step.usable:
            return False
        if slo is None or not slo.given():
            return True
        if step.goodput_share is not None:
            return step.goodput_share + 1e-9 >= share
        # No goodput recorded: judge the medians.
        return not (
            (slo.ttft_ms is not None and step.ttft_p50_ms > slo.ttft_ms)
            or (slo.tpot_ms is not None and step.tpot_p50_ms > slo.tpot_ms)
            or (slo.e2el_ms is not None and step.e2el_p50_ms > slo.e2el_ms)
        )

    def best_meeting(self, slo: SLO | None, share: float) -> StepFigure | None:
        """The highest output throughput among the steps that meet the SLOs."""
        good = [s for s in self.steps if self.meets(s, slo, share)]
        return max(good, key=lambda s: s.output_throughput, default=None)

    def glm_per_million(self, step: StepFigure | None) -> float | None:
        """GLM per million output tokens at a step: the hourly price over what an hour at that rate yields."""
        if step is None or self.price is None or step.output_throughput <= 0:
            return None
        return self.price.glm_per_hour / (step.output_throughput * 3600.0) * 1e6


class Verdict(BaseModel):
    machine: str
    variant: str
    runtime: str
    recommended: bool
    reason: str
    #: The figure the ranking used: GLM per million output tokens, or output tok/s when no price is known.
    score: float | None = None


def _step_name(step: StepFigure) -> str:
    return f"c={step.concurrency}" if step.concurrency is not None else step.label


def _slo_text(slo: SLO) -> str:
    parts = [f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in slo.model_dump().items() if v is not None]
    return ", ".join(parts)


def _miss(t: TrialFigures, slo: SLO, share: float) -> str:
    best = t.best
    assert best is not None
    got = f"{best.goodput_share:.0%} of its requests met them" if best.goodput_share is not None else "its medians miss them"
    return (
        f"too slow for the suite's SLOs ({_slo_text(slo)}; a step needs {share:.0%} of its requests to meet them): "
        f"at its best step {_step_name(best)} TTFT p50 {best.ttft_p50_ms:,.1f} ms, TPOT p50 {best.tpot_p50_ms:,.2f} ms, "
        f"{got}"
    )


def recommend(trials: list[TrialFigures], slo: SLO | None = None, share: float = 0.9) -> list[Verdict]:
    """A verdict for every variant of one machine's trials, in the order given; at most one is recommended."""
    verdicts: dict[str, Verdict] = {}
    candidates: list[tuple[TrialFigures, StepFigure]] = []
    for t in trials:

        def lose(reason: str, t: TrialFigures = t) -> None:
            verdicts[t.variant] = Verdict(machine=t.machine, variant=t.variant, runtime=t.runtime, recommended=False,
                                          reason=reason)  # fmt: skip

        probe = "; ".join(t.probe_reasons)
        if t.status == "lost":
            lose(f"the provider was lost mid-comparison ({t.reason or 'no reason given'}): no figures kept")
        elif t.status == "failed":
            why = f"did not start: {t.reason or 'no reason given'}"
            if t.can_run is False and probe:
                why += f" (the probe said it cannot run here: {probe})"
            lose(why)
        elif t.best is None:
            lose("no request of its benchmark completed" + (f" ({t.reason})" if t.reason else ""))
        else:
            step = t.best_meeting(slo, share)
            if step is None:
                assert slo is not None
                lose(_miss(t, slo, share))
            else:
                candidates.append((t, step))
    priced = bool(candidates) and all(t.price is not None for t, _ in candidates)

    def key(item: tuple[TrialFigures, StepFigure]) -> tuple[float, float]:
        t, step = item
        cold = t.cold_start_s if t.cold_start_s is not None else float("inf")
        if priced:
            return (t.glm_per_million(step) or float("inf"), cold)
        return (-step.output_throughput, cold)

    ranked = sorted(candidates, key=key)
    if ranked:
        win, win_step = ranked[0]
        tput = f"{win_step.output_throughput:,.1f} output tok/s at {_step_name(win_step)}"
        meets = "meeting the suite's SLOs" if slo is not None and slo.given() else "(the suite sets no SLOs)"
        if priced:
            cost = win.glm_per_million(win_step)
            reason = f"lowest GLM per million output tokens {meets}: {cost:.4g} GLM/Mtok ({tput})"
            score: float | None = cost
        else:
            reason = (f"highest output throughput {meets}: {tput}; no price known, and on one machine the fastest "
                      "runtime is the cheapest per token")  # fmt: skip
            score = win_step.output_throughput
        unmeasured = [t.variant for t in trials if t.status == "lost"]
        if unmeasured:  # the winner of what was measured; what the lost provider never ran is no contender
            reason += (
                f"; among the runtimes measured before the provider was lost (not measured: {', '.join(unmeasured)})"
            )
        verdicts[win.variant] = Verdict(machine=win.machine, variant=win.variant, runtime=win.runtime,
                                        recommended=True, reason=reason, score=score)  # fmt: skip
        for t, step in ranked[1:]:
            mine = f"{step.output_throughput:,.1f} tok/s at {_step_name(step)}"
            if priced:
                cost = t.glm_per_million(step) or float("inf")
                ratio = cost / (win.glm_per_million(win_step) or cost)
                reason = f"dearer per token: {cost:.4g} GLM/Mtok, {ratio:.2f}x {win.variant}'s ({mine})"
                score = cost
            else:
                pct = (1 - step.output_throughput / win_step.output_throughput) * 100 if win_step.output_throughput else 0
                reason = f"slower: {mine}, {pct:.0f}% below {win.variant}'s {win_step.output_throughput:,.1f}"
                score = step.output_throughput
            if key((t, step))[0] == key((win, win_step))[0]:
                reason = f"as fast as {win.variant} ({mine}) but slower to start"
            verdicts[t.variant] = Verdict(machine=t.machine, variant=t.variant, runtime=t.runtime, recommended=False,
                                          reason=reason, score=score)  # fmt: skip
    return [verdicts[t.variant] for t in trials]


def winners_by_load(trials: list[TrialFigures], slo: SLO | None = None, share: float = 0.9) -> dict[int, str]:
    """Concurrency -> the variant with the highest output throughput there (meeting the SLOs)."""
    levels = sorted({s.concurrency for t in trials for s in t.steps if s.concurrency is not None})
    out: dict[int, str] = {}
    for level in levels:
        best: tuple[float, str] | None = None
        for t in trials:
            if t.status != "done":
                continue
            step = t.step_at(level)
            if step is None or not t.meets(step, slo, share):
                continue
            if best is None or step.output_throughput > best[0]:
                best = (step.output_throughput, t.variant)
        if best is not None:
            out[level] = best[1]
    return out


def like_for_like(weights: dict[str, WeightsInfo | None]) -> list[str]:
    """Plain sentences saying where the variants' weights differ (format, quantization, context)."""
    known = {k: w for k, w in weights.items() if w is not None}
    notes: list[str] = []
    for field, what in (("format", "weight formats"), ("quantization", "quantizations"), ("context_length", "context lengths")):
        values = {k: getattr(w, field) for k, w in known.items() if getattr(w, field) not in (None, "unknown")}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in values.items())
            notes.append(f"not like for like: the {what} differ ({listed})")
    missing = sorted(k for k, w in weights.items() if w is None or w.quantization is None)
    if missing and len(weights) > 1:
        notes.append(f"quantization not reported by {', '.join(missing)}: check the weights are the same")
    return notes
