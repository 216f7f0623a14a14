"""VM images without a Docker engine: Dockerfiles parsed by BuildKit's own parser, the build and
push commands, the lock file, and `beacon image` end to end with stand-in docker/gvmkit-build.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dockerfile
import pytest

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.imaging import lookup_image
from beacon_golem.imaging.build import stage_model
from beacon_golem.imaging.commands import PLATFORM, docker_build_argv, gvmkit_build_argv, gvmkit_push_argv
from beacon_golem.imaging.gvmi import GvmiFile, sha3_224_file
from beacon_golem.imaging.lock import ImageLock, ImageLockEntry, load_lock, new_entry, record_image, save_lock
from beacon_golem.imaging.spec import IMAGE_RUNTIMES, MULTI_IMAGE, VOLUMES, default_tag, runtimes_in, slug
from beacon_golem.imaging.spec import dockerfile as dockerfile_path
from tests.support import ROOT

HASH_A = hashlib.sha3_224(b"a").hexdigest()
HASH_B = hashlib.sha3_224(b"b").hexdigest()
#: The images that bake a model in (the multi image bakes none: tests/requestor/test_multi_image.py).
BAKING_IMAGES = tuple(r for r in IMAGE_RUNTIMES if r != MULTI_IMAGE)


# ---- the Dockerfiles -----------------------------------------------------------------------------
def parse(runtime: str) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(dockerfile_path(runtime)))


def stages(commands: tuple[dockerfile.Command, ...]) -> list[list[dockerfile.Command]]:
    out: list[list[dockerfile.Command]] = []
    for command in commands:
        if command.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(command)
    return out


def final_stage(runtime: str) -> list[dockerfile.Command]:
    return stages(parse(runtime))[-1]


def joined(commands: list[dockerfile.Command], cmd: str) -> list[str]:
    return [" ".join(c.value) for c in commands if c.cmd == cmd]


def env_of(commands: list[dockerfile.Command]) -> dict[str, str]:
    """ENV instructions as a dict (the parser gives each as key, value, key, value...)."""
    env: dict[str, str] = {}
    for c in commands:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def args_of(commands: list[dockerfile.Command]) -> dict[str, str]:
    return dict(v.split("=", 1) if "=" in v else (v, "") for c in commands if c.cmd == "ARG" for v in c.value)


@pytest.mark.parametrize("runtime", IMAGE_RUNTIMES)
def test_dockerfile_parses_with_buildkits_parser(runtime: str) -> None:
    commands = parse(runtime)
    assert commands[0].cmd == "FROM"
    assert {c.cmd for c in commands} <= {
        "FROM", "ARG", "ENV", "RUN", "COPY", "VOLUME", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "LABEL",
    }  # fmt: skip
    assert not [c for c in commands if c.cmd == "ADD"]  # COPY only: nothing fetched behind our back


@pytest.mark.parametrize("runtime", IMAGE_RUNTIMES)
def test_base_images_are_pinned_to_exact_versions(runtime: str) -> None:
    names: set[str] = set()
    for command in parse(runtime):
        if command.cmd != "FROM":
            continue
        image = command.value[0]
        if len(command.value) == 3:
            assert command.value[1].upper() == "AS"
        if image == "scratch" or image in names:
            names.add(command.value[-1])
            continue
        assert "$" not in image, f"{image}: base images are written out, not built from ARGs"
        assert "@" not in image or ":" in image.split("@")[0]
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag not in ("latest", "stable", "edge", "nightly", "main"), f"{image} floats"
        assert re.search(r"\d+\.\d+", tag), f"{image}: the tag is not a version"
        if len(command.value) == 3:
            names.add(command.value[2])


def test_expected_bases() -> None:
    def bases(runtime: str) -> list[str]:
        return [c.value[0] for c in parse(runtime) if c.cmd == "FROM" and c.value[0] != "scratch"]

    assert bases("llamacpp") == ["nvidia/cuda:12.8.1-devel-ubuntu24.04", "nvidia/cuda:12.8.1-runtime-ubuntu24.04"]
    assert bases("vllm") == ["vllm/vllm-openai:v0.11.0"]
    assert bases("ollama") == ["ollama/ollama:0.12.6", "python:3.11.13-slim-bookworm"]
    assert bases("dmr") == ["docker/model-runner:v1.1.30-cuda"]
    assert bases("multi") == [
        "nvidia/cuda:12.8.1-devel-ubuntu24.04", "ollama/ollama:0.12.6", "docker/model-runner:v1.1.30-cuda",
        "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
    ]  # fmt: skip


@pytest.mark.parametrize("runtime", IMAGE_RUNTIMES)
def test_every_writable_directory_is_a_volume(runtime: str) -> None:
    final = final_stage(runtime)
    volumes = [v for c in final if c.cmd == "VOLUME" for v in c.value]
    assert tuple(volumes) == VOLUMES
    env = env_of(final)
    assert (env["BEACON_DATA_DIR"], env["BEACON_MODELS_DIR"], env["BEACON_CACHE_DIR"]) == ("/data", "/models", "/cache")
    assert env["BEACON_RUNTIME"] == runtimes_in(runtime)[0]
    # The image says which Python and beacon the start script uses.
    assert env["BEACON_PYTHON"] and env["BEACON_BIN"]


@pytest.mark.parametrize("runtime", IMAGE_RUNTIMES)
def test_image_copies_the_start_script_and_installs_the_package(runtime: str) -> None:
    final = final_stage(runtime)
    copies = [(c.flags, c.value) for c in final if c.cmd == "COPY"]
    assert ((("--chmod=755",), ("vm_images/common/start-node.sh", "/opt/beacon/start-node.sh"))) in copies
    assert ((), ("pyproject.toml", "/opt/beacon/src/")) in copies
    assert ((), ("beacon_golem", "/opt/beacon/src/beacon_golem")) in copies
    assert ((("--chmod=755",), ("vm_images/common/install-beacon.sh", "/opt/beacon/install-beacon.sh"))) in copies
    runs = " ".join(joined(final, "RUN"))
    # One install step for every image: the shared script, which pip-installs the copied package.
    assert "/opt/beacon/install-beacon.sh " in runs
    assert "pip install --no-cache-dir ." in (ROOT / "vm_images/common/install-beacon.sh").read_text()
    for flags, value in copies:
        if not any(f.startswith("--from") for f in flags):
            assert (ROOT / value[0]).exists(), f"COPY source {value[0]} is not in the repository"


@pytest.mark.parametrize("runtime", BAKING_IMAGES)
def test_model_can_be_baked_in_at_build_time(runtime: str) -> None:
    final = final_stage(runtime)
    assert args_of(final)["BEACON_MODEL"] == '""'
    bake = [c for c in final if c.cmd == "RUN" and "prepare_model.py --bake" in " ".join(c.value)]
    assert len(bake) == 1 and f"--runtime {runtime}" in bake[0].value[0]
    assert env_of(final)["BEACON_BAKED_MODEL"] == "${BEACON_MODEL}"
    # The bake step runs before the package is installed, so code changes do not re-pull models.
    index = final.index(bake[0])
    install = next(i for i, c in enumerate(final) if c.cmd == "RUN" and "install-beacon.sh" in c.value[0])
    assert index < install


@pytest.mark.parametrize("runtime", IMAGE_RUNTIMES)
def test_build_context_is_trimmed_to_what_the_image_uses(runtime: str) -> None:
    ignore = (dockerfile_path(runtime).parent / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"
    for kept in ("!pyproject.toml", "!beacon_golem", "!vm_images/common"):
        assert kept in ignore


def test_start_script_is_executable_bash() -> None:
    script = ROOT / "vm_images" / "common" / "start-node.sh"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)


# ---- build and push commands ---------------------------------------------------------------------
def test_docker_build_argv() -> None:
    argv = docker_build_argv(Path("/r/vm_images/llamacpp/Dockerfile"), "beacon-golem-llamacpp:0.1.0", Path("/r"))
    assert argv == [
        "docker", "build", "--file", "/r/vm_images/llamacpp/Dockerfile", "--tag", "beacon-golem-llamacpp:0.1.0",
        "--platform", "linux/amd64", "/r",
    ]  # fmt: skip
    argv = docker_build_argv(
        Path("df"), "t:1", Path("."), model="Qwen/Qwen2.5-0.5B-Instruct", models_context=Path("/tmp/ctx"),
        build_args={"LLAMA_CPP_VERSION": "b8967"}, no_cache=True, docker="/usr/bin/docker",
    )  # fmt: skip
    assert argv == [
        "/usr/bin/docker", "build", "--file", "df", "--tag", "t:1", "--platform", PLATFORM,
        "--build-arg", "BEACON_MODEL=Qwen/Qwen2.5-0.5B-Instruct", "--build-arg", "LLAMA_CPP_VERSION=b8967",
        "--build-context", "models=/tmp/ctx", "--no-cache", ".",
    ]  # fmt: skip


def test_gvmkit_argv() -> None:
    assert gvmkit_build_argv("beacon-golem-dmr:0.1.0", Path("/o/x.gvmi")) == [
        "gvmkit-build", "beacon-golem-dmr:0.1.0", "--output", "/o/x.gvmi",
    ]  # fmt: skip
    assert gvmkit_push_argv(Path("/o/x.gvmi")) == ["gvmkit-build", "--direct-file-upload", "/o/x.gvmi", "--push", "--nologin"]
    assert gvmkit_push_argv(Path("/o/x.gvmi"), "beacon/ollama:0.1.0") == [
        "gvmkit-build", "--direct-file-upload", "/o/x.gvmi", "--push-to", "beacon/ollama:0.1.0",
    ]  # fmt: skip


def test_default_tags() -> None:
    assert default_tag("ollama") == "beacon-golem-ollama:0.1.0"
    assert default_tag("vllm", "Qwen/Qwen2.5-0.5B-Instruct") == "beacon-golem-vllm:0.1.0-qwen-qwen2.5-0.5b-instruct"
    assert slug("https://huggingface.co/x/resolve/main/Model.Q4_K_M.gguf") == "model.q4_k_m"
    assert slug("/models/tiny.gguf") == "tiny" and slug("llama3.2:1b") == "llama3.2-1b"
    with pytest.raises(UsageError):
        default_tag("tgi")


def test_stage_model_for_each_kind_of_model(tmp_path: Path) -> None:
    gguf = tmp_path / "src" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    model, context, model_dir = stage_model(str(gguf), tmp_path / "stage1")
    assert (model, context, model_dir) == ("tiny.gguf", tmp_path / "stage1", "")
    assert sorted(p.name for p in context.iterdir()) == ["tiny.gguf"]  # alone in the context
    hf = tmp_path / "Qwen2.5-0.5B"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert stage_model(str(hf), tmp_path / "stage2") == ("Qwen2.5-0.5B", hf.resolve(), "Qwen2.5-0.5B/")
    assert stage_model("llama3.2:1b", tmp_path / "stage3") == ("llama3.2:1b", tmp_path / "stage3", "")
    assert stage_model(None, tmp_path / "stage4") == (None, tmp_path / "stage4", "")
    with pytest.raises(UsageError):
        stage_model("./absent.gguf", tmp_path / "stage5")


def test_sha3_224_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gvmi"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    assert sha3_224_file(path) == hashlib.sha3_224(path.read_bytes()).hexdigest()
    gvmi = GvmiFile.of(path)
    assert gvmi.size == 3 * 1024 * 1024 + 5 and len(gvmi.sha3_224) == 56
    assert gvmi.summary().endswith(f"sha3-224:{gvmi.sha3_224}")


# ---- the lock file ---------------------------------------------------------------------------------
def test_lock_round_trips_and_lookup_takes_the_newest(tmp_path: Path) -> None:
    lock_path = tmp_path / "images.lock.json"
    assert lookup_image("ollama", lock_path) is None  # no file yet
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    older = ImageLockEntry(runtime="ollama", tag="beacon-golem-ollama:0.1.0", hash=HASH_A, size=10, created_at=t0)
    newer = ImageLockEntry(
        runtime="ollama", tag="beacon-golem-ollama:0.1.1", hash=HASH_B, size=20, created_at=t0 + timedelta(days=1),
        registry_tag="beacon/ollama:0.1.1", model="llama3.2:1b",
    )  # fmt: skip
    save_lock(ImageLock(images=[newer, older]), lock_path)
    loaded = load_lock(lock_path)
    assert loaded.images == [older, newer]  # kept in time order
    assert ImageLock.model_validate_json(lock_path.read_text()) == loaded
    assert lookup_image("ollama", lock_path) == newer
    assert lookup_image("vllm", lock_path) is None
    record_image(new_entry("vllm", "beacon-golem-vllm:0.1.0", HASH_A, 5), lock_path)
    record_image(new_entry("vllm", "beacon-golem-vllm:0.1.0", HASH_A, 5), lock_path)  # same again
    entries = load_lock(lock_path).images
    assert [e.runtime for e in entries].count("vllm") == 1
    assert lookup_image("vllm", lock_path).hash == HASH_A  # type: ignore[union-attr]


def test_lock_rejects_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ImageLockEntry(runtime="ollama", tag="t", hash="abc", size=1, created_at=datetime.now(UTC))
    with pytest.raises(ValueError):
        ImageLockEntry(runtime="tgi", tag="t", hash=HASH_A, size=1, created_at=datetime.now(UTC))
    assert ImageLockEntry(runtime="dmr", tag="t", hash="sha3:" + HASH_A.upper(), size=1, created_at=datetime.now(UTC)).hash == HASH_A
    broken = tmp_path / "lock.json"
    broken.write_text('{"version": 1, "images": [{"runtime": "ollama"}]}')
    with pytest.raises(BeaconError, match="not a valid image lock file"):
        load_lock(broken)


def test_committed_lock_file_is_valid() -> None:
    assert isinstance(load_lock(ROOT / "beacon_golem" / "imaging" / "images.lock.json"), ImageLock)


# ---- beacon image, end to end ----------------------------------------------------------------------
def beacon(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_golem.cli", *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_build_without_docker_says_so_in_one_line(tmp_path: Path) -> None:
    # No docker binary at all: PATH holds only this Python's directory.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "BEACON_DATA_DIR": str(tmp_path)}
    line = one_error_line(beacon("image", "build", "llamacpp", env=env))
    assert "docker is not installed" in line
    # A docker CLI whose engine is not running (`docker info` fails).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(
        "#!/bin/sh\necho 'Client:'\n"
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    line = one_error_line(beacon("image", "build", "ollama", env=env))
    assert "no Docker engine: Cannot connect to the Docker daemon" in line


def test_push_without_a_built_image_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BEACON_DATA_DIR": str(tmp_path)}
    line = one_error_line(beacon("image", "push", "vllm", env=env))
    assert "no built vllm image" in line and "beacon image build vllm" in line
    assert one_error_line(beacon("image", "build", "tgi", env=env)).startswith("error: no VM image for runtime 'tgi'")


FAKE_DOCKER = """#!/bin/sh
# Stand-in for docker: `info` reaches an "engine"; `build` records its argv.
case "$1" in
  info) echo '"28.2.2"' ;;
  build) printf '%s\\n' "$@" > "{log}/docker-build.args"
         for a in "$@"; do case "$a" in models=*) ls "${{a#models=}}" > "{log}/models-context.ls" ;; esac; done ;;
  *) exit 2 ;;
