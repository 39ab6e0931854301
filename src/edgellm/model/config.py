"""Model hyper-parameters read from GGUF metadata into one frozen dataclass, validated on the way in.

Architecture modules (`model/arch/*.py`) state only how they differ; `read_config` dispatches on
`general.architecture` through `model.registry`. Every value is checked here for type and range before
anything is sized from it, and `check_config` checks the values against each other: a corrupt or hostile
file gets an error naming the key, the value found and what was expected, never a crash in C.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from gguf import Keys

from ..errors import FormatError, UnsupportedError
from ..formats import names

# Ceilings far above any released model, so that a corrupt count fails before anything is sized from it.
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20  # embedding, feed-forward and head widths
MAX_HEADS = 4096
MAX_CONTEXT = 1 << 24
MAX_EXPERTS = 4096
_REQUIRED = object()
# YaRN's ramp bounds in rotations over the original context (llama.cpp's defaults; its generic models read no key)
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0
F32_MAX, F32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)


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
    rope_ext_factor: float = 0.0  # YaRN: 1 blends interpolated and original angles per dimension (ramp below)
    rope_yarn_dims: tuple[float, float] = (0.0, 0.0)  # YaRN's ramp from extrapolated to interpolated pairs
    rope_mscale: float = 1.0  # multiplies cos and sin (YaRN's and LongRoPE's attention factor)
    rope_factors: bool = False  # divides angles per pair by rope_freqs (Llama 3) or LongRoPE's long/short factors
    n_ctx_orig: int = 0  # context the model was trained at before scaling (LongRoPE picks factors by it)
    no_rope_layers: tuple[bool, ...] = ()  # per layer: RoPE skipped (SmolLM3's every fourth layer)
    rope_base_swa: float | None = None  # sliding-window layers use their own base (Gemma 3)
    sliding_window: int = 0  # 0: every layer attends to the whole context
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(n_embd)
    ffn_act: str = "silu"  # gate activation: "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    qk_norm: bool = False  # RMSNorm over each query / key head before RoPE
    post_norms: bool = False  # RMSNorm on the attention and FFN outputs before the residual add
    attn_scale: float = 0.0  # softmax scale; 0 means 1/sqrt(head_dim)
    qkv_bias: bool = False
    fused_qkv: bool = False  # one attn_qkv matrix: Q rows, then K, then V (Phi-3)
    fused_gate_up: bool = False  # ffn_up holds the gate rows, then the up rows (Phi-3)
    n_expert: int = 0  # > 0: every layer's FFN is a mixture of this many experts (Qwen3-MoE)
    n_expert_used: int = 0  # experts each token is routed to
    n_ff_exp: int = 0  # feed-forward width of one expert
    final_logit_softcap: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def softmax_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]

    def uses_rope(self, layer: int) -> bool:
        return not (self.no_rope_layers and self.no_rope_layers[layer])


class Meta:
    """Typed, range-checked access to the `{arch}.*` keys of one file."""

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

    def fail(self, template: str, value: Any, expected: str) -> FormatError:
        shown = value if not hasattr(value, "__len__") or isinstance(value, str) else f"an array of {len(value)}"
        return FormatError(f"{self.source}: metadata key '{self.key(template)}' is {shown!r}; expected {expected}")

    def _value(self, template: str, default: Any) -> Any:
        return self.require(template) if default is _REQUIRED else self.get(template, default)

    def count(self, template: str, default: Any = _REQUIRED, low: int = 1, high: int = MAX_WIDTH) -> int:
        """An integer in [low, high]; a per-layer array must hold one value (the uniform case)."""
        value = self._value(template, default)
        expected = f"an integer in {low}..{high}"
        if hasattr(value, "__len__") and not isinstance(value, str):
            values = {_as_int(v) for v in value}
            if None in values or not values:
                raise self.fail(template, value, expected)
            if len(values) != 1:
                raise UnsupportedError(
                    f"{self.source}: per-layer values {sorted(values)} of '{self.key(template)}' are not supported"
                )
            value = values.pop()
        number = _as_int(value)
        if number is None or not low <= number <= high:
            raise self.fail(template, value, expected)
        return number

    def real(self, template: str, default: Any = _REQUIRED, *, positive: bool = True) -> float:
        """A finite number, > 0 when `positive` (else >= 0)."""
        value = self._value(template, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            raise self.fail(template, value, "a finite number " + ("> 0" if positive else ">= 0"))
        return float(value)

    def text(self, template: str, default: Any = None) -> str | None:
        value = self.get(template, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(template, value, "a string")
        return value

    def common(self, n_vocab: int, dense_ffn: bool = True) -> dict[str, Any]:
        """Fields every transformer here reads the same way (`dense_ffn` False: n_ff is set by the caller)."""
        n_embd = self.count(Keys.LLM.EMBEDDING_LENGTH)
        n_head = self.count(Keys.Attention.HEAD_COUNT, high=MAX_HEADS)
        n_head_kv = self.count(Keys.Attention.HEAD_COUNT_KV, n_head, high=MAX_HEADS)
        head_dim = self.count(Keys.Attention.KEY_LENGTH, max(1, n_embd // n_head))
        n_ctx_train = self.count(Keys.LLM.CONTEXT_LENGTH, 2048, high=MAX_CONTEXT)
        rope_base = self.real(Keys.Rope.FREQ_BASE, 10000.0)
        rope_dim = self.count(Keys.Rope.DIMENSION_COUNT, head_dim)
        return dict(
            **self._rope_scaling(rope_base, rope_dim, n_ctx_train),
            architecture=self.arch,
            n_layers=self.count(Keys.LLM.BLOCK_COUNT, high=MAX_LAYERS),
            n_embd=n_embd,
            n_ff=self.count(Keys.LLM.FEED_FORWARD_LENGTH) if dense_ffn else 0,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=self.count(Keys.Attention.VALUE_LENGTH, head_dim),
            n_vocab=n_vocab,
            n_ctx_train=n_ctx_train,
            norm_eps=self.real(Keys.Attention.LAYERNORM_RMS_EPS),
            rope_base=rope_base,
            rope_dim=rope_dim,
            rope_neox=False,
        )

    def _rope_scaling(self, base: float, n_rot: int, n_ctx_train: int) -> dict[str, Any]:
        """RoPE scaling as llama.cpp sets it up from the file (llama_context): no key means linear with factor 1;
        YaRN blends per pair between the original and the interpolated angle over a ramp of pairs and scales
        cos/sin by 1 + 0.1 ln(factor), times the file's attention factor in every case."""
        scaling = self.text(Keys.Rope.SCALING_TYPE) or "linear"
        if scaling not in ("none", "linear", "yarn", "longrope"):
            raise UnsupportedError(f"{self.source}: RoPE scaling '{scaling}' is not supported")
        key = Keys.Rope.SCALING_FACTOR if self.key(Keys.Rope.SCALING_FACTOR) in self.metadata else "{arch}.rope.scale_linear"
        factor = self.real(key, 0.0, positive=False)  # 0: none
        scale = 1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor
        n_ctx_orig = self.count(Keys.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train, high=MAX_CONTEXT)
        mscale = self.real(Keys.Rope.SCALING_ATTN_FACTOR, 1.0)
        out = dict(rope_scale=scale, rope_mscale=mscale, n_ctx_orig=n_ctx_orig)
        if scaling == "yarn":
            if base == 1.0:
                raise self.fail(Keys.Rope.FREQ_BASE, base, "a base other than 1 with YaRN (it divides by log(base))")

            def corr_dim(beta: float) -> float:
                return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))

            low = max(0.0, math.floor(corr_dim(YARN_BETA_FAST)))
            high = min(n_rot - 1.0, math.ceil(corr_dim(YARN_BETA_SLOW)))
            gain = 1.0 + 0.1 * math.log(1.0 / scale) if scale < 1.0 else 1.0
            out |= dict(rope_ext_factor=1.0, rope_yarn_dims=(low, high), rope_mscale=mscale * gain)
        return out


