"""A Hugging Face model directory (config.json, *.safetensors, tokenizer.json) as a quantization source.

Tensors are renamed to GGUF's names and rearranged the way llama.cpp's converter does it (Llama's Q/K rows
permuted so RoPE rotates adjacent pairs; Gemma's +1 folded into its norm weights), and the byte-level BPE
tokenizer is written as GGUF tokenizer metadata, so the output runs in edgellm and llama.cpp alike.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..formats.gguf import GGUFValueType
from ..formats.quants import GGMLType
from .source import read_json

ARCHS = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3", "gemma3_text": "gemma3"}
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# the norm after attention is the FFN's input norm in Llama/Qwen2, a post-norm in Gemma 3
LLAMA_NORMS = {"post_attention_layernorm": "ffn_norm"}
GEMMA_NORMS = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
# pre-tokenizer regex names (tokenizer.ggml.pre) llama.cpp uses for these families
PRE = {"llama": "llama-bpe", "qwen2": "qwen2"}

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
        self._files = sorted(path.glob("*.safetensors"))
        if not self._files:
            raise FormatError(f"{path}: no *.safetensors files")
        self._index: dict[str, tuple[Path, str, tuple[int, ...], int]] = {}  # hf name -> (file, dtype, shape, offset)
        for f in self._files:
            self._read_header(f)
        self._names = self._map_names()

    def _int(self, key: str) -> int:
        if key not in self.config:
            raise FormatError(f"{self.path / 'config.json'}: field '{key}' is missing")
        return int(self.config[key])

    def _read_header(self, file: Path) -> None:
        """safetensors layout: u64 header length, a JSON header of name -> {dtype, shape, data_offsets}, data."""
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{file}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise FormatError(f"{file}: header of {n} bytes is not plausible (not a safetensors file?)")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FormatError(f"{file}: header is not valid JSON (not a safetensors file?)") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise UnsupportedError(f"{file}: tensor '{name}' has dtype {info['dtype']}; supported: F32, F16, BF16")
            self._index[name] = (file, info["dtype"], tuple(info["shape"]), 8 + n + info["data_offsets"][0])

    def _map_names(self) -> dict[str, str]:
        """GGUF name -> HF name, in GGUF's order (embedding, layers, output)."""
        norms = GEMMA_NORMS if self.arch == "gemma3" else LLAMA_NORMS
        out = {"token_embd.weight": "model.embed_tokens.weight"}
        for i in range(self.n_layers):
            for hf, gg in (LAYER_NAMES | norms).items():
                for kind in ("weight", "bias"):
                    name = f"model.layers.{i}.{hf}.{kind}"
                    if name in self._index:
                        out[f"blk.{i}.{gg}.{kind}"] = name
        out["output_norm.weight"] = "model.norm.weight"
        if "lm_head.weight" in self._index and not self.config.get("tie_word_embeddings", False):
            out["output.weight"] = "lm_head.weight"
        missing = [hf for hf in out.values() if hf not in self._index]
        if missing:
            raise FormatError(f"{self.path}: tensor '{missing[0]}' is missing from the safetensors files")
        return out

    # -- Source surface ------------------------------------------------------------------------------
    def tensors(self):
        for gg, hf in self._names.items():
            _, dtype, shape, _ = self._index[hf]
            # vectors are converted (Gemma's +1) and written as F32; matrices are quantized from their dtype
            yield gg, shape, GGMLType.F32 if len(shape) == 1 else GGMLType[dtype]

    def weights(self, name: str) -> np.ndarray:
        hf = self._names[name]
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
        w = w.reshape(shape)
        if self.arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self.n_head if "attn_q" in name else self.n_head_kv
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if self.arch == "gemma3" and name.endswith("norm.weight"):
            w = w + np.float32(1.0)
        return w

    def raw(self, name: str) -> np.ndarray:
        return self.weights(name)

    def metadata(self) -> tuple[dict[str, Any], dict]:
        c, a = self.config, self.arch
        head_dim = int(c.get("head_dim") or c["hidden_size"] // self.n_head)
        meta: dict[str, Any] = {
            "general.architecture": a,
            "general.type": "model",
            "general.name": self.path.name,
            f"{a}.block_count": self.n_layers,
            f"{a}.context_length": int(c.get("max_position_embeddings", 2048)),
            f"{a}.embedding_length": self._int("hidden_size"),
            f"{a}.feed_forward_length": self._int("intermediate_size"),
            f"{a}.attention.head_count": self.n_head,
            f"{a}.attention.head_count_kv": self.n_head_kv,
            f"{a}.attention.key_length": head_dim,
            f"{a}.attention.value_length": head_dim,
            f"{a}.rope.freq_base": float(c.get("rope_theta", 10000.0)),
            f"{a}.attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", 1e-6)),
        }
        if a == "llama":
            meta[f"{a}.rope.dimension_count"] = head_dim
            meta[f"{a}.vocab_size"] = self._index["model.embed_tokens.weight"][2][0]
        if a == "gemma3" and c.get("sliding_window"):
            meta[f"{a}.attention.sliding_window"] = int(c["sliding_window"])
        types = {k: (U32, None) for k, v in meta.items() if isinstance(v, int)}
        types |= {k: (F32, None) for k, v in meta.items() if isinstance(v, float)}
        tok, tok_types = self._tokenizer()
        return meta | tok, types | tok_types

    def _tokenizer(self) -> tuple[dict[str, Any], dict]:
        """tokenizer.json (byte-level BPE) -> tokenizer.ggml.* keys."""
        data = read_json(self.path / "tokenizer.json")
        model = data.get("model", {})
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise UnsupportedError(
                f"{self.path / 'tokenizer.json'}: only byte-level BPE tokenizers are converted (found {model.get('type')})"
            )
        vocab: dict[str, int] = dict(model["vocab"])
        special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        vocab |= special
        n_vocab = max(self._index["model.embed_tokens.weight"][2][0], max(vocab.values()) + 1)
        tokens = [f"[PAD{i}]" for i in range(n_vocab)]
        types = np.full(n_vocab, 5, dtype=np.int32)  # unused slots
        for text, i in vocab.items():
            tokens[i] = text
            types[i] = 3 if text in special and any(t["id"] == i and t.get("special") for t in data["added_tokens"]) else 1
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        cfg = read_json(self.path / "tokenizer_config.json") if (self.path / "tokenizer_config.json").exists() else {}
        meta: dict[str, Any] = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": PRE.get(self.arch, "default"),
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges,
        }
        for key, field in (("bos", "bos_token"), ("eos", "eos_token")):
            value = cfg.get(field)
            text = value.get("content") if isinstance(value, dict) else value
            if text in vocab:
                meta[f"tokenizer.ggml.{key}_token_id"] = vocab[text]
        meta["tokenizer.ggml.add_bos_token"] = bool(cfg.get("add_bos_token", False))
        if isinstance(cfg.get("chat_template"), str):
            meta["tokenizer.chat_template"] = cfg["chat_template"]
        types_ = {
            "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, STR),
            "tokenizer.ggml.merges": (GGUFValueType.ARRAY, STR),
            "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, GGUFValueType.INT32),
            "tokenizer.ggml.add_bos_token": (BOOL, None),
        }
        types_ |= {k: (U32, None) for k in meta if k.endswith("_token_id")}
        return meta, types_
