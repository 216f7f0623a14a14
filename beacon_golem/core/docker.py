"""Is there a Docker engine here? One answer for the probe (on a node) and the image builder (on a laptop)."""

from __future__ import annotations

import shutil
import subprocess

from beacon_golem.core.probe import DockerInfo


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
