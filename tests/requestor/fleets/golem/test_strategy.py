"""Offer scoring on real yapapi OfferProposals (ya_market models), GAP-35 single and multi layouts.

Layouts from golem.md and the ya-runtime-vm-nvidia gpu-detection README (its 2x A30 example);
prices as a provider's linear preset: GLM per second of each usage counter plus a start price.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any
from unittest.mock import Mock

import pytest
from ya_market import models
from yapapi.props import com
from yapapi.rest.market import OfferProposal
from yapapi.strategy import SCORE_REJECTED

from beacon_golem.requestor.fleets.golem.gpu import cuda_for_driver, read_gpu
from beacon_golem.requestor.fleets.golem.records import ProviderRecord
from beacon_golem.requestor.fleets.golem.strategy import (
    GpuMarketStrategy,
    OfferCriteria,
    offer_score,
    per_second_caps,
    rejection,
    view_offer,
)

GPU = "golem.!exp.gap-35.v1.inf.gpu."


# ---- offers as providers publish them --------------------------------------------------------
def pricing(glm_per_hour: float = 0.5, cpu_glm_per_hour: float = 0.0, start: float = 0.0) -> dict[str, Any]:
    return {
        "golem.com.scheme": "payu",
        "golem.com.pricing.model": "linear",
        "golem.com.usage.vector": ["golem.usage.cpu_sec", "golem.usage.duration_sec"],
        "golem.com.pricing.model.linear.coeffs": [cpu_glm_per_hour / 3600, glm_per_hour / 3600, start],
    }


def single_gpu(
    model: str = "NVIDIA GeForce RTX 4090", vram: float = 24.0, cuda: str = "12.4", **price: float
) -> dict[str, Any]:
    return {
        "golem.node.id.name": "single-box",
        "golem.runtime.name": "vm-nvidia",
        GPU + "model": model,
        GPU + "memory.total.gib": vram,
        GPU + "cuda.version": cuda,
        GPU + "cuda.enabled": True,
        GPU + "cuda.compute-capability": "8.9",
        **pricing(**price),
    }


def multi_gpu(
    model: str = "NVIDIA A30",
    vram: float = 24.0,
    quantity: int = 2,
    driver: str = "545.23.08",
    cuda: str | None = None,
    **price: float,
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "golem.node.id.name": "multi-box",
        "golem.runtime.name": "vm-nvidia",
        GPU + "cuda.driver.version": driver,
        GPU + "d0.model": model,
        GPU + "d0.cuda.enabled": True,
        GPU + "d0.cuda.caps": "8.0",
        GPU + "d0.memory.total.gib": vram,
        GPU + "d0.quantity": quantity,
        **pricing(**price),
    }
    if cuda is not None:
        props[GPU + "cuda.version"] = cuda
    return props


def offer(props: dict[str, Any], provider_id: str = "0xprovider1") -> OfferProposal:
    proposal = models.Proposal(
        properties=props,
        constraints="",
        proposal_id=f"proposal-{provider_id}",
        issuer_id=provider_id,
        state="Initial",
        timestamp=datetime.datetime.now(datetime.UTC),
    )
    return OfferProposal(Mock(), models.ProposalEvent(proposal=proposal))


def criteria(**kw: Any) -> OfferCriteria:
    base: dict[str, Any] = {"max_price_glm_per_hour": Decimal("1.0"), "max_start_price_glm": Decimal("0.1")}
    return OfferCriteria(**{**base, **kw})


def strategy(**kw: Any) -> GpuMarketStrategy:
    extra = {k: kw.pop(k) for k in ("blacklist", "provider_record", "regions") if k in kw}
    return GpuMarketStrategy(criteria(**kw), **extra)


LAYOUTS = [pytest.param(single_gpu, id="single"), pytest.param(multi_gpu, id="multi")]


# ---- reading the properties -------------------------------------------------------------------
def test_reads_both_layouts() -> None:
    one = read_gpu(single_gpu(vram=24.0, cuda="12.4"))
    assert one is not None and one.layout == "single"
    assert (one.model, one.vram_gib, one.count, one.cuda) == ("NVIDIA GeForce RTX 4090", 24.0, 1, (12, 4))
    two = read_gpu(multi_gpu(vram=24.0, quantity=2, driver="545.23.08"))
    assert two is not None and two.layout == "multi"
    assert (two.model, two.vram_gib, two.total_vram_gib, two.count) == ("NVIDIA A30", 24.0, 48.0, 2)
    assert two.cuda == (12, 3)  # derived from the driver version
    assert read_gpu(multi_gpu(cuda="12.2")).cuda == (12, 2)  # a stated CUDA version wins
    assert read_gpu({"golem.runtime.name": "vm"}) is None


def test_reads_nested_properties_too() -> None:
    nested = {
        "golem": {"!exp": {"gap-35": {"v1": {"inf": {"gpu": {"model": "L4", "memory": {"total": {"gib": 22.5}}}}}}}}
    }
    gpu = read_gpu(nested)
    assert gpu is not None and (gpu.model, gpu.vram_gib) == ("L4", 22.5)


def test_cuda_for_driver_versions() -> None:
    assert cuda_for_driver("550.54.14") == (12, 4)
    assert cuda_for_driver("525.60.13") == (12, 0)
    assert cuda_for_driver("535.00") == (12, 1)  # below 535.54: only 12.1
    assert cuda_for_driver("12.6") == (12, 6)
    assert cuda_for_driver(None) is None


# ---- acceptance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_acceptable_offer_gets_a_positive_score(layout: Any) -> None:
    s = strategy(min_vram_gib=16, include=["*A30*", "*4090*"], min_cuda="12.1")
    score = await s.score_offer(offer(layout(glm_per_hour=0.5)))
    assert 0 < score < 100
    assert s.tally["accepted"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_rejects_too_little_vram(layout: Any) -> None:
    s = strategy(min_vram_gib=40)
    assert await s.score_offer(offer(layout(vram=24.0))) == SCORE_REJECTED
    assert s.tally["vram"] == 1
    assert await s.score_offer(offer(layout(vram=48.0))) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_model_allow_and_deny_patterns(layout: Any) -> None:
    props = layout(model="NVIDIA GeForce RTX 3060")
    assert await strategy(include=["*4090*", "*a100*"]).score_offer(offer(props)) == SCORE_REJECTED
    assert await strategy(include=["nvidia geforce rtx 30*"]).score_offer(offer(props)) > 0
    assert await strategy(exclude=["*3060*"]).score_offer(offer(props)) == SCORE_REJECTED
    assert await strategy(exclude=["*3090*"]).score_offer(offer(props)) > 0


async def test_min_cuda_single_layout() -> None:
    assert await strategy(min_cuda="12.1").score_offer(offer(single_gpu(cuda="11.8"))) == SCORE_REJECTED
    assert await strategy(min_cuda="12.1").score_offer(offer(single_gpu(cuda="12.1"))) > 0
    assert await strategy(min_cuda="12.10").score_offer(offer(single_gpu(cuda="12.4"))) == SCORE_REJECTED


async def test_min_cuda_multi_layout_from_driver_version() -> None:
    assert await strategy(min_cuda="12.1").score_offer(offer(multi_gpu(driver="525.60.13"))) == SCORE_REJECTED
    assert await strategy(min_cuda="12.1").score_offer(offer(multi_gpu(driver="545.23.08"))) > 0
    no_cuda = multi_gpu()
    del no_cuda[GPU + "cuda.driver.version"]
    assert await strategy(min_cuda="12.1").score_offer(offer(no_cuda)) == SCORE_REJECTED


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_price_cap_in_glm_per_hour(layout: Any) -> None:
    s = strategy(max_price_glm_per_hour=Decimal("1.0"))
    assert await s.score_offer(offer(layout(glm_per_hour=0.9))) > 0
    assert await s.score_offer(offer(layout(glm_per_hour=1.2))) == SCORE_REJECTED
    # each counter under the cap, together over it: still rejected
    assert await s.score_offer(offer(layout(glm_per_hour=0.6, cpu_glm_per_hour=0.6))) == SCORE_REJECTED
    assert s.tally["price"] == 2


async def test_start_price_cap() -> None:
    s = strategy(max_start_price_glm=Decimal("0.1"))
    assert await s.score_offer(offer(single_gpu(start=0.05))) > 0
    assert await s.score_offer(offer(single_gpu(start=0.5))) == SCORE_REJECTED


def test_per_hour_cap_becomes_yapapis_per_second_caps() -> None:
    caps = per_second_caps(Decimal("3.6"))
    assert caps == {com.Counter.TIME: Decimal("0.001"), com.Counter.CPU: Decimal("0.001")}
    assert per_second_caps(Decimal("3.6"), cpu_threads=4)[com.Counter.CPU] == Decimal("0.00025")
    base = strategy(max_price_glm_per_hour=Decimal("3.6")).base_strategy
    assert base._max_price_for[com.Counter.TIME.value] == Decimal("0.001")


async def test_unknown_priced_counter_is_rejected() -> None:
    props = single_gpu()
    props["golem.com.usage.vector"] = ["golem.usage.cpu_sec", "golem.usage.duration_sec", "golem.usage.gib"]
    props["golem.com.pricing.model.linear.coeffs"] = [0.0, 0.0001, 0.01, 0.0]
    s = strategy()
    assert await s.score_offer(offer(props)) == SCORE_REJECTED
    assert s.tally["pricing"] == 1


async def test_offer_without_gpu_is_rejected_unless_cpu_only() -> None:
    cpu_offer = {"golem.runtime.name": "vm", **pricing(0.1)}
    assert await strategy().score_offer(offer(cpu_offer)) == SCORE_REJECTED
    assert await strategy(require_gpu=False).score_offer(offer(cpu_offer)) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_blacklist_is_live(layout: Any) -> None:
    s = strategy(blacklist={"0xbad"})
    assert await s.score_offer(offer(layout(), "0xbad")) == SCORE_REJECTED
    assert await s.score_offer(offer(layout(), "0xgood")) > 0
    s.blacklist.add("0xgood")  # the fleet adds a provider that failed during the run
    assert await s.score_offer(offer(layout(), "0xgood")) == SCORE_REJECTED
    assert s.tally["blacklist"] == 2


async def test_bad_record_rejected_sync_and_async_lookup() -> None:
    records = {
        "0xflaky": ProviderRecord(provider_id="0xflaky", runs=4, failures=3),
        "0xbanned": ProviderRecord(provider_id="0xbanned", banned=True),
        "0xfine": ProviderRecord(provider_id="0xfine", runs=4, failures=1),
    }

    async def lookup_async(pid: str) -> ProviderRecord | None:
        return records.get(pid)

    for lookup in (records.get, lookup_async):
        s = strategy(provider_record=lookup)
        assert await s.score_offer(offer(single_gpu(), "0xflaky")) == SCORE_REJECTED
        assert await s.score_offer(offer(single_gpu(), "0xbanned")) == SCORE_REJECTED
        assert await s.score_offer(offer(single_gpu(), "0xfine")) > 0
        assert await s.score_offer(offer(single_gpu(), "0xnew")) > 0
        assert s.tally["bad record"] == 2


async def test_broken_record_lookup_does_not_stop_the_market() -> None:
    def broken(pid: str) -> ProviderRecord | None:
        raise OSError("store unavailable")

    assert await strategy(provider_record=broken).score_offer(offer(single_gpu())) > 0


async def test_region_constraint() -> None:
    regions = {"0xeu": "EU", "0xus": "US"}
    s = strategy(allowed_regions=["EU"], regions=regions)
    assert await s.score_offer(offer(single_gpu(), "0xeu")) > 0
    assert await s.score_offer(offer(single_gpu(), "0xus")) == SCORE_REJECTED
    assert await s.score_offer(offer(single_gpu(), "0xunmapped")) == SCORE_REJECTED
    assert view_offer(single_gpu(), "0xus", regions).region == "US"


# ---- preference -----------------------------------------------------------------------------------
async def test_prefers_cheaper_per_gib_of_vram() -> None:
    s = strategy()
    small = await s.score_offer(offer(single_gpu(vram=24.0, glm_per_hour=0.5), "0xa"))
    big = await s.score_offer(offer(multi_gpu(vram=48.0, quantity=1, glm_per_hour=0.5), "0xb"))
    pricey = await s.score_offer(offer(single_gpu(vram=24.0, glm_per_hour=0.9), "0xc"))
    assert big > small > pricey > 0


async def test_prefers_better_past_throughput_per_glm() -> None:
    records = {
        "0xfast": ProviderRecord(provider_id="0xfast", runs=3, tokens_per_glm=500_000),
        "0xslow": ProviderRecord(provider_id="0xslow", runs=3, tokens_per_glm=20_000),
    }
    s = strategy(provider_record=records.get)
    fast = await s.score_offer(offer(single_gpu(), "0xfast"))
    slow = await s.score_offer(offer(single_gpu(), "0xslow"))
    unknown = await s.score_offer(offer(single_gpu(), "0xnew"))
    assert fast > slow > unknown


def test_scores_stay_between_zero_and_a_hundred() -> None:
    record = ProviderRecord(provider_id="x", tokens_per_glm=1e12)
    free = view_offer(single_gpu(glm_per_hour=0.0), "x")
    assert 0 < offer_score(free, record) < 100
    dear = view_offer(single_gpu(glm_per_hour=1000.0, vram=1.0), "x")
    assert 0 < offer_score(dear) < offer_score(free)


def test_rejection_reasons_are_readable() -> None:
    view = view_offer(single_gpu(vram=8.0), "0xp")
    assert rejection(view, criteria(min_vram_gib=24)) == ("vram", "8 GiB VRAM < 24 GiB")
    assert rejection(view, criteria(), blacklisted=True)[0] == "blacklist"  # type: ignore[index]
    assert rejection(view, criteria()) is None
