"""Scripted providers: offers drawn from the seed, read by yapapi's own models; ya-provider's rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from yapapi.props import Activity, NodeInfo
from yapapi.props.com import ComLinear, Counter

from beacon_golem.sandbox.providers import (
    GAP35,
    PROP_ACCEPT_TIMEOUT,
    PROP_CHOSEN_PLATFORM,
    PROP_DEBIT_NOTE_INTERVAL,
    PROP_EXPIRATION,
    PROP_PAYMENT_TIMEOUT,
    Pricing,
    ProviderSettings,
    ScriptedProvider,
    build_providers,
    build_specs,
)

PLATFORM = "erc20-holesky-tglm"


def test_a_seed_names_a_market() -> None:
    a = build_specs(ProviderSettings(count=6, seed=7))
    b = build_specs(ProviderSettings(count=6, seed=7))
    c = build_specs(ProviderSettings(count=6, seed=8))
    assert a == b
    assert [s.provider_id for s in a] != [s.provider_id for s in c]
    assert all(re.fullmatch(r"0x[0-9a-f]{40}", s.provider_id) for s in a)
    assert len({s.provider_id for s in a}) == 6 and len({s.name for s in a}) == 6


def test_offers_vary_and_show_both_gpu_layouts() -> None:
    providers = build_providers(ProviderSettings(count=8, seed=1))
    layouts = {p.spec.layout for p in providers}
    assert layouts == {"single", "multi"}
    single = next(p for p in providers if p.spec.layout == "single").properties
    multi = next(p for p in providers if p.spec.layout == "multi").properties
    assert {f"{GAP35}.model", f"{GAP35}.memory.total.gib", f"{GAP35}.cuda.version"} <= set(single)
    assert not any(k.startswith(f"{GAP35}.d0.") for k in single)
    assert {f"{GAP35}.d0.model", f"{GAP35}.d0.memory.total.gib", f"{GAP35}.d0.quantity"} <= set(multi)
    assert f"{GAP35}.cuda.driver.version" in multi
    assert len({p.spec.gpu.model for p in providers}) > 2
    assert len({p.spec.cuda_version for p in providers}) > 1
    assert len({p.spec.gpu.memory_gib for p in providers}) > 1


def test_offers_read_as_yapapi_reads_them() -> None:
    provider = build_providers(ProviderSettings(count=1, seed=3))[0]
    props = provider.properties
    com = ComLinear.from_properties(props)
    assert com.usage_vector == [Counter.TIME.value, Counter.CPU.value]
    assert com.fixed_price == pytest.approx(float(provider.spec.pricing.start_glm))
    assert com.price_for[Counter.TIME.value] * 3600 == pytest.approx(float(provider.spec.pricing.glm_per_hour))
    assert NodeInfo.from_properties(props).name == provider.name
    assert NodeInfo.from_properties(props).subnet_tag == "public"
    assert Activity.from_properties(props).multi_activity is True
    assert "vpn" in props["golem.runtime.capabilities"]
    assert props["golem.runtime.name"] == "vm-nvidia"
    assert props[f"golem.com.payment.platform.{PLATFORM}.address"] == provider.provider_id
    for key in ("golem.inf.mem.gib", "golem.inf.storage.gib", "golem.inf.cpu.threads"):
        assert props[key] > 0


def test_the_cost_follows_the_offered_coefficients() -> None:
    pricing = Pricing(glm_per_hour="3.6", cpu_glm_per_hour="0.36", start_glm="0.01")
    assert pricing.coeffs() == [0.001, 0.0001, 0.01]
    assert pricing.cost(100, 10) == Decimal("0.111")
    prices = build_specs(ProviderSettings(count=1, seed=0), price_factor=10)[0].pricing
    assert prices.glm_per_hour == build_specs(ProviderSettings(count=1, seed=0))[0].pricing.glm_per_hour * 10


def demand(hours: float = 1.0, **props: Any) -> dict[str, Any]:
    expiration = datetime.now(UTC) + timedelta(hours=hours)
    base = {
        PROP_EXPIRATION: int(expiration.timestamp() * 1000),
        PROP_CHOSEN_PLATFORM: PLATFORM,
        f"golem.com.payment.platform.{PLATFORM}.address": "0x" + "1" * 40,
        PROP_ACCEPT_TIMEOUT: 240,
    }
    base.update(props)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def provider() -> ScriptedProvider:
    return build_providers(ProviderSettings(count=1))[0]


def negotiate(provider: ScriptedProvider, props: dict[str, Any]) -> Any:
    return provider.negotiate(props, provider.properties)


def test_a_plain_demand_is_accepted_and_unnegotiated_payment_terms_dropped(provider: ScriptedProvider) -> None:
    answer = negotiate(provider, demand())
    assert answer.accepted, answer.reason
    assert answer.properties[PROP_ACCEPT_TIMEOUT] == 240
    assert PROP_DEBIT_NOTE_INTERVAL not in answer.properties
    assert PROP_PAYMENT_TIMEOUT not in answer.properties


@pytest.mark.parametrize(
    ("hours", "deadline", "accepted"),
    [
        (0.05, 240, False),  # 3 minutes: under the 5-minute minimum
        (9.9, 240, True),
        (10.5, 240, False),  # over 10 hours even with debit notes
        (0.4, None, True),  # no debit notes: up to 30 minutes
        (0.6, None, False),
    ],
)
def test_expiration_limits(provider: ScriptedProvider, hours: float, deadline: int | None, accepted: bool) -> None:
    extra = {PROP_PAYMENT_TIMEOUT: 18000} if hours > 5 else {}
    answer = negotiate(provider, demand(hours, **{PROP_ACCEPT_TIMEOUT: deadline}, **extra))
    assert answer.accepted is accepted, answer.reason
    if not accepted:
        assert "Proposal expires at" in (answer.reason or "")


def test_debit_note_deadline_rules(provider: ScriptedProvider) -> None:
    shorter = negotiate(provider, demand(**{PROP_ACCEPT_TIMEOUT: 120}))
    assert shorter.accepted and shorter.properties[PROP_ACCEPT_TIMEOUT] == 120
    longer = negotiate(provider, demand(**{PROP_ACCEPT_TIMEOUT: 600}))
    assert not longer.accepted and "should be less than" in (longer.reason or "")
    tiny = negotiate(provider, demand(**{PROP_ACCEPT_TIMEOUT: 2}))
    assert not tiny.accepted and "To low" in (tiny.reason or "")
    bad = negotiate(provider, demand(**{PROP_ACCEPT_TIMEOUT: "soon"}))
    assert not bad.accepted and "must be a number" in (bad.reason or "")


def test_mid_agreement_payment_terms_are_taken_from_the_demand(provider: ScriptedProvider) -> None:
    answer = negotiate(provider, demand(6, **{PROP_DEBIT_NOTE_INTERVAL: 60, PROP_PAYMENT_TIMEOUT: 18000}))
    assert answer.accepted, answer.reason
    assert answer.properties[PROP_DEBIT_NOTE_INTERVAL] == 60
    assert answer.properties[PROP_PAYMENT_TIMEOUT] == 18000
    out_of_range = negotiate(provider, demand(**{PROP_DEBIT_NOTE_INTERVAL: 10**6}))
    assert not out_of_range.accepted and "not in acceptable range" in (out_of_range.reason or "")


def test_platform_and_busy_rules(provider: ScriptedProvider) -> None:
    assert not negotiate(provider, demand(**{PROP_CHOSEN_PLATFORM: None})).accepted
    unknown = negotiate(provider, demand(**{PROP_CHOSEN_PLATFORM: "zksync-mainnet-glm"}))
    assert not unknown.accepted and "not supported" in (unknown.reason or "")
    provider.agreement_id = "abc"
    busy = negotiate(provider, demand())
    assert not busy.accepted and "Max simultaneous agreements" in (busy.reason or "")
