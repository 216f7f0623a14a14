"""Our GPU demand on the real yagna market, offline on loopback (golem.md's recipe).

Runs the `yagna` binary from the PyPI package golem-node (the `test` extra installs it) with a
temporary data dir, a random app key and the relay pointed at an unused loopback port; subscribes
our demand through yapapi's REST wrapper, reads it back, unsubscribes. Also runs
`beacon golem doctor` against it. Skips, saying why, where no `yagna` binary is found.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from yapapi.config import ApiConfig
from yapapi.props import Activity, NodeInfo
from yapapi.props.builder import DemandBuilder
from yapapi.rest import Configuration
from yapapi.rest.market import Market

from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.doctor import run_doctor
from beacon_golem.requestor.fleets.golem.payload import GPU_CONSTRAINT, build_payload
from beacon_golem.requestor.fleets.golem.strategy import GpuMarketStrategy, OfferCriteria
from tests.support import ROOT

pytestmark = pytest.mark.yagna

#: yagna, even offline, tries outside hosts on its own (a release check, blockchain RPC DNS
#: look-ups) and listens on 0.0.0.0:11500. It only ever runs here inside a network namespace
#: of its own whose only interface is loopback: nothing it tries can leave the machine.
ISOLATED = os.environ.get("BEACON_ISOLATED_NET") == "1"


def can_isolate() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    done = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    return done.returncode == 0


def test_yagna_tests_run_in_a_network_namespace_of_their_own() -> None:
    if ISOLATED:
        pytest.skip("already inside the namespace")
    if yagna_binary() is None:
        pytest.skip("no `yagna` binary on PATH or beside this Python: pip install golem-node (the test extra)")
    if not can_isolate():
        pytest.skip("cannot make a network namespace (unshare -n): yagna is not started without one")
    inner = f"ip link set lo up && BEACON_ISOLATED_NET=1 exec {sys.executable} -m pytest -q -p no:cacheprovider {__file__}"
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", inner], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 passed, 1 skipped" in done.stdout  # inside: the yagna tests ran; this one skipped itself


def yagna_binary() -> Path | None:
    found = shutil.which("yagna") or (Path(sys.executable).parent / "yagna")
    path = Path(found)
    return path if path.exists() else None


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, key: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> float:
    started = time.monotonic()
    request = urllib.request.Request(url + "/me", headers={"Authorization": f"Bearer {key}"})
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"yagna exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"yagna REST API not up after {timeout_s} s")


@pytest.fixture(scope="module")
def yagna(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if not ISOLATED:
        pytest.skip("yagna runs only inside its own network namespace (see the test above)")
    binary = yagna_binary()
    if binary is None:
        pytest.skip("no `yagna` binary on PATH or beside this Python: pip install golem-node (the test extra)")
    home = tmp_path_factory.mktemp("yagna")
    key = secrets.token_hex(16)
    url = f"http://127.0.0.1:{unused_port()}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "YAGNA_DATADIR": str(home / "data"),
        "GSB_URL": f"unix:{home}/yagna.sock",
        "YAGNA_AUTOCONF_APPKEY": key,
        "YA_NET_TYPE": "hybrid",
        "YA_NET_RELAY_HOST": f"127.0.0.1:{unused_port()}",  # nobody listens: no relay, no DNS wait
    }
    log = (home / "yagna.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "service", "run", "--api-url", url, "--disable-metrics-push"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        took = wait_until_up(url, key, proc)
        print(f"yagna REST API up in {took:.1f} s")
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def our_demand() -> DemandBuilder:
    """The demand the engine would publish: our payload and strategy, plus the engine's own bits."""
    config = GolemFleetConfig(
        image="https://example.invalid/beacon-node.gvmi",
        image_hash="0" * 56,
        budget=1,
        max_price_glm_per_hour=Decimal("0.5"),
        min_vram_gib=16,
    )

    async def no_network(ref: object) -> str:
        return "hash:sha3:" + "0" * 56 + ":https://example.invalid/beacon-node.gvmi"

    payload = await build_payload(config, no_network)
    demand = DemandBuilder()
    demand.add(Activity(expiration=datetime.now(UTC) + timedelta(minutes=30), multi_activity=True))
    demand.add(NodeInfo(subnet_tag="public"))
    await demand.decorate(payload, GpuMarketStrategy(OfferCriteria.from_config(config)))
    return demand


async def test_gpu_demand_round_trips_through_the_yagna_market(yagna: tuple[str, str]) -> None:
    url, key = yagna
    demand = await our_demand()
    conf = Configuration(api_config=ApiConfig(app_key=key, api_url=url))
    async with conf.market() as client:
        market = Market(client)
        subscription = await demand.subscribe(market)
        try:
            listed = [s async for s in market.subscriptions()]
            ours = [s for s in listed if s.id == subscription.id]
            assert len(ours) == 1, [s.id for s in listed]
            back = ours[0].details
            assert back.properties["golem.srv.comp.task_package"] == demand.properties["golem.srv.comp.task_package"]
            assert back.properties["golem.node.debug.subnet"] == "public"
            constraints = " ".join(back.constraints.split())
            for part in (
                GPU_CONSTRAINT,
                "(golem.!exp.gap-35.v1.inf.gpu.d0.model=*)",
                "(golem.runtime.name=vm-nvidia)",
                "(golem.runtime.capabilities=vpn)",
                "(golem.com.pricing.model=linear)",
            ):
                assert part in constraints
            assert constraints == " ".join(demand.constraints.split())
        finally:
            await subscription.delete()
        left = [s.id async for s in market.subscriptions()]
        assert subscription.id not in left


async def test_doctor_against_the_real_yagna(yagna: tuple[str, str]) -> None:
    url, key = yagna
    checks = {c.name: c for c in await run_doctor(api_url=url, app_key=key, network="holesky")}
    assert checks["yagna"].ok and checks["app key"].ok
    assert "identity 0x" in checks["app key"].detail
    # a fresh data dir has no payment account; the fix names the command
    account = checks["payment account"]
    assert not account.ok and account.fix == "yagna payment fund --network holesky"
    assert checks["funds"].skipped
    lines = [c.line() for c in checks.values()]
    assert not any(key in line for line in lines)

    wrong = {c.name: c for c in await run_doctor(api_url=url, app_key="not-" + key, network="holesky")}
    assert wrong["yagna"].ok and not wrong["app key"].ok
    assert "HTTP 401" in wrong["app key"].detail and "app-key" in (wrong["app key"].fix or "")
    assert not any(key in c.line() for c in wrong.values())


def test_no_binary_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the fixture's skip rests on: no yagna on PATH and none beside this Python."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert yagna_binary() is None
