"""`beacon node up`, `beacon demo` and `beacon models tiny` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from beacon_golem.core.net import free_port
from beacon_golem.node.tiny_model import file_sha256
from tests.support import llama_server_binary, wait_http_ok

BEACON = [sys.executable, "-m", "beacon_golem.cli"]


def beacon(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BEACON, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_models_tiny_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    assert beacon("models", "tiny", "--out", str(a)).returncode == 0
    assert beacon("models", "tiny", "--out", str(b)).returncode == 0
    assert beacon("models", "tiny", "--out", str(c), "--seed", "7").returncode == 0
    assert file_sha256(a) == file_sha256(b) != file_sha256(c)
    assert a.stat().st_size < 2_000_000


def test_node_up_serves_health_and_inference_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    llama_server_binary()
    port = free_port()
    proc = subprocess.Popen(
        [*BEACON, "node", "up", "--port", str(port), "--data-dir", str(tmp_path / "node")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url + "/health", timeout_s=120)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("llama-server" in c.name() for c in children)
        body = json.dumps({"prompt": "Hello", "max_tokens": 10, "ignore_eos": True}).encode()
        req = urllib.request.Request(url + "/inference", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            result = json.loads(resp.read())
        assert result["completion_tokens"] == 10 and result["runtime"] == "llamacpp"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"node ready: {url}" in out
    time.sleep(0.2)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=2)


def test_node_up_with_a_missing_model_says_so_in_one_line(tmp_path: Path) -> None:
    done = beacon("node", "up", "--model", str(tmp_path / "nope.gguf"), "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: model file {tmp_path / 'nope.gguf'} does not exist"


def test_node_up_with_an_unknown_runtime_says_so(tmp_path: Path) -> None:
    done = beacon("node", "up", "--runtime", "tgi", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "unknown runtime 'tgi'" in done.stderr and "Traceback" not in done.stderr


def test_missing_llama_server_is_explained(tmp_path: Path) -> None:
    done = beacon("node", "up", "--data-dir", str(tmp_path), env={"BEACON_LLAMA_SERVER": str(tmp_path / "none")})
    assert done.returncode == 1
    assert "BEACON_LLAMA_SERVER" in done.stderr and "Traceback" not in done.stderr


def test_demo_prints_a_normalized_result(tmp_path: Path) -> None:
    llama_server_binary()
    done = beacon("demo", "--max-tokens", "12", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    start = done.stdout.index("{")
    result = json.loads(done.stdout[start : done.stdout.rindex("}") + 1])
    assert result["completion_tokens"] == 12 and result["token_count_source"] == "server"
    assert set(result) >= {"text", "finish_reason", "prompt_tokens", "ttft_ms", "e2e_ms", "itl_ms", "server_timings"}
