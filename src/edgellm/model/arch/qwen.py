"""Qwen2/2.5 (q/k/v biases), Qwen3 (per-head q/k RMSNorm) and Qwen3-MoE (Qwen3 attention, every FFN a
mixture of experts); all rotate head halves (NEOX RoPE).

Qwen3-MoE routing as llama.cpp hard-codes it (src/models/qwen3moe.cpp): softmax over all experts, the top
`expert_used_count`, their weights renormalised to sum to one; `expert_weights_norm` and the gating keys are
not read.
"""

from ..config import MAX_EXPERTS, Meta, ModelConfig


def read_qwen2_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab) | dict(rope_neox=True, qkv_bias=True))


def read_qwen3_config(meta: Meta, n_vocab: int) -> ModelConfig:
    return ModelConfig(**meta.common(n_vocab) | dict(rope_neox=True, qk_norm=True))


def read_qwen3moe_config(meta: Meta, n_vocab: int) -> ModelConfig:
    n_expert = meta.count("{arch}.expert_count", high=MAX_EXPERTS)
    n_used = meta.count("{arch}.expert_used_count", high=MAX_EXPERTS)
    if meta.get("{arch}.expert_feed_forward_length") is None and meta.get("{arch}.feed_forward_length") is not None:
        # llama.cpp's fallback: the dense width shared among the routed experts
        n_ff_exp = max(1, meta.count("{arch}.feed_forward_length") // n_used)
    else:
        n_ff_exp = meta.count("{arch}.expert_feed_forward_length")
    # n_ff is the width each token's FFN computes in: one expert's
    return ModelConfig(
        **meta.common(n_vocab, dense_ffn=False)
        | dict(rope_neox=True, qk_norm=True, n_ff=n_ff_exp, n_expert=n_expert, n_expert_used=n_used, n_ff_exp=n_ff_exp)
    )
