"""A sandbox VM: what one Golem activity runs, on this machine, isolated by Linux namespaces.

The exe-script's commands map onto a VM as on a provider: `deploy` checks the image and creates
its volumes (empty directories), `start` boots the VM, `run` executes a command in it, `transfer`
copies a file into or out of a volume (on the host, as the exe-unit does; paths outside the
volumes are refused as Golem refuses them), `terminate` stops it and frees everything.
`open_tcp` is the VPN's end: a byte stream to a port on the VM's own loopback. `kill` is the
fault "vm-dies".

Each VM gets its own mount, network, PID, UTS and IPC namespaces (vm_namespace.py): its node
listens on 0.0.0.0:8080 like every other VM's without conflict, and can reach nothing but its
own loopback. The host talks to the agent inside (vm_agent.py) over two unix sockets in the VM's
directory: `control` (commands) and `bridge` (TCP to a port inside).

On disk, per VM, under the sandbox root:
  <root>/<vm_id>/volumes/<name>  one per VOLUME of the image (data, models, cache)
  <root>/<vm_id>/agent.log       the agent's log (boot errors included)
  <root>/<vm_id>/spec.json, control.sock, bridge.sock, rootfs/ (a mount point inside the VM)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

import structlog

from beacon_golem.sandbox import vm_linux
from beacon_golem.sandbox.image import ImageError, SandboxImage, parse_image
from beacon_golem.sandbox.vm_namespace import Bind, NamespaceSpec, Tmpfs
from beacon_golem.sandbox.vm_protocol import (
    MAX_REPLY,
    CommandOutput,
    ProtocolError,
    Reply,
    RunRequest,
    StopRequest,
    encode,
    parse_reply,
    read_line,
)

__all__ = ["CommandOutput", "NamespaceVm", "Vm", "VmError", "create_vm"]

log = structlog.get_logger(__name__)

VM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: VM paths hidden behind an empty tmpfs (besides the sandbox root): host sockets and scratch.
HIDDEN = (("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/run", 0o755), ("/dev/shm", 0o1777))
CONTAINER = "container:"
BOOT_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
#: Slack on top of a command's own timeout for the agent's answer to arrive.
REPLY_SLACK_S = 10.0
BRIDGE_TIMEOUT_S = 10.0


class VmError(Exception):
    """A command, deploy or connection failed; str() is the one-line message for the result."""


#: Longest unix socket path connect() and bind() take (sun_path is 108 bytes with its NUL).
UNIX_PATH_MAX = 107


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A path to connect to the unix socket at `path`, however deep the sandbox's workdir: a long
    one goes through a descriptor of its directory (/proc/self/fd/N/NAME), which the kernel
    resolves like the full path."""
    if len(os.fsencode(str(path))) <= UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


@runtime_checkable
class Vm(Protocol):
    vm_id: str
    alive: bool

    async def deploy(self, image: bytes) -> None: ...
    async def start(self) -> None: ...
    async def run(self, entry_point: str, args: list[str], timeout_s: float) -> CommandOutput: ...
    async def transfer(self, source: str, destination: str) -> None: ...
    async def open_tcp(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
    async def kill(self) -> None: ...
    async def terminate(self) -> None: ...


async def create_vm(root: Path, vm_id: str, *, keep_logs: bool = False, user_namespace: bool | None = None) -> Vm:
    """A new VM (not deployed yet) in root/vm_id.

    keep_logs: terminate() leaves the data volume's logs/ and agent.log in place, removes the rest.
    user_namespace: give the VM a user namespace (root inside, this user outside); by default only
    when not running as root, which needs unprivileged user namespaces (some distributions restrict
    them, e.g. Ubuntu 24.04 through AppArmor).
    """
    if not sys.platform.startswith("linux"):
        raise VmError("sandbox VMs need Linux (network, mount and PID namespaces)")
    if not VM_ID.fullmatch(vm_id):
        raise VmError(f"{vm_id!r} is not a VM id (letters, digits, '.', '_', '-'; at most 63)")
    root = Path(root).absolute()
    vm_dir = root / vm_id
    if vm_dir.exists():
        raise VmError(f"vm {vm_id}: {vm_dir} already exists")
    try:
        vm_dir.mkdir(parents=True)
    except OSError as exc:
        raise VmError(f"vm {vm_id}: cannot create {vm_dir}: {exc.strerror}") from None
    return NamespaceVm(root, vm_id, keep_logs=keep_logs, user_namespace=user_namespace)


def volume_dir_name(path: str) -> str:
    return path.strip("/").replace("/", "_") or "root"


def _vm_path(location: str) -> str | None:
    """The VM path of `container:/x`, else None."""
    if location.startswith(CONTAINER):
        path = location[len(CONTAINER) :]
        return path if path.startswith("/") else "/" + path
    return None


def _host_path(location: str) -> Path:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location.startswith("/"):
        return Path(location)
    raise VmError(f"cannot transfer {location}: only container:, file:// and absolute paths are understood here")


def _copy_file(source: Path, dest: Path) -> None:
    """source to dest through dest's .part sibling, so a failed copy leaves nothing half-written."""
    if source.is_dir():
        raise IsADirectoryError(21, "is a directory (only single files are transferred)", str(source))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    try:
        shutil.copyfile(source, part)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)


