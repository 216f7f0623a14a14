"""`beacon golem doctor` against a fake yagna REST API (the real daemon: test_yagna.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from typer.testing import CliRunner

from beacon_golem.cli import _register, app
from beacon_golem.core.net import free_port
from beacon_golem.requestor.fleets.golem.doctor import run_doctor

KEY = "appkey-abcdef0123456789"
HOLESKY = {
    "platform": "erc20-holesky-tglm",
    "address": "0xabc",
    "driver": "erc20",
    "network": "holesky",
    "token": "tGLM",
    "send": True,
    "receive": False,
}


class FakeYagna:
    """Serves /me, requestorAccounts and allocations on a thread of its own."""

    def __init__(self) -> None:
        self.accounts: list[dict[str, Any]] = [HOLESKY]
        self.funds_ok = True
        self.posted: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {KEY}"

    async def me(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid application key")
        return web.json_response({"identity": "0xabc", "name": "test", "role": "manager"})

    async def accounts_view(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        return web.json_response(self.accounts)

    async def allocate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posted.append(body)
        if not self.funds_ok:
            problem = {
                "type": "/payment-api/v1/allocations/validation-error/insufficient-account-funds",
                "title": "Insufficient funds to create the allocation",
                "requestedFunds": body["totalAmount"],
                "availableFunds": "0",
            }
            return web.json_response(problem, status=400, content_type="application/problem+json")
        return web.json_response({**body, "allocationId": "alloc-1"}, status=201)

    async def release(self, request: web.Request) -> web.Response:
        self.deleted.append(request.match_info["id"])
        return web.Response(status=200)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app_ = web.Application()
        app_.router.add_get("/me", self.me)
        app_.router.add_get("/payment-api/v1/requestorAccounts", self.accounts_view)
        app_.router.add_post("/payment-api/v1/allocations", self.allocate)
        app_.router.add_delete("/payment-api/v1/allocations/{id}", self.release)
        runner = web.AppRunner(app_)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> FakeYagna:
        self._thread.start()
        self._started.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The CLI configures structlog to print to CliRunner's stream, closed after each invoke."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def yagna() -> Iterator[FakeYagna]:
    with FakeYagna() as fake:
        yield fake


def has_gftp(name: str) -> str | None:
    return f"/usr/bin/{name}"


async def doctor(yagna: FakeYagna, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"api_url": yagna.url, "app_key": KEY, "which": has_gftp, **kw}
    return {c.name: c for c in await run_doctor(**args)}


async def test_all_good(yagna: FakeYagna) -> None:
    from decimal import Decimal

    checks = await doctor(yagna, budget=Decimal("2.5"))
    assert all(c.ok for c in checks.values()), [c.line() for c in checks.values()]
    assert list(checks) == ["yagna", "app key", "payment account", "funds", "gftp"]
    assert yagna.posted[0]["paymentPlatform"] == "erc20-holesky-tglm"
    assert yagna.posted[0]["totalAmount"] == "2.5" and yagna.posted[0]["address"] == "0xabc"
    assert yagna.deleted == ["alloc-1"]  # the probe allocation is released


async def test_wrong_key(yagna: FakeYagna) -> None:
    checks = await doctor(yagna, app_key="wrong-key-0000")
    assert not checks["app key"].ok and "HTTP 401" in checks["app key"].detail
    assert "yagna app-key create requestor" in (checks["app key"].fix or "")
    assert checks["payment account"].skipped and checks["funds"].skipped


async def test_no_key(yagna: FakeYagna, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YAGNA_APPKEY", raising=False)
    checks = await doctor(yagna, app_key=None)
    assert checks["app key"].detail == "YAGNA_APPKEY is not set"


@pytest.mark.parametrize(
    "network, fix",
    [("holesky", "yagna payment fund --network holesky"), ("polygon", "yagna payment init --sender --network polygon")],
)
async def test_no_account_for_the_network(yagna: FakeYagna, network: str, fix: str) -> None:
    yagna.accounts = [{**HOLESKY, "send": False}]
    checks = await doctor(yagna, network=network)
    assert not checks["payment account"].ok and checks["payment account"].fix == fix
    assert checks["funds"].skipped


async def test_not_funded(yagna: FakeYagna) -> None:
    yagna.funds_ok = False
    checks = await doctor(yagna)
    assert not checks["funds"].ok and "Insufficient funds" in checks["funds"].detail
    assert checks["funds"].fix == "yagna payment fund --network holesky"
    yagna.accounts = [{**HOLESKY, "network": "polygon", "platform": "erc20-polygon-glm"}]
    polygon = await doctor(yagna, network="polygon")
    assert "on Polygon to 0xabc" in (polygon["funds"].fix or "")


async def test_yagna_not_running() -> None:
    checks = {
        c.name: c for c in await run_doctor(api_url=f"http://127.0.0.1:{free_port()}", app_key=KEY, which=has_gftp)
    }
    assert not checks["yagna"].ok and "yagna service run" in (checks["yagna"].fix or "")
    assert all(checks[n].skipped for n in ("app key", "payment account", "funds"))


async def test_gftp_missing(yagna: FakeYagna) -> None:
    checks = await doctor(yagna, which=lambda name: None)
    assert not checks["gftp"].ok and "release archive" in (checks["gftp"].fix or "")


def test_cli_one_line_per_check_and_never_the_key(yagna: FakeYagna, monkeypatch: pytest.MonkeyPatch) -> None:
    _register()
    runner = CliRunner()
    env = {"YAGNA_APPKEY": KEY, "YAGNA_API_URL": yagna.url}
    yagna.funds_ok = False
    result = runner.invoke(app, ["golem", "doctor", "--budget", "3"], env=env)
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "FAIL", lines[4].split()[0]]
    assert "-> fix: yagna payment fund --network holesky" in lines[3]
    assert KEY not in result.output
    assert yagna.posted[-1]["totalAmount"] == "3.0"

    yagna.funds_ok = True
    monkeypatch.setattr("shutil.which", has_gftp)
    ok = runner.invoke(app, ["golem", "doctor"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "ready to rent on Golem" in ok.stdout and KEY not in ok.output


def test_cli_rejects_a_bad_network() -> None:
    _register()
    result = CliRunner().invoke(app, ["golem", "doctor", "--network", "goerli"])  # retired: yagna 0.17 lists it no more
    assert result.exit_code == 2
    assert "holesky, hoodi, sepolia, polygon, amoy, mainnet" in result.output
