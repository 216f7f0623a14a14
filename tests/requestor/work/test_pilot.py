"""The compatibility pilot: the matrix from fingerprints and probes, `beacon pilot`, its store and report.

The matrix cases are machines described by facts (the probe's checks and verdicts are pure
functions of them): an H100 in a Golem vm-nvidia VM on the 570 driver, an RTX 4090 workstation
on 580, a CPU-only Golem VM, and a node whose shim had no /probe. The end-to-end case runs
`beacon pilot --fleet local --nodes 2` as a user does: real local nodes, a real SQLite file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from typer.testing import CliRunner

from beacon_golem.core.matrix import Matrix, NodeProbe, build_matrix
from beacon_golem.core.node import GPUInfo, Node, NodeInfo, RuntimeInfo, SystemInfo
from beacon_golem.core.probe import DockerInfo, KvmInfo, LibcInfo, MachineFacts, NvidiaInfo, OsRelease, ProbeReport
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.node.probe.report import evaluate
from beacon_golem.reports.matrix import render_markdown
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.store.matrix import matrix_from_store
from beacon_golem.requestor.store.schema import SCHEMA_VERSION
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.pilot import run_pilot
from tests.support import ROOT, llama_server_binary, serve_app

T0 = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
H100 = GPUInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, driver_version="570.172.08",
               cuda_version="12.8", compute_capability="9.0")  # fmt: skip
RTX4090 = GPUInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, driver_version="580.82.07",
                  cuda_version="13.0", compute_capability="8.9")  # fmt: skip
GOLEM_PID = "0x3f8e9a1b2c4d5e6f708192a3b4c5d6e7f8091a2b"


def golem_vm(nvidia: NvidiaInfo) -> MachineFacts:
    """Inside a Golem VM: the image's Ubuntu on the VM runtime's kernel, no /dev/kvm, no Docker."""
    return MachineFacts(
        os="Linux", arch="x86_64", kernel="6.1.38-0-virt",
        distribution=OsRelease(id="ubuntu", version_id="22.04", pretty_name="Ubuntu 22.04.5 LTS"),
        libc=LibcInfo(name="glibc", version="2.35"), nvidia=nvidia, kvm=KvmInfo(), iommu_groups=None,
        docker=DockerInfo(error="docker CLI not found"), cgroup="v2", cpu_cores=16, memory_total_gib=62.8,
        memory_available_gib=60.1, disk_path="/data", disk_free_gib=180.0, disk_total_gib=200.0,
    )  # fmt: skip


def workstation(nvidia: NvidiaInfo) -> MachineFacts:
    """A provider's own Linux box: KVM with nested virtualization, IOMMU, Docker with the model plugin."""
    return MachineFacts(
        os="Linux", arch="x86_64", kernel="6.8.0-79-generic",
        distribution=OsRelease(id="ubuntu", version_id="24.04", pretty_name="Ubuntu 24.04.3 LTS"),
        libc=LibcInfo(name="glibc", version="2.39"), nvidia=nvidia,
        kvm=KvmInfo(dev_kvm=True, accessible=True, module="kvm_amd", nested=True), iommu_groups=38,
        docker=DockerInfo(cli="/usr/bin/docker", server_version="28.3.3",
                          model_plugin="/usr/libexec/docker/cli-plugins/docker-model", model_plugin_version="v0.1.40"),
        cgroup="v2", cpu_cores=32, memory_total_gib=125.6, memory_available_gib=110.2, disk_path="/data",
        disk_free_gib=1500.0, disk_total_gib=1800.0,
    )  # fmt: skip


