"""The Linux compatibility probe: parsers on real nvidia-smi output, checks, verdicts, CLI, /probe.

Nothing here contacts a non-loopback host: the outbound network check is only ever pointed
at a listener on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from beacon_golem.core.node import GPUInfo
from beacon_golem.core.probe import (
    CheckResult,
    DockerInfo,
    KvmInfo,
    LibcInfo,
    MachineFacts,
    NvidiaInfo,
    OsRelease,
    ProbeReport,
)
from beacon_golem.node.probe.checks import run_checks
from beacon_golem.node.probe.hardware import (
    parse_cuda_version,
    parse_driver_version,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_table,
    read_nvidia,
    version_at_least,
)
from beacon_golem.node.probe.network import check_outbound
from beacon_golem.node.probe.report import cached_probe, evaluate, run_probe
from beacon_golem.node.probe.system import count_iommu_groups, read_cgroup_version, read_kvm, read_os_release
from beacon_golem.node.shim.app import ShimConfig, create_app
from tests.support import DATA, ROOT, serve_app

NVIDIA_SMI = DATA / "nvidia_smi"


def real(name: str) -> str:
    """A fixture's verbatim output, without our `#@` source lines."""
    lines = (NVIDIA_SMI / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#@"))


# ---- the fixtures are real and say where they come from -------------------------------------
def test_every_fixture_names_its_public_source() -> None:
    files = [p for p in NVIDIA_SMI.iterdir() if p.name != "README.md"]
    assert len(files) >= 15
    for path in files:
        head = [line for line in path.read_text().splitlines() if line.startswith("#@")]
        assert any("Source: https://github.com/" in line for line in head), path.name


# ---- driver and CUDA versions from every format ----------------------------------------------
@pytest.mark.parametrize(
    ("name", "driver", "cuda"),
    [
        ("h100_590.48.01_table.txt", "590.48.01", "13.1"),
        ("h100_590.48.01_version.txt", "590.48.01", "13.1"),
        ("h100-mig_590.48.01_table.txt", "590.48.01", "13.1"),
        # Driver 610 renamed the banner fields; its --version keeps "DRIVER version : Deprecated".
        ("rtx2080super_610.57.04_table.txt", "610.57.04", "13.3"),
        ("rtx2080super_610.57.04_version.txt", "610.57.04", "13.3"),
        ("l40s_595.80_table.txt", "595.80", "13.2"),
        ("a40x10_550.127.05_table.txt", "550.127.05", "12.4"),
        ("a10-passthrough_550.127.05_table.txt", "550.127.05", "12.4"),
        ("a10g_470.256.02_table.txt", "470.256.02", "11.4"),
        ("gtx680x3_331.62_table.txt", "331.62", None),
        ("rtx5070_575.64.03_cuda-na_table.txt", "575.64.03", None),
        ("p4_550.135_table.txt", "550.135", "12.4"),
        ("header_575.57.08.txt", "575.57.08", "12.9"),
        ("proc_version_open_565.57.01.txt", "565.57.01", None),
        ("proc_version_open_525.60.11.txt", "525.60.11", None),
        ("failed_no_driver.txt", None, None),
    ],
)
def test_driver_and_cuda_versions_of_real_outputs(name: str, driver: str | None, cuda: str | None) -> None:
    text = real(name)
    assert parse_driver_version(text) == driver
    assert parse_cuda_version(text) == cuda


def test_driver_version_parser_takes_bare_versions_and_rejects_placeholders() -> None:
    assert parse_driver_version("575.57.08\n") == "575.57.08"
    assert parse_driver_version("550.135") == "550.135"
    assert parse_driver_version('DRIVER version      : Deprecated, see "KMD version" instead') is None
    assert parse_driver_version("") is None
    assert parse_cuda_version("CUDA version        : Deprecated, see \"CUDA UMD version\" instead") is None


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("575.57.08", "575.57.08", True),  # the DMR minimum itself
        ("575.64.03", "575.57.08", True),
        ("580.65", "575.57.08", True),  # two parts, newer
        ("575.57", "575.57.08", False),  # two parts, older
        ("570.172.08", "575.57.08", False),
        ("550.135", "575.57.08", False),  # 135 > 57 must not fool a string compare
        ("610.57.04", "575.57.08", True),
        ("1000.1", "575.57.08", True),
        ("not-a-version", "575.57.08", False),
        (None, "575.57.08", False),
    ],
)
def test_version_comparison(version: str | None, minimum: str, expected: bool) -> None:
    assert version_at_least(version, minimum) is expected


