"""Boot a sandbox VM: the namespaces, its root filesystem, and the process tree that holds them.

Three processes, started as `python -m beacon_golem.sandbox.vm_agent SPEC`:

  shell  in the host's PID namespace, the process the host waits on. Dies with the host
         (PR_SET_PDEATHSIG). It unshares mount, network, PID, UTS and IPC namespaces (and a
         user namespace when not root, mapping root inside to the caller outside), forks the
         init and exits with the init's status.
  init   PID 1 of the VM's PID namespace. Dies with the shell. It builds the root filesystem,
         brings up loopback, binds the two unix sockets, chroots, forks the agent and then only
         reaps orphans; when the agent exits it exits, and the kernel SIGKILLs everything left
         in the namespace. SIGKILL to the init (or the shell) is therefore "the VM dies".
  agent  vm_agent.py: serves the control and bridge sockets.

The root filesystem is the host's "/" under an overlay whose upper layer is a tmpfs capped at
`rootfs_mib` (a Golem VM's / is a ~128 MB RAM overlay), with the host's other mounts bound
back. (A user namespace may not overlay "/": there the root is a tmpfs with the host's entries
bound read-only, directories made in it on the way to the image's paths.) Then a /proc of the
VM's PID namespace, a sysfs of its network namespace, empty tmpfs over the `hide` paths (/tmp,
/run, the sandbox root with the other VMs' sockets...), the `keep` paths bound back where they
are under a hidden one, and the image's binds: volumes at their VOLUME paths, the start script,
the baked model. Every mount is
made in the VM's private mount namespace, so the host never sees one and nothing is left to
unmount: the mounts go when the namespace's last process does. The network namespace holds
only `lo`: a process in the VM reaches its own loopback and nothing else.

Standard library and pydantic only: this runs before the agent, in every VM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel, Field

from beacon_golem.sandbox import vm_linux as linux


class Bind(BaseModel):
    source: str  # host path
    target: str  # path in the VM
    readonly: bool = False


class Tmpfs(BaseModel):
    path: str  # path in the VM
    mode: int = 0o755
    size_mib: int = 64


class NamespaceSpec(BaseModel):
    vm_id: str
    parent_pid: int
    #: The host's PID namespace (`pid:[...]`): the agent checks it is not in it before it signals
    #: "every process" (kill -1), which on the host would be every process of the machine.
    host_pid_namespace: str
    rootfs: str  # host directory the root filesystem is assembled in
    rootfs_mib: int = 128
    control_socket: str
    bridge_socket: str
    binds: list[Bind] = Field(default_factory=list)
    hide: list[Tmpfs] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    mkdirs: list[str] = Field(default_factory=list)
    user_namespace: bool = False
    uid: int = 0
    gid: int = 0
    # What the agent gives commands: the image's environment and working directory.
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/"


def contained(spec: NamespaceSpec) -> bool:
    """True in a VM's process: a child of PID 1 of a PID namespace other than the host's."""
    return os.getppid() == 1 and linux.namespace_id("self", "pid") != spec.host_pid_namespace


class Booted(BaseModel, arbitrary_types_allowed=True):
    """What the agent process gets: the listening sockets, bound before the chroot."""

    control: socket.socket
    bridge: socket.socket


def emit(**event: object) -> None:
    """One handshake line on stdout (a pipe the host reads); small enough to be atomic."""
    os.write(1, json.dumps(event).encode() + b"\n")


def fail(message: str) -> NoReturn:
    emit(error=message)
    os._exit(1)


def boot(spec: NamespaceSpec) -> Booted:
    """Become the VM. Returns only in the agent process; the shell and the init never return."""
    try:
        linux.die_with_parent(signal.SIGKILL)
        if os.getppid() != spec.parent_pid:
            fail("the sandbox went away while the VM was starting")
        if spec.user_namespace:
            linux.unshare(linux.CLONE_NEWUSER)
            linux.map_root_to(spec.uid, spec.gid)
        linux.unshare(
            linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWPID | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
        )
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    except OSError as exc:
        hint = "" if spec.user_namespace else " (the sandbox needs root or unprivileged user namespaces)"
        fail(f"cannot create the VM's namespaces: {exc.strerror}{hint}")
    init = os.fork()
    if init:
        _shell(init)
    return _init(spec)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def _shell(init: int) -> NoReturn:
    emit(init_pid=init)
    try:
        _, status = os.waitpid(init, 0)
    except ChildProcessError:
        os._exit(1)
    os._exit(_exit_code(status))


def _init(spec: NamespaceSpec) -> Booted:
    if os.getpid() != 1 or linux.namespace_id("self", "pid") == spec.host_pid_namespace:
        fail("the VM did not get a PID namespace of its own")
    try:
        linux.die_with_parent(signal.SIGKILL)
        root = build_root(spec)
        linux.loopback_up()
        linux.sethostname(spec.vm_id)
        control, bridge = listen(spec.control_socket), listen(spec.bridge_socket)
        os.chroot(root)
        os.chdir("/")
    except OSError as exc:
        fail(f"cannot build the VM: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
    agent = os.fork()
    if agent == 0:
        return Booted(control=control, bridge=bridge)
    control.close()
    bridge.close()
    _reap(agent)


def _reap(agent: int) -> NoReturn:
    """PID 1's job: reap every orphan; when the agent is gone, go (the kernel kills the rest)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == agent:
            os._exit(_exit_code(status))


