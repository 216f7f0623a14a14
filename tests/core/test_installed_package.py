"""scripts/check-wheel runs some tests against the wheel installed away from the source tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import beacon_golem


def test_the_package_under_test_is_the_installed_wheel() -> None:
    site = os.environ.get("BEACON_WHEEL_SITE")
    if not site:
        pytest.skip("runs in scripts/check-wheel, against the installed wheel")
    assert Path(beacon_golem.__file__).resolve().is_relative_to(Path(site).resolve())
