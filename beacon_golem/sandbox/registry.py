"""An image registry that answers as Golem's (registry.golem.network) does, for yapapi's resolvers.

yapapi/payload/package.py asks `GET {repo}/v1/image/info?tag=...` (or `?hash=...`, plus `count=true`
or `dev=true`) and reads `http`/`https` (the download URL), `sha3` (sha3-224 of the .gvmi) and
`size`; given a URL plus a hash it only sends `HEAD` to the URL. Images download from
`/download/<sha256>`. The sandbox's providers fetch the agreement's `golem.srv.comp.task_package`
(`hash:sha3:<hash>:<url>`) and check the hash, as the VM runtime does.
"""

from __future__ import annotations

import hashlib

import structlog
from aiohttp import web
from pydantic import BaseModel

from beacon_golem.sandbox.wire import ApiError, WireModel

log = structlog.get_logger(__name__)

PREFIX = "/registry"


class RegistryImage(BaseModel):
    tag: str
    data: bytes

    @property
    def sha3(self) -> str:
        return hashlib.sha3_224(self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class ImageInfo(WireModel):
    tag: str
    sha3: str
    sha256: str
    size: int
    http: str
    https: str


class Registry:
    def __init__(self, images: list[RegistryImage]) -> None:
        self.images = list(images)
        self.base_url = ""
        self.info_requests = 0
        self.downloads = 0

    def url(self) -> str:
        """The registry URL a requestor is given (yapapi's `repository_url`)."""
        return f"{self.base_url}{PREFIX}"

    def download_url(self, image: RegistryImage) -> str:
        return f"{self.url()}/download/{image.sha256}"

    def package_url(self, image: RegistryImage) -> str:
        """What yapapi would put in the demand for this image (golem.srv.comp.task_package)."""
        return f"hash:sha3:{image.sha3}:{self.download_url(image)}"

    def by_tag(self, tag: str) -> RegistryImage | None:
        return next((i for i in self.images if i.tag == tag), None)

    def by_hash(self, sha3: str) -> RegistryImage | None:
        return next((i for i in self.images if i.sha3 == sha3.lower()), None)

    def by_download_id(self, sha256: str) -> RegistryImage | None:
        return next((i for i in self.images if i.sha256 == sha256.lower()), None)

    def local_bytes(self, url: str) -> bytes | None:
        """The image a download URL of this registry names, without going through HTTP."""
        prefix = f"{self.url()}/download/"
        if not self.base_url or not url.startswith(prefix):
            return None
        image = self.by_download_id(url[len(prefix) :])
        return image.data if image else None

    def info(self, image: RegistryImage) -> ImageInfo:
        url = self.download_url(image)
        return ImageInfo(tag=image.tag, sha3=image.sha3, sha256=image.sha256, size=len(image.data), http=url, https=url)

    # ---- HTTP -------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/v1/image/info", self._h_info),
            web.get(f"{PREFIX}/download/{{id}}", self._h_download, allow_head=True),
        ]

    async def _h_info(self, request: web.Request) -> web.Response:
        self.info_requests += 1
        tag, sha3 = request.query.get("tag"), request.query.get("hash")
        if tag and sha3:
            raise ApiError(400, "give either tag or hash, not both")
        if not tag and not sha3:
            raise ApiError(400, "give a tag or a hash")
        image = self.by_tag(tag) if tag else self.by_hash(sha3 or "")
        if image is None:
            raise ApiError(404, f"Could not find image {tag or sha3}")
        return web.json_response(self.info(image).wire())

    async def _h_download(self, request: web.Request) -> web.Response:
        image = self.by_download_id(request.match_info["id"])
        if image is None:
            raise ApiError(404, f"Could not find image {request.match_info['id']}")
        if request.method == "GET":
            self.downloads += 1
        return web.Response(body=image.data, content_type="application/octet-stream")
