"""A built .gvmi file: its size and the sha3-224 hash Golem identifies it by.

yapapi's `vm.repo(image_hash=...)` and providers name an image by the SHA3-224 of the .gvmi
file, 56 hex characters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

CHUNK = 8 * 1024 * 1024


def sha3_224_file(path: Path) -> str:
    """Hex SHA3-224 of a file, read in 8 MiB chunks (images run to gigabytes)."""
    digest = hashlib.sha3_224()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class GvmiFile(BaseModel):
    path: Path
    size: int
    sha3_224: str

    @classmethod
    def of(cls, path: Path) -> GvmiFile:
        return cls(path=path, size=path.stat().st_size, sha3_224=sha3_224_file(path))

    def summary(self) -> str:
        return f"{self.path}  {human_size(self.size)} ({self.size} bytes)  sha3-224:{self.sha3_224}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
