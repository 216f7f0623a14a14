"""Typed async client for a node's shim: what the CLI, fleets and dispatcher speak."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, SecretStr, ValidationError

from beacon_golem.api.bodies import Health, JobAccepted, JobSubmission, JobView
from beacon_golem.core.errors import BeaconError
from beacon_golem.core.inference import GenerationRequest, GenerationResult
from beacon_golem.core.node import NodeInfo
from beacon_golem.core.probe import ProbeReport

M = TypeVar("M", bound=BaseModel)


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
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
    ) -> M:
        data = body.model_dump_json(exclude_none=exclude_none) if body is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        try:
            async with self.session.request(
                method, self.base_url + path, data=data, headers=headers, timeout=self.timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise NodeUnreachable(f"node {self.base_url} timed out on {method} {path}") from exc
        except aiohttp.ClientError as exc:
            raise NodeUnreachable(f"node {self.base_url} unreachable: {exc}") from exc
        if status >= 400 and status not in ok:
            raise ShimError(f"node {self.base_url} {method} {path}: {_error_text(raw, status)}", status)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise ShimError(f"node {self.base_url} {method} {path} answered an unexpected body", 502) from exc

    async def health(self) -> Health:
        """The node's health; a 503 is an answer (`status == "unavailable"`), not an error."""
        return await self._call("GET", "/health", Health, ok=(503,))

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
