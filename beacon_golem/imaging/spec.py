"""Where the VM image sources live and what every image promises (its volumes, its paths)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from beacon_golem import __version__
from beacon_golem.core.errors import UsageError

#: The image holding several runtimes, the node switching between them (docs/images.md, "One
#: provider, several runtimes"): `beacon image build multi`, and its lock entries' runtime.
MULTI_IMAGE = "multi"

#: The runtimes the multi image holds, the one it starts with first. Not vLLM: its image alone is
#: most of the registry's limit.
MULTI_RUNTIMES = ("llamacpp", "ollama", "dmr")

#: The images `beacon image` builds, one Dockerfile each under vm_images/<name>/: one per
#: runtime, and the multi image. A lock entry's `runtime` is one of these names.
IMAGE_RUNTIMES = ("ollama", "dmr", "vllm", "llamacpp", MULTI_IMAGE)

#: Every writable directory of a node, declared VOLUME in each image: in a Golem VM only
#: volumes live on the provider's disk; the rest of / is a ~128 MB in-memory overlay.
#: /data: node data (jobs and their results, node id) and logs/; /models: uploaded and pulled
#: models; /cache: HOME, Hugging Face and compiler caches, temporary files.
VOLUMES = ("/data", "/models", "/cache")

#: Paths inside every image.
START_SCRIPT = "/opt/beacon/start-node.sh"
BAKED_DIR = "/opt/beacon/baked"

#: Golem's image registry takes uploads up to about this size.
REGISTRY_LIMIT_BYTES = 10 * 1000**3


def repo_root() -> Path:
    """The source checkout holding vm_images/ (BEACON_REPO_ROOT overrides)."""
    override = os.environ.get("BEACON_REPO_ROOT")
    root = Path(override) if override else Path(__file__).resolve().parents[2]
    return root


def images_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "vm_images"


def dockerfile(runtime: str, root: Path | None = None) -> Path:
    check_runtime(runtime)
    return images_dir(root) / runtime / "Dockerfile"


def check_runtime(runtime: str) -> str:
    if runtime not in IMAGE_RUNTIMES:
        raise UsageError(f"no VM image for runtime {runtime!r}: choose one of {', '.join(IMAGE_RUNTIMES)}")
    return runtime


def runtimes_in(image: str) -> tuple[str, ...]:
    """The runtimes an image holds, the one it starts with (its BEACON_RUNTIME) first."""
    check_runtime(image)
    return MULTI_RUNTIMES if image == MULTI_IMAGE else (image,)


def slug(text: str, limit: int = 60) -> str:
    """A docker-tag-safe form of a model: 'Qwen/Qwen2.5-0.5B' -> 'qwen-qwen2.5-0.5b'.

    A path or URL gives its file name without .gguf: '/m/tiny.gguf' -> 'tiny'.
    """
    if "://" in text or text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists():
        text = Path(text.rstrip("/")).name.removesuffix(".gguf")
    cleaned = re.sub(r"[^a-z0-9_.-]+", "-", text.lower())
    return cleaned.strip("-.")[:limit].strip("-.") or "model"


def default_tag(runtime: str, model: str | None = None) -> str:
    """beacon-golem-<runtime>:<version>[-<model>] (Docker tags: [A-Za-z0-9_.-], at most 128);
    beacon-golem-multi:<version> for the multi image."""
    check_runtime(runtime)
    version = __version__ + (f"-{slug(model)}" if model else "")
    return f"beacon-golem-{runtime}:{version[:128]}"