# ---- GPUs from the table and from the csv query ----------------------------------------------
def test_table_lists_every_gpu_with_its_memory() -> None:
    gpus = parse_nvidia_smi_table(real("a40x10_550.127.05_table.txt"))
    assert [g.index for g in gpus] == list(range(10))
    assert {(g.name, g.memory_total_mib, g.driver_version, g.cuda_version) for g in gpus} == {
        ("NVIDIA A40", 46068, "550.127.05", "12.4")
    }
    old = parse_nvidia_smi_table(real("gtx680x3_331.62_table.txt"))
    assert [(g.index, g.name, g.memory_total_mib, g.cuda_version) for g in old] == [
        (0, "GeForce GTX 680", 4095, None),
        (1, "GeForce GTX 680", 4095, None),
        (2, "GeForce GTX 680", 4095, None),
    ]
    assert [(g.name, g.memory_total_mib) for g in parse_nvidia_smi_table(real("a10g_470.256.02_table.txt"))] == [
        ("NVIDIA A10G", 22731)
    ]


def test_table_skips_mig_rows_and_keeps_truncated_names() -> None:
    mig = parse_nvidia_smi_table(real("h100-mig_590.48.01_table.txt"))
    assert [(g.name, g.memory_total_mib) for g in mig] == [("NVIDIA H100 80GB HBM3", 81559)]
    (truncated,) = parse_nvidia_smi_table(real("rtx2080super_610.57.04_table.txt"))
    assert truncated.name == "NVIDIA GeForce RTX 2080 ..."  # the table cuts names; the csv does not
    assert (truncated.memory_total_mib, truncated.driver_version, truncated.cuda_version) == (8192, "610.57.04", "13.3")
    assert parse_nvidia_smi_table(real("failed_no_driver.txt")) == []


@pytest.mark.parametrize(
    ("name", "gpu", "memory", "driver", "cc"),
    [
        ("h100_590.48.01_query.csv", "NVIDIA H100 80GB HBM3", 81559, "590.48.01", "9.0"),
        ("rtx2080super_610.57.04_query.csv", "NVIDIA GeForce RTX 2080 SUPER", 8192, "610.57.04", "7.5"),
        ("l40s_595.80_query.csv", "NVIDIA L40S", 46068, "595.80", "8.9"),
    ],
)
def test_csv_query_with_header_and_units(name: str, gpu: str, memory: int, driver: str, cc: str) -> None:
    # Real `--query-gpu=<200+ fields> --format=csv` output: columns are found by header name.
    banner = real(name.replace("_query.csv", "_table.txt"))
    (info,) = parse_nvidia_smi_csv(real(name), banner)
    assert (info.index, info.name, info.memory_total_mib, info.driver_version, info.compute_capability) == (
        0, gpu, memory, driver, cc,
    )  # fmt: skip
    assert info.cuda_version == parse_cuda_version(banner)


def test_csv_without_header_keeps_the_old_positional_format() -> None:
    # `--format=csv,noheader,nounits` of index,name,memory.total,driver_version: the values
    # of the H100 capture above, as that format prints them.
    gpus = parse_nvidia_smi_csv("0, NVIDIA H100 80GB HBM3, 81559, 590.48.01\n", real("h100_590.48.01_table.txt"))
    assert gpus == [
        GPUInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, driver_version="590.48.01", cuda_version="13.1")
    ]
    assert parse_nvidia_smi_csv("") == []


