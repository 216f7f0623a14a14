"""Fixtures for the sandbox's REST side: sandboxes with fast clocks, a gftp on PATH, an API client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beacon_golem.sandbox.activity import VmFactory
from beacon_golem.sandbox.faults import Fault, FaultSettings
from beacon_golem.sandbox.market import MarketSettings
from beacon_golem.sandbox.payment import PaymentSettings
from beacon_golem.sandbox.providers import NegotiationSettings, ProviderSettings
from beacon_golem.sandbox.registry import RegistryImage
from beacon_golem.sandbox.server import Sandbox, SandboxConfig
from tests.sandbox.fake_vm import FakeVmFactory

TAG = "beacon/node-test:1"
IMAGE = b"sandbox test image: any bytes are an image to the fake VM"

FAST_MARKET = MarketSettings(offer_delay_s=0.01, negotiation_delay_s=0.01, approval_delay_s=0.01, reoffer_after_s=0.2)
FAST_PAYMENT = PaymentSettings(debit_note_interval_s=0.5, invoice_delay_s=0.1)
FAST_FAULTS = FaultSettings(
    vm_dies_after_s=0.5,
    provider_terminates_after_s=0.5,
    slow_deploy_s=3.0,
    late_invoice_delay_s=1.0,
    vpn_flaky_failures=2,
)

MakeSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
def vm_factory() -> FakeVmFactory:
    return FakeVmFactory()


@pytest.fixture
async def make_sandbox(tmp_path: Path, vm_factory: FakeVmFactory) -> AsyncIterator[MakeSandbox]:
    """make_sandbox(providers=3, faults=(), seed=0, ..., **config) -> a started sandbox (stopped afterwards)."""
    started: list[Sandbox] = []

    async def make(
        providers: int = 3,
        faults: Iterable[Fault] = (),
        seed: int = 0,
        factory: VmFactory | None = None,
        images: list[RegistryImage] | None = None,
        negotiation: NegotiationSettings | None = None,
        **config: Any,
    ) -> Sandbox:
        config.setdefault("market", FAST_MARKET)
        config.setdefault("payment", FAST_PAYMENT)
        config.setdefault("fault_settings", FAST_FAULTS)
        sandbox_config = SandboxConfig(
            workdir=tmp_path / f"sandbox-{len(started)}",
            providers=ProviderSettings(count=providers, seed=seed, negotiation=negotiation or NegotiationSettings()),
            faults=list(faults),
            image_tag=TAG,
            **config,
        )
        sandbox = Sandbox(
            sandbox_config, images=images or [RegistryImage(tag=TAG, data=IMAGE)], vm_factory=factory or vm_factory
        )
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in reversed(started):
        await sandbox.stop()


class Api:
    """A thin client of a sandbox's REST API: (status, JSON body) for each call."""

    def __init__(self, session: aiohttp.ClientSession, sandbox: Sandbox) -> None:
        self.session = session
        self.sandbox = sandbox

    async def call(
        self, method: str, path: str, body: Any = None, key: str | None = None, **params: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key if key is not None else self.sandbox.app_key}"}
        kwargs: dict[str, Any] = {"headers": headers, "params": params or None}
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.sandbox.url + path, **kwargs) as resp:
            text = await resp.text()
            try:
                data = await resp.json(content_type=None) if text else None
            except ValueError:
                data = text
            return resp.status, data

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **params)

    async def post(self, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **params)

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self.call("DELETE", path)


@pytest.fixture
async def api_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