def listen(path: str) -> socket.socket:
    """Bind in the socket's own directory: a relative name fits sun_path (108 bytes) however deep
    the sandbox's workdir is. The init chroots and changes to / right after."""
    where = Path(path)
    os.chdir(where.parent)
    Path(where.name).unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(where.name)
    os.chmod(where.name, 0o600)
    sock.listen(64)
    return sock


# ---- the root filesystem -------------------------------------------------------------------
def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [_unescape(line.split()[4]) for line in fh if line.strip()]


def under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def top_level(paths: list[str]) -> list[str]:
    """The paths not below another one of them, sorted."""
    out: list[str] = []
    for path in sorted(set(paths)):
        if not any(under(path, kept) for kept in out):
            out.append(path)
    return out


def inside(root: str, path: str) -> str:
    return root.rstrip("/") + "/" + path.lstrip("/")


def ensure(path: str, *, file: bool) -> None:
    """A directory (or an empty file) to mount on, parents created."""
    if file:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(path):
            Path(path).touch()
    else:
        Path(path).mkdir(parents=True, exist_ok=True)


def overlay_root(root: str, spec: NamespaceSpec, hidden: list[str]) -> None:
    """The host's / under an overlay whose writes go to the VM's tmpfs, its other mounts bound back."""
    base = spec.rootfs
    if any(c in base for c in ",:\\"):  # overlayfs options cannot hold them
        raise OSError(0, f"{base} holds a ',' ':' or '\\'")
    linux.mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={base}/upper,workdir={base}/work")
    others = [
        p for p in mount_points()
        if p != "/" and not under(p, "/proc") and not under(p, "/sys") and not under(p, base)
        and not any(under(p, h) for h in hidden)
    ]  # fmt: skip
    for point in top_level(others):
        target = inside(root, point)
        if os.path.lexists(target):
            linux.bind(point, target, recursive=True)


def skeleton_root(root: str, spec: NamespaceSpec, hidden: list[str]) -> None:
    """The host's top-level entries bound read-only into the tmpfs, except on the way to a path
    the VM mounts or creates: those directories are made in the tmpfs and filled the same way."""
    targets = [b.target for b in spec.binds] + spec.mkdirs + hidden
    targets += [k for k in spec.keep if any(under(k, h) for h in hidden)]
    on_the_way = {str(parent) for t in targets for parent in Path(t).parents if str(parent) != "/"}

    def fill(host_dir: str, vm_dir: str) -> None:
        for entry in os.scandir(host_dir):
            vm_path = f"{vm_dir.rstrip('/')}/{entry.name}"
            target = inside(root, vm_path)
            if vm_path in ("/proc", "/sys") or vm_path in hidden or under(vm_path, spec.rootfs):
                os.makedirs(target, exist_ok=True)
            elif vm_path in on_the_way:
                os.makedirs(target, exist_ok=True)
                fill(os.path.realpath(entry.path), vm_path)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            else:
                ensure(target, file=not entry.is_dir(follow_symlinks=False))
                linux.bind(entry.path, target, recursive=True, readonly=True)

    fill("/", "/")


def build_root(spec: NamespaceSpec) -> str:
    base = spec.rootfs
    linux.mount("tmpfs", base, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, f"size={spec.rootfs_mib}m,mode=755")
    for name in ("upper", "work", "root"):
        os.mkdir(f"{base}/{name}")
    root = f"{base}/root"
    hidden = [h.path for h in spec.hide]
    try:
        overlay_root(root, spec, hidden)
    except OSError:  # a user namespace may not put an overlay on "/" (it has locked mounts)
        skeleton_root(root, spec, hidden)
    # This PID namespace's /proc, and a sysfs of this network namespace (/sys/class/net: lo only).
    # A user namespace inside a container may not mount its own: then the host's are bound.
    for fstype, point, flags in (("proc", "/proc", 0), ("sysfs", "/sys", linux.MS_RDONLY)):
        try:
            linux.mount(fstype, inside(root, point), fstype, linux.MS_NOSUID | linux.MS_NODEV | flags)
        except OSError:
            linux.bind(point, inside(root, point), recursive=True, readonly=bool(flags))

    for fs in spec.hide:
        target = inside(root, fs.path)
        if os.path.isdir(target):
            linux.mount(
                "tmpfs", target, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, f"size={fs.size_mib}m,mode={fs.mode:o}"
            )
    for path in spec.keep:
        if any(under(path, h) for h in hidden) and os.path.exists(path):
            is_file = not stat.S_ISDIR(os.stat(path).st_mode)
            ensure(inside(root, path), file=is_file)
            linux.bind(path, inside(root, path), recursive=True, readonly=True)

    for bind in spec.binds:
        target = inside(root, bind.target)
        ensure(target, file=not os.path.isdir(bind.source))
        linux.bind(bind.source, target, readonly=bind.readonly)
    for path in spec.mkdirs:
        ensure(inside(root, path), file=False)
    return root
