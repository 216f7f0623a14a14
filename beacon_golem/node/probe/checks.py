"""One verdict per machine property: pass, warn or fail, each with the reason in words.

Every check is a pure function of `MachineFacts`. "skip" marks a check that was not asked
for (the outbound network check is off unless requested).
"""

from __future__ import annotations

from collections.abc import Callable

from beacon_golem.core.probe import CheckResult, MachineFacts
from beacon_golem.node.probe.hardware import version_at_least
from beacon_golem.node.probe.requirements import (
    CUDA12_MIN_DRIVER,
    DMR_MIN_DRIVER,
    GOOD_DISK_GIB,
    GOOD_KERNEL,
    GOOD_RAM_GIB,
    GOOD_VRAM_GIB,
    IMAGE_CUDA,
    IMAGE_MIN_DRIVER,
    MIN_DISK_GIB,
    MIN_GLIBC,
    MIN_KERNEL,
    MIN_RAM_GIB,
    X86_64,
)

SEVERITY: dict[str, int] = {"skip": 0, "pass": 0, "warn": 1, "fail": 2}






def _kernel_release(kernel: str) -> str:
    """'6.8.0-100-generic' -> '6.8.0'."""
    head = kernel.split("-", 1)[0]
    return ".".join(p for p in head.split(".") if p.isdigit()) or "0"


def check_os(f: MachineFacts) -> CheckResult:
    if f.os == "Linux":
        return CheckResult(id="os", title="Operating system", status="pass", value="Linux", reason="Linux")
    return CheckResult(
        id="os", title="Operating system", status="fail", value=f.os,
        reason=f"{f.os} is not Linux: Golem providers and these VM images need Linux",
    )  # fmt: skip


def check_arch(f: MachineFacts) -> CheckResult:
    if f.arch in X86_64:
        return CheckResult(id="arch", title="CPU architecture", status="pass", value=f.arch, reason="x86-64")
    return CheckResult(
        id="arch", title="CPU architecture", status="fail", value=f.arch,
        reason=f"{f.arch} is not x86-64: Golem's VM runtime and our images are x86-64 only",
    )  # fmt: skip


def check_kernel(f: MachineFacts) -> CheckResult:
    release = _kernel_release(f.kernel)
    if version_at_least(release, GOOD_KERNEL):
        status, reason = "pass", f"kernel {release} >= {GOOD_KERNEL}"
    elif version_at_least(release, MIN_KERNEL):
        status, reason = "warn", f"kernel {release} is old (< {GOOD_KERNEL}); current NVIDIA drivers still support it"
    else:
        status, reason = "fail", f"kernel {release} < {MIN_KERNEL}: current NVIDIA drivers do not support it"
    return CheckResult(id="kernel", title="Kernel", status=status, value=f.kernel, reason=reason)


def check_distribution(f: MachineFacts) -> CheckResult:
    d = f.distribution
    if d is None or not (d.pretty_name or d.id):
        return CheckResult(
            id="distribution", title="Distribution", status="warn", value=None,
            reason="no /etc/os-release: cannot tell the distribution",
        )  # fmt: skip
    name = d.pretty_name or f"{d.id} {d.version_id or ''}".strip()
    return CheckResult(id="distribution", title="Distribution", status="pass", value=name, reason=name)


def check_glibc(f: MachineFacts) -> CheckResult:
    libc = f.libc
    if libc.name == "glibc" and libc.version:
        ok = version_at_least(libc.version, MIN_GLIBC)
        return CheckResult(
            id="glibc", title="C library", status="pass" if ok else "fail", value=f"glibc {libc.version}",
            reason=f"glibc {libc.version} {'>=' if ok else '<'} {MIN_GLIBC}"
            + ("" if ok else ": prebuilt runtime binaries (PyTorch, Ollama) will not load"),
        )  # fmt: skip
    if libc.name == "musl":
        return CheckResult(
            id="glibc", title="C library", status="fail", value="musl",
            reason="musl libc: the runtimes' prebuilt binaries need glibc",
        )  # fmt: skip
    return CheckResult(id="glibc", title="C library", status="warn", value=None, reason="cannot tell the C library")


def check_nvidia_driver(f: MachineFacts) -> CheckResult:
    n = f.nvidia
    version = n.driver_version
    if not version:
        why = n.error or "nvidia-smi not found"
        return CheckResult(
            id="nvidia_driver", title="NVIDIA driver", status="fail", value=None,
            reason=f"no NVIDIA driver ({why}): GPU inference impossible, runtimes fall back to the CPU",
        )  # fmt: skip
    where = f" (from {n.source})" if n.source and n.source != "nvidia-smi" else ""
    if version_at_least(version, DMR_MIN_DRIVER):
        return CheckResult(
            id="nvidia_driver", title="NVIDIA driver", status="pass", value=version,
            reason=f"{version} >= {DMR_MIN_DRIVER} (Docker Model Runner's minimum){where}",
        )  # fmt: skip
    if version_at_least(version, IMAGE_MIN_DRIVER):
        reason = (
            f"{version} < {DMR_MIN_DRIVER}: Docker Model Runner would run on the CPU; "
            f"fine for the CUDA {IMAGE_CUDA} images (>= {IMAGE_MIN_DRIVER}){where}"
        )
    elif version_at_least(version, CUDA12_MIN_DRIVER):
        reason = (
            f"{version} < {IMAGE_MIN_DRIVER}: the CUDA {IMAGE_CUDA} images run only through CUDA minor-version "
            f"compatibility, and Docker Model Runner (>= {DMR_MIN_DRIVER}) on the CPU; upgrade the driver{where}"
        )
    else:
        reason = (
            f"{version} < {CUDA12_MIN_DRIVER}: too old for CUDA 12, the GPU images fall back to the CPU "
            f"or fail; upgrade the driver{where}"
        )
    return CheckResult(id="nvidia_driver", title="NVIDIA driver", status="warn", value=version, reason=reason)


