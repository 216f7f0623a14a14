"""The market API through yapapi's own REST wrappers (rest.Market), and its errors on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from yapapi import rest
from yapapi.config import ApiConfig
from yapapi.props import NodeInfo
from yapapi.rest.market import OfferProposal, Subscription

from beacon_golem.sandbox.providers import PROP_ACCEPT_TIMEOUT, PROP_CHOSEN_PLATFORM
from beacon_golem.sandbox.server import Sandbox
from tests.sandbox.conftest import Api, MakeSandbox

PLATFORM = "erc20-holesky-tglm"


@asynccontextmanager
async def market_api(sandbox: Sandbox) -> AsyncIterator[rest.Market]:
    config = rest.Configuration(ApiConfig(app_key=sandbox.app_key, api_url=sandbox.url))
    async with config.market() as client:
        yield rest.Market(client)


def demand_props(sandbox: Sandbox, minutes: float = 60, **extra: Any) -> dict[str, Any]:
    expiration = datetime.now(UTC) + timedelta(minutes=minutes)
    props = {
        "golem.srv.comp.expiration": int(expiration.timestamp() * 1000),
        "golem.node.debug.subnet": "public",
        f"golem.com.payment.platform.{PLATFORM}.address": sandbox.requestor_id,
        "golem.srv.caps.multi-activity": True,
    }
    props.update(extra)
    return props


def counter_props(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    return demand_props(sandbox, **{PROP_CHOSEN_PLATFORM: PLATFORM, PROP_ACCEPT_TIMEOUT: 240, **extra})


async def proposals(subscription: Subscription, n: int, timeout: float = 5.0) -> list[OfferProposal]:
    found: list[OfferProposal] = []

    async def collect() -> None:
        async for proposal in subscription.events():
            found.append(proposal)
            if len(found) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    return found


async def drain(api: Api, sub: str, timeout: float = 0.5) -> list[dict[str, Any]]:
    """Every market event until a poll of `timeout` s finds none (a poll returns at the first event)."""
    found: list[dict[str, Any]] = []
    while True:
        status, events = await api.get(f"/market-api/v1/demands/{sub}/events", timeout=timeout, maxEvents=100)
        assert status == 200
        if not events:
            return found
        found.extend(events)


async def test_offers_negotiation_and_an_agreement_through_yapapi(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=3)
    async with (
        market_api(sandbox) as market,
        market.subscribe(
            demand_props(sandbox), "(&(golem.runtime.name=vm-nvidia)(golem.inf.mem.gib>=16))"
        ) as subscription,
    ):
        initial = await proposals(subscription, 3)
        assert {p.issuer for p in initial} == {p.provider_id for p in sandbox.providers}
        assert all(not p.is_draft for p in initial)

        offer = initial[0]
        await offer.respond(counter_props(sandbox), "(golem.runtime.name=vm-nvidia)")
        (draft,) = await proposals(subscription, 1)
        assert draft.is_draft and draft.issuer == offer.issuer
        assert draft.props[PROP_ACCEPT_TIMEOUT] == 240

        agreement = await draft.create_agreement()
        details = await agreement.get_details()
        provider = next(p for p in sandbox.providers if p.provider_id == offer.issuer)
        assert details.provider_view.extract(NodeInfo).name == provider.name
        assert details.requestor_view.properties[PROP_CHOSEN_PLATFORM] == PLATFORM
        assert await agreement.confirm() is True
        assert sandbox.records.agreements[agreement.id].state == "Approved"
        assert provider.agreement_id == agreement.id

        assert await agreement.terminate({"message": "done", "golem.requestor.code": "Success"}) is True
        record = sandbox.records.agreements[agreement.id]
        assert (record.state, record.terminated_by, record.reason) == ("Terminated", "Requestor", "done")
        assert await agreement.terminate({"message": "again"}) is False  # 409: not Approved any more

        (again,) = await proposals(subscription, 1)  # the provider offers itself again
        assert again.issuer == offer.issuer and not again.is_draft


async def test_only_matching_offers_arrive(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=4)
    api = Api(api_session, sandbox)
    big = min(p.spec.mem_gib for p in sandbox.providers)
    status, sub = await api.post(
        "/market-api/v1/demands", {"properties": demand_props(sandbox), "constraints": f"(golem.inf.mem.gib>{big})"}
    )
    assert status == 201
    events = await drain(api, sub)
    expected = {p.provider_id for p in sandbox.providers if p.spec.mem_gib > big}
    assert {e["proposal"]["issuerId"] for e in events} == expected
    assert all(e["eventType"] == "ProposalEvent" and e["proposal"]["state"] == "Initial" for e in events)

    other_subnet = demand_props(sandbox, **{"golem.node.debug.subnet": "testnet"})
    status, sub2 = await api.post("/market-api/v1/demands", {"properties": other_subnet, "constraints": ""})
    assert await drain(api, sub2, 0.3) == []  # the offers require subnet public


async def test_a_refused_counter_proposal_is_a_rejection_event(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    _, sub = await api.post("/market-api/v1/demands", {"properties": demand_props(sandbox), "constraints": ""})
    _, (event,) = await api.get(f"/market-api/v1/demands/{sub}/events", timeout=2)
    offer_id = event["proposal"]["proposalId"]
    too_long = counter_props(
        sandbox, **{"golem.srv.comp.expiration": int((datetime.now(UTC) + timedelta(hours=11)).timestamp() * 1000)}
    )
    status, ours = await api.post(
        f"/market-api/v1/demands/{sub}/proposals/{offer_id}", {"properties": too_long, "constraints": "(&)"}
    )
    assert status == 201
    _, (rejected,) = await api.get(f"/market-api/v1/demands/{sub}/events", timeout=2)
    assert rejected["eventType"] == "ProposalRejectedEvent"
    assert rejected["proposalId"] == ours
    assert "more than 10h from now" in rejected["reason"]["message"]

    status, _ = await api.post(f"/market-api/v1/demands/{sub}/proposals/{offer_id}/reject", {"message": "no"})
    assert status == 204
    status, body = await api.post(
        f"/market-api/v1/demands/{sub}/proposals/{offer_id}", {"properties": {}, "constraints": ""}
    )
    assert status == 410 and "rejected" in body["message"]


async def test_a_provider_holds_one_agreement_at_a_time(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=1)
    async with market_api(sandbox) as market:
        drafts = []
        for _ in range(2):
            sub = await market.subscribe(demand_props(sandbox), "")
            (offer,) = await proposals(sub, 1)
            await offer.respond(counter_props(sandbox), "")
            drafts.extend(await proposals(sub, 1))
        first, second = [await d.create_agreement() for d in drafts]
        assert await first.confirm() is True
        assert await second.confirm() is False  # wait answers 410: rejected
        assert sandbox.records.agreements[second.id].state == "Rejected"


async def test_unsubscribed_demands_answer_404_then_410(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    _, sub = await api.post("/market-api/v1/demands", {"properties": demand_props(sandbox), "constraints": ""})
    assert (await api.delete(f"/market-api/v1/demands/{sub}"))[0] == 204
    status, body = await api.get(f"/market-api/v1/demands/{sub}/events", timeout=0)
    assert status == 404 and "unsubscribed" in body["message"]
    assert (await api.delete(f"/market-api/v1/demands/{sub}"))[0] == 410
    assert (await api.delete("/market-api/v1/demands/nope"))[0] == 404


async def test_bad_requests_get_one_line_json_errors(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    for body in ({"properties": 1, "constraints": ""}, {"constraints": ""}, [1, 2]):
        status, answer = await api.post("/market-api/v1/demands", body)
        assert status == 400 and set(answer) == {"message"} and "\n" not in answer["message"]
    status, answer = await api.post("/market-api/v1/demands", {"properties": {}, "constraints": "(a=b"})
    assert status == 400 and "constraints" in answer["message"]
    async with api_session.post(
        sandbox.url + "/market-api/v1/demands",
        data=b"{not json",
        headers={"Authorization": f"Bearer {sandbox.app_key}"},
    ) as resp:
        assert resp.status == 400 and "not JSON" in (await resp.json())["message"]
    status, answer = await api.post("/market-api/v1/agreements", {"proposalId": "x", "validTo": "2030-01-01T00:00:00Z"})
    assert status == 404 and "Proposal x" in answer["message"]
    status, answer = await api.get("/market-api/v1/no-such-thing")
    assert status == 404 and "message" in answer


async def test_the_app_key_is_required(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    for key in ("", "wrong"):
        status, body = await api.call("GET", "/me", key=key)
        assert status == 401 and body == {"message": "Invalid application key"}
        status, _ = await api.call("GET", "/market-api/v1/demands", key=key)
        assert status == 401
    status, me = await api.get("/me")
    assert status == 200 and me["identity"] == sandbox.requestor_id
    async with api_session.get(f"{sandbox.url}/me", params={"authToken": sandbox.app_key}) as resp:
        assert resp.status == 200
    async with api_session.get(f"{sandbox.registry_url}/v1/image/info", params={"tag": "x"}) as resp:
        assert resp.status == 404  # the registry needs no key (and has no such image)
