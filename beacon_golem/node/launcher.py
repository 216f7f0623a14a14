"""Start a node: the inference runtime as a child process and the shim in front of it.

This is the node start logic for every place a node runs: `beacon node up` on a laptop,
the local fleet, and the VM images' start script (which calls `beacon node up`).

A node that launched its runtime can replace it while it runs (`POST /runtime`, `switch`): the
runtime is stopped (its memory freed), the new one launched with its own settings, and the shim
fronts it once it serves. Every launch is timed (`StartupTimes`, in `/info`): to the runtime's
first answer, to its model loaded, to the shim's /health answering 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from beacon_golem.api.bodies import RuntimeSwitch
from beacon_golem.api.server import BoundedAppRunner
from beacon_golem.core.config import ShimLimits
from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.lifecycle import StartStop
from beacon_golem.core.log import get_logger
from beacon_golem.core.net import free_port
from beacon_golem.core.node import StartupTimes
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes import LaunchSpec, adapter_class
from beacon_golem.node.shim.app import SHIM, Shim, ShimConfig, create_app
from beacon_golem.node.tiny_model import ensure_tiny_model

log = get_logger(__name__)

#: The variable that gives a runtime its API key, for the runtimes that take one.
RUNTIME_API_KEY_ENV = {"llamacpp": "LLAMA_API_KEY", "vllm": "VLLM_API_KEY"}


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
    #: Extra arguments for the command line of `runtime` (e.g. llama-server's --threads); not
    #: given to another runtime the node switches to.
    runtime_args: list[str] = Field(default_factory=list)
    #: The runtime's own settings (parallel slots, context, vLLM's quantization, ...).
    settings: RuntimeSettings = Field(default_factory=RuntimeSettings)
    #: The runtimes the node's image holds (BEACON_IMAGE_RUNTIMES); a switch to another is refused.
    #: Empty: the image does not say.
    runtimes: list[str] = Field(default_factory=list)


class RuntimeStartFailed(BeaconError):
    """The runtime did not start or did not load its model."""

    http_status = 502


@dataclass
class Launched:
    """A runtime process just started, and when."""

    runtime: str
    url: str
    launch_settings: dict[str, Any]
    started: float
    launched_at: datetime


def drop_page_cache() -> str:
    """Empty the kernel's page cache (root only), so the next runtime reads its weights from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"kept: {exc.strerror or exc}"
    return "dropped"


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
        self.shim: Shim | None = None
        #: The key every runtime this node launches requires where it takes one (llama-server's
        #: LLAMA_API_KEY, vLLM's VLLM_API_KEY): only the shim, and whoever holds this object, has it.
        self.runtime_api_key = SecretStr(secrets.token_urlsafe(32))
        #: The runtime running now (changes with a switch).
        self.runtime = config.runtime
        self._switching = asyncio.Lock()

    @property
    def log_path(self) -> Path:
        return self.config.data_dir / "logs" / "runtime.log"

    def resolve_model(self, runtime: str | None = None, model: str | None = None) -> str:
        """The model `runtime` loads: `model`, else the node's own (llama.cpp: the tiny model by default)."""
        cfg = self.config
        runtime = runtime or cfg.runtime
        if model is None and runtime == cfg.runtime:
            model = cfg.model
        if model:
            if runtime == "llamacpp" and not Path(model).is_file():
                raise UsageError(f"model file {model} does not exist")
            return model
        if runtime == "llamacpp":
            return str(ensure_tiny_model(cfg.data_dir))
        raise UsageError(f"runtime {runtime} needs --model (a model name the runtime holds)")

    async def _launch(self, runtime: str, model: str, settings: RuntimeSettings) -> Launched:
        """Start `runtime` serving `model` as a child process (its output appended to logs/runtime.log)."""
        cfg = self.config
        adapter = adapter_class(runtime)
        port = cfg.runtime_port or free_port()
        spec = adapter.launch(model, host="127.0.0.1", port=port, parallel=cfg.parallel, settings=settings)
        if runtime == cfg.runtime:
            spec = LaunchSpec(argv=[*spec.argv, *cfg.runtime_args], env=spec.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        log.info("runtime_starting", runtime=runtime, argv=spec.argv[0], port=port, settings=settings.given())
        started, launched_at = time.perf_counter(), datetime.now(UTC)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *spec.argv,
                env={**os.environ, **spec.env, **self._runtime_key_env(runtime)},
                stdout=self._log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except FileNotFoundError as exc:
            raise RuntimeStartFailed(f"cannot start {runtime}: {spec.argv[0]} not found") from exc
        self.runtime, self.model_path = runtime, model
        self.runtime_url = f"http://127.0.0.1:{port}"
        launch_settings: dict[str, Any] = {"parallel": settings.parallel or cfg.parallel, "settings": settings.given()}
        launch_settings.update({f"env_{k.lower()}": v for k, v in spec.env.items()})
        return Launched(runtime, self.runtime_url, launch_settings, started, launched_at)

    def _runtime_key_env(self, runtime: str) -> dict[str, str]:
        """The runtime's API key (and, for llama-server, CORS for localhost only), in its environment:
        not on its command line, where every user of the machine could read it."""
        name = RUNTIME_API_KEY_ENV.get(runtime)
        if name is None:
            return {}
        env = {name: self.runtime_api_key.get_secret_value()}
        if runtime == "llamacpp":
            env["LLAMA_ARG_CORS_ORIGINS"] = "localhost"
        return env

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        adapter_class(cfg.runtime)
        launched: Launched | None = None
        launch_settings: dict[str, Any] = {"parallel": cfg.settings.parallel or cfg.parallel}
        if cfg.upstream:
            self.runtime_url = cfg.upstream.rstrip("/")
        else:
            launched = await self._launch(cfg.runtime, self.resolve_model(), cfg.settings)
            launch_settings = launched.launch_settings
        shim_config = ShimConfig(
            runtime=cfg.runtime,
            upstream=self.runtime_url,
            host=cfg.host,
            port=cfg.port,
            data_dir=cfg.data_dir,
            token=cfg.token,
            limits=cfg.limits,
            launch_settings=launch_settings,
            extra_info={
                **cfg.extra_info,
                **({"region": cfg.region} if cfg.region else {}),
                **({"image_runtimes": cfg.runtimes} if cfg.runtimes else {}),
            },
            runtime_api_key=None if cfg.upstream else self.runtime_api_key,
            runtimes=cfg.runtimes,
        )
        app = create_app(shim_config)
        # Header read timeout, and a client that disconnects cancels its generation (api/server.py).
        self.runner = BoundedAppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else cfg.port
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
        self.url = f"http://{host}:{port}"
        self.shim = app[SHIM]
        if launched is not None:
            self.shim.switcher = self.switch
        self.shim.startup = await self.wait_ready(self.shim, launched)

    async def wait_ready(self, shim: Shim, launched: Launched | None = None, timeout_s: float | None = None) -> StartupTimes:
        """Poll until the runtime serves its model and the shim's /health says so; the times it took."""
        timeout_s = timeout_s or self.config.ready_timeout_s
        runtime = launched.runtime if launched is not None else self.runtime
        deadline = time.monotonic() + timeout_s
        reason = "not started"
        answering: float | None = None
        ready: float | None = None
        times = StartupTimes(runtime=runtime, launched_at=launched.launched_at if launched else datetime.now(UTC),
                             launched=launched is not None)  # fmt: skip

        def since() -> float:
            return round(time.perf_counter() - launched.started, 4) if launched is not None else 0.0

        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeStartFailed(
                        f"{runtime} exited with code {self.process.returncode} while starting; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                if ready is None:
                    status = await shim.status()
                    if status.reachable and answering is None:
                        answering = since()
                    if status.ready:
                        ready = since()
                        answering = answering if answering is not None else ready
                    else:
                        reason = status.reason or reason
                if ready is not None:
                    try:
                        async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                            if resp.status == 200:
                                times.answering_s, times.ready_s, times.health_s = answering, ready, since()
                                log.info("node_ready", url=self.url, runtime=runtime, models=status.models,
                                         startup=times.model_dump(mode="json", exclude={"launched_at"}))  # fmt: skip
                                if launched is None:  # not launched here: no start times to give
                                    times.answering_s = times.ready_s = times.health_s = None
                                return times
                            reason = f"the shim's /health answered {resp.status}"
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        reason = f"the shim's /health did not answer: {exc}"
                await asyncio.sleep(0.1)
        raise RuntimeStartFailed(f"node not ready after {timeout_s:.0f} s: {reason}")

    async def switch(self, request: RuntimeSwitch) -> StartupTimes:
        """Stop the runtime (freeing its memory), launch `request.runtime`, wait until it serves."""
        shim = self.shim
        if shim is None:
            raise BeaconError("the node is not started")
        async with self._switching:
            model = self.resolve_model(request.runtime, request.model)  # a bad model: refused, nothing stopped
            shim.switch_began = time.monotonic()  # /health says `switching_s` until the switch ends
            try:
                return await self._switch(shim, request, model)
            finally:
                shim.switch_began = None

    async def _switch(self, shim: Shim, request: RuntimeSwitch, model: str) -> StartupTimes:
        """The switch itself, under the lock: stop, (drop the page cache), launch, wait until it serves."""
        shim.not_serving = f"switching runtime to {request.runtime}"
        begun = time.perf_counter()
        await self._stop_runtime()
        stopped = round(time.perf_counter() - begun, 4)
        page = drop_page_cache() if request.drop_page_cache else None
        try:
            launched = await self._launch(request.runtime, model, request.settings)
        except BeaconError as exc:
            shim.not_serving = f"no runtime: starting {request.runtime} failed: {exc}"
            raise
        shim.use_runtime(request.runtime, launched.url, launched.launch_settings)
        shim.not_serving = None
        try:
            times = await self.wait_ready(shim, launched, request.ready_timeout_s)
        except BeaconError as exc:
            shim.not_serving = f"no runtime: {request.runtime} did not start: {exc}"
            await self._stop_runtime()
            raise
        times.stopped_previous_s, times.page_cache = stopped, page
        shim.startup = times
        return times

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
        await self._stop_runtime()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def _stop_runtime(self) -> None:
        """SIGTERM the runtime's process group, SIGKILL after 10 s; wait until it is gone."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        elif self.process is not None:
            await self.process.wait()
        self.process = None

    async def wait_exit(self) -> int | None:
        """Wait until the runtime process exits on its own (forever when none was launched).

        A runtime stopped by a switch does not count, nor a node left without one by a failed
        switch: it keeps serving /health (503) until the next switch."""
        while True:
            process = self.process
            if process is None:
                await asyncio.sleep(0.5)
                continue
            code = await process.wait()
            if process is self.process and not self._switching.locked():
                return code
            # A switch stopped it and has not replaced it yet: wait() of an ended process returns at
            # once without yielding, so look again later (else this loop starves the switch itself).
            await asyncio.sleep(0.1)


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
