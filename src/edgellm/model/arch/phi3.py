"""Phi-3 / Phi-4-mini: fused Q/K/V and gate/up matrices, partial rotary, LongRoPE.

As llama.cpp (src/models/phi3.cpp): NEOX RoPE over `rope.dimension_count` of each head; per-pair angle divisors
from `rope_factors_short` or `rope_factors_long` (the long ones when the context, padded to 256, exceeds
`rope.scaling.original_context_length`), cos/sin times `rope.scaling.attn_factor`; no sliding window (llama.cpp
turns it off for Phi-3); the gate is the first half of `ffn_up`.
"""

from ..config import Meta, ModelConfig


def read_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(
        **meta.common(n_vocab) | dict(rope_neox=True, rope_factors=True, fused_qkv=True, fused_gate_up=True)
    )
