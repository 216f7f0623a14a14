"""Fixtures shared by the runtime adapter tests (the fakes themselves are in tests/fakes/)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The client session an adapter talks to its runtime with."""
    async with aiohttp.ClientSession() as s:
        yield s
