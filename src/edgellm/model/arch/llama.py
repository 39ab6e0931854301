"""Llama family: Llama 2/3, SmolLM2, Mistral (its GGUFs say "llama"); the baseline others differ from.

llama.cpp's converter permutes Q and K rows so that RoPE rotates adjacent pairs (rope_neox=False). Llama 3.1+
files carry `rope_freqs.weight`, per-pair divisors of the RoPE angles (llama3 scaling).
"""

from ..config import Meta, ModelConfig


def read_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab) | dict(rope_factors=True))
