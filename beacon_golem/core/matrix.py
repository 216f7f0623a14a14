"""The compatibility matrix: one row per probed node (GPU, driver, CUDA, checks, runnable runtimes), built from fingerprints and probe reports."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from beacon_golem.core.clock import utcnow
from beacon_golem.core.node import Node, NodeInfo
from beacon_golem.core.probe import RUNTIMES, ProbeReport

RowStatus = Literal["pass", "warn", "fail", "error"]


#: Event kind of a fleet note kept for the matrix (a provider that never became a node, ...).
NOTE_EVENT = "pilot_note"


class GpuCell(BaseModel):
    name: str
    memory_gib: float | None = None
    compute_capability: str | None = None


class CheckCell(BaseModel):
    id: str
    title: str
    status: str
    value: str | None = None
    reason: str


class RuntimeCell(BaseModel):
    runtime: str
    status: str
    can_run: bool
    #: "gpu" or "cpu" where it can run; None where it cannot.
    accelerator: Literal["gpu", "cpu"] | None = None
    reasons: list[str] = Field(default_factory=list)

    @property
    def label(self) -> str:
        """`vllm (GPU)`, `llamacpp (CPU)`, or the bare name where it cannot run."""
        return f"{self.runtime} ({self.accelerator.upper()})" if self.can_run and self.accelerator else self.runtime


class MatrixRow(BaseModel):
    """One node: where it is, what it has, each check, each runtime."""

    node_id: str
    fleet: str | None = None
    url: str | None = None
    region: str | None = None
    provider_id: str | None = None
    provider_name: str | None = None
    #: The probe's overall status; "error" when the node gave no probe (see `error`).
    status: RowStatus
    error: str | None = None
    #: The runtime the node serves now (from /info), e.g. "llamacpp b6000".
    serving: str | None = None
    gpus: list[GpuCell] = Field(default_factory=list)
    #: "2× NVIDIA A40 (45 GiB)", or "none".
    gpu: str = "none"
    vram_gib: float | None = None
    driver: str | None = None
    cuda: str | None = None
    #: Where the GPU facts come from: the probe, the /info fingerprint, or the provider's offer.
    gpu_source: Literal["probe", "info", "offer"] | None = None
    cpu: str | None = None
    cpu_cores: int | None = None
    ram_gib: float | None = None
    os: str | None = None
    checks: list[CheckCell] = Field(default_factory=list)
    runtimes: list[RuntimeCell] = Field(default_factory=list)
    #: Things worth saying that no check says (an offer's GPU the VM does not see, ...).
    notes: list[str] = Field(default_factory=list)
    probed_at: datetime | None = None
    beacon_version: str | None = None

    def check(self, check_id: str) -> CheckCell | None:
        return next((c for c in self.checks if c.id == check_id), None)

    def runtime(self, name: str) -> RuntimeCell | None:
        return next((r for r in self.runtimes if r.runtime == name), None)

    @property
    def possible(self) -> list[RuntimeCell]:
        return [r for r in self.runtimes if r.can_run]

    @property
    def not_possible(self) -> list[RuntimeCell]:
        return [r for r in self.runtimes if not r.can_run]

    @property
    def provider(self) -> str | None:
        if not (self.provider_name or self.provider_id):
            return None
        pid = self.provider_id
        short = f"{pid[:12]}…" if pid and len(pid) > 14 else pid
        return " ".join(p for p in (self.provider_name, f"({short})" if short and self.provider_name else short) if p)


class RuntimeTally(BaseModel):
    gpu: int = 0
    cpu: int = 0
    no: int = 0


class Matrix(BaseModel):
    run_id: str | None = None
    fleet: str | None = None
    generated_at: datetime = Field(default_factory=utcnow)
    #: Check id -> title, in the probe's order (the columns of the check table).
    checks: dict[str, str] = Field(default_factory=dict)
    runtimes: list[str] = Field(default_factory=lambda: list(RUNTIMES))
    rows: list[MatrixRow] = Field(default_factory=list)
    #: Per runtime: how many probed nodes run it on the GPU, on the CPU, or not at all.
    summary: dict[str, RuntimeTally] = Field(default_factory=dict)
    #: What the fleet said about providers that gave no row (never came up, lost...).
    notes: list[str] = Field(default_factory=list)

    def row(self, node_id: str) -> MatrixRow:
        return next(r for r in self.rows if r.node_id == node_id)

    @property
    def probed(self) -> list[MatrixRow]:
        return [r for r in self.rows if r.status != "error"]


class NodeProbe(BaseModel):
    """What the pilot learnt of one node: where it is, its fingerprint, its probe or why none."""

    node_id: str
    fleet: str | None = None
    url: str | None = None
    region: str | None = None
    provider_id: str | None = None
    provider_name: str | None = None
    info: NodeInfo | None = None
    probe: ProbeReport | None = None
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    probed_at: datetime | None = None

    @classmethod
    def from_node(cls, node: Node, **kw: Any) -> NodeProbe:
        return cls(
            node_id=node.node_id, fleet=node.fleet, url=node.url, region=node.region, provider_id=node.provider_id,
            provider_name=node.provider_name, info=node.info, extra=node.extra, **kw,
        )  # fmt: skip



def _gib(mib: float | None) -> float | None:
    return round(mib / 1024, 1) if mib else None


def _gpu_label(gpus: list[GpuCell]) -> str:
    names: dict[str, int] = {}
    for g in gpus:
        name = g.name + (f" ({g.memory_gib:.0f} GiB)" if g.memory_gib else "")
        names[name] = names.get(name, 0) + 1
    return ", ".join(f"{n}× {name}" if n > 1 else name for name, n in names.items()) or "none"


def _offer_gpus(extra: dict[str, Any]) -> tuple[list[GpuCell], str | None, str | None]:
    """The GPUs a Golem provider's offer named (the fleet keeps them in `extra.gpu`)."""
    offer = extra.get("gpu")
    if not isinstance(offer, dict):
        return [], None, None
    gpus = []
    for d in offer.get("devices") or []:
        if isinstance(d, dict) and d.get("model"):
            mem = d.get("memory_gib")
            for _ in range(int(d.get("quantity") or 1)):
                gpus.append(GpuCell(name=str(d["model"]), memory_gib=float(mem) if mem else None,
                                    compute_capability=d.get("compute_capability")))  # fmt: skip
    return gpus, offer.get("driver_version"), offer.get("cuda_version")


