"""The sandbox as one object: its providers, market, activities, payments, VPN, registry, records.

`Sandbox` wires the modules together and serves them on one aiohttp app (loopback by default):
yagna's REST API under `/me`, `/market-api/v1`, `/activity-api/v1`, `/payment-api/v1`,
`/net-api/v1` (bearer app key, as yagna checks it; the websocket also takes `?authToken=`), the
image registry under `/registry` (no key, like Golem's), and `GET /sandbox/records`.
Nothing is global: two sandboxes in one process do not see each other.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from beacon_golem.core.gftp import LOCAL_ENV
from beacon_golem.sandbox.activity import Activities, ActivitySettings, VmFactory, VmLike
from beacon_golem.sandbox.faults import Fault, FaultPlan, FaultSettings
from beacon_golem.sandbox.market import Market, MarketSettings
from beacon_golem.sandbox.net import NetSettings, Networks
from beacon_golem.sandbox.payment import Payments, PaymentSettings
from beacon_golem.sandbox.providers import ProviderSettings, build_providers, requestor_id_for
from beacon_golem.sandbox.records import Records, RecordsSnapshot
from beacon_golem.sandbox.registry import PREFIX as REGISTRY_PREFIX
from beacon_golem.sandbox.registry import Registry, RegistryImage
from beacon_golem.sandbox.wire import ApiError, ErrorBody, WireModel

log = structlog.get_logger(__name__)

#: The environment variable the requestor reads for the image registry (see the report).
REGISTRY_ENV = "BEACON_GOLEM_REGISTRY_URL"
IMAGE_ENV = "BEACON_GOLEM_IMAGE"
DEFAULT_IMAGE_TAG = "beacon/node-sandbox:latest"
_AUTHENTICATED = ("/me", "/market-api/", "/activity-api/", "/payment-api/", "/net-api/", "/sandbox/", "/version/")


class SandboxConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    #: The app key requests must carry; a random one when not given.
    app_key: SecretStr | None = None
    faults: list[Fault] = Field(default_factory=list)
    #: Where VMs keep their files; a temporary directory (removed at the end) when not given.
    workdir: Path | None = None
    image_tag: str = DEFAULT_IMAGE_TAG
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    market: MarketSettings = Field(default_factory=MarketSettings)
    payment: PaymentSettings = Field(default_factory=PaymentSettings)
    activity: ActivitySettings = Field(default_factory=ActivitySettings)
    net: NetSettings = Field(default_factory=NetSettings)
    fault_settings: FaultSettings = Field(default_factory=FaultSettings)


class IdentityWire(WireModel):
    identity: str
    name: str
    role: str


class VersionWire(WireModel):
    version: str
    name: str


async def _default_vm_factory(root: Path, vm_id: str) -> VmLike:
    from beacon_golem.sandbox.vm import create_vm  # the VM side; imported when the first VM is made

    return await create_vm(root, vm_id)


class Sandbox:
    """An offline Golem network on loopback. Use `async with Sandbox(config, images=...) as sandbox:`."""

    def __init__(
        self,
        config: SandboxConfig,
        images: list[RegistryImage],
        vm_factory: VmFactory | None = None,
    ) -> None:
        self.config = config
        self.app_key = config.app_key.get_secret_value() if config.app_key else secrets.token_hex(16)
        self.requestor_id = requestor_id_for(config.providers.seed)
        self.records = Records(self.requestor_id)
        self.faults = FaultPlan(config.faults, config.fault_settings, self.records)
        self.providers = build_providers(config.providers, self.faults.price_factor)
        self.records.providers = [p.record() for p in self.providers]
        self.market = Market(self.requestor_id, self.providers, config.market, self.records)
        self.payments = Payments(self.requestor_id, self.market, config.payment, self.faults, self.records)
        self.registry = Registry(images)
        self._own_workdir = config.workdir is None
        self.workdir = config.workdir or Path(tempfile.mkdtemp(prefix="beacon-sandbox-"))
        self.activities = Activities(
            self.market,
            self.payments,
            self.registry,
            self.faults,
            self.records,
            vm_factory or _default_vm_factory,
            self.workdir,
            config.activity,
        )
        self.networks = Networks(self.requestor_id, self.activities, self.faults, config.net)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- the app ------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.get("/me", self._h_me),
                web.get("/version/get", self._h_version),
                web.get("/sandbox/records", self._h_records),
                *self.market.routes(),
                *self.activities.routes(),
                *self.payments.routes(),
                *self.networks.routes(),
                *self.registry.routes(),
            ]
        )
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.status >= 500:
                log.info(
                    "request refused", method=request.method, path=request.path, status=exc.status, why=exc.message
                )
            return exc.response()
        except web.HTTPException as exc:
            if exc.status >= 400:
                body = ErrorBody(message=f"{exc.reason}: {request.method} {request.path}").wire()
                return web.json_response(body, status=exc.status)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request failed", method=request.method, path=request.path)
            return web.json_response(ErrorBody(message=f"internal error: {exc}").wire(), status=500)

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith(_AUTHENTICATED) or request.path == "/me":
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("authToken", "")
            if not token or not secrets.compare_digest(token.encode(), self.app_key.encode()):
                raise ApiError(401, "Invalid application key")
        return await handler(request)

    async def _h_me(self, request: web.Request) -> web.Response:
        return web.json_response(
            IdentityWire(identity=self.requestor_id, name="sandbox-requestor", role="manager").wire()
        )

    async def _h_version(self, request: web.Request) -> web.Response:
        return web.json_response(VersionWire(version="0.17.6-beacon-sandbox", name="beacon golem sandbox").wire())

    async def _h_records(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot().model_dump(mode="json"))

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> str:
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.registry.base_url = self.url
        log.info(
            "sandbox serving",
            url=self.url,
            providers=len(self.providers),
            faults=[f.value for f in self.config.faults],
            workdir=str(self.workdir),
        )
        return self.url

    async def stop(self) -> None:
        await self.market.close()
        await self.payments.close()
        await self.networks.close()
        await self.activities.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # ---- what a requestor needs --------------------------------------------------------------------
    @property
    def registry_url(self) -> str:
        return f"{self.url}{REGISTRY_PREFIX}"

    def env(self) -> dict[str, str]:
        """The variables a requestor exports to use this sandbox (`beacon golem sandbox` prints them)."""
        return {
            "YAGNA_API_URL": self.url,
            "YAGNA_APPKEY": self.app_key,
            REGISTRY_ENV: self.registry_url,
            IMAGE_ENV: self.config.image_tag,
            "YAGNA_SUBNET": self.config.providers.subnet,
            LOCAL_ENV: "1",
        }

    def snapshot(self) -> RecordsSnapshot:
        return self.records.snapshot()
