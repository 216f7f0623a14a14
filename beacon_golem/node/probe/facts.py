"""Everything the probe knows about a machine, gathered once into one model.

Checks and runtime verdicts are pure functions of `MachineFacts`, so a test (or a requestor
judging a provider from its /probe answer) can build the facts by hand.
"""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path

import psutil

from beacon_golem.core.probe import (
    GIB,
    MachineFacts,
)
from beacon_golem.node.probe.docker import docker_status
from beacon_golem.node.probe.hardware import read_nvidia
from beacon_golem.node.probe.network import check_outbound
from beacon_golem.node.probe.system import count_iommu_groups, read_cgroup_version, read_kvm, read_libc, read_os_release


async def gather_facts(disk_path: Path | None = None, network: bool = False, network_timeout_s: float = 3.0) -> MachineFacts:
    """Read this machine. Nothing here raises for a missing GPU, driver, Docker or /dev/kvm."""
    uname = platform.uname()
    path = disk_path or Path.cwd()
    while not path.exists() and path != path.parent:
        path = path.parent  # a data dir that does not exist yet: measure the disk it will be on
    nvidia_task = asyncio.create_task(read_nvidia())
    docker_task = asyncio.create_task(asyncio.to_thread(docker_status))
    network_task = asyncio.create_task(check_outbound(timeout_s=network_timeout_s)) if network else None
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(path))
    except OSError:
        disk = None
    return MachineFacts(
        os=uname.system,
        arch=uname.machine,
        kernel=uname.release,
        distribution=read_os_release(),
        libc=read_libc(),
        kvm=read_kvm(),
        iommu_groups=count_iommu_groups(),
        cgroup=read_cgroup_version(),
        cpu_cores=psutil.cpu_count(logical=True),
        memory_total_gib=round(memory.total / GIB, 2),
        memory_available_gib=round(memory.available / GIB, 2),
        disk_path=str(path),
        disk_free_gib=round(disk.free / GIB, 2) if disk else None,
        disk_total_gib=round(disk.total / GIB, 2) if disk else None,
        nvidia=await nvidia_task,
        docker=await docker_task,
        network=await network_task if network_task else None,
    )
