"""Per-tensor type choice for the named quantization types, as llama.cpp's `llama-quantize` makes it.

A name such as Q4_K_M is a mix: a default type, raised for sensitive tensors (attn_v, ffn_down in some
layers, the output/tied embedding) and lowered to a 32-block fallback where a row is not a multiple of the
k-quant block of 256. Following llama.cpp (src/llama-quant.cpp, 2026-10) keeps our files comparable with
its files bit for bit in their type layout. Our own formats (Q4_NL, Q3_NL, Q2_NL) are "pure" types: every
quantizable tensor gets them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..formats.quants import GGMLType, get_format

T = GGMLType


@dataclass(frozen=True)
class Mix:
    name: str
    default: GGMLType
    file_type: int | None  # llama_ftype written to general.file_type (None: not a llama.cpp type)


MIXES: dict[str, Mix] = {
    m.name: m
    for m in [
        Mix("F32", T.F32, 0),
        Mix("F16", T.F16, 1),
        Mix("Q8_0", T.Q8_0, 7),
        Mix("Q6_K", T.Q6_K, 18),
        Mix("Q5_K_M", T.Q5_K, 17),
        Mix("Q5_K_S", T.Q5_K, 16),
        Mix("Q5_1", T.Q5_1, 9),
        Mix("Q5_0", T.Q5_0, 8),
        Mix("Q4_K_M", T.Q4_K, 15),
        Mix("Q4_K_S", T.Q4_K, 14),
        Mix("Q4_1", T.Q4_1, 3),
        Mix("Q4_0", T.Q4_0, 2),
        Mix("Q3_K_L", T.Q3_K, 13),
        Mix("Q3_K_M", T.Q3_K, 12),
        Mix("Q3_K_S", T.Q3_K, 11),
        Mix("Q2_K", T.Q2_K, 10),
        Mix("Q4_NL", T.Q4_NL, None),
        Mix("Q3_NL", T.Q3_NL, None),
        Mix("Q2_NL", T.Q2_NL, None),
    ]
}

# llama.cpp's fallback when a row does not split into whole blocks of the chosen type
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def get_mix(name: str) -> Mix:
    mix = MIXES.get(name.upper())
    if mix is None:
        raise ConfigError(f"unknown quantization type '{name}'; choose one of: {', '.join(MIXES)}")
    return mix


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """2-D weights other than norms and MoE routers (llama.cpp's tensor_allows_quantization for the
    architectures we run)."""
    return len(shape) >= 2 and name.endswith("weight") and not name.endswith(("_norm.weight", "ffn_gate_inp.weight"))


def role(name: str) -> str:
    """The tensor's role in the mix rules: token_embd, output, attn_v, ffn_down, ... or '' for others."""
    if name in ("token_embd.weight", "output.weight"):
        return name.split(".")[0]
    for r in ("attn_v", "attn_k", "attn_q", "attn_output", "attn_qkv", "ffn_down", "ffn_gate", "ffn_up"):
        if f".{r}.weight" in name or f".{r}_exps.weight" in name:
            return r
    return ""


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(t: GGMLType, n_per_row: int) -> GGMLType:
    if n_per_row % get_format(t).block_size == 0:
        return t
    t = FALLBACK.get(t, t)
    return t if n_per_row % get_format(t).block_size == 0 else T.F16


def choose_types(
    tensors: list[tuple[str, tuple[int, ...]]], mix: Mix, n_head: int, n_head_kv: int, has_imatrix: bool = False
) -> dict[str, GGMLType | None]:
    """Type of each tensor (in file order) under `mix`; None means "copy as it is" (norms, 1-D tensors)."""
    tied = not any(name == "output.weight" for name, _ in tensors)
    n_gqa = n_head // max(n_head_kv, 1)
    counts = {r: sum(role(n) == r for n, s in tensors if is_quantizable(n, s)) for r in ("attn_v", "ffn_down")}
    seen = {"attn_v": 0, "ffn_down": 0}
    f = mix.name
    out: dict[str, GGMLType | None] = {}
    for name, shape in tensors:
        if not is_quantizable(name, shape):
            out[name] = None
            continue
        t = mix.default
        r = role(name)
        if get_format(t).block_size == 1:  # F16 and friends: no per-tensor rules
            out[name] = t
            continue
        if r == "output" or (tied and r == "token_embd"):
            if shape[-1] % get_format(t).block_size:
                t = T.Q8_0
            elif t != T.Q8_0 and mix.file_type is not None:
                t = T.Q6_K
        elif r == "attn_v":
            i, n = seen["attn_v"], counts["attn_v"]
            if f == "Q2_K":
                t = T.Q4_K if n_gqa >= 4 else T.Q3_K
            elif f == "Q3_K_M":
                t = T.Q5_K if i < 2 else T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
                t = T.Q6_K
            elif f == "Q4_K_S" and i < 4:
                t = T.Q5_K
            seen["attn_v"] += 1
        elif r == "ffn_down":
            i, n = seen["ffn_down"], counts["ffn_down"]
            if f == "Q2_K":
                t = T.Q3_K
            elif f == "Q3_K_M":
                t = T.Q5_K if i < n // 16 else T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
                t = T.Q6_K
            elif f == "Q4_K_S" and i < n // 8:
                t = T.Q5_K
            elif f in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
                t = T.Q4_1 if f == "Q4_0" else T.Q5_1
            seen["ffn_down"] += 1
        elif r == "attn_output":
            if f == "Q2_K":
                t = T.Q3_K
            elif f == "Q3_K_M":
                t = T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q5_K
        elif r == "attn_qkv":
            t = {"Q3_K_M": T.Q4_K, "Q3_K_L": T.Q4_K, "Q4_K_M": T.Q5_K, "Q5_K_M": T.Q6_K}.get(f, t)
        out[name] = fallback(t, shape[-1])
    return out
