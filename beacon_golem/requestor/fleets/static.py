"""The static fleet: shims someone else runs, given by URL (with token and region label)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field, SecretStr

from beacon_golem.api.client import ShimClient
from beacon_golem.core.errors import BeaconError, UsageError
from beacon_golem.core.log import get_logger
from beacon_golem.core.node import Node
from beacon_golem.requestor.fleets.base import Fleet

log = get_logger(__name__)


class StaticNodeSpec(BaseModel):
    url: str
    region: str | None = None
    token: SecretStr | None = None
    concurrency: int = Field(default=4, ge=1)

    @classmethod
    def parse(cls, text: str, token: SecretStr | None = None) -> StaticNodeSpec:
        """`http://host:8080` or `http://host:8080@EU` (region after the last '@' past the host)."""
        url, region = text, None
        scheme, sep, rest = text.partition("://")
        if not sep or not rest:
            raise UsageError(f"--node {text!r}: expected a URL like http://host:8080 or http://host:8080@EU")
        if "@" in rest:
            rest, region = rest.rsplit("@", 1)
            url = f"{scheme}://{rest}"
        return cls(url=url.rstrip("/"), region=region or None, token=token)


class StaticFleet(Fleet):
    name = "static"

    def __init__(self, specs: list[StaticNodeSpec]) -> None:
        super().__init__()
        if not specs:
            raise UsageError("the static fleet needs at least one --node URL")
        self.specs = specs
        #: Nodes found unusable at start, one line each (the pilot reports them).
        self.failures: list[str] = []

    def describe(self) -> dict[str, object]:
        return {"fleet": self.name, "nodes": [{"url": s.url, "region": s.region} for s in self.specs]}

    async def start(self) -> None:
        outcomes = await asyncio.gather(*(self._connect(i, s) for i, s in enumerate(self.specs)), return_exceptions=True)
        failures = [f"{s.url}: {o}" for s, o in zip(self.specs, outcomes, strict=True) if isinstance(o, BaseException)]
        self.failures = failures
        for failure in failures:
            log.warning("static_node_unusable", detail=failure)
        if len(failures) == len(self.specs):
            raise BeaconError("no static node is usable: " + "; ".join(failures))

    async def _connect(self, i: int, spec: StaticNodeSpec) -> None:
        async with ShimClient(spec.url, spec.token, timeout_s=30) as client:
            health = await client.health()
            if health.status != "ok":
                raise BeaconError(f"not ready: {health.reason}")
            info = await client.info()
        region = spec.region or str(info.extra.get("region") or "") or None
        self.add_node(
            Node(
                node_id=f"static-{i}",
                url=spec.url,
                region=region,
                token=spec.token,
                info=info,
                concurrency=spec.concurrency,
                fleet=self.name,
            )
        )

    async def stop(self) -> None:
        """Static nodes belong to someone else: nothing to take down."""
