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

from beacon_golem.core.node import GPUInfo, SystemInfo
from beacon_golem.core.probe import NvidiaInfo


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


# ---- NVIDIA: parsers for what nvidia-smi and the kernel module print -------------------------
# nvidia-smi's text changes between drivers (tests/data/nvidia_smi holds real samples):
#   banner, drivers up to 59x:  "| NVIDIA-SMI 575.57.08   Driver Version: 575.57.08   CUDA Version: 12.9 |"
#   banner, drivers 610 on:     "| NVIDIA-SMI 610.57.04   KMD Version: 610.57.04   CUDA UMD Version: 13.3 |"
#   banner, driver 331:         no CUDA version at all;  "CUDA Version: N/A" where no CUDA driver loads
#   `nvidia-smi --version` 610: "DRIVER version : Deprecated, see "KMD version" instead"
#   `-q`:                       "Driver Version                            : 550.127.05"
#   /proc/driver/nvidia/version: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build ..."
#   versions have three parts (575.57.08) or two (550.135, 595.80).
_VERSION = r"(\d+\.\d+(?:\.\d+)?)"
_DRIVER_RES = (
    re.compile(r"(?:KMD|Driver)\s+Version\s*:\s*" + _VERSION, re.I),
    re.compile(r"<driver_version>\s*" + _VERSION, re.I),
    re.compile(r"NVRM version:.*?\s" + _VERSION + r"\s", re.I),
    re.compile(r"NVIDIA-SMI\s+(?:version\s*:\s*)?" + _VERSION, re.I),
)
_CUDA_RE = re.compile(r"CUDA\s+(?:UMD\s+)?Version\s*:\s*([0-9][0-9.]*)", re.I)
_UNITS_RE = re.compile(r"\s*(MiB|GiB|MB|GB|%|W|MHz|C)$")
#: A GPU row of the default table: index, name, persistence mode, then a PCI bus id. MIG rows
#: ("|  0    2   0   0  |   26MiB / 40448MiB |") have no bus id and are skipped.
_TABLE_GPU_RE = re.compile(
    r"^\|\s*(\d+)\s+(.+?)\s+(?:On|Off|N/A)\s*\|\s*[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]"
)
_TABLE_MEMORY_RE = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB")


def parse_driver_version(text: str) -> str | None:
    """The NVIDIA driver version in any of nvidia-smi's outputs or /proc/driver/nvidia/version.

    Also takes a bare version ("575.57.08", a csv cell). None when there is none, including
    the "Deprecated" placeholder newer drivers print under "DRIVER version".
    """
    text = text or ""
    bare = text.strip()
    if re.fullmatch(_VERSION, bare):
        return bare
    for regex in _DRIVER_RES:
        match = regex.search(text)
        if match:
            return match.group(1)
    return None


def parse_cuda_version(text: str) -> str | None:
    """The highest CUDA version the driver supports, from the banner, `-q` or `--version`.

    "CUDA Version: N/A" (no usable CUDA driver) and the "Deprecated" placeholder give None.
    """
    for match in _CUDA_RE.finditer(text or ""):
        value = match.group(1).strip(".")
        if re.fullmatch(r"\d+\.\d+(?:\.\d+)?", value):
            return value
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """'575.57.08' -> (575, 57, 8); '550.135' -> (550, 135). Raises ValueError on junk."""
    parts = version.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in parts)


def version_at_least(version: str | None, minimum: str) -> bool:
    """Whether `version` >= `minimum`, comparing numerically part by part (550.135 < 575.57.08)."""
    if not version:
        return False
    try:
        have, need = version_tuple(version), version_tuple(minimum)
    except ValueError:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def _cell(value: str) -> str | None:
    value = value.strip()
    if not value or value.startswith("[") or value in ("N/A", "Not Supported"):
        return None  # "[N/A]", "[Not Supported]", "[Requested functionality has been deprecated]"
    return _UNITS_RE.sub("", value).strip() or None


def _mib(value: str | None) -> int | None:
    return int(float(value)) if value and re.fullmatch(r"[0-9.]+", value) else None


_CSV_COLUMNS = {
    "index": "index",
    "name": "name",
    "gpu_name": "name",
    "memory.total": "memory",
    "driver_version": "driver",
    "compute_cap": "compute_cap",
}


