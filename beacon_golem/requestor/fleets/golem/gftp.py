"""A stand-in for yagna's `gftp` binary, enough for yapapi's engine.

yapapi 0.13.1's `Golem` runs `gftp server` at start-up (yapapi/storage/gftp.py) and speaks
JSON-RPC 2.0 with it, one JSON object per line on stdin/stdout: `version` first, then `publish`
(files the requestor sends), `receive` (a place for a file the provider sends back), `close` and
`shutdown`. The `golem-node` pip package ships no gftp, so without this `async with Golem(...)`
fails with "Connection lost".

Against the sandbox (`BEACON_GOLEM_GFTP_LOCAL=1`, which `beacon golem sandbox` exports) the URLs it
hands out name local files (`gftp://beacon-local/<base64url of the absolute path>`), and the
sandbox's providers read and write those files directly. Anywhere else it answers `version` (so the
engine starts) but refuses `publish`/`receive` with an error that says it cannot transfer: real
providers could not download from it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError

from beacon_golem.core.gftp import LOCAL_ENV, url_for

VERSION = "0.1.0 (beacon-golem gftp stand-in: local files only)"
CANNOT_TRANSFER = (
    "beacon-golem's gftp stand-in cannot transfer files over the Golem network "
    f"(it serves only `beacon golem sandbox`, with {LOCAL_ENV}=1); "
    "install yagna's own gftp to send files to real providers"
)


class Request(BaseModel):
    jsonrpc: str = "2.0"
    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: int | str | None = None


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StandIn:
    """The JSON-RPC methods; `local` is whether URLs may name local files."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.running = True

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "version":
            return VERSION
        if method == "publish":
            files = self._strings(params, "files")
            self._require_local()
            return [{"file": f, "url": url_for(f)} for f in files]
        if method == "receive":
            output = params.get("output_file")
            if not isinstance(output, str) or not output:
                raise RpcError(-32602, "receive: output_file (a path) is required")
            self._require_local()
            return {"file": output, "url": url_for(output)}
        if method == "close":
            return ["ok" for _ in self._strings(params, "urls")]
        if method == "shutdown":
            self.running = False
            return "ok"
        if method in ("upload", "download"):
            raise RpcError(-32000, CANNOT_TRANSFER)
        raise RpcError(-32601, f"method not found: {method}")

    def _require_local(self) -> None:
        if not self.local:
            raise RpcError(-32000, CANNOT_TRANSFER)

    @staticmethod
    def _strings(params: dict[str, Any], name: str) -> list[str]:
        value = params.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RpcError(-32602, f"{name}: a list of strings is required")
        return value


def _answer(ident: int | str | None, result: Any = None, error: RpcError | None = None) -> str:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": ident}
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    else:
        body["result"] = result
    return json.dumps(body)


def serve(stdin: TextIO, stdout: TextIO, local: bool) -> int:
    standin = StandIn(local)
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = Request.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError):
            stdout.write(_answer(None, error=RpcError(-32700, "parse error")) + "\n")
            stdout.flush()
            continue
        params = request.params if isinstance(request.params, dict) else {}
        try:
            reply = _answer(request.id, result=standin.call(request.method, params))
        except RpcError as exc:
            reply = _answer(request.id, error=exc)
        if request.id is not None:
            stdout.write(reply + "\n")
            stdout.flush()
        if not standin.running:
            break
    return 0


def is_standin(path: str | Path) -> bool:
    """Whether the `gftp` at `path` is this stand-in (pip's console script names this module)."""
    try:
        head = Path(path).read_bytes()[:4096]
    except OSError:
        return False
    return b"beacon_golem.requestor.fleets.golem.gftp" in head


def real_gftp(own: Path) -> Path | None:
    """Another `gftp` further on PATH (yagna's own, from its release archive), not this stand-in."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / "gftp"
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate.resolve() != own.resolve():
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if argv is None and not os.environ.get(LOCAL_ENV):
        real = real_gftp(Path(sys.argv[0]))
        if real is not None:  # a real gftp transfers files to providers: let it do the work
            os.execv(real, [str(real), *args])
    if args[:1] == ["--version"] or args[:1] == ["-V"]:
        print(f"gftp {VERSION}")
        return 0
    if args[:1] != ["server"]:
        print("usage: gftp server   (beacon-golem's stand-in speaks JSON-RPC on stdin/stdout)", file=sys.stderr)
        return 2
    return serve(sys.stdin, sys.stdout, local=os.environ.get(LOCAL_ENV, "") not in ("", "0", "false", "no"))


if __name__ == "__main__":
    raise SystemExit(main())