def _as_int(value: Any) -> int | None:
    """An integer stored as an integer (a float32 block count is a corrupt file, not 3.0 layers)."""
    if isinstance(value, np.integer):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_config(config: ModelConfig, source: str = "model") -> None:
    """The hyper-parameters against each other (each one alone was range-checked by `Meta`)."""
    c = config
    arch = c.architecture

    def fail(what: str) -> FormatError:
        return FormatError(f"{source}: {arch} metadata is inconsistent: {what}")

    if c.n_head % c.n_head_kv:
        raise fail(f"head_count {c.n_head} is not a multiple of head_count_kv {c.n_head_kv}")
    if c.rope_dim > c.head_dim or c.rope_dim % 2:
        raise fail(f"rope.dimension_count {c.rope_dim} must be even and at most the head width {c.head_dim}")
    if c.n_head * c.head_dim > MAX_WIDTH or c.n_head * c.head_dim_v > MAX_WIDTH:
        raise fail(f"{c.n_head} heads of width {c.head_dim} exceed {MAX_WIDTH}")
    if not 1 <= c.n_vocab <= 1 << 24:
        raise fail(f"vocabulary of {c.n_vocab} tokens")
    if c.sliding_window < 0:
        raise fail(f"sliding window {c.sliding_window}")
    if c.n_expert and not 1 <= c.n_expert_used <= c.n_expert:
        raise fail(f"expert_used_count {c.n_expert_used} must be in 1..expert_count {c.n_expert}")
    # the engine computes in 32-bit floats: a value finite here may be infinite or zero there
    for name in ("norm_eps", "rope_base", "rope_base_swa", "rope_scale", "rope_mscale", "embed_scale", "attn_scale",
                 "final_logit_softcap"):  # fmt: skip
        value = getattr(c, name)
        positive = name in ("norm_eps", "rope_base", "rope_base_swa")
        if value is not None and (abs(value) > F32_MAX or (positive and value < F32_TINY)):
            raise fail(f"{name} {value:g} (derived from the metadata) is outside the range of a 32-bit float")


