"""The gftp stand-in, driven by yapapi's own GftpProvider over JSON-RPC on stdin/stdout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from yapapi.storage import gftp as yapapi_gftp

from beacon_golem.core import gftp
from beacon_golem.requestor.fleets.golem import gftp as standin


async def test_yapapi_starts_it_publishes_and_receives(gftp_on_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(b"abc")
    async with yapapi_gftp.provider() as storage:
        published = await storage.upload_file(source)
        assert gftp.path_for(published.download_url) == source
        destination = await storage.new_destination(tmp_path / "out.bin")
        assert gftp.path_for(destination.upload_url) == tmp_path / "out.bin"
        await storage.release_source(published)  # gftp close


def test_it_answers_version_anywhere_but_refuses_to_transfer_off_the_sandbox(tmp_path: Path) -> None:
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "version"},
        {"jsonrpc": "2.0", "id": 2, "method": "publish", "params": {"files": [str(tmp_path / "x")]}},
        {"jsonrpc": "2.0", "id": 3, "method": "nope"},
        {"jsonrpc": "2.0", "id": 4, "method": "shutdown"},
        {"jsonrpc": "2.0", "id": 5, "method": "version"},  # after shutdown: never answered
    ]
    env = {k: v for k, v in os.environ.items() if k != gftp.LOCAL_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "beacon_golem.requestor.fleets.golem.gftp", "server"],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, 3, 4]
    assert answers[0]["result"].startswith("0.1.0 ")
    assert "cannot transfer files over the Golem network" in answers[1]["error"]["message"]
    assert answers[2]["error"]["code"] == -32601
    assert answers[3]["result"] == "ok"


def test_bad_input_and_usage() -> None:
    out = io.StringIO()
    assert (
        standin.serve(io.StringIO('not json\n{"jsonrpc":"2.0","id":1,"method":"receive","params":{}}\n'), out, True) == 0
    )
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["error"]["code"] == -32700 and second["error"]["code"] == -32602
    assert standin.main(["upload"]) == 2
    with pytest.raises(ValueError):
        gftp.path_for("gftp://0xabc/deadbeef")
    assert gftp.path_for(gftp.url_for("/tmp/a b/c.txt")) == Path("/tmp/a b/c.txt")


def test_it_hands_over_to_yagnas_own_gftp_further_on_path(tmp_path: Path) -> None:
    """With a real gftp installed after ours on PATH, transfers to real providers must work: ours steps aside."""
    standin_script = Path(sys.executable).parent / "gftp"  # the console script pip installed
    if not standin_script.exists():
        pytest.skip("the gftp console script is not installed in this environment")
    real_dir = tmp_path / "yagna-bin"
    real_dir.mkdir()
    real = real_dir / "gftp"
    real.write_text("#!/bin/sh\necho \"real gftp $*\"\n")
    real.chmod(0o755)
    env = {**os.environ, "PATH": f"{standin_script.parent}{os.pathsep}{real_dir}"}
    env.pop("BEACON_GOLEM_GFTP_LOCAL", None)
    done = subprocess.run([str(standin_script), "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "real gftp --version"
    # Alone on PATH, it answers itself.
    env["PATH"] = str(standin_script.parent)
    alone = subprocess.run([str(standin_script), "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert "stand-in" in alone.stdout


def test_doctor_tells_the_stand_in_from_yagnas_gftp(tmp_path: Path) -> None:
    installed = Path(sys.executable).parent / "gftp"
    if not installed.exists():
        pytest.skip("the gftp console script is not installed in this environment")
    assert standin.is_standin(installed)
    other = tmp_path / "gftp"
    other.write_bytes(b"\x7fELF yagna's gftp")
    assert not standin.is_standin(other) and not standin.is_standin(tmp_path / "missing")
