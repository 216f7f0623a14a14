"""What only DockerModelRunnerAdapter does, against a fake DMR on loopback.

The fake (tests/fakes/dmr.py) follows Docker's "DMR REST API" page,
https://docs.docker.com/ai/model-runner/api-reference/ (GET /models, OpenAI endpoints under
/engines/llama.cpp/v1/), and the standalone server's source, github.com/docker/model-runner
(pkg/inference/scheduling/http_handler.go: /engines/status, `model` required;
pkg/inference/models/api.go: the /models objects; pkg/envconfig/envconfig.go and
pkg/server/server.go: MODEL_RUNNER_PORT, LLAMA_ARGS). Its stream is llama-server's, which
DMR passes through unchanged (llama.cpp tools/server/README.md; the shape was checked against
a real llama-server here). No real DMR runs here: it cannot be installed on these machines.
What every adapter does (status, errors, the shim's health, inference and passthrough) is
tested against this fake and the others in test_adapters.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from beacon_golem.node.runtimes import dmr
from beacon_golem.node.runtimes.dmr import DockerModelRunnerAdapter, model_names
from tests.fakes.dmr import FakeDMR
from tests.node.runtimes.cases import DMR

MODEL = DMR.model
MESSAGES = DMR.messages
ask = DMR.ask


# ---- launch ---------------------------------------------------------------------------------
def test_launch_sets_the_servers_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmr.shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = DockerModelRunnerAdapter.launch("ai/smollm2", host="127.0.0.1", port=13434, parallel=8)
    assert spec.argv == ["model-runner"]
    # MODEL_RUNNER_HOST is the CLI's variable, not the server's; LLAMA_ARGS replaces the
    # defaults (-ngl 999 --metrics), so they are kept.
    assert spec.env == {"MODEL_RUNNER_PORT": "13434", "LLAMA_ARGS": "-ngl 999 --metrics --parallel 8"}
    assert DockerModelRunnerAdapter.launch("m").env["MODEL_RUNNER_PORT"] == "12434"
    monkeypatch.setattr(dmr.shutil, "which", lambda name: "/usr/local/bin/dmr" if name == "dmr" else None)
    assert DockerModelRunnerAdapter.launch("m").argv == ["dmr", "serve"]


def test_model_names_take_the_first_tag_else_the_id() -> None:
    listing = [
        {"id": "sha256:aa", "tags": ["ai/smollm2:latest", "ai/smollm2:360M"], "created": 1, "config": {}},
        {"id": "sha256:bb", "tags": [], "created": 2, "config": {}},
    ]
    assert model_names(listing) == ["ai/smollm2:latest", "sha256:bb"]
    assert model_names({"object": "list"}) == []


# ---- generation -----------------------------------------------------------------------------
async def test_request_goes_to_the_llama_cpp_engine_path(session: aiohttp.ClientSession) -> None:
    async with FakeDMR() as fake:
        await DockerModelRunnerAdapter(fake.url, session).generate(ask(max_tokens=3, ignore_eos=True), MODEL)
    assert fake.paths() == ["POST /engines/llama.cpp/v1/chat/completions"]
    assert fake.bodies("/engines/llama.cpp/v1/chat/completions") == [
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,  # DMR hands the body to llama-server unchanged
        }
    ]


# ---- status ---------------------------------------------------------------------------------
async def test_status_not_ready_while_the_backend_installs(session: aiohttp.ClientSession) -> None:
    async with FakeDMR(engine="Installing: downloading") as fake:
        status = await DockerModelRunnerAdapter(fake.url, session).status()
    assert status.reachable and not status.ready
    assert "Installing: downloading" in (status.reason or "")
    assert status.models == [MODEL]
