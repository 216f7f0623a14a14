"""The gftp URLs of beacon-golem's local gftp stand-in: what the requestor's stand-in hands out and
the sandbox's providers read (`gftp://beacon-local/<base64url of an absolute path>`)."""

from __future__ import annotations

import base64
from pathlib import Path

LOCAL_ENV = "BEACON_GOLEM_GFTP_LOCAL"
URL_HOST = "beacon-local"


def url_for(path: str | Path) -> str:
    """The gftp URL naming a local file."""
    raw = str(Path(path).absolute()).encode()
    return f"gftp://{URL_HOST}/" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def path_for(url: str) -> Path:
    """The local file a stand-in gftp URL names; ValueError for any other URL."""
    prefix = f"gftp://{URL_HOST}/"
    if not url.startswith(prefix):
        raise ValueError(f"not a URL of the local gftp stand-in: {url}")
    token = url[len(prefix) :].split("/", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return Path(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed gftp URL: {url}") from exc
