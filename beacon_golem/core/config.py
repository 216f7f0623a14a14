"""Configuration from the environment and `.env`: the only global settings there are."""

from __future__ import annotations

import asyncio
from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from beacon_golem.core.errors import UsageError


class ShimLimits(BaseModel):
    """Bounds on what a shim accepts, holds and waits for (docs/shim.md, "Limits"); each has its
    `BEACON_*` variable in `Settings`."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_job_requests: int = Field(default=10_000, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Longest silence between two bytes of a runtime's answer.
    read_timeout_s: float = Field(default=600.0, gt=0)
    #: Jobs kept (on disk and in memory); past it the oldest finished ones are deleted.
    max_stored_jobs: int = Field(default=200, ge=1)
    #: Bytes of jobs kept on disk; past it the oldest finished ones are deleted.
    max_stored_job_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    #: Generations sent to the runtime at once, over every route and job.
    max_in_flight: int = Field(default=256, ge=1)
    #: HTTP requests (POST /inference, the pass-through) waiting for one of those; past it, 503.
    max_waiting: int = Field(default=4096, ge=0)
    #: Prompts one perf job may build, over all its steps and warm-ups.
    max_perf_prompts: int = Field(default=50_000, ge=1)
    #: Seconds a client has to send a whole request head, and then its body.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    #: Deepest JSON body taken (objects and arrays nested).
    max_json_depth: int = Field(default=64, ge=2, le=500)
    #: Host names a shim without a token answers besides IP addresses and localhost.
    allowed_hosts: list[str] = Field(default_factory=list)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("beacon-golem", appauthor=False))


class Settings(BaseSettings):
    """Every knob read from `BEACON_*` variables (or a `.env` file in the working directory)."""

    model_config = SettingsConfigDict(env_prefix="BEACON_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    shim_token: SecretStr | None = None
    llama_server: Path | None = None
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_job_requests: int = 10_000
    max_stored_jobs: int = 200
    max_stored_job_bytes: int = 512 * 1024 * 1024
    max_in_flight: int = 256
    max_waiting: int = 4096
    max_perf_prompts: int = 50_000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_json_depth: int = 64
    #: Comma-separated host names a server without a token answers (besides IPs and localhost).
    allowed_hosts: str = ""
    #: The router's own token (`beacon router`): required when it listens beyond loopback.
    router_token: SecretStr | None = None
    #: Requestor: how long one health check of a node may take (never the suite's job timeout).
    health_timeout_s: float = Field(default=10.0, gt=0)
    #: Requestor: seconds between two saves of what each node has cost so far (a killed run keeps them).
    spent_save_s: float = Field(default=15.0, gt=0)
    #: Requestor: the largest body read from a node.
    max_node_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: The image lock file `--fleet golem` picks images from [default: the one shipped in beacon_golem/imaging].
    images_lock: Path | None = None
    #: Golem: where image tags and hashes are resolved (the sandbox prints its own) [default: Golem's registry].
    golem_registry_url: str | None = None
    #: Golem: the image `--fleet golem` rents when no --image is given [default: the image lock file's].
    golem_image: str | None = None
    #: Node: the runtimes this node's image holds (space or comma separated; the multi image sets
    #: it): a runtime switch to another is refused with 422. Empty: any runtime.
    image_runtimes: str = ""
    #: Event loop for serving processes (shim, node, router): auto (uvloop when installed) or asyncio.
    event_loop: str = "auto"

    @field_validator("shim_token", "router_token")
    @classmethod
    def _token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return check_token(value, f"BEACON_{(info.field_name or '').upper()}")

    def held_runtimes(self) -> list[str]:
        """`image_runtimes` as a list (empty: the image does not say, any runtime may be tried)."""
        return [r for r in self.image_runtimes.replace(",", " ").split() if r]

    def shim_limits(self) -> ShimLimits:
        return ShimLimits(
            max_body_bytes=self.max_body_bytes,
            max_job_requests=self.max_job_requests,
            connect_timeout_s=self.upstream_connect_timeout_s,
            read_timeout_s=self.upstream_read_timeout_s,
            max_stored_jobs=self.max_stored_jobs,
            max_stored_job_bytes=self.max_stored_job_bytes,
            max_in_flight=self.max_in_flight,
            max_waiting=self.max_waiting,
            max_perf_prompts=self.max_perf_prompts,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            max_json_depth=self.max_json_depth,
            allowed_hosts=self.allowed_host_names(),
        )

    def allowed_host_names(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]


def check_token(token: SecretStr | None, what: str = "BEACON_SHIM_TOKEN") -> SecretStr | None:
    """A configured token: None for none; an empty or non-printable-ASCII one is a configuration
    error (an empty token would make any `Bearer` pass; a non-ASCII one cannot be sent)."""
    if token is None:
        return None
    value = token.get_secret_value()
    if not value.strip():
        raise ValueError(f"{what} is set but empty: unset it for no token, or give one")
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise ValueError(f"{what} must be printable ASCII without spaces (it travels in an HTTP header)")
    return token


def install_event_loop(choice: str) -> str:
    """Use uvloop for the serving processes when asked or available: the shim spends most of its
    CPU in the event loop and transports. Returns the loop in use."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            if choice == "uvloop":
                raise UsageError("BEACON_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)") from None
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    asyncio.set_event_loop_policy(None)
    return "asyncio"


def load_settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
