"""Start a node: the inference runtime as a child process and the shim in front of it.

This is the node start logic for every place a node runs: `beacon node up` on a laptop,
the local fleet, and the VM images' start script (which calls `beacon node up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from beacon_golem.core.config import ShimLimits
from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.lifecycle import StartStop
from beacon_golem.core.log import get_logger
from beacon_golem.core.net import free_port
from beacon_golem.node.runtimes import LaunchSpec, adapter_class
from beacon_golem.node.shim.app import SHIM, ShimConfig, create_app
from beacon_golem.node.tiny_model import ensure_tiny_model

log = get_logger(__name__)


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the node process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG




class NodeConfig(BaseModel):
    runtime: str = "llamacpp"
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    runtime_port: int | None = None
    data_dir: Path
    parallel: int = Field(default=4, ge=1, le=1024)
    token: SecretStr | None = None
    #: Use a runtime that is already running at this URL instead of launching one.
    upstream: str | None = None
    ready_timeout_s: float = 120.0
    region: str | None = None
    extra_info: dict[str, Any] = Field(default_factory=dict)
    limits: ShimLimits = Field(default_factory=ShimLimits)
    #: Extra arguments for the runtime's command line (e.g. llama-server's --threads).
    runtime_args: list[str] = Field(default_factory=list)


class LocalNode(StartStop):
    """`async with LocalNode(config) as node:` runs a node until the block ends."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.runtime_url = ""
        self.model_path: str | None = None
        self._log_file: Any = None

    @property
    def log_path(self) -> Path:
        return self.config.data_dir / "logs" / "runtime.log"

    def resolve_model(self) -> str:
        cfg = self.config
        if cfg.model:
            if cfg.runtime == "llamacpp" and not Path(cfg.model).is_file():
                raise UsageError(f"model file {cfg.model} does not exist")
            return cfg.model
        if cfg.runtime == "llamacpp":
            return str(ensure_tiny_model(cfg.data_dir))
        raise UsageError(f"runtime {cfg.runtime} needs --model (a model name the runtime holds)")

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        adapter = adapter_class(cfg.runtime)
        launch_settings: dict[str, Any] = {"parallel": cfg.parallel}
        if cfg.upstream:
            self.runtime_url = cfg.upstream.rstrip("/")
        else:
            self.model_path = self.resolve_model()
            port = cfg.runtime_port or free_port()
            spec = adapter.launch(self.model_path, host="127.0.0.1", port=port, parallel=cfg.parallel)
            spec = LaunchSpec(argv=[*spec.argv, *cfg.runtime_args], env=spec.env)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
            log.info("runtime_starting", runtime=cfg.runtime, argv=spec.argv[0], port=port)
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    env={**os.environ, **spec.env},
                    stdout=self._log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            except FileNotFoundError as exc:
                raise BeaconError(f"cannot start {cfg.runtime}: {spec.argv[0]} not found") from exc
            self.runtime_url = f"http://127.0.0.1:{port}"
            launch_settings.update({f"env_{k.lower()}": v for k, v in spec.env.items()})
        shim_config = ShimConfig(
            runtime=cfg.runtime,
            upstream=self.runtime_url,
            host=cfg.host,
            port=cfg.port,
            data_dir=cfg.data_dir,
            token=cfg.token,
            limits=cfg.limits,
            launch_settings=launch_settings,
            extra_info={**cfg.extra_info, **({"region": cfg.region} if cfg.region else {})},
        )
        app = create_app(shim_config)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else cfg.port
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
        self.url = f"http://{host}:{port}"
        await self.wait_ready(app[SHIM])

    async def wait_ready(self, shim: Any) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        reason = "not started"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise BeaconError(
                    f"{self.config.runtime} exited with code {self.process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            status = await shim.status()
            if status.ready:
                log.info("node_ready", url=self.url, runtime=self.config.runtime, models=status.models)
                return
            reason = status.reason or reason
            await asyncio.sleep(0.2)
        raise BeaconError(f"node not ready after {self.config.ready_timeout_s:.0f} s: {reason}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill_runtime(self) -> None:
        """SIGKILL the runtime at once, as a crash would."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def wait_exit(self) -> int | None:
        """Wait until the runtime process exits (forever when none was launched)."""
        if self.process is None:
            await asyncio.Event().wait()
            return None
        return await self.process.wait()


async def serve_node(config: NodeConfig, on_ready: Any = None) -> None:
    """Run a node until SIGINT or SIGTERM (or its runtime dies), then stop both parts cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with LocalNode(config) as node:
            if on_ready:
                on_ready(node)
            stopper = asyncio.create_task(stop.wait())
            died = asyncio.create_task(node.wait_exit())
            done, pending = await asyncio.wait({stopper, died}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if died in done:
                raise BeaconError(
                    f"{config.runtime} exited with code {died.result()}; last lines of its log:\n{node.log_tail()}"
                )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