def matrix_row(node: NodeProbe) -> MatrixRow:
    """One node's row: GPU facts from its probe, else its fingerprint, else its provider's offer."""
    probe, info = node.probe, node.info
    system = info.system if info else None
    offer_gpus, offer_driver, offer_cuda = _offer_gpus(node.extra)
    gpus: list[GpuCell] = []
    driver = cuda = None
    source: Literal["probe", "info", "offer"] | None = None
    if probe is not None:
        nv = probe.facts.nvidia
        gpus = [GpuCell(name=g.name, memory_gib=_gib(g.memory_total_mib), compute_capability=g.compute_capability)
                for g in nv.gpus]  # fmt: skip
        driver, cuda, source = nv.driver_version, nv.cuda_version, "probe"
    elif system is not None and system.gpus:
        gpus = [GpuCell(name=g.name, memory_gib=_gib(g.memory_total_mib), compute_capability=g.compute_capability)
                for g in system.gpus]  # fmt: skip
        driver = next((g.driver_version for g in system.gpus if g.driver_version), None)
        cuda = next((g.cuda_version for g in system.gpus if g.cuda_version), None)
        source = "info"
    elif offer_gpus:
        gpus, driver, cuda, source = offer_gpus, offer_driver, offer_cuda, "offer"
    notes = []
    if offer_gpus and source != "offer" and not gpus:
        notes.append(f"the provider's offer names {_gpu_label(offer_gpus)}, but the node sees no GPU")
    vram = sum(g.memory_gib or 0 for g in gpus) or None
    facts = probe.facts if probe else None
    distribution = None
    if facts is not None and facts.distribution is not None:
        distribution = facts.distribution.pretty_name or facts.distribution.id
    elif system is not None:
        distribution = system.distribution
    kernel = facts.kernel if facts else (system.kernel if system else None)
    serving = None
    if info is not None:
        serving = f"{info.runtime.name} {info.runtime.version or ''}".strip()
    return MatrixRow(
        node_id=node.node_id,
        fleet=node.fleet,
        url=node.url,
        region=node.region,
        provider_id=node.provider_id,
        provider_name=node.provider_name,
        status=probe.status if probe else "error",  # type: ignore[arg-type]
        error=None if probe else (node.error or "no probe report"),
        serving=serving,
        gpus=gpus,
        gpu=_gpu_label(gpus),
        vram_gib=round(vram, 1) if vram else None,
        driver=driver,
        cuda=cuda,
        gpu_source=source,
        cpu=system.cpu_model if system else None,
        cpu_cores=facts.cpu_cores if facts and facts.cpu_cores else (system.cpu_cores if system else None),
        ram_gib=facts.memory_total_gib if facts and facts.memory_total_gib is not None else (system.ram_gib if system else None),
        os=" ".join(p for p in (distribution, kernel) if p) or None,
        checks=[CheckCell(**c.model_dump()) for c in probe.checks] if probe else [],
        runtimes=[RuntimeCell(**r.model_dump()) for r in probe.runtimes] if probe else [],
        notes=notes,
        probed_at=node.probed_at,
        beacon_version=probe.beacon_version if probe else None,
    )


def build_matrix(
    nodes: Iterable[NodeProbe], *, run_id: str | None = None, fleet: str | None = None, notes: Iterable[str] = ()
) -> Matrix:
    """The matrix of the given nodes, one row each, in node id order."""
    rows = sorted((matrix_row(n) for n in nodes), key=lambda r: r.node_id)
    checks: dict[str, str] = {}
    runtimes = list(RUNTIMES)
    for row in rows:
        for c in row.checks:
            checks.setdefault(c.id, c.title)
        runtimes += [r.runtime for r in row.runtimes if r.runtime not in runtimes]
    summary = {name: RuntimeTally() for name in runtimes}
    for row in rows:
        for r in row.runtimes:
            tally = summary[r.runtime]
            if r.can_run and r.accelerator == "gpu":
                tally.gpu += 1
            elif r.can_run:
                tally.cpu += 1
            else:
                tally.no += 1
    return Matrix(run_id=run_id, fleet=fleet, checks=checks, runtimes=runtimes, rows=rows, summary=summary,
                  notes=list(dict.fromkeys(notes)))  # fmt: skip
