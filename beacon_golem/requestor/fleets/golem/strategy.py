"""Choosing providers: which GPU offers are acceptable, and which of those are best.

Pure functions do the work (`view_offer`, `rejection`, `offer_score`), so they test without
yapapi; `GpuMarketStrategy` wraps yapapi's `LeastExpensiveLinearPayuMS` (whose caps are GLM per
second of each usage counter) and applies them to every offer the engine scores.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Collection, Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field
from yapapi import rest
from yapapi.props import com
from yapapi.strategy import SCORE_REJECTED, BaseMarketStrategy, LeastExpensiveLinearPayuMS, WrappingMarketStrategy

from beacon_golem.core.log import get_logger
from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.gpu import GpuInfo, flatten, parse_version, read_gpu
from beacon_golem.requestor.fleets.golem.records import ProviderRecord

log = get_logger(__name__)

SECONDS_PER_HOUR = Decimal(3600)
KNOWN_COUNTERS = (com.Counter.TIME.value, com.Counter.CPU.value)
#: Score scale: an offer at this price per GiB of VRAM per hour scores half the maximum.
PRICE_REF_GLM_PER_GIB_HOUR = 0.01
#: Past throughput at this many tokens per GLM raises a score by half (at most doubles it).
THROUGHPUT_REF_TOKENS_PER_GLM = 100_000.0

ProviderRecordLookup = Callable[[str], "ProviderRecord | None | Awaitable[ProviderRecord | None]"]


class OfferCriteria(BaseModel):
    """What an offer must meet; built from `GolemFleetConfig.criteria()`-like fields."""

    require_gpu: bool = True
    min_vram_gib: float = 0.0
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    min_cuda: str | None = None
    max_price_glm_per_hour: Decimal
    max_start_price_glm: Decimal
    expected_cpu_threads: float = 1.0
    expected_hours: float = 1.0
    allowed_regions: list[str] = Field(default_factory=list)
    max_failure_rate: float = 0.5

    @classmethod
    def from_config(cls, config: GolemFleetConfig) -> OfferCriteria:
        return cls(
            require_gpu=not config.cpu_only,
            min_vram_gib=config.min_vram_gib,
            include=config.gpu_include,
            exclude=config.gpu_exclude,
            min_cuda=config.min_cuda,
            max_price_glm_per_hour=config.max_price_glm_per_hour,
            max_start_price_glm=config.start_price_cap,
            expected_cpu_threads=config.expected_cpu_threads,
            expected_hours=config.duration_s / 3600,
            allowed_regions=config.allowed_regions,
            max_failure_rate=config.max_failure_rate,
        )


class OfferPrice(BaseModel):
    """A linear price, read from an offer. `coeffs` are GLM per unit of each usage counter."""

    coeffs: dict[str, float]
    start_glm: Decimal
    scheme: str | None = None

    def hourly_glm(self, cpu_threads: float = 1.0) -> Decimal:
        """GLM per hour of rent: duration, plus CPU time at `cpu_threads` busy threads."""
        per_s = Decimal(str(self.coeffs.get(com.Counter.TIME.value, 0.0)))
        per_s += Decimal(str(self.coeffs.get(com.Counter.CPU.value, 0.0))) * Decimal(str(cpu_threads))
        return (per_s * SECONDS_PER_HOUR).quantize(Decimal("1e-12"))  # coefficients are floats

    @property
    def unknown_counters(self) -> list[str]:
        """Counters priced above zero whose use we cannot foresee (so cannot budget)."""
        return sorted(c for c, v in self.coeffs.items() if v > 0 and c not in KNOWN_COUNTERS)


class OfferView(BaseModel):
    provider_id: str
    provider_name: str | None = None
    gpu: GpuInfo | None = None
    price: OfferPrice | None = None
    region: str | None = None


def read_price(props: Mapping[str, Any]) -> OfferPrice | None:
    """The offer's linear price, or None when it has no readable linear price."""
    flat = flatten(props)
    coeffs = flat.get(com.LINEAR_COEFFS)
    usage = flat.get(com.DEFINED_USAGES)
    if not isinstance(coeffs, list) or not isinstance(usage, list) or len(coeffs) != len(usage) + 1:
        return None
    try:
        values = [float(c) for c in coeffs]
    except (TypeError, ValueError):
        return None
    return OfferPrice(
        coeffs={str(u): v for u, v in zip(usage, values, strict=False)},
        start_glm=Decimal(str(values[-1])),
        scheme=flat.get(com.SCHEME),
    )


