"""Scripted providers: what each offers and how it negotiates, as a ya-provider agent would.

Each provider has a provider id (`0x` + 40 hex) and a name, and offers the `vm-nvidia` runtime
with GAP-35 GPU properties in one of the two layouts real providers use (single GPU:
`golem.!exp.gap-35.v1.inf.gpu.model`...; several GPUs: `...gpu.d0.model`, `...gpu.d0.quantity`,
`...gpu.cuda.driver.version`), the `vpn` capability, memory/storage/threads, linear prices per usage
counter (`golem.usage.duration_sec`, `golem.usage.cpu_sec`, then the start price: yapapi's
`ComLinear`), one payment address per platform and the negotiable payment properties.
Models, VRAM, CUDA versions and prices are drawn from `--seed`, so a seed names a market.

Negotiation follows ya-provider's built-in negotiators (agent/provider/src/market/negotiator):
the demand must name `golem.com.payment.chosen-platform`; `LimitExpiration` accepts expirations from
5 minutes to 10 hours when the requestor promises to accept debit notes
(`golem.com.payment.debit-notes.accept-timeout?`), else up to 30 minutes, takes a shorter
acceptance deadline than its own and refuses a longer one; the debit-note interval and payment
timeout are taken from the demand within range, or dropped when the demand has none (a demand
over 10 hours without a payment timeout is refused); and a provider holds one agreement at a time.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from beacon_golem.sandbox import constraints
from beacon_golem.sandbox.records import ProviderRecord

GAP35 = "golem.!exp.gap-35.v1.inf.gpu"
USAGE_VECTOR = ["golem.usage.duration_sec", "golem.usage.cpu_sec"]

PROP_ACCEPT_TIMEOUT = "golem.com.payment.debit-notes.accept-timeout?"
PROP_DEBIT_NOTE_INTERVAL = "golem.com.scheme.payu.debit-note.interval-sec?"
PROP_PAYMENT_TIMEOUT = "golem.com.scheme.payu.payment-timeout-sec?"
PROP_EXPIRATION = "golem.srv.comp.expiration"
PROP_CHOSEN_PLATFORM = "golem.com.payment.chosen-platform"
PROP_TASK_PACKAGE = "golem.srv.comp.task_package"

#: The erc20 networks yagna 0.17.6 lists (`yagna payment driver list`), with their token.
PAYMENT_PLATFORMS = [
    "erc20-mainnet-glm",
    "erc20-polygon-glm",
    "erc20-holesky-tglm",
    "erc20-hoodi-tglm",
    "erc20-sepolia-tglm",
    "erc20-amoy-tglm",
]


class GpuModel(BaseModel):
    model: str
    memory_gib: float
    compute_capability: str
    cuda_cores: int
    bandwidth_gib: int


GPU_CATALOG = [
    GpuModel(
        model="NVIDIA GeForce RTX 3060", memory_gib=12, compute_capability="8.6", cuda_cores=3584, bandwidth_gib=360
    ),
    GpuModel(
        model="NVIDIA GeForce RTX 3090", memory_gib=24, compute_capability="8.6", cuda_cores=10496, bandwidth_gib=936
    ),
    GpuModel(
        model="NVIDIA GeForce RTX 4070 Ti", memory_gib=12, compute_capability="8.9", cuda_cores=7680, bandwidth_gib=504
    ),
    GpuModel(
        model="NVIDIA GeForce RTX 4090", memory_gib=24, compute_capability="8.9", cuda_cores=16384, bandwidth_gib=1008
    ),
    GpuModel(model="NVIDIA RTX A4000", memory_gib=16, compute_capability="8.6", cuda_cores=6144, bandwidth_gib=448),
    GpuModel(model="NVIDIA L4", memory_gib=24, compute_capability="8.9", cuda_cores=7424, bandwidth_gib=300),
    GpuModel(
        model="NVIDIA A100-SXM4-80GB", memory_gib=80, compute_capability="8.0", cuda_cores=6912, bandwidth_gib=2039
    ),
    GpuModel(model="NVIDIA H100 PCIe", memory_gib=80, compute_capability="9.0", cuda_cores=14592, bandwidth_gib=2000),
]

#: CUDA version -> an NVIDIA Linux driver that supports it.
CUDA_DRIVERS = {
    "11.8": "520.61.05",
    "12.2": "535.54.03",
    "12.4": "550.54.14",
    "12.6": "560.35.03",
    "12.8": "570.86.10",
}


class Pricing(BaseModel):
    """Linear prices as users think of them (GLM per hour); the offer carries GLM per second."""

    glm_per_hour: Decimal
    cpu_glm_per_hour: Decimal
    start_glm: Decimal

    def coeffs(self) -> list[float]:
        """`golem.com.pricing.model.linear.coeffs`: per duration second, per CPU second, fixed."""
        return [float(self.glm_per_hour / 3600), float(self.cpu_glm_per_hour / 3600), float(self.start_glm)]

    def cost(self, duration_s: float, cpu_s: float) -> Decimal:
        """What an activity owes after this usage, computed from the coefficients it offered."""
        per_s, per_cpu_s, fixed = (Decimal(repr(c)) for c in self.coeffs())
        total = per_s * Decimal(repr(duration_s)) + per_cpu_s * Decimal(repr(cpu_s)) + fixed
        return total.quantize(Decimal("1e-15"))


class NegotiationSettings(BaseModel):
    """ya-provider's negotiator defaults, with the expiration limits golem.md documents."""

    min_expiration_s: float = 5 * 60
    max_expiration_s: float = 10 * 3600
    max_expiration_without_deadline_s: float = 30 * 60
    debit_note_accept_timeout_s: int = Field(default=240, ge=1)
    #: The shortest acceptance deadline a requestor may ask for (ya-provider: 5 s).
    min_accept_timeout_s: int = Field(default=5, ge=1)
    debit_note_interval_s: int = Field(default=120, ge=1)
    payment_timeout_s: int = Field(default=120, ge=1)
    min_interval_s: int = 1
    max_interval_s: int = 24 * 3600
    payment_timeout_required_s: float = 10 * 3600


