"""Is there a Docker engine, and is the Docker Model Runner CLI plugin installed?

Used by `beacon probe` and by `beacon image build` (which needs an engine). Synchronous and
bounded by timeouts: `docker info` answers at once when the daemon is down.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from beacon_golem.core.docker import docker_engine
from beacon_golem.core.probe import DockerInfo

#: Where the Docker CLI looks for plugins (docs.docker.com/engine/extend/cli_plugins/), after
#: ~/.docker/cli-plugins. docker-model-plugin packages install `docker-model` into one of them.
PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)








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
