"""structlog set-up: human output on a terminal, JSON lines elsewhere; secrets never printed."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(appkey|token|authorization|secret|password|private)", re.I)


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop the value of any field whose name looks like a secret (YAGNA_APPKEY, tokens)."""
    for key in list(event_dict):
        if _SECRET_KEYS.search(key) and event_dict[key] not in (None, ""):
            event_dict[key] = "***"
    return event_dict


class _StderrLoggerFactory:
    """A PrintLogger on whatever sys.stderr is when a line is logged (never a stale, closed stream)."""

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not (stream or sys.stderr).isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream) if stream else _StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