# ---- read_nvidia end to end, with a fake nvidia-smi replaying real output --------------------
FAKE_SMI = """#!/bin/sh
# Replays real nvidia-smi output: the banner without arguments, the csv for --query-gpu.
case "$1" in
  "") cat "{banner}" ;;
  --query-gpu=*compute_cap*) {compute_cap} ;;
  --query-gpu=*) cat "{csv}" ;;
  *) exit 2 ;;
esac
"""


def fake_smi(tmp_path: Path, banner: str, csv: str, *, compute_cap_ok: bool = True, fail: str | None = None) -> Path:
    (tmp_path / "banner.txt").write_text(real(banner))
    (tmp_path / "query.csv").write_text(real(csv))
    script = tmp_path / "nvidia-smi"
    if fail:
        (tmp_path / "failed.txt").write_text(real(fail))
        script.write_text(f'#!/bin/sh\ncat "{tmp_path / "failed.txt"}"\nexit 9\n')
    else:
        cc = f'cat "{tmp_path / "query.csv"}"' if compute_cap_ok else 'echo \'Field "compute_cap" is not a valid field to query.\'; exit 2'
        script.write_text(
            FAKE_SMI.format(banner=tmp_path / "banner.txt", csv=tmp_path / "query.csv", compute_cap=cc)
        )
    script.chmod(0o755)
    return script


async def test_read_nvidia_runs_nvidia_smi_and_parses_both_outputs(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, "h100_590.48.01_table.txt", "h100_590.48.01_query.csv")
    info = await read_nvidia(str(smi), proc_version=tmp_path / "absent")
    assert (info.driver_version, info.cuda_version, info.source, info.error) == ("590.48.01", "13.1", "nvidia-smi", None)
    assert [(g.name, g.memory_total_mib, g.compute_capability, g.cuda_version) for g in info.gpus] == [
        ("NVIDIA H100 80GB HBM3", 81559, "9.0", "13.1")
    ]


async def test_read_nvidia_retries_without_compute_cap_for_old_drivers(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, "l40s_595.80_table.txt", "l40s_595.80_query.csv", compute_cap_ok=False)
    info = await read_nvidia(str(smi), proc_version=tmp_path / "absent")
    assert [g.name for g in info.gpus] == ["NVIDIA L40S"] and info.driver_version == "595.80"


async def test_read_nvidia_reports_a_failed_nvidia_smi_and_falls_back_to_the_kernel_module(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, "h100_590.48.01_table.txt", "h100_590.48.01_query.csv", fail="failed_no_driver.txt")
    proc = tmp_path / "version"
    proc.write_text(real("proc_version_open_565.57.01.txt"))
    info = await read_nvidia(str(smi), proc_version=proc)
    assert info.error is not None and info.error.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    assert (info.driver_version, info.source, info.gpus) == ("565.57.01", str(proc), [])
    nothing = await read_nvidia(str(smi), proc_version=tmp_path / "absent")
    assert nothing.driver_version is None and nothing.gpus == []


# ---- Linux platform readers --------------------------------------------------------------------
def test_cgroup_version_from_proc_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n")
    assert read_cgroup_version(mounts) == "v2"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    )
    assert read_cgroup_version(mounts) == "hybrid"
    mounts.write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    assert read_cgroup_version(mounts) == "v1"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert read_cgroup_version(mounts) is None
    assert read_cgroup_version(tmp_path / "absent") is None


