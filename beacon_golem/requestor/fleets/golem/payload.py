"""The demand's payload: a VM image on runtime `vm-nvidia` (or `vm` for CPU-only runs) with VPN.

yapapi's `vm.repo()` always asks for runtime `vm`, so GPU runs need this payload of our own
(the 0.13 pattern of yapapi's examples/transfer-progress). GPU runs add the constraint that the
offer describes a GPU (GAP-35), in either property layout.

Resolving an image tag or hash asks the Golem registry over the network; that step is a separate,
injectable function (`Resolver`), so building a payload and its demand needs no network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from yapapi.payload import Payload
from yapapi.payload.package import check_package_url, resolve_package_url
from yapapi.payload.vm import DEFAULT_REPOSITORY_URL, VM_CAPS_VPN
from yapapi.props import inf
from yapapi.props.base import constraint, prop
from yapapi.props.builder import DemandBuilder

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.requestor.fleets.golem.config import IMAGE_HASH, GolemFleetConfig
from beacon_golem.requestor.fleets.golem.gpu import GAP35_GPU

RUNTIME_VM_NVIDIA = "vm-nvidia"
#: The constraint golem.md names for "has a GPU" (single-GPU layout)...
GPU_CONSTRAINT = f"({GAP35_GPU}.model=*)"
#: ...and the one we send: the same, or the multi-GPU layout's first device.
GPU_ANY_LAYOUT_CONSTRAINT = f"(|{GPU_CONSTRAINT}\n\t({GAP35_GPU}.d0.model=*))"


@dataclass
class GpuVmPayload(Payload):
    """A VM image (`package_url` as `hash:sha3:<hash>:<url>`) with our hardware minimums."""

    package_url: str = prop("golem.srv.comp.task_package")
    package_format: str = prop("golem.srv.comp.vm.package_format", default="gvmkit-squash")
    runtime: str = constraint(inf.INF_RUNTIME_NAME, operator="=", default=RUNTIME_VM_NVIDIA)
    capabilities: list[str] = constraint(
        "golem.runtime.capabilities", operator="=", default_factory=lambda: [VM_CAPS_VPN]
    )
    min_mem_gib: float = constraint(inf.INF_MEM, operator=">=", default=16.0)
    min_storage_gib: float = constraint(inf.INF_STORAGE, operator=">=", default=64.0)
    min_cpu_threads: int = constraint(inf.INF_THREADS, operator=">=", default=4)
    #: Plain field (neither property nor constraint): add the GPU constraint.
    require_gpu: bool = field(default=True)

    async def decorate_demand(self, demand: DemandBuilder) -> None:
        await super().decorate_demand(demand)
        if self.require_gpu:
            demand.ensure(GPU_ANY_LAYOUT_CONSTRAINT)


class ImageRef(BaseModel):
    """An image named by registry tag, by hash, or by URL plus hash."""

    kind: Literal["tag", "hash", "url"]
    tag: str | None = None
    hash: str | None = None
    url: str | None = None

    @classmethod
    def parse(cls, image: str, image_hash: str | None = None) -> ImageRef:
        if image.startswith(("http://", "https://")):
            if not image_hash:
                raise UsageError("image: a .gvmi URL needs image_hash (sha3-224 of the file)")
            return cls(kind="url", url=image, hash=image_hash)
        if IMAGE_HASH.fullmatch(image.lower()):
            return cls(kind="hash", hash=image.lower())
        return cls(kind="tag", tag=image, hash=image_hash)

    @property
    def offline_package_url(self) -> str | None:
        """The package URL when it needs no look-up (URL plus hash), else None."""
        return f"hash:sha3:{self.hash}:{self.url}" if self.kind == "url" else None


Resolver = Callable[[ImageRef], Awaitable[str]]


def registry_resolver(registry_url: str = DEFAULT_REPOSITORY_URL) -> Resolver:
    """yapapi's helpers against `registry_url` (Golem's registry, or the sandbox's) for a tag or a
    hash; a HEAD request for a URL (network)."""

    async def resolve(ref: ImageRef) -> str:
        if ref.kind == "url":
            assert ref.url and ref.hash
            return await check_package_url(ref.url, ref.hash)
        if ref.kind == "hash":
            return await resolve_package_url(registry_url, image_hash=ref.hash)
        return await resolve_package_url(registry_url, image_tag=ref.tag)

    return resolve


async def offline_resolver(ref: ImageRef) -> str:
    """No network: a URL plus hash becomes the package URL; a tag or hash cannot be resolved."""
    url = ref.offline_package_url
    if url is None:
        raise BeaconError(f"image {ref.tag or ref.hash}: resolving a tag or hash needs the Golem registry")
    return url


def payload_for(config: GolemFleetConfig, package_url: str) -> GpuVmPayload:
    """The payload for a run, from its config and an already resolved package URL."""
    return GpuVmPayload(
        package_url=package_url,
        runtime=config.golem_runtime,
        capabilities=[VM_CAPS_VPN],
        min_mem_gib=config.min_mem_gib,
        min_storage_gib=config.min_storage_gib,
        min_cpu_threads=config.min_cpu_threads,
        require_gpu=not config.cpu_only,
    )


async def build_payload(config: GolemFleetConfig, resolver: Resolver | None = None) -> GpuVmPayload:
    """Resolve the run's image (through `resolver`; default: the config's registry) and build its payload."""
    ref = ImageRef.parse(config.image, config.image_hash)
    try:
        package_url = await (resolver or registry_resolver(config.registry_url))(ref)
    except BeaconError:
        raise
    except Exception as exc:  # aiohttp errors, registry 404s: one line for the user
        raise BeaconError(f"cannot resolve image {config.image}: {exc}") from exc
    return payload_for(config, package_url)


async def demand_for(payload: Payload, *decorators: object) -> DemandBuilder:
    """A DemandBuilder decorated by the payload (and e.g. a strategy), as the engine builds it."""
    demand = DemandBuilder()
    await demand.decorate(payload, *decorators)  # type: ignore[arg-type]
    return demand
