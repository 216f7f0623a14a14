"""How a model reaches a node in a VM: uploaded after deploy, baked into the image, or pulled.

vm_images/common/start-node.sh runs this before `beacon node up`; the images' Dockerfiles run it
with --bake to put a model into the image. It uses the standard library only, because the bake
step runs it as a plain script before beacon-golem is installed in the image.

Where a model is looked for, in this order:
  uploaded  in the models volume (BEACON_MODELS_DIR, /models), put there by the requestor
  baked     in the image (BEACON_BAKED_DIR, /opt/beacon/baked), from `beacon image build --model`
  pulled    downloaded now, only with BEACON_MODEL_PULL=1, where the provider allows outbound traffic

What a model is, per runtime:
  llamacpp  a GGUF file: a path, a file name in the models volume or the image, or an https URL
            (pulled into the models volume); "tiny" runs the generated tiny model
  vllm      a Hugging Face model directory (with config.json), or a repo id ("Qwen/Qwen2.5-0.5B")
            downloaded with huggingface_hub when pulling
  ollama    an Ollama name ("llama3.2:1b") in an Ollama store (<volume>/ollama, <image>/ollama),
            pulled with `ollama pull`; or a GGUF file, imported with `ollama create`
  dmr       a Docker Model Runner name ("ai/smollm2") in a DMR store (<volume>/dmr, <image>/dmr),
            pulled with POST /models/create

With --shell it prints `export NAME=value` lines for the start script to eval: BEACON_RESOLVED_MODEL
(the value for `beacon node up --model`; empty for the tiny model) and the runtime's store
variables (OLLAMA_MODELS, MODELS_PATH, HF_HOME).

Exit codes: 0 ready; 2 bad configuration; 3 model missing or unusable (refused, nothing
started); 4 a pull or import failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RUNTIMES = ("llamacpp", "vllm", "ollama", "dmr")
TINY = "tiny"
EXIT_CONFIG, EXIT_MISSING, EXIT_FAILED = 2, 3, 4
PULL_HINT = "set BEACON_MODEL_PULL=1 where the provider allows outbound traffic"


class PrepareError(Exception):
    """A refusal with its exit code; the message is one line for the log and the requestor."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def missing(message: str) -> PrepareError:
    return PrepareError(message, EXIT_MISSING)


def failed(message: str) -> PrepareError:
    return PrepareError(message, EXIT_FAILED)


@dataclass(frozen=True)
class Layout:
    models_dir: Path
    baked_dir: Path
    cache_dir: Path
    #: At bake time only: the build's `models` context, mounted (not copied) into the build.
    context_dir: Path | None = None


@dataclass
class Prepared:
    #: The value for `beacon node up --model`; None: the node's default (llamacpp's tiny model).
    model: str | None
    source: str  # "uploaded" | "baked" | "pulled" | "imported" | "generated"
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        values = {"BEACON_RESOLVED_MODEL": self.model or "", "BEACON_MODEL_SOURCE": self.source, **self.env}
        return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())


def say(message: str) -> None:
    print(f"start-node: {message}", file=sys.stderr, flush=True)


# ---- small helpers ---------------------------------------------------------------------------
def is_url(model: str) -> bool:
    return model.startswith(("https://", "http://"))


