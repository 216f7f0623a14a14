"""`beacon golem doctor`: is this machine ready to rent Golem providers?

Checks, each one line, each problem with the command that fixes it: yagna answers on its REST API,
the app key is valid (GET /me), a sending payment account exists for the network, it can reserve
the budget (a short-lived allocation, released at once), and `gftp` is on PATH (yapapi's engine
starts it). The app key is never printed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel

from beacon_golem.requestor.fleets.golem.gftp import is_standin
from beacon_golem.requestor.fleets.golem.progress import scrub

DEFAULT_API_URL = "http://127.0.0.1:7465"
TOKENS = {"holesky": "tglm", "polygon": "glm"}


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    skipped: bool = False

    def line(self) -> str:
        mark = "skip" if self.skipped else ("ok" if self.ok else "FAIL")
        text = f"{mark:<4}  {self.name:<16} {self.detail}"
        if self.fix and not self.ok:
            text += f"  -> fix: {self.fix}"
        return text


def fund_command(network: str, address: str | None) -> str:
    if network == "holesky":
        return "yagna payment fund --network holesky"
    return f"send GLM and POL (for gas) on Polygon to {address or 'your yagna address (yagna id show)'}"


class YagnaDoctor:
    def __init__(
        self,
        api_url: str | None = None,
        app_key: str | None = None,
        network: str = "holesky",
        driver: str = "erc20",
        budget: Decimal = Decimal("1"),
        which: Callable[[str], str | None] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.api_url = (api_url or os.environ.get("YAGNA_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.app_key = app_key if app_key is not None else os.environ.get("YAGNA_APPKEY")
        self.network = network
        self.driver = driver
        self.budget = budget
        self.which = which or shutil.which
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.platform = f"{driver}-{network}-{TOKENS.get(network, 'glm')}"

    def _scrub(self, text: str) -> str:
        return scrub(text, [self.app_key])

    async def _request(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.app_key}"} if self.app_key else {}
        async with session.request(method, self.api_url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None) if text else None
            except ValueError:
                return resp.status, text

    async def run(self) -> list[Check]:
        checks: list[Check] = []
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            checks.append(await self._reachable(session))
            if not checks[-1].ok:
                checks += [self._skip("app key"), self._skip("payment account"), self._skip("funds")]
            else:
                checks.append(await self._app_key(session))
                if not checks[-1].ok:
                    checks += [self._skip("payment account"), self._skip("funds")]
                else:
                    account = await self._account(session)
                    checks.append(account[0])
                    checks.append(await self._funds(session, account[1]) if account[0].ok else self._skip("funds"))
        checks.append(self._gftp())
        return checks

    def _skip(self, name: str) -> Check:
        return Check(name=name, ok=False, skipped=True, detail="not checked (fix the line above first)")

    async def _reachable(self, session: aiohttp.ClientSession) -> Check:
        try:
            status, _ = await self._request(session, "GET", "/me")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            start = "yagna service run" if self._has_yagna() else "pip install golem-node && yagna service run"
            return Check(
                name="yagna",
                ok=False,
                detail=f"no answer at {self.api_url} ({self._scrub(str(exc) or type(exc).__name__)})",
                fix=f"{start}   (or set YAGNA_API_URL to where it listens)",
            )
        return Check(name="yagna", ok=True, detail=f"answers at {self.api_url} (HTTP {status})")

    async def _app_key(self, session: aiohttp.ClientSession) -> Check:
        fix = "export YAGNA_APPKEY=$(yagna app-key create requestor)   (or `yagna app-key list` for an existing one)"
        if not self.app_key:
            return Check(name="app key", ok=False, detail="YAGNA_APPKEY is not set", fix=fix)
        status, body = await self._request(session, "GET", "/me")
        if status == 200 and isinstance(body, dict):
            return Check(name="app key", ok=True, detail=f"valid; identity {body.get('identity')}")
        return Check(name="app key", ok=False, detail=f"rejected by yagna (HTTP {status})", fix=fix)

    async def _account(self, session: aiohttp.ClientSession) -> tuple[Check, str | None]:
        status, body = await self._request(session, "GET", "/payment-api/v1/requestorAccounts")
        init = f"yagna payment init --sender --network {self.network}"
        if self.network == "holesky":
            init = "yagna payment fund --network holesky"
        if status != 200 or not isinstance(body, list):
            return Check(
                name="payment account", ok=False, detail=f"cannot list accounts (HTTP {status})", fix=init
            ), None
        for account in body:
            if account.get("driver") == self.driver and account.get("network") == self.network and account.get("send"):
                return (
                    Check(
                        name="payment account", ok=True, detail=f"{account.get('platform')} {account.get('address')}"
                    ),
                    account.get("address"),
                )
        return (
            Check(
                name="payment account",
                ok=False,
                detail=f"no sending account for {self.driver}/{self.network}",
                fix=init,
            ),
            None,
        )

    async def _funds(self, session: aiohttp.ClientSession, address: str | None) -> Check:
        """Reserve the budget for a minute, as yapapi's engine does at start, then release it."""
        now = datetime.now(UTC)
        body = {
            "allocationId": "",
            "address": address,
            "paymentPlatform": self.platform,
            "totalAmount": str(self.budget),
            "spentAmount": "",
            "remainingAmount": "",
            "timestamp": now.isoformat(),
            "timeout": (now + timedelta(minutes=1)).isoformat(),
            "makeDeposit": False,
        }
        try:
            status, answer = await self._request(session, "POST", "/payment-api/v1/allocations", body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Check(name="funds", ok=False, detail=f"allocation failed: {self._scrub(str(exc))}")
        if status in (200, 201) and isinstance(answer, dict):
            allocation_id = answer.get("allocationId")
            if allocation_id:
                await self._request(session, "DELETE", f"/payment-api/v1/allocations/{allocation_id}")
            return Check(name="funds", ok=True, detail=f"{self.budget} GLM can be reserved on {self.platform}")
        text = self._scrub(str(answer))[:300]
        return Check(
            name="funds",
            ok=False,
            detail=f"cannot reserve {self.budget} GLM on {self.platform} (HTTP {status}: {text})",
            fix=fund_command(self.network, address),
        )

    def _has_yagna(self) -> bool:
        return bool(self.which("yagna")) or (Path(sys.executable).parent / "yagna").exists()

    def _gftp(self) -> Check:
        path = self.which("gftp")
        if path:
            kind = "beacon-golem's stand-in (no file transfers; none are needed)" if is_standin(path) else "yagna's"
            return Check(name="gftp", ok=True, detail=f"{path}: {kind}")
        return Check(
            name="gftp",
            ok=False,
            detail="not on PATH (yapapi's engine starts `gftp server`)",
            fix=f"activate the environment beacon-golem is installed in (its bin/ holds a gftp stand-in: "
            f"export PATH={Path(sys.executable).parent}:$PATH), or install yagna's gftp from its release archive",
        )


async def run_doctor(**kwargs: Any) -> list[Check]:
    return await YagnaDoctor(**kwargs).run()
