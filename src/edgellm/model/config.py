"""Model hyper-parameters read from GGUF metadata into one frozen dataclass.

Architecture modules (`model/arch/*.py`) state only how they differ; `read_config` dispatches on
`general.architecture` through `model.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from gguf import Keys

from ..errors import FormatError, UnsupportedError


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int  # per-head width of queries and keys
    head_dim_v: int  # per-head width of values
    n_vocab: int
    n_ctx_train: int
    norm_eps: float
    rope_base: float
    rope_dim: int  # leading dims of each head that RoPE rotates
    rope_neox: bool  # rotate the two halves of a head (NEOX) rather than adjacent pairs (GPT-J / llama)
    rope_scale: float = 1.0  # position multiplier (1 / linear scaling factor)
    rope_base_swa: float | None = None  # sliding-window layers use their own base (Gemma 3)
    sliding_window: int = 0  # 0: every layer attends to the whole context
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(n_embd)
    ffn_act: str = "silu"  # gate activation: "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    qk_norm: bool = False  # RMSNorm over each query / key head before RoPE
    post_norms: bool = False  # RMSNorm on the attention and FFN outputs before the residual add
    attn_scale: float = 0.0  # softmax scale; 0 means 1/sqrt(head_dim)
    qkv_bias: bool = False
    final_logit_softcap: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def softmax_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]


class Meta:
    """Typed, error-reporting access to `{arch}.*` keys of one file."""

    def __init__(self, metadata: Mapping[str, Any], arch: str, source: str = "model"):
        self.metadata, self.arch, self.source = metadata, arch, source

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    def get(self, template: str, default: Any = None) -> Any:
        return self.metadata.get(self.key(template), default)

    def require(self, template: str) -> Any:
        key = self.key(template)
        if key not in self.metadata:
            raise FormatError(f"{self.source}: metadata key '{key}' is missing (needed for {self.arch})")
        return self.metadata[key]

    def common(self, n_vocab: int) -> dict[str, Any]:
        """Fields every transformer here reads the same way."""
        n_embd = int(self.require(Keys.LLM.EMBEDDING_LENGTH))
        n_head = _per_layer_uniform(self.require(Keys.Attention.HEAD_COUNT), self.key(Keys.Attention.HEAD_COUNT))
        n_head_kv = _per_layer_uniform(self.get(Keys.Attention.HEAD_COUNT_KV, n_head), "head_count_kv")
        head_dim = int(self.get(Keys.Attention.KEY_LENGTH, n_embd // n_head))
        rope_scale = 1.0
        if self.get(Keys.Rope.SCALING_TYPE) == "linear":
            rope_scale = 1.0 / float(self.get(Keys.Rope.SCALING_FACTOR, 1.0))
        return dict(
            architecture=self.arch,
            n_layers=int(self.require(Keys.LLM.BLOCK_COUNT)),
            n_embd=n_embd,
            n_ff=_per_layer_uniform(self.require(Keys.LLM.FEED_FORWARD_LENGTH), "feed_forward_length"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=int(self.get(Keys.Attention.VALUE_LENGTH, head_dim)),
            n_vocab=n_vocab,
            n_ctx_train=int(self.get(Keys.LLM.CONTEXT_LENGTH, 2048)),
            norm_eps=float(self.require(Keys.Attention.LAYERNORM_RMS_EPS)),
            rope_base=float(self.get(Keys.Rope.FREQ_BASE, 10000.0)),
            rope_dim=int(self.get(Keys.Rope.DIMENSION_COUNT, head_dim)),
            rope_neox=False,
            rope_scale=rope_scale,
        )


def _per_layer_uniform(value: Any, what: str) -> int:
    """Some files store per-layer arrays; we support the uniform case."""
    if hasattr(value, "__len__"):
        values = set(int(v) for v in value)
        if len(values) != 1:
            raise UnsupportedError(f"per-layer {what} values {sorted(values)} are not supported yet")
        return values.pop()
    return int(value)
