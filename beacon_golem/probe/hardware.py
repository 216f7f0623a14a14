"""Facts about the machine a node runs on: OS, kernel, CPU, memory, disk and NVIDIA GPUs.

Used by the shim's /info fingerprint and by `beacon probe`. Every reader copes with the
thing being absent (no GPU, no nvidia-smi): it reports absence, never raises.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
from pathlib import Path

import psutil
from pydantic import BaseModel, Field


class GPUInfo(BaseModel):
    name: str
    memory_total_mib: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    index: int | None = None


class SystemInfo(BaseModel):
    os: str
    distribution: str | None = None
    kernel: str
    arch: str
    cpu_model: str | None = None
    cpu_cores: int | None = None
    ram_gib: float
    disk_total_gib: float | None = None
    disk_free_gib: float | None = None
    gpus: list[GPUInfo] = Field(default_factory=list)
    hostname: str | None = None


def read_distribution(os_release: Path = Path("/etc/os-release")) -> str | None:
    try:
        text = os_release.read_text()
    except OSError:
        return None
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    pretty = fields.get("PRETTY_NAME") or fields.get("NAME")
    return pretty.strip().strip('"') if pretty else None


def read_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


_CUDA_RE = re.compile(r"CUDA Version:\s*([0-9.]+)")


def parse_nvidia_smi_csv(csv_text: str, header_text: str = "") -> list[GPUInfo]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader,nounits`.

    `header_text` is plain `nvidia-smi` output, whose banner carries the CUDA version.
    """
    cuda = _CUDA_RE.search(header_text)
    gpus = []
    for line in csv_text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[1]:
            continue
        index, name, memory, driver = cells[:4]
        gpus.append(
            GPUInfo(
                index=int(index) if index.isdigit() else None,
                name=name,
                memory_total_mib=int(float(memory)) if re.fullmatch(r"[0-9.]+", memory) else None,
                driver_version=driver or None,
                cuda_version=cuda.group(1) if cuda else None,
            )
        )
    return gpus


async def _run(*argv: str, timeout_s: float = 10.0) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def read_gpus(nvidia_smi: str | None = None) -> list[GPUInfo]:
    binary = nvidia_smi or shutil.which("nvidia-smi")
    if not binary:
        return []
    csv_text = await _run(
        binary, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"
    )
    if not csv_text:
        return []
    return parse_nvidia_smi_csv(csv_text, await _run(binary) or "")


async def system_info(disk_path: Path | None = None) -> SystemInfo:
    uname = platform.uname()
    disk = None
    try:
        disk = psutil.disk_usage(str(disk_path or Path.cwd()))
    except OSError:
        pass
    gib = 1024**3
    return SystemInfo(
        os=uname.system,
        distribution=read_distribution(),
        kernel=uname.release,
        arch=uname.machine,
        cpu_model=read_cpu_model(),
        cpu_cores=os.cpu_count(),
        ram_gib=round(psutil.virtual_memory().total / gib, 2),
        disk_total_gib=round(disk.total / gib, 2) if disk else None,
        disk_free_gib=round(disk.free / gib, 2) if disk else None,
        gpus=await read_gpus(),
        hostname=uname.node or None,
    )
