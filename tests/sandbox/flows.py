"""REST flows the sandbox's tests share: rent a provider (demand, counter, agreement) and start a VM."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from beacon_golem.sandbox.providers import PROP_ACCEPT_TIMEOUT, PROP_CHOSEN_PLATFORM, PROP_TASK_PACKAGE
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import TAG, Api

PLATFORM = "erc20-holesky-tglm"


def demand(sandbox: Sandbox, minutes: float = 60, **extra: Any) -> dict[str, Any]:
    image = sandbox.registry.by_tag(TAG)
    assert image is not None
    props: dict[str, Any] = {
        "golem.srv.comp.expiration": int((datetime.now(UTC) + timedelta(minutes=minutes)).timestamp() * 1000),
        "golem.node.debug.subnet": "public",
        f"golem.com.payment.platform.{PLATFORM}.address": sandbox.requestor_id,
        "golem.srv.caps.multi-activity": True,
        PROP_TASK_PACKAGE: sandbox.registry.package_url(image),
        PROP_CHOSEN_PLATFORM: PLATFORM,
        PROP_ACCEPT_TIMEOUT: 240,
    }
    props.update(extra)
    return {k: v for k, v in props.items() if v is not None}


async def events(api: Api, sub: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    status, found = await api.get(f"/market-api/v1/demands/{sub}/events", timeout=timeout, maxEvents=100)
    assert status == 200, found
    return found


async def rent(api: Api, sandbox: Sandbox, provider_index: int = 0, **props: Any) -> str:
    """An approved agreement with one provider (by its index), negotiated over REST."""
    provider = sandbox.providers[provider_index]
    body = {"properties": demand(sandbox, **props), "constraints": f"(golem.node.id.name={provider.name})"}
    status, sub = await api.post("/market-api/v1/demands", body)
    assert status == 201, sub
    (offer,) = await events(api, sub)
    status, _ = await api.post(f"/market-api/v1/demands/{sub}/proposals/{offer['proposal']['proposalId']}", body)
    assert status == 201
    (draft,) = await events(api, sub)
    assert draft["eventType"] == "ProposalEvent", draft
    valid_to = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    status, agreement_id = await api.post(
        "/market-api/v1/agreements", {"proposalId": draft["proposal"]["proposalId"], "validTo": valid_to}
    )
    assert status == 201, agreement_id
    assert (await api.post(f"/market-api/v1/agreements/{agreement_id}/confirm"))[0] == 204
    status, answer = await api.post(f"/market-api/v1/agreements/{agreement_id}/wait", timeout=5)
    assert status == 204, answer
    return agreement_id


async def exec_script(
    api: Api, activity_id: str, commands: list[dict[str, Any]], timeout: float = 10
) -> list[dict[str, Any]]:
    """Run an exe-script and poll until its batch finishes; the results."""
    status, batch = await api.post(f"/activity-api/v1/activity/{activity_id}/exec", {"text": json.dumps(commands)})
    assert status == 200, batch
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, results = await api.get(f"/activity-api/v1/activity/{activity_id}/exec/{batch}", timeout=2)
        assert status == 200, results
        if results and results[-1]["isBatchFinished"]:
            return results
        assert loop.time() < deadline, results


async def start_vm(api: Api, agreement_id: str) -> str:
    """An activity on the agreement, deployed and started."""
    status, activity_id = await api.post("/activity-api/v1/activity", agreement_id)
    assert status == 201, activity_id
    results = await exec_script(api, activity_id, [{"deploy": {}}, {"start": {"args": []}}])
    assert [r["result"] for r in results] == ["Ok", "Ok"], results
    return activity_id
