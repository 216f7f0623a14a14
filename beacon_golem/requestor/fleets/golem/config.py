"""`GolemFleetConfig`: everything a Golem run is asked for, validated once."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from beacon_golem.requestor.fleets.golem.gpu import parse_version

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
IMAGE_HASH = re.compile(r"[0-9a-f]{56}")  # sha3-224 of the .gvmi


#: The erc20 networks yagna 0.17 lists (`yagna payment driver list`).
PaymentNetwork = Literal["holesky", "hoodi", "sepolia", "polygon", "amoy", "mainnet"]
PAYMENT_NETWORKS: tuple[str, ...] = get_args(PaymentNetwork)

#: ya-provider's agreement expiration limits when debit notes are accepted.
MIN_DURATION_S = 5 * 60
MAX_DURATION_S = 10 * 3600


class GolemFleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- what runs on each node -----------------------------------------------------------
    nodes: int = Field(default=1, ge=1, le=100, description="Nodes wanted at once")
    runtime: str | None = Field(
        default="vllm", min_length=1, description="Inference runtime inside the image (None: the image's own)"
    )
    model: str | None = Field(default=None, description="Model the node serves (passed to start-node.sh)")
    node_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for start-node.sh")
    image: str = Field(min_length=1, description="Image tag (user/name:tag), sha3-224 hash, or .gvmi URL")
    image_hash: str | None = Field(default=None, description="sha3-224 of the .gvmi; required with a URL")
    shim_port: int = Field(default=8080, ge=1, le=65535)
    shim_token: SecretStr | None = None
    node_concurrency: int = Field(default=4, ge=1)
    data_dir: str = Field(default="/data", description="The image's VOLUME: models, caches, logs")
    start_script: str = "/opt/beacon/start-node.sh"

    # --- money and time -------------------------------------------------------------------
    budget: Decimal = Field(gt=0, description="GLM for the whole run, never exceeded")
    max_price_glm_per_hour: Decimal = Field(gt=0, description="Most a node may cost per hour of use")
    max_start_price_glm: Decimal | None = Field(default=None, ge=0, description="Default: one hour's price")
    expected_cpu_threads: float = Field(default=1.0, ge=0, description="CPU-seconds per second a node uses")
    #: Providers (ya-provider's LimitExpiration) accept agreements of 5 minutes to 10 hours when the
    #: requestor accepts debit notes (yapapi does): a longer one gets every offer refused.
    duration_s: float = Field(
        default=3 * 3600, ge=MIN_DURATION_S, le=MAX_DURATION_S, description="How long nodes are rented at most"
    )
    max_replacements: int | None = Field(default=None, ge=0, description="Default: 2 x nodes")
    min_time_left_s: float = Field(default=900, ge=0, description="No replacement with less time than this left")

    # --- where ------------------------------------------------------------------------------
    subnet: str = "public"
    #: The erc20 networks yagna 0.17 lists (`yagna payment driver list`).
    payment_network: PaymentNetwork = "holesky"
    payment_driver: str = "erc20"
    network_ip: str = "192.168.0.0/24"

    # --- which providers ----------------------------------------------------------------------
    cpu_only: bool = False
    min_vram_gib: float = Field(default=0.0, ge=0)
    gpu_include: list[str] = Field(default_factory=list, description="Glob patterns on the GPU model")
    gpu_exclude: list[str] = Field(default_factory=list)
    min_cuda: str | None = Field(default=None, description="Lowest CUDA version, e.g. 12.1")
    min_mem_gib: float = Field(default=16.0, gt=0)
    min_storage_gib: float = Field(default=64.0, gt=0, description="Must hold the model weights")
    min_cpu_threads: int = Field(default=4, ge=1)
    regions: dict[str, str] = Field(default_factory=dict, description="provider id -> region")
    allowed_regions: list[str] = Field(default_factory=list, description="Only providers mapped to these")
    label_regions: list[str] = Field(
        default_factory=list, description="Deal these region labels to nodes `regions` does not map"
    )
    blacklist: list[str] = Field(default_factory=list, description="Provider ids never rented")
    max_failure_rate: float = Field(default=0.5, ge=0, le=1)

    # --- timeouts and checks -------------------------------------------------------------------
    deploy_timeout_s: float = Field(default=3600, gt=0, description="Image download and VM start")
    start_timeout_s: float = Field(default=1200, gt=0, description="start-node.sh to /health OK")
    start_poll_s: float = Field(default=5.0, gt=0, description="Between /health probes while a node starts")
    ready_timeout_s: float | None = Field(default=None, gt=0, description="start() waits this long for all nodes")
    health_interval_s: float = Field(default=30, gt=0)
    health_failures: int = Field(default=3, ge=1, description="Failed checks in a row before a node is lost")
    switch_timeout_s: float = Field(
        default=1200, gt=0, description="How long a runtime switch (POST /runtime) may keep /health at 503"
    )
    proxy_timeout_s: float = Field(default=1800, gt=0, description="Idle limit of a tunnelled connection")
    connect_attempts: int = Field(default=6, ge=1, description="Tries to reach a new node over the VPN before it is lost")
    connect_backoff_s: float = Field(default=2.0, gt=0, description="First wait between those tries; doubles each time")
    same_failure_limit: int = Field(
        default=3, ge=2, description="Providers failing the same way, none up, before renting stops"
    )
    #: Where image tags and hashes are resolved (Golem's registry, or the sandbox's).
    registry_url: str = Field(default="https://registry.golem.network", pattern=r"^https?://")
    shutdown_grace_s: float = Field(default=300, gt=0, description="How long stop() lets nodes save their logs")
    log_dir: Path | None = Field(default=None, description="Where node logs are saved at shutdown")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("image: give a tag (user/name:tag), a sha3-224 hash or a .gvmi URL")
        return value

    @field_validator("image_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_HASH.fullmatch(value.lower()):
            raise ValueError("image_hash: 56 hex digits (sha3-224 of the .gvmi)")
        return value.lower() if value else None

    @field_validator("min_cuda")
    @classmethod
    def _cuda(cls, value: str | None) -> str | None:
        if value is not None and parse_version(value) is None:
            raise ValueError("min_cuda: a version such as 12.1")
        return value

    @field_validator("node_env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"node_env: {key!r} is not an environment variable name (A-Z, 0-9, _)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GolemFleetConfig:
        if self.image.startswith(("http://", "https://")) and not self.image_hash:
            raise ValueError("image: a .gvmi URL needs image_hash (sha3-224 of the file)")
        return self

    # --- derived ----------------------------------------------------------------------------------
    @property
    def golem_runtime(self) -> str:
        return "vm" if self.cpu_only else "vm-nvidia"

    @property
    def start_price_cap(self) -> Decimal:
        return self.max_price_glm_per_hour if self.max_start_price_glm is None else self.max_start_price_glm

    @property
    def replacements_allowed(self) -> int:
        return 2 * self.nodes if self.max_replacements is None else self.max_replacements

    @property
    def ready_timeout(self) -> float:
        return self.ready_timeout_s or (self.deploy_timeout_s + self.start_timeout_s + 600)