def _zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rpartition(b")")[2].split()[0] == b"Z"


class NamespaceVm:
    """The Vm of this sandbox. One asyncio loop drives it; every method is safe to call in any
    state (a command on a VM that is not running is a VmError, kill/terminate are idempotent)."""

    def __init__(self, root: Path, vm_id: str, *, keep_logs: bool = False, user_namespace: bool | None = None) -> None:
        self.vm_id = vm_id
        self.alive = False
        self.root = root
        self.dir = root / vm_id
        self.keep_logs = keep_logs
        self.user_namespace = os.geteuid() != 0 if user_namespace is None else user_namespace
        self.image: SandboxImage | None = None
        self.state = "created"  # created, deployed, running, dead, terminated
        self._process: asyncio.subprocess.Process | None = None
        self._init_pid: int | None = None
        self._pid_ns: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self._log = log.bind(vm_id=vm_id)

    # ---- paths -------------------------------------------------------------------------------
    @property
    def control_socket(self) -> Path:
        return self.dir / "control.sock"

    @property
    def bridge_socket(self) -> Path:
        return self.dir / "bridge.sock"

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"

    def volume(self, vm_path: str) -> Path:
        """The host directory behind one of the image's volumes."""
        return self.dir / "volumes" / volume_dir_name(vm_path)

    def _error(self, message: str) -> VmError:
        return VmError(f"vm {self.vm_id}: {message}")

    # ---- deploy / start ----------------------------------------------------------------------
    async def deploy(self, image: bytes) -> None:
        if self.state != "created":
            raise self._error(f"cannot deploy: the VM is {self.state}")
        try:
            parsed = parse_image(image)
        except ImageError as exc:
            raise self._error(f"deploy failed: {exc}") from None
        script = Path(parsed.start_script)
        if not (script.is_file() and os.access(script, os.X_OK)):
            raise self._error(f"deploy failed: the image's start script {script} is not an executable file")
        for name, path in parsed.baked.items():
            if not Path(path).is_file():
                raise self._error(f"deploy failed: the image's baked {name} ({path}) does not exist")
        try:
            for volume in parsed.volumes:
                self.volume(volume).mkdir(parents=True, exist_ok=True)
            (self.dir / "rootfs").mkdir(exist_ok=True)
        except OSError as exc:
            raise self._error(f"deploy failed: cannot create the volumes: {exc.strerror}") from None
        self.image = parsed
        self.state = "deployed"
        self._log.info("sandbox.vm_deployed", volumes=parsed.volumes)

    def namespace_spec(self) -> NamespaceSpec:
        image = self.image
        assert image is not None
        binds = [Bind(source=str(self.volume(v)), target=v) for v in image.volumes]
        binds.append(Bind(source=image.start_script, target=image.start_script_at, readonly=True))
        binds += [
            Bind(source=path, target=f"{image.baked_dir.rstrip('/')}/{name}", readonly=True)
            for name, path in image.baked.items()
        ]
        hide = [Tmpfs(path=path, mode=mode) for path, mode in HIDDEN]
        hide.append(Tmpfs(path=str(self.root), size_mib=1))
        return NamespaceSpec(
            vm_id=self.vm_id,
            parent_pid=os.getpid(),
            host_pid_namespace=vm_linux.namespace_id("self", "pid"),
            rootfs=str(self.dir / "rootfs"),
            control_socket=str(self.control_socket),
            bridge_socket=str(self.bridge_socket),
            binds=binds,
            hide=hide,
            keep=image.host_paths,
            mkdirs=[image.workdir, image.baked_dir, "/root"],
            user_namespace=self.user_namespace,
            uid=os.geteuid(),
            gid=os.getegid(),
            env=image.env,
            workdir=image.workdir,
        )

    async def start(self) -> None:
        if self.state != "deployed":
            hint = " (deploy first)" if self.state == "created" else ""
            raise self._error(f"cannot start: the VM is {self.state}{hint}")
        spec_path = self.dir / "spec.json"
        try:
            spec_path.write_text(self.namespace_spec().model_dump_json(indent=1))
            with self.agent_log.open("ab") as log_file:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "beacon_golem.sandbox.vm_agent", str(spec_path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_file,
                    start_new_session=True,
                    cwd="/",
                )  # fmt: skip
        except OSError as exc:
            raise self._error(f"cannot start the VM's agent: {exc.strerror or exc}") from None
        try:
            await asyncio.wait_for(self._handshake(), BOOT_TIMEOUT_S)
        except TimeoutError:
            await self._destroy()
            raise self._error(f"did not boot within {BOOT_TIMEOUT_S:g} s{self._log_hint()}") from None
        except VmError:
            await self._destroy()
            raise
        self.alive = True
        self.state = "running"
        self._watch = asyncio.create_task(self._watch_exit())
        self._log.info("sandbox.vm_started", init_pid=self._init_pid)

    async def _handshake(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            try:
                line = await read_line(self._process.stdout)
            except ProtocolError:
                raise self._error(f"did not boot (the agent exited){self._log_hint()}") from None
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "init_pid" in event:
                self._init_pid = int(event["init_pid"])
                with contextlib.suppress(OSError):
                    self._pid_ns = vm_linux.namespace_id(self._init_pid, "pid")
            elif "error" in event:
                raise self._error(f"did not boot: {event['error']}")
            elif event.get("ready"):
                return

    def _log_hint(self) -> str:
        try:
            lines = [x for x in self.agent_log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return f"; agent.log ends: {lines[-1][-300:]}" if lines else ""

    async def _watch_exit(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        if self.alive:
            self.alive = False
            self.state = "dead"
            self._log.warning("sandbox.vm_exited", code=code)

    # ---- commands ----------------------------------------------------------------------------
    def _require_running(self, what: str) -> None:
        if not self.alive:
            raise self._error(f"cannot {what}: the VM is {self.state}")

    async def _request(self, request: RunRequest | StopRequest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A control connection with `request` written to it (its answer is read by _reply)."""
        try:
            with reachable(self.control_socket) as where:
                reader, writer = await asyncio.open_unix_connection(where, limit=MAX_REPLY)
        except OSError as exc:
            raise self._error(f"the VM does not answer ({exc.strerror or exc})") from None
        writer.write(encode(request))
        return reader, writer

    async def _reply(self, reader: asyncio.StreamReader, timeout_s: float) -> Reply:
        try:
            return parse_reply(await asyncio.wait_for(read_line(reader), timeout_s))
        except TimeoutError:
            raise self._error(f"no answer from the VM within {timeout_s:g} s") from None
        except (ProtocolError, ConnectionError) as exc:
            state = "died" if not self.alive or self._exited() else "dropped the connection"
            raise self._error(f"the VM {state} ({exc})") from None

    def _exited(self) -> bool:
        return self._process is None or self._process.returncode is not None

    async def run(self, entry_point: str, args: list[str], timeout_s: float) -> CommandOutput:
        self._require_running(f"run {entry_point}")
        reader, writer = await self._request(RunRequest(entry_point=entry_point, args=args, timeout_s=timeout_s))
        try:
            reply = await self._reply(reader, timeout_s + REPLY_SLACK_S)
        finally:
            writer.close()
        if not reply.ok or reply.output is None:
            raise self._error(reply.error or "the command failed")
        return reply.output

    # ---- files -------------------------------------------------------------------------------
    async def transfer(self, source: str, destination: str) -> None:
        """Copy one file between this machine and a volume, as a provider's exe-unit does: on the
        host, into the volume's directory; a container path outside every volume is refused."""
        if not (self.alive or self.state == "deployed"):
            raise self._error(f"cannot transfer files: the VM is {self.state}")
        src_vm, dst_vm = _vm_path(source), _vm_path(destination)
        if (src_vm is None) == (dst_vm is None):
            raise self._error(f"cannot transfer {source} to {destination}: exactly one side must be container:/PATH")
        src = self.resolve(src_vm) if src_vm is not None else _host_path(source)
        dst = self.resolve(dst_vm) if dst_vm is not None else _host_path(destination)
        try:
            await asyncio.to_thread(_copy_file, src, dst)
        except OSError as exc:
            failed = str(exc.filename) if exc.filename else str(src)
            shown = src_vm if src_vm and failed == str(src) else dst_vm if dst_vm and failed == str(dst) else failed
            raise self._error(f"transfer {source} -> {destination} failed: {shown}: {exc.strerror or exc}") from None
        self._log.info("sandbox.vm_transfer", source=source, destination=destination)

    def resolve(self, vm_path: str) -> Path:
        """The host path of a container path, through the volume that holds it (the longest)."""
        assert self.image is not None
        volumes = [v for v in self.image.volumes if vm_path == v or vm_path.startswith(v.rstrip("/") + "/")]
        if not volumes:
            raise self._error(f"path not found in container: {vm_path} (transfers reach only the volumes)")
        volume = max(volumes, key=len)
        rest = vm_path[len(volume) :].removeprefix("/")
        if rest.startswith("/") or ".." in Path(rest).parts:
            raise self._error(f"invalid path format: [{vm_path}]")
        base = self.volume(volume)
        target = base / rest if rest else base
        # The volume is the VM's: a symlink in it must not lead the copy out of it.
        real_base, real = os.path.realpath(base), os.path.realpath(target)
        if real != real_base and not real.startswith(real_base + "/"):
            raise self._error(f"path not found in container: {vm_path} (it leads out of its volume)")
        return target

    # ---- the VPN's end -----------------------------------------------------------------------
    async def open_tcp(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._require_running(f"connect to port {port}")
        try:
            with reachable(self.bridge_socket) as where:
                reader, writer = await asyncio.open_unix_connection(where)
        except OSError as exc:
            raise self._error(f"cannot reach port {port}: the VM does not answer ({exc.strerror or exc})") from None
        try:
            writer.write(f"{port}\n".encode())
            answer = await asyncio.wait_for(read_line(reader), BRIDGE_TIMEOUT_S)
        except (TimeoutError, ProtocolError, ConnectionError) as exc:
            writer.close()
            raise self._error(f"cannot reach port {port}: {exc or 'no answer'}") from None
        if answer != b"OK":
            writer.close()
            reason = answer.decode(errors="replace").removeprefix("ERR ").strip()
            raise self._error(f"nothing listens on port {port} ({reason})")
        return reader, writer

    # ---- the end -----------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Host PIDs of the live processes in the VM's PID namespace (none once it is dead)."""
        if self._pid_ns is None:
            return []
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if vm_linux.namespace_id(entry.name, "pid") == self._pid_ns and not _zombie(entry.name):
                        pids.append(int(entry.name))
        return pids

    async def _destroy(self) -> None:
        """SIGKILL the VM's init (the kernel kills its whole PID namespace) and its shell."""
        if self._init_pid is not None and not self._exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        if self._process is not None:
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        for _ in range(100):  # the namespace's last processes are reaped by the kernel
            left = self.processes()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        else:
            self._log.error("sandbox.vm_processes_left", pids=self.processes())

    async def kill(self) -> None:
        if self.state not in ("running", "dead"):
            return
        self.alive = False
        self.state = "dead"
        await self._destroy()
        self._log.info("sandbox.vm_killed")

    async def terminate(self) -> None:
        if self.state == "terminated":
            return
        if self.alive:
            self.alive = False
            try:
                reader, writer = await self._request(StopRequest(grace_s=STOP_GRACE_S))
                try:
                    await self._reply(reader, STOP_GRACE_S + REPLY_SLACK_S)
                finally:
                    writer.close()
                assert self._process is not None
                await asyncio.wait_for(self._process.wait(), REPLY_SLACK_S)
            except (VmError, TimeoutError) as exc:
                self._log.warning("sandbox.vm_stop_unclean", error=str(exc))
        await self._destroy()
        if self._watch is not None:
            await asyncio.gather(self._watch, return_exceptions=True)
        self.state = "terminated"
        self._remove_files()
        self._log.info("sandbox.vm_terminated", kept_logs=self.keep_logs)

    def _remove_files(self) -> None:
        if not self.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name in ("control.sock", "bridge.sock", "spec.json"):
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "rootfs", ignore_errors=True)
        logs = self.volume("/data") / "logs" if self.image is not None and "/data" in self.image.volumes else None
        for volume in (self.dir / "volumes").glob("*"):
            if logs is None or volume != logs.parent:
                shutil.rmtree(volume, ignore_errors=True)
                continue
            for entry in volume.iterdir():
                if entry != logs:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
