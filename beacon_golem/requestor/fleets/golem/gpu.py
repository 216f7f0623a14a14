"""Reading a provider's GPU from its offer: the GAP-35 properties, in both layouts.

Single GPU: `golem.!exp.gap-35.v1.inf.gpu.model`, `...gpu.memory.total.gib`, `...gpu.cuda.version`.
Several GPUs: `...gpu.d0.model`, `...gpu.d0.memory.total.gib`, `...gpu.d0.quantity` (then d1, d2...),
with `...gpu.cuda.version` and/or `...gpu.cuda.driver.version` (an NVIDIA driver version such as
545.23.08, from which the highest CUDA version the driver supports is derived).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

GAP35_GPU = "golem.!exp.gap-35.v1.inf.gpu"

# Minimum Linux driver for each CUDA toolkit (NVIDIA CUDA toolkit release notes, table 3).
_DRIVER_FOR_CUDA: list[tuple[tuple[int, ...], tuple[int, int]]] = [
    ((580, 65), (13, 0)),
    ((575, 51), (12, 9)),
    ((570, 26), (12, 8)),
    ((560, 28), (12, 6)),
    ((555, 42), (12, 5)),
    ((550, 54), (12, 4)),
    ((545, 23), (12, 3)),
    ((535, 54), (12, 2)),
    ((530, 30), (12, 1)),
    ((525, 60), (12, 0)),
    ((520, 61), (11, 8)),
    ((515, 43), (11, 7)),
    ((510, 39), (11, 6)),
    ((495, 29), (11, 5)),
    ((470, 42), (11, 4)),
    ((465, 19), (11, 3)),
    ((460, 27), (11, 2)),
    ((455, 23), (11, 1)),
    ((450, 36), (11, 0)),
]


class GpuDevice(BaseModel):
    model: str | None = None
    memory_gib: float | None = None
    quantity: int = Field(default=1, ge=1)
    compute_capability: str | None = None


class GpuInfo(BaseModel):
    """What an offer says about its GPUs; `cuda_version` as text ("12.4") when known."""

    devices: list[GpuDevice]
    cuda_version: str | None = None
    driver_version: str | None = None
    layout: str = "single"  # "single" or "multi"

    @property
    def model(self) -> str | None:
        return next((d.model for d in self.devices if d.model), None)

    @property
    def models(self) -> list[str]:
        return [d.model for d in self.devices if d.model]

    @property
    def count(self) -> int:
        return sum(d.quantity for d in self.devices)

    @property
    def vram_gib(self) -> float:
        """Memory of the largest single GPU: what one model replica can use."""
        return max((d.memory_gib or 0.0 for d in self.devices), default=0.0)

    @property
    def total_vram_gib(self) -> float:
        return sum((d.memory_gib or 0.0) * d.quantity for d in self.devices)

    @property
    def cuda(self) -> tuple[int, ...] | None:
        """The CUDA version the provider can run: stated, else derived from the driver version."""
        return parse_version(self.cuda_version) or cuda_for_driver(self.driver_version)


def flatten(props: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Offers usually come flat (dotted keys); a nested object is flattened the same way."""
    flat: dict[str, Any] = {}
    for key, value in props.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def parse_version(text: Any) -> tuple[int, ...] | None:
    """'12.4' -> (12, 4); anything without a leading number -> None."""
    if text is None:
        return None
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def cuda_for_driver(driver: Any) -> tuple[int, ...] | None:
    """The highest CUDA version an NVIDIA driver supports, or the value itself if it is one."""
    version = parse_version(driver)
    if version is None:
        return None
    if version[0] < 100:  # already a CUDA version (some providers put it here)
        return version
    for min_driver, cuda in _DRIVER_FOR_CUDA:
        if version[: len(min_driver)] >= min_driver:
            return cuda
    return (10, 0)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any, default: int = 1) -> int:
    try:
        return max(int(float(value)), 1)
    except (TypeError, ValueError):
        return default


def read_gpu(props: Mapping[str, Any]) -> GpuInfo | None:
    """The GPUs an offer describes, or None where it describes none."""
    flat = flatten(props)
    p = GAP35_GPU + "."
    cuda = flat.get(p + "cuda.version")
    driver = flat.get(p + "cuda.driver.version")
    devices: list[GpuDevice] = []
    index = 0
    while any(k.startswith(f"{p}d{index}.") for k in flat):
        d = f"{p}d{index}."
        devices.append(
            GpuDevice(
                model=_str(flat.get(d + "model")),
                memory_gib=_float(flat.get(d + "memory.total.gib")),
                quantity=_int(flat.get(d + "quantity")),
                compute_capability=_str(flat.get(d + "cuda.caps") or flat.get(d + "cuda.compute-capability")),
            )
        )
        index += 1
    if devices:
        return GpuInfo(devices=devices, cuda_version=_str(cuda), driver_version=_str(driver), layout="multi")
    if p + "model" in flat or p + "memory.total.gib" in flat:
        device = GpuDevice(
            model=_str(flat.get(p + "model")),
            memory_gib=_float(flat.get(p + "memory.total.gib")),
            compute_capability=_str(flat.get(p + "cuda.compute-capability")),
        )
        return GpuInfo(devices=[device], cuda_version=_str(cuda), driver_version=_str(driver), layout="single")
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
