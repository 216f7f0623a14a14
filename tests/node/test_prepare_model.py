"""vm_images/common/start-node.sh run for real: a llama.cpp node that answers /health, refusals,
and the three ways a model arrives (uploaded, baked, pulled), with stand-in `ollama` and
`model-runner` binaries where the real ones cannot be installed. Only loopback is contacted.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from beacon_golem.core.net import free_port
from beacon_golem.node.prepare_model import EXIT_MISSING, Layout, main, ollama_manifest, prepare
from beacon_golem.node.tiny_model import write_tiny_model
from tests.support import ROOT, llama_server_binary

SCRIPT = ROOT / "vm_images" / "common" / "start-node.sh"
VENV_BIN = Path(sys.executable).parent


class Dirs:
    def __init__(self, tmp_path: Path) -> None:
        self.data, self.models, self.cache, self.baked = (tmp_path / n for n in ("data", "models", "cache", "baked"))
        self.bin = tmp_path / "bin"
        self.bin.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "BEACON_DATA_DIR": str(self.data),
            "BEACON_MODELS_DIR": str(self.models),
            "BEACON_CACHE_DIR": str(self.cache),
            "BEACON_BAKED_DIR": str(self.baked),
            "BEACON_PYTHON": sys.executable,
            "BEACON_BIN": str(VENV_BIN / "beacon"),
            "BEACON_HOST": "127.0.0.1",
        }
        for key in ("BEACON_MODEL", "BEACON_BAKED_MODEL", "BEACON_MODEL_PULL", "BEACON_RUNTIME", "BEACON_DRY_RUN"):
            env.pop(key, None)
        env.update(extra)
        return env

    def log(self) -> str:
        return (self.data / "logs" / "start-node.log").read_text()


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


def run_script(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout)


def node_command(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The `beacon node up ...` line a dry run prints."""
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if " node up " in x)
    return line.split("start-node: ", 1)[1].split()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# ---- the real thing: llama-server + shim from the start script ------------------------------------
def test_start_script_starts_a_llamacpp_node_that_answers_health(dirs: Dirs, tiny_model: Path) -> None:
    llama_server_binary()
    port = free_port()
    env = dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL=str(tiny_model), BEACON_PORT=str(port), BEACON_PARALLEL="2")
    proc = subprocess.Popen([str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, 0
        while time.monotonic() < deadline and proc.poll() is None:
            status = http_status(f"http://127.0.0.1:{port}/health")
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, f"no healthy node; script exited with {proc.returncode}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as resp:
            assert b'"llamacpp"' in resp.read()
        proc.send_signal(signal.SIGTERM)  # after exec this is `beacon node up`: it stops both parts
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert http_status(f"http://127.0.0.1:{port}/health") == 0  # nothing left listening
    log = dirs.log()
    assert f"model {tiny_model} (uploaded)" in log and "node ready: http://127.0.0.1:" in log
    assert (dirs.data / "logs" / "runtime.log").stat().st_size > 0  # llama-server's output, on the volume
    assert (dirs.cache / "home").is_dir() and (dirs.cache / "tmp").is_dir()


def test_missing_model_is_refused_before_anything_starts(dirs: Dirs) -> None:
    port = free_port()
    done = run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL="qwen2.5-0.5b-q4.gguf", BEACON_PORT=str(port)))
    assert done.returncode == EXIT_MISSING == 3
    refusal = [line for line in done.stdout.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1
    assert "model file qwen2.5-0.5b-q4.gguf not found" in refusal[0]
    assert str(dirs.models / "qwen2.5-0.5b-q4.gguf") in refusal[0] and "BEACON_MODEL_PULL=1" in refusal[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert refusal[0] in dirs.log()  # the refusal is on the data volume too
    assert http_status(f"http://127.0.0.1:{port}/health") == 0


def test_refusals_for_no_model_bad_file_and_bad_runtime(dirs: Dirs) -> None:
    done = run_script(dirs.env(BEACON_RUNTIME="vllm"))
    assert done.returncode == 3 and "no model named: set BEACON_MODEL" in done.stdout
    dirs.models.mkdir(parents=True, exist_ok=True)
    (dirs.models / "notes.gguf").write_text("not a model")
    done = run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL="notes.gguf"))
    assert done.returncode == 3 and "is not a GGUF file" in done.stdout
    done = run_script(dirs.env(BEACON_RUNTIME="tgi", BEACON_MODEL="x"))
    assert done.returncode == 2 and "BEACON_RUNTIME=tgi is not a runtime" in done.stdout
    done = run_script(dirs.env(BEACON_MODEL="x"))
    assert done.returncode == 2 and "BEACON_RUNTIME is not set" in done.stdout


