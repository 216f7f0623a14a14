"""Build a runtime's VM image (docker build, then gvmkit-build) and push it to Golem's registry."""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.log import get_logger
from beacon_golem.imaging.commands import docker_build_argv, gvmkit_build_argv, gvmkit_push_argv
from beacon_golem.imaging.gvmi import GvmiFile
from beacon_golem.imaging.lock import ImageLockEntry, new_entry, record_image
from beacon_golem.imaging.spec import (
    MULTI_IMAGE,
    MULTI_RUNTIMES,
    REGISTRY_LIMIT_BYTES,
    check_runtime,
    default_tag,
    dockerfile,
    repo_root,
)
from beacon_golem.imaging.tools import require_docker, require_gvmkit, run_visible

log = get_logger(__name__)


class BuiltImage(BaseModel):
    """What `beacon image build` made; kept next to the .gvmi as <file>.json for `push`."""

    runtime: str
    tag: str
    model: str | None = None
    gvmi: GvmiFile
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.gvmi.path)


def sidecar_path(gvmi: Path) -> Path:
    return gvmi.with_name(gvmi.name + ".json")


def gvmi_name(tag: str) -> str:
    return tag.replace("/", "-").replace(":", "-") + ".gvmi"


def stage_model(model: str | None, staging: Path) -> tuple[str | None, Path, str]:
    """How a model reaches the build: (BEACON_MODEL, the `models` build context, BEACON_MODEL_DIR).

    A local file is hard-linked (else copied) alone into `staging`, which becomes the context;
    a local directory is the context itself and lands in /opt/beacon/baked/<its name>/.
    Anything else is a name the image's bake step pulls (Ollama/DMR name, Hugging Face repo,
    GGUF URL). No model: an empty context and no BEACON_MODEL.
    """
    staging.mkdir(parents=True, exist_ok=True)
    if not model:
        return None, staging, ""
    local = Path(model).expanduser()
    if "://" not in model and local.exists():
        if local.is_dir():
            return local.name, local.resolve(), f"{local.name}/"
        target = staging / local.name
        try:
            os.link(local, target)
        except OSError:
            log.info("copying_model_into_build_context", model=str(local))
            shutil.copy2(local, target)
        return local.name, staging, ""
    if model.startswith(("/", "./", "../", "~")):
        raise UsageError(f"model {model} does not exist")
    return model, staging, ""


def build_image(
    runtime: str,
    *,
    model: str | None = None,
    tag: str | None = None,
    out_dir: Path,
    no_cache: bool = False,
    build_args: dict[str, str] | None = None,
) -> BuiltImage:
    """docker build + gvmkit-build; returns the .gvmi with its size and SHA3-224."""
    check_runtime(runtime)
    if runtime == MULTI_IMAGE and model:
        # One baked model cannot serve three runtimes (a GGUF file for llama.cpp, an Ollama or
        # DMR name for the others): models go to the /models volume after deploy.
        raise UsageError(
            f"the multi image bakes no model: upload or pull it after deploy (/models is shared by {', '.join(MULTI_RUNTIMES)})"
        )
    local = Path(model).expanduser() if model and "://" not in model else None
    if runtime == "dmr" and local and local.exists():
        raise UsageError("the dmr image bakes models by name (e.g. ai/smollm2), not from local files")
    if runtime in ("ollama", "llamacpp") and local and local.is_dir():
        raise UsageError(f"the {runtime} image bakes a GGUF file or a model name, not a directory")
    if runtime == "vllm" and local and local.is_file():
        raise UsageError("the vllm image bakes a model directory (with config.json) or a Hugging Face repo id")
    docker = require_docker()
    gvmkit = require_gvmkit()
    source = dockerfile(runtime)
    if not source.is_file():
        raise BeaconError(f"{source} is missing: run beacon image from a beacon-golem source checkout")
    tag = tag or default_tag(runtime, model)
    out_dir = out_dir.expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / gvmi_name(tag)
    with tempfile.TemporaryDirectory(prefix="beacon-models-", dir=out_dir) as staging:
        baked, context, model_dir = stage_model(model, Path(staging))
        args = dict(build_args or {})
        if model_dir:
            args["BEACON_MODEL_DIR"] = model_dir
        # The multi image has no `models` stage to hand a context to.
        models_context = None if runtime == MULTI_IMAGE else context
        run_visible(
            docker_build_argv(
                source, tag, repo_root(), model=baked, models_context=models_context,
                build_args=args, no_cache=no_cache, docker=docker,
            ),
            "docker build",
        )  # fmt: skip
    for stale in (output, output.with_name(output.name + ".descr.bin")):
        stale.unlink(missing_ok=True)  # gvmkit-build reuses an existing file instead of converting
    run_visible(gvmkit_build_argv(tag, output, gvmkit), "gvmkit-build")
    if not output.is_file():
        raise BeaconError(f"gvmkit-build finished but wrote no {output}")
    # The model as the image knows it (BEACON_BAKED_MODEL): a file or directory name, not a local path.
    built = BuiltImage(runtime=runtime, tag=tag, model=baked, gvmi=GvmiFile.of(output))
    built.sidecar.write_text(built.model_dump_json(indent=2) + "\n")
    return built