def test_kvm_nested_and_iommu_readers(tmp_path: Path) -> None:
    sys_module = tmp_path / "module"
    (sys_module / "kvm_intel" / "parameters").mkdir(parents=True)
    (sys_module / "kvm_intel" / "parameters" / "nested").write_text("Y\n")
    dev = tmp_path / "kvm"
    dev.write_text("")
    info = read_kvm(dev, sys_module)
    assert (info.dev_kvm, info.module, info.nested) == (True, "kvm_intel", True)
    (sys_module / "kvm_intel").rename(sys_module / "kvm_amd")
    (sys_module / "kvm_amd" / "parameters" / "nested").write_text("0\n")
    assert read_kvm(dev, sys_module).nested is False
    assert read_kvm(tmp_path / "no-kvm", tmp_path / "no-module") == KvmInfo()
    groups = tmp_path / "iommu_groups"
    assert count_iommu_groups(groups) is None
    groups.mkdir()
    assert count_iommu_groups(groups) == 0
    for i in range(3):
        (groups / str(i)).mkdir()
    assert count_iommu_groups(groups) == 3


def test_os_release(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n# comment\n')
    assert read_os_release(path) == OsRelease(id="ubuntu", version_id="24.04", pretty_name="Ubuntu 24.04.1 LTS")
    assert read_os_release(tmp_path / "absent") is None


# ---- the outbound check, bounded, on loopback only ----------------------------------------------
async def test_outbound_check_is_bounded_and_reports_each_target() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        started = time.monotonic()
        result = await check_outbound((("127.0.0.1", open_port), ("127.0.0.1", closed_port)), timeout_s=2)
        assert time.monotonic() - started < 3
        assert result.reachable
        assert result.targets[f"127.0.0.1:{open_port}"].startswith("ok")
        assert result.targets[f"127.0.0.1:{closed_port}"].startswith("failed")
        none = await check_outbound((("127.0.0.1", closed_port),), timeout_s=1)
        assert not none.reachable
    finally:
        server.close()
        await server.wait_closed()


# ---- verdicts for machines described by facts ---------------------------------------------------
def linux_facts(**changes: object) -> MachineFacts:
    base = MachineFacts(
        os="Linux",
        arch="x86_64",
        kernel="6.8.0-100-generic",
        distribution=OsRelease(id="ubuntu", version_id="24.04", pretty_name="Ubuntu 24.04.3 LTS"),
        libc=LibcInfo(name="glibc", version="2.39"),
        kvm=KvmInfo(dev_kvm=True, accessible=True, module="kvm_amd", nested=True),
        iommu_groups=42,
        docker=DockerInfo(
            cli="/usr/bin/docker", server_version="28.2.2",
            model_plugin="/usr/libexec/docker/cli-plugins/docker-model", model_plugin_version="v1.0.9",
        ),
        cgroup="v2",
        cpu_cores=32,
        memory_total_gib=251.0,
        memory_available_gib=240.0,
        disk_path="/data",
        disk_free_gib=800.0,
        disk_total_gib=1000.0,
    )
    return base.model_copy(update=changes)


def nvidia_from(banner: str, csv: str | None = None) -> NvidiaInfo:
    """NvidiaInfo as read_nvidia builds it, from real output."""
    text = real(banner)
    gpus = parse_nvidia_smi_csv(real(csv), text) if csv else parse_nvidia_smi_table(text)
    return NvidiaInfo(
        nvidia_smi="/usr/bin/nvidia-smi", driver_version=parse_driver_version(text),
        cuda_version=parse_cuda_version(text), gpus=gpus, source="nvidia-smi",
    )  # fmt: skip


def by_id(checks: list[CheckResult]) -> dict[str, CheckResult]:
    return {c.id: c for c in checks}


def test_gpu_machine_with_a_new_driver_runs_everything_on_the_gpu() -> None:
    report = evaluate(linux_facts(nvidia=nvidia_from("h100_590.48.01_table.txt", "h100_590.48.01_query.csv")))
    checks = by_id(report.checks)
    assert checks["nvidia_driver"].status == "pass" and "575.57.08" in checks["nvidia_driver"].reason
    assert checks["cuda"].status == "pass" and checks["gpus"].status == "pass"
    assert "NVIDIA H100 80GB HBM3 (80 GiB)" in (checks["gpus"].value or "")
    assert {r.runtime: (r.status, r.accelerator) for r in report.runtimes} == {
        "ollama": ("pass", "gpu"), "dmr": ("pass", "gpu"), "vllm": ("pass", "gpu"), "llamacpp": ("pass", "gpu"),
    }  # fmt: skip
    assert report.status == "pass"


def test_driver_just_at_dmr_minimum_passes() -> None:
    nvidia = nvidia_from("header_575.57.08.txt").model_copy(
        update={"gpus": [GPUInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, compute_capability="8.9")]}
    )
    report = evaluate(linux_facts(nvidia=nvidia))
    assert report.check("nvidia_driver").status == "pass"
    assert report.runtime("dmr").accelerator == "gpu"


