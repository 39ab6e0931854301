"""One line per supported architecture: GGUF `general.architecture` -> config reader."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..formats import names
from .arch import gemma3, llama, phi3, qwen, smollm3
from .config import Meta, ModelConfig, check_config, check_tensors

ARCHITECTURES: dict[str, Callable[[Meta, int], ModelConfig]] = {
    "llama": llama.read_config,
    "qwen2": qwen.read_qwen2_config,
    "qwen3": qwen.read_qwen3_config,
    "qwen3moe": qwen.read_qwen3moe_config,
    "gemma3": gemma3.read_config,
    "phi3": phi3.read_config,
    "smollm3": smollm3.read_config,
}


def read_config(metadata: Mapping[str, Any], n_vocab: int, source: str = "model") -> ModelConfig:
    """The validated hyper-parameters of a model from its metadata alone (planner, converters)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise UnsupportedError(
            f"{source}: architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    config = ARCHITECTURES[arch](Meta(metadata, arch, source), n_vocab)
    check_config(config, source)
    return config


def model_config(metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], source: str = "model") -> ModelConfig:
    """The config of a model file, checked against its metadata, its tensors and its vocabulary before
    anything is allocated: every command that opens a model goes through here."""
    embd = shapes.get(names.TOKEN_EMBD)
    if embd is None or len(embd) != 2:
        raise FormatError(f"{source}: tensor '{names.TOKEN_EMBD}' is missing or not a matrix")
    config = read_config(metadata, n_vocab=int(embd[0]), source=source)
    check_tensors(config, shapes, source)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, (list, np.ndarray)):
        raise FormatError(f"{source}: metadata key 'tokenizer.ggml.tokens' is {tokens!r:.60}, expected an array")
    if tokens is not None and len(tokens) != config.n_vocab:
        raise FormatError(
            f"{source}: metadata key 'tokenizer.ggml.tokens' lists {len(tokens)} tokens but "
            f"'{names.TOKEN_EMBD}' has {config.n_vocab} rows"
        )
    return config


def gguf_config(gguf) -> ModelConfig:
    """`model_config` of an open `GGUFFile`."""
    return model_config(gguf.metadata, {name: t.shape for name, t in gguf.tensors.items()}, str(gguf.path))