def test_data_dir_that_cannot_be_created_is_refused(dirs: Dirs, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL="x.gguf", BEACON_DATA_DIR=str(blocker / "data")))
    assert done.returncode == 2 and "cannot create" in done.stderr


# ---- where a llama.cpp model comes from (dry runs) ----------------------------------------------
def test_uploaded_model_wins_over_baked_and_tiny_needs_none(dirs: Dirs) -> None:
    write_tiny_model(dirs.baked / "m.gguf")
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_BAKED_MODEL="m.gguf", BEACON_DRY_RUN="1")))
    assert cmd[cmd.index("--model") + 1] == str(dirs.baked / "m.gguf")  # baked, used when BEACON_MODEL is unset
    write_tiny_model(dirs.models / "m.gguf")
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL="m.gguf", BEACON_DRY_RUN="1")))
    assert cmd[cmd.index("--model") + 1] == str(dirs.models / "m.gguf")  # uploaded after deploy
    assert cmd[cmd.index("--data-dir") + 1] == str(dirs.data) and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL="tiny", BEACON_DRY_RUN="1")))
    assert "--model" not in cmd  # the node writes its generated tiny model itself


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """Serves tmp_path/www on loopback: a stand-in for a model download site."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(www), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_gguf_url_is_pulled_only_when_allowed(dirs: Dirs, file_server: str, tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "www" / "tiny-q8.gguf")
    url = f"{file_server}/tiny-q8.gguf"
    done = run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL=url, BEACON_DRY_RUN="1"))
    assert done.returncode == 3 and "pulling is off" in done.stdout
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL=url, BEACON_MODEL_PULL="1", BEACON_DRY_RUN="1")))
    pulled = dirs.models / "tiny-q8.gguf"
    assert cmd[cmd.index("--model") + 1] == str(pulled)
    assert pulled.read_bytes() == (tmp_path / "www" / "tiny-q8.gguf").read_bytes()
    assert "(pulled)" in dirs.log()
    # Once pulled it is found without pulling again.
    (tmp_path / "www" / "tiny-q8.gguf").unlink()
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="llamacpp", BEACON_MODEL=url, BEACON_DRY_RUN="1")))
    assert cmd[cmd.index("--model") + 1] == str(pulled)


def test_bake_step_downloads_into_the_image(dirs: Dirs, file_server: str, tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "www" / "baked.gguf")
    layout = Layout(models_dir=dirs.models, baked_dir=dirs.baked, cache_dir=dirs.cache)
    prepared = prepare("llamacpp", f"{file_server}/baked.gguf", layout, bake=True)
    assert prepared is not None and prepared.model == str(dirs.baked / "baked.gguf")
    assert prepare("llamacpp", None, layout, bake=True) is None  # nothing to bake is fine


# ---- vLLM model directories ------------------------------------------------------------------------
def test_vllm_takes_a_model_directory_and_refuses_a_repo_without_pull(dirs: Dirs) -> None:
    model_dir = dirs.baked / "Qwen" / "Qwen2.5-0.5B-Instruct"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="vllm", BEACON_MODEL="Qwen/Qwen2.5-0.5B-Instruct", BEACON_DRY_RUN="1")))
    assert cmd[cmd.index("--model") + 1] == str(model_dir)
    done = run_script(dirs.env(BEACON_RUNTIME="vllm", BEACON_MODEL="meta-llama/Llama-3.1-8B"))
    assert done.returncode == 3 and "BEACON_MODEL_PULL=1" in done.stdout


# ---- Ollama and Docker Model Runner, with stand-in binaries ------------------------------------------
FAKE_OLLAMA = '''#!{python}
"""Stand-in for ollama: `serve` answers /api/version; `pull` and `create` write a manifest."""
import os, sys, urllib.request, http.server
from pathlib import Path
sys.path.insert(0, {root!r})
from beacon_golem.node.prepare_model import ollama_manifest
store = Path(os.environ["OLLAMA_MODELS"])
host = os.environ["OLLAMA_HOST"]
cmd = sys.argv[1:]
if cmd[0] == "serve":
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/version" else 404)
            self.end_headers()
            self.wfile.write(b'{{"version": "0.0.0-stand-in"}}')
        def log_message(self, *a):
            pass
    address, port = host.rsplit(":", 1)
    http.server.HTTPServer((address, int(port)), H).serve_forever()
urllib.request.urlopen(f"http://{{host}}/api/version", timeout=5).read()  # the CLI talks to the server
if cmd[1].startswith("missing"):
    print("pull model manifest: file does not exist", file=sys.stderr)
    sys.exit(1)
manifest = store / ollama_manifest(cmd[1])
manifest.parent.mkdir(parents=True, exist_ok=True)
manifest.write_text("{{}}")
'''

FAKE_MODEL_RUNNER = '''#!{python}
"""Stand-in for DMR's model-runner: GET /models/<name> and POST /models/create on a file store."""
import json, os, http.server
from pathlib import Path
store = Path(os.environ["MODELS_PATH"])
def path(name):
    return store / "stand-in" / name.replace("/", "__")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/models":
            code = 200
        else:
            code = 200 if path(self.path[len("/models/"):]).exists() else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"[]" if code == 200 else b"model not found")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body["from"]
        if not name.startswith("ai/"):
            self.send_response(500)
            self.end_headers()
            return
        path(name).parent.mkdir(parents=True, exist_ok=True)
        path(name).write_text("pulled")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{{"type": "progress"}}\\n{{"type": "success"}}\\n')
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["MODEL_RUNNER_PORT"])), H).serve_forever()
'''


def install(dirs: Dirs, name: str, body: str) -> None:
    path = dirs.bin / name
    path.write_text(body.format(python=sys.executable, root=str(ROOT)))
    path.chmod(0o755)


def shell_exports(dirs: Dirs, *args: str, **env: str) -> tuple[int, dict[str, str], str]:
    done = subprocess.run(
        [sys.executable, "-m", "beacon_golem.node.prepare_model", "--shell", *args],
        env=dirs.env(**env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    exports = {}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exports[key] = value.strip("'")
    return done.returncode, exports, done.stderr


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
        ("llama3.2", "registry.ollama.ai/library/llama3.2/latest"),
        ("user/model:q4", "registry.ollama.ai/user/model/q4"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M"),
    ],
)
def test_ollama_manifest_paths(name: str, path: str) -> None:
    assert ollama_manifest(name) == Path("manifests") / path


def test_ollama_model_from_store_pull_and_gguf_import(dirs: Dirs) -> None:
    install(dirs, "ollama", FAKE_OLLAMA)
    baked_store = dirs.baked / "ollama"
    (baked_store / ollama_manifest("llama3.2:1b")).parent.mkdir(parents=True)
    (baked_store / ollama_manifest("llama3.2:1b")).write_text("{}")
    code, exports, _ = shell_exports(dirs, "--runtime", "ollama", "--model", "llama3.2:1b")
    assert code == 0 and exports["OLLAMA_MODELS"] == str(baked_store) and exports["BEACON_MODEL_SOURCE"] == "baked"

    code, _, err = shell_exports(dirs, "--runtime", "ollama", "--model", "qwen2.5:0.5b")
    assert code == 3 and "Ollama model qwen2.5:0.5b not found" in err and "BEACON_MODEL_PULL=1" in err
    code, exports, _ = shell_exports(dirs, "--runtime", "ollama", "--model", "qwen2.5:0.5b", BEACON_MODEL_PULL="1")
    assert code == 0 and exports["OLLAMA_MODELS"] == str(dirs.models / "ollama")
    assert (dirs.models / "ollama" / ollama_manifest("qwen2.5:0.5b")).is_file()
    code, _, err = shell_exports(dirs, "--runtime", "ollama", "--model", "missing:1b", BEACON_MODEL_PULL="1")
    assert code == 4 and "ollama pull missing:1b failed" in err

    write_tiny_model(dirs.models / "My-Model.Q8.gguf")  # uploaded GGUF, imported with `ollama create`
    code, exports, _ = shell_exports(dirs, "--runtime", "ollama", "--model", "My-Model.Q8.gguf")
    assert code == 0 and exports["BEACON_RESOLVED_MODEL"] == "my-model.q8" and exports["BEACON_MODEL_SOURCE"] == "imported"

    cmd = node_command(run_script(dirs.env(BEACON_RUNTIME="ollama", BEACON_MODEL="qwen2.5:0.5b", BEACON_DRY_RUN="1")))
    assert cmd[cmd.index("--model") + 1] == "qwen2.5:0.5b" and cmd[cmd.index("--runtime") + 1] == "ollama"


def test_dmr_model_check_and_pull_through_model_runner(dirs: Dirs) -> None:
    install(dirs, "model-runner", FAKE_MODEL_RUNNER)
    code, _, err = shell_exports(dirs, "--runtime", "dmr", "--model", "ai/smollm2")
    assert code == 3 and "Docker Model Runner model ai/smollm2 not found" in err
    code, exports, _ = shell_exports(dirs, "--runtime", "dmr", "--model", "ai/smollm2", BEACON_MODEL_PULL="1")
    assert code == 0 and exports == {
        "BEACON_RESOLVED_MODEL": "ai/smollm2", "BEACON_MODEL_SOURCE": "pulled", "MODELS_PATH": str(dirs.models / "dmr"),
    }  # fmt: skip
    code, exports, _ = shell_exports(dirs, "--runtime", "dmr", "--model", "ai/smollm2")  # now in the volume
    assert code == 0 and exports["BEACON_MODEL_SOURCE"] == "uploaded"
    code, _, err = shell_exports(dirs, "--runtime", "dmr", "--model", "nope/model", BEACON_MODEL_PULL="1")
    assert code == 4 and "could not pull nope/model" in err
    # A model baked at build time is served from the image's store without starting anything.
    (dirs.baked / "dmr").mkdir(parents=True)
    code, exports, _ = shell_exports(dirs, "--runtime", "dmr", BEACON_BAKED_MODEL="ai/gemma3")
    assert code == 0 and exports["MODELS_PATH"] == str(dirs.baked / "dmr") and exports["BEACON_RESOLVED_MODEL"] == "ai/gemma3"


def test_prepare_main_exit_codes(dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--models-dir", str(dirs.models), "--baked-dir", str(dirs.baked), "--cache-dir", str(dirs.cache)]
    assert main(["--runtime", "nope", "--model", "x", *base]) == 2
    assert main(["--runtime", "llamacpp", "--model", "x.gguf", *base]) == 3
    assert main(["--runtime", "llamacpp", "--model", "tiny", "--shell", *base]) == 0
    assert "export BEACON_RESOLVED_MODEL=''" in capsys.readouterr().out