def url_filename(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise PrepareError(f"cannot tell a file name from the URL {url}", EXIT_CONFIG)
    return urllib.parse.unquote(name)


def candidates(model: str, layout: Layout, *, bake: bool) -> list[Path]:
    """Where a file or directory named `model` may be: itself if absolute, else volume then image."""
    path = Path(model)
    if path.is_absolute():
        return [path]
    places = [layout.models_dir / model, layout.baked_dir / model]
    if bake and layout.context_dir is not None:
        places.append(layout.context_dir / model)
    return places


def looked(places: list[Path]) -> str:
    return ", ".join(str(p) for p in places)


def source_of(path: Path, layout: Layout) -> str:
    return "baked" if layout.baked_dir in path.parents else "uploaded"


def check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise missing(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise missing(f"model file {path} is not a GGUF file (llama.cpp and Ollama load GGUF models)")



def free_port() -> int:
    # Not core.net.free_port: this file runs as a plain script before the package is installed.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: dict[str, object] | None = None, timeout: float | None = 10.0) -> int:
    """Status code of a request (the body is read to its end: pulls stream their progress)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback only)
            while response.read(65536):
                pass
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def download(url: str, dest: Path) -> None:
    """Fetch a file to dest (via dest.part, renamed when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    say(f"pulling {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, 8 * 1024 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise failed(f"pulling {url} failed: {getattr(exc, 'reason', None) or exc}") from exc
    part.replace(dest)


class TempServer:
    """A runtime's server started only to look into or fill its model store, then stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_url: str, name: str, log_path: Path | None) -> None:
        self.argv, self.env, self.ready_url, self.name, self.log_path = argv, env, ready_url, name, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TempServer:
        binary = shutil.which(self.argv[0])
        if binary is None:
            raise PrepareError(f"{self.argv[0]} is not installed in this image", EXIT_CONFIG)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [binary, *self.argv[1:]], env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise failed(f"{self.name} exited with code {self.proc.returncode} while starting (see {self.log_path})")
            if 200 <= http("GET", self.ready_url, timeout=2) < 300:
                return self
            time.sleep(0.3)
        self.__exit__()
        raise failed(f"{self.name} did not answer {self.ready_url} within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- llama.cpp -------------------------------------------------------------------------------
def prepare_llamacpp(model: str, layout: Layout, *, pull: bool, bake: bool) -> Prepared:
    if model == TINY:
        return Prepared(model=None, source="generated")
    if is_url(model):
        name = url_filename(model)
        for place in candidates(name, layout, bake=bake):
            if place.is_file():
                check_gguf(place)
                return Prepared(model=str(place), source=source_of(place, layout))
        if not (pull or bake):
            raise missing(f"model {name} is not in {layout.models_dir} or the image, and pulling is off: {PULL_HINT}")
        dest = (layout.baked_dir if bake else layout.models_dir) / name
        download(model, dest)
        check_gguf(dest)
        return Prepared(model=str(dest), source="pulled")
    places = candidates(model, layout, bake=bake)
    for place in places:
        if place.is_file():
            check_gguf(place)
            if bake and layout.context_dir is not None and layout.context_dir in place.parents:
                dest = layout.baked_dir / model
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(place, dest)
                return Prepared(model=str(dest), source="baked")
            return Prepared(model=str(place), source=source_of(place, layout))
    raise missing(
        f"model file {model} not found (looked in {looked(places)}): upload it to {layout.models_dir}, "
        f"bake it into the image (beacon image build llamacpp --model FILE), or give an https URL and {PULL_HINT}"
    )


# ---- vLLM ------------------------------------------------------------------------------------
def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def prepare_vllm(model: str, layout: Layout, *, pull: bool, bake: bool) -> Prepared:
    env = {"HF_HOME": str(layout.cache_dir / "huggingface")}
    places = candidates(model, layout, bake=bake)
    for place in places:
        if is_model_dir(place):
            return Prepared(model=str(place), source=source_of(place, layout), env=env)
    repo_like = re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None
    if not (pull or bake) or not repo_like:
        hint = PULL_HINT if repo_like else "give a Hugging Face repo id (org/name) to pull"
        raise missing(
            f"model directory {model} not found (looked in {looked(places)}; a model directory holds config.json): "
            f"upload it to {layout.models_dir}, bake it in (beacon image build vllm --model ...), or {hint}"
        )
    dest = (layout.baked_dir if bake else layout.models_dir) / model
    say(f"pulling {model} from Hugging Face -> {dest}")
    try:
        from huggingface_hub import snapshot_download  # vLLM depends on it
    except ImportError as exc:
        raise failed("huggingface_hub is not installed: cannot pull a Hugging Face model") from exc
    try:
        snapshot_download(repo_id=model, local_dir=str(dest))
    except Exception as exc:  # network, auth (HF_TOKEN), unknown repo: all one line to the log
        raise failed(f"pulling {model} from Hugging Face failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if not is_model_dir(dest):
        raise failed(f"pulled {model} but {dest} has no config.json")
    return Prepared(model=str(dest), source="pulled", env=env)


# ---- Ollama ----------------------------------------------------------------------------------
def ollama_manifest(name: str) -> Path:
    """Where Ollama keeps a model's manifest, relative to its store (OLLAMA_MODELS).

    [host/][namespace/]model[:tag] with host registry.ollama.ai, namespace library and tag
    latest by default: manifests/<host>/<namespace>/<model>/<tag>.
    """
    base, _, tag = name.partition(":")
    if "/" in tag:  # "host:port/..." is not a tag
        base, tag = name, ""
    parts = [p for p in base.split("/") if p]
    if not parts or len(parts) > 3:
        raise PrepareError(f"{name!r} is not an Ollama model name", EXIT_CONFIG)
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    return Path("manifests") / host / namespace / model / (tag or "latest")


def ollama_server(store: Path, log_path: Path | None) -> TempServer:
    port = free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(store), "OLLAMA_NOPRUNE": "1"}
    return TempServer(["ollama", "serve"], env, f"http://127.0.0.1:{port}/api/version", "ollama serve", log_path)


def run_ollama(args: list[str], server: TempServer, what: str) -> None:
    say(f"ollama {' '.join(args)}")
    code = subprocess.call(["ollama", *args], env={**os.environ, **server.env}, stdin=subprocess.DEVNULL)
    if code != 0:
        raise failed(f"{what} failed (ollama exit {code})")


def prepare_ollama(model: str, layout: Layout, *, pull: bool, bake: bool, log_path: Path | None) -> Prepared:
    volume_store, baked_store = layout.models_dir / "ollama", layout.baked_dir / "ollama"
    target = baked_store if bake else volume_store
    if model.endswith(".gguf"):
        places = candidates(model, layout, bake=bake)
        gguf = next((p for p in places if p.is_file()), None)
        if gguf is None:
            raise missing(f"model file {model} not found (looked in {looked(places)}): upload it to {layout.models_dir}")
        check_gguf(gguf)
        name = re.sub(r"[^a-z0-9_.-]+", "-", gguf.stem.lower()).strip("-.") or "model"
        for store in (volume_store, baked_store):
            if (store / ollama_manifest(name)).is_file():
                return Prepared(model=name, source=source_of(store, layout), env={"OLLAMA_MODELS": str(store)})
        target.mkdir(parents=True, exist_ok=True)
        modelfile = layout.cache_dir / "tmp" / f"{name}.Modelfile"
        modelfile.parent.mkdir(parents=True, exist_ok=True)
        modelfile.write_text(f"FROM {gguf}\n")
        with ollama_server(target, log_path) as server:
            run_ollama(["create", name, "-f", str(modelfile)], server, f"importing {gguf} into Ollama")
        return Prepared(model=name, source="imported", env={"OLLAMA_MODELS": str(target)})
    manifest = ollama_manifest(model)
    for store in (volume_store, baked_store):
        if (store / manifest).is_file():
            return Prepared(model=model, source=source_of(store, layout), env={"OLLAMA_MODELS": str(store)})
    if not (pull or bake):
        raise missing(
            f"Ollama model {model} not found (no {manifest} in {volume_store} or {baked_store}): upload an "
            f"Ollama store to {volume_store} or a GGUF file to {layout.models_dir}, bake it in, or {PULL_HINT}"
        )
    target.mkdir(parents=True, exist_ok=True)
    with ollama_server(target, log_path) as server:
        run_ollama(["pull", model], server, f"ollama pull {model}")
    return Prepared(model=model, source="pulled", env={"OLLAMA_MODELS": str(target)})


# ---- Docker Model Runner ---------------------------------------------------------------------
def dmr_server(store: Path, log_path: Path | None) -> TempServer:
    port = free_port()
    argv = ["model-runner"] if shutil.which("model-runner") or not shutil.which("dmr") else ["dmr", "serve"]
    env = {"MODEL_RUNNER_PORT": str(port), "MODELS_PATH": str(store)}
    return TempServer(argv, env, f"http://127.0.0.1:{port}/models", "model-runner", log_path)


def prepare_dmr(
    model: str, layout: Layout, *, pull: bool, bake: bool, baked_model: str | None, log_path: Path | None
) -> Prepared:
    volume_store, baked_store = layout.models_dir / "dmr", layout.baked_dir / "dmr"
    if not bake and baked_model and model == baked_model and baked_store.is_dir():
        return Prepared(model=model, source="baked", env={"MODELS_PATH": str(baked_store)})
    store = baked_store if bake else volume_store
    store.mkdir(parents=True, exist_ok=True)
    with dmr_server(store, log_path) as server:
        base = server.ready_url.rsplit("/models", 1)[0]
        quoted = urllib.parse.quote(model, safe="/:")
        status = http("GET", f"{base}/models/{quoted}")
        if status == 200:
            return Prepared(model=model, source="uploaded", env={"MODELS_PATH": str(store)})
        if status != 404:
            raise failed(f"model-runner answered GET /models/{model} with {status or 'nothing'}")
        if not (pull or bake):
            raise missing(
                f"Docker Model Runner model {model} not found in {store}: bake it in "
                f"(beacon image build dmr --model {model}), upload a DMR store to {volume_store}, or {PULL_HINT}"
            )
        say(f"pulling {model} with Docker Model Runner -> {store}")
        status = http("POST", f"{base}/models/create", {"from": model}, timeout=None)
        if not 200 <= status < 300 or http("GET", f"{base}/models/{quoted}") != 200:
            raise failed(f"Docker Model Runner could not pull {model} (HTTP {status or 'no answer'})")
    return Prepared(model=model, source="pulled", env={"MODELS_PATH": str(store)})


# ---- entry point -----------------------------------------------------------------------------
def prepare(
    runtime: str,
    model: str | None,
    layout: Layout,
    *,
    pull: bool = False,
    bake: bool = False,
    baked_model: str | None = None,
    log_path: Path | None = None,
) -> Prepared | None:
    """Find (or fetch) the model; None at bake time when no model is to be baked."""
    if runtime not in RUNTIMES:
        raise PrepareError(f"BEACON_RUNTIME={runtime!r}: choose one of {', '.join(RUNTIMES)}", EXIT_CONFIG)
    model = (model or baked_model or "").strip()
    if not model:
        if bake:
            return None
        raise missing(
            f"no model named: set BEACON_MODEL (a model uploaded to {layout.models_dir}, or one to pull), "
            f"or build the image with one baked in (beacon image build {runtime} --model ...)"
        )
    if runtime == "llamacpp":
        return prepare_llamacpp(model, layout, pull=pull, bake=bake)
    if runtime == "vllm":
        return prepare_vllm(model, layout, pull=pull, bake=bake)
    if runtime == "ollama":
        return prepare_ollama(model, layout, pull=pull, bake=bake, log_path=log_path)
    return prepare_dmr(model, layout, pull=pull, bake=bake, baked_model=baked_model, log_path=log_path)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(description="Find or fetch the model a beacon node will serve.")
    parser.add_argument("--runtime", default=env.get("BEACON_RUNTIME", ""))
    parser.add_argument("--model", default=env.get("BEACON_MODEL", ""))
    parser.add_argument("--baked-model", default=env.get("BEACON_BAKED_MODEL", ""))
    parser.add_argument("--models-dir", default=env.get("BEACON_MODELS_DIR", "/models"))
    parser.add_argument("--baked-dir", default=env.get("BEACON_BAKED_DIR", "/opt/beacon/baked"))
    parser.add_argument("--cache-dir", default=env.get("BEACON_CACHE_DIR", "/cache"))
    parser.add_argument("--context-dir", default=None, help="bake only: the mounted `models` build context")
    parser.add_argument("--pull", action="store_true", default=truthy(env.get("BEACON_MODEL_PULL")))
    parser.add_argument("--bake", action="store_true", help="build time: put the model into the image")
    parser.add_argument("--log", default=None, help="where temporary runtime servers write their output")
    parser.add_argument("--shell", action="store_true", help="print `export` lines for the start script")
    args = parser.parse_args(argv)
    layout = Layout(
        models_dir=Path(args.models_dir),
        baked_dir=Path(args.baked_dir),
        cache_dir=Path(args.cache_dir),
        context_dir=Path(args.context_dir) if args.context_dir else None,
    )
    try:
        prepared = prepare(
            args.runtime, args.model, layout, pull=args.pull, bake=args.bake,
            baked_model=args.baked_model or None, log_path=Path(args.log) if args.log else None,
        )  # fmt: skip
    except PrepareError as exc:
        say(f"refusing to start: {exc}" if not args.bake else f"cannot bake the model: {exc}")
        return exc.code
    if prepared is None:
        say("no model to bake (build with --build-arg BEACON_MODEL=... or beacon image build --model)")
        return 0
    say(f"model {prepared.model or '(generated tiny model)'} ({prepared.source})")
    if args.shell:
        sys.stdout.write(prepared.shell())
    return 0


if __name__ == "__main__":
    sys.exit(main())
