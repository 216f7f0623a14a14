"""`beacon image build` and `beacon image push`: the VM images a Golem provider runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from beacon_golem.cli import app
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.imaging.build import build_image, find_built, push_image
from beacon_golem.imaging.gvmi import human_size
from beacon_golem.imaging.lock import default_lock_path
from beacon_golem.imaging.spec import IMAGE_RUNTIMES

image_app = typer.Typer(help="Build and push the Golem VM images (one per runtime).", no_args_is_help=True)
app.add_typer(image_app, name="image")

out = Console()
RUNTIME_HELP = f"Runtime whose image to use: {', '.join(IMAGE_RUNTIMES)}"


def _out_dir(value: Path | None) -> Path:
    return value or load_settings().data_dir / "images"


def _build_args(values: list[str] | None) -> dict[str, str]:
    args = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {value}: use KEY=VALUE")
        args[key] = val
    return args


@image_app.command("build")
def image_build(
    runtime: str = typer.Argument(..., help=RUNTIME_HELP),
    model: str = typer.Option(
        None,
        help="Bake a model in: a local GGUF file (llamacpp, ollama) or model directory (vllm), "
        "or a name pulled at build time (ollama/dmr name, Hugging Face repo, GGUF URL)",
    ),
    tag: str = typer.Option(None, help="Docker tag to build (default beacon-golem-<runtime>:<version>[-<model>])"),
    out_dir: Path = typer.Option(None, "--out", help="Where the .gvmi goes (default <data dir>/images)"),
    build_arg: list[str] = typer.Option(None, help="Extra docker build argument KEY=VALUE (repeatable)"),
    no_cache: bool = typer.Option(False, help="Build without Docker's layer cache"),
) -> None:
    """docker build, then gvmkit-build: prints the .gvmi path, size and sha3-224 hash."""
    built = build_image(
        runtime, model=model, tag=tag, out_dir=_out_dir(out_dir), no_cache=no_cache, build_args=_build_args(build_arg)
    )
    out.print(f"built {built.tag}")
    out.print(built.gvmi.summary(), soft_wrap=True)


@image_app.command("push")
def image_push(
    runtime: str = typer.Argument(..., help=RUNTIME_HELP),
    gvmi: Path = typer.Option(None, help="The .gvmi to upload (default: the newest one built for RUNTIME)"),
    push_to: str = typer.Option(
        None, help="Registry repository <user>/<repo>:<tag> (default: anonymous upload, found by hash)"
    ),
    out_dir: Path = typer.Option(None, "--out", help="Where `beacon image build` put the .gvmi files"),
    lock: Path = typer.Option(None, help="Lock file to record the image in (default vm_images/images.lock.json)"),
) -> None:
    """Upload with gvmkit-build and record runtime, tag, hash, size and time in the lock file."""
    built = find_built(runtime, _out_dir(out_dir), gvmi)
    entry = push_image(built, push_to=push_to, lock_path=lock)
    where = entry.registry_tag or "the registry (anonymous, by hash)"
    out.print(f"pushed {built.gvmi.path.name} ({human_size(entry.size)}) to {where}")
    out.print(f"sha3-224:{entry.hash}  recorded in {lock or default_lock_path()}", soft_wrap=True)
