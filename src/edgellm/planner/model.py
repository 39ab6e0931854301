"""What the planner needs to know about a model: its shapes and each weight tensor's type.

A model description comes from a GGUF file (shapes and the file's own tensor types, so bytes are exact), a
Hugging Face `config.json`, or the built-in catalog of common edge models (shapes from each model's
published config.json). For the last two the weight types come from a llama.cpp mix (`--quant Q4_K_M`,
with its fallbacks for rows k-quants cannot take) or a uniform bits-per-weight (`--bpw`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..formats.quants import GGMLType, get_format


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer, enough to count bytes and FLOPs."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_head_kv: int
    head_dim: int
    d_ff: int  # per expert for a mixture of experts
    vocab: int
    tied: bool  # output projection shares the token embedding
    n_expert: int = 0  # 0: dense
    n_expert_used: int = 0
    window: int = 0  # sliding-window attention span of local layers (0: every layer is global)
    window_pattern: int = 0  # local layers then one global, repeating (Gemma 3: 6)

    def attended(self, layer: int, ctx: int) -> int:
        """Cached positions layer `layer` attends to with `ctx` tokens in the cache."""
        local = self.window > 0 and (self.window_pattern == 0 or layer % self.window_pattern < self.window_pattern - 1)
        return min(ctx, self.window) if local else ctx

    def weight_tensors(self) -> list[tuple[str, int, int]]:
        """(GGUF tensor name, rows, columns) of every matrix; experts as one tensor per layer of all experts."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        out = [("token_embd.weight", self.vocab, self.d_model)]
        if not self.tied:
            out.append(("output.weight", self.vocab, self.d_model))
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [(b + "attn_q.weight", q, self.d_model), (b + "attn_k.weight", kv, self.d_model),
                    (b + "attn_v.weight", kv, self.d_model), (b + "attn_output.weight", self.d_model, q)]  # fmt: skip
            experts = max(1, self.n_expert)
            sfx = "_exps.weight" if self.n_expert else ".weight"
            out += [(b + "ffn_gate" + sfx, experts * self.d_ff, self.d_model),
                    (b + "ffn_up" + sfx, experts * self.d_ff, self.d_model),
                    (b + "ffn_down" + sfx, experts * self.d_model, self.d_ff)]  # fmt: skip
        return out

    @property
    def n_params(self) -> int:
        return sum(r * c for _, r, c in self.weight_tensors())

    def active_fraction(self, tensor: str) -> float:
        """Fraction of a tensor read per token: the routed experts of a mixture, else all of it."""
        return self.n_expert_used / self.n_expert if self.n_expert and "_exps." in tensor else 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A shape plus the type of each weight tensor (what decides bytes per weight)."""

    shape: Shape
    types: dict[str, GGMLType]  # tensor name -> type
    label: str  # "Q4_K_M", "bpw 3.00", or the file's name
    bits_override: float | None = None  # --bpw: every matrix at this many bits (incl. scales)

    def tensor_bytes(self, name: str, rows: int, cols: int) -> float:
        if self.bits_override is not None:
            return rows * cols * self.bits_override / 8
        return rows * get_format(self.types[name]).row_bytes(cols)

    @property
    def weight_bytes(self) -> float:
        return sum(self.tensor_bytes(n, r, c) for n, r, c in self.shape.weight_tensors())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / self.shape.n_params


# name -> Shape. Shapes from each model's config.json on Hugging Face (hidden_size, intermediate_size, ...).
CATALOG: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, True),
        Shape("smollm2-360m", 32, 960, 15, 5, 64, 2560, 49152, True),
        Shape("smollm2-1.7b", 24, 2048, 32, 32, 64, 8192, 49152, True),
        Shape("qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, True),
        Shape("qwen2.5-1.5b", 28, 1536, 12, 2, 128, 8960, 151936, True),
        Shape("qwen2.5-3b", 36, 2048, 16, 2, 128, 11008, 151936, True),
        Shape("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, False),
        Shape("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, True),
        Shape("llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, True),
        Shape("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, False),
        Shape("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, False),
        Shape("gemma-3-270m", 18, 640, 4, 1, 256, 2048, 262144, True, window=512, window_pattern=6),
        Shape("gemma-3-1b", 26, 1152, 4, 1, 256, 6912, 262144, True, window=512, window_pattern=6),
        Shape("gemma-3-4b", 34, 2560, 8, 4, 256, 10240, 262208, True, window=1024, window_pattern=6),
        Shape("phi-3-mini", 32, 3072, 32, 32, 96, 8192, 32064, False),
        Shape("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, False, n_expert=8, n_expert_used=2),
        # further models that published edge measurements use (docs/planner.md)
        Shape("tinyllama-1.1b", 22, 2048, 32, 4, 64, 5632, 32000, False),
        Shape("qwen2-0.5b", 24, 896, 14, 2, 64, 4864, 151936, True),
        Shape("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 768, 151936, False, n_expert=128, n_expert_used=8),
    ]
}
ALIASES = {"smollm2": "smollm2-135m", "gemma3-270m": "gemma-3-270m", "llama-3-8b": "llama-3.1-8b"}


def catalog_names() -> list[str]:
    return sorted(CATALOG)


def load_model(ref: str, quant: str | None = None, bpw: float | None = None) -> ModelSpec:
    """A catalog name, a GGUF path or a config.json (or the directory holding one), typed by `quant` or
    `bpw`; a GGUF keeps its own types unless one of those is given."""
    path = Path(ref)
    if path.suffix == ".gguf" or (path.is_file() and _magic(path) == b"GGUF"):
        shape, types = _from_gguf(path)
        if quant is None and bpw is None:
            return ModelSpec(shape, types, path.name)
    elif path.name == "config.json" or (path.is_dir() and (path / "config.json").is_file()):
        shape = _from_config(path if path.name == "config.json" else path / "config.json")
    else:
        name = ALIASES.get(ref.lower(), ref.lower())
        if name not in CATALOG:
            raise ConfigError(
                f"unknown model '{ref}': give a .gguf file, a config.json (or its directory), or one of "
                f"{', '.join(catalog_names())}"
            )
        shape = CATALOG[name]
    return typed(shape, quant, bpw)


def typed(shape: Shape, quant: str | None = None, bpw: float | None = None) -> ModelSpec:
    """`shape` with the tensor types of llama.cpp mix `quant` (default Q4_K_M) or a uniform `bpw`."""
    from ..quant.mixes import choose_types, get_mix

    if bpw is not None:
        if not 1.0 <= bpw <= 32.0:
            raise ConfigError(f"--bpw {bpw} is outside 1..32 bits per weight")
        return ModelSpec(shape, {}, f"bpw {bpw:.2f}", bits_override=bpw)
    mix = get_mix(quant or "Q4_K_M")
    listing = [(n, (r, c)) for n, r, c in shape.weight_tensors()]
    types = choose_types(listing, mix, shape.n_head, shape.n_head_kv, False)
    return ModelSpec(shape, {n: t for n, t in types.items() if t is not None}, mix.name)


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def _from_gguf(path: Path) -> tuple[Shape, dict[str, GGMLType]]:
    """The shape the engine would run (metadata validated as for `run`) and each tensor's stored type; the
    matrices a fused tensor holds (Phi-3's attn_qkv, ffn_up) take its type."""
    from ..formats.gguf import GGUFFile
    from ..model.config import fused_views
    from ..model.registry import gguf_config

    g = GGUFFile(path)
    c = gguf_config(g)
    first_global = next((i for i, swa in enumerate(c.swa_layers) if not swa), None)  # None: every layer local
    shape = Shape(
        name=str(g.metadata.get("general.name") or path.stem),
        n_layer=c.n_layers,
        d_model=c.n_embd,
        n_head=c.n_head,
        n_head_kv=c.n_head_kv,
        head_dim=c.head_dim,
        d_ff=c.n_ff,  # one expert's width for a mixture of experts
        vocab=c.n_vocab,
        tied="output.weight" not in g.tensors,
        n_expert=c.n_expert,
        n_expert_used=c.n_expert_used,
        window=c.sliding_window if any(c.swa_layers) else 0,
        window_pattern=first_global + 1 if any(c.swa_layers) and first_global is not None else 0,
    )
    types = {n: GGMLType(int(t.type)) for n, t in g.tensors.items()}
    for i in range(c.n_layers):
        types |= {name: types[source] for name, (source, _, _) in fused_views(c, i).items()}
    return shape, types


def _from_config(path: Path) -> Shape:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model

    def need(k: str):
        if cfg.get(k) is None:
            raise ConfigError(f"{path}: missing field '{k}'")
        try:
            return int(cfg[k])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: field '{k}' must be an integer, got {cfg[k]!r}") from None

    try:
        return _shape_from_config(cfg, path, need)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: a shape field is not a number ({e})") from None


def _shape_from_config(cfg: dict, path: Path, need) -> Shape:
    n_head = need("num_attention_heads")
    d_model = need("hidden_size")
    n_expert = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    d_ff = int(cfg.get("moe_intermediate_size") or 0) if n_expert else 0
    return Shape(
        name=str(cfg.get("_name_or_path") or path.parent.name),
        n_layer=need("num_hidden_layers"),
        d_model=d_model,
        n_head=n_head,
        n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(cfg.get("head_dim") or d_model // n_head),
        d_ff=d_ff or need("intermediate_size"),
        vocab=need("vocab_size"),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        n_expert=n_expert,
        n_expert_used=int(cfg.get("num_experts_per_tok") or 0),
        window=int(cfg.get("sliding_window") or 0) if cfg.get("sliding_window_pattern") or "gemma3" in str(cfg.get("model_type")) else 0,
        window_pattern=int(cfg.get("sliding_window_pattern") or (6 if "gemma3" in str(cfg.get("model_type")) else 0)),
    )
