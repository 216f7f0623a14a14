"""vm_images/multi/: llama.cpp, Ollama and DMR in one image, read with BuildKit's parser like the others
(tests/requestor/test_imaging.py covers what every image promises, multi included): where each
runtime's binary is, that its bases and versions are the single-runtime images', its wrappers run
for real, and `beacon image build multi` / `push` with stand-in docker and gvmkit-build.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import dockerfile
import pytest

from beacon_golem.api.bodies import RuntimeSwitch
from beacon_golem.imaging import lookup_image
from beacon_golem.imaging.spec import MULTI_IMAGE, MULTI_RUNTIMES, default_tag, runtimes_in
from beacon_golem.imaging.spec import dockerfile as dockerfile_path
from beacon_golem.node.runtimes import adapter_class
from beacon_golem.node.runtimes.llamacpp import find_llama_server
from beacon_golem.requestor.work.compare import MULTI_RUNTIME_IMAGE
from tests.requestor.test_imaging import (
    FAKE_DOCKER,
    FAKE_GVMKIT,
    args_of,
    beacon,
    env_of,
    one_error_line,
    parse,
    stages,
)
from tests.support import ROOT

MULTI = ROOT / "vm_images" / "multi"
Command = tuple[str, tuple[str, ...], tuple[str, ...]]


def named_stages(commands: tuple[dockerfile.Command, ...]) -> dict[str, list[dockerfile.Command]]:
    """Stages by their AS name; the final stage (no name) under ''."""
    out = {}
    for stage in stages(commands):
        value = stage[0].value
        out[value[2] if len(value) == 3 else ""] = stage
    return out


def plain(stage: list[dockerfile.Command]) -> list[Command]:
    return [(c.cmd, tuple(c.flags), tuple(c.value)) for c in stage]


def copies(stage: list[dockerfile.Command]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    return [(tuple(c.flags), tuple(c.value)) for c in stage if c.cmd == "COPY"]


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def wrapper_target(name: str) -> str:
    """The binary a vm_images/multi/bin wrapper execs."""
    lines = [line.split() for line in (MULTI / "bin" / name).read_text().splitlines()]
    execs = [words for words in lines if words and words[0] == "exec"]
    assert len(execs) == 1 and execs[0][2:] == ['"$@"']
    return execs[0][1]


def version_drift(multi: Path, root: Path = ROOT) -> list[str]:
    """Where the multi image's runtimes differ from their own images' (empty: none)."""
    own = {name: named_stages(dockerfile.parse_file(str(root / "vm_images" / name / "Dockerfile"))) for name in
           ("llamacpp", "ollama", "dmr")}  # fmt: skip
    mine = named_stages(dockerfile.parse_file(str(multi)))
    drift = []
    # llama-server: the llamacpp image's build stage, instruction for instruction (llama.cpp
    # tag, CUDA architectures, cmake flags, CUDA devel base), on its runtime base.
    if plain(mine.get("build", [])) != plain(own["llamacpp"]["build"]):
        drift.append("the llama.cpp build stage differs from vm_images/llamacpp/Dockerfile's")
    if mine[""][0].value[0] != own["llamacpp"][""][0].value[0]:
        drift.append(
            f"the node base {mine[''][0].value[0]} is not the llamacpp image's {own['llamacpp'][''][0].value[0]}"
        )
    for name, stage in (("ollama", "ollama"), ("dmr", "")):
        theirs = own[name][stage][0].value[0]
        ours = mine.get(name, [None])[0]
        if ours is None or ours.value[0] != theirs:
            drift.append(f"the {name} stage is {ours.value[0] if ours else 'missing'}, the {name} image uses {theirs}")
    ollama_copies = [c for c in copies(own["ollama"][""]) if c[0] == ("--from=ollama",)]
    if not ollama_copies or not set(ollama_copies) <= set(copies(mine[""])):
        drift.append("Ollama is not copied as vm_images/ollama/Dockerfile copies it")
    dmr_env, my_env = env_of(own["dmr"][""]), env_of(mine[""])
    for key in ("DISABLE_SERVER_UPDATE", "MODELS_PATH"):
        if my_env.get(key) != dmr_env[key]:
            drift.append(f"{key}={my_env.get(key)}, the dmr image sets {dmr_env[key]}")
    return drift


# ---- the Dockerfile ------------------------------------------------------------------------------
def test_multi_image_has_a_stage_per_runtime_and_bakes_no_model() -> None:
    found = named_stages(parse(MULTI_IMAGE))
    assert list(found) == ["build", "ollama", "dmr", ""]
    final = found[""]
    assert "BEACON_MODEL" not in args_of(final) and "BEACON_BAKED_MODEL" not in env_of(final)
    assert not [c for c in final if c.cmd == "RUN" and "prepare_model.py --bake" in " ".join(c.value)]
    assert "models" not in found  # no build context for a model to bake


def test_multi_image_holds_each_runtime_where_its_adapter_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    final = named_stages(parse(MULTI_IMAGE))[""]
    env, copied = env_of(final), copies(final)
    path = env["PATH"].split(":")
    # llama.cpp: find_llama_server() takes BEACON_LLAMA_SERVER, a wrapper that execs the CUDA build.
    assert env["BEACON_LLAMA_SERVER"] == "/opt/beacon/bin/llama-server"
    assert (("--chmod=755",), ("vm_images/multi/bin/llama-server", env["BEACON_LLAMA_SERVER"])) in copied
    assert wrapper_target("llama-server") == "/opt/llama.cpp/llama-server"
    assert (("--from=build",), ("/opt/llama.cpp", "/opt/llama.cpp")) in copied
    build = " ".join(" ".join(c.value) for c in named_stages(parse(MULTI_IMAGE))["build"] if c.cmd == "RUN")
    assert "cp build/bin/llama-server /opt/llama.cpp/" in build
    # Ollama: the adapter runs `ollama` from PATH; /usr/bin comes from the base's $PATH.
    monkeypatch.setenv("PATH", "")
    assert adapter_class("ollama").launch("m", port=1).argv[0] == "ollama"
    assert (("--from=ollama",), ("/usr/bin/ollama", "/usr/bin/ollama")) in copied
    assert path[-1] == "$PATH"
    # DMR: the adapter runs `model-runner` from PATH: a wrapper that execs DMR's server.
    assert adapter_class("dmr").launch("m", port=1).argv[0] == "model-runner"
    assert (("--chmod=755",), ("vm_images/multi/bin/model-runner", "/opt/beacon/bin/model-runner")) in copied
    assert "/opt/beacon/bin" in path
    assert wrapper_target("model-runner") == "/app/model-runner"
    assert (("--from=dmr",), ("/app", "/app")) in copied
    assert env["LLAMA_SERVER_PATH"] == "/app/bin" and env["DISABLE_SERVER_UPDATE"] == "1"
    # Three ggml builds with the same library names: none of them on the global loader path.
    assert "LD_LIBRARY_PATH" not in env


def test_multi_image_lists_the_runtimes_it_holds_and_keeps_their_models_on_the_volume() -> None:
    env = env_of(named_stages(parse(MULTI_IMAGE))[""])
    assert tuple(unquote(env["BEACON_IMAGE_RUNTIMES"]).split()) == MULTI_RUNTIMES == runtimes_in(MULTI_IMAGE)
    assert env["BEACON_RUNTIME"] == "llamacpp" == MULTI_RUNTIMES[0]
    assert "vllm" not in MULTI_RUNTIMES
    # POST /runtime takes each of them.
    assert set(MULTI_RUNTIMES) <= set(typing.get_args(RuntimeSwitch.model_fields["runtime"].annotation))
    # A runtime switched to later finds its store on the models volume, not in the RAM overlay.
    assert env["OLLAMA_MODELS"] == "/models/ollama" and env["MODELS_PATH"] == "/models/dmr"


def test_multi_image_pins_the_versions_of_the_single_runtime_images() -> None:
    assert version_drift(dockerfile_path(MULTI_IMAGE)) == []


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("ARG LLAMA_CPP_VERSION=b8967", "ARG LLAMA_CPP_VERSION=b9000", "llama.cpp build stage"),
        ("-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_CPU_ALL_VARIANTS=OFF", "llama.cpp build stage"),
        ("FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04", "FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04", "node base"),
        ("FROM ollama/ollama:0.12.6 AS ollama", "FROM ollama/ollama:0.12.7 AS ollama", "the ollama stage"),
        (
            "FROM docker/model-runner:v1.1.30-cuda AS dmr",
            "FROM docker/model-runner:v1.1.39-cuda AS dmr",
            "the dmr stage",
        ),
        ("COPY --from=ollama /usr/lib/ollama /usr/lib/ollama\n", "", "Ollama is not copied"),
        ("    DISABLE_SERVER_UPDATE=1\n", "    DISABLE_SERVER_UPDATE=0\n", "DISABLE_SERVER_UPDATE=0"),
    ],
)
def test_version_drift_is_caught(tmp_path: Path, old: str, new: str, says: str) -> None:
    text = dockerfile_path(MULTI_IMAGE).read_text()
    assert text.count(old) == 1
    changed = tmp_path / "Dockerfile"
    changed.write_text(text.replace(old, new))
    drift = version_drift(changed)
    assert len(drift) == 1 and says in drift[0], drift


# ---- the wrappers, run for real ------------------------------------------------------------------
@pytest.mark.parametrize(("name", "libs"), [("llama-server", "/opt/llama.cpp"), ("model-runner", "/app/lib")])
def test_wrappers_put_their_own_libraries_first(tmp_path: Path, name: str, libs: str) -> None:
    target = wrapper_target(name)
    fake = tmp_path / "fake" / Path(target).name
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    text = (MULTI / "bin" / name).read_text()
    assert text.startswith("#!/bin/sh\n") and f'"{libs}${{LD_LIBRARY_PATH:+' in text
    wrapper = tmp_path / name
    wrapper.write_text(text.replace(target, str(fake)).replace(f'"{libs}', f'"{tmp_path / "libs"}'))
    wrapper.chmod(0o755)
    assert os.access(MULTI / "bin" / name, os.X_OK)
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/usr/local/nvidia/lib"}
    done = subprocess.run([str(wrapper), "--port", "8 0"], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines() == [
        f"LD_LIBRARY_PATH={tmp_path / 'libs'}:/usr/local/nvidia/lib",
        "arg=--port",
        "arg=8 0",
    ]
    env.pop("LD_LIBRARY_PATH")
    done = subprocess.run([str(wrapper)], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines() == [f"LD_LIBRARY_PATH={tmp_path / 'libs'}"]
    # find_llama_server() accepts the wrapper as BEACON_LLAMA_SERVER.
    if name == "llama-server":
        assert find_llama_server(wrapper) == wrapper


# ---- the start script refuses a runtime the image does not hold -----------------------------------
def start_node(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith("BEACON_") or key in ("BEACON_LLAMA_SERVER",)
    }  # fmt: skip
    env.update(
        BEACON_DATA_DIR=str(tmp_path / "data"), BEACON_MODELS_DIR=str(tmp_path / "models"),
        BEACON_CACHE_DIR=str(tmp_path / "cache"), BEACON_BAKED_DIR=str(tmp_path / "baked"),
        BEACON_PYTHON=sys.executable, BEACON_BIN=str(Path(sys.executable).parent / "beacon"),
        BEACON_IMAGE_RUNTIMES=" ".join(MULTI_RUNTIMES), BEACON_DRY_RUN="1", **extra,
    )  # fmt: skip
    script = ROOT / "vm_images" / "common" / "start-node.sh"
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_start_script_refuses_a_runtime_the_image_does_not_hold(tmp_path: Path) -> None:
    done = start_node(tmp_path, BEACON_RUNTIME="vllm", BEACON_MODEL="Qwen/Qwen2.5-0.5B-Instruct")
    assert done.returncode == 2
    assert "start-node: BEACON_RUNTIME=vllm is not in this image (it holds llamacpp ollama dmr)" in done.stdout
    done = start_node(tmp_path, BEACON_RUNTIME="llamacpp", BEACON_MODEL="tiny")
    assert done.returncode == 0, done.stdout
    assert "node up --runtime llamacpp" in done.stdout


# ---- beacon image build multi / push, with stand-in tools -----------------------------------------
def stand_in_tools(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    log, bin_dir = tmp_path / "log", tmp_path / "bin"
    log.mkdir()
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("gvmkit-build", FAKE_GVMKIT)):
        (bin_dir / name).write_text(textwrap.dedent(body).format(log=log))
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "BEACON_DATA_DIR": str(tmp_path)}
    return log, env


def test_build_then_push_multi_with_stand_in_tools(tmp_path: Path) -> None:
    log, env = stand_in_tools(tmp_path)
    out_dir, lock = tmp_path / "images", tmp_path / "images.lock.json"
    assert default_tag(MULTI_IMAGE) == "beacon-golem-multi:0.1.0"
    done = beacon("image", "build", "multi", "--out", str(out_dir), env=env)
    assert done.returncode == 0, done.stderr
    tag, gvmi = "beacon-golem-multi:0.1.0", out_dir / "beacon-golem-multi-0.1.0.gvmi"
    # No model and no `models` context: the multi Dockerfile has neither.
    assert (log / "docker-build.args").read_text().split("\n")[:-1] == [
        "build", "--file", str(ROOT / "vm_images/multi/Dockerfile"), "--tag", tag, "--platform", "linux/amd64", str(ROOT),
    ]  # fmt: skip
    assert not (log / "models-context.ls").exists()
    assert (log / "gvmkit-build.args").read_text().split() == [tag, "--output", str(gvmi)]
    digest = hashlib.sha3_224(gvmi.read_bytes()).hexdigest()
    assert f"sha3-224:{digest}" in " ".join(done.stdout.split())

    done = beacon("image", "push", "multi", "--out", str(out_dir), "--lock", str(lock), env=env)
    assert done.returncode == 0, done.stderr
    entry = lookup_image(MULTI_RUNTIME_IMAGE, lock)  # what `beacon compare --fleet golem` looks up
    assert entry is not None
    assert (entry.runtime, entry.tag, entry.hash, entry.model) == ("multi", tag, digest, None)
    assert lookup_image("llamacpp", lock) is None


def test_build_multi_with_extra_build_args(tmp_path: Path) -> None:
    log, env = stand_in_tools(tmp_path)
    done = beacon(
        "image", "build", "multi", "--build-arg", "CUDA_ARCHITECTURES=90", "--out", str(tmp_path / "o"), env=env
    )
    assert done.returncode == 0, done.stderr
    argv = (log / "docker-build.args").read_text().split("\n")
    assert argv[argv.index("--build-arg") + 1] == "CUDA_ARCHITECTURES=90"
    assert "CUDA_ARCHITECTURES" in args_of(named_stages(parse(MULTI_IMAGE))["build"])


def test_build_multi_refuses_a_model_in_one_line(tmp_path: Path) -> None:
    log, env = stand_in_tools(tmp_path)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    for given in (str(model), "llama3.2:1b"):
        line = one_error_line(beacon("image", "build", "multi", "--model", given, env=env))
        assert (
            line
            == "error: the multi image bakes no model: upload or pull it after deploy (/models is shared by llamacpp, ollama, dmr)"
        )
    assert not (log / "docker-build.args").exists()  # refused before docker ran


def test_the_requestor_and_the_image_name_the_multi_image_alike() -> None:
    assert MULTI_RUNTIME_IMAGE == MULTI_IMAGE
