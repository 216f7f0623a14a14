"""The activity API: exe-scripts run command by command on the VM, results long-polled, states."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web
from yapapi import rest
from yapapi.config import ApiConfig
from yapapi.rest.activity import ActivityService

from beacon_golem.core import gftp
from beacon_golem.sandbox.providers import PROP_TASK_PACKAGE
from tests.sandbox.conftest import IMAGE, Api, MakeSandbox
from tests.sandbox.fake_vm import FakeVmFactory
from tests.sandbox.flows import exec_script, rent, start_vm

RUN = "/activity-api/v1/activity"


async def test_an_exe_script_runs_for_real_and_reports_each_command(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, vm_factory: FakeVmFactory
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    activity_id = await start_vm(api, await rent(api, sandbox))
    assert vm_factory.vms[0].image == IMAGE
    assert (await api.get(f"{RUN}/{activity_id}/state"))[1] == {"state": ["Ready", None]}
    results = await exec_script(
        api,
        activity_id,
        [
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo out; echo err >&2"], "capture": {}}},
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo partial; exit 3"]}},
            {"run": {"entry_point": "/bin/echo", "args": ["never"]}},
        ],
    )
    assert [(r["index"], r["result"]) for r in results] == [(0, "Ok"), (1, "Error")]
    assert (results[0]["stdout"], results[0]["stderr"]) == ("out\n", "err\n")
    assert results[1]["stdout"] == "partial\n" and "exited with code 3" in results[1]["message"]
    assert results[1]["isBatchFinished"] and not results[0]["isBatchFinished"]
    assert ["/bin/echo", "never"] not in vm_factory.vms[0].runs
    record = sandbox.records.activities[activity_id]
    assert [c.ok for c in record.commands] == [True, True, True, False]
    status, usage = await api.get(f"{RUN}/{activity_id}/usage")
    assert status == 200 and usage["currentUsage"][0] > 0 and usage["currentUsage"][1] > 0


async def test_commands_respect_the_vm_state(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    agreement_id = await rent(api, sandbox)
    status, created = await api.post(RUN, {"agreementId": agreement_id})
    assert status == 201 and set(created) == {"activityId"}  # the object body gets an object back
    activity_id = created["activityId"]
    early = await exec_script(api, activity_id, [{"run": {"entry_point": "/bin/true", "args": []}}])
    assert early[0]["result"] == "Error" and "start it first" in early[0]["message"]
    assert (await api.get(f"{RUN}/{activity_id}/state"))[1]["state"] == ["Initialized", None]


async def test_yapapi_polls_results_without_waiting_for_its_own_sleep(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    activity_id = await start_vm(api, await rent(api, sandbox))
    config = rest.Configuration(ApiConfig(app_key=sandbox.app_key, api_url=sandbox.url))
    async with config.activity() as client:
        activity = await ActivityService(client).use_activity(activity_id)
        script = [
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "sleep 0.3; echo a"]}},
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "sleep 0.3; echo b"]}},
        ]
        loop = asyncio.get_running_loop()
        started = loop.time()
        batch = await activity.send(script)
        seen = [kwargs["stdout"] async for _, kwargs in batch]
        elapsed = loop.time() - started
    assert seen == ["a\n", "b\n"]
    assert elapsed < 1.5  # a poll that answered old results would cost yapapi a 3 s sleep


async def test_deploy_checks_the_image_hash_and_fetches_foreign_urls(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    sandbox = await make_sandbox(providers=2)
    api = Api(api_session, sandbox)
    wrong = f"hash:sha3:{'0' * 56}:{sandbox.registry.download_url(sandbox.registry.images[0])}"
    activity_id = (await api.post(RUN, await rent(api, sandbox, 0, **{PROP_TASK_PACKAGE: wrong})))[1]
    results = await exec_script(api, activity_id, [{"deploy": {}}])
    assert results[0]["result"] == "Error" and "invalid image hash" in results[0]["message"]

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=IMAGE)

    app = web.Application()
    app.router.add_get("/node.gvmi", image)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        url = f"hash:sha3:{sandbox.registry.images[0].sha3}:http://127.0.0.1:{unused_tcp_port}/node.gvmi"
        activity_id = (await api.post(RUN, await rent(api, sandbox, 1, **{PROP_TASK_PACKAGE: url})))[1]
        results = await exec_script(api, activity_id, [{"deploy": {}}, {"start": {}}])
        assert [r["result"] for r in results] == ["Ok", "Ok"]
    finally:
        await runner.cleanup()


async def test_transfers_go_through_the_local_gftp_urls(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    activity_id = await start_vm(api, await rent(api, sandbox))
    source = tmp_path / "in.txt"
    source.write_text("sent by the requestor")
    back = tmp_path / "out" / "back.txt"
    results = await exec_script(
        api,
        activity_id,
        [
            {"transfer": {"from": gftp.url_for(source), "to": "container:/data/in.txt"}},
            {"run": {"entry_point": "/bin/cat", "args": ["data/in.txt"]}},
            {"transfer": {"from": "container:/data/in.txt", "to": gftp.url_for(back)}},
            {"transfer": {"from": "gftp://0xabc/elsewhere", "to": "container:/data/x"}},
        ],
    )
    assert [r["result"] for r in results] == ["Ok", "Ok", "Ok", "Error"]
    assert results[1]["stdout"] == "sent by the requestor"
    assert back.read_text() == "sent by the requestor"
    assert "local gftp stand-in" in results[3]["message"]


async def test_a_destroyed_activity_answers_as_yagna_does(
    make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession, vm_factory: FakeVmFactory
) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    activity_id = await start_vm(api, await rent(api, sandbox))
    assert (await api.delete(f"{RUN}/{activity_id}"))[0] == 204
    assert vm_factory.vms[0].terminated
    status, state = await api.get(f"{RUN}/{activity_id}/state")
    assert status == 200 and state["state"] == ["Terminated", None]
    status, body = await api.post(f"{RUN}/{activity_id}/exec", {"text": json.dumps([{"start": {}}])})
    assert status == 500 and "GSB error" in body["message"]


async def test_bad_activity_requests(make_sandbox: MakeSandbox, api_session: aiohttp.ClientSession) -> None:
    sandbox = await make_sandbox(providers=1)
    api = Api(api_session, sandbox)
    assert (await api.post(RUN, "no-such-agreement"))[0] == 404
    assert (await api.post(RUN, {"wrong": 1}))[0] == 400
    activity_id = await start_vm(api, await rent(api, sandbox))
    for text in ("not json", json.dumps([{"launch": {}}]), json.dumps([{"run": {"args": []}}])):
        status, body = await api.post(f"{RUN}/{activity_id}/exec", {"text": text})
        assert status == 400 and "invalid exe-script" in body["message"]
    assert (await api.get(f"{RUN}/{activity_id}/exec/nope"))[0] == 404
    assert (await api.get(f"{RUN}/nope/state"))[0] == 404
    agreement_id = next(iter(sandbox.market.agreements))
    await api.post(f"/market-api/v1/agreements/{agreement_id}/terminate", {"message": "bye"})
    status, body = await api.post(RUN, agreement_id)
    assert status == 400 and "Terminated" in body["message"]
