"""Configuration from the environment and `.env`: the only global settings there are."""

from __future__ import annotations

import asyncio
from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from beacon_golem.core.errors import UsageError


class ShimLimits(BaseModel):
    """Bounds on what a shim accepts and how long it waits for its runtime."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_job_requests: int = Field(default=10_000, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Longest silence between two bytes of a runtime's answer.
    read_timeout_s: float = Field(default=600.0, gt=0)


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
    #: The image lock file `--fleet golem` picks images from [default: the one shipped in beacon_golem/imaging].
    images_lock: Path | None = None
    #: Golem: where image tags and hashes are resolved (the sandbox prints its own) [default: Golem's registry].
    golem_registry_url: str | None = None
    #: Golem: the image `--fleet golem` rents when no --image is given [default: the image lock file's].
    golem_image: str | None = None
    #: Event loop for serving processes (shim, node, router): auto (uvloop when installed) or asyncio.
    event_loop: str = "auto"


    def shim_limits(self) -> ShimLimits:
        return ShimLimits(
            max_body_bytes=self.max_body_bytes,
            max_job_requests=self.max_job_requests,
            connect_timeout_s=self.upstream_connect_timeout_s,
            read_timeout_s=self.upstream_read_timeout_s,
        )


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
