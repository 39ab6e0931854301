"""GGUF files as editable documents: the fuzzer mutates keys, value types, tensor infos and data, then packs the
document into bytes itself (edgellm's writer refuses the inconsistent files a fuzzer wants), recording where each
count, length, type and offset field lands so byte-level mutations can aim at them.

Also the seeds: tiny valid models of every supported architecture, small enough to load and decode in
milliseconds, with byte-level BPE and SentencePiece vocabularies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from gguf import GGUFValueType as VT

from ..formats import names
from ..formats.quants import FORMATS, GGMLType

ALIGNMENT = 32
_SCALAR_CODES = {
    VT.UINT8: "B",
    VT.INT8: "b",
    VT.UINT16: "H",
    VT.INT16: "h",
    VT.UINT32: "I",
    VT.INT32: "i",
    VT.FLOAT32: "f",
    VT.BOOL: "B",
    VT.UINT64: "Q",
    VT.INT64: "q",
    VT.FLOAT64: "d",
}
INT_TYPES = (VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64)
FLOAT_TYPES = (VT.FLOAT32, VT.FLOAT64)


@dataclass
class KV:
    key: str | bytes
    vtype: int  # a GGUFValueType, or any u32 once mutated
    value: Any  # scalars as numbers, strings as str or bytes, arrays as (item_type, list of values)
    declared_count: int | None = None  # an array's length field when it lies


@dataclass
class TensorEntry:
    name: str | bytes
    dims: list[int]  # ggml order: dims[0] is the row length
    type: int
    offset: int  # relative to the data section


@dataclass
class GGUFDoc:
    kvs: list[KV]
    tensors: list[TensorEntry]
    data: bytes
    version: int = 3
    declared_kv_count: int | None = None
    declared_tensor_count: int | None = None
    fields: list[tuple[int, int]] = field(default_factory=list)  # (offset, width) of the last pack's numeric fields

    def copy(self) -> GGUFDoc:
        return replace(self, kvs=list(self.kvs), tensors=list(self.tensors), fields=[])

    def get(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def pack(self) -> bytes:
        """The file's bytes; records `fields` as it goes."""
        out = bytearray(b"GGUF")
        self.fields = []

        def num(code: str, value: Any) -> None:
            self.fields.append((len(out), struct.calcsize("<" + code)))
            out.extend(_pack_number(code, value))

        num("I", self.version)
        num("Q", len(self.tensors) if self.declared_tensor_count is None else self.declared_tensor_count)
        num("Q", len(self.kvs) if self.declared_kv_count is None else self.declared_kv_count)

        def string(s: str | bytes) -> None:
            raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
            num("Q", len(raw))
            out.extend(raw)

        def value(vtype: int, v: Any, declared: int | None = None) -> None:
            if vtype in _SCALAR_CODES:
                num(_SCALAR_CODES[VT(vtype)], v)
            elif vtype == VT.STRING:
                string(v if isinstance(v, (str, bytes)) else str(v))
            elif vtype == VT.ARRAY:
                item_type, items = v if isinstance(v, tuple) else (VT.UINT32, [])
                num("I", item_type)
                num("Q", len(items) if declared is None else declared)
                if item_type in _SCALAR_CODES:  # items are not aimed at: only the length and type fields
                    code = _SCALAR_CODES[VT(item_type)]
                    out.extend(b"".join(_pack_number(code, item) for item in items))
                else:
                    for item in items:
                        value(item_type, item)
            else:  # an unknown type: some bytes follow, as a corrupt file would have
                out.extend(_pack_number("I", v if isinstance(v, int) else 0))

        for kv in self.kvs:
            string(kv.key)
            num("I", kv.vtype)
            value(kv.vtype, kv.value, kv.declared_count)
        for t in self.tensors:
            string(t.name)
            num("I", len(t.dims))
            for d in t.dims:
                num("Q", d)
            num("I", t.type)
            num("Q", t.offset)
        alignment = self.alignment()
        out.extend(b"\0" * (-len(out) % alignment))
        out.extend(self.data)
        return bytes(out)

    def alignment(self) -> int:
        kv = self.get("general.alignment")
        ok = kv is not None and isinstance(kv.value, int) and 0 < kv.value <= 1 << 16 and not kv.value & (kv.value - 1)
        return kv.value if ok else ALIGNMENT


