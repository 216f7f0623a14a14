"""The Linux compatibility pilot: probe every node of a fleet, then one matrix of what each can run.

`run_pilot(store, run, fleet)` brings the fleet up and, as each node comes up, asks its shim for
the fingerprint (GET /info) and the probe (GET /probe), keeps both with the node in the store and
adds a row to the `Matrix`: provider, region, GPU(s) and VRAM, driver, CUDA, each check's
pass/warn/fail, and which runtimes can run there (on the GPU or the CPU) and why the others
cannot. A node that does not answer its probe gets a row saying why; the pilot goes on.

The same matrix comes from stored nodes (`matrix_from_store`, for `beacon report`) and from
fingerprints and probe reports given by hand (`build_matrix` over `NodeProbe`s, for tests).
`render_markdown` and `Matrix.model_dump_json` are the two files `beacon pilot` writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from beacon_golem.errors import BeaconError
from beacon_golem.files import write_text_atomic
from beacon_golem.fleets.base import Fleet, FleetEvent, Node
from beacon_golem.log import get_logger
from beacon_golem.probe.report import ProbeReport
from beacon_golem.probe.verdicts import RUNTIMES
from beacon_golem.runs.store import NodeRow, RunRow, Store, utcnow
from beacon_golem.shim.api import NodeInfo
from beacon_golem.shim.client import ShimClient

log = get_logger(__name__)

RowStatus = Literal["pass", "warn", "fail", "error"]
#: Event kind of a fleet note kept for the matrix (a provider that never became a node, ...).
NOTE_EVENT = "pilot_note"


# ---------------------------------------------------------------------------------------
# The matrix


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

    @classmethod
    def from_row(cls, row: NodeRow) -> NodeProbe:
        error = row.probe_error
        try:
            probe = row.probe_report()
        except BeaconError as exc:
            probe, error = None, str(exc)
        if probe is None and error is None:
            error = "not probed"
        return cls(
            node_id=row.node_id, fleet=row.fleet, url=row.url, region=row.region, provider_id=row.provider_id,
            provider_name=row.provider_name, info=row.info, probe=probe, error=None if probe else error,
            extra=row.extra, probed_at=row.probed_at,
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


def matrix_from_store(store: Store, run_id: str) -> Matrix | None:
    """The matrix of a stored run; None when no node of it was ever probed (and it is no pilot)."""
    run = store.get_run(run_id)
    nodes = store.nodes(run_id)
    if run.kind != "pilot" and not any(n.probe is not None or n.probe_error for n in nodes):
        return None
    notes = [str(e.detail.get("message")) for e in store.events(run_id, [NOTE_EVENT]) if e.detail.get("message")]
    fleet = run.fleet_desc.get("kind") if isinstance(run.fleet_desc, dict) else None
    return build_matrix([NodeProbe.from_row(n) for n in nodes], run_id=run_id, fleet=fleet, notes=notes)


# ---------------------------------------------------------------------------------------
# Markdown and files


def _md(value: Any) -> str:
    return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _num(value: float | None, unit: str = "") -> str:
    return f"{value:g}{unit}" if value is not None else "—"


def runtimes_text(runtimes: list[RuntimeCell], possible: bool) -> str:
    cells = [r for r in runtimes if r.can_run == possible]
    return ", ".join(r.label for r in cells) or "—"


def render_markdown(matrix: Matrix) -> str:
    """The matrix as Markdown: nodes, checks by node, runtimes by node, then every reason."""
    rows = matrix.rows
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("pass", "warn", "fail", "error")}
    lines = [
        "# Compatibility matrix" + (f": run {matrix.run_id}" if matrix.run_id else ""),
        "",
        f"{len(rows)} node(s) on a {matrix.fleet or '?'} fleet, {counts['pass']} pass, {counts['warn']} warn, "
        f"{counts['fail']} fail, {counts['error']} without a probe; generated {matrix.generated_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
        "## Nodes",
        "",
        "| Node | Provider | Region | GPU | VRAM | Driver | CUDA | Probe | Runtimes possible | Not possible |",
        "|---|---|---|---|---:|---|---|---|---|---|",
    ]
    for r in rows:
        probe = r.status.upper() if r.status != "error" else f"ERROR: {r.error}"
        lines.append(
            f"| {_md(r.node_id)} | {_md(r.provider or '—')} | {_md(r.region or '—')} | {_md(r.gpu)} | "
            f"{_num(r.vram_gib, ' GiB')} | {_md(r.driver or '—')} | {_md(r.cuda or '—')} | {_md(probe)} | "
            f"{_md(runtimes_text(r.runtimes, True))} | {_md(runtimes_text(r.runtimes, False))} |"
        )
    probed = matrix.probed
    if probed:
        head = "| Check | " + " | ".join(_md(r.node_id) for r in probed) + " |"
        lines += ["", "## Checks", "", head, "|---|" + "---|" * len(probed)]
        for check_id, title in matrix.checks.items():
            found = [r.check(check_id) for r in probed]
            cells = [c.status.upper() if c else "—" for c in found]
            lines.append(f"| {_md(title)} | " + " | ".join(cells) + " |")
        lines += ["", "## Runtimes", "", head.replace("| Check |", "| Runtime |"), "|---|" + "---|" * len(probed)]
        for name in matrix.runtimes:
            cells = []
            for r in probed:
                cell = r.runtime(name)
                if cell is None:
                    cells.append("—")
                else:
                    cells.append(f"{cell.accelerator.upper()} ({cell.status})" if cell.can_run and cell.accelerator else "no")
            lines.append(f"| {_md(name)} | " + " | ".join(cells) + " |")
        tally = ", ".join(f"{n}: {t.gpu} GPU / {t.cpu} CPU / {t.no} no" for n, t in matrix.summary.items())
        lines += ["", f"Nodes per runtime: {tally}."]
    lines += ["", "## Why", ""]
    for r in rows:
        lines.append(f"### {_md(r.node_id)}" + (f" ({_md(r.provider)})" if r.provider else ""))
        lines.append("")
        if r.status == "error":
            lines.append(f"- no probe: {_md(r.error)}")
        threads = f" ({r.cpu_cores} threads)" if r.cpu_cores else ""
        facts = [
            f"serves {r.serving}" if r.serving else None,
            f"OS {r.os}" if r.os else None,
            f"CPU {r.cpu or '?'}{threads}" if r.cpu or r.cpu_cores else None,
            f"RAM {r.ram_gib:g} GiB" if r.ram_gib is not None else None,
            f"GPU facts from the {r.gpu_source}" if r.gpu_source and r.gpu_source != "probe" else None,
        ]
        if any(facts):
            lines.append("- " + "; ".join(f for f in facts if f))
        for c in r.checks:
            if c.status in ("warn", "fail"):
                lines.append(f"- {c.status.upper()} {_md(c.title)}: {_md(c.reason)}")
        for rt in r.runtimes:
            verdict = f"{rt.accelerator.upper()}, {rt.status}" if rt.can_run and rt.accelerator else "not possible"
            lines.append(f"- {_md(rt.runtime)} ({verdict}): {_md('; '.join(rt.reasons))}")
        lines += [f"- note: {_md(n)}" for n in r.notes]
        lines.append("")
    if matrix.notes:
        lines += ["## Fleet notes", ""] + [f"- {_md(n)}" for n in matrix.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_matrix(matrix: Matrix, out_dir: Path) -> tuple[Path, Path]:
    """Write `matrix.md` and `matrix.json` into `out_dir`; returns their paths."""
    md, js = out_dir / "matrix.md", out_dir / "matrix.json"
    write_text_atomic(md, render_markdown(matrix))
    write_text_atomic(js, matrix.model_dump_json(indent=2) + "\n")
    return md, js


# ---------------------------------------------------------------------------------------
# The pilot


async def probe_node(node: Node, timeout_s: float = 120.0) -> NodeProbe:
    """Ask one node for its fingerprint and probe; never raises for a node that fails (the row says why)."""
    info, probe, error = node.info, None, None
    try:
        client = ShimClient(node.url, node.token, timeout_s=timeout_s, connect_timeout_s=min(20.0, timeout_s))
        async with client:
            try:
                info = await asyncio.wait_for(client.info(), timeout_s)
            except (BeaconError, TimeoutError) as exc:
                if info is None:
                    error = f"GET /info: {str(exc) or 'timed out'}"
            probe = await asyncio.wait_for(client.probe(), timeout_s)
    except TimeoutError:
        error = f"GET /probe: no answer in {timeout_s:g} s"
    except BeaconError as exc:
        error = str(exc)
    except Exception as exc:  # a node must not end the pilot
        error = f"{type(exc).__name__}: {exc}"
    if probe is not None:
        error = None
    return NodeProbe.from_node(node.model_copy(update={"info": info}), probe=probe, error=error, probed_at=utcnow())


async def run_pilot(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    *,
    on_row: Callable[[MatrixRow], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    probe_timeout_s: float = 120.0,
) -> Matrix:
    """Bring the fleet up, probe each node as it comes up, store everything, close the run.

    The run is `done` when at least one node answered its probe, `failed` otherwise.
    """
    from beacon_golem.runs.runner import save_accounting

    run_id = run.run_id
    listeners = [f for f in (fleet.progress, on_note) if f is not None]

    def note(line: str) -> None:
        store.add_event(run_id, "fleet_progress", message=line)
        for listener in listeners:
            listener(line)

    fleet.progress = note
    tasks: dict[str, asyncio.Task[NodeProbe]] = {}

    async def probe_and_store(node: Node) -> NodeProbe:
        result = await probe_node(node, probe_timeout_s)
        if result.info is not None and node.info is None:
            store.upsert_node(run_id, node.model_copy(update={"info": result.info}))
        store.set_node_probe(run_id, node.node_id, result.probe, result.error)
        if result.probe is not None:
            store.add_event(run_id, "probe_done", node_id=node.node_id, status=result.probe.status)
        else:
            store.add_event(run_id, "probe_failed", node_id=node.node_id, reason=result.error)
        log.info("pilot_probe", run=run_id, node=node.node_id, status=result.probe.status if result.probe else "error")
        if on_row is not None:
            on_row(matrix_row(result))
        return result

    def handle(event: FleetEvent) -> None:
        node = event.node
        if event.kind == "added":
            store.upsert_node(run_id, node)
            store.add_event(run_id, "node_added", node_id=node.node_id, url=node.url, region=node.region)
            if node.node_id not in tasks:
                tasks[node.node_id] = asyncio.create_task(probe_and_store(node))
        else:
            store.mark_node_lost(run_id, node.node_id, event.reason or "lost")
            store.add_event(run_id, "node_lost", node_id=node.node_id, reason=event.reason)

    async def consume() -> None:  # nodes of a Golem fleet come up one by one while start() waits
        async for event in fleet.events():
            handle(event)

    results: list[NodeProbe] = []
    consumer = asyncio.create_task(consume())
    try:
        async with fleet:
            consumer.cancel()  # from here on, events are taken without waiting
            await asyncio.gather(consumer, return_exceptions=True)
            while True:
                while (event := fleet.next_event_nowait()) is not None:
                    handle(event)
                pending = [t for t in tasks.values() if not t.done()]
                if not pending:
                    break
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            results = [t.result() for t in tasks.values()]
    except (KeyboardInterrupt, asyncio.CancelledError):
        store.finish_run(run_id, "interrupted")
        raise
    except BaseException:
        store.finish_run(run_id, "failed")  # the fleet never came up (no static node usable, no Golem engine...)
        raise
    finally:
        consumer.cancel()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(consumer, *tasks.values(), return_exceptions=True)
        for line in [*getattr(fleet, "refusals", []), *getattr(fleet, "failures", [])]:
            store.add_event(run_id, NOTE_EVENT, message=str(line))
        save_accounting(store, run_id, fleet)
    ok = any(r.probe is not None for r in results)
    store.finish_run(run_id, "done" if ok else "failed")
    matrix = matrix_from_store(store, run_id)
    assert matrix is not None  # a pilot run always has one
    return matrix
