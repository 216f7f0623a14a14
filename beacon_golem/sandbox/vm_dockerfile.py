"""What a node image's Dockerfile declares for its final stage: ENV, VOLUME and WORKDIR.

The sandbox image copies these so that a sandbox VM has the volumes and the environment a Golem
VM built from the same Dockerfile has. Only the subset the node Dockerfiles use is read: line
continuations, comments, `ENV K=V ...` and `ENV K V`, `VOLUME [..]` and `VOLUME a b`, and
`$NAME` / `${NAME}` from earlier ENV and ARG defaults (an unset ARG expands to "").
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from pydantic import BaseModel, Field

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(ValueError):
    """The Dockerfile cannot be read or parsed; the message is one line."""


class StageDeclarations(BaseModel):
    env: dict[str, str] = Field(default_factory=dict)
    volumes: list[str] = Field(default_factory=list)
    workdir: str = "/"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            out.append((word.upper(), rest.strip()))
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _expand(value: str, scope: dict[str, str]) -> str:
    return _VAR.sub(lambda m: scope.get(m.group(1) or m.group(2), ""), value)


def _env_pairs(args: str, scope: dict[str, str]) -> dict[str, str]:
    try:
        words = shlex.split(args, posix=True)
    except ValueError as exc:
        raise DockerfileError(f"ENV {args[:60]}: {exc}") from exc
    if words and "=" not in words[0]:  # legacy form: ENV NAME value with spaces
        return {words[0]: _expand(" ".join(words[1:]), scope)}
    pairs: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"ENV {args[:60]}: {word!r} is not NAME=value")
        pairs[name] = _expand(value, {**scope, **pairs})
    return pairs


def _volumes(args: str) -> list[str]:
    if args.startswith("["):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError as exc:
            raise DockerfileError(f"VOLUME {args[:60]}: {exc.msg}") from exc
        return [str(v) for v in parsed]
    return args.split()


def final_stage(path: Path) -> StageDeclarations:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DockerfileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    stage: StageDeclarations | None = None
    stage_args: dict[str, str] = {}
    for word, rest in instructions(text):
        if word == "FROM":
            stage, stage_args = StageDeclarations(), {}
        elif word == "ARG":
            name, _, default = rest.partition("=")
            if stage is not None:  # a global ARG reaches only FROM lines
                stage_args[name.strip()] = default.strip().strip('"')
        elif stage is None:
            continue
        elif word == "ENV":
            stage.env.update(_env_pairs(rest, {**stage_args, **stage.env}))
        elif word == "VOLUME":
            stage.volumes += [v for v in _volumes(rest) if v not in stage.volumes]
        elif word == "WORKDIR":
            stage.workdir = _expand(rest, {**stage_args, **stage.env})
    if stage is None:
        raise DockerfileError(f"{path} has no FROM")
    return stage
