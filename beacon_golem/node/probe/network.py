"""An optional, bounded check of outbound network access (off unless asked for).

It opens TCP connections to a few well-known HTTPS endpoints (no data is sent) with a short
timeout each, all at once; one success is enough. Pulling models at start and yagna's
relay both need outbound traffic, and some Golem providers block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from beacon_golem.core.probe import NetworkResult

#: Hosts a node would really talk to: the Golem image registry, Docker Hub, Hugging Face, Ollama.
DEFAULT_TARGETS: tuple[tuple[str, int], ...] = (
    ("registry.golem.network", 443),
    ("registry-1.docker.io", 443),
    ("huggingface.co", 443),
    ("registry.ollama.ai", 443),
)




async def _try(host: str, port: int, timeout_s: float) -> str:
    started = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return f"no answer in {timeout_s:g} s"
    except OSError as exc:
        return f"failed: {exc.strerror or exc.__class__.__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return f"ok {(time.perf_counter() - started) * 1000:.0f} ms"


async def check_outbound(
    targets: tuple[tuple[str, int], ...] = DEFAULT_TARGETS, timeout_s: float = 3.0
) -> NetworkResult:
    """Try every target at once; the whole check takes at most about `timeout_s`."""
    answers = await asyncio.gather(*(_try(host, port, timeout_s) for host, port in targets))
    results = {f"{host}:{port}": answer for (host, port), answer in zip(targets, answers, strict=True)}
    return NetworkResult(
        reachable=any(a.startswith("ok") for a in answers), targets=results, timeout_s=timeout_s
    )