class ProviderSettings(BaseModel):
    count: int = Field(default=3, ge=1, le=200)
    seed: int = 0
    subnet: str = "public"
    runtime: str = "vm-nvidia"
    platforms: list[str] = Field(default_factory=lambda: list(PAYMENT_PLATFORMS))
    negotiation: NegotiationSettings = Field(default_factory=NegotiationSettings)


class ProviderSpec(BaseModel):
    index: int
    provider_id: str
    name: str
    gpu: GpuModel
    gpu_count: int
    layout: Literal["single", "multi"]
    cuda_version: str
    driver_version: str
    #: The multi-GPU layout states the driver; some providers state the CUDA version as well.
    states_cuda_version: bool
    mem_gib: float
    storage_gib: float
    cpu_threads: int
    pricing: Pricing
    subnet: str
    runtime: str
    platforms: list[str]


class Negotiation(BaseModel):
    """A provider's answer to a counter-proposal: its own next proposal, or a refusal."""

    accepted: bool
    reason: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


def _slug(model: str) -> str:
    short = model.replace("NVIDIA", "").replace("GeForce", "").replace("SXM4-", "")
    return re.sub(r"[^a-z0-9]+", "", short.lower())[:10] or "gpu"


def build_specs(settings: ProviderSettings, price_factor: float = 1.0) -> list[ProviderSpec]:
    """The market a seed names: the same providers, prices and GPUs for the same settings."""
    rng = random.Random(f"beacon-golem-sandbox-{settings.seed}")
    specs = []
    for index in range(settings.count):
        gpu = rng.choice(GPU_CATALOG)
        cuda = rng.choice(sorted(CUDA_DRIVERS))
        # Provider 0 uses the single-GPU layout and provider 1 the multi-GPU one, so any market of
        # two or more shows both; the rest are drawn.
        layout: Literal["single", "multi"] = (
            "single" if index == 0 else "multi" if index == 1 else rng.choice(["single", "multi"])
        )
        factor = Decimal(repr(price_factor))
        pricing = Pricing(
            glm_per_hour=(Decimal(repr(round(rng.uniform(0.05, 0.9), 4))) * factor).normalize(),
            cpu_glm_per_hour=(Decimal(repr(round(rng.uniform(0.0, 0.05), 4))) * factor).normalize(),
            start_glm=(Decimal(repr(round(rng.uniform(0.0, 0.01), 4))) * factor).normalize(),
        )
        specs.append(
            ProviderSpec(
                index=index,
                provider_id="0x" + rng.randbytes(20).hex(),
                name=f"sandbox-{index:02d}-{_slug(gpu.model)}",
                gpu=gpu,
                gpu_count=rng.choice([1, 1, 2]) if layout == "multi" else 1,
                layout=layout,
                cuda_version=cuda,
                driver_version=CUDA_DRIVERS[cuda],
                states_cuda_version=rng.random() < 0.5,
                mem_gib=float(rng.choice([32, 64, 128, 256])),
                storage_gib=float(rng.choice([128, 256, 512, 1024])),
                cpu_threads=rng.choice([8, 16, 24, 32, 64]),
                pricing=pricing,
                subnet=settings.subnet,
                runtime=settings.runtime,
                platforms=list(settings.platforms),
            )
        )
    return specs


def requestor_id_for(seed: int) -> str:
    return "0x" + random.Random(f"beacon-golem-sandbox-requestor-{seed}").randbytes(20).hex()


