"""The commands `beacon image` runs, as argv lists built by pure functions (tests check them).

docker build: BuildKit (the default builder since Docker 23) is needed for the
`--build-context` that carries a local model into the image.
gvmkit-build (github.com/golemfactory/gvmkit-build-rs, src/main.rs): `gvmkit-build IMAGE
--output FILE` converts a local Docker image to a .gvmi; `--direct-file-upload FILE` uploads a
ready .gvmi, with `--push --nologin` anonymously (found by hash) or with `--push-to
user/repo:tag` to a registry repository (credentials from REGISTRY_USER / REGISTRY_TOKEN or
its saved login).
"""

from __future__ import annotations

from pathlib import Path

#: Golem VMs are x86-64.
PLATFORM = "linux/amd64"


def docker_build_argv(
    dockerfile: Path,
    tag: str,
    context: Path,
    *,
    model: str | None = None,
    models_context: Path | None = None,
    build_args: dict[str, str] | None = None,
    no_cache: bool = False,
    docker: str = "docker",
) -> list[str]:
    """docker build for one runtime's image.

    `model` becomes the BEACON_MODEL build argument (the image bakes it in); `models_context`
    is a directory handed to the build as the `models` context (a local model file's home).
    """
    argv = [docker, "build", "--file", str(dockerfile), "--tag", tag, "--platform", PLATFORM]
    args = dict(build_args or {})
    if model:
        args["BEACON_MODEL"] = model
    for key in sorted(args):
        argv += ["--build-arg", f"{key}={args[key]}"]
    if models_context is not None:
        argv += ["--build-context", f"models={models_context}"]
    if no_cache:
        argv.append("--no-cache")
    argv.append(str(context))
    return argv


def gvmkit_build_argv(tag: str, output: Path, gvmkit: str = "gvmkit-build") -> list[str]:
    """Convert the local Docker image `tag` to a .gvmi file at `output`."""
    return [gvmkit, tag, "--output", str(output)]


def gvmkit_push_argv(gvmi: Path, registry_tag: str | None = None, gvmkit: str = "gvmkit-build") -> list[str]:
    """Upload a built .gvmi: to `user/repo:tag` when given, else anonymously (by hash)."""
    argv = [gvmkit, "--direct-file-upload", str(gvmi)]
    if registry_tag:
        return [*argv, "--push-to", registry_tag]
    return [*argv, "--push", "--nologin"]

