"""A Hugging Face model directory (config.json, *.safetensors, tokenizer.json) as a quantization source.

Tensors are renamed to GGUF's names and rearranged the way llama.cpp's converter (convert_hf_to_gguf.py) does
it: Llama's and SmolLM3's Q/K rows permuted so RoPE rotates adjacent pairs, Gemma's +1 folded into its norm
weights, Qwen3-MoE's experts stacked into one tensor per matrix, Llama 3's RoPE scaling written as
`rope_freqs.weight` and LongRoPE's factors as `rope_factors_long/short.weight`. The tokenizer is written as
GGUF tokenizer metadata: byte-level BPE as `gpt2` with its pre-tokenizer name, SentencePiece-style vocabularies
(BPE with byte fallback over "▁"-marked pieces, as Gemma's and Phi-3's) as `llama` with scores from the merge
order. The output runs in edgellm and llama.cpp alike.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..formats import names
from ..formats.gguf import GGUFValueType
from ..formats.quants import GGMLType
from .source import read_json

# HF model_type -> GGUF architecture
ARCHS = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
    "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3", "smollm3": "smollm3",
}  # fmt: skip
PERMUTED_QK = {"llama", "smollm3"}  # rotate adjacent pairs in GGUF: llama.cpp's converter permutes their Q/K rows
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",  # Phi-3: gate rows, then up rows
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",  # MoE router
}
EXPERT_NAMES = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
# the norm after attention is the FFN's input norm in Llama/Qwen/Phi, a post-norm in Gemma 3
LLAMA_NORMS = {"post_attention_layernorm": "ffn_norm"}
GEMMA_NORMS = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
# pre-tokenizer regex names (tokenizer.ggml.pre) llama.cpp uses for these families' byte-level vocabularies
PRE = {"llama": "llama-bpe", "smollm3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "qwen3moe": "qwen2",
       "phi3": "gpt-4o"}  # fmt: skip
# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6

U32, F32, STR, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.BOOL


class HFSource:
    def __init__(self, path: Path):
        self.path = path
        config = read_json(path / "config.json")
        self.config = config.get("text_config", config) if config.get("model_type") == "gemma3" else config
        model_type = self.config.get("model_type", config.get("model_type"))
        self.arch = ARCHS.get(model_type)
        if self.arch is None:
            raise UnsupportedError(
                f"{path / 'config.json'}: model_type '{model_type}' is not supported; supported: {', '.join(ARCHS)}"
            )
        self.n_head = self._int("num_attention_heads")
        self.n_head_kv = int(self.config.get("num_key_value_heads", self.n_head))
        self.n_layers = self._int("num_hidden_layers")
        self.n_expert = int(self.config.get("num_experts", 0)) if self.arch == "qwen3moe" else 0
        self.head_dim = int(self.config.get("head_dim") or self._int("hidden_size") // self.n_head)
        self._files = sorted(path.glob("*.safetensors"))
        if not self._files:
            raise FormatError(f"{path}: no *.safetensors files")
        self._index: dict[str, tuple[Path, str, tuple[int, ...], int]] = {}  # hf name -> (file, dtype, shape, offset)
        for f in self._files:
            self._read_header(f)
        self._extra = self._rope_tensors()  # GGUF name -> float32 values made from config.json
        self._names = self._map_names()

    def _int(self, key: str) -> int:
        if key not in self.config:
            raise FormatError(f"{self.path / 'config.json'}: field '{key}' is missing")
        return int(self.config[key])

    def _read_header(self, file: Path) -> None:
        """safetensors layout: u64 header length, a JSON header of name -> {dtype, shape, data_offsets}, data."""
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{file}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20 or 8 + n > size:
                raise FormatError(f"{file}: header of {n} bytes is not plausible (not a safetensors file?)")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise FormatError(f"{file}: header is not valid JSON (not a safetensors file?)") from None
        if not isinstance(header, dict):
            raise FormatError(f"{file}: header is a JSON {type(header).__name__}, expected an object of tensors")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin = _tensor_entry(file, name, info, size - 8 - n)
            self._index[name] = (file, dtype, shape, 8 + n + begin)

    def _map_names(self) -> dict[str, str | list[str]]:
        """GGUF name -> HF name (or the experts' names, stacked), in GGUF's order (embedding, layers, output)."""
        norms = GEMMA_NORMS if self.arch == "gemma3" else LLAMA_NORMS
        out: dict[str, str | list[str]] = {"token_embd.weight": "model.embed_tokens.weight"}
        for i in range(self.n_layers):
            for hf, gg in (LAYER_NAMES | norms).items():
                for kind in ("weight", "bias"):
                    name = f"model.layers.{i}.{hf}.{kind}"
                    if name in self._index:
                        out[f"blk.{i}.{gg}.{kind}"] = name
            for hf, gg in EXPERT_NAMES.items() if self.n_expert else ():
                out[f"blk.{i}.{gg}.weight"] = [f"model.layers.{i}.mlp.experts.{e}.{hf}.weight" for e in range(self.n_expert)]
        out["output_norm.weight"] = "model.norm.weight"
        if "lm_head.weight" in self._index and not self.config.get("tie_word_embeddings", False):
            out["output.weight"] = "lm_head.weight"
        wanted = [n for hf in out.values() for n in ([hf] if isinstance(hf, str) else hf)]
        missing = [hf for hf in wanted if hf not in self._index]
        if missing:
            raise FormatError(f"{self.path}: tensor '{missing[0]}' is missing from the safetensors files")
        return out

    # -- Source surface ------------------------------------------------------------------------------
    def tensors(self):
        for name, values in self._extra.items():
            yield name, values.shape, GGMLType.F32
        for gg, hf in self._names.items():
            _, dtype, shape, _ = self._index[hf if isinstance(hf, str) else hf[0]]
            if not isinstance(hf, str):
                shape = (len(hf), *shape)
            # vectors are converted (Gemma's +1) and written as F32; matrices are quantized from their dtype
            yield gg, shape, GGMLType.F32 if len(shape) == 1 else GGMLType[dtype]

    def _read(self, hf: str) -> np.ndarray:
        file, dtype, shape, offset = self._index[hf]
        count = int(np.prod(shape, dtype=np.int64))
        item = np.dtype(DTYPES[dtype]).newbyteorder("<")
        with open(file, "rb") as fh:
            fh.seek(offset)
            data = fh.read(count * item.itemsize)
        if len(data) != count * item.itemsize:
            raise FormatError(f"{file}: tensor '{hf}' runs past the end of the file (truncated download?)")
        raw = np.frombuffer(data, dtype=item)
        w = (raw.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else raw.astype(np.float32)
        return w.reshape(shape)

    def weights(self, name: str) -> np.ndarray:
        if name in self._extra:
            return self._extra[name]
        hf = self._names[name]
        w = self._read(hf) if isinstance(hf, str) else np.stack([self._read(e) for e in hf])
        if self.arch in PERMUTED_QK and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self.n_head if "attn_q" in name else self.n_head_kv
            if w.ndim != 2 or w.shape[0] % (2 * heads):
                raise FormatError(f"{self.path}: tensor '{hf}' has shape {w.shape}, expected a matrix whose rows "
                                  f"split into {heads} heads of an even width")  # fmt: skip
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if self.arch == "gemma3" and name.endswith("norm.weight"):
            w = w + np.float32(1.0)
        return w

    def raw(self, name: str) -> np.ndarray:
        return self.weights(name)

    # -- RoPE scaling --------------------------------------------------------------------------------
    def _rope_scaling(self) -> tuple[str | None, dict]:
        scaling = self.config.get("rope_scaling") or {}
        kind = scaling.get("rope_type") or scaling.get("type")
        return (None if kind in (None, "default") else str(kind)), scaling

    def _n_rot(self) -> int:
        return int(self.head_dim * float(self.config.get("partial_rotary_factor", 1.0)))

    def _rope_tensors(self) -> dict[str, np.ndarray]:
        """Llama 3's per-pair divisors (llama.cpp's converter: generate_extra_tensors) and LongRoPE's factors."""
        kind, s = self._rope_scaling()
        if kind == "llama3":
            base, n_rot = float(self.config.get("rope_theta", 10000.0)), self._n_rot()
            factor, low, high = float(s.get("factor", 8.0)), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
            orig = float(s.get("original_max_position_embeddings", 8192))
            freqs = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
            wavelen = 2 * math.pi / freqs
            smooth = (orig / wavelen - low) / (high - low)
            ramp = 1 / ((1 - smooth) / factor + smooth)
            divisors = np.where(wavelen < orig / high, 1.0, np.where(wavelen > orig / low, factor, ramp))
            return {names.ROPE_FREQS: divisors.astype(np.float32)}
        if kind in ("longrope", "su"):
            n = self._n_rot() // 2
            out = {}
            for key, name in (("long_factor", names.ROPE_FACTORS_LONG), ("short_factor", names.ROPE_FACTORS_SHORT)):
                values = np.asarray(s.get(key, []), dtype=np.float32)
                if values.shape != (n,):
                    raise FormatError(f"{self.path / 'config.json'}: rope_scaling.{key} must hold {n} values")
                out[name] = values
            return out
        return {}

    def _rope_metadata(self) -> dict[str, Any]:
        a = self.arch
        kind, s = self._rope_scaling()
        meta: dict[str, Any] = {}
        orig = s.get("original_max_position_embeddings", self.config.get("original_max_position_embeddings"))
        if kind in ("linear", "yarn"):
            meta[f"{a}.rope.scaling.type"] = kind
            meta[f"{a}.rope.scaling.factor"] = float(s["factor"])
            if kind == "yarn" and orig:
                meta[f"{a}.rope.scaling.original_context_length"] = int(orig)
        elif kind in ("longrope", "su"):
            orig = int(orig or self.config.get("max_position_embeddings", 4096))
            scale = int(self.config.get("max_position_embeddings", orig)) / orig
            meta[f"{a}.rope.scaling.original_context_length"] = orig
            meta[f"{a}.rope.scaling.attn_factor"] = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0
        elif kind not in (None, "llama3"):
            raise UnsupportedError(f"{self.path / 'config.json'}: rope_scaling type '{kind}' is not supported")
        return meta

    # -- metadata ------------------------------------------------------------------------------------
    def metadata(self) -> tuple[dict[str, Any], dict]:
        c, a = self.config, self.arch
        meta: dict[str, Any] = {
            "general.architecture": a,
            "general.type": "model",
            "general.name": self.path.name,
            f"{a}.block_count": self.n_layers,
            f"{a}.context_length": int(c.get("max_position_embeddings", 2048)),
            f"{a}.embedding_length": self._int("hidden_size"),
            f"{a}.attention.head_count": self.n_head,
            f"{a}.attention.head_count_kv": self.n_head_kv,
            f"{a}.attention.key_length": self.head_dim,
            f"{a}.attention.value_length": self.head_dim,
            f"{a}.rope.freq_base": float(c.get("rope_theta", 10000.0)),
            f"{a}.rope.dimension_count": self._n_rot(),
            f"{a}.attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", 1e-6)),
        }
        if self.n_expert:
            meta[f"{a}.expert_count"] = self.n_expert
            meta[f"{a}.expert_used_count"] = self._int("num_experts_per_tok")
            meta[f"{a}.expert_feed_forward_length"] = self._int("moe_intermediate_size")
        else:
            meta[f"{a}.feed_forward_length"] = self._int("intermediate_size")
        if a == "llama":
            meta[f"{a}.vocab_size"] = self._index["model.embed_tokens.weight"][2][0]
        if a == "gemma3":
            if c.get("sliding_window"):
                meta[f"{a}.attention.sliding_window"] = int(c["sliding_window"])
            if c.get("rope_local_base_freq"):
                meta[f"{a}.rope.freq_base_swa"] = float(c["rope_local_base_freq"])
            if c.get("final_logit_softcapping"):
                meta[f"{a}.final_logit_softcapping"] = float(c["final_logit_softcapping"])
        meta |= self._rope_metadata()
        types = {k: (U32, None) for k, v in meta.items() if isinstance(v, int)}
        types |= {k: (F32, None) for k, v in meta.items() if isinstance(v, float)}
        tok, tok_types = self._tokenizer()
        return meta | tok, types | tok_types

    def _tokenizer(self) -> tuple[dict[str, Any], dict]:
        """tokenizer.json -> tokenizer.ggml.* keys: byte-level BPE as `gpt2`, SentencePiece-style as `llama`."""
        data = read_json(self.path / "tokenizer.json")
        model = data.get("model", {})
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise UnsupportedError(
                f"{self.path / 'tokenizer.json'}: only BPE tokenizers are converted (found {model.get('type')})"
            )
        vocab: dict[str, int] = dict(model["vocab"])
        added = data.get("added_tokens", [])
        special = {t["content"]: t["id"] for t in added}
        control = {t["id"] for t in added if t.get("special")}
        vocab |= special
        n_vocab = max(self._index["model.embed_tokens.weight"][2][0], max(vocab.values()) + 1)
        tokens = [f"[PAD{i}]" for i in range(n_vocab)]
        types = np.full(n_vocab, UNUSED, dtype=np.int32)
        for text, i in vocab.items():
            tokens[i] = text
            types[i] = CONTROL if i in control else NORMAL
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        meta: dict[str, Any] = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
        if model.get("byte_fallback"):  # SentencePiece-style: scores from the merge order, byte tokens typed
            scores = np.zeros(n_vocab, dtype=np.float32)
            for rank, merge in reversed(list(enumerate(merges))):
                merged = vocab.get(merge.replace(" ", ""))
                if merged is not None:
                    scores[merged] = -float(rank)
            for text, i in vocab.items():
                if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                    types[i] = BYTE
            if isinstance(model.get("unk_token"), str) and model["unk_token"] in vocab:
                types[vocab[model["unk_token"]]] = UNKNOWN
                meta["tokenizer.ggml.unknown_token_id"] = vocab[model["unk_token"]]
            normalizers = json.dumps(data.get("normalizer") or {})
            meta |= {
                "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.scores": scores,
                "tokenizer.ggml.add_space_prefix": '"Prepend"' in normalizers,
            }
        else:
            meta |= {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": PRE.get(self.arch, "default"),
                "tokenizer.ggml.merges": merges,
            }
        cfg = read_json(self.path / "tokenizer_config.json") if (self.path / "tokenizer_config.json").exists() else {}
        for key, field in (("bos", "bos_token"), ("eos", "eos_token")):
            value = cfg.get(field)
            text = value.get("content") if isinstance(value, dict) else value
            if text in vocab:
                meta[f"tokenizer.ggml.{key}_token_id"] = vocab[text]
        meta["tokenizer.ggml.add_bos_token"] = bool(cfg.get("add_bos_token", meta["tokenizer.ggml.model"] == "llama"))
        if isinstance(cfg.get("chat_template"), str):
            meta["tokenizer.chat_template"] = cfg["chat_template"]
        types_ = {
            "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, STR),
            "tokenizer.ggml.merges": (GGUFValueType.ARRAY, STR),
            "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, GGUFValueType.INT32),
            "tokenizer.ggml.scores": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
            "tokenizer.ggml.add_bos_token": (BOOL, None),
            "tokenizer.ggml.add_space_prefix": (BOOL, None),
        }
        types_ = {k: v for k, v in types_.items() if k in meta}
        types_ |= {k: (U32, None) for k in meta if k.endswith("_token_id")}
        return meta, types_


def _tensor_entry(file: Path, name: str, info: Any, data_size: int) -> tuple[str, tuple[int, ...], int]:
    """One header entry checked against the data section: (dtype, shape, start offset in the data)."""

    def fail(what: str) -> FormatError:
        return FormatError(f"{file}: tensor '{name}' {what} (corrupt safetensors header)")

    if not isinstance(info, dict):
        raise fail(f"is described by a JSON {type(info).__name__}, expected an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UnsupportedError(f"{file}: tensor '{name}' has dtype {dtype!r:.40}; supported: F32, F16, BF16")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise fail(f"has shape {shape!r:.60}, expected a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):  # fmt: skip
        raise fail(f"has data_offsets {offsets!r:.60}, expected [begin, end] within the {data_size} bytes of data")
    n_bytes = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != n_bytes:
        raise fail(f"spans {offsets[1] - offsets[0]} bytes, but {dtype} {tuple(shape)} needs {n_bytes}")
    return dtype, tuple(shape), offsets[0]
