"""The service each rented VM runs: deploy with the VPN, start the node, wait for /health.

Why `Service` plus a per-instance `VpnTunnel` (tunnel.py) and not `HttpProxyService`: yapapi's
HTTP proxy reads a response only up to its Content-Length (a streamed /v1/chat/completions body is
cut after the headers), gives up after 30 s without data by default, and `LocalHttpProxy` spreads
requests round robin over the whole cluster, while the dispatcher must reach one node (a job's
progress lives on the node that runs it). A `VpnTunnel` per instance carries raw TCP to
that instance's port 8080, so the shim's HTTP works unchanged, streaming included.

The VM does not run the image's ENTRYPOINT: `start()` runs the image's start script in the
background, its log on the VOLUME. Settings reach it through an env file written from positional
arguments (never spliced into a shell command) and shell-quoted, so a model name such as
`x; rm -rf /` stays a string.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from yapapi.rest.activity import BatchError, BatchTimeoutError, CommandExecutionError
from yapapi.script import Script
from yapapi.services import Service

from beacon_golem.core.errors import BeaconError
from beacon_golem.core.log import get_logger
from beacon_golem.requestor.fleets.golem.config import ENV_NAME, GolemFleetConfig

log = get_logger(__name__)

#: Write the env file: $1 is the data dir, the remaining arguments are its lines.
WRITE_ENV = 'd="$1"; shift; mkdir -p "$d/logs" "$d/beacon" && printf "%s\\n" "$@" > "$d/beacon/node.env"'
#: Start the node in the background with the env file exported, its pid kept: $1 data dir, $2 start script.
START_NODE = (
    'd="$1"; s="$2"; set -a; . "$d/beacon/node.env"; set +a; "$s" > "$d/logs/node.log" 2>&1 & '
    'echo $! > "$d/beacon/node.pid"'
)
#: Ask the shim inside the VM for /health: $1 is its port, $2 the data dir. Fails on a 503 or no
#: answer; exits NODE_SWITCHING, saying for how long, when the 503 is a runtime switch under way
#: (the shim's `switching_s`); exits NODE_EXITED when the start script's process is gone (no point
#: waiting longer). curl where the image has it (the body read with the shell's own expansions),
#: else the Python every node image has.
NODE_EXITED = 3
NODE_SWITCHING = 4
HEALTH_PY = (
    "import json, sys, urllib.request as r, urllib.error as e\n"
    "try:\n"
    "    r.urlopen(sys.argv[1], timeout=10)\n"
    "    sys.exit(0)\n"
    "except e.HTTPError as h:\n"
    "    try:\n"
    '        s = json.loads(h.read()).get("switching_s")\n'
    "    except Exception:\n"
    "        s = None\n"
    "    if isinstance(s, (int, float)):\n"
    '        print(f"node switching runtime for {s} s", file=sys.stderr)\n'
    f"        sys.exit({NODE_SWITCHING})\n"
    "except Exception:\n"
    "    pass\n"
    "sys.exit(1)\n"
)
HEALTH = (
    'u="http://127.0.0.1:$1/health"; if command -v curl >/dev/null 2>&1; then '
    'r=$(curl -s -m 10 -w " %{http_code}" "$u"); [ "${r##* }" = 200 ] && exit 0; '
    """s=""; case "$r" in *'"switching_s":'[0-9]*) s="${r#*\\"switching_s\\":}"; s="${s%%[!0-9.]*}";; esac; """
    f'if [ -n "$s" ]; then echo "node switching runtime for $s s" >&2; exit {NODE_SWITCHING}; fi; '
    f"else python3 -c '{HEALTH_PY}' \"$u\"; c=$?; [ $c = 0 ] && exit 0; [ $c = {NODE_SWITCHING} ] && exit $c; fi; "
    'p=$(cat "$2/beacon/node.pid" 2>/dev/null); '
    f'if [ -n "$p" ] && ! kill -0 "$p" 2>/dev/null; then echo "node process $p exited" >&2; exit {NODE_EXITED}; fi; exit 1'
)
#: The first wait between /health probes while a node starts (doubling up to `health_poll_s`).
FIRST_START_POLL_S = 1.0
#: What HEALTH prints when the node's process is gone (never in the script's own text: `$p`).
NODE_EXITED_LINE = re.compile(r"node process \d+ exited")
#: What HEALTH prints while the node switches runtime: the seconds the shim says it has lasted.
NODE_SWITCHING_LINE = re.compile(r"node switching runtime for (\d+(?:\.\d+)?) s")
#: The end of one log file on stdout (fetched with `run`, so no gftp is needed): $1 the file.
LOG_FETCH = 'tail -c 262144 "$1" 2>/dev/null; true'
#: The end of the node logs, for the reason a start failed: $1 is the data dir.
LOG_TAIL = 'cd "$1/logs" 2>/dev/null && tail -n 20 node.log runtime.log 2>/dev/null; true'
#: Logs saved at shutdown: ours (the start script's output) and the runtime's own (the images'
#: start-node.sh writes it, see vm_images/common/start-node.sh).
LOG_FILES = ("node.log", "runtime.log")


def switching_for(exc: BatchError) -> float | None:
    """The seconds a runtime switch has lasted, when a failed HEALTH was a switch under way."""
    found = NODE_SWITCHING_LINE.search(getattr(exc, "stderr", None) or "")
    return float(found.group(1)) if found else None


def batch_problem(exc: BatchError, timeout_s: float) -> str:
    """A failed exe-script in one line: a timeout says so (yapapi's has no text), a failed command
    says what the provider answered, not the whole command (a deploy's carries the VPN's config)."""
    if isinstance(exc, BatchTimeoutError):
        return f"no result within {timeout_s:g} s"
    if isinstance(exc, CommandExecutionError):
        name = exc.command.split(" ", 1)[0].strip("{}'\"") or "command"
        detail = "; ".join(p for p in (exc.message, exc.stderr) if p) or "no message"
        return f"{name}: {' '.join(detail.split())}"
    return str(exc) or type(exc).__name__


class NodeStartFailed(BeaconError):
    """The node did not answer /health in time, or the provider was refused."""


class NodeUnhealthy(BeaconError):
    """A running node stopped answering /health inside its VM."""


class NodeSpec(BaseModel):
    """What one VM runs and how long each step may take; the same for every instance of a run."""

    #: BEACON_RUNTIME for start-node.sh; None: the image's own (the BEACON_RUNTIME it was built with).
    runtime: str | None
    model: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    shim_port: int = 8080
    shim_token: SecretStr | None = None
    data_dir: str = "/data"
    start_script: str = "/opt/beacon/start-node.sh"
    deploy_timeout_s: float = 3600
    start_timeout_s: float = 1200
    health_poll_s: float = 5.0
    health_interval_s: float = 30.0
    health_failures: int = 3
    #: How long a runtime switch (POST /runtime) may keep /health at 503 before the node is lost.
    switch_timeout_s: float = 1200
    log_dir: Path | None = None

    @classmethod
    def from_config(cls, config: GolemFleetConfig) -> NodeSpec:
        return cls(
            runtime=config.runtime,
            model=config.model,
            env=config.node_env,
            shim_port=config.shim_port,
            shim_token=config.shim_token,
            data_dir=config.data_dir,
            start_script=config.start_script,
            deploy_timeout_s=config.deploy_timeout_s,
            start_timeout_s=config.start_timeout_s,
            health_poll_s=config.start_poll_s,
            health_interval_s=config.health_interval_s,
            health_failures=config.health_failures,
            switch_timeout_s=config.switch_timeout_s,
            log_dir=config.log_dir,
        )

    def environment(self) -> dict[str, str]:
        """The variables start-node.sh sees (BEACON_* plus the run's extra env)."""
        env = {"BEACON_RUNTIME": self.runtime} if self.runtime else {}
        env.update({"BEACON_PORT": str(self.shim_port), "BEACON_HOST": "0.0.0.0", "BEACON_DATA_DIR": self.data_dir})
        if self.model:
            env["BEACON_MODEL"] = self.model
        if self.shim_token is not None:
            env["BEACON_SHIM_TOKEN"] = self.shim_token.get_secret_value()
        env.update(self.env)
        return env

    def env_lines(self) -> list[str]:
        """`NAME='value'` lines, safe to source with `.` whatever the values hold."""
        lines = []
        for name, value in self.environment().items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            lines.append(f"{name}={shlex.quote(value)}")
        return lines

    def log_file(self, name: str = "node.log") -> str:
        return f"{self.data_dir.rstrip('/')}/logs/{name}"


Notify = Callable[["BeaconNodeService", str], None]


class BeaconNodeService(Service):
    """One node: runtime + shim in a VM, reached over the VPN."""

    def __init__(
        self,
        spec: NodeSpec,
        admit: Callable[[str], bool] | None = None,
        notify: Notify | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._admit = admit
        self._notify = notify
        #: deploying, launching, loading, ready, stopping: where the start got to.
        self.phase = "pending"
        #: Why the node failed (start timeout, unhealthy, refused), for the fleet's lost event.
        self.failure: str | None = None
        #: Node logs downloaded into the log dir.
        self.log_paths: list[Path] = []

    # ---- yapapi hooks ------------------------------------------------------------------------
    @property
    def restart_condition(self) -> bool:
        """Never restart in place: the fleet blacklists the provider and rents a replacement."""
        return False

    async def start(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        assert self._ctx is not None
        spec = self.spec
        provider = self._ctx.provider_id
        if self._admit is not None and not self._admit(provider):
            self.failure = f"provider {provider} is blacklisted for this run"
            raise NodeStartFailed(self.failure)

        self._phase("deploying", "deploying the image")
        script = self._ctx.new_script(timeout=timedelta(seconds=spec.deploy_timeout_s))
        script.deploy(**self.get_deploy_args())
        script.start()
        try:
            yield script
        except BatchError as exc:  # includes the deploy timeout (a large image still downloading)
            self.failure = f"deploy failed: {batch_problem(exc, spec.deploy_timeout_s)}"
            raise NodeStartFailed(self.failure) from exc

        self._phase("launching", f"starting {spec.start_script}")
        script = self._ctx.new_script(timeout=timedelta(seconds=120))
        script.run("/bin/sh", "-c", WRITE_ENV, "sh", spec.data_dir, *spec.env_lines())
        script.run("/bin/sh", "-c", START_NODE, "sh", spec.data_dir, spec.start_script)
        try:
            yield script
        except BatchError as exc:
            self.failure = f"cannot launch {spec.start_script}: {batch_problem(exc, 120)}"
            raise NodeStartFailed(self.failure) from exc

        self._phase("loading", "waiting for /health")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.start_timeout_s
        # A small model answers within seconds, a large one after minutes: the first probes come
        # soon, then they back off to `health_poll_s` (each probe is one exe-script on the provider).
        wait = min(FIRST_START_POLL_S, spec.health_poll_s)
        last_error = "no answer"
        while True:
            script = self._ctx.new_script(timeout=timedelta(seconds=30))
            probe = script.run("/bin/sh", "-c", HEALTH, "sh", str(spec.shim_port), spec.data_dir)
            exited = False
            try:
                yield script
                await probe
                break
            except BatchError as exc:
                last_error = batch_problem(exc, 30)
                exited = NODE_EXITED_LINE.search(getattr(exc, "stderr", None) or "") is not None
            if exited or loop.time() >= deadline:
                tail = ""
                script = self._ctx.new_script(timeout=timedelta(seconds=60))
                tail_result = script.run("/bin/sh", "-c", LOG_TAIL, "sh", spec.data_dir)
                try:
                    yield script
                    lines = ((await tail_result).stdout or "").strip().splitlines()
                    tail = " | ".join(line.strip() for line in lines if line.strip())
                except BatchError as exc:
                    log.warning("golem.node_log_unread", service=self.id, error=str(exc))
                for fetch, result, target in self._log_fetches():
                    try:
                        yield fetch
                        self._keep_log(target, await result)
                    except (BatchError, OSError) as exc:
                        log.warning("golem.node_log_not_saved", service=self.id, file=target.name, error=str(exc))
                self.failure = (
                    f"{spec.start_script} exited before /health was OK"
                    if exited
                    else f"/health not OK after {spec.start_timeout_s:g} s ({last_error})"
                )
                if tail:
                    self.failure += f"; node log ends: {tail[-400:]}"
                raise NodeStartFailed(self.failure)
            await asyncio.sleep(wait)
            wait = min(wait * 2, spec.health_poll_s)
        self._phase("ready", "/health OK")

    async def run(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        assert self._ctx is not None
        spec = self.spec
        failures = 0
        while True:
            await asyncio.sleep(spec.health_interval_s)
            script = self._ctx.new_script(timeout=timedelta(seconds=30))
            probe = script.run("/bin/sh", "-c", HEALTH, "sh", str(spec.shim_port), spec.data_dir)
            try:
                yield script
                await probe
                failures = 0
            except BatchError as exc:
                # A runtime switch keeps /health at 503 while the runtime before stops and the next
                # loads its model: not a failure, up to the switch timeout.
                switching = switching_for(exc)
                if switching is not None and switching <= spec.switch_timeout_s:
                    failures = 0
                    log.info("golem.node_switching", service=self.id, switching_s=switching)
                    continue
                if switching is not None:
                    self.failure = (
                        f"the runtime switch has lasted {switching:g} s inside the VM, over the "
                        f"{spec.switch_timeout_s:g} s switch timeout"
                    )
                    raise NodeUnhealthy(self.failure) from exc
                failures += 1
                log.warning("golem.node_health_failed", service=self.id, failures=failures, error=str(exc))
                if failures >= spec.health_failures:
                    self.failure = f"/health failed {failures} times in a row inside the VM"
                    raise NodeUnhealthy(self.failure) from exc

    async def shutdown(self) -> AsyncGenerator[Script, Awaitable[list[Any]]]:
        assert self._ctx is not None
        self._phase("stopping", "saving the node log and stopping")
        for fetch, result, target in self._log_fetches():
            try:
                yield fetch
                self._keep_log(target, await result)
            except (BatchError, OSError) as exc:
                log.warning("golem.node_log_not_saved", service=self.id, file=target.name, error=str(exc))
        script = self._ctx.new_script(timeout=timedelta(seconds=60))
        script.terminate()
        yield script

    # ---- helpers -----------------------------------------------------------------------------------
    def label(self) -> str:
        provider = (self.provider_name or "provider") + "-" + (self.provider_id or "unknown")[:10]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{provider}-{self.id[:8]}")

    def _log_fetches(self) -> list[tuple[Script, Awaitable[Any], Path]]:
        """One script per node log reading its end with `run` (stdout), with where to keep it: no
        gftp involved, so it works where yapapi's engine has only beacon-golem's gftp stand-in."""
        assert self._ctx is not None
        if self.spec.log_dir is None:
            return []
        out = []
        for name in LOG_FILES:
            script = self._ctx.new_script(timeout=timedelta(seconds=60))
            result = script.run("/bin/sh", "-c", LOG_FETCH, "sh", self.spec.log_file(name))
            out.append((script, result, self.spec.log_dir / f"{self.label()}-{name}"))
        return out

    def _keep_log(self, target: Path, result: Any) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.stdout or "", encoding="utf-8", errors="replace")
        self.log_paths.append(target)

    def _phase(self, phase: str, message: str) -> None:
        self.phase = phase
        log.info("golem.node_phase", service=self.id, provider_id=self.provider_id, phase=phase)
        if self._notify is not None:
            self._notify(self, message)
