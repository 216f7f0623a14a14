"""The sandbox's node image: what a Golem .gvmi would hold, as a small JSON manifest.

A real node image is a Docker image converted to .gvmi: a root filesystem with the runtime,
the beacon-golem virtual environment, the start script and maybe a baked model, plus the
Dockerfile's ENV, VOLUME and WORKDIR. The sandbox runs everything from this machine instead, so
its image names host files rather than holding them:

  runtime       BEACON_RUNTIME (the sandbox serves llamacpp: llama-server from this machine)
  env           the Dockerfile's ENV (final stage), with the paths that differ here replaced:
                PATH, BEACON_PYTHON and BEACON_BIN point at this machine's virtual environment,
                BEACON_LLAMA_SERVER / LD_LIBRARY_PATH are dropped unless this process has them
  volumes       the Dockerfile's VOLUME paths (/data, /models, /cache): empty directories per VM
  workdir       the Dockerfile's WORKDIR: where commands run
  start_script  a host path, mounted read-only at start_script_at (/opt/beacon/start-node.sh)
  baked         file name -> host path, mounted read-only in baked_dir (/opt/beacon/baked):
                the tiny model is 0.5 MB, so it is referenced, not embedded
  host_paths    what of this machine the VM must see (the virtual environment, the Python it
                is made from, the beacon_golem package): kept visible where the VM hides
                host directories (/tmp, /run, ...)

So an image is only valid on the machine that built it (the sandbox is local). The bytes are
canonical JSON; their sha3-224 hex digest is the image hash the sandbox registry serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from beacon_golem.sandbox.vm_dockerfile import DockerfileError, final_stage

FORMAT: Literal["beacon-sandbox-image/1"] = "beacon-sandbox-image/1"
#: Larger than any manifest: bytes beyond this are not a sandbox image (a .gvmi, say).
MAX_IMAGE_BYTES = 256 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
VM_IMAGES = REPO_ROOT / "vm_images"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: ENV values that name files of the real image, which do not exist on this machine.
IMAGE_ONLY_ENV = ("PATH", "BEACON_PYTHON", "BEACON_BIN", "BEACON_LLAMA_SERVER", "LD_LIBRARY_PATH")


class ImageError(ValueError):
    """Not a usable sandbox image; the message is one line."""


class SandboxImage(BaseModel):
    format: Literal["beacon-sandbox-image/1"] = FORMAT
    runtime: str
    env: dict[str, str] = Field(default_factory=dict)
    volumes: list[str]
    workdir: str = "/"
    start_script: str
    start_script_at: str = "/opt/beacon/start-node.sh"
    baked_dir: str = "/opt/beacon/baked"
    baked: dict[str, str] = Field(default_factory=dict)
    host_paths: list[str] = Field(default_factory=list)

    @field_validator("volumes", "host_paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/") or ".." in Path(path).parts:
                raise ValueError(f"{path!r} is not an absolute path")
        return paths

    @field_validator("workdir", "start_script", "start_script_at", "baked_dir")
    @classmethod
    def _absolute_one(cls, path: str) -> str:
        cls._absolute([path])
        return path

    @field_validator("baked")
    @classmethod
    def _names(cls, baked: dict[str, str]) -> dict[str, str]:
        for name, path in baked.items():
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a file name")
            cls._absolute([path])
        return baked

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def image_hash(data: bytes) -> str:
    """The hash Golem's registry would give the image: sha3-224 of its bytes, hex."""
    return hashlib.sha3_224(data).hexdigest()


def parse_image(data: bytes) -> SandboxImage:
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"not a sandbox image ({len(data)} bytes; a manifest is at most {MAX_IMAGE_BYTES})")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ImageError("not a sandbox image (not JSON)") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ImageError(f"not a sandbox image (format is not {FORMAT})")
    try:
        return SandboxImage.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "image"
        raise ImageError(f"bad sandbox image: {where}: {first['msg']}") from None


def python_paths(python: Path) -> list[str]:
    """The directories a Python needs: its prefix (a venv) and the installation it comes from."""
    paths = {str(python.parent.parent), str(Path(os.path.realpath(python)).parent.parent)}
    if Path(python).absolute() == Path(sys.executable).absolute():
        paths |= {sys.prefix, sys.base_prefix}
    return sorted(paths)


def build_image(
    runtime: str = "llamacpp",
    model_path: Path | None = None,
    env: dict[str, str] | None = None,
    *,
    dockerfile: Path | None = None,
    start_script: Path | None = None,
    python: Path | None = None,
) -> bytes:
    """A sandbox image for `runtime`, from its Dockerfile in vm_images/, baking `model_path` in.

    python: the Python whose environment has beacon-golem (this one by default); its bin/beacon
    is the node command. Without a model the image bakes none (BEACON_BAKED_MODEL empty) and
    start-node.sh serves what BEACON_MODEL names (llamacpp: the generated tiny model).
    """
    dockerfile = dockerfile or VM_IMAGES / runtime / "Dockerfile"
    start_script = start_script or VM_IMAGES / "common" / "start-node.sh"
    python = python or Path(sys.executable)
    try:
        stage = final_stage(dockerfile)
    except DockerfileError as exc:
        raise ImageError(f"cannot build a sandbox image for {runtime}: {exc}") from None
    if not start_script.is_file():
        raise ImageError(f"cannot build a sandbox image: no start script at {start_script}")
    bin_dir = python.parent
    image_env = {k: v for k, v in stage.env.items() if k not in IMAGE_ONLY_ENV}
    image_env.update(
        PATH=f"{bin_dir}:{SYSTEM_PATH}",
        BEACON_RUNTIME=runtime,
        BEACON_PYTHON=str(python),
        BEACON_BIN=str(bin_dir / "beacon"),
    )
    host_paths = python_paths(python) + [str(Path(__file__).resolve().parents[1])]
    for name in ("BEACON_LLAMA_SERVER", "LD_LIBRARY_PATH"):
        if os.environ.get(name):
            image_env[name] = os.environ[name]
    if image_env.get("BEACON_LLAMA_SERVER"):
        host_paths.append(str(Path(image_env["BEACON_LLAMA_SERVER"]).resolve().parent))
    baked: dict[str, str] = {}
    if model_path is not None:
        model_path = model_path.resolve()
        if not model_path.is_file():
            raise ImageError(f"cannot bake {model_path} into a sandbox image: no such file")
        baked[model_path.name] = str(model_path)
    image_env["BEACON_BAKED_MODEL"] = model_path.name if model_path is not None else ""
    image_env.update(env or {})
    image = SandboxImage(
        runtime=runtime,
        env=image_env,
        volumes=stage.volumes,
        workdir=stage.workdir,
        start_script=str(start_script.resolve()),
        baked=baked,
        host_paths=sorted(set(host_paths)),
    )
    return image.to_bytes()


def write_tiny_model(dest: Path, python: Path | None = None, timeout_s: float = 120) -> Path:
    """The deterministic tiny test model at `dest`, written by `beacon models tiny` if missing."""
    if dest.is_file():
        return dest
    beacon = (python or Path(sys.executable)).parent / "beacon"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        done = subprocess.run(
            [str(beacon), "models", "tiny", "--out", str(part)],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"cannot write the tiny model with {beacon}: {exc}") from None
    if done.returncode != 0 or not part.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"`beacon models tiny` failed (exit {done.returncode}): {last[0]}")
    part.replace(dest)
    return dest
