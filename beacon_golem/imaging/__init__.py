"""VM images: one Dockerfile per runtime under vm_images/, and vm_images/multi/ holding llama.cpp,
Ollama and DMR together; built with docker and gvmkit-build.

`lookup_image(runtime)` is what a Golem fleet calls to pick a pushed image when none is named.
"""

from __future__ import annotations

from beacon_golem.imaging.lock import ImageLock, ImageLockEntry, load_lock, lookup_image, record_image

__all__ = ["ImageLock", "ImageLockEntry", "load_lock", "lookup_image", "record_image"]
