"""The one small interface every inference runtime adapter implements.

An adapter knows where its runtime listens, how to launch it inside a node, how to tell
that it is up and which models it holds, and how to turn one `GenerationRequest` into the
runtime's own dialect and the answer back into a `GenerationResult`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel, Field

from beacon_golem.core.errors import BadUpstream, RuntimeUnavailable, UpstreamError, UpstreamTimeout
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings


class RuntimeStatus(BaseModel):
    """What a runtime says about itself right now."""

    reachable: bool
    ready: bool
    models: list[str] = Field(default_factory=list)
    version: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    #: The weights served, as far as the runtime tells (format, quantization, context length).
    weights: WeightsInfo | None = None


@dataclass(frozen=True)
class LaunchSpec:
    """How to start a runtime inside a node: argv plus extra environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    read_s: float = 600.0

    def client_timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_s, sock_read=self.read_s)


class StreamClock:
    """Times a streamed answer: TTFT at the first non-empty content, ITL between content chunks."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []

    def content(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.gaps.append((now - self.last) * 1000.0)
        self.last = now

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.start) * 1000.0

    def e2e_ms(self) -> float:
        end = self.last if self.last is not None else time.perf_counter()
        return (end - self.start) * 1000.0


async def iter_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield complete lines (without the newline) of a streamed body, whatever its chunking."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1 :]
            yield line
    if buffer.strip():
        yield buffer.rstrip(b"\r")


def drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class RuntimeAdapter(ABC):
    """Base for adapters. Subclasses set the class constants and the dialect hooks."""

    name: ClassVar[str]
    default_port: ClassVar[int]
    #: Path prefix of the runtime's OpenAI-compatible API (chat completions and models live under it).
    openai_base: ClassVar[str] = "/v1"
    #: Whether the runtime honours `ignore_eos` (fixed output length).
    supports_ignore_eos: ClassVar[bool] = True

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        timeouts: Timeouts | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeouts = timeouts or Timeouts()
        #: Server settings known from how the node launched the runtime (e.g. OLLAMA_NUM_PARALLEL).
        self.launch_settings = dict(settings or {})

    # ---- launching -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def launch(
        cls,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        parallel: int = 4,
        settings: RuntimeSettings | None = None,
    ) -> LaunchSpec:
        """The command that starts this runtime serving `model` inside a node.

        `settings` (beacon_golem/core/runtime_settings.py) override `parallel` and add the
        runtime's own flags or variables; a setting the runtime has none for is refused.
        """

    # ---- status ----------------------------------------------------------------------------
    @abstractmethod
    async def status(self) -> RuntimeStatus:
        """Whether the runtime answers, whether a model is loaded, its models and settings."""

    # ---- generation ------------------------------------------------------------------------
    @abstractmethod
    async def generate(self, request: GenerationRequest, model: str) -> GenerationResult:
        """Run one request (streamed, so it can be timed) and normalize the answer."""

    # ---- OpenAI-compatible pass-through ----------------------------------------------------
    def launched(self, key: str) -> Any:
        """A setting this node launched the runtime with (`RuntimeSettings` field), or None."""
        given = self.launch_settings.get("settings")
        return given.get(key) if isinstance(given, dict) else None

    def openai_url(self, tail: str) -> str:
        return f"{self.base_url}{self.openai_base}/{tail.lstrip('/')}"

    def adapt_openai_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """Fix a client's OpenAI body for this runtime's traps (default: unchanged)."""
        return body

    # ---- plumbing --------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def get_json(self, path: str, *, timeout_s: float = 10.0) -> Any:
        """GET a JSON document; failures become the shim's upstream errors."""
        async with self.request("GET", self.url(path), timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return await self.read_json(resp)

    async def get_ok(self, path: str, *, timeout_s: float = 5.0) -> None:
        """GET `path` and require a 2xx answer, whatever the body."""
        async with self.request("GET", self.url(path), timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()

    def request(self, method: str, url: str, **kwargs: Any) -> _Upstream:
        return _Upstream(self, lambda: self.session.request(method, url, **kwargs))

    async def read_json(self, resp: aiohttp.ClientResponse) -> Any:
        raw = await resp.read()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadUpstream(f"{self.name} answered {resp.url.path} with non-JSON") from exc


class _Upstream:
    """Async context around an upstream request that maps failures onto our error types."""

    def __init__(self, adapter: RuntimeAdapter, make: Callable[[], Any]) -> None:
        self.adapter = adapter
        self.make = make
        self.ctx: Any = None

    async def _open(self) -> aiohttp.ClientResponse:
        # A kept-alive connection the runtime has already closed fails before the request is
        # read (llama-server closes idle and much-used connections): retry once, fresh.
        for attempt in (1, 2):
            self.ctx = self.make()
            try:
                return await self.ctx.__aenter__()  # type: ignore[no-any-return]
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def __aenter__(self) -> aiohttp.ClientResponse:
        name = self.adapter.name
        try:
            resp = await self._open()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{name} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise RuntimeUnavailable(f"{name} at {self.adapter.base_url} is not reachable: {exc}") from exc
        if resp.status >= 400:
            detail = (await resp.text(errors="replace"))[:300].strip()
            await self.ctx.__aexit__(None, None, None)
            raise UpstreamError(f"{name} answered HTTP {resp.status}: {detail}", status=resp.status)
        return resp

    async def __aexit__(self, *exc: Any) -> None:
        await self.ctx.__aexit__(*exc)


async def guarded(coro_name: str, adapter: RuntimeAdapter, coro: Any) -> Any:
    """Await `coro`, turning timeouts and transport errors mid-stream into our error types."""
    try:
        return await coro
    except TimeoutError as exc:
        raise UpstreamTimeout(f"{adapter.name} timed out during {coro_name}") from exc
    except aiohttp.ClientError as exc:
        raise BadUpstream(f"{adapter.name} failed during {coro_name}: {exc}") from exc