def parse_nvidia_smi_csv(csv_text: str, header_text: str = "") -> list[GPUInfo]:
    """Parse `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`.

    With a header line the columns are found by name, in any order and among any others
    ("memory.total [MiB]", units such as "81559 MiB" and "[N/A]" cells are handled). Without
    one they are taken as index, name, memory.total, driver_version[, compute_cap].
    `header_text` is plain `nvidia-smi` output, whose banner carries the CUDA version.
    """
    cuda = parse_cuda_version(header_text)
    lines = [line for line in (csv_text or "").strip().splitlines() if line.strip()]
    if not lines:
        return []
    positions = {"index": 0, "name": 1, "memory": 2, "driver": 3, "compute_cap": 4}
    first = [c.strip() for c in lines[0].split(",")]
    if "name" in first or "gpu_name" in first:
        positions = {}
        for i, title in enumerate(first):
            key = _CSV_COLUMNS.get(title.split(" [", 1)[0].strip())
            if key and key not in positions:
                positions[key] = i
        lines = lines[1:]
    gpus = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        # A comma in a GPU name would shift the cells; nvidia-smi's names have none in practice.
        if len(cells) < 2:
            continue

        def get(key: str, cells: list[str] = cells) -> str | None:
            i = positions.get(key)
            return _cell(cells[i]) if i is not None and i < len(cells) else None

        name = get("name")
        if not name:
            continue
        index = get("index")
        gpus.append(
            GPUInfo(
                index=int(index) if index and index.isdigit() else None,
                name=name,
                memory_total_mib=_mib(get("memory")),
                driver_version=parse_driver_version(get("driver") or ""),
                cuda_version=cuda,
                compute_capability=get("compute_cap"),
            )
        )
    return gpus


def parse_nvidia_smi_table(text: str) -> list[GPUInfo]:
    """GPUs from plain `nvidia-smi`: index, name (the table cuts long names with "..."), memory.

    Handles the 79-column layout of old drivers and the 89-column one of newer drivers;
    MIG instance rows are not GPUs and are skipped.
    """
    driver = parse_driver_version(text)
    cuda = parse_cuda_version(text)
    gpus: list[GPUInfo] = []
    pending: GPUInfo | None = None
    for line in (text or "").splitlines():
        row = _TABLE_GPU_RE.match(line)
        if row:
            pending = GPUInfo(index=int(row.group(1)), name=row.group(2).strip(), driver_version=driver, cuda_version=cuda)
            gpus.append(pending)
            continue
        memory = _TABLE_MEMORY_RE.search(line)
        if pending is not None and memory:
            pending.memory_total_mib = int(memory.group(2))
            pending = None
    return gpus




async def _run_full(*argv: str, timeout_s: float = 15.0) -> tuple[int, str] | None:
    """(exit code, stdout + stderr) of a command; None when it cannot start or times out."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    return proc.returncode or 0, out.decode(errors="replace")


async def _run(*argv: str, timeout_s: float = 10.0) -> str | None:
    result = await _run_full(*argv, timeout_s=timeout_s)
    return result[1] if result is not None and result[0] == 0 else None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]


async def read_nvidia(
    nvidia_smi: str | None = None, proc_version: Path = Path("/proc/driver/nvidia/version")
) -> NvidiaInfo:
    """Driver, CUDA and GPUs from nvidia-smi, falling back to the kernel module's version file."""
    info = NvidiaInfo()
    binary = nvidia_smi or shutil.which("nvidia-smi")
    if binary:
        info.nvidia_smi = binary
        banner = await _run_full(binary, timeout_s=30)
        if banner is None:
            info.error = f"{binary} did not run (or took over 30 s)"
        elif banner[0] != 0:
            info.error = f"nvidia-smi failed (exit {banner[0]}): {_first_line(banner[1]) or 'no output'}"
        else:
            text = banner[1]
            info.driver_version, info.cuda_version = parse_driver_version(text), parse_cuda_version(text)
            info.source = "nvidia-smi" if info.driver_version else None
            # compute_cap is unknown to drivers before about 510: ask again without it.
            for fields in ("index,name,memory.total,driver_version,compute_cap", "index,name,memory.total,driver_version"):
                csv_text = await _run(binary, f"--query-gpu={fields}", "--format=csv")
                if csv_text:
                    info.gpus = parse_nvidia_smi_csv(csv_text, text)
                    break
            if not info.gpus:
                info.gpus = parse_nvidia_smi_table(text)
            if not info.driver_version and info.gpus:
                info.driver_version, info.source = info.gpus[0].driver_version, "nvidia-smi"
    else:
        info.error = "nvidia-smi not found"
    if not info.driver_version:
        try:
            version = parse_driver_version(proc_version.read_text(errors="replace"))
        except OSError:
            version = None
        if version:
            info.driver_version, info.source = version, str(proc_version)
    return info


async def read_gpus(nvidia_smi: str | None = None) -> list[GPUInfo]:
    binary = nvidia_smi or shutil.which("nvidia-smi")
    if not binary:
        return []
    return (await read_nvidia(binary)).gpus


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