esac
"""
FAKE_GVMKIT = """#!/bin/sh
# Stand-in for gvmkit-build: --output FILE writes an "image"; --direct-file-upload records the push.
if [ "$1" = "--direct-file-upload" ]; then printf '%s\\n' "$@" > "{log}/gvmkit-push.args"; exit 0; fi
printf '%s\\n' "$@" > "{log}/gvmkit-build.args"
printf 'gvmi image of %s' "$1" > "$3"
"""


def test_build_then_push_with_stand_in_tools(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bin_dir = tmp_path / "bin"
    log.mkdir()
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("gvmkit-build", FAKE_GVMKIT)):
        (bin_dir / name).write_text(textwrap.dedent(body).format(log=log))
        (bin_dir / name).chmod(0o755)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    out_dir, lock = tmp_path / "images", tmp_path / "images.lock.json"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "BEACON_DATA_DIR": str(tmp_path)}

    done = beacon("image", "build", "llamacpp", "--model", str(model), "--out", str(out_dir), env=env)
    assert done.returncode == 0, done.stderr
    tag = "beacon-golem-llamacpp:0.1.0-tiny"
    gvmi = out_dir / "beacon-golem-llamacpp-0.1.0-tiny.gvmi"
    build_args = (log / "docker-build.args").read_text().split("\n")
    assert build_args[:7] == ["build", "--file", str(ROOT / "vm_images/llamacpp/Dockerfile"), "--tag", tag, "--platform", "linux/amd64"]
    assert "BEACON_MODEL=tiny.gguf" in build_args and build_args[-2] == str(ROOT)
    assert (log / "models-context.ls").read_text().split() == ["tiny.gguf"]  # the model alone went in
    assert (log / "gvmkit-build.args").read_text().split() == [tag, "--output", str(gvmi)]
    digest = hashlib.sha3_224(gvmi.read_bytes()).hexdigest()
    printed = " ".join(done.stdout.split())
    assert str(gvmi) in printed and f"sha3-224:{digest}" in printed and f"({gvmi.stat().st_size} bytes)" in printed

    done = beacon("image", "push", "llamacpp", "--out", str(out_dir), "--lock", str(lock), "--push-to", "beacon/llamacpp:0.1.0", env=env)
    assert done.returncode == 0, done.stderr
    assert (log / "gvmkit-push.args").read_text().split() == [
        "--direct-file-upload", str(gvmi), "--push-to", "beacon/llamacpp:0.1.0",
    ]  # fmt: skip
    entry = lookup_image("llamacpp", lock)
    assert entry is not None
    assert (entry.runtime, entry.tag, entry.hash, entry.size, entry.registry_tag, entry.model) == (
        "llamacpp", tag, digest, gvmi.stat().st_size, "beacon/llamacpp:0.1.0", "tiny.gguf",
    )  # fmt: skip
    assert entry.created_at.tzinfo is not None
