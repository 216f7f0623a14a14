"""Configuration: settings from the environment, and the serving processes' event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from beacon_golem.core.config import install_event_loop, load_settings
from beacon_golem.core.errors import UsageError


def test_settings_come_from_beacon_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BEACON_SHIM_TOKEN", "s3cret")
    monkeypatch.setenv("BEACON_MAX_BODY_BYTES", "2048")
    settings = load_settings()
    assert settings.data_dir == tmp_path
    assert settings.shim_token is not None and settings.shim_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # a secret never prints
    assert settings.shim_limits().max_body_bytes == 2048


def test_event_loop_choice() -> None:
    try:
        assert install_event_loop("asyncio") == "asyncio"
        assert type(asyncio.new_event_loop()).__module__.startswith("asyncio")
        assert install_event_loop("auto") == "uvloop"  # uvloop is a dependency on Linux
        loop = asyncio.new_event_loop()
        assert type(loop).__module__.startswith("uvloop")
        loop.close()
    finally:
        install_event_loop("asyncio")


def test_asking_for_uvloop_without_it_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails as if not installed
    with pytest.raises(UsageError, match="uvloop is not installed"):
        install_event_loop("uvloop")
    assert install_event_loop("auto") == "asyncio"
