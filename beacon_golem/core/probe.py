"""The probe's models: machine facts, check results, runtime verdicts and the report that holds them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from beacon_golem import __version__
from beacon_golem.core.node import GPUInfo


class NvidiaInfo(BaseModel):
    """What the NVIDIA tools say about this machine; empty fields when there is no driver."""

    nvidia_smi: str | None = None
    driver_version: str | None = None
    #: The highest CUDA version the driver supports (nvidia-smi's banner), not a toolkit's.
    cuda_version: str | None = None
    gpus: list[GPUInfo] = Field(default_factory=list)
    #: Where driver_version came from: "nvidia-smi" or "/proc/driver/nvidia/version".
    source: str | None = None
    #: Why nvidia-smi gave nothing, in one line (not installed, driver not loaded, ...).
    error: str | None = None


class OsRelease(BaseModel):
    """The fields of /etc/os-release the probe uses."""

    id: str | None = None
    version_id: str | None = None
    pretty_name: str | None = None


class LibcInfo(BaseModel):
    name: str | None = None  # "glibc" or "musl"
    version: str | None = None


class KvmInfo(BaseModel):
    """Hardware virtualization as Golem's VM runtime needs it."""

    dev_kvm: bool = False
    #: Whether this user may open /dev/kvm for reading and writing.
    accessible: bool = False
    #: "kvm_intel" or "kvm_amd" when one is loaded.
    module: str | None = None
    #: Nested virtualization (a VM inside this machine's VMs); None when no module tells.
    nested: bool | None = None


class DockerInfo(BaseModel):
    #: Path of the docker CLI, None when it is not installed.
    cli: str | None = None
    #: The engine's version when `docker info` reached it.
    server_version: str | None = None
    #: Why there is no engine, in one line.
    error: str | None = None
    #: Path and version of the `docker-model` CLI plugin (Docker Model Runner).
    model_plugin: str | None = None
    model_plugin_version: str | None = None

    @property
    def engine(self) -> bool:
        return self.server_version is not None


class NetworkResult(BaseModel):
    reachable: bool
    #: "host:port" -> "ok 41 ms" or the reason it failed.
    targets: dict[str, str] = Field(default_factory=dict)
    timeout_s: float


GIB = 1024**3


class MachineFacts(BaseModel):
    os: str
    arch: str
    kernel: str
    distribution: OsRelease | None = None
    libc: LibcInfo = Field(default_factory=LibcInfo)
    nvidia: NvidiaInfo = Field(default_factory=NvidiaInfo)
    kvm: KvmInfo = Field(default_factory=KvmInfo)
    iommu_groups: int | None = None
    docker: DockerInfo = Field(default_factory=DockerInfo)
    cgroup: str | None = None
    cpu_cores: int | None = None
    memory_total_gib: float | None = None
    memory_available_gib: float | None = None
    disk_path: str | None = None
    disk_free_gib: float | None = None
    disk_total_gib: float | None = None
    #: None when the outbound check was not asked for.
    network: NetworkResult | None = None


Status = Literal["pass", "warn", "fail", "skip"]


class CheckResult(BaseModel):
    id: str
    title: str
    status: Status
    value: str | None = None
    reason: str


def worst(statuses: list[str]) -> Status:
    if any(s == "fail" for s in statuses):
        return "fail"
    if any(s == "warn" for s in statuses):
        return "warn"
    return "pass"


RUNTIMES = ("ollama", "dmr", "vllm", "llamacpp")


class RuntimeVerdict(BaseModel):
    runtime: str
    status: Status
    can_run: bool
    #: What it would run on here: "gpu", "cpu", or None when it cannot run.
    accelerator: Literal["gpu", "cpu"] | None = None
    reasons: list[str] = Field(default_factory=list)


class ProbeReport(BaseModel):
    beacon_version: str = __version__
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: The worst check status ("skip" counts as pass).
    status: Status
    checks: list[CheckResult]
    runtimes: list[RuntimeVerdict]
    facts: MachineFacts

    def check(self, check_id: str) -> CheckResult:
        return next(c for c in self.checks if c.id == check_id)

    def runtime(self, name: str) -> RuntimeVerdict:
        return next(r for r in self.runtimes if r.runtime == name)
