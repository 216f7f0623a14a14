"""BeaconNodeService driven as yapapi drives it: a WorkContext over mocks, the handler generators
stepped by hand (results sent in, command failures thrown in), the exact commands asserted."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from yapapi.ctx import WorkContext
from yapapi.rest.activity import CommandExecutionError
from yapapi.script import Script

from beacon_golem.api.bodies import Health
from beacon_golem.requestor.fleets.golem.service import (
    HEALTH,
    LOG_FETCH,
    LOG_FILES,
    LOG_TAIL,
    NODE_EXITED,
    NODE_SWITCHING,
    START_NODE,
    WRITE_ENV,
    BeaconNodeService,
    NodeSpec,
    NodeStartFailed,
    NodeUnhealthy,
)


def work_context(provider_id: str = "0xprovider") -> WorkContext:
    agreement = mock.Mock()
    agreement.details.raw_details.offer.provider_id = provider_id
    agreement.details.provider_node_info.name = "gpu-box"
    return WorkContext(mock.AsyncMock(), agreement, storage=mock.AsyncMock(), emitter=mock.Mock())


def service(spec: NodeSpec, **kw: Any) -> BeaconNodeService:
    svc = BeaconNodeService(spec, **kw)
    svc._set_ctx(work_context())
    node = mock.Mock()
    node.get_deploy_args.return_value = {"net": [{"id": "net-1", "nodeIp": "192.168.0.2"}]}
    svc._set_network_node(node)
    return svc


def commands(script: Script) -> list[dict[str, Any]]:
    """The batch as sent to the exe-unit, capture settings left out."""
    out = []
    for cmd in script._evaluate():
        if "run" in cmd:
            out.append({"run": [cmd["run"]["entry_point"], *cmd["run"]["args"]]})
        else:
            out.append(cmd)
    return out


def succeed(script: Script, stdout: str = "") -> None:
    for cmd in script._commands:
        cmd._result.set_result(mock.Mock(stdout=stdout, success=True))


def failed(command: str = "curl") -> CommandExecutionError:
    return CommandExecutionError(command, "exit status 22", "curl: (22) 503")


SPEC = dict(runtime="vllm", model="Qwen/Qwen2.5-0.5B-Instruct", health_poll_s=0.0, start_timeout_s=30)


async def test_start_deploys_launches_and_waits_for_health() -> None:
    svc = service(NodeSpec(**SPEC))
    gen = svc.start()

    deploy = await gen.__anext__()
    assert commands(deploy) == [
        {"deploy": {"net": [{"id": "net-1", "nodeIp": "192.168.0.2"}]}},
        {"start": {"args": ()}},
    ]
    assert deploy.timeout is not None and deploy.timeout.total_seconds() == 3600
    succeed(deploy)

    launch = await gen.asend(None)
    assert commands(launch) == [
        {
            "run": [
                "/bin/sh",
                "-c",
                WRITE_ENV,
                "sh",
                "/data",
                "BEACON_RUNTIME=vllm",
                "BEACON_PORT=8080",
                "BEACON_HOST=0.0.0.0",
                "BEACON_DATA_DIR=/data",
                "BEACON_MODEL=Qwen/Qwen2.5-0.5B-Instruct",
            ]
        },
        {"run": ["/bin/sh", "-c", START_NODE, "sh", "/data", "/opt/beacon/start-node.sh"]},
    ]
    succeed(launch)

    probe = await gen.asend(None)
    assert commands(probe) == [{"run": ["/bin/sh", "-c", HEALTH, "sh", "8080", "/data"]}]
    assert svc.phase == "loading"
    probe_again = await gen.athrow(failed())  # 503 while the model loads: poll again
    assert commands(probe_again) == commands(probe)
    succeed(probe_again)
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)
    assert svc.phase == "ready" and svc.failure is None


async def test_start_timeout_fails_the_attempt_with_the_log_tail(tmp_path: Path) -> None:
    svc = service(NodeSpec(**{**SPEC, "start_timeout_s": 0.05}, log_dir=tmp_path))
    gen = svc.start()
    for _ in range(2):  # deploy, launch
        succeed(await gen.asend(None) if _ else await gen.__anext__())
    step = await gen.asend(None)
    while commands(step)[0]["run"][2] == HEALTH:
        await asyncio.sleep(0.02)
        step = await gen.athrow(failed())
    assert commands(step) == [{"run": ["/bin/sh", "-c", LOG_TAIL, "sh", "/data"]}]
    succeed(step, stdout="==> node.log <==\nloading model...\n\n==> runtime.log <==\nCUDA out of memory\n")
    node_log = await gen.asend(None)
    assert source(node_log) == "/data/logs/node.log"
    succeed(node_log)
    runtime_log = await gen.asend(None)
    assert source(runtime_log) == "/data/logs/runtime.log"
    with pytest.raises(NodeStartFailed, match="/health not OK after 0.05 s.*loading model... [|] .*CUDA out of memory"):
        await gen.athrow(failed("transfer"))  # no runtime.log: the node log is still kept
    assert svc.failure is not None and "\n" not in svc.failure
    assert svc.log_paths == [tmp_path / f"{svc.label()}-node.log"]


async def test_no_shell_injection_through_the_model_name() -> None:
    evil = "x; rm -rf / #$(touch pwned)`touch pwned2`'\"\n"
    svc = service(NodeSpec(**{**SPEC, "model": evil}, env={"HF_HOME": "/data/hf"}))
    gen = svc.start()
    succeed(await gen.__anext__())
    launch = await gen.asend(None)
    write, start = commands(launch)
    # the shell programs are the fixed constants; the name is only ever an argument
    assert write["run"][:5] == ["/bin/sh", "-c", WRITE_ENV, "sh", "/data"]
    assert start["run"] == ["/bin/sh", "-c", START_NODE, "sh", "/data", "/opt/beacon/start-node.sh"]
    assert not any(evil in part for part in (WRITE_ENV, START_NODE))
    assert "BEACON_MODEL='x; rm -rf / #$(touch pwned)`touch pwned2`'\"'\"'\"\n'" in write["run"]
    assert "HF_HOME=/data/hf" in write["run"]
    await gen.aclose()


def test_the_commands_really_are_safe_in_sh(tmp_path: Path) -> None:
    """Run the exact argument vectors with a real /bin/sh: the start script sees the model name
    verbatim and nothing in it is executed."""
    evil = "x; touch pwned; $(touch pwned2) `touch pwned3` ' \" \\ \n end"
    spec = NodeSpec(runtime="vllm", model=evil, data_dir=str(tmp_path / "data"))
    start_script = tmp_path / "start-node.sh"
    start_script.write_text('#!/bin/sh\nprintf "%s" "$BEACON_MODEL" > "$BEACON_DATA_DIR/seen-model"\necho started\n')
    start_script.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run(
        ["/bin/sh", "-c", WRITE_ENV, "sh", spec.data_dir, *spec.env_lines()], cwd=tmp_path, env=env, check=True
    )
    subprocess.run(
        ["/bin/sh", "-c", START_NODE, "sh", spec.data_dir, str(start_script)], cwd=tmp_path, env=env, check=True
    )
    seen = Path(spec.data_dir) / "seen-model"
    for _ in range(100):
        if seen.exists() and (Path(spec.data_dir) / "logs" / "node.log").read_text():
            break
        subprocess.run(["sleep", "0.05"])
    assert seen.read_text() == evil
    assert (Path(spec.data_dir) / "logs" / "node.log").read_text() == "started\n"
    assert not list(tmp_path.glob("pwned*")) and not list(Path(spec.data_dir).glob("pwned*"))


async def test_deploy_timeout_fails_the_attempt_with_a_reason() -> None:
    from yapapi.rest.activity import BatchTimeoutError

    svc = service(NodeSpec(**SPEC))
    gen = svc.start()
    await gen.__anext__()
    with pytest.raises(NodeStartFailed, match="deploy failed"):
        await gen.athrow(BatchTimeoutError("batch timed out"))
    assert svc.failure == "deploy failed: no result within 3600 s"  # deploy_timeout_s, not yapapi's bare message


async def test_blacklisted_provider_is_refused_before_deploy() -> None:
    svc = service(NodeSpec(**SPEC), admit=lambda pid: pid != "0xprovider")
    with pytest.raises(NodeStartFailed, match="blacklisted"):
        await svc.start().__anext__()
    assert svc.failure and "0xprovider" in svc.failure


async def test_run_watches_health_and_gives_up_after_failures_in_a_row() -> None:
    svc = service(NodeSpec(**SPEC, health_interval_s=0.0, health_failures=2))
    gen = svc.run()
    step = await gen.__anext__()
    assert commands(step) == [{"run": ["/bin/sh", "-c", HEALTH, "sh", "8080", "/data"]}]
    step = await gen.athrow(failed())  # one failure
    succeed(step)
    step = await gen.asend(None)  # OK again: the count restarts
    step = await gen.athrow(failed())
    with pytest.raises(NodeUnhealthy, match="2 times"):
        await gen.athrow(failed())
    assert svc.failure and "2 times" in svc.failure


async def test_run_takes_a_runtime_switch_for_a_live_node_until_the_switch_timeout() -> None:
    svc = service(NodeSpec(**SPEC, health_interval_s=0.0, health_failures=2, switch_timeout_s=600))
    gen = svc.run()
    await gen.__anext__()

    def switching(seconds: str) -> CommandExecutionError:
        return CommandExecutionError("run", "exit status 4", f"node switching runtime for {seconds} s")

    step = await gen.athrow(failed())  # one failure...
    for seconds in ("0.0", "31.5", "600"):  # ... then a switch of ten minutes: none counts, the count restarts
        step = await gen.athrow(switching(seconds))
    assert commands(step) == [{"run": ["/bin/sh", "-c", HEALTH, "sh", "8080", "/data"]}]
    step = await gen.athrow(failed())  # one failure again, not two in a row
    with pytest.raises(NodeUnhealthy, match="the runtime switch has lasted 600.5 s inside the VM, over the 600 s"):
        await gen.athrow(switching("600.5"))  # a switch that does not end loses the node at once


def source(script: Script) -> str:
    """The log file a fetch script reads (its end, on stdout: no gftp transfer)."""
    (cmd,) = commands(script)
    assert cmd["run"][:4] == ["/bin/sh", "-c", LOG_FETCH, "sh"]
    return cmd["run"][4]


async def test_shutdown_downloads_the_logs_then_terminates(tmp_path: Path) -> None:
    svc = service(NodeSpec(**SPEC, log_dir=tmp_path / "logs"))
    gen = svc.shutdown()
    node_log = await gen.__anext__()
    assert source(node_log) == "/data/logs/node.log"
    succeed(node_log, stdout="shim up\n")
    runtime_log = await gen.asend(None)
    assert source(runtime_log) == "/data/logs/runtime.log"
    succeed(runtime_log, stdout="slot 0 idle\n")
    terminate = await gen.asend(None)
    assert commands(terminate) == [{"terminate": {}}]
    assert svc.log_paths == [tmp_path / "logs" / f"{svc.label()}-{name}" for name in ("node.log", "runtime.log")]
    assert [p.read_text() for p in svc.log_paths] == ["shim up\n", "slot 0 idle\n"]


async def test_shutdown_terminates_even_when_the_logs_cannot_be_read(tmp_path: Path) -> None:
    svc = service(NodeSpec(**SPEC, log_dir=tmp_path))
    gen = svc.shutdown()
    await gen.__anext__()
    await gen.athrow(failed("transfer"))
    terminate = await gen.athrow(failed("transfer"))
    assert commands(terminate) == [{"terminate": {}}]
    assert svc.log_paths == []


async def test_shutdown_without_a_log_dir_only_terminates() -> None:
    gen = service(NodeSpec(**SPEC)).shutdown()
    assert commands(await gen.__anext__()) == [{"terminate": {}}]


def test_never_restarted_in_place() -> None:
    assert service(NodeSpec(**SPEC)).restart_condition is False


def test_token_and_env_reach_the_env_file() -> None:
    from pydantic import SecretStr

    spec = NodeSpec(runtime="llamacpp", shim_token=SecretStr("s3cret token"), env={"EXTRA": "a b"})
    lines = spec.env_lines()
    assert "BEACON_SHIM_TOKEN='s3cret token'" in lines and "EXTRA='a b'" in lines
    assert not any(line.startswith("BEACON_MODEL=") for line in lines)
    with pytest.raises(ValueError, match="environment variable"):
        NodeSpec(runtime="x", env={"1BAD": "v"}).env_lines()
    # No runtime named (--runtime auto with an image given): the image's own BEACON_RUNTIME stands.
    assert not any(line.startswith("BEACON_RUNTIME=") for line in NodeSpec(runtime=None).env_lines())


def test_health_command_in_a_real_sh(tmp_path: Path) -> None:
    """HEALTH exits 0 on a 200 and non-zero on a 503 or no server, with curl or, without it, python3."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200
        body = b""

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(Handler.status)
            self.send_header("Content-Length", str(len(Handler.body)))
            self.end_headers()
            self.wfile.write(Handler.body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    no_curl = tmp_path / "bin"
    no_curl.mkdir()
    (no_curl / "python3").symlink_to(Path(sys.executable))
    try:
        paths = [str(no_curl)]  # python3 only
        if shutil.which("curl"):
            paths.append(os.environ.get("PATH", "/usr/bin:/bin"))
        for path in paths:
            env = {"PATH": path}
            Handler.status = 200
            assert subprocess.run(["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], env=env).returncode == 0
            Handler.status = 503
            assert (
                subprocess.run(
                    ["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], env=env, stderr=subprocess.DEVNULL
                ).returncode
                != 0
            )
            # A 503 during a runtime switch (the shim's body, as it sends it): NODE_SWITCHING, saying how long.
            Handler.body = Health(status="unavailable", runtime="llamacpp", reason="switching runtime to llamacpp",
                                  switching_s=12.5).model_dump_json().encode()  # fmt: skip
            switching = subprocess.run(["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], env=env,
                                       capture_output=True, text=True)  # fmt: skip
            assert switching.returncode == NODE_SWITCHING and "node switching runtime for 12.5 s" in switching.stderr
            Handler.body = Health(status="unavailable", runtime="llamacpp", reason="loading").model_dump_json().encode()
            done = subprocess.run(["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], env=env, capture_output=True)
            assert done.returncode == 1  # no switch: a plain failure
            Handler.body = b""
        # The start script's process is gone (its pid file names a dead process): NODE_EXITED, at once.
        (tmp_path / "beacon").mkdir()
        dead = subprocess.Popen(["true"])
        dead.wait()
        (tmp_path / "beacon" / "node.pid").write_text(f"{dead.pid}\n")
        done = subprocess.run(["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == NODE_EXITED and f"node process {dead.pid} exited" in done.stderr
        alive = subprocess.Popen(["sleep", "30"])
        try:
            (tmp_path / "beacon" / "node.pid").write_text(f"{alive.pid}\n")
            still = subprocess.run(["/bin/sh", "-c", HEALTH, "sh", port, str(tmp_path)], capture_output=True)
            assert still.returncode == 1  # not healthy yet, but still starting: keep waiting
        finally:
            alive.kill()
            alive.wait()
    finally:
        server.shutdown()


async def test_start_gives_up_at_once_when_the_node_process_exits(tmp_path: Path) -> None:
    """A start script that died (no model, bad settings) is not waited for until start_timeout_s."""
    svc = service(NodeSpec(**{**SPEC, "start_timeout_s": 3600}, log_dir=tmp_path))
    gen = svc.start()
    for _ in range(2):  # deploy, launch
        succeed(await gen.asend(None) if _ else await gen.__anext__())
    step = await gen.asend(None)
    assert commands(step)[0]["run"][2] == HEALTH
    step = await gen.athrow(CommandExecutionError("run", "exit status 7", "curl: (7) Failed to connect"))
    assert commands(step)[0]["run"][2] == HEALTH  # not up yet, still starting: asked again
    step = await gen.athrow(CommandExecutionError("run", "exit status 3", "node process 8 exited"))
    assert commands(step) == [{"run": ["/bin/sh", "-c", LOG_TAIL, "sh", "/data"]}]
    succeed(step, stdout="start-node: refusing to start: no model named\n")
    for _ in LOG_FILES:
        succeed(await gen.asend(None), stdout="log\n")
    with pytest.raises(NodeStartFailed, match="start-node.sh exited before /health was OK.*no model named"):
        await gen.asend(None)
