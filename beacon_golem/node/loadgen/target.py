"""What a benchmark talks to: a node's shim, or a runtime straight, resolved to an adapter.

Through a shim the load goes to the shim's OpenAI pass-through `/v1/chat/completions`
(streamed), so the requestor measures what a client of the node sees. Straight at a runtime
(on the node next to it, or a runtime on this machine) the runtime's own adapter is used.
Either way each request is one adapter `generate()` call, timed the same way.

The shim's `/info` names the runtime and its upstream URL; where that URL answers from here
(a local node, or the bench running on the node) its `/metrics` and `/tokenize` are used too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.node.runtimes import RuntimeAdapter, adapter_class
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeStatus
from beacon_golem.node.runtimes.openai_compat import OpenAIChatAdapter

Via = Literal["shim", "runtime"]


class Target(BaseModel):
    """Where to send the load. `runtime` and `model` are found out when left empty."""

    model_config = ConfigDict(extra="forbid")

    url: str
    runtime: str | None = None
    model: str | None = None
    token: SecretStr | None = None
    #: The key of the runtime behind a shim, for its own /tokenize, /metrics (a node launches its
    #: runtime with one: docs/shim.md); without it those are not used from here.
    runtime_token: SecretStr | None = None
    #: The runtime's Prometheus endpoint; default: found from the target.
    metrics_url: str | None = None
    #: Base URL of a runtime whose /tokenize counts prompt tokens; default: found from the target.
    tokenizer_url: str | None = None
    #: How the runtime was launched, when the caller knows (a node's perf job: its own launch settings,
    #: so that e.g. OLLAMA_NUM_PARALLEL is reported as set rather than assumed at Ollama's default).
    launch_settings: dict[str, Any] = {}


class ShimPassThroughAdapter(OpenAIChatAdapter):
    """A node's shim `/v1/chat/completions`, speaking for the runtime behind it.

    Subclassed per runtime by `shim_adapter_class` so that `name`, `supports_ignore_eos`
    and the runtime's `timings` parsing match the runtime the shim fronts.
    """

    name: ClassVar[str] = "shim"
    openai_base: ClassVar[str] = "/v1"

    @classmethod
    def launch(
        cls, model: str, *, host: str = "127.0.0.1", port: int | None = None, parallel: int = 4, settings: Any = None
    ) -> LaunchSpec:
        raise BeaconError("a shim pass-through is not launched: start a node instead")

    async def status(self) -> RuntimeStatus:
        data = await self.get_json("/health")
        return RuntimeStatus(reachable=True, ready=data.get("status") == "ok", models=data.get("models") or [])


def shim_adapter_class(runtime: str) -> type[ShimPassThroughAdapter]:
    base = adapter_class(runtime)
    attrs: dict[str, Any] = {"name": runtime, "supports_ignore_eos": base.supports_ignore_eos}
    if issubclass(base, OpenAIChatAdapter):
        attrs["server_timings"] = base.server_timings
    return type(f"ShimPassThrough[{runtime}]", (ShimPassThroughAdapter,), attrs)


@dataclass
class ResolvedTarget:
    url: str
    via: Via
    runtime: str
    model: str
    adapter: RuntimeAdapter
    #: The runtime's own base URL when it answers from here (direct, or a shim's loopback upstream).
    runtime_url: str | None
    node_info: dict[str, Any] | None
    server_settings: dict[str, Any] = field(default_factory=dict)
    runtime_version: str | None = None
    models: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.adapter.openai_url("chat/completions") if isinstance(self.adapter, OpenAIChatAdapter) else self.url


async def _get_json(session: aiohttp.ClientSession, url: str, timeout_s: float = 5.0) -> Any | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return None
            return await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


async def detect_runtime(session: aiohttp.ClientSession, url: str) -> str | None:
    """Which runtime answers at `url`, from the endpoints only it has."""
    props = await _get_json(session, url + "/props")
    if isinstance(props, dict) and "total_slots" in props:
        return "llamacpp"
    if isinstance(await _get_json(session, url + "/api/version"), dict):
        return "ollama"
    if await _get_json(session, url + "/engines/status") is not None:
        return "dmr"
    version = await _get_json(session, url + "/version")
    if isinstance(version, dict) and "version" in version:
        return "vllm"
    return None


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


async def resolve_target(session: aiohttp.ClientSession, target: Target) -> ResolvedTarget:
    """Find out whether `target.url` is a shim or a runtime, which runtime, and which model."""
    url = target.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {target.url}: give an http:// or https:// URL")
    info = await _get_json(session, url + "/info", timeout_s=30)
    if isinstance(info, dict) and "shim_version" in info and isinstance(info.get("runtime"), dict):
        rt = info["runtime"]
        runtime = target.runtime or rt["name"]
        if target.runtime and target.runtime != rt["name"]:
            raise UsageError(f"--runtime {target.runtime}, but the node at {url} runs {rt['name']}")
        adapter: RuntimeAdapter = shim_adapter_class(runtime)(url, session)
        upstream = (rt.get("upstream") or "").rstrip("/") or None
        runtime_url = upstream if upstream and await _answers(session, upstream) else None
        models = list(rt.get("models") or [])
        model = target.model or (models[0] if models else None)
        if model is None:
            raise BeaconError(f"the node at {url} reports no model: is its runtime ready?")
        return ResolvedTarget(
            url=url,
            via="shim",
            runtime=runtime,
            model=model,
            adapter=adapter,
            runtime_url=runtime_url,
            node_info=info,
            server_settings=dict(rt.get("settings") or {}),
            runtime_version=rt.get("version"),
            models=models,
        )
    runtime = target.runtime or await detect_runtime(session, url)
    if runtime is None:
        raise BeaconError(f"nothing at {url} looks like a shim or a known runtime: give --runtime")
    adapter = adapter_class(runtime)(url, session, settings=target.launch_settings)
    status = await adapter.status()
    if not status.reachable:
        raise BeaconError(f"{runtime} at {url} is not reachable: {status.reason}")
    if not status.ready:
        raise BeaconError(f"{runtime} at {url} is not ready: {status.reason}")
    model = target.model or status.models[0]
    return ResolvedTarget(
        url=url,
        via="runtime",
        runtime=runtime,
        model=model,
        adapter=adapter,
        runtime_url=url,
        node_info=None,
        server_settings=dict(status.settings),
        runtime_version=status.version,
        models=status.models,
    )


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url + "/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            await resp.read()
            return True
    except (TimeoutError, aiohttp.ClientError):
        return False
