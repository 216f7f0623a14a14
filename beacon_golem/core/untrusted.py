"""Reading what others wrote: strict JSON, bounded structures and bounded files.

Everything a node sends, every HTTP body a shim or the gateway takes, and every suite or JobSpec
file goes through here before a model sees it:

- `loads_json` parses JSON and refuses NaN, Infinity and numbers that overflow to infinity
  (`1e400`) anywhere in the document, and documents nested deeper than `max_depth`;
- `check_structure` bounds any parsed document (JSON or YAML): nesting depth, the number of
  values once YAML aliases are expanded (a "billion laughs" file), cycles, and non-finite floats;
- `read_bounded` reads a regular file only (no FIFO, no device such as a symlink to /dev/zero)
  and at most `max_bytes`.

Every refusal is an `UntrustedInput` (a `UsageError`: exit code 2, HTTP 400) with one line.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from beacon_golem.core.errors import UsageError

#: Deepest nesting of a document (objects and arrays) accepted by default.
MAX_JSON_DEPTH = 64
#: Most values in one document, aliases expanded, accepted by default.
MAX_ITEMS = 1_000_000
#: Largest suite, JobSpec or questions file read by default.
MAX_INPUT_FILE_BYTES = 8 * 1024 * 1024


class UntrustedInput(UsageError):
    """A document or file refused before it was read as a model: too deep, too big, not finite."""


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _children(obj: Any) -> Any:
    return obj.values() if isinstance(obj, dict) else obj


def check_structure(
    data: Any, *, max_depth: int = MAX_JSON_DEPTH, max_items: int = MAX_ITEMS, what: str = "document", finite: bool = True
) -> None:
    """Refuse a parsed document nested deeper than `max_depth`, holding more than `max_items`
    values once shared parts (YAML aliases) are counted each time they appear, referring to
    itself, or (`finite`) holding a float that is NaN or infinite. Linear in the distinct containers."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (height, expanded size)
    open_ids: set[int] = set()
    nonfinite = False
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        obj, closing = stack.pop()
        if not isinstance(obj, _CONTAINERS):
            if isinstance(obj, float) and not math.isfinite(obj):
                nonfinite = True
            continue
        oid = id(obj)
        if closing:
            height, size = 0, 1
            for child in _children(obj):
                if isinstance(child, _CONTAINERS):
                    h, s = memo[id(child)]
                    height, size = max(height, h), size + s
                else:
                    size += 1
                    if isinstance(child, float) and not math.isfinite(child):
                        nonfinite = True
            height += 1
            open_ids.discard(oid)
            memo[oid] = (height, size)
            if height > max_depth:
                raise UntrustedInput(f"{what}: nested deeper than {max_depth} levels")
            if size > max_items:
                raise UntrustedInput(f"{what}: more than {max_items:,} values (aliases expanded)")
            continue
        if oid in memo:
            continue
        if oid in open_ids:
            raise UntrustedInput(f"{what}: refers to itself (a recursive alias)")
        open_ids.add(oid)
        stack.append((obj, True))
        stack.extend((c, False) for c in _children(obj) if isinstance(c, _CONTAINERS) and id(c) not in memo)
    if nonfinite and finite:
        where = _nonfinite_path(data)
        raise UntrustedInput(f"{what}: {where + ': ' if where else ''}not a finite number (NaN and infinity are refused)")


def nonfinite_path(data: Any) -> str | None:
    """Where the first NaN or infinite float of a (depth-bounded) document is, as `limits.job_timeout_s`
    (`""` for the document itself); None when every number is finite."""
    return _nonfinite_path(data)


def _nonfinite_path(data: Any, path: tuple[str, ...] = ()) -> str | None:
    if isinstance(data, float) and not math.isfinite(data):
        return ".".join(path)
    if isinstance(data, dict):
        items: Any = ((str(k), v) for k, v in data.items())
    elif isinstance(data, _CONTAINERS):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        found = _nonfinite_path(value, (*path, key))
        if found is not None:
            return found
    return None


def loads_json(raw: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, what: str = "body") -> Any:
    """Strict JSON: not valid JSON, nested deeper than `max_depth`, or holding NaN, Infinity or
    a number too large for a float is one `UntrustedInput` line."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise UntrustedInput(f"{what}: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise UntrustedInput(f"{what}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # not UTF-8, an integer of more than 4,300 digits
        raise UntrustedInput(f"{what}: not valid JSON: {str(exc).splitlines()[0]}") from None
    check_structure(data, max_depth=max_depth, what=what)
    return data


def read_bounded(path: str | Path, max_bytes: int = MAX_INPUT_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; a FIFO, a device, a socket or a larger
    file is refused before anything is read (a FIFO is opened without waiting for a writer)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise UntrustedInput(f"{path}: not a regular file ({kind}); give a file")
        if info.st_size > max_bytes:
            raise UntrustedInput(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} read here")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while we read it
                raise UntrustedInput(f"{path}: more than the {max_bytes:,} bytes read here")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