def view_offer(props: Mapping[str, Any], provider_id: str, regions: Mapping[str, str] | None = None) -> OfferView:
    flat = flatten(props)
    return OfferView(
        provider_id=provider_id,
        provider_name=flat.get("golem.node.id.name"),
        gpu=read_gpu(flat),
        price=read_price(flat),
        region=(regions or {}).get(provider_id),
    )


def matches(model: str, patterns: Collection[str]) -> bool:
    """Case-insensitive glob match: `*4090*`, `NVIDIA A100*`."""
    name = model.lower()
    return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def per_second_caps(max_glm_per_hour: Decimal, cpu_threads: float = 1.0) -> dict[com.Counter, Decimal]:
    """yapapi's caps (GLM per second of each counter) from a price per hour: no single counter
    may alone cost more than the hourly cap."""
    per_s = max_glm_per_hour / SECONDS_PER_HOUR
    threads = Decimal(str(max(cpu_threads, 1.0)))
    return {com.Counter.TIME: per_s, com.Counter.CPU: per_s / threads}


def rejection(
    view: OfferView,
    criteria: OfferCriteria,
    record: ProviderRecord | None = None,
    blacklisted: bool = False,
) -> tuple[str, str] | None:
    """Why an offer is unacceptable, as (key, explanation); None when it is acceptable."""
    if blacklisted:
        return "blacklist", f"provider {view.provider_id} is blacklisted for this run"
    if record is not None and record.is_bad(criteria.max_failure_rate):
        why = "banned" if record.banned else f"failed {record.failures} of {record.runs} runs"
        return "bad record", f"provider {view.provider_id} has a bad record ({why})"
    if criteria.allowed_regions and view.region not in criteria.allowed_regions:
        return "region", f"region {view.region or 'unknown'} not in {', '.join(criteria.allowed_regions)}"
    if criteria.require_gpu:
        gpu = view.gpu
        if gpu is None or not gpu.models:
            return "no gpu", "offer describes no GPU"
        if gpu.vram_gib < criteria.min_vram_gib:
            return "vram", f"{gpu.vram_gib:g} GiB VRAM < {criteria.min_vram_gib:g} GiB"
        if criteria.include and not any(matches(m, criteria.include) for m in gpu.models):
            return "gpu model", f"{gpu.model} matches none of {', '.join(criteria.include)}"
        if criteria.exclude and any(matches(m, criteria.exclude) for m in gpu.models):
            return "gpu model", f"{gpu.model} is excluded"
        if criteria.min_cuda:
            wanted = parse_version(criteria.min_cuda) or ()
            have = gpu.cuda
            if have is None:
                return "cuda", "offer states no CUDA version"
            if have < wanted:
                return "cuda", f"CUDA {'.'.join(map(str, have))} < {criteria.min_cuda}"
    price = view.price
    if price is None:
        return "pricing", "offer has no linear price"
    if price.scheme not in (None, com.BillingScheme.PAYU.value):
        return "pricing", f"billing scheme {price.scheme}"
    if any(v < 0 for v in price.coeffs.values()) or price.start_glm < 0:
        return "pricing", "negative price"
    if price.unknown_counters:
        return "pricing", f"prices counters we cannot budget: {', '.join(price.unknown_counters)}"
    hourly = price.hourly_glm(criteria.expected_cpu_threads)
    if hourly > criteria.max_price_glm_per_hour:
        return "price", f"{hourly:.4f} GLM/h > {criteria.max_price_glm_per_hour} GLM/h"
    if price.start_glm > criteria.max_start_price_glm:
        return "price", f"start price {price.start_glm} GLM > {criteria.max_start_price_glm} GLM"
    return None