def find_built(runtime: str, out_dir: Path, gvmi: Path | None = None) -> BuiltImage:
    """The image to push: the given .gvmi, else the newest one built for `runtime` in out_dir."""
    check_runtime(runtime)
    out_dir = out_dir.expanduser().resolve()
    if gvmi is not None:
        gvmi = gvmi.expanduser().resolve()
        if not gvmi.is_file():
            raise UsageError(f"{gvmi} does not exist")
        sidecar = sidecar_path(gvmi)
        if sidecar.is_file():
            built = BuiltImage.model_validate_json(sidecar.read_text())
            if built.runtime != runtime:
                raise UsageError(f"{gvmi} was built for {built.runtime}, not {runtime}")
            return built.model_copy(update={"gvmi": GvmiFile.of(gvmi)})
        return BuiltImage(runtime=runtime, tag=gvmi.stem, gvmi=GvmiFile.of(gvmi))
    candidates = []
    for sidecar in out_dir.glob("*.gvmi.json") if out_dir.is_dir() else []:
        try:
            built = BuiltImage.model_validate_json(sidecar.read_text())
        except ValueError:
            continue
        if built.runtime == runtime and built.gvmi.path.is_file():
            candidates.append(built)
    if not candidates:
        raise BeaconError(
            f"no built {runtime} image in {out_dir}: run `beacon image build {runtime}` first (needs a Docker engine)"
        )
    latest = max(candidates, key=lambda b: b.created_at)
    return latest.model_copy(update={"gvmi": GvmiFile.of(latest.gvmi.path)})


def push_image(built: BuiltImage, *, push_to: str | None = None, lock_path: Path | None = None) -> ImageLockEntry:
    """Upload with gvmkit-build, then record the image in the lock file."""
    if built.gvmi.size > REGISTRY_LIMIT_BYTES:
        raise BeaconError(
            f"{built.gvmi.path} is {built.gvmi.size / 1e9:.1f} GB; Golem's registry takes about 10 GB: "
            "leave the model out of the image and upload or pull it after deploy"
        )
    if push_to and "/" not in push_to:
        raise UsageError(f"--push-to {push_to}: use <registry user>/<repository>:<tag>")
    gvmkit = require_gvmkit()
    run_visible(gvmkit_push_argv(built.gvmi.path, push_to, gvmkit), "gvmkit-build --push")
    entry = new_entry(
        built.runtime, built.tag, built.gvmi.sha3_224, built.gvmi.size, registry_tag=push_to, model=built.model
    )
    record_image(entry, lock_path)
    return entry
