"""What the host and a VM's agent say over the VM's two unix sockets.

control socket: one request per connection, a JSON line (run a command, or stop the VM); the
agent answers a JSON line.
bridge socket: the host writes the target port as a line ("8080\\n"); the agent answers "OK\\n"
once it has connected to 127.0.0.1:PORT inside the VM, or "ERR <reason>\\n", then relays bytes.
Every line is read with a bound, so a confused peer cannot make the other side buffer forever.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

#: What a command's stdout or stderr keeps (the end of it), like an exe-unit's captured output.
MAX_OUTPUT = 1024 * 1024
CHUNK = 256 * 1024
#: A reply line holds both outputs, JSON-escaped: the host reads control replies up to this.
MAX_REPLY = 16 * 1024 * 1024
#: A request line holds a command's arguments (an env file's lines, say): the agent reads up to this.
MAX_REQUEST = 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not this protocol, or went away mid-message."""


class CommandOutput(BaseModel):
    rc: int
    stdout: str
    stderr: str


class RunRequest(BaseModel):
    op: Literal["run"] = "run"
    entry_point: str
    args: list[str] = Field(default_factory=list)
    timeout_s: float = Field(gt=0)


class StopRequest(BaseModel):
    """SIGTERM everything in the VM, SIGKILL what is left after `grace_s`, then the agent exits."""

    op: Literal["stop"] = "stop"
    grace_s: float = Field(default=5.0, ge=0)


Request = Annotated[RunRequest | StopRequest, Field(discriminator="op")]
REQUEST: TypeAdapter[RunRequest | StopRequest] = TypeAdapter(Request)


class Reply(BaseModel):
    ok: bool
    error: str | None = None
    output: CommandOutput | None = None

    @classmethod
    def failed(cls, error: str) -> Reply:
        return cls(ok=False, error=error)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One line without its newline. ProtocolError at EOF first, or past the reader's limit
    (asyncio's default 64 KiB; MAX_REQUEST and MAX_REPLY on the control socket)."""
    try:
        return (await reader.readuntil(b"\n"))[:-1]
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed mid-line" if exc.partial else "connection closed") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("line too long") from None


def parse_request(line: bytes) -> RunRequest | StopRequest:
    try:
        return REQUEST.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProtocolError(f"bad request: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def parse_reply(line: bytes) -> Reply:
    try:
        return Reply.model_validate_json(line)
    except ValidationError:
        raise ProtocolError("bad reply from the VM agent") from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"
