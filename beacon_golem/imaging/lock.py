"""images.lock.json: the images pushed so far, so a Golem fleet can pick one.

It ships inside the package (beacon_golem/imaging/images.lock.json), so an installed wheel finds
it without a checkout; BEACON_IMAGES_LOCK (a setting) points elsewhere.

`beacon image push` appends an entry per upload; `lookup_image(runtime)` gives the newest
entry for a runtime (the fleet uses it when no image is named). The file is plain JSON meant
to be committed; entries are never rewritten, only added.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import BeaconError
from beacon_golem.imaging.spec import IMAGE_RUNTIMES

LOCK_NAME = "images.lock.json"


class ImageLockEntry(BaseModel):
    runtime: str
    #: The Docker tag the image was built as (beacon-golem-ollama:0.1.0).
    tag: str
    #: SHA3-224 of the .gvmi, hex: what `vm.repo(image_hash=...)` takes.
    hash: str
    #: Size of the .gvmi in bytes.
    size: int = Field(ge=0)
    created_at: datetime
    #: The registry repository it was pushed to (user/repo:tag), None for an anonymous push.
    registry_tag: str | None = None
    #: The model baked into the image, None when models arrive after deploy.
    model: str | None = None

    @field_validator("hash")
    @classmethod
    def _sha3_224(cls, value: str) -> str:
        value = value.lower().removeprefix("sha3:").removeprefix("sha3-224:")
        if len(value) != 56 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be a SHA3-224 hex digest (56 hex characters)")
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        if value not in IMAGE_RUNTIMES:
            raise ValueError(f"unknown runtime, expected one of {', '.join(IMAGE_RUNTIMES)}")
        return value


class ImageLock(BaseModel):
    version: int = 1
    images: list[ImageLockEntry] = Field(default_factory=list)

    def latest(self, runtime: str) -> ImageLockEntry | None:
        entries = [e for e in self.images if e.runtime == runtime]
        return max(entries, key=lambda e: e.created_at) if entries else None


def default_lock_path() -> Path:
    """The `images_lock` setting (BEACON_IMAGES_LOCK), else the lock file shipped with the package."""
    return load_settings().images_lock or Path(__file__).with_name(LOCK_NAME)


def load_lock(path: Path | None = None) -> ImageLock:
    """The lock file's content; an empty lock when the file does not exist yet."""
    path = path or default_lock_path()
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return ImageLock()
    except OSError as exc:
        raise BeaconError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return ImageLock.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BeaconError(f"{path} is not a valid image lock file ({where}: {first['msg']})") from exc


def save_lock(lock: ImageLock, path: Path | None = None) -> Path:
    """Write atomically (temp file + rename), sorted by creation time, 2-space JSON."""
    path = path or default_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock.model_copy(update={"images": sorted(lock.images, key=lambda e: (e.created_at, e.runtime))})
    text = json.dumps(lock.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".images.lock.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_image(entry: ImageLockEntry, path: Path | None = None) -> ImageLock:
    """Add an entry (an identical hash for the same runtime and registry tag is not added twice)."""
    lock = load_lock(path)
    duplicate = any(
        e.runtime == entry.runtime and e.hash == entry.hash and e.registry_tag == entry.registry_tag
        for e in lock.images
    )
    if not duplicate:
        lock.images.append(entry)
        save_lock(lock, path)
    return lock


def lookup_image(runtime: str, path: Path | None = None) -> ImageLockEntry | None:
    """The newest pushed image for `runtime`, or None when none was pushed (or no lock file)."""
    return load_lock(path).latest(runtime)


def new_entry(
    runtime: str, tag: str, hash: str, size: int, *, registry_tag: str | None = None, model: str | None = None
) -> ImageLockEntry:
    return ImageLockEntry(
        runtime=runtime, tag=tag, hash=hash, size=size, created_at=datetime.now(UTC),
        registry_tag=registry_tag, model=model,
    )  # fmt: skip
