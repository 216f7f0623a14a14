"""Sandbox VMs for real: namespaces, the real start-node.sh, the bridge, and nothing left behind.

Every VM here is a real set of Linux namespaces running real commands; the node test runs
vm_images/common/start-node.sh with the baked tiny model and reaches its shim over the bridge.
The make_vm fixture checks after each test that no process, mount or file outlived its VMs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# The exe-script commands of the requestor's service: these tests send exactly what a provider gets.
from beacon_golem.requestor.fleets.golem.service import HEALTH, START_NODE, WRITE_ENV
from beacon_golem.sandbox.image import FORMAT, SandboxImage, build_image, image_hash, parse_image
from beacon_golem.sandbox.vm import NamespaceVm, VmError, create_vm
from beacon_golem.sandbox.vm_dockerfile import final_stage

pytest.register_assert_rewrite("tests.sandbox.vm_fixtures")  # before the import below

from tests.sandbox.vm_fixtures import (  # noqa: E402
    MakeVm,
    host_mounts_under,
    http_get,
    http_post,
    start_id_server,
)

# The fixtures (make_vm, node_image, tiny_model_file, namespaces) live there as a plugin.
pytest_plugins = ["tests.sandbox.vm_fixtures"]
pytestmark = pytest.mark.timeout(120)


def sh(script: str, *args: str) -> tuple[str, list[str]]:
    return "/bin/sh", ["-c", script, "sh", *args]


# ---- the image ---------------------------------------------------------------------------------
def test_image_follows_the_dockerfile_and_this_machine(node_image: bytes, tiny_model_file: Path) -> None:
    image = parse_image(node_image)
    assert image.volumes == ["/data", "/models", "/cache"]  # VOLUME in vm_images/llamacpp/Dockerfile
    assert image.workdir == "/opt/beacon"
    assert image.env["BEACON_RUNTIME"] == "llamacpp"
    assert image.env["BEACON_BAKED_DIR"] == "/opt/beacon/baked"
    assert image.env["BEACON_BAKED_MODEL"] == "beacon-tiny.gguf"
    assert image.env["BEACON_PYTHON"] == sys.executable
    assert image.env["PATH"].startswith(str(Path(sys.executable).parent) + ":")
    assert "/opt/llama.cpp/llama-server" not in image.env.values()  # the real image's paths are gone
    assert image.baked == {"beacon-tiny.gguf": str(tiny_model_file.resolve())}
    assert len(node_image) < 4096  # the model is referenced, not embedded
    assert build_image("llamacpp", model_path=tiny_model_file) == node_image  # canonical bytes
    assert len(image_hash(node_image)) == 56


def test_the_final_stage_of_a_dockerfile_is_read(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG GLOBAL=1\nFROM a AS build\nENV SKIP=1\nVOLUME /build\n"
        'FROM b\n# a comment\nARG MODEL=tiny\nENV A=1 \\\n    # inside a continuation\n    B="two words" \\\n'
        '    C=${MODEL}-$A D=$GLOBAL\nENV LEGACY some value\nVOLUME ["/data", "/models"]\nVOLUME /cache /data\n'
        "WORKDIR /opt/$A\n"
    )
    stage = final_stage(dockerfile)
    assert stage.env == {"A": "1", "B": "two words", "C": "tiny-1", "D": "", "LEGACY": "some value"}
    assert stage.volumes == ["/data", "/models", "/cache"]
    assert stage.workdir == "/opt/1"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GVMI\x00" * 100_000, "not a sandbox image"),
        (b"\xff\xfe binary", "not JSON"),
        (b'{"format": "docker"}', "format is not"),
        (json.dumps({"format": FORMAT, "runtime": "llamacpp"}).encode(), "volumes"),
        (
            json.dumps({"format": FORMAT, "runtime": "x", "volumes": ["data"], "start_script": "/s"}).encode(),
            "absolute",
        ),
    ],
    ids=["gvmi-sized", "binary", "other-format", "no-volumes", "relative-volume"],
)
def test_bad_images_are_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_image(data)
    assert "\n" not in str(info.value)


async def test_a_bad_image_fails_deploy_with_a_vm_error(make_vm: MakeVm, node_image: bytes, tmp_path: Path) -> None:
    with pytest.raises(VmError, match="deploy failed: not a sandbox image"):
        await make_vm("bad", image=b"\x00not an image", start=False)
    missing = parse_image(node_image).model_copy(update={"start_script": str(tmp_path / "nope.sh")})
    with pytest.raises(VmError, match="start script .*nope.sh is not an executable file"):
        await make_vm("noscript", image=missing.to_bytes(), start=False)
    gone = parse_image(node_image).model_copy(update={"baked": {"m.gguf": str(tmp_path / "m.gguf")}})
    with pytest.raises(VmError, match="baked m.gguf"):
        await make_vm("nomodel", image=gone.to_bytes(), start=False)


async def test_a_vm_that_cannot_boot_says_why_in_one_line(make_vm: MakeVm, node_image: bytes, tmp_path: Path) -> None:
    script = tmp_path / "start-node.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    vm = await make_vm(
        "noboot", image=parse_image(node_image).model_copy(update={"start_script": str(script)}).to_bytes(), start=False
    )
    script.unlink()  # gone between deploy and start: the VM cannot mount it
    with pytest.raises(VmError, match=r"^vm noboot: did not boot: cannot build the VM: .*start-node.sh") as info:
        await vm.start()
    assert "\n" not in str(info.value)
    assert not vm.alive and vm.processes() == []


async def test_the_vm_refuses_what_its_state_does_not_allow(make_vm: MakeVm, tmp_path: Path) -> None:
    vm = await make_vm("early", start=False)
    with pytest.raises(VmError, match="cannot run /bin/true: the VM is deployed"):
        await vm.run("/bin/true", [], 5)
    with pytest.raises(VmError, match="cannot connect to port 8080"):
        await vm.open_tcp(8080)
    with pytest.raises(VmError, match="is not a VM id"):
        await create_vm(tmp_path, "../escape")


# ---- commands and files --------------------------------------------------------------------------
async def test_a_command_returns_its_exit_code_and_both_streams(make_vm: MakeVm) -> None:
    vm = await make_vm("cmd")
    out = await vm.run(*sh('echo "out $1"; echo "err $1" >&2; pwd; echo "$BEACON_RUNTIME $HOME"; exit 7', "x"), 10)
    assert out.rc == 7
    assert out.stdout == "out x\n/opt/beacon\nllamacpp /root\n"  # the image's WORKDIR and ENV
    assert out.stderr == "err x\n"
    big = await vm.run(*sh("head -c 3000000 /dev/zero | tr '\\0' a"), 10)
    assert big.rc == 0 and big.stdout.startswith("[1951424 bytes cut]\n") and big.stdout.endswith("a" * 100)


async def test_failures_to_run_are_vm_errors(make_vm: MakeVm) -> None:
    vm = await make_vm("cmdfail")
    with pytest.raises(VmError, match="cannot run /no/such/binary: No such file or directory"):
        await vm.run("/no/such/binary", [], 5)
    started = time.monotonic()
    with pytest.raises(VmError, match="did not finish within 0.5 s"):
        await vm.run(*sh("sleep 30"), 0.5)
    assert time.monotonic() - started < 5
    await gone(vm, "sleep")  # the timed-out command was killed, not left running


async def gone(vm: NamespaceVm, name: str, timeout_s: float = 5) -> None:
    """Until no process called `name` runs in the VM (SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while names := [n for n in (process_name(p) for p in vm.processes()) if n == name]:
        assert time.monotonic() < deadline, f"still running in the VM: {names}"
        await asyncio.sleep(0.02)


async def running(vm: NamespaceVm, name: str, count: int, timeout_s: float = 5) -> None:
    """Until `count` processes called `name` run in the VM (a fork takes a moment to exec)."""
    deadline = time.monotonic() + timeout_s
    while [process_name(p) for p in vm.processes()].count(name) < count:
        assert time.monotonic() < deadline, f"not {count} {name} in the VM"
        await asyncio.sleep(0.02)


def process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return ""


async def test_files_go_in_and_out_of_the_volumes_only(make_vm: MakeVm, tmp_path: Path) -> None:
    vm = await make_vm("files")
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(700_000))
    await vm.transfer(str(source), "container:/data/up/in.bin")
    seen = await vm.run(*sh("sha256sum /data/up/in.bin | cut -c1-64"), 10)  # the VM sees it at once
    assert seen.stdout.strip() == hashlib.sha256(source.read_bytes()).hexdigest()
    await vm.run(*sh("mkdir -p /models/out && cp /data/up/in.bin /models/out/copy.bin"), 10)
    back = tmp_path / "out" / "copy.bin"
    await vm.transfer("container:/models/out/copy.bin", back.as_uri())
    assert back.read_bytes() == source.read_bytes()
    # As on Golem: the exe-unit reaches only the volumes, not the VM's own root filesystem.
    await vm.run(*sh("echo hi > /tmp/x"), 5)
    with pytest.raises(VmError, match=r"path not found in container: /tmp/x \(transfers reach only the volumes\)"):
        await vm.transfer("container:/tmp/x", str(tmp_path / "x"))
    await vm.run(*sh("ln -s /etc/hostname /data/escape"), 5)
    with pytest.raises(VmError, match="leads out of its volume"):
        await vm.transfer("container:/data/escape", str(tmp_path / "escape"))
    with pytest.raises(VmError, match=r"/data/nope: No such file or directory"):
        await vm.transfer("container:/data/nope", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists() and not list(tmp_path.glob(".nope*"))
    with pytest.raises(VmError, match="only container:, file:// and absolute paths"):
        await vm.transfer("gftp://0x12/abc", "container:/data/x")
    with pytest.raises(VmError, match="exactly one side"):
        await vm.transfer(str(source), str(tmp_path / "x"))


# ---- isolation -----------------------------------------------------------------------------------
async def test_two_vms_both_listen_on_8080_and_open_tcp_reaches_the_right_one(make_vm: MakeVm) -> None:
    one, two = await asyncio.gather(make_vm("alpha"), make_vm("beta"))
    await asyncio.gather(start_id_server(one), start_id_server(two))
    assert await http_get(one, "/") == (200, b"alpha")
    assert await http_get(two, "/") == (200, b"beta")
    # Both really hold 0.0.0.0:8080: a second server in the same VM cannot bind it.
    clash = await one.run(*sh('python3 -c "import socket; socket.socket().bind((\\"0.0.0.0\\", 8080))"'), 10)
    assert clash.rc != 0 and "Address already in use" in clash.stderr


async def test_a_vm_under_a_deep_workdir_still_boots_and_answers(make_vm: MakeVm) -> None:
    """Its sockets' full paths are longer than sun_path's 108 bytes (found by the e2e tests, whose
    pytest directories are deep): bound and reached relative to their directory."""
    vm = await make_vm("deep-" + "d" * 58)
    assert len(str(vm.control_socket)) > 108
    await start_id_server(vm)
    assert await http_get(vm, "/") == (200, vm.vm_id.encode())
    assert (await vm.run(*sh("echo ok"), 10)).stdout == "ok\n"


async def test_open_tcp_fails_where_nothing_listens(make_vm: MakeVm) -> None:
    vm = await make_vm("quiet")
    with pytest.raises(VmError, match="nothing listens on port 8080"):
        await vm.open_tcp(8080)


async def test_a_vm_reaches_nothing_but_its_own_loopback(make_vm: MakeVm, tmp_path: Path) -> None:
    vm = await make_vm("island")
    with socket.socket() as host_server:
        host_server.bind(("127.0.0.1", 0))
        host_server.listen()
        port = host_server.getsockname()[1]
        probe = (
            "import socket, sys\n"
            "for host in sys.argv[1:]:\n"
            "    try: socket.create_connection((host, int(PORT)), timeout=2); print(host, 'reached')\n"
            "    except OSError as e: print(host, 'refused' if isinstance(e, ConnectionRefusedError) else 'unreachable')\n"
        ).replace("PORT", str(port))
        out = await vm.run("python3", ["-c", probe, "127.0.0.1", "10.0.0.1", "8.8.8.8"], 20)
    assert out.stdout.split("\n")[:3] == ["127.0.0.1 refused", "10.0.0.1 unreachable", "8.8.8.8 unreachable"]
    links = await vm.run("ls", ["/sys/class/net"], 5)
    assert links.stdout.split() == ["lo"]
    # The sandbox's directory (the other VMs' sockets, volumes) and the host's /tmp and /run are hidden.
    hidden = await vm.run(*sh('ls -A "$1" /tmp /run | grep -v :$ | grep . ; true', str(vm.root)), 5)
    # Only the way back to the venv and Python may show there (mounted back when they live under /tmp).
    way_back = {
        p.relative_to(top).parts[0]
        for top in (Path("/tmp"), Path("/run"))
        for p in (Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve())
        if p.is_relative_to(top) and p != top
    }
    assert set(hidden.stdout.split()) <= way_back, hidden.stdout
    assert (await vm.run("hostname", [], 5)).stdout == "island\n"


# ---- the node ------------------------------------------------------------------------------------
async def bring_up_node(make_vm: MakeVm, vm_id: str, user_namespace: bool) -> tuple[NamespaceVm, float]:
    """What the requestor's service sends, in order: the env file, the start script in the
    background, /health inside the VM until it answers. Returns the VM and deploy-to-ready seconds."""
    started = time.monotonic()
    vm = await make_vm(vm_id, user_namespace=user_namespace)
    env = ["BEACON_RUNTIME=llamacpp", "BEACON_PORT=8080", "BEACON_HOST=0.0.0.0", "BEACON_DATA_DIR=/data"]
    assert (await vm.run(*sh(WRITE_ENV, "/data", *env), 30)).rc == 0
    assert (await vm.run(*sh(START_NODE, "/data", "/opt/beacon/start-node.sh"), 30)).rc == 0
    while (await vm.run(*sh(HEALTH, "8080", "/data"), 30)).rc != 0:
        assert time.monotonic() - started < 60, (vm.volume("/data") / "logs" / "node.log").read_text()[-2000:]
        await asyncio.sleep(0.1)
    return vm, time.monotonic() - started


@pytest.mark.parametrize("user_namespace, nodes", [(False, 2), (True, 1)], ids=["root", "user-namespace"])
async def test_the_real_start_script_brings_up_nodes(make_vm: MakeVm, user_namespace: bool, nodes: int) -> None:
    """Real nodes (start-node.sh, `beacon node up`, llama-server on the baked tiny model), each on
    its VM's 0.0.0.0:8080, reached over the bridge as the VPN reaches them. The user namespace
    variant builds the root as an unprivileged user's VM must (no overlay on /)."""
    if os.geteuid() != 0 and not user_namespace:
        pytest.skip("only root can make a VM without a user namespace")
    ups = await asyncio.gather(*(bring_up_node(make_vm, f"node-{i}", user_namespace) for i in range(nodes)))
    for vm, _ in ups:
        assert (await http_get(vm, "/health"))[0] == 200
        status, body = await http_get(vm, "/info")
        assert status == 200 and json.loads(body)["system"]["hostname"] == vm.vm_id  # this VM's node, no other
        assert "/opt/beacon/baked/beacon-tiny.gguf" in body.decode()  # the baked model, found by start-node.sh
        chat = json.dumps({"model": "beacon-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        status, body = await http_post(vm, "/v1/chat/completions", chat.encode())
        assert status == 200, body[:300]
        log = (vm.volume("/data") / "logs" / "start-node.log").read_text()
        assert "node up --runtime llamacpp --host 0.0.0.0 --port 8080 --data-dir /data" in log
    times = ", ".join(f"{seconds:.2f}" for _, seconds in ups)
    print(f"\nsandbox VM: deploy to /health 200 in {times} s ({nodes} at once)")
    assert max(seconds for _, seconds in ups) < 30


# ---- the end ---------------------------------------------------------------------------------------
async def test_kill_leaves_no_process_and_closes_the_port(make_vm: MakeVm) -> None:
    vm = await make_vm("doomed")
    await start_id_server(vm)
    # A detached daemon and a double fork: neither is a child of the agent any more.
    await vm.run(*sh("setsid sleep 1000 > /dev/null 2>&1 < /dev/null & (sleep 1001 &) ; true"), 10)
    await running(vm, "sleep", 2)
    procs = [psutil.Process(pid) for pid in vm.processes()]
    assert any(p.name().startswith("python") for p in procs)  # the ID server
    await vm.kill()
    assert not vm.alive
    assert [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert vm.processes() == []
    with pytest.raises(VmError, match="cannot connect to port 8080: the VM is dead"):
        await vm.open_tcp(8080)
    with pytest.raises(VmError, match="the VM is dead"):
        await vm.run("/bin/true", [], 5)
    await vm.kill()  # idempotent


async def test_a_vm_that_dies_by_itself_is_noticed(make_vm: MakeVm) -> None:
    vm = await make_vm("crash")
    agent = await vm.run(*sh("echo $PPID"), 5)  # the shell's parent: the agent
    with pytest.raises(VmError):
        await vm.run(*sh("kill -9 $1", agent.stdout.strip()), 5)
    for _ in range(100):
        if not vm.alive:
            break
        await asyncio.sleep(0.05)
    assert not vm.alive and vm.processes() == []
    with pytest.raises(VmError, match="the VM is dead"):
        await vm.open_tcp(8080)


async def test_terminate_frees_everything_or_keeps_the_logs(
    tmp_path: Path, node_image: bytes, namespaces: None
) -> None:
    root = tmp_path / "sb"
    vm = await create_vm(root, "tidy")
    await vm.deploy(node_image)
    await vm.start()
    assert isinstance(vm, NamespaceVm)
    await vm.run(*sh("mkdir -p /data/logs && echo hello > /data/logs/node.log && echo x > /models/m"), 5)
    pids = vm.processes()
    assert pids and host_mounts_under(root) == []  # the VM's mounts never show on the host
    await vm.terminate()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not (root / "tidy").exists()
    await vm.terminate()  # idempotent

    kept = await create_vm(root, "kept", keep_logs=True)
    await kept.deploy(node_image)
    await kept.start()
    await kept.run(*sh("mkdir -p /data/logs && echo hello > /data/logs/node.log && echo x > /models/m"), 5)
    await kept.terminate()
    assert (root / "kept" / "volumes" / "data" / "logs" / "node.log").read_text() == "hello\n"
    assert sorted(p.name for p in (root / "kept").rglob("*")) == ["agent.log", "data", "logs", "node.log", "volumes"]


HOST = """
import asyncio, sys
import psutil
from pathlib import Path
from beacon_golem.sandbox.vm import create_vm
async def main():
    vm = await create_vm(Path(sys.argv[1]), "orphan")
    await vm.deploy(Path(sys.argv[2]).read_bytes())
    await vm.start()
    await vm.run("/bin/sh", ["-c", "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &"], 10)
    while "sleep" not in [psutil.Process(pid).name() for pid in vm.processes()]:
        await asyncio.sleep(0.02)
    print("PIDS", *vm.processes(), flush=True)
    await asyncio.sleep(1000)
asyncio.run(main())
"""


async def test_a_vm_dies_with_the_sandbox_process(tmp_path: Path, node_image: bytes, namespaces: None) -> None:
    """SIGKILL the process that made the VM: nothing of the VM survives it."""
    image = tmp_path / "image.json"
    image.write_bytes(node_image)
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(tmp_path / "sb"), str(image)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(pids_line, host), 30)
        procs = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        assert len(procs) >= 3 and any(p.name() == "sleep" for p in procs)
    finally:
        host.kill()  # the sandbox dies by SIGKILL: no terminate(), no clean-up of its own
        host.wait(10)
    deadline = time.monotonic() + 10
    while [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, "VM processes outlived the sandbox"
        await asyncio.sleep(0.05)


def pids_line(host: subprocess.Popen[str]) -> str:
    assert host.stdout is not None
    while not (line := host.stdout.readline()).startswith("PIDS") and line:
        pass
    return line


def test_image_model_roundtrip() -> None:
    image = SandboxImage(runtime="llamacpp", volumes=["/data"], start_script="/s.sh")
    assert parse_image(image.to_bytes()) == image
