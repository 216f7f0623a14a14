"""The agent inside a sandbox VM: runs the exe-script's commands and relays the VPN to its ports.

Started by the host as `python -m beacon_golem.sandbox.vm_agent SPEC.json` (see vm.py);
vm_namespace.boot() turns the process into the VM first, so by the time the servers start this
process sits in the VM's namespaces, chrooted into its root filesystem, with the two listening
sockets bound at host paths before the chroot:

  control  one request per connection (vm_protocol): run a command with the image's environment
           in its working directory, or stop the VM
  bridge   per connection a target port; the agent connects to 127.0.0.1:PORT inside the VM and
           relays bytes both ways (the host's end of the VPN tunnel)

Its log (stderr) is the VM's agent.log on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from pathlib import Path

import structlog

from beacon_golem.sandbox.vm_namespace import Booted, NamespaceSpec, boot, contained, emit
from beacon_golem.sandbox.vm_protocol import (
    CHUNK,
    MAX_OUTPUT,
    MAX_REQUEST,
    CommandOutput,
    ProtocolError,
    Reply,
    RunRequest,
    StopRequest,
    encode,
    parse_request,
    read_line,
)

log = structlog.get_logger(__name__)

#: How long a finished command's output pipes may stay open (a background child holding them).
PIPE_GRACE_S = 0.5
CONNECT_TIMEOUT_S = 5.0


class TailBuffer:
    """The last `limit` bytes written, and how many were dropped before them."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size > self.limit:
            excess = self.size - self.limit
            first = self.chunks[0]
            if len(first) <= excess:
                self.chunks.popleft()
                self.size -= len(first)
                self.dropped += len(first)
            else:
                self.chunks[0] = first[excess:]
                self.size -= excess
                self.dropped += excess

    def text(self) -> str:
        body = b"".join(self.chunks).decode("utf-8", errors="replace")
        return f"[{self.dropped} bytes cut]\n{body}" if self.dropped else body


class Capture(asyncio.SubprocessProtocol):
    """A command's two output streams (their ends) and its exit, each noticed on its own: the
    command is done when it exits, even if a child it left in the background holds the pipes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out, self.err = TailBuffer(), TailBuffer()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.out if fd == 1 else self.err).add(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Agent:
    def __init__(self, spec: NamespaceSpec, booted: Booted) -> None:
        self.spec = spec
        self.booted = booted
        self.stopped = asyncio.Event()
        self.env = {"HOME": "/root", **spec.env}

    async def serve(self) -> None:
        control = await asyncio.start_unix_server(self.on_control, sock=self.booted.control, limit=MAX_REQUEST)
        bridge = await asyncio.start_unix_server(self.on_bridge, sock=self.booted.bridge)
        emit(ready=True)
        os.dup2(2, 1)  # the handshake is over: anything else printed goes to the log
        log.info("vm.ready", vm_id=self.spec.vm_id)
        async with control, bridge:
            await self.stopped.wait()
        log.info("vm.stopped", vm_id=self.spec.vm_id)

    # ---- control -----------------------------------------------------------------------------
    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stopping = False
        try:
            request = parse_request(await read_line(reader))
            if isinstance(request, RunRequest):
                reply = await self.run(request)
            else:
                reply, stopping = await self.stop(request), True
            writer.write(encode(reply))
            await writer.drain()
        except ProtocolError as exc:
            log.warning("vm.bad_request", error=str(exc))
            with contextlib.suppress(ConnectionError):
                writer.write(encode(Reply.failed(str(exc))))
        except ConnectionError as exc:
            log.warning("vm.control_dropped", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if stopping:  # only once the answer is out: the agent exits right after
                self.stopped.set()

    async def run(self, request: RunRequest) -> Reply:
        loop = asyncio.get_running_loop()
        try:
            transport, capture = await loop.subprocess_exec(
                lambda: Capture(loop),
                request.entry_point,
                *request.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd=self.spec.workdir,
                start_new_session=True,
            )
        except OSError as exc:
            return Reply.failed(f"cannot run {request.entry_point}: {exc.strerror or exc}")
        try:
            try:
                await asyncio.wait_for(asyncio.shield(capture.exited), request.timeout_s)
            except TimeoutError:
                _kill_group(transport.get_pid())
                await capture.exited
                log.warning("vm.command_timeout", entry_point=request.entry_point, timeout_s=request.timeout_s)
                return Reply.failed(f"{request.entry_point} did not finish within {request.timeout_s:g} s")
            # What a child left in the background writes later is not this command's output.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(capture.pipes_closed), PIPE_GRACE_S)
        finally:
            transport.close()
        rc = transport.get_returncode()
        assert rc is not None
        log.info("vm.command", entry_point=request.entry_point, rc=rc)
        return Reply(ok=True, output=CommandOutput(rc=rc, stdout=capture.out.text(), stderr=capture.err.text()))

    async def stop(self, request: StopRequest) -> Reply:
        """Every other process in the VM gets SIGTERM, then SIGKILL after the grace period."""
        if not contained(self.spec):  # never kill(-1) outside the VM: it would hit the whole machine
            log.error("vm.not_contained")
            return Reply.failed("the agent is not inside its VM's PID namespace")
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGTERM)  # in a PID namespace: all but the init and this agent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.grace_s
        while loop.time() < deadline:
            try:
                os.kill(-1, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        return Reply(ok=True)

    # ---- bridge ------------------------------------------------------------------------------
    async def on_bridge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await read_line(reader)
            port = int(line) if line.isdigit() else 0
            if not 0 < port < 65536:
                writer.write(f"ERR not a port: {line[:20]!r}\n".encode())
                await writer.drain()
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "connect timed out"
                writer.write(f"ERR {reason}\n".encode())
                await writer.drain()
                return
            writer.write(b"OK\n")
            await writer.drain()
            await relay(reader, writer, up_reader, up_writer)
        except (ProtocolError, ConnectionError) as exc:
            log.info("vm.bridge_dropped", error=str(exc))
        finally:
            writer.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while chunk := await src.read(CHUNK):
        dst.write(chunk)
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


async def relay(
    a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter,
) -> None:  # fmt: skip
    """Bytes both ways until both sides are done; an error on either side ends both."""
    pumps = [asyncio.create_task(_pump(a_reader, b_writer)), asyncio.create_task(_pump(b_reader, a_writer))]
    try:
        # Both ended (each side sent EOF), or one failed and the other cannot go on either.
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("vm.relay_ended", error=str(task.exception()))
    finally:
        for task in pumps:
            task.cancel()
        for writer in (a_writer, b_writer):
            writer.close()


def configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        emit(error="usage: python -m beacon_golem.sandbox.vm_agent SPEC.json")
        sys.exit(2)
    try:
        spec = NamespaceSpec.model_validate_json(Path(args[0]).read_bytes())
    except (OSError, ValueError) as exc:
        emit(error=f"cannot read the VM spec {args[0]}: {exc}")
        sys.exit(2)
    booted = boot(spec)  # from here on: the agent process, inside the VM
    if not contained(spec):
        emit(error="the agent is not inside the VM's PID namespace")
        sys.exit(1)
    configure_logging()
    asyncio.run(Agent(spec, booted).serve())


if __name__ == "__main__":
    main()
