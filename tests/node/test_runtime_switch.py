"""A node replaces its runtime (POST /runtime) and times every start; the shim's /v1/completions.

Real parts: llama-server on the generated tiny model, launched by a real `LocalNode`; Ollama and
Docker Model Runner as the documented-protocol fakes run as the programs a node launches
(tests/fakes/serve.py: `ollama serve` and `model-runner`, first on PATH), configured by the
same variables as the real servers: Ollama's OLLAMA_NUM_PARALLEL (its default of 1 serialises),
OLLAMA_MAX_QUEUE, OLLAMA_KEEP_ALIVE and `load_duration`; DMR's LLAMA_ARGS --parallel and its idle
unload. Nothing asserts on speed beyond the loads and waits the fakes are told to take.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from beacon_golem.api.bodies import RuntimeSwitch
from beacon_golem.api.client import ShimClient, ShimError
from beacon_golem.core.config import load_settings
from beacon_golem.core.inference import GenerationRequest
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.launcher import LocalNode, NodeConfig
from beacon_golem.node.shim.app import ShimConfig, create_app
from tests.fakes.dmr import MODEL as DMR_MODEL
from tests.fakes.ollama import MODEL as OLLAMA_MODEL
from tests.fakes.serve import install_fake_runtimes
from tests.support import llama_server_binary, read_sse, serve_app

REQUEST = GenerationRequest(prompt="Say hello.", max_tokens=6, ignore_eos=True, temperature=0.0)


@pytest.fixture
def fake_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`ollama` and `model-runner` on PATH, each loading its model in 0.3 s and streaming a token every 10 ms."""
    bin_dir = install_fake_runtimes(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOAD_S", "0.3")
    monkeypatch.setenv("FAKE_TOKEN_DELAY_S", "0.01")
    yield bin_dir


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def stats(node: LocalNode) -> dict:
    async with aiohttp.ClientSession() as http, http.get(node.runtime_url + "/_fake/stats") as resp:
        return await resp.json()


async def test_a_node_switches_llamacpp_settings_frees_the_old_process_and_times_each_start(tmp_path: Path) -> None:
    llama_server_binary()
    config = NodeConfig(port=0, data_dir=tmp_path / "node", settings=RuntimeSettings(parallel=1))
    async with LocalNode(config) as node, ShimClient(node.url) as client:
        info = await client.info()
        assert info.runtime.launch == {"parallel": 1} and info.runtime.settings["total_slots"] == 1
        first = info.startup
        assert first is not None and first.launched and first.stopped_previous_s is None
        assert 0 < first.answering_s <= first.ready_s <= first.health_s < 60  # type: ignore[operator]
        weights = info.runtime.weights
        assert weights is not None and (weights.format, weights.quantization, weights.context_length) == ("gguf", "F32", 2048)
        old_pid = node.process.pid  # type: ignore[union-attr]

        info = await client.switch_runtime(RuntimeSwitch(runtime="llamacpp", settings=RuntimeSettings(parallel=2),
                                                         drop_page_cache=True))  # fmt: skip
        assert info.runtime.launch == {"parallel": 2} and info.runtime.settings["total_slots"] == 2
        assert info.startup is not None and info.startup.stopped_previous_s is not None
        # Root here may drop the page cache; anywhere else the node says why it kept it.
        expected = "dropped" if os.access("/proc/sys/vm/drop_caches", os.W_OK) else "kept: "
        assert (info.startup.page_cache or "").startswith(expected)
        assert info.startup.launched_at > first.launched_at
        assert not alive(old_pid) and node.process is not None and node.process.pid != old_pid
        assert (await client.health()).status == "ok"
        assert (await client.infer(REQUEST)).completion_tokens == 6

        # A model file that does not exist is refused before anything stops.
        pid = node.process.pid
        with pytest.raises(ShimError) as bad:
            await client.switch_runtime(RuntimeSwitch(runtime="llamacpp", model=str(tmp_path / "nope.gguf")))
        assert bad.value.status == 400 and "does not exist" in str(bad.value)
        assert node.process.pid == pid and (await client.health()).status == "ok"
        # A runtime that exits while starting: 502 with its reason, and the node says why it serves nothing...
        with pytest.raises(ShimError) as failed:
            await client.switch_runtime(RuntimeSwitch(runtime="llamacpp", settings=RuntimeSettings(extra_args=["--no-such-flag"])))
        assert failed.value.status == 502 and "exited with code" in str(failed.value)
        health = await client.health()
        assert health.status == "unavailable" and (health.reason or "").startswith("no runtime: llamacpp did not start")
        # ... until the next switch, which serves again.
        info = await client.switch_runtime(RuntimeSwitch(runtime="llamacpp"))
        assert (await client.health()).status == "ok" and info.runtime.launch == {}
        # A setting the runtime has not: 422, nothing stopped.
        pid = node.process.pid
        async with aiohttp.ClientSession() as http:
            async with http.post(node.url + "/runtime", json={"runtime": "llamacpp", "settings": {"max_queue": 3}}) as resp:
                assert resp.status == 422 and "llamacpp has no setting max_queue" in (await resp.json())["error"]
        assert node.process.pid == pid


@pytest.mark.timeout(60)  # a switch that starves the node's event loop would hang here
async def test_health_says_how_long_a_switch_has_lasted_and_a_watched_node_finishes_it(tmp_path: Path) -> None:
    """/health gives `switching_s` for the whole switch, and `wait_exit` (what `beacon node up` runs
    beside the shim) waits out the switch's stopped runtime instead of spinning on it."""
    llama_server_binary()
    async with LocalNode(NodeConfig(port=0, data_dir=tmp_path / "node")) as node, ShimClient(node.url) as client:
        assert (await client.health()).switching_s is None
        watch = asyncio.create_task(node.wait_exit())
        seen = []

        async def poll() -> None:
            while True:
                seen.append(await client.health())
                await asyncio.sleep(0.005)

        poller = asyncio.create_task(poll())
        try:
            info = await client.switch_runtime(RuntimeSwitch(runtime="llamacpp", settings=RuntimeSettings(parallel=2)))
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        assert info.runtime.launch == {"parallel": 2}
        during = [h for h in seen if h.switching_s is not None]
        assert any(h.status == "unavailable" for h in during), seen
        assert all(h.switching_s >= 0 for h in during)  # type: ignore[operator]
        assert [h.switching_s for h in during] == sorted(h.switching_s for h in during)  # type: ignore[type-var]
        after = await client.health()
        assert after.status == "ok" and after.switching_s is None
        assert not watch.done()  # the runtime it stopped was the switch's, not a crash
        # A switch that fails ends too: the node serves nothing, and says no switch is under way.
        bad = RuntimeSwitch(runtime="llamacpp", settings=RuntimeSettings(extra_args=["--no-such-flag"]))
        with pytest.raises(ShimError):
            await client.switch_runtime(bad)
        failed = await client.health()
        assert failed.status == "unavailable" and failed.switching_s is None and not watch.done()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_a_node_that_fronts_a_runtime_it_did_not_launch_cannot_switch(tmp_path: Path, llama_server: str) -> None:
    async with serve_app(create_app(ShimConfig(runtime="llamacpp", upstream=llama_server, data_dir=tmp_path))) as url:
        async with ShimClient(url) as client:
            with pytest.raises(ShimError) as refused:
                await client.switch_runtime(RuntimeSwitch(runtime="llamacpp"))
            assert refused.value.status == 409 and "did not launch" in str(refused.value)
            assert (await client.info()).startup is None


async def test_a_node_refuses_a_switch_to_a_runtime_its_image_does_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi image says what it holds (BEACON_IMAGE_RUNTIMES, read by `beacon node up`): a switch
    to vLLM there is a clear 422 with nothing stopped, not a runtime that fails to start."""
    llama_server_binary()
    monkeypatch.setenv("BEACON_IMAGE_RUNTIMES", "llamacpp ollama,dmr")
    held = load_settings().held_runtimes()
    assert held == ["llamacpp", "ollama", "dmr"]
    config = NodeConfig(port=0, data_dir=tmp_path / "node", runtimes=held)
    async with LocalNode(config) as node, ShimClient(node.url) as client:
        before = await client.info()
        assert before.extra["image_runtimes"] == held  # the requestor can read it
        with pytest.raises(ShimError) as refused:
            await client.switch_runtime(RuntimeSwitch(runtime="vllm"))
        assert refused.value.status == 422
        assert "this node's image holds llamacpp, ollama, dmr, not vllm" in str(refused.value)
        assert (await client.health()).status == "ok"  # the runtime it had still serves
        assert (await client.info()).runtime.name == "llamacpp"


async def test_the_shim_passes_text_completions_through_streamed_or_not(shim_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"prompt": "The sky is", "max_tokens": 5, "ignore_eos": True}
        async with http.post(shim_url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            data = await resp.json()
        assert data["object"] == "text_completion" and data["model"] == "beacon-tiny"
        assert data["usage"]["completion_tokens"] == 5 and isinstance(data["choices"][0]["text"], str)
        async with http.post(shim_url + "/v1/completions", json={**body, "stream": True,
                                                                 "stream_options": {"include_usage": True}}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_sse(resp)
        assert events[-1] == "[DONE]" and any('"completion_tokens":5' in e for e in events)
        async with http.post(shim_url + "/v1/completions", json={"max_tokens": 5}) as resp:
            assert resp.status == 422 and "prompt" in (await resp.json())["error"]


async def test_ollama_as_launched_serialises_by_default_reports_its_load_and_honours_keep_alive(
    tmp_path: Path, fake_runtimes: Path
) -> None:
    config = NodeConfig(runtime="ollama", model=OLLAMA_MODEL, port=0, data_dir=tmp_path / "node",
                        settings=RuntimeSettings(parallel=1, keep_alive="1s", max_queue=1))  # fmt: skip
    async with LocalNode(config) as node, ShimClient(node.url) as client:
        info = await client.info()
        assert info.runtime.settings["num_parallel"] == 1 and info.runtime.settings["num_parallel_source"] == "launch"
        assert info.runtime.settings["keep_alive"] == "1s" and info.runtime.settings["max_queue"] == "1"
        assert info.runtime.weights is not None and info.runtime.weights.quantization == "Q4_K_M"
        # The first request loads the model: Ollama's load_duration says how long.
        first = await client.infer(REQUEST)
        assert first.server_timings is not None and first.server_timings["load_ms"] >= 290
        assert first.ttft_ms is not None and first.ttft_ms >= 290
        second = await client.infer(REQUEST)
        assert second.server_timings["load_ms"] < 100  # type: ignore[index]
        # OLLAMA_NUM_PARALLEL=1: two at once run one after the other; a third waiting past
        # OLLAMA_MAX_QUEUE=1 is refused (503 from Ollama, a 502 from the shim).
        outcomes = await asyncio.gather(*(client.infer(REQUEST) for _ in range(3)), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ShimError)]
        assert len(refused) == 1 and "server busy" in str(refused[0])
        assert (await stats(node))["max_in_flight"] == 1 and (await stats(node))["busy_refusals"] == 1
        # OLLAMA_KEEP_ALIVE=1s: idle longer and the next request pays for the load again.
        await asyncio.sleep(1.3)
        after_idle = await client.infer(REQUEST)
        assert after_idle.server_timings["load_ms"] >= 290  # type: ignore[index]
        assert (await stats(node))["loads"] == 2

        # Two slots: requests overlap.
        await client.switch_runtime(RuntimeSwitch(runtime="ollama", model=OLLAMA_MODEL, settings=RuntimeSettings(parallel=2)))
        await asyncio.gather(*(client.infer(REQUEST) for _ in range(2)))
        assert (await stats(node))["max_in_flight"] == 2


async def test_dmr_as_launched_takes_parallel_from_llama_args_and_unloads_after_idle(
    tmp_path: Path, fake_runtimes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DMR_IDLE_UNLOAD_S", "0.5")  # DMR's is 5 minutes (loader.go)
    config = NodeConfig(runtime="dmr", model=DMR_MODEL, port=0, data_dir=tmp_path / "node", settings=RuntimeSettings(parallel=1))
    async with LocalNode(config) as node, ShimClient(node.url) as client:
        info = await client.info()
        assert info.runtime.weights is not None and info.runtime.weights.context_length == 8192
        first = await client.infer(REQUEST)
        assert first.ttft_ms is not None and first.ttft_ms >= 290  # the runner starts on the first request
        assert first.server_timings is not None and "load_ms" not in first.server_timings  # DMR reports no load figure
        warm = await client.infer(REQUEST)
        assert warm.ttft_ms is not None and warm.ttft_ms < 250
        await asyncio.gather(*(client.infer(REQUEST) for _ in range(2)))
        assert (await stats(node))["max_in_flight"] == 1  # LLAMA_ARGS --parallel 1
        await asyncio.sleep(0.8)
        cold_again = await client.infer(REQUEST)
        assert cold_again.ttft_ms is not None and cold_again.ttft_ms >= 290
        assert (await stats(node))["loads"] == 2
