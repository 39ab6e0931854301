"""One line per supported architecture: GGUF `general.architecture` -> config reader."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import UnsupportedError
from .arch import gemma3, llama, qwen
from .config import Meta, ModelConfig

ARCHITECTURES: dict[str, Callable[[Meta, int], ModelConfig]] = {
    "llama": llama.read_config,
    "qwen2": qwen.read_qwen2_config,
    "qwen3": qwen.read_qwen3_config,
    "gemma3": gemma3.read_config,
}


def read_config(metadata: Mapping[str, Any], n_vocab: int, source: str = "model") -> ModelConfig:
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedError(
            f"{source}: architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[arch](Meta(metadata, arch, source), n_vocab)