def info(node_id: str, runtime: str, gpus: list[GPUInfo], distribution: str, kernel: str) -> NodeInfo:
    return NodeInfo(
        shim_version="0.1.0", node_id=node_id, started_at=T0,
        runtime=RuntimeInfo(name=runtime, version="0.10.1" if runtime == "vllm" else "b6000",
                            upstream="http://127.0.0.1:8000", models=["Qwen/Qwen2.5-0.5B-Instruct"]),
        system=SystemInfo(os="Linux", distribution=distribution, kernel=kernel, arch="x86_64",
                          cpu_model="AMD EPYC 9654 96-Core Processor", cpu_cores=16, ram_gib=62.8, gpus=gpus),
    )  # fmt: skip


def fleet_nodes() -> list[NodeProbe]:
    h100 = evaluate(golem_vm(NvidiaInfo(nvidia_smi="/usr/bin/nvidia-smi", driver_version="570.172.08",
                                        cuda_version="12.8", gpus=[H100], source="nvidia-smi")))  # fmt: skip
    rtx = evaluate(workstation(NvidiaInfo(nvidia_smi="/usr/bin/nvidia-smi", driver_version="580.82.07",
                                          cuda_version="13.0", gpus=[RTX4090], source="nvidia-smi")))  # fmt: skip
    cpu = evaluate(golem_vm(NvidiaInfo(error="nvidia-smi not found")))
    offer = {"gpu": {"devices": [{"model": "NVIDIA GeForce RTX 3090", "memory_gib": 24.0, "quantity": 1}],
                     "cuda_version": "12.4", "driver_version": "550.120", "layout": "single"}}  # fmt: skip
    return [
        NodeProbe(node_id="golem-01-3f8e9a1b", fleet="golem", region="EU", provider_id=GOLEM_PID,
                  provider_name="h100-farm", info=info("a", "vllm", [H100], "Ubuntu 22.04.5 LTS", "6.1.38-0-virt"),
                  probe=h100),  # fmt: skip
        NodeProbe(node_id="static-0", fleet="static", url="http://10.1.2.3:8080", region="US",
                  info=info("b", "llamacpp", [RTX4090], "Ubuntu 24.04.3 LTS", "6.8.0-79-generic"), probe=rtx),  # fmt: skip
        NodeProbe(node_id="golem-02-77aa0c3d", fleet="golem", region="EU", provider_id="0x77aa0c3d",
                  provider_name="cpu-vm", info=info("c", "llamacpp", [], "Ubuntu 22.04.5 LTS", "6.1.38-0-virt"),
                  probe=cpu),  # fmt: skip
        # An image built before /probe existed: it answers /info but not /probe.
        NodeProbe(node_id="golem-03-5b5b5b5b", fleet="golem", provider_id="0x5b5b5b5b", provider_name="old-image",
                  extra=offer, error="node http://127.0.0.1:40123 GET /probe: 404 no route GET /probe"),  # fmt: skip
    ]


def verdicts(matrix: Matrix, node_id: str) -> dict[str, str | None]:
    return {r.runtime: (r.accelerator if r.can_run else None) for r in matrix.row(node_id).runtimes}


