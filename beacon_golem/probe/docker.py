"""Is there a Docker engine, and is the Docker Model Runner CLI plugin installed?

Used by `beacon probe` and by `beacon image build` (which needs an engine). Synchronous and
bounded by timeouts: `docker info` answers at once when the daemon is down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

#: Where the Docker CLI looks for plugins (docs.docker.com/engine/extend/cli_plugins/), after
#: ~/.docker/cli-plugins. docker-model-plugin packages install `docker-model` into one of them.
PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


class DockerInfo(BaseModel):
    #: Path of the docker CLI, None when it is not installed.
    cli: str | None = None
    #: The engine's version when `docker info` reached it.
    server_version: str | None = None
    #: Why there is no engine, in one line.
    error: str | None = None
    #: Path and version of the `docker-model` CLI plugin (Docker Model Runner).
    model_plugin: str | None = None
    model_plugin_version: str | None = None

    @property
    def engine(self) -> bool:
        return self.server_version is not None


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # `docker info` prints client details first and the reason last ("Cannot connect to ...").
    return (lines[-1] if lines else "").removeprefix("ERROR: ")[:200]


def docker_engine(timeout_s: float = 15.0, docker: str | None = None) -> DockerInfo:
    """Whether `docker info` reaches an engine; never raises."""
    cli = docker or shutil.which("docker")
    if not cli:
        return DockerInfo(error="docker is not installed (no `docker` on PATH)")
    info = DockerInfo(cli=cli)
    try:
        proc = subprocess.run(
            [cli, "info", "--format", "{{json .ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        info.error = f"`docker info` did not answer in {timeout_s:.0f} s"
        return info
    except OSError as exc:
        info.error = f"cannot run {cli}: {exc.strerror or exc}"
        return info
    version = proc.stdout.strip().strip('"') if proc.returncode == 0 else ""
    if version and version != "null":
        info.server_version = version
    else:
        info.error = f"no Docker engine: {_one_line(proc.stderr or proc.stdout) or '`docker info` failed'}"
    return info


def find_model_plugin(home: Path | None = None, dirs: tuple[str, ...] = PLUGIN_DIRS) -> Path | None:
    home = home or Path.home()
    candidates = [home / ".docker" / "cli-plugins" / "docker-model", *(Path(d) / "docker-model" for d in dirs)]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def model_plugin_version(plugin: Path, timeout_s: float = 10.0) -> str | None:
    """A CLI plugin describes itself: `docker-model docker-cli-plugin-metadata` prints JSON."""
    try:
        proc = subprocess.run(
            [str(plugin), "docker-cli-plugin-metadata"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        version = json.loads(proc.stdout).get("Version")
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return None
    return str(version) if version else None


def docker_status(timeout_s: float = 15.0) -> DockerInfo:
    """Engine plus the Docker Model Runner plugin."""
    info = docker_engine(timeout_s)
    plugin = find_model_plugin()
    if plugin:
        info.model_plugin = str(plugin)
        info.model_plugin_version = model_plugin_version(plugin)
    return info
