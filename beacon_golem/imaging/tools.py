"""The outside tools `beacon image` needs, found or refused in one clear line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from beacon_golem.core.docker import docker_engine
from beacon_golem.core.errors import BeaconError


def require_docker() -> str:
    """The docker CLI's path, when it reaches an engine; else BeaconError in one line."""
    info = docker_engine()
    if not info.engine or not info.cli:
        reason = (info.error or "no Docker engine").replace("\n", " ")
        raise BeaconError(f"{reason} (beacon image needs a running Docker engine to build images)")
    return info.cli


def require_gvmkit() -> str:
    path = shutil.which("gvmkit-build")
    if not path:
        raise BeaconError("gvmkit-build not found: install it with `pip install gvmkit-build` (it converts Docker images to .gvmi)")
    return path


def run_visible(argv: Sequence[str], what: str) -> None:
    """Run a long command with its output on this terminal; a failure becomes one line."""
    try:
        code = subprocess.call(list(argv), stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise BeaconError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    if code != 0:
        raise BeaconError(f"{what} failed (exit {code}); its output is above")