def test_matrix_from_several_fingerprints_and_probes() -> None:
    matrix = build_matrix(fleet_nodes(), run_id="r1", fleet="golem", notes=["cheap-gpu: not usable over the VPN"])
    assert [r.node_id for r in matrix.rows] == ["golem-01-3f8e9a1b", "golem-02-77aa0c3d", "golem-03-5b5b5b5b", "static-0"]
    h100, cpu, old, rtx = matrix.rows

    # H100 on Golem's 570 driver: CUDA 12.8 runs; Docker Model Runner (>= 575.57.08) only on the CPU.
    assert (h100.gpu, h100.vram_gib, h100.driver, h100.cuda) == ("NVIDIA H100 80GB HBM3 (80 GiB)", 79.6, "570.172.08", "12.8")
    assert h100.provider == "h100-farm (0x3f8e9a1b2c…)" and h100.serving == "vllm 0.10.1"
    assert verdicts(matrix, h100.node_id) == {"ollama": "gpu", "dmr": "cpu", "vllm": "gpu", "llamacpp": "gpu"}
    assert h100.check("nvidia_driver").status == "warn" and h100.check("cuda").status == "pass"  # type: ignore[union-attr]
    assert h100.check("kvm").status == "fail" and h100.status == "fail"  # a VM has no /dev/kvm of its own  # type: ignore[union-attr]
    assert "570.172.08 < 575.57.08" in h100.runtime("dmr").reasons[0]  # type: ignore[union-attr]

    # RTX 4090 on 580 on a full workstation: every check passes, every runtime on the GPU.
    assert rtx.status == "pass" and {c.status for c in rtx.checks} == {"pass", "skip"}
    assert verdicts(matrix, "static-0") == dict.fromkeys(("ollama", "dmr", "vllm", "llamacpp"), "gpu")
    assert (rtx.gpu, rtx.driver, rtx.cuda, rtx.gpus[0].compute_capability) == ("NVIDIA GeForce RTX 4090 (24 GiB)", "580.82.07", "13.0", "8.9")

    # CPU-only VM: no vLLM, the rest on the CPU, each with its reason.
    assert cpu.gpu == "none" and cpu.driver is None and cpu.check("gpus").status == "fail"  # type: ignore[union-attr]
    assert verdicts(matrix, cpu.node_id) == {"ollama": "cpu", "dmr": "cpu", "vllm": None, "llamacpp": "cpu"}
    assert [r.runtime for r in cpu.not_possible] == ["vllm"] and "CPU-only build" in " ".join(cpu.not_possible[0].reasons)

    # No probe: a row saying why, the GPU from the provider's offer, nothing judged.
    assert old.status == "error" and "404 no route GET /probe" in (old.error or "")
    assert (old.gpu, old.gpu_source, old.driver, old.runtimes, old.checks) == ("NVIDIA GeForce RTX 3090 (24 GiB)", "offer", "550.120", [], [])

    assert {k: (t.gpu, t.cpu, t.no) for k, t in matrix.summary.items()} == {
        "ollama": (2, 1, 0), "dmr": (1, 2, 0), "vllm": (2, 0, 1), "llamacpp": (2, 1, 0)
    }  # fmt: skip
    assert list(matrix.checks)[:3] == ["os", "arch", "kernel"] and "nvidia_driver" in matrix.checks
    assert Matrix.model_validate_json(matrix.model_dump_json()) == matrix

    md = render_markdown(matrix)
    assert md.startswith("# Compatibility matrix: run r1\n")
    assert "4 node(s) on a golem fleet, 1 pass, 0 warn, 2 fail, 1 without a probe" in md
    assert ("| golem-01-3f8e9a1b | h100-farm (0x3f8e9a1b2c…) | EU | NVIDIA H100 80GB HBM3 (80 GiB) | 79.6 GiB | 570.172.08 | "
            "12.8 | FAIL | ollama (GPU), dmr (CPU), vllm (GPU), llamacpp (GPU) | — |") in md  # fmt: skip
    assert "| static-0 | — | US | NVIDIA GeForce RTX 4090 (24 GiB) | 24 GiB | 580.82.07 | 13.0 | PASS |" in md
    assert "| ERROR: node http://127.0.0.1:40123 GET /probe: 404 no route GET /probe | — | — |" in md
    # The check table has a column per probed node (not the one without a probe), a row per check.
    assert "| Check | golem-01-3f8e9a1b | golem-02-77aa0c3d | static-0 |" in md
    assert "| NVIDIA driver | WARN | FAIL | PASS |" in md and "| /dev/kvm | FAIL | FAIL | PASS |" in md
    assert "| vllm | GPU (pass) | no | GPU (pass) |" in md and "| dmr | CPU (warn) | CPU (warn) | GPU (pass) |" in md
    assert "- FAIL /dev/kvm: no /dev/kvm" in md and "- no probe: node http://127.0.0.1:40123" in md
    assert "- cheap-gpu: not usable over the VPN" in md

    data = json.loads(matrix.model_dump_json())
    assert [r["status"] for r in data["rows"]] == ["fail", "fail", "error", "pass"]
    assert data["rows"][0]["runtimes"][2] == {
        "runtime": "vllm", "status": "pass", "can_run": True, "accelerator": "gpu",
        "reasons": ["1 NVIDIA GPU(s), driver 570.172.08"],
    }  # fmt: skip
    assert data["summary"]["vllm"] == {"gpu": 2, "cpu": 0, "no": 1}


