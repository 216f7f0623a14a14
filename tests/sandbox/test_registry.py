"""The image registry answers yapapi's resolvers (by tag, by hash, URL plus hash) as Golem's does."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from yapapi.payload import vm
from yapapi.payload.package import check_package_url, resolve_package_url

from tests.sandbox.conftest import IMAGE, TAG, MakeSandbox

SHA3 = hashlib.sha3_224(IMAGE).hexdigest()


async def test_tags_and_hashes_resolve_to_the_image(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=1)
    by_tag = await resolve_package_url(sandbox.registry_url, image_tag=TAG)
    by_hash = await resolve_package_url(sandbox.registry_url, image_hash=SHA3)
    assert by_tag == by_hash == f"hash:sha3:{SHA3}:{sandbox.registry_url}/download/{hashlib.sha256(IMAGE).hexdigest()}"
    url = by_tag.split(":", 3)[3]
    assert await check_package_url(url, SHA3) == by_tag  # HEAD on the download URL
    package = await vm.repo(image_tag=TAG, repository_url=sandbox.registry_url)
    assert await package.resolve_url() == by_tag
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == IMAGE
    assert sandbox.registry.downloads == 1


async def test_unknown_images_fail_as_yapapi_expects(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(providers=1)
    with pytest.raises(Exception, match="Failed to resolve image URL: 404"):
        await resolve_package_url(sandbox.registry_url, image_tag="nobody/nothing:1")
    with pytest.raises(aiohttp.ClientResponseError):
        await check_package_url(f"{sandbox.registry_url}/download/{'0' * 64}", SHA3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.registry_url}/v1/image/info", params={"tag": TAG, "hash": SHA3}) as resp:
            assert resp.status == 400
        async with http.get(f"{sandbox.registry_url}/v1/image/info") as resp:
            assert resp.status == 400