def check_cuda(f: MachineFacts) -> CheckResult:
    cuda = f.nvidia.cuda_version
    if not cuda:
        why = "no NVIDIA driver" if not f.nvidia.driver_version else "nvidia-smi reports no CUDA version"
        return CheckResult(id="cuda", title="CUDA (driver)", status="fail", value=None, reason=why)
    if version_at_least(cuda, IMAGE_CUDA):
        return CheckResult(
            id="cuda", title="CUDA (driver)", status="pass", value=cuda,
            reason=f"driver supports CUDA {cuda} >= {IMAGE_CUDA}, the runtime in our GPU images",
        )  # fmt: skip
    major_ok = cuda.split(".")[0] == IMAGE_CUDA.split(".")[0]
    return CheckResult(
        id="cuda", title="CUDA (driver)", status="warn" if major_ok else "fail", value=cuda,
        reason=f"driver supports CUDA {cuda} < {IMAGE_CUDA}: "
        + ("minor-version compatibility usually runs 12.x builds, but JIT-compiled kernels may fail"
           if major_ok else "the CUDA 12 images will not run"),
    )  # fmt: skip


def check_gpus(f: MachineFacts) -> CheckResult:
    gpus = f.nvidia.gpus
    if not gpus:
        return CheckResult(id="gpus", title="GPUs", status="fail", value="none", reason="no NVIDIA GPU found")
    described = ", ".join(
        f"{g.name} ({g.memory_total_mib / 1024:.0f} GiB)" if g.memory_total_mib else g.name for g in gpus
    )
    small = [g for g in gpus if g.memory_total_mib is not None and g.memory_total_mib / 1024 < GOOD_VRAM_GIB]
    if small and len(small) == len(gpus):
        return CheckResult(
            id="gpus", title="GPUs", status="warn", value=described,
            reason=f"less than {GOOD_VRAM_GIB:.0f} GiB of GPU memory: small models only",
        )  # fmt: skip
    return CheckResult(id="gpus", title="GPUs", status="pass", value=described, reason=f"{len(gpus)} NVIDIA GPU(s)")


def check_kvm(f: MachineFacts) -> CheckResult:
    k = f.kvm
    if not k.dev_kvm:
        return CheckResult(
            id="kvm", title="/dev/kvm", status="fail", value="absent",
            reason="no /dev/kvm: enable VT-x/AMD-V in the firmware; Golem providers run tasks in KVM VMs",
        )  # fmt: skip
    if not k.accessible:
        return CheckResult(
            id="kvm", title="/dev/kvm", status="warn", value="not accessible",
            reason="/dev/kvm exists but this user cannot open it (add the user to the kvm group)",
        )  # fmt: skip
    return CheckResult(id="kvm", title="/dev/kvm", status="pass", value="present", reason="KVM available")


def check_nested(f: MachineFacts) -> CheckResult:
    k = f.kvm
    if k.module is None or k.nested is None:
        return CheckResult(
            id="nested_virt", title="Nested virtualization", status="warn", value="unknown",
            reason="neither kvm_intel nor kvm_amd says: cannot tell (matters only if this machine is itself a VM host for VMs)",
        )  # fmt: skip
    if k.nested:
        return CheckResult(
            id="nested_virt", title="Nested virtualization", status="pass", value=f"{k.module}: on",
            reason="nested virtualization on",
        )  # fmt: skip
    return CheckResult(
        id="nested_virt", title="Nested virtualization", status="warn", value=f"{k.module}: off",
        reason=f"nested virtualization off ({k.module} nested=N): a provider running inside a VM here cannot start Golem VMs",
    )  # fmt: skip


def check_iommu(f: MachineFacts) -> CheckResult:
    groups = f.iommu_groups
    if groups:
        return CheckResult(
            id="iommu", title="IOMMU", status="pass", value=f"{groups} groups",
            reason="IOMMU on: a GPU can be passed through to Golem's vm-nvidia runtime (VFIO)",
        )  # fmt: skip
    return CheckResult(
        id="iommu", title="IOMMU", status="warn", value="off" if groups == 0 else "unknown",
        reason="no IOMMU groups: GPU passthrough (vm-nvidia) needs intel_iommu=on / amd_iommu=on and VT-d/AMD-Vi",
    )  # fmt: skip