def test_an_offer_gpu_the_vm_does_not_see_is_noted() -> None:
    cpu = fleet_nodes()[2]
    offered = cpu.model_copy(update={"extra": {"gpu": {"devices": [{"model": "NVIDIA A100-SXM4-40GB", "memory_gib": 40}]}}})
    row = build_matrix([offered]).rows[0]
    assert row.gpu == "none" and row.gpu_source == "probe"  # the probe saw none
    assert row.notes == ["the provider's offer names NVIDIA A100-SXM4-40GB (40 GiB), but the node sees no GPU"]


# ---- the pilot over a static fleet of fake shims: a failed probe is a row, not a crash -------------
def fake_shim(node_info: NodeInfo, probe: ProbeReport | None, mode: str = "ok", release: asyncio.Event | None = None) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "runtime": node_info.runtime.name, "models": node_info.runtime.models})

    async def info_route(_: web.Request) -> web.Response:
        return web.Response(text=node_info.model_dump_json(), content_type="application/json")

    async def probe_route(_: web.Request) -> web.Response:
        if mode == "slow":  # answers only once the test is done with it
            assert release is not None
            await release.wait()
            return web.json_response({"error": "too late", "status": 503}, status=503)
        if mode == "junk":
            return web.json_response({"hello": "world"})
        assert probe is not None
        return web.Response(text=probe.model_dump_json(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/info", info_route)
    if mode != "old":  # an old image's shim: no /probe route at all
        app.router.add_get("/probe", probe_route)
    return app


async def test_pilot_keeps_going_when_probes_fail_and_stores_why(tmp_path: Path) -> None:
    nodes = fleet_nodes()
    release = asyncio.Event()
    apps = [fake_shim(nodes[1].info, nodes[1].probe), fake_shim(nodes[0].info, None, "old"),  # type: ignore[arg-type]
            fake_shim(nodes[0].info, None, "slow", release), fake_shim(nodes[0].info, None, "junk")]  # type: ignore[arg-type]  # fmt: skip
    store = Store(tmp_path / "beacon.db")
    seen: list[str] = []
    async with serve_app(apps[0]) as ok, serve_app(apps[1]) as old, serve_app(apps[2]) as slow, serve_app(apps[3]) as junk:
        urls = [ok, old, slow, junk]
        run = store.create_pilot_run({"kind": "static", "node_urls": urls})
        fleet = StaticFleet([StaticNodeSpec(url=u, region=r) for u, r in zip(urls, ["US", "EU", "EU", "EU"], strict=True)]
                            + [StaticNodeSpec(url="http://127.0.0.1:9")])  # nothing listens there  # fmt: skip
        matrix = await run_pilot(store, run, fleet, on_row=lambda r: seen.append(r.node_id), probe_timeout_s=1.0)
        release.set()
    assert sorted(seen) == ["static-0", "static-1", "static-2", "static-3"]
    assert [(r.node_id, r.status) for r in matrix.rows] == [
        ("static-0", "pass"), ("static-1", "error"), ("static-2", "error"), ("static-3", "error")
    ]  # fmt: skip
    errors = {r.node_id: r.error or "" for r in matrix.rows}
    assert "GET /probe: 404" in errors["static-1"]
    assert "no answer in 1 s" in errors["static-2"] or "timed out" in errors["static-2"]
    assert "unexpected body" in errors["static-3"]
    assert matrix.row("static-1").gpu == "NVIDIA H100 80GB HBM3 (80 GiB)"  # from its /info fingerprint
    assert matrix.row("static-1").gpu_source == "info"
    assert [n for n in matrix.notes if n.startswith("http://127.0.0.1:9: ")]  # never a node: a fleet note

    final = store.get_run(run.run_id)
    assert (final.kind, final.status, final.total_jobs, final.suite) == ("pilot", "done", 0, None)
    stored = {n.node_id: n for n in store.nodes(run.run_id)}
    assert stored["static-0"].probe_report() == nodes[1].probe and stored["static-0"].probe_error is None
    assert stored["static-1"].probe is None and "404" in (stored["static-1"].probe_error or "")
    assert [e.node_id for e in store.events(run.run_id, ["probe_done"])] == ["static-0"]
    assert len(store.events(run.run_id, ["probe_failed"])) == 3
    again = matrix_from_store(store, run.run_id)
    assert again is not None and [r.model_dump() for r in again.rows] == [r.model_dump() for r in matrix.rows]

    # Every node without a probe: the run failed, and says so.
    async with serve_app(fake_shim(nodes[0].info, None, "old")) as only_old:  # type: ignore[arg-type]
        run2 = store.create_pilot_run({"kind": "static"})
        matrix2 = await run_pilot(store, run2, StaticFleet([StaticNodeSpec(url=only_old)]), probe_timeout_s=2.0)
    assert store.get_run(run2.run_id).status == "failed" and [r.status for r in matrix2.rows] == ["error"]
    # A suite run whose nodes were never probed has no matrix.
    suite = parse_suite("name: q\nquestions: [{id: q1, text: hi}]\nmodels: [{name: m}]\nregions: [US]\n")
    plain = store.create_run(suite, None, expand_jobs(suite), {"kind": "static"})
    store.upsert_node(plain.run_id, Node(node_id="n1", url="http://x", info=nodes[1].info))
    assert matrix_from_store(store, plain.run_id) is None
    store.close()


# ---- the pilot over a Golem fleet (the Golem side faked at the yapapi boundary, as in test_golem_fleet) --
async def test_pilot_over_a_golem_fleet_probes_each_provider_and_keeps_its_cost(tmp_path: Path) -> None:
    from beacon_golem.requestor.fleets.golem import GolemFleet
    from tests.requestor.fleets.golem.test_fleet import FakeGolem, FakeShim, Market, make_config, no_registry
    from tests.requestor.fleets.golem.test_strategy import single_gpu

    h100 = fleet_nodes()[0].probe
    assert h100 is not None

    class ProbingShim(FakeShim):
        """The fake VM's shim, with GET /probe unless it is an old image."""

        async def start(self) -> None:
            async def probe(_: web.Request) -> web.Response:
                return web.Response(text=h100.model_dump_json(), content_type="application/json")

            app = web.Application()
            app.router.add_get("/health", self.health)
            app.router.add_get("/info", self.info)
            if self.name != "0xold000":
                app.router.add_get("/probe", probe)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"

    FakeGolem.made.clear()
    market = Market(lambda: FakeGolem.made[-1] if FakeGolem.made else None)  # type: ignore[arg-type,return-value]
    market.shim_factory = ProbingShim
    market.provider("0xh100aa", single_gpu(glm_per_hour=0.5))
    market.provider("0xold000", single_gpu(glm_per_hour=0.4))
    serving = asyncio.create_task(market.serve())
    lines: list[str] = []
    try:
        fleet = GolemFleet(make_config(nodes=2), golem_factory=FakeGolem, resolver=no_registry,
                           connector=market.connector, poll_interval_s=0.01)  # fmt: skip
        with Store(tmp_path / "beacon.db") as store:
            run = store.create_pilot_run({"kind": "golem", "nodes": 2})
            matrix = await run_pilot(store, run, fleet, on_note=lines.append, probe_timeout_s=5)
            final = store.get_run(run.run_id)
            events = [e.kind for e in store.events(run.run_id)]
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        for shim in market.shims.values():
            await shim.stop()
    assert final.status == "done" and any("golem fleet stopped" in line for line in lines)
    by_provider = {r.provider_id: r for r in matrix.rows}
    assert set(by_provider) == {"0xh100aa", "0xold000"}
    good, old = by_provider["0xh100aa"], by_provider["0xold000"]
    assert good.status == "fail" and good.gpu == "NVIDIA H100 80GB HBM3 (80 GiB)" and good.gpu_source == "probe"
    assert verdicts(matrix, good.node_id)["dmr"] == "cpu" and good.fleet == "golem"
    assert old.status == "error" and "GET /probe: 404" in (old.error or "") and old.gpu == "NVIDIA A30"
    assert old.node_id.startswith("golem-") and old.provider_name
    assert events.count("probe_done") == 1 and events.count("probe_failed") == 1 and "cost_agreement" in events


# ---- beacon pilot --fleet local, as a user runs it ---------------------------------------------------
def beacon(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BEACON_DATA_DIR": str(data), "BEACON_LOG_LEVEL": "error"}
    return subprocess.run([sys.executable, "-m", "beacon_golem.cli", *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)  # fmt: skip


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_beacon_pilot_on_two_local_nodes_writes_the_matrix_stores_probes_and_reports(tmp_path: Path) -> None:
    llama_server_binary()
    data = tmp_path / "data"
    done = beacon(data, "pilot", "--fleet", "local", "--nodes", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("run ") and "compatibility pilot on a local fleet" in first
    run_id = first.split()[1]
    md = Path(done.stdout.split("matrix:  ")[1].split()[0])
    js = md.with_name("matrix.json")
    assert md == data / "reports" / run_id / "matrix.md" and js.is_file()
    assert "Compatibility matrix (2 nodes)" in done.stdout and f"run {run_id} done: 2 of 2 node(s) probed" in done.stdout
    assert "local-0: probe " in done.stderr and "local-1: probe " in done.stderr

    matrix = Matrix.model_validate_json(js.read_text())
    assert [r.node_id for r in matrix.rows] == ["local-0", "local-1"] and matrix.run_id == run_id
    for row in matrix.rows:
        assert row.status != "error" and row.serving and row.serving.startswith("llamacpp")
        assert row.check("os").status == "pass"  # type: ignore[union-attr]
        assert row.runtime("llamacpp").can_run  # type: ignore[union-attr]  # it is serving right now
    text = md.read_text()
    assert text.startswith(f"# Compatibility matrix: run {run_id}") and "| local-0 |" in text and "| local-1 |" in text
    assert "| Check | local-0 | local-1 |" in text

    db = data / "beacon.db"
    assert query(db, "SELECT kind, status, suite_name FROM runs WHERE run_id = ?", (run_id,)) == [("pilot", "done", "pilot")]
    stored = query(db, "SELECT node_id, probe_json, probe_error FROM nodes WHERE run_id = ? ORDER BY node_id", (run_id,))
    assert [(n, e) for n, _, e in stored] == [("local-0", None), ("local-1", None)]
    assert all(ProbeReport.model_validate_json(p).checks for _, p, _ in stored)
    assert query(db, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]

    html = tmp_path / "report.html"
    report = beacon(data, "report", run_id, "--html", str(html), "--md", str(tmp_path / "report.md"))
    assert report.returncode == 0, report.stderr
    page = html.read_text()
    section = page.split('<section id="compatibility">')[1].split("</section>")[0]
    assert '<a href="#compatibility">Compatibility</a>' in page and "<b>compatibility pilot</b>" in page
    assert "<b>local-0</b>" in section and "<b>local-1</b>" in section and "llamacpp (" in section
    assert section.count('<span class="badge ok" title="Linux">PASS</span>') == 2  # the OS check, one per node
    assert "## Compatibility" in (tmp_path / "report.md").read_text()

    # The read-only commands take a run without jobs or suite.
    import beacon_golem.cli.runs  # noqa: F401  (registers the commands)
    from beacon_golem.cli import app

    for args in (["runs", "list"], ["runs", "show", run_id], ["verify", run_id, "--any-key"], ["diff", run_id],
                 ["runs", "export", run_id]):  # fmt: skip
        result = CliRunner().invoke(app, [*args, "--db", str(db)])
        assert result.exit_code == 0, (args, result.output, result.exception)
    resume = beacon(data, "run", "--resume", run_id)
    assert resume.returncode != 0 and "compatibility pilot" in resume.stderr and "Traceback" not in resume.stderr


def test_beacon_probe_writes_this_machines_matrix(tmp_path: Path) -> None:
    done = beacon(tmp_path / "data", "probe", "--json", "--matrix", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    report = ProbeReport.model_validate_json(done.stdout)
    matrix = Matrix.model_validate_json((tmp_path / "m" / "matrix.json").read_text())
    assert len(matrix.rows) == 1 and matrix.rows[0].status == report.status
    assert [c.status for c in matrix.rows[0].checks] == [c.status for c in report.checks]
    assert "| Check | " in (tmp_path / "m" / "matrix.md").read_text()


# ---- schema 2 -> 3 ------------------------------------------------------------------------------------
def test_a_schema_2_file_migrates_to_3_and_on_keeping_every_row(tmp_path: Path) -> None:
    from tests.requestor.test_store import as_schema_2, kept

    path = tmp_path / "beacon.db"
    suite = parse_suite("name: q\nquestions: [{id: q1, text: hi}]\nmodels: [{name: m}]\nregions: [US]\n")
    nodes = fleet_nodes()
    with Store(path) as s:
        run = s.create_run(suite, None, expand_jobs(suite), {"kind": "static"})
        s.upsert_node(run.run_id, Node(node_id="n1", url="http://x", region="US", info=nodes[1].info, extra={"glm_spent": 0.1}))
        s.add_bench_result(run.run_id, "n1", "node", None, {"kind": "sweep"}, {"steps": []})
        s.add_event(run.run_id, "node_added", node_id="n1")
        s.finish_run(run.run_id, "done")
    as_schema_2(path)
    tables = ("runs", "jobs", "results", "nodes", "events", "bench_results")

    def dump() -> dict[str, list[tuple]]:
        return {t: query(path, f"SELECT * FROM {t} ORDER BY rowid") for t in tables}

    before, digest_before = dump(), hashlib.sha256(path.read_bytes()).hexdigest()
    with Store(path, readonly=True) as ro:  # reads, with no probes and every run a suite run; writes nothing
        assert ro.schema_version() == 2
        assert ro.get_run(run.run_id).kind == "suite" and ro.nodes(run.run_id)[0].probe is None
        assert matrix_from_store(ro, run.run_id) is None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest_before

    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 7
        assert s.get_run(run.run_id).suite == suite and s.nodes(run.run_id)[0].extra == {"glm_spent": 0.1}
        pilot = s.create_pilot_run({"kind": "local"})
        s.upsert_node(pilot.run_id, Node(node_id="local-0", url="http://y", info=nodes[1].info))
        s.set_node_probe(pilot.run_id, "local-0", nodes[1].probe)
        s.set_node_probe(pilot.run_id, "local-0", None, "timed out")  # a failed retry keeps the report
        s.set_node_probe(pilot.run_id, "local-0", nodes[0].probe, "timed out")  # and a stored one is never overwritten
        node = s.nodes(pilot.run_id)[0]
        assert node.probe_report() == nodes[1].probe and node.probe_error == "timed out"
    after = dump()
    assert kept({t: after[t][: len(before[t])] for t in tables}, before) == before
    assert query(path, "SELECT kind FROM runs ORDER BY rowid") == [("suite",), ("pilot",)]
    assert query(path, "SELECT version FROM schema_version ORDER BY version") == [(2,), (3,), (4,), (5,), (6,), (7,)]
