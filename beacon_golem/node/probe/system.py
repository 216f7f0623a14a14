"""Linux platform facts the runtimes and Golem's VM runtime depend on: libc, KVM, IOMMU, cgroups.

Each reader takes the paths it reads as arguments (tests point them at temporary files) and
reports absence instead of raising.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from beacon_golem.core.probe import KvmInfo, LibcInfo, OsRelease


def read_os_release(path: Path = Path("/etc/os-release")) -> OsRelease | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip().strip('"').strip("'")
    return OsRelease(id=fields.get("ID"), version_id=fields.get("VERSION_ID"), pretty_name=fields.get("PRETTY_NAME"))




def read_libc() -> LibcInfo:
    """The C library Python runs on: glibc's version from confstr, else platform.libc_ver()."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        value = None
    if value and " " in value:
        name, version = value.split(" ", 1)
        return LibcInfo(name=name, version=version)
    name, version = platform.libc_ver()
    if name:
        return LibcInfo(name=name, version=version or None)
    if Path("/lib/ld-musl-x86_64.so.1").exists() or Path("/lib/ld-musl-aarch64.so.1").exists():
        return LibcInfo(name="musl")
    return LibcInfo()




def read_kvm(dev: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> KvmInfo:
    info = KvmInfo(dev_kvm=dev.exists())
    info.accessible = info.dev_kvm and os.access(dev, os.R_OK | os.W_OK)
    for module in ("kvm_intel", "kvm_amd"):
        param = sys_module / module / "parameters" / "nested"
        if (sys_module / module).is_dir():
            info.module = module
            try:
                value = param.read_text().strip().upper()
            except OSError:
                value = ""
            if value:
                info.nested = value in ("Y", "1")
            break
    return info


def count_iommu_groups(path: Path = Path("/sys/kernel/iommu_groups")) -> int | None:
    """How many IOMMU groups the kernel made; 0 when IOMMU is off, None when unknown."""
    try:
        return sum(1 for entry in path.iterdir() if entry.name.isdigit())
    except OSError:
        return None


def read_cgroup_version(mounts: Path = Path("/proc/mounts")) -> str | None:
    """'v2' (unified), 'v1' (legacy) or 'hybrid' (v1 controllers plus a v2 tree), from /proc/mounts."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    v2_at_root = v2_elsewhere = v1 = False
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        where, fstype = fields[1], fields[2]
        if fstype == "cgroup2":
            if where == "/sys/fs/cgroup":
                v2_at_root = True
            else:
                v2_elsewhere = True
        elif fstype == "cgroup":
            v1 = True
    if v2_at_root and not v1:
        return "v2"
    if v1 and (v2_at_root or v2_elsewhere):
        return "hybrid"
    if v1:
        return "v1"
    return "v2" if v2_elsewhere else None