def gpu_properties(spec: ProviderSpec) -> dict[str, Any]:
    gpu = spec.gpu
    if spec.layout == "single":
        props: dict[str, Any] = {
            f"{GAP35}.model": gpu.model,
            f"{GAP35}.memory.total.gib": gpu.memory_gib,
            f"{GAP35}.memory.bandwidth.gib": gpu.bandwidth_gib,
            f"{GAP35}.cuda.enabled": True,
            f"{GAP35}.cuda.cores": gpu.cuda_cores,
            f"{GAP35}.cuda.version": spec.cuda_version,
            f"{GAP35}.cuda.compute-capability": gpu.compute_capability,
            f"{GAP35}.clocks.graphics.mhz": 2520,
            f"{GAP35}.clocks.memory.mhz": 10501,
            f"{GAP35}.clocks.sm.mhz": 2520,
            f"{GAP35}.clocks.video.mhz": 1965,
        }
        return props
    props = {
        f"{GAP35}.d0.model": gpu.model,
        f"{GAP35}.d0.memory.total.gib": gpu.memory_gib,
        f"{GAP35}.d0.memory.bandwidth.gib": gpu.bandwidth_gib,
        f"{GAP35}.d0.quantity": spec.gpu_count,
        f"{GAP35}.d0.cuda.cores": gpu.cuda_cores,
        f"{GAP35}.d0.cuda.compute-capability": gpu.compute_capability,
        f"{GAP35}.cuda.enabled": True,
        f"{GAP35}.cuda.driver.version": spec.driver_version,
    }
    if spec.states_cuda_version:
        props[f"{GAP35}.cuda.version"] = spec.cuda_version
    return props


def offer_properties(spec: ProviderSpec, negotiation: NegotiationSettings) -> dict[str, Any]:
    """The provider's offer, flat as yagna serves proposals."""
    props: dict[str, Any] = {
        "golem.activity.caps.transfer.protocol": ["gftp", "http", "https"],
        "golem.com.payment.protocol.version": 3,
        PROP_ACCEPT_TIMEOUT: negotiation.debit_note_accept_timeout_s,
        PROP_DEBIT_NOTE_INTERVAL: negotiation.debit_note_interval_s,
        PROP_PAYMENT_TIMEOUT: negotiation.payment_timeout_s,
        "golem.com.pricing.model": "linear",
        "golem.com.pricing.model.linear.coeffs": spec.pricing.coeffs(),
        "golem.com.scheme": "payu",
        "golem.com.usage.vector": list(USAGE_VECTOR),
        "golem.inf.cpu.architecture": "x86_64",
        "golem.inf.cpu.cores": max(spec.cpu_threads // 2, 1),
        "golem.inf.cpu.threads": spec.cpu_threads,
        "golem.inf.mem.gib": spec.mem_gib,
        "golem.inf.storage.gib": spec.storage_gib,
        "golem.node.debug.subnet": spec.subnet,
        "golem.node.id.name": spec.name,
        "golem.node.net.is-public": False,
        "golem.runtime.capabilities": ["inet", "vpn", "manifest-support", "start-entrypoint", "!exp:gpu"],
        "golem.runtime.name": spec.runtime,
        "golem.runtime.version": "0.4.2",
        "golem.srv.caps.multi-activity": True,
        "golem.srv.caps.payload-manifest": True,
    }
    for platform in spec.platforms:
        props[f"golem.com.payment.platform.{platform}.address"] = spec.provider_id
    props.update(gpu_properties(spec))
    return props


def offer_constraints(spec: ProviderSpec) -> str:
    return f"(&(golem.srv.comp.expiration>0)\n\t(golem.node.debug.subnet={spec.subnet}))"


def _int_prop(props: Mapping[str, Any], key: str) -> int | None:
    value = props.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"property {key} must be a number, not {value!r}")
    return int(value)


