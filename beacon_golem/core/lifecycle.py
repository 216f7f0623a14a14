"""`async with` for things that start and stop: fleets, local nodes."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """Entering calls `start()` (and `stop()` if starting fails half-way); leaving calls `stop()`."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
