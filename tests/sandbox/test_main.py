"""`python -m beacon_golem.sandbox`: exports a shell can eval, serving until SIGTERM, one-line errors."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from beacon_golem.sandbox.__main__ import main

EXPECTED = {
    "YAGNA_API_URL",
    "YAGNA_APPKEY",
    "BEACON_GOLEM_REGISTRY_URL",
    "BEACON_GOLEM_IMAGE",
    "YAGNA_SUBNET",
    "BEACON_GOLEM_GFTP_LOCAL",
}


async def test_it_prints_exports_serves_them_and_stops_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "beacon_golem.sandbox",
        "--providers",
        "2",
        "--fault",
        "vpn-flaky,late-invoices",
        "--seed",
        "4",
        "--fault-setting",
        "late_invoice_delay_s=50",
        "--env-file",
        str(env_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        while set(env) != EXPECTED:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line.startswith("export "), line
            name, _, value = line[len("export ") :].strip().partition("=")
            env[name] = shlex.split(value)[0]
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {env['YAGNA_APPKEY']}"}
            async with http.get(f"{env['YAGNA_API_URL']}/sandbox/records", headers=headers) as resp:
                records = await resp.json()
            assert len(records["providers"]) == 2
            info_url = f"{env['BEACON_GOLEM_REGISTRY_URL']}/v1/image/info"
            async with http.get(info_url, params={"tag": env["BEACON_GOLEM_IMAGE"]}) as resp:
                assert resp.status == 200 and len((await resp.json())["sha3"]) == 56
        assert env["BEACON_GOLEM_GFTP_LOCAL"] == "1"
        sourced = subprocess.run(
            ["/bin/sh", "-c", f'. "{env_file}"; echo "$YAGNA_APPKEY"'], capture_output=True, text=True, check=True
        )
        assert sourced.stdout.strip() == env["YAGNA_APPKEY"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_arguments_are_one_line_errors(capsys: object) -> None:
    assert main(["--fault", "gremlins"]) == 2
    assert main(["--providers", "0"]) == 2
    assert main(["--fault-setting", "vm_dies_after_s=-1"]) == 2
    assert main(["--fault-setting", "nonsense"]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: unknown fault 'gremlins'")
    assert lines[1] == "error: --providers: give 1 to 200"
    assert lines[2].startswith("error: vm_dies_after_s: ")
    assert lines[3].startswith("error: --fault-setting 'nonsense'") and len(lines) == 4