class ScriptedProvider:
    """One provider agent: its offer, its negotiation rules, the one agreement it may hold."""

    def __init__(self, spec: ProviderSpec, negotiation: NegotiationSettings) -> None:
        self.spec = spec
        self.settings = negotiation
        self.properties = offer_properties(spec, negotiation)
        self.constraints_text = offer_constraints(spec)
        self.constraints = constraints.parse(self.constraints_text)
        #: The agreement the provider is bound by (approved and not ended), if any.
        self.agreement_id: str | None = None

    @property
    def provider_id(self) -> str:
        return self.spec.provider_id

    @property
    def name(self) -> str:
        return self.spec.name

    def record(self) -> ProviderRecord:
        spec = self.spec
        return ProviderRecord(
            provider_id=spec.provider_id,
            name=spec.name,
            runtime=spec.runtime,
            gpu_models=[spec.gpu.model] * spec.gpu_count,
            vram_gib=spec.gpu.memory_gib,
            cuda_version=spec.cuda_version,
            gpu_layout=spec.layout,
            glm_per_hour=spec.pricing.glm_per_hour,
            cpu_glm_per_hour=spec.pricing.cpu_glm_per_hour,
            start_price_glm=spec.pricing.start_glm,
        )

    def negotiate(
        self, demand: Mapping[str, Any], current: Mapping[str, Any], at: datetime | None = None
    ) -> Negotiation:
        """The provider's answer to the requestor's counter-proposal `demand`."""
        try:
            return self._negotiate(demand, dict(current), at or datetime.now(UTC))
        except ValueError as exc:
            return Negotiation(accepted=False, reason=str(exc))

    def _negotiate(self, demand: Mapping[str, Any], offer: dict[str, Any], at: datetime) -> Negotiation:
        s = self.settings
        if self.agreement_id is not None:
            return Negotiation(accepted=False, reason="Max simultaneous agreements reached (1)")

        platform = demand.get(PROP_CHOSEN_PLATFORM)
        if not platform:
            return Negotiation(accepted=False, reason=f"Demand lacks the required field {PROP_CHOSEN_PLATFORM}")
        if f"golem.com.payment.platform.{platform}.address" not in offer:
            return Negotiation(accepted=False, reason=f"Payment platform {platform} is not supported by this provider")
        if f"golem.com.payment.platform.{platform}.address" not in demand:
            return Negotiation(accepted=False, reason=f"Demand has no payment address for platform {platform}")

        expiration_ms = _int_prop(demand, PROP_EXPIRATION)
        if expiration_ms is None:
            return Negotiation(accepted=False, reason="Missing expiration key in Proposal")
        expires_in = expiration_ms / 1000 - at.timestamp()
        req_deadline = _int_prop(demand, PROP_ACCEPT_TIMEOUT)
        our_deadline = _int_prop(offer, PROP_ACCEPT_TIMEOUT)
        max_expiration = s.max_expiration_s if req_deadline is not None else s.max_expiration_without_deadline_s
        if expires_in < s.min_expiration_s or expires_in > max_expiration:
            return Negotiation(
                accepted=False,
                reason=(
                    f"Proposal expires at: {datetime.fromtimestamp(expiration_ms / 1000, UTC).isoformat()} which is "
                    f"less than {_span(s.min_expiration_s)} or more than {_span(max_expiration)} from now"
                ),
            )

        if req_deadline is not None and our_deadline is not None:
            if req_deadline > our_deadline:
                return Negotiation(
                    accepted=False,
                    reason=f"DebitNote acceptance deadline should be less than {_span(s.debit_note_accept_timeout_s)}.",
                )
            if req_deadline < s.min_accept_timeout_s:
                return Negotiation(accepted=False, reason=f"To low DebitNotes timeout: {_span(req_deadline)}")
            offer[PROP_ACCEPT_TIMEOUT] = req_deadline
        elif req_deadline is None:
            offer.pop(PROP_ACCEPT_TIMEOUT, None)

        interval = _int_prop(demand, PROP_DEBIT_NOTE_INTERVAL)
        if interval is not None:
            if not s.min_interval_s <= interval <= s.max_interval_s:
                return Negotiation(
                    accepted=False,
                    reason=(
                        f"Demand DebitNote interval {_span(interval)} not in acceptable range of "
                        f"[{_span(s.min_interval_s)}; {_span(s.max_interval_s)}]"
                    ),
                )
            offer[PROP_DEBIT_NOTE_INTERVAL] = interval
        else:
            offer.pop(PROP_DEBIT_NOTE_INTERVAL, None)

        timeout = _int_prop(demand, PROP_PAYMENT_TIMEOUT)
        if timeout is not None:
            if not s.min_interval_s <= timeout <= s.max_interval_s:
                return Negotiation(
                    accepted=False,
                    reason=(
                        f"Demand DebitNote payment timeout {_span(timeout)} not in acceptable range of "
                        f"[{_span(s.min_interval_s)}; {_span(s.max_interval_s)}]"
                    ),
                )
            offer[PROP_PAYMENT_TIMEOUT] = timeout
        else:
            if expires_in >= s.payment_timeout_required_s:
                return Negotiation(
                    accepted=False,
                    reason=(
                        f"Expiration time exceeds the {_span(s.payment_timeout_required_s)} threshold of enforcing "
                        f"mid-agreement payments but the required property '{PROP_PAYMENT_TIMEOUT}' was not present"
                    ),
                )
            offer.pop(PROP_PAYMENT_TIMEOUT, None)

        return Negotiation(accepted=True, properties=offer)


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def build_providers(settings: ProviderSettings, price_factor: float = 1.0) -> list[ScriptedProvider]:
    return [ScriptedProvider(spec, settings.negotiation) for spec in build_specs(settings, price_factor)]
