"""SmolLM3: Llama with RoPE left out of every fourth layer (NoPE layers).

llama.cpp hard-codes the interval (n_no_rope_layer_step = 4; no GGUF key): layers 3, 7, 11, ... skip RoPE.
"""

from ..config import Meta, ModelConfig

NO_ROPE_EVERY = 4


def read_config(meta: Meta, n_vocab: int) -> ModelConfig:
    common = meta.common(n_vocab)
    no_rope = tuple((i + 1) % NO_ROPE_EVERY == 0 for i in range(common["n_layers"]))
    return ModelConfig(**common | dict(no_rope_layers=no_rope))