def _pack_number(code: str, value: Any) -> bytes:
    """Any number into a field of `code`'s width: integers wrap, floats that do not fit become the field's bits."""
    code = "<" + code
    if code[-1] in "fd":
        try:
            return struct.pack(code, float(value))
        except (OverflowError, ValueError, TypeError):
            return struct.pack(code, float("inf"))
    bits = struct.calcsize(code) * 8
    try:
        n = int(value)
    except (OverflowError, ValueError, TypeError):
        n = -1
    return (n % (1 << bits)).to_bytes(bits // 8, "little")


# -- seeds -----------------------------------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bpe_vocab(pre: str = "smollm") -> list[KV]:
    """A byte-level BPE (tokenizer.ggml.model gpt2) vocabulary: every byte, a few merges, ChatML specials."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<tool_call>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "1 2", "' s"]
    tokens = specials + _byte_level_alphabet() + [m.replace(" ", "") for m in merges]
    types = [3, 3, 3, 3, 4] + [1] * (len(tokens) - len(specials))
    return [
        KV("tokenizer.ggml.model", VT.STRING, "gpt2"),
        KV("tokenizer.ggml.pre", VT.STRING, pre),
        KV("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, tokens)),
        KV("tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, types)),
        KV("tokenizer.ggml.merges", VT.ARRAY, (VT.STRING, merges)),
        KV("tokenizer.ggml.bos_token_id", VT.UINT32, 1),
        KV("tokenizer.ggml.eos_token_id", VT.UINT32, 2),
        KV("tokenizer.ggml.add_bos_token", VT.BOOL, False),
        KV("tokenizer.chat_template", VT.STRING, CHATML),
    ]


def spm_vocab(*, byte_tokens: bool = True, space_prefix: bool = False) -> list[KV]:
    """A SentencePiece (tokenizer.ggml.model llama) vocabulary with byte fallback and Gemma's turn tokens."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)] if byte_tokens else []
    pieces = ["▁", "▁t", "h", "e", "▁the", "a", "n", "▁a", "in", "er", "s", "t", "o", "▁s", "▁▁", "é", "日本"]
    tokens = specials + bytes_ + pieces
    types = [3, 3, 3, 2, 3, 3] + [6] * len(bytes_) + [1] * len(pieces)
    scores = [0.0] * (len(specials) + len(bytes_)) + [-float(i) for i in range(len(pieces))]
    return [
        KV("tokenizer.ggml.model", VT.STRING, "llama"),
        KV("tokenizer.ggml.pre", VT.STRING, "default"),
        KV("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, tokens)),
        KV("tokenizer.ggml.scores", VT.ARRAY, (VT.FLOAT32, scores)),
        KV("tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, types)),
        KV("tokenizer.ggml.bos_token_id", VT.UINT32, 2),
        KV("tokenizer.ggml.eos_token_id", VT.UINT32, 1),
        KV("tokenizer.ggml.unknown_token_id", VT.UINT32, 3),
        KV("tokenizer.ggml.padding_token_id", VT.UINT32, 0),
        KV("tokenizer.ggml.add_bos_token", VT.BOOL, True),
        KV("tokenizer.ggml.add_space_prefix", VT.BOOL, space_prefix),
    ]


def vocab_size(kvs: list[KV]) -> int:
    return len(next(kv for kv in kvs if kv.key == "tokenizer.ggml.tokens").value[1])


def _packed(rng: np.random.Generator, shape: tuple[int, ...], ttype: GGMLType, std: float) -> bytes:
    values = (rng.standard_normal(shape) * std).astype(np.float32)
    fmt = FORMATS[ttype]
    if fmt.can_quantize:
        return fmt.quantize(values.reshape(-1)).tobytes()
    from ..quant.quantize import quantize_tensor

    return quantize_tensor(values.reshape(-1, shape[-1]), ttype, threads=1).tobytes()


ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3")
_BLOCK32 = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32)


def tiny_model(
    arch: str,
    *,
    n_layers: int = 1,
    n_embd: int = 32,
    n_ff: int = 32,
    n_head: int = 2,
    n_head_kv: int = 1,
    kinds: tuple[GGMLType, ...] = _BLOCK32,
    tied: bool = True,
    extra: list[KV] = (),
    seed: int = 0,
) -> GGUFDoc:
    """A valid random `arch` model as a document (the shapes tests/fixtures/tiny.py writes, made smaller)."""
    rng = np.random.default_rng(seed)
    vocab = spm_vocab() if arch in ("gemma3", "phi3") else bpe_vocab()
    n_vocab = vocab_size(vocab)
    head_dim = n_embd // n_head if arch != "gemma3" else 16
    a = lambda key: f"{arch}.{key}"
    kvs = [
        KV("general.architecture", VT.STRING, arch),
        KV("general.name", VT.STRING, "fuzz seed"),
        KV(a("block_count"), VT.UINT32, n_layers),
        KV(a("context_length"), VT.UINT32, 64),
        KV(a("embedding_length"), VT.UINT32, n_embd),
        KV(a("feed_forward_length"), VT.UINT32, n_ff),
        KV(a("attention.head_count"), VT.UINT32, n_head),
        KV(a("attention.head_count_kv"), VT.UINT32, n_head_kv),
        KV(a("attention.layer_norm_rms_epsilon"), VT.FLOAT32, 1e-6),
        KV(a("rope.freq_base"), VT.FLOAT32, 10000.0),
    ]
    if arch == "gemma3":
        kvs += [
            KV(a("attention.key_length"), VT.UINT32, head_dim),
            KV(a("attention.value_length"), VT.UINT32, head_dim),
            KV(a("attention.sliding_window"), VT.UINT32, 4),
        ]
    n_expert = 4
    if arch == "qwen3moe":
        kvs = [kv for kv in kvs if kv.key != a("feed_forward_length")]
        kvs += [
            KV(a("expert_count"), VT.UINT32, n_expert),
            KV(a("expert_used_count"), VT.UINT32, 2),
            KV(a("expert_feed_forward_length"), VT.UINT32, n_ff),
        ]
    kvs += vocab + list(extra)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    tensors: list[tuple[str, tuple[int, ...], GGMLType, float]] = [
        (names.TOKEN_EMBD, (n_vocab, n_embd), GGMLType.Q8_0, 1.0),
        (names.OUTPUT_NORM, (n_embd,), GGMLType.F32, 0.1),
    ]
    if not tied:
        tensors.append((names.OUTPUT, (n_vocab, n_embd), kinds[0], n_embd**-0.5))
    for i in range(n_layers):
        mats = {
            names.ATTN_Q: (q_dim, n_embd),
            names.ATTN_K: (kv_dim, n_embd),
            names.ATTN_V: (kv_dim, n_embd),
            names.ATTN_OUT: (n_embd, q_dim),
            names.FFN_GATE: (n_ff, n_embd),
            names.FFN_UP: (n_ff, n_embd),
            names.FFN_DOWN: (n_embd, n_ff),
        }
        if arch == "qwen3moe":
            for template in (names.FFN_GATE, names.FFN_UP, names.FFN_DOWN):
                del mats[template]
            mats |= {
                names.FFN_GATE_EXPS: (n_expert, n_ff, n_embd),
                names.FFN_UP_EXPS: (n_expert, n_ff, n_embd),
                names.FFN_DOWN_EXPS: (n_expert, n_embd, n_ff),
            }
            tensors.append((names.FFN_GATE_INP.format(i=i), (n_expert, n_embd), GGMLType.F32, n_embd**-0.5))
        if arch == "phi3":
            for template in (names.ATTN_Q, names.ATTN_K, names.ATTN_V, names.FFN_GATE, names.FFN_UP):
                del mats[template]
            mats = {names.ATTN_QKV: (q_dim + 2 * kv_dim, n_embd), names.FFN_UP: (2 * n_ff, n_embd)} | mats
        for j, (template, shape) in enumerate(mats.items()):
            tensors.append((template.format(i=i), shape, kinds[(i + j) % len(kinds)], shape[-1] ** -0.5))
        norms = [names.ATTN_NORM, names.FFN_NORM] + (
            [names.ATTN_POST_NORM, names.FFN_POST_NORM] if arch == "gemma3" else []
        )
        tensors += [(template.format(i=i), (n_embd,), GGMLType.F32, 0.1) for template in norms]
        if arch in ("gemma3", "qwen3", "qwen3moe"):
            tensors += [(t.format(i=i), (head_dim,), GGMLType.F32, 0.1) for t in (names.ATTN_Q_NORM, names.ATTN_K_NORM)]
        if arch == "qwen2":
            tensors += [
                (t.format(i=i), (n,), GGMLType.F32, 0.1)
                for t, n in ((names.ATTN_Q_BIAS, q_dim), (names.ATTN_K_BIAS, kv_dim), (names.ATTN_V_BIAS, kv_dim))
            ]

    entries, data = [], bytearray()
    for name, shape, ttype, std in tensors:
        blob = _packed(rng, shape, ttype, std)
        if len(shape) == 1 and ttype == GGMLType.F32:  # norms near one, as trained models have them
            blob = (1 + np.frombuffer(blob, np.float32)).astype(np.float32).tobytes()
        entries.append(TensorEntry(name, list(reversed(shape)), int(ttype), len(data)))
        data += blob + b"\0" * (-len(blob) % ALIGNMENT)
    return GGUFDoc(kvs, entries, bytes(data))


def model_seeds() -> list[GGUFDoc]:
    """One tiny model per architecture, plus variants that reach other paths: an untied head, two layers,
    k-quant rows (256 wide), Llama 3 RoPE factors, YaRN and LongRoPE scaling, a per-layer window pattern."""
    seeds = [tiny_model(arch, seed=i) for i, arch in enumerate(ARCHS)]
    seeds.append(tiny_model("llama", n_layers=2, tied=False, seed=10))
    seeds.append(
        tiny_model(
            "llama",
            n_embd=256,
            n_ff=256,
            n_head=4,
            n_head_kv=2,
            seed=11,
            kinds=(GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_K, GGMLType.Q3_K, GGMLType.Q2_K),
        )
    )
    yarn = [
        KV("qwen3.rope.scaling.type", VT.STRING, "yarn"),
        KV("qwen3.rope.scaling.factor", VT.FLOAT32, 4.0),
        KV("qwen3.rope.scaling.original_context_length", VT.UINT32, 32),
    ]
    seeds.append(tiny_model("qwen3", extra=yarn, seed=12))
    longrope = [
        KV("phi3.rope.scaling.attn_factor", VT.FLOAT32, 1.19),
        KV("phi3.rope.scaling.original_context_length", VT.UINT32, 16),
    ]
    doc = tiny_model("phi3", extra=longrope, seed=13)
    _add_f32_tensor(doc, names.ROPE_FACTORS_LONG, np.linspace(1, 4, 8, dtype=np.float32))
    _add_f32_tensor(doc, names.ROPE_FACTORS_SHORT, np.ones(8, dtype=np.float32))
    seeds.append(doc)
    doc = tiny_model("llama", seed=14)
    _add_f32_tensor(doc, names.ROPE_FREQS, np.linspace(1, 8, 8, dtype=np.float32))
    seeds.append(doc)
    pattern = [KV("gemma3.attention.sliding_window_pattern", VT.ARRAY, (VT.BOOL, [True, False]))]
    seeds.append(tiny_model("gemma3", n_layers=2, extra=pattern, seed=15))
    return seeds


def _add_f32_tensor(doc: GGUFDoc, name: str, values: np.ndarray) -> None:
    blob = values.astype("<f4").tobytes()
    doc.tensors.append(TensorEntry(name, [len(values)], int(GGMLType.F32), len(doc.data)))
    doc.data += blob + b"\0" * (-len(blob) % ALIGNMENT)
