"""Llama family: Llama 2/3, SmolLM2, Mistral (its GGUFs say "llama"); the baseline others differ from.

llama.cpp's converter permutes Q and K rows so that RoPE rotates adjacent pairs (rope_neox=False).
"""

from ..config import Meta, ModelConfig


def read_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab))
