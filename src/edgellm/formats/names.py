"""GGUF tensor names, spelled once. `{i}` is the layer index."""

TOKEN_EMBD = "token_embd.weight"
OUTPUT_NORM = "output_norm.weight"
OUTPUT = "output.weight"  # absent when the output projection is tied to the embedding

ATTN_NORM = "blk.{i}.attn_norm.weight"
ATTN_Q = "blk.{i}.attn_q.weight"
ATTN_K = "blk.{i}.attn_k.weight"
ATTN_V = "blk.{i}.attn_v.weight"
ATTN_QKV = "blk.{i}.attn_qkv.weight"  # Q, K and V rows in one matrix (Phi-3)
ATTN_Q_BIAS = "blk.{i}.attn_q.bias"
ATTN_K_BIAS = "blk.{i}.attn_k.bias"
ATTN_V_BIAS = "blk.{i}.attn_v.bias"
ATTN_Q_NORM = "blk.{i}.attn_q_norm.weight"
ATTN_K_NORM = "blk.{i}.attn_k_norm.weight"
ATTN_OUT = "blk.{i}.attn_output.weight"
ATTN_POST_NORM = "blk.{i}.post_attention_norm.weight"
FFN_NORM = "blk.{i}.ffn_norm.weight"
FFN_GATE = "blk.{i}.ffn_gate.weight"
FFN_UP = "blk.{i}.ffn_up.weight"
FFN_DOWN = "blk.{i}.ffn_down.weight"
FFN_POST_NORM = "blk.{i}.post_ffw_norm.weight"

# RoPE frequency divisors, one per rotated pair, shared by all layers
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1+
ROPE_FACTORS_LONG = "rope_factors_long.weight"  # LongRoPE (Phi-3/4): context above the original one
ROPE_FACTORS_SHORT = "rope_factors_short.weight"
ROPE_FACTOR_NAMES = (ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT)

# Mixture of experts (Qwen3-MoE): a router and every expert's matrices stacked in one 3-D tensor each
FFN_GATE_INP = "blk.{i}.ffn_gate_inp.weight"  # (n_expert, n_embd)
FFN_GATE_EXPS = "blk.{i}.ffn_gate_exps.weight"  # (n_expert, n_ff_exp, n_embd)
FFN_UP_EXPS = "blk.{i}.ffn_up_exps.weight"  # (n_expert, n_ff_exp, n_embd)
FFN_DOWN_EXPS = "blk.{i}.ffn_down_exps.weight"  # (n_expert, n_embd, n_ff_exp)
