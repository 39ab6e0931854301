"""Gemma 3: scaled embeddings, GeGLU, pre- and post-norms, q/k norms, and interleaved sliding-window layers.

As llama.cpp (src/models/gemma3.cpp): five sliding-window layers then one global layer unless
`sliding_window_pattern` says otherwise (a period or one flag per layer), the sliding layers' RoPE base from
`rope.freq_base_swa` (10000 when absent) with no scaling (linear scaling applies to global layers only), and
the softmax scale 1/sqrt(head_dim) (1/sqrt(n_embd/n_head) for the 62-layer 27B). The converter already
adds Gemma's +1 to every norm weight, so norms are plain RMSNorm here.
"""

import math

from ..config import MAX_CONTEXT, MAX_LAYERS, Meta, ModelConfig

SWA_PATTERN = 6  # every 6th layer is global
SWA_ROPE_BASE = 10000.0


def read_config(meta: Meta, n_vocab: int) -> ModelConfig:
    common = meta.common(n_vocab)
    n_layers = common["n_layers"]
    window = meta.count("{arch}.attention.sliding_window", 0, low=0, high=MAX_CONTEXT)
    pattern = meta.get("{arch}.attention.sliding_window_pattern")
    if hasattr(pattern, "__len__") and not isinstance(pattern, str):  # one flag per layer
        if len(pattern) != n_layers:
            raise meta.fail("{arch}.attention.sliding_window_pattern", pattern, f"{n_layers} per-layer flags")
        swa_layers = tuple(window > 0 and bool(flag) for flag in pattern)
    else:
        every = meta.count("{arch}.attention.sliding_window_pattern", SWA_PATTERN, high=MAX_LAYERS)
        swa_layers = tuple(window > 0 and (i % every) < every - 1 for i in range(n_layers))
    width = common["n_embd"] // common["n_head"] if n_layers == 62 else common["head_dim"]
    return ModelConfig(
        **common
        | dict(
            rope_neox=True,
            rope_base_swa=meta.real("{arch}.rope.freq_base_swa", SWA_ROPE_BASE),
            sliding_window=window,
            swa_layers=swa_layers,
            embed_scale=math.sqrt(common["n_embd"]),
            ffn_act="gelu",
            qk_norm=True,
            post_norms=True,
            attn_scale=1.0 / math.sqrt(width),
            final_logit_softcap=meta.real("{arch}.final_logit_softcapping", 0.0, positive=False),
        )
    )