def test_golem_style_570_driver_puts_dmr_on_the_cpu_but_not_the_others() -> None:
    # Golem's vm-nvidia runtime ships the 570 server driver: CUDA 12.8 works, DMR's GPU build not.
    nvidia = NvidiaInfo(
        driver_version="570.172.08", cuda_version="12.8",
        gpus=[GPUInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_total_mib=24564, compute_capability="8.9")],
    )  # fmt: skip
    report = evaluate(linux_facts(nvidia=nvidia))
    assert report.check("nvidia_driver").status == "warn"
    assert "575.57.08" in report.check("nvidia_driver").reason
    dmr = report.runtime("dmr")
    assert (dmr.status, dmr.can_run, dmr.accelerator) == ("warn", True, "cpu")
    assert "570.172.08 < 575.57.08" in dmr.reasons[0]
    assert report.runtime("vllm").accelerator == "gpu" and report.runtime("vllm").status == "pass"
    assert report.runtime("ollama").accelerator == "gpu"


def test_old_driver_fails_vllm_and_cuda_check() -> None:
    report = evaluate(linux_facts(nvidia=nvidia_from("a10g_470.256.02_table.txt")))
    assert report.check("cuda").status == "fail"  # CUDA 11.4 cannot run the CUDA 12 images
    assert report.check("nvidia_driver").status == "warn"
    vllm = report.runtime("vllm")
    assert not vllm.can_run and "470.256.02 < 525.60.13" in vllm.reasons[0]
    assert report.runtime("llamacpp").accelerator == "cpu"
    assert report.runtime("ollama").accelerator == "cpu"  # Ollama wants >= 531


def test_cuda_12_driver_below_the_images_runs_by_minor_version_compatibility() -> None:
    # Ten A40s on driver 550.127.05 (CUDA 12.4): the CUDA 12.8 builds run, with a warning.
    report = evaluate(linux_facts(nvidia=nvidia_from("a40x10_550.127.05_table.txt")))
    assert report.check("cuda").status == "warn" and "minor-version compatibility" in report.check("cuda").reason
    assert report.check("nvidia_driver").status == "warn"
    assert report.check("gpus").value == ", ".join(["NVIDIA A40 (45 GiB)"] * 10)
    verdicts = {r.runtime: (r.status, r.accelerator) for r in report.runtimes}
    assert verdicts == {"vllm": ("warn", "gpu"), "llamacpp": ("warn", "gpu"), "ollama": ("pass", "gpu"), "dmr": ("warn", "cpu")}


def test_compute_capability_too_old_for_vllm() -> None:
    nvidia = NvidiaInfo(
        driver_version="575.57.08", cuda_version="12.9",
        gpus=[GPUInfo(index=0, name="Tesla P4", memory_total_mib=8192, compute_capability="6.1")],
    )  # fmt: skip
    vllm = evaluate(linux_facts(nvidia=nvidia)).runtime("vllm")
    assert not vllm.can_run and "compute capability below 7.0" in vllm.reasons[0]