def fused_views(config: ModelConfig, layer: int) -> dict[str, tuple[str, int, int]]:
    """The matrices a layer reads as row ranges of the fused tensors its file stores (name -> source, rows)."""
    c, n = config, lambda template: template.format(i=layer)  # noqa: E731
    q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    views = {}
    if c.fused_qkv:
        qkv = n(names.ATTN_QKV)
        views |= {n(names.ATTN_Q): (qkv, 0, q_dim), n(names.ATTN_K): (qkv, q_dim, q_dim + kv_dim),
                  n(names.ATTN_V): (qkv, q_dim + kv_dim, q_dim + kv_dim + c.n_head_kv * c.head_dim_v)}  # fmt: skip
    if c.fused_gate_up:
        # the gate takes the first n_ff rows of ffn_up; "up" keeps its name for the second half
        views |= {n(names.FFN_GATE): (n(names.FFN_UP), 0, c.n_ff), n(names.FFN_UP): (n(names.FFN_UP), c.n_ff, 2 * c.n_ff)}
    return views


def expected_shapes(config: ModelConfig, tied: bool, stored: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads, with its NumPy shape; `tied`: the output head is the token embedding.
    `stored`: fused matrices as the file holds them, else as the separate matrices the model uses."""
    c = config
    q_dim, kv_dim, v_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v
    shapes = {names.TOKEN_EMBD: (c.n_vocab, c.n_embd), names.OUTPUT_NORM: (c.n_embd,)}
    if not tied:
        shapes[names.OUTPUT] = (c.n_vocab, c.n_embd)
    per_layer = {
        names.ATTN_NORM: (c.n_embd,),
        names.ATTN_Q: (q_dim, c.n_embd),
        names.ATTN_K: (kv_dim, c.n_embd),
        names.ATTN_V: (v_dim, c.n_embd),
        names.ATTN_OUT: (c.n_embd, c.n_head * c.head_dim_v),
        names.FFN_NORM: (c.n_embd,),
        names.FFN_GATE: (c.n_ff, c.n_embd),
        names.FFN_UP: (c.n_ff, c.n_embd),
        names.FFN_DOWN: (c.n_embd, c.n_ff),
    }
    if c.n_expert:
        for template in (names.FFN_GATE, names.FFN_UP, names.FFN_DOWN):
            del per_layer[template]
        per_layer |= {
            names.FFN_GATE_INP: (c.n_expert, c.n_embd),
            names.FFN_GATE_EXPS: (c.n_expert, c.n_ff_exp, c.n_embd),
            names.FFN_UP_EXPS: (c.n_expert, c.n_ff_exp, c.n_embd),
            names.FFN_DOWN_EXPS: (c.n_expert, c.n_embd, c.n_ff_exp),
        }
    if c.qkv_bias:
        per_layer |= {names.ATTN_Q_BIAS: (q_dim,), names.ATTN_K_BIAS: (kv_dim,), names.ATTN_V_BIAS: (v_dim,)}
    if c.qk_norm:
        per_layer |= {names.ATTN_Q_NORM: (c.head_dim,), names.ATTN_K_NORM: (c.head_dim,)}
    if c.post_norms:
        per_layer |= {names.ATTN_POST_NORM: (c.n_embd,), names.FFN_POST_NORM: (c.n_embd,)}
    if stored and c.fused_qkv:
        for template in (names.ATTN_Q, names.ATTN_K, names.ATTN_V):
            del per_layer[template]
        per_layer[names.ATTN_QKV] = (q_dim + kv_dim + v_dim, c.n_embd)
    if stored and c.fused_gate_up:
        del per_layer[names.FFN_GATE]
        per_layer[names.FFN_UP] = (2 * c.n_ff, c.n_embd)
    for i in range(c.n_layers):
        shapes |= {template.format(i=i): shape for template, shape in per_layer.items()}
    return shapes


def check_tensors(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]], source: str = "model") -> None:
    """The tensors present against the metadata: every expected one with its shape, and no more blocks than
    `block_count` says."""
    tied = names.OUTPUT not in shapes
    for name, shape in expected_shapes(config, tied, stored=True).items():
        if name not in shapes:
            raise FormatError(f"{source}: tensor '{name}' is missing")
        if tuple(shapes[name]) != shape:
            raise FormatError(
                f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, expected {shape} "
                f"from the {config.architecture} metadata"
            )
    for name in names.ROPE_FACTOR_NAMES:
        if name in shapes and tuple(shapes[name]) != (config.rope_dim // 2,):
            raise FormatError(f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, expected "
                              f"({config.rope_dim // 2},): one factor per rotated pair")  # fmt: skip
    blocks = {int(m.group(1)) for m in map(_BLOCK.match, shapes) if m}
    if blocks and max(blocks) >= config.n_layers:
        raise FormatError(
            f"{source}: metadata key '{config.architecture}.block_count' is {config.n_layers} but the file "
            f"holds {max(blocks) + 1} blocks"
        )


_BLOCK = re.compile(r"blk\.(\d+)\.")