def check_docker(f: MachineFacts) -> CheckResult:
    d = f.docker
    if d.server_version:
        return CheckResult(
            id="docker", title="Docker engine", status="pass", value=d.server_version,
            reason=f"Docker engine {d.server_version} (builds VM images)",
        )  # fmt: skip
    return CheckResult(
        id="docker", title="Docker engine", status="warn", value="CLI only" if d.cli else "absent",
        reason=f"{d.error or 'no Docker engine'}; needed only to build VM images",
    )  # fmt: skip


def check_model_plugin(f: MachineFacts) -> CheckResult:
    d = f.docker
    if d.model_plugin:
        version = d.model_plugin_version or "unknown version"
        return CheckResult(
            id="docker_model_plugin", title="docker-model-plugin", status="pass", value=version,
            reason=f"Docker Model Runner CLI plugin at {d.model_plugin}",
        )  # fmt: skip
    return CheckResult(
        id="docker_model_plugin", title="docker-model-plugin", status="warn", value="absent",
        reason="not installed; only `docker model` on this host needs it (the dmr VM image runs model-runner itself)",
    )  # fmt: skip


def check_cgroups(f: MachineFacts) -> CheckResult:
    c = f.cgroup
    if c == "v2":
        return CheckResult(id="cgroups", title="cgroups", status="pass", value="v2", reason="cgroup v2 (unified)")
    if c in ("v1", "hybrid"):
        return CheckResult(
            id="cgroups", title="cgroups", status="warn", value=c,
            reason=f"cgroup {c}: works, but Docker and systemd are retiring cgroup v1",
        )  # fmt: skip
    return CheckResult(id="cgroups", title="cgroups", status="warn", value=None, reason="no cgroup mount found")


def check_memory(f: MachineFacts) -> CheckResult:
    total = f.memory_total_gib
    if total is None:
        return CheckResult(id="memory", title="Memory", status="warn", value=None, reason="cannot read memory size")
    value = f"{total:.1f} GiB" + (f" ({f.memory_available_gib:.1f} available)" if f.memory_available_gib is not None else "")
    if total >= GOOD_RAM_GIB:
        status, reason = "pass", f"{total:.1f} GiB >= {GOOD_RAM_GIB:.0f} GiB"
    elif total >= MIN_RAM_GIB:
        status, reason = "warn", f"{total:.1f} GiB < {GOOD_RAM_GIB:.0f} GiB: models over ~7B may not load"
    else:
        status, reason = "fail", f"{total:.1f} GiB < {MIN_RAM_GIB:.0f} GiB: too little to load most models"
    return CheckResult(id="memory", title="Memory", status=status, value=value, reason=reason)


def check_disk(f: MachineFacts) -> CheckResult:
    free = f.disk_free_gib
    if free is None:
        return CheckResult(id="disk", title="Free disk", status="warn", value=None, reason="cannot read free disk space")
    where = f" at {f.disk_path}" if f.disk_path else ""
    value = f"{free:.1f} GiB free{where}"
    if free >= GOOD_DISK_GIB:
        status, reason = "pass", f"{free:.1f} GiB >= {GOOD_DISK_GIB:.0f} GiB"
    elif free >= MIN_DISK_GIB:
        status, reason = "warn", f"{free:.1f} GiB < {GOOD_DISK_GIB:.0f} GiB: room for an image and one small model"
    else:
        status, reason = "fail", f"{free:.1f} GiB < {MIN_DISK_GIB:.0f} GiB: not enough for an image and a model"
    return CheckResult(id="disk", title="Free disk", status=status, value=value, reason=reason)


def check_network(f: MachineFacts) -> CheckResult:
    n = f.network
    if n is None:
        return CheckResult(
            id="network", title="Outbound network", status="skip", value="not checked",
            reason="not checked (use --network); needed only to pull models at start",
        )  # fmt: skip
    answered = sorted(t for t, a in n.targets.items() if a.startswith("ok"))
    if n.reachable:
        return CheckResult(
            id="network", title="Outbound network", status="pass", value=f"{len(answered)}/{len(n.targets)} reachable",
            reason=f"reached {', '.join(answered)}",
        )  # fmt: skip
    first = next(iter(n.targets.items()), ("", "no targets"))
    return CheckResult(
        id="network", title="Outbound network", status="warn", value="unreachable",
        reason=f"no outbound connection ({first[0]}: {first[1]}): bake or upload models instead of pulling",
    )  # fmt: skip


CHECKS: tuple[Callable[[MachineFacts], CheckResult], ...] = (
    check_os,
    check_arch,
    check_kernel,
    check_distribution,
    check_glibc,
    check_nvidia_driver,
    check_cuda,
    check_gpus,
    check_kvm,
    check_nested,
    check_iommu,
    check_docker,
    check_model_plugin,
    check_cgroups,
    check_memory,
    check_disk,
    check_network,
)


def run_checks(facts: MachineFacts) -> list[CheckResult]:
    return [check(facts) for check in CHECKS]