def test_machine_without_gpu_says_why_for_each_runtime() -> None:
    report = evaluate(linux_facts(nvidia=NvidiaInfo(error="nvidia-smi not found")))
    for check_id in ("nvidia_driver", "cuda", "gpus"):
        assert report.check(check_id).status == "fail"
    vllm = report.runtime("vllm")
    assert vllm.status == "fail" and any("CPU-only build" in r for r in vllm.reasons)
    for name in ("dmr", "ollama", "llamacpp"):
        verdict = report.runtime(name)
        assert (verdict.status, verdict.can_run, verdict.accelerator) == ("warn", True, "cpu"), name


def test_non_x86_and_musl_machines() -> None:
    arm = evaluate(linux_facts(arch="aarch64", nvidia=NvidiaInfo()))
    assert arm.check("arch").status == "fail"
    assert any("x86-64 only" in r for r in arm.runtime("llamacpp").reasons)
    musl = evaluate(linux_facts(libc=LibcInfo(name="musl")))
    assert musl.check("glibc").status == "fail"
    assert all(not r.can_run for r in musl.runtimes)
    old = evaluate(linux_facts(libc=LibcInfo(name="glibc", version="2.17"), kernel="3.10.0-1160.el7.x86_64"))
    assert old.check("glibc").status == "fail" and old.check("kernel").status == "fail"


def test_small_machine_and_disk_thresholds() -> None:
    report = evaluate(linux_facts(memory_total_gib=6.0, disk_free_gib=30.0, kvm=KvmInfo(), iommu_groups=0))
    assert report.check("memory").status == "fail"
    assert report.check("disk").status == "warn"
    assert report.check("kvm").status == "fail" and report.check("iommu").status == "warn"
    assert report.check("nested_virt").status == "warn"


# ---- the probe on this very machine --------------------------------------------------------------
async def test_probe_on_this_machine_reports_without_crashing(tmp_path: Path) -> None:
    report = await run_probe(tmp_path / "not-yet" / "data")
    assert report.facts.os and report.facts.disk_free_gib is not None
    assert report.check("network").status == "skip"  # never contacted unless asked for
    again = ProbeReport.model_validate_json(report.model_dump_json())
    assert again == report
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia/version").exists():
        for check_id in ("nvidia_driver", "cuda", "gpus"):
            assert report.check(check_id).status == "fail"
        assert report.runtime("vllm").can_run is False
        assert report.runtime("llamacpp").accelerator == "cpu"
    assert {c.status for c in report.checks} <= {"pass", "warn", "fail", "skip"}


def beacon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_golem.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


def test_cli_json_is_a_valid_report() -> None:
    done = beacon("probe", "--json")
    assert done.returncode == 0, done.stderr
    report = ProbeReport.model_validate_json(done.stdout)
    assert [r.runtime for r in report.runtimes] == ["ollama", "dmr", "vllm", "llamacpp"]
    assert json.loads(done.stdout)["checks"][0]["id"] == "os"


def test_cli_table_on_a_terminal() -> None:
    done = beacon("probe", env={"COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    for text in ("Machine checks", "NVIDIA driver", "Runtimes on this machine", "vllm", "Overall:"):
        assert text in done.stdout
    assert "Traceback" not in done.stderr


# ---- GET /probe on the shim ----------------------------------------------------------------------
async def test_shim_serves_the_probe_once_and_caches_it(tmp_path: Path) -> None:
    # No runtime is needed for /probe: the upstream is a closed loopback port.
    config = ShimConfig(runtime="llamacpp", upstream="http://127.0.0.1:9", data_dir=tmp_path / "shim")
    async with serve_app(create_app(config)) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/probe") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            first = ProbeReport.model_validate(await resp.json())
        async with http.get(url + "/probe") as resp:
            second = ProbeReport.model_validate(await resp.json())
    assert first.created_at == second.created_at  # computed once
    assert first.facts.disk_path and first.check("network").status == "skip"


async def test_cached_probe_is_per_owner() -> None:
    class Owner:
        pass

    a, b = Owner(), Owner()
    first, again, other = await cached_probe(a), await cached_probe(a), await cached_probe(b)
    assert first is again and first is not other
    assert run_checks(first.facts) == first.checks
