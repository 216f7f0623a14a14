"""Typed async client for a node's shim: what the CLI, fleets and dispatcher speak.

A node is not trusted: every body it sends is read up to `max_body_bytes` (a larger one is a 502
`ShimError`, and nothing more of it is read), parsed as strict JSON (no NaN, no infinity, nesting
bounded: core/untrusted.py) and validated into its model before anyone sees it.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, SecretStr, ValidationError

from beacon_golem.api.bodies import Health, JobAccepted, JobSubmission, JobView, RuntimeSwitch
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.core.probe import ProbeReport
from beacon_golem.core.untrusted import UntrustedInput, loads_json

M = TypeVar("M", bound=BaseModel)

#: The largest body read from a node by default: a job view of 10,000 long answers fits, 1.5 GB does not.
MAX_NODE_BODY_BYTES = 64 * 1024 * 1024


class ShimError(BeaconError):
    """The shim answered with an error status; `status` is that HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = status


class NodeUnreachable(BeaconError):
    """The shim did not answer at all (connection refused, reset, timed out)."""

    http_status = 503


class ShimClient:
    def __init__(
        self,
        base_url: str,
        token: SecretStr | str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 900.0,
        connect_timeout_s: float = 10.0,
        max_body_bytes: int = MAX_NODE_BODY_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_body_bytes = max_body_bytes
        self.connect_timeout_s = connect_timeout_s
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._own_session = session is None
        self._session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)

    async def __aenter__(self) -> ShimClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        body: BaseModel | None = None,
        ok: tuple[int, ...] = (),
        exclude_none: bool = True,
        timeout_s: float | None = None,
    ) -> M:
        data = body.model_dump_json(exclude_none=exclude_none) if body is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        timeout = self.timeout if timeout_s is None else aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(self.connect_timeout_s, timeout_s)
        )
        try:
            async with self.session.request(
                method, self.base_url + path, data=data, headers=headers, timeout=timeout
            ) as resp:
                raw = await self._read_capped(resp, method, path)
                status = resp.status
        except TimeoutError as exc:
            raise NodeUnreachable(f"node {self.base_url} timed out on {method} {path}") from exc
        except aiohttp.ClientError as exc:
            raise NodeUnreachable(f"node {self.base_url} unreachable: {exc}") from exc
        if status >= 400 and status not in ok:
            raise ShimError(f"node {self.base_url} {method} {path}: {_error_text(raw, status)}", status)
        try:
            return model.model_validate(loads_json(raw, what="the body"))
        except UntrustedInput as exc:
            raise ShimError(f"node {self.base_url} {method} {path} answered a body refused: {exc}", 502) from None
        except ValidationError as exc:
            raise ShimError(f"node {self.base_url} {method} {path} answered an unexpected body", 502) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        """The whole body, or a 502 ShimError as soon as it is known to exceed `max_body_bytes`."""
        limit = self.max_body_bytes
        too_big = ShimError(f"node {self.base_url} {method} {path} answered a body over {limit:,} bytes", 502)
        if resp.content_length is not None and resp.content_length > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def health(self, timeout_s: float | None = None) -> Health:
        """The node's health; a 503 is an answer (`status == "unavailable"`), not an error.
        `timeout_s`: this check's own limit (default: the client's)."""
        return await self._call("GET", "/health", Health, ok=(503,), timeout_s=timeout_s)

    async def info(self, refresh: bool = False) -> NodeInfo:
        return await self._call("GET", "/info" + ("?refresh=1" if refresh else ""), NodeInfo)

    async def probe(self) -> ProbeReport:
        """The compatibility probe of the node's machine (GET /probe; run once per shim, then cached)."""
        return await self._call("GET", "/probe", ProbeReport)

    async def infer(self, request: GenerationRequest) -> GenerationResult:
        return await self._call("POST", "/inference", GenerationResult, request)

    async def submit_job(self, spec: JobSubmission) -> JobAccepted:
        # A benchmark's nulls mean something (num_prompts: null = stop on duration only): send them.
        return await self._call("POST", "/jobs", JobAccepted, spec, exclude_none=spec.perf is None)

    async def job(self, job_id: str, partial: bool = False) -> JobView:
        return await self._call("GET", f"/jobs/{job_id}" + ("?partial=1" if partial else ""), JobView)

    async def cancel_job(self, job_id: str) -> JobView:
        return await self._call("DELETE", f"/jobs/{job_id}", JobView)

    async def switch_runtime(self, switch: RuntimeSwitch) -> NodeInfo:
        """Replace the node's runtime (POST /runtime); the node's new /info once the new runtime serves
        (give the client a timeout longer than the model's load). A runtime that does not start is a
        ShimError (502) saying why."""
        return await self._call("POST", "/runtime", NodeInfo, switch)

    async def wait_job(self, job_id: str, poll_s: float = 0.5) -> JobView:
        while True:
            view = await self.job(job_id)
            if view.state in ("done", "cancelled"):
                return view
            await asyncio.sleep(poll_s)


def _error_text(raw: bytes, status: int) -> str:
    try:
        body: Any = json.loads(raw)
        if isinstance(body, dict) and "error" in body:
            return f"{status} {body['error']}"
    except ValueError:
        pass
    return f"{status} {raw[:200].decode(errors='replace')}"
