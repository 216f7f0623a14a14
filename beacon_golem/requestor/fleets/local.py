"""The local fleet: N nodes (llama-server + shim) started on this machine, each with a region label."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from beacon_golem.api.client import ShimClient
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.launcher import LocalNode, NodeConfig
from beacon_golem.requestor.fleets.base import Fleet

log = get_logger(__name__)


class LocalFleetConfig(BaseModel):
    nodes: int = Field(default=2, ge=1, le=64)
    regions: list[str] = Field(default_factory=lambda: ["local"])
    runtime: str = "llamacpp"
    model: str | None = None
    parallel: int = Field(default=4, ge=1)
    data_dir: Path
    ready_timeout_s: float = 120.0
    #: The shim token every node requires (BEACON_SHIM_TOKEN); None: tokenless nodes on loopback.
    token: SecretStr | None = None
    #: The runtime's own settings (docs/benchmarks.md, runtime settings); `parallel` stays the default.
    settings: RuntimeSettings = Field(default_factory=RuntimeSettings)


class LocalFleet(Fleet):
    """Regions are dealt round robin: 3 nodes over [US, EU] are US, EU, US."""

    name = "local"

    def __init__(self, config: LocalFleetConfig) -> None:
        super().__init__()
        self.config = config
        self.local: dict[str, LocalNode] = {}

    def describe(self) -> dict[str, object]:
        return {"fleet": self.name, **self.config.model_dump(mode="json", exclude={"data_dir", "token"})}

    async def start(self) -> None:
        cfg = self.config
        await asyncio.gather(*(self._start_one(i) for i in range(cfg.nodes)))

    async def _start_one(self, i: int) -> None:
        cfg = self.config
        region = cfg.regions[i % len(cfg.regions)]
        node_id = f"local-{i}"
        local = LocalNode(
            NodeConfig(
                runtime=cfg.runtime,
                model=cfg.model,
                port=0,
                data_dir=cfg.data_dir / node_id,
                parallel=cfg.parallel,
                region=region,
                ready_timeout_s=cfg.ready_timeout_s,
                runtime_args=self.runtime_args(),
                settings=cfg.settings,
                token=cfg.token,
            )
        )
        self.local[node_id] = local
        await local.start()
        async with ShimClient(local.url, cfg.token) as client:
            info = await client.info()
        self.add_node(
            Node(
                node_id=node_id,
                url=local.url,
                region=region,
                token=cfg.token,
                runtime_token=local.runtime_api_key,
                info=info,
                concurrency=cfg.parallel,
                fleet=self.name,
            )
        )

    def runtime_args(self) -> list[str]:
        """Share the machine's cores between the nodes: llama.cpp's compute threads spin-wait,
        and N nodes each taking every core collapse (seen here: 3 nodes on 2 cores, 40 tok/s)."""
        if self.config.runtime != "llamacpp":
            return []
        return ["--threads", str(max(1, (os.cpu_count() or 1) // self.config.nodes))]

    async def kill(self, node_id: str) -> None:
        """Crash one node (for failure drills): SIGKILL its runtime mid-answer, then drop its shim.

        The dispatcher is not told; it finds out from failed requests and health checks.
        """
        local = self.local.get(node_id)
        if local is not None:
            local.kill_runtime()
            await local.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.local.values()), return_exceptions=True)
        self.local.clear()
