"""The fakes as programs a node launches: `ollama serve` and `model-runner`, configured like the real ones.

A node starts its runtime as a child process with the adapter's command line and environment
(node/runtimes/ollama.py, dmr.py). `install_fake_runtimes(dir)` writes an `ollama` and a
`model-runner` executable into `dir`; put it first on PATH and the node launches these instead,
and they read the same variables the real servers read:

- ollama (envconfig/config.go): OLLAMA_HOST (`host:port`), OLLAMA_NUM_PARALLEL (default 1),
  OLLAMA_MAX_QUEUE (default 512), OLLAMA_KEEP_ALIVE (default 5m; negative: never unload);
- model-runner (pkg/envconfig, llamacpp_config.go): MODEL_RUNNER_PORT, LLAMA_ARGS (its
  `--parallel N`); the runner is evicted after 5 idle minutes (loader.go).

Knobs that stand for the machine and the model, not for the runtime's configuration (FAKE_*):
FAKE_LOAD_S (seconds a model load takes), FAKE_TOKEN_DELAY_S (seconds between tokens),
FAKE_ANSWER_TOKENS (tokens the model says before its end of sequence), FAKE_DMR_IDLE_UNLOAD_S
(DMR's idle timeout, 300 in DMR, shortened so a test need not wait five minutes), FAKE_MODELS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.fakes.dmr import MODEL as DMR_MODEL
from tests.fakes.dmr import RUNNER_IDLE_TIMEOUT_S, FakeDMR
from tests.fakes.ollama import MODEL as OLLAMA_MODEL
from tests.fakes.ollama import FakeOllama, parse_keep_alive

ROOT = Path(__file__).resolve().parents[2]


def _tokens() -> tuple[str, ...]:
    n = int(os.environ.get("FAKE_ANSWER_TOKENS", "64"))
    return tuple(f" w{i}" for i in range(n))


def _float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def ollama_from_env() -> tuple[FakeOllama, str, int]:
    host, _, port = (os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434").rpartition(":")
    models = tuple(m for m in os.environ.get("FAKE_MODELS", OLLAMA_MODEL).split(",") if m)
    parallel = os.environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    queue = os.environ.get("OLLAMA_MAX_QUEUE", "").strip()
    fake = FakeOllama(
        models=models,
        tokens=_tokens(),
        delay_s=_float("FAKE_TOKEN_DELAY_S", 0.002),
        load_s=_float("FAKE_LOAD_S", 0.0),
        num_parallel=int(parallel) if parallel else 1,
        max_queue=int(queue) if queue else 512,
        keep_alive_s=parse_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE")),
    )
    return fake, host or "127.0.0.1", int(port)


def dmr_from_env() -> tuple[FakeDMR, str, int]:
    args = os.environ.get("LLAMA_ARGS", "").split()
    parallel = int(args[args.index("--parallel") + 1]) if "--parallel" in args[:-1] else 1
    models = tuple(m for m in os.environ.get("FAKE_MODELS", DMR_MODEL).split(",") if m)
    fake = FakeDMR(
        models=models,
        tokens=_tokens(),
        delay_s=_float("FAKE_TOKEN_DELAY_S", 0.002),
        load_s=_float("FAKE_LOAD_S", 0.0),
        idle_unload_s=_float("FAKE_DMR_IDLE_UNLOAD_S", RUNNER_IDLE_TIMEOUT_S),
        parallel=parallel,
    )
    # Without MODEL_RUNNER_PORT the real server listens on a Unix socket only: refuse, as a node would see it.
    port = os.environ.get("MODEL_RUNNER_PORT")
    if not port:
        raise SystemExit("model-runner: MODEL_RUNNER_PORT is not set (the real server would listen on a Unix socket)")
    return fake, "0.0.0.0", int(port)


async def serve(kind: str) -> None:
    fake, host, port = ollama_from_env() if kind == "ollama" else dmr_from_env()
    await fake.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "ollama" and argv[1:2] != ["serve"]:
        raise SystemExit(f"fake ollama: only `ollama serve` is implemented, not {' '.join(argv)}")
    asyncio.run(serve(kind))


def install_fake_runtimes(directory: Path) -> Path:
    """Write `ollama` and `model-runner` programs into `directory` (put it first on PATH); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, kind in (("ollama", "ollama"), ("model-runner", "dmr")):
        path = directory / name
        path.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.fakes.serve import main\n"
            f"main([{kind!r}, *sys.argv[1:]])\n"
        )
        path.chmod(0o755)
    return directory


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
