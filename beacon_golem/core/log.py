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


def one_line_exc_info(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """An exception as `Type: message` in one field, never a traceback (yapapi logs them by the dozen)."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            message = " ".join(str(exc_info[1]).split())[:500]
            event_dict["error"] = f"{exc_info[0].__name__}: {message}" if message else exc_info[0].__name__
    event_dict.pop("stack_info", None)
    return event_dict


class _StdlibHandler(logging.Handler):
    """Routes the standard `logging` module (yapapi, aiohttp) into structlog: one line per record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # a log line must never break the program
            pass


def route_stdlib_logging(level: str) -> None:
    """Send every stdlib logger's records through structlog (never logging's last-resort handler,
    which prints tracebacks to stderr). yapapi is quiet below WARNING unless debugging."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibHandler)] + [_StdlibHandler()]
    root.setLevel(logging.getLevelName(level.upper()))
    logging.getLogger("yapapi").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not (stream or sys.stderr).isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    route_stdlib_logging(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            one_line_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream) if stream else _StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
