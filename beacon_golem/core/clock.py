"""Time as the store and the ledgers keep it: timezone-aware UTC, ISO 8601 text."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ts(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")