def offer_score(view: OfferView, record: ProviderRecord | None = None, criteria: OfferCriteria | None = None) -> float:
    """Higher is better, always in (0, 100): cheaper per GiB of VRAM, and better past tokens per GLM."""
    threads = criteria.expected_cpu_threads if criteria else 1.0
    hours = max(criteria.expected_hours, 1e-6) if criteria else 1.0
    hourly = 0.0
    if view.price is not None:
        hourly = float(view.price.hourly_glm(threads)) + float(view.price.start_glm) / hours
    vram = view.gpu.total_vram_gib if view.gpu and view.gpu.total_vram_gib > 0 else 1.0
    score = 50.0 / (1.0 + (hourly / vram) / PRICE_REF_GLM_PER_GIB_HOUR)
    if record is not None and record.tokens_per_glm:
        score *= 1.0 + record.tokens_per_glm / (record.tokens_per_glm + THROUGHPUT_REF_TOKENS_PER_GLM)
    return max(score, 1e-9)


class GpuMarketStrategy(WrappingMarketStrategy):
    """Rejects offers that fail our criteria, then lets yapapi's linear strategy apply its
    per-counter caps, then scores what is left with `offer_score`.

    `blacklist` is a live set: the fleet adds providers that failed during the run.
    """

    def __init__(
        self,
        criteria: OfferCriteria,
        *,
        base_strategy: BaseMarketStrategy | None = None,
        blacklist: set[str] | None = None,
        provider_record: ProviderRecordLookup | None = None,
        regions: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_strategy
            or LeastExpensiveLinearPayuMS(
                expected_time_secs=int(criteria.expected_hours * 3600),
                max_fixed_price=criteria.max_start_price_glm,
                max_price_for=per_second_caps(criteria.max_price_glm_per_hour, criteria.expected_cpu_threads),
            )
        )
        self.criteria = criteria
        self.blacklist: set[str] = blacklist if blacklist is not None else set()
        self.provider_record = provider_record
        self.regions = dict(regions or {})
        #: Offers seen, by outcome ("accepted" or a rejection key): for progress lines.
        self.tally: Tally[str] = Tally()

    async def record_for(self, provider_id: str) -> ProviderRecord | None:
        if self.provider_record is None:
            return None
        try:
            found = self.provider_record(provider_id)
            if inspect.isawaitable(found):
                found = await found
            return found  # type: ignore[return-value]
        except Exception as exc:  # a broken store must not stop the market
            log.warning("golem.provider_record_failed", provider_id=provider_id, error=str(exc))
            return None

    async def score_offer(self, offer: rest.market.OfferProposal) -> float:
        view = view_offer(offer.props, offer.issuer, self.regions)
        record = await self.record_for(offer.issuer)
        reason = rejection(view, self.criteria, record, offer.issuer in self.blacklist)
        if reason is not None:
            self.tally[reason[0]] += 1
            log.debug("golem.offer_rejected", provider_id=offer.issuer, reason=reason[1])
            return SCORE_REJECTED
        try:
            base_score = await self.base_strategy.score_offer(offer)
        except Exception as exc:  # yapapi's ComLinear refuses e.g. integer coefficients
            log.debug("golem.offer_unreadable", provider_id=offer.issuer, error=str(exc))
            base_score = SCORE_REJECTED
        if base_score < 0:
            self.tally["price cap"] += 1
            return SCORE_REJECTED
        self.tally["accepted"] += 1
        return offer_score(view, record, self.criteria)
