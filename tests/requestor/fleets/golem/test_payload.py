"""The GPU payload and the demand yapapi's DemandBuilder builds from it (no network)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError
from yapapi.props.builder import DemandBuilder

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.payload import (
    GPU_CONSTRAINT,
    GpuVmPayload,
    ImageRef,
    build_payload,
    demand_for,
    offline_resolver,
)
from beacon_golem.requestor.fleets.golem.strategy import GpuMarketStrategy, OfferCriteria

HASH = "0123456789abcdef0123456789abcdef0123456789abcdef01234567"


def config(**kw: object) -> GolemFleetConfig:
    base: dict[str, object] = {"image": "beacon/vllm-node:1", "budget": 5, "max_price_glm_per_hour": 1}
    return GolemFleetConfig(**{**base, **kw})


class FakeResolver:
    """Stands for the registry: records what it was asked, answers a package URL."""

    def __init__(self) -> None:
        self.asked: list[ImageRef] = []

    async def __call__(self, ref: ImageRef) -> str:
        self.asked.append(ref)
        return f"hash:sha3:{HASH}:http://registry.invalid/{ref.tag or ref.hash}.gvmi"


async def test_gpu_demand_built_by_yapapi_demand_builder() -> None:
    resolver = FakeResolver()
    payload = await build_payload(config(min_mem_gib=32, min_storage_gib=120, min_cpu_threads=8), resolver)
    demand = DemandBuilder()
    await demand.decorate(payload)

    assert resolver.asked == [ImageRef(kind="tag", tag="beacon/vllm-node:1")]
    assert demand.properties == {
        "golem.srv.comp.task_package": f"hash:sha3:{HASH}:http://registry.invalid/beacon/vllm-node:1.gvmi",
        "golem.srv.comp.vm.package_format": "gvmkit-squash",
    }
    constraints = demand.constraints
    for part in (
        "(golem.runtime.name=vm-nvidia)",
        "(golem.runtime.capabilities=vpn)",
        "(golem.inf.mem.gib>=32.0)",
        "(golem.inf.storage.gib>=120.0)",
        "(golem.inf.cpu.threads>=8)",
        GPU_CONSTRAINT,
        "(golem.!exp.gap-35.v1.inf.gpu.d0.model=*)",
    ):
        assert part in constraints
    assert GPU_CONSTRAINT == "(golem.!exp.gap-35.v1.inf.gpu.model=*)"
    # either GPU layout satisfies the demand: the two presence tests are OR-ed
    assert "(|(golem.!exp.gap-35.v1.inf.gpu.model=*)" in constraints


async def test_cpu_only_asks_for_runtime_vm_without_gpu() -> None:
    payload = await build_payload(config(cpu_only=True), FakeResolver())
    demand = await demand_for(payload)
    assert "(golem.runtime.name=vm)" in demand.constraints
    assert "gap-35" not in demand.constraints
    assert "(golem.runtime.capabilities=vpn)" in demand.constraints


async def test_strategy_adds_the_linear_price_model_to_the_demand() -> None:
    payload = GpuVmPayload(package_url="hash:sha3:x:http://h/x.gvmi")
    criteria = OfferCriteria(max_price_glm_per_hour=Decimal(1), max_start_price_glm=Decimal(1))
    demand = await demand_for(payload, GpuMarketStrategy(criteria))
    assert "(golem.com.pricing.model=linear)" in demand.constraints
    assert GPU_CONSTRAINT in demand.constraints


async def test_url_and_hash_need_no_lookup() -> None:
    payload = await build_payload(config(image="https://example.invalid/node.gvmi", image_hash=HASH), offline_resolver)
    assert payload.package_url == f"hash:sha3:{HASH}:https://example.invalid/node.gvmi"


async def test_offline_resolver_refuses_a_tag() -> None:
    with pytest.raises(BeaconError, match="registry"):
        await build_payload(config(), offline_resolver)


async def test_resolver_failure_is_one_clear_line() -> None:
    async def broken(ref: ImageRef) -> str:
        raise RuntimeError("Failed to resolve image URL: 404 not found")

    with pytest.raises(BeaconError, match=r"cannot resolve image beacon/vllm-node:1: .*404"):
        await build_payload(config(), broken)


def test_image_reference_kinds() -> None:
    assert ImageRef.parse(HASH).kind == "hash"
    assert ImageRef.parse(HASH.upper()).hash == HASH
    assert ImageRef.parse("user/img:tag") == ImageRef(kind="tag", tag="user/img:tag")
    ref = ImageRef.parse("http://h/x.gvmi", HASH)
    assert (ref.kind, ref.offline_package_url) == ("url", f"hash:sha3:{HASH}:http://h/x.gvmi")
    with pytest.raises(UsageError):
        ImageRef.parse("http://h/x.gvmi")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image": "https://h/x.gvmi"}, "image_hash"),
        ({"image_hash": "xyz"}, "56 hex"),
        ({"min_cuda": "latest"}, "min_cuda"),
        ({"node_env": {"bad name": "1"}}, "environment variable"),
        ({"image": "two words"}, "image"),
        ({"budget": 0}, "budget"),
        ({"max_price_glm_per_hour": -1}, "max_price_glm_per_hour"),
    ],
)
def test_config_rejects_bad_input(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**bad)


def test_config_derived_values() -> None:
    c = config(nodes=3, max_price_glm_per_hour=2)
    assert c.golem_runtime == "vm-nvidia"
    assert c.start_price_cap == Decimal(2)
    assert c.replacements_allowed == 6
    assert config(cpu_only=True).golem_runtime == "vm"
