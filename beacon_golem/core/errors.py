"""Errors that reach a user as one clear line (CLI) or one JSON body (HTTP)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class BeaconError(Exception):
    """A failure we can explain in one line; never shown with a traceback."""

    exit_code = 1
    http_status = 500


class UsageError(BeaconError):
    """Bad input from the user: a file, a flag, a field."""

    exit_code = 2
    http_status = 400


class RuntimeUnavailable(BeaconError):
    """The inference runtime is not reachable or not ready (HTTP 503)."""

    http_status = 503


class BadUpstream(RuntimeUnavailable):
    """The runtime answered something we cannot read: malformed stream, error mid-stream (502)."""

    http_status = 502


class UpstreamTimeout(RuntimeUnavailable):
    """The inference runtime took longer than its timeout (504)."""

    http_status = 504


class UpstreamError(RuntimeUnavailable):
    """The runtime answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        # The runtime refusing the request (4xx) is the caller's problem; anything else is ours.
        self.http_status = 422 if status is not None and 400 <= status < 500 else 502


def error_location(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ()))


def one_line(exc: ValidationError) -> str:
    """`questions.2.text: Field required (and 1 more)`: the first problem, naming its field."""
    first = exc.errors()[0]
    where = error_location(first)
    msg = first["msg"]
    # A model-level check names its own field inside the message ("questions: id 'x' ...").
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{extra}" if where else f"{msg}{extra}"
