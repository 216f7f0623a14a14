"""What every API module of the sandbox shares on the wire: errors, bodies, ids, event feeds.

yagna answers errors as `{"message": "..."}` (ya-client `common.yaml` ErrorMessage) with a 4xx/5xx
status; request bodies are parsed into pydantic models here, so a bad body is a 400 with one line
of JSON, never a traceback. Models use yagna's camelCase names on the wire.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class WireModel(BaseModel):
    """A body as yagna writes it: camelCase keys, unknown keys kept out of the way."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ErrorBody(WireModel):
    message: str


class ApiError(Exception):
    """An HTTP error answered as yagna does: status plus `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(ErrorBody(message=self.message).wire(), status=self.status)


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what} {ident} not found")


def now() -> datetime:
    return datetime.now(UTC)


def new_id(nbytes: int = 16) -> str:
    """Ids shaped like yagna's (hex, 32 characters by default)."""
    return secrets.token_hex(nbytes)


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"invalid body: {where}: {first.get('msg', 'invalid')}"


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid body: not JSON ({exc.__class__.__name__})") from exc


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as `model`, or a 400."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _one_line(exc)) from exc


async def read_typed(request: web.Request, adapter: TypeAdapter[T]) -> T:
    """The request's JSON body through a TypeAdapter (for unions such as string-or-object)."""
    data = await read_json(request)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ApiError(400, _one_line(exc)) from exc


def query_float(request: web.Request, name: str, default: float, *, maximum: float | None = None) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name}: not a number: {raw!r}") from exc
    if value < 0:
        raise ApiError(400, f"query parameter {name}: must not be negative")
    return min(value, maximum) if maximum is not None else value


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name}: not an integer: {raw!r}") from exc


def query_time(request: web.Request, name: str) -> datetime | None:
    """An ISO 8601 timestamp from the query; a `+` that arrived as a space is put back."""
    raw = request.query.get(name)
    if not raw:
        return None
    text = raw.strip().replace(" ", "+")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name}: not a date-time: {raw!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def respond(body: BaseModel | Sequence[BaseModel] | str | None, status: int = 200) -> web.Response:
    """A JSON answer: a model, a list of models, a bare JSON string (ids), or nothing (204)."""
    if body is None:
        return web.Response(status=204 if status == 200 else status)
    if isinstance(body, str):
        return web.json_response(body, status=status)
    if isinstance(body, BaseModel):
        return web.json_response(_dump(body), status=status)
    return web.json_response([_dump(item) for item in body], status=status)


def _dump(model: BaseModel) -> Any:
    if isinstance(model, WireModel):
        return model.wire()
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class Stamped(Generic[T]):
    """One entry of a feed: when it happened (strictly increasing within its feed) and what."""

    __slots__ = ("at", "item")

    def __init__(self, at: datetime, item: T) -> None:
        self.at = at
        self.item = item


class Feed(Generic[T]):
    """An append-only event feed that long-polling readers wait on.

    yagna's event endpoints (`demands/{id}/events`, `debitNoteEvents`, `invoiceEvents`) return what
    happened after a point and wait up to `timeout` seconds when nothing has. Readers here filter
    by timestamp (`afterTimestamp`, strictly after) or by position; timestamps never repeat, so a
    reader that passes back the last `eventDate` it saw never skips or repeats an event.
    """

    def __init__(self) -> None:
        self._items: list[Stamped[T]] = []
        self._changed = asyncio.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def stamp(self) -> datetime:
        at = now()
        if self._items and at <= self._items[-1].at:
            at = self._items[-1].at + timedelta(microseconds=1)
        return at

    async def push(self, item: T, at: datetime | None = None) -> Stamped[T]:
        entry = Stamped(at or self.stamp(), item)
        async with self._changed:
            self._items.append(entry)
            self._changed.notify_all()
        return entry

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def items(self) -> list[Stamped[T]]:
        return list(self._items)

    async def wait_after(
        self, after: datetime | None, timeout: float, limit: int, accept: Callable[[T], bool] | None = None
    ) -> list[Stamped[T]]:
        """Entries stamped after `after` (all when None), waiting up to `timeout` s for the first."""

        def ready() -> list[Stamped[T]]:
            found = [e for e in self._items if (after is None or e.at > after) and (accept is None or accept(e.item))]
            return found[:limit]

        return await self._wait(ready, timeout)

    async def wait_from(self, position: int, timeout: float, limit: int) -> tuple[list[Stamped[T]], int]:
        """Entries from `position` on, waiting up to `timeout` s; also the position after them."""

        def ready() -> list[Stamped[T]]:
            return self._items[position : position + limit]

        found = await self._wait(ready, timeout)
        return found, position + len(found)

    async def _wait(self, ready: Callable[[], list[Stamped[T]]], timeout: float) -> list[Stamped[T]]:
        found = ready()
        if found or timeout <= 0 or self._closed:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                found = ready()
                left = deadline - loop.time()
                if found or left <= 0 or self._closed:
                    return found
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return ready()
