"""Errors that reach a user as one clear line (CLI) or one JSON body (HTTP)."""

from __future__ import annotations


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
