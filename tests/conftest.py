"""Shared fixtures: tiny random models built with our own GGUF writer, and the packaged real models."""

from __future__ import annotations

from pathlib import Path

import os

import pytest

from fixtures.tiny import build_tiny_gguf


def pytest_sessionstart(session):
    """The kernels are the product: where they are required (CI sets EDGELLM_REQUIRE_KERNELS=1), a failed C
    build stops the run instead of letting every kernel test skip."""
    from edgellm import kernels

    if os.environ.get("EDGELLM_REQUIRE_KERNELS") == "1" and kernels._C is None:
        pytest.exit("the C extension edgellm.kernels._C did not build (EDGELLM_REQUIRE_KERNELS=1)", returncode=1)


@pytest.fixture(scope="session")
def real_model_path():
    """Catalog model -> cached file; pulled from PyPI on first use (marks: real_model)."""
    from edgellm import hub

    return lambda name: hub.resolve(name)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf", arch="llama")


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-gemma3.gguf", arch="gemma3")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.gguf", arch="qwen2")


@pytest.fixture
def reference_path():
    """Run on the NumPy reference with float activations for the duration of a test."""
    from edgellm import kernels

    before = kernels.active_path()
    kernels.use("ref-f32")
    yield
    kernels.use(before)
