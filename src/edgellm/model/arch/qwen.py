"""Qwen2/2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm); both rotate head halves (NEOX RoPE)."""

from ..config import Meta, ModelConfig


def read_qwen2_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab) | dict(rope_neox=True, qkv_bias=True))


def read_qwen3_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab) | dict(rope_neox=True, qk_norm=True))
