"""The fuzz targets: what each one feeds edgellm, how its inputs are mutated, and what counts as handled.

Each target builds its seeds in code, turns a seed (or a corpus file) into a mutated input in the parent
(`generator`), and runs one input in the child (`run`). An input is handled when `run` returns or raises one of
edgellm's errors; anything else is a failure for the runner to judge.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import random
import signal
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType as VT

from ..errors import EdgeLLMError
from ..formats import names
from ..formats.quants import GGMLType
from . import gguf_doc
from .gguf_doc import KV, GGUFDoc, TensorEntry
from .mutate import (
    INTERESTING_INTS,
    interesting_float,
    interesting_int,
    join_parts,
    mutate_bytes,
    pick,
    split_parts,
)


class InvariantError(AssertionError):
    """edgellm returned something impossible (a token id outside the vocabulary, an over-long prompt)."""


class Target:
    name = ""
    max_size = 1 << 20

    def seeds(self) -> list[bytes]:
        raise NotImplementedError

    def generator(self, corpus: list[bytes]) -> Callable[[random.Random], bytes]:
        """A function of the rng that returns one new input."""
        pool = self.seeds() + corpus

        def generate(rng: random.Random) -> bytes:
            return mutate_bytes(rng, pick(rng, pool), max_size=self.max_size, donors=pool)

        return generate

    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"edgellm-fuzz-{self.name}-"))

    def run(self, data: bytes) -> None:
        raise NotImplementedError

    def write(self, data: bytes, name: str = "input.gguf") -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


# -- GGUF documents: the mutations shared by the reader and the model targets --------------------------------

_STRINGS = (
    "",
    "llama",
    "gpt2",
    "yarn",
    "longrope",
    "linear",
    "none",
    "qwen3moe",
    "gemma3",
    "x" * 4096,
    "\x00",
    "<|im_end|>",
    "é" * 64,
    "\ud800",
)
_KNOWN_SUFFIXES = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "rope.freq_base_swa",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "final_logit_softcapping",
)
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)
_TYPE_IDS = [int(t) for t in GGMLType] + [4, 5, 9, 15, 16, 29, 31, 39, 99, 103, 2**31, 2**32 - 1]


def _random_value(rng: random.Random, like: KV | None, n_layers: int) -> tuple[int, Any]:
    """A new (type, value) for a key: near its old value, of another type, or an array of per-layer values."""
    roll = rng.random()
    old = like.value if like is not None else None
    if roll < 0.35 and like is not None and like.vtype in gguf_doc.INT_TYPES + (VT.BOOL,):
        return like.vtype, interesting_int(rng, int(old))
    if roll < 0.5 and like is not None and like.vtype in gguf_doc.FLOAT_TYPES:
        return like.vtype, interesting_float(rng, float(old))
    if roll < 0.6:
        vtype = pick(rng, gguf_doc.INT_TYPES)
        return vtype, interesting_int(rng, int(old) if isinstance(old, int) else None)
    if roll < 0.7:
        return pick(rng, gguf_doc.FLOAT_TYPES), interesting_float(rng)
    if roll < 0.78:
        return VT.STRING, pick(rng, _STRINGS + (str(old)[:64],))
    if roll < 0.83:
        return VT.BOOL, rng.choice((0, 1, 2, 255))
    if roll < 0.95:  # per-layer arrays, empty arrays, arrays of the wrong type
        item = pick(rng, (VT.INT32, VT.UINT32, VT.FLOAT32, VT.BOOL, VT.STRING, VT.INT64))
        n = rng.choice((0, 1, n_layers, n_layers + 1, rng.randint(2, 64)))
        base = int(old) if isinstance(old, (int, float)) and math.isfinite(old) else 1
        if item == VT.STRING:
            items = [pick(rng, _STRINGS[:4]) for _ in range(n)]
        elif item == VT.FLOAT32:
            items = [interesting_float(rng, float(base)) for _ in range(n)]
        else:
            same = rng.random() < 0.5
            v = interesting_int(rng, base)
            items = [v if same else interesting_int(rng, base) for _ in range(n)]
        return VT.ARRAY, (item, items)
    return rng.choice((13, 99, 2**31, 2**32 - 1)), rng.randrange(1 << 32)  # unknown value types


def _mutate_tokenizer_kv(rng: random.Random, kv: KV) -> KV:
    """Edits a vocabulary can survive the header with: token lists, types, merges and scores changed in place."""
    item_type, items = kv.value if isinstance(kv.value, tuple) else (None, None)
    if items is None or not isinstance(items, list):
        vtype, value = _random_value(rng, kv, 4)
        return KV(kv.key, vtype, value)
    items = list(items)
    op = rng.randrange(6)
    if op == 0 and items:
        del items[rng.randrange(len(items)) :]
    elif op == 1:
        filler = items[rng.randrange(len(items))] if items else ""
        items += [filler] * rng.choice((1, 2, 100))
    elif op == 2 and items:
        i = rng.randrange(len(items))
        if item_type == VT.STRING:
            items[i] = pick(
                rng,
                (
                    "",
                    " ",
                    "Ġ",
                    "▁",
                    "a b c",
                    "<0xZZ>",
                    "<0x100>",
                    "<0x",
                    "\ud83d",
                    "x" * 2000,
                    items[rng.randrange(len(items))],
                    "<|im_end|>",
                    "<start_of_turn>",
                    "</s>",
                    "<|end|>",
                    "<|return|>",
                    "<|call|>",
                    "<|tool_response>",
                ),
            )
        elif item_type in gguf_doc.FLOAT_TYPES:
            items[i] = interesting_float(rng)
        else:
            items[i] = interesting_int(rng, 3)
    elif op == 3 and items:
        rng.shuffle(items)
    elif op == 4 and items and item_type != VT.STRING:
        items = [
            interesting_int(rng, 1) if item_type not in gguf_doc.FLOAT_TYPES else interesting_float(rng) for _ in items
        ]
    else:
        item_type = pick(rng, (VT.INT32, VT.FLOAT32, VT.STRING, VT.UINT8, VT.ARRAY))
        items = [] if item_type == VT.ARRAY else items[:16] if item_type == VT.STRING else [1] * len(items)
        if item_type == VT.STRING:
            items = [str(x) for x in items]
    return KV(kv.key, kv.vtype, (item_type, items))


def mutate_doc(rng: random.Random, doc: GGUFDoc, *, model_focus: bool, mild: bool = False) -> GGUFDoc:
    """1-4 structure-level edits of a copy of `doc`: a metadata value or type, a key added, removed or repeated,
    a count that lies, a tensor's dims, type, offset or name, the data section. `model_focus` favours the edits
    that still parse, so they reach the config and the engine; `mild` makes one edit that a loader can accept
    (a real number, the vocabulary, the weights), so the engine runs on it."""
    doc = doc.copy()
    if mild:
        floats = [i for i, kv in enumerate(doc.kvs) if kv.vtype in gguf_doc.FLOAT_TYPES]
        op = rng.randrange(3)
        if op == 0 and floats:
            i = pick(rng, floats)
            doc.kvs[i] = KV(doc.kvs[i].key, doc.kvs[i].vtype, interesting_float(rng, doc.kvs[i].value))
        elif op == 1:
            keys = [i for i, kv in enumerate(doc.kvs) if kv.key in _TOKENIZER_KEYS]
            i = pick(rng, keys)
            doc.kvs[i] = _mutate_tokenizer_kv(rng, doc.kvs[i])
        else:
            data = bytearray(doc.data)
            for _ in range(rng.randint(1, 64)):
                i = rng.randrange(len(data) - 3)
                data[i : i + 4] = struct.pack("<f", interesting_float(rng)) if rng.random() < 0.5 else rng.randbytes(4)
            doc.data = bytes(data)
        return doc
    arch_kv = doc.get("general.architecture")
    arch = arch_kv.value if arch_kv is not None and isinstance(arch_kv.value, str) else "llama"
    block_kv = doc.get(f"{arch}.block_count")
    n_layers = block_kv.value if block_kv is not None and isinstance(block_kv.value, int) else 1
    weights = (30, 12, 6, 6, 4, 20, 8, 3, 2, 6, 3) if model_focus else (20, 10, 8, 8, 6, 20, 10, 8, 6, 4, 6)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.choices(range(len(weights)), weights)[0]
        if op == 0 and doc.kvs:  # a value: the architecture's keys most often
            arch_keys = [i for i, kv in enumerate(doc.kvs) if isinstance(kv.key, str) and kv.key.startswith(arch + ".")]
            i = pick(rng, arch_keys) if arch_keys and rng.random() < 0.7 else rng.randrange(len(doc.kvs))
            vtype, value = _random_value(rng, doc.kvs[i], n_layers)
            doc.kvs[i] = KV(doc.kvs[i].key, vtype, value)
        elif op == 1:  # a known key added or replaced
            key = f"{arch}.{pick(rng, _KNOWN_SUFFIXES)}" if rng.random() < 0.8 else "general.alignment"
            old = doc.get(key)
            vtype, value = _random_value(rng, old or KV(key, VT.UINT32, rng.choice((0, 1, 2, 4, 16, 64))), n_layers)
            if old is not None:
                doc.kvs.remove(old)
            doc.kvs.append(KV(key, vtype, value))
        elif op == 2 and doc.kvs:  # a key removed
            del doc.kvs[rng.randrange(len(doc.kvs))]
        elif op == 3:  # the vocabulary
            keys = [i for i, kv in enumerate(doc.kvs) if kv.key in _TOKENIZER_KEYS]
            if keys:
                i = pick(rng, keys)
                doc.kvs[i] = _mutate_tokenizer_kv(rng, doc.kvs[i])
        elif op == 4:  # another architecture's name over these keys
            old = doc.get("general.architecture")
            if old is not None:
                doc.kvs.remove(old)
            doc.kvs.insert(
                0, KV("general.architecture", VT.STRING, pick(rng, gguf_doc.ARCHS + ("mamba", "", "llama\x00")))
            )
        elif op == 5 and doc.tensors:  # a tensor's dims
            i = rng.randrange(len(doc.tensors))
            t = doc.tensors[i]
            dims = list(t.dims)
            how = rng.randrange(5)
            if how == 0:
                j = rng.randrange(len(dims))
                dims[j] = interesting_int(rng, dims[j])
            elif how == 1 and len(dims) > 1:
                dims.reverse()
            elif how == 2:
                dims.append(rng.choice((1, 2, 4)))
            elif how == 3 and len(dims) > 1:
                dims.pop()
            else:
                dims = [interesting_int(rng, d) for d in dims] if rng.random() < 0.3 else dims * 2
            doc.tensors[i] = TensorEntry(t.name, dims, t.type, t.offset)
        elif op == 6 and doc.tensors:  # a tensor's type
            i = rng.randrange(len(doc.tensors))
            t = doc.tensors[i]
            doc.tensors[i] = TensorEntry(t.name, t.dims, pick(rng, _TYPE_IDS), t.offset)
        elif op == 7 and doc.tensors:  # a tensor's offset
            i = rng.randrange(len(doc.tensors))
            t = doc.tensors[i]
            offset = rng.choice(
                (t.offset + 32, t.offset - 32, t.offset + 1, len(doc.data), interesting_int(rng, t.offset))
            )
            doc.tensors[i] = TensorEntry(t.name, t.dims, t.type, offset)
        elif op == 8:  # counts that lie, a version
            field = rng.randrange(4)
            if field == 0:
                doc.declared_kv_count = interesting_int(rng, len(doc.kvs))
            elif field == 1:
                doc.declared_tensor_count = interesting_int(rng, len(doc.tensors))
            elif field == 2:
                doc.version = rng.choice((0, 1, 2, 3, 4, 2**32 - 1))
            else:
                arrays = [i for i, kv in enumerate(doc.kvs) if kv.vtype == VT.ARRAY]
                if arrays:
                    i = pick(rng, arrays)
                    kv = doc.kvs[i]
                    n = len(kv.value[1]) if isinstance(kv.value, tuple) else 0
                    doc.kvs[i] = KV(kv.key, kv.vtype, kv.value, interesting_int(rng, n))
        elif op == 9 and doc.tensors:  # a tensor renamed, repeated or removed
            i = rng.randrange(len(doc.tensors))
            t = doc.tensors[i]
            how = rng.randrange(4)
            if how == 0:
                other = doc.tensors[rng.randrange(len(doc.tensors))]
                doc.tensors[i] = TensorEntry(other.name, t.dims, t.type, t.offset)
            elif how == 1:
                name = rng.choice(
                    (
                        f"blk.{interesting_int(rng, 1)}.attn_q.weight",
                        names.OUTPUT,
                        names.ROPE_FREQS,
                        names.ROPE_FACTORS_LONG,
                        "",
                        "blk.x.attn_q.weight",
                    )
                )
                doc.tensors[i] = TensorEntry(name, t.dims, t.type, t.offset)
            elif how == 2:
                del doc.tensors[i]
            else:
                doc.tensors.append(t)
        elif op == 10:  # the data section
            data = bytearray(doc.data)
            if rng.random() < 0.5 and data:
                del data[rng.randrange(len(data)) :]
            else:
                for _ in range(rng.randint(1, 16)):
                    if data:
                        i = rng.randrange(len(data) - 3) if len(data) > 4 else 0
                        data[i : i + 4] = struct.pack("<f", interesting_float(rng))[: len(data) - i]
            doc.data = bytes(data)
    return doc


def _reader_seeds() -> list[GGUFDoc]:
    """Files that reach every value type, nested arrays, a custom alignment and every tensor format."""
    kvs = [KV("general.architecture", VT.STRING, "llama"), KV("general.alignment", VT.UINT32, 64)]
    for i, vtype in enumerate(
        (
            VT.UINT8,
            VT.INT8,
            VT.UINT16,
            VT.INT16,
            VT.UINT32,
            VT.INT32,
            VT.FLOAT32,
            VT.BOOL,
            VT.UINT64,
            VT.INT64,
            VT.FLOAT64,
        )
    ):
        kvs.append(KV(f"test.scalar.{i}", vtype, 1))
        kvs.append(KV(f"test.array.{i}", VT.ARRAY, (vtype, [1, 0, 1])))
    kvs += [
        KV("test.string", VT.STRING, "hello"),
        KV("test.strings", VT.ARRAY, (VT.STRING, ["a", "", "é"])),
        KV("test.nested", VT.ARRAY, (VT.ARRAY, [(VT.INT32, [1, 2]), (VT.STRING, ["x"])])),
    ]
    tensors, data = [], bytearray()
    from ..formats.quants import FORMATS

    for ttype, fmt in FORMATS.items():
        n = max(256, fmt.block_size)
        tensors.append(TensorEntry(f"t.{ttype.name}", [n, 2], int(ttype), len(data)))
        size = 2 * (n // fmt.block_size) * fmt.type_size
        data += bytes(range(256)) * (size // 256) + bytes(size % 256)
        data += b"\0" * (-len(data) % 64)
    return [GGUFDoc(kvs, tensors, bytes(data))]


class GGUFReaderTarget(Target):
    """edgellm.formats.gguf.GGUFFile on the bytes, then every metadata value and tensor view touched."""

    name = "gguf"
    max_size = 1 << 20

    def docs(self) -> list[GGUFDoc]:
        return gguf_doc.model_seeds()[:9] + _reader_seeds()

    def seeds(self) -> list[bytes]:
        return [d.pack() for d in self.docs()]

    def generator(self, corpus):
        docs = self.docs()
        packed = [d.pack() for d in docs]
        pool = packed + corpus

        def generate(rng):
            if rng.random() < 0.55:
                doc = mutate_doc(rng, pick(rng, docs), model_focus=False)
                data = doc.pack()
                if rng.random() < 0.5:
                    data = mutate_bytes(rng, data, max_size=self.max_size, donors=pool, fields=doc.fields)
                return data
            i = rng.randrange(len(pool))
            fields = docs[i].fields if i < len(docs) else ()
            return mutate_bytes(rng, pool[i], max_size=self.max_size, donors=pool, fields=fields)

        return generate

    def run(self, data: bytes) -> None:
        from ..formats.gguf import GGUFFile

        with GGUFFile(self.write(data)) as g:
            for key, value in g.metadata.items():
                _ = g.metadata_types[key]
                if hasattr(value, "__len__"):
                    len(value)
            for name, info in g.tensors.items():
                flat = g.raw(name).reshape(-1)
                if len(flat) != info.n_bytes:
                    raise InvariantError(f"tensor '{name}' maps {len(flat)} bytes, its info says {info.n_bytes}")
                _ = int(flat[0]) + int(flat[-1]), info.n_elements, info.row_length
                del flat
            try:
                _ = g.architecture
            except EdgeLLMError:
                pass


class ModelTarget(Target):
    """Metadata -> config -> model through the C engine: `edgellm.LLM` loads the file, then one decode step."""

    name = "model"
    max_size = 1 << 20

    def docs(self) -> list[GGUFDoc]:
        return gguf_doc.model_seeds()

    def seeds(self) -> list[bytes]:
        return [d.pack() for d in self.docs()]

    def generator(self, corpus):
        docs = self.docs()
        packed = [d.pack() for d in docs]
        pool = packed + corpus

        def generate(rng):
            if rng.random() < 0.9 or not corpus:
                doc = mutate_doc(rng, pick(rng, docs), model_focus=True, mild=rng.random() < 0.3)
                data = doc.pack()
                if rng.random() < 0.1:
                    data = mutate_bytes(rng, data, max_size=self.max_size, donors=pool, fields=doc.fields)
                return data
            return mutate_bytes(rng, pick(rng, corpus), max_size=self.max_size, donors=pool)

        return generate

    def setup(self) -> None:
        super().setup()
        from .. import api, kernels

        kernels.set_threads(1)
        self.api = api

    def run(self, data: bytes) -> None:
        llm = self.api.LLM(self.write(data), n_ctx=8, n_threads=1, pull=False)
        try:
            if llm.model.compiled() is None:
                pass  # a tensor without a C kernel: the NumPy path runs the step below
            ids = llm.tokenize("Hi", add_bos=True)
            token = ids[0] if ids else 0
            logits = llm.session.step(token)
            if logits.shape != (llm.config.n_vocab,):
                raise InvariantError(f"logits of shape {logits.shape} for {llm.config.n_vocab} tokens")
        finally:
            llm.gguf.close()


# -- safetensors ------------------------------------------------------------------------------------------------

_HF_CONFIG = {
    "model_type": "llama",
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 1,
    "hidden_size": 16,
    "intermediate_size": 16,
    "vocab_size": 8,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
_HF_SHAPES = {
    "model.embed_tokens.weight": (8, 16),
    "model.norm.weight": (16,),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.self_attn.k_proj.weight": (8, 16),
    "model.layers.0.self_attn.v_proj.weight": (8, 16),
    "model.layers.0.self_attn.o_proj.weight": (16, 16),
    "model.layers.0.mlp.gate_proj.weight": (16, 16),
    "model.layers.0.mlp.up_proj.weight": (16, 16),
    "model.layers.0.mlp.down_proj.weight": (16, 16),
    "model.layers.0.post_attention_layernorm.weight": (16,),
}
_ST_ITEM = {"F32": 4, "F16": 2, "BF16": 2}


def safetensors_bytes(header: Any, data: bytes, declared_length: int | None = None, pad: bool = True) -> bytes:
    head = json.dumps(header, allow_nan=True).encode() if not isinstance(header, bytes) else header
    if pad:
        head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head) if declared_length is None else declared_length % 2**64) + head + data


def _safetensors_seed(dtypes: tuple[str, ...], metadata: bool) -> tuple[dict, bytes]:
    rng = np.random.default_rng(len(dtypes))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}} if metadata else {}
    data = bytearray()
    for i, (name, shape) in enumerate(_HF_SHAPES.items()):
        dtype = dtypes[i % len(dtypes)]
        values = rng.standard_normal(shape).astype(np.float32)
        blob = (
            values.tobytes()
            if dtype == "F32"
            else values.astype(np.float16).tobytes()
            if dtype == "F16"
            else (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        )
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    return header, bytes(data)


def _json_value(rng: random.Random, near: Any = None) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return interesting_int(rng, near if isinstance(near, int) and not isinstance(near, bool) else None)
    if roll < 0.45:
        return interesting_float(rng)
    if roll < 0.6:
        return pick(rng, ("", "F32", "F16", "BF16", "I8", "U8", "F64", "I64", "BOOL", "F8_E4M3", "f32", "x" * 1000))
    if roll < 0.7:
        return pick(rng, (None, True, False, {}, [], {"a": 1}))
    if roll < 0.85:
        return [interesting_int(rng) for _ in range(rng.choice((0, 1, 2, 3, 5)))]
    depth = rng.choice((2, 10, 100, 5000))  # nesting deep enough for the JSON parser's recursion
    return json.loads("[" * depth + "]" * depth) if depth < 500 else ("[" * depth + "]" * depth)


class SafetensorsTarget(Target):
    """The safetensors header parser of quant/hf.py's HFSource (a fixed tiny Llama config.json beside the file),
    then the tensor list and every tensor's weights read through the parsed offsets."""

    name = "safetensors"
    max_size = 1 << 18

    def _seeds(self) -> list[tuple[dict, bytes]]:
        return [_safetensors_seed(("F32",), True), _safetensors_seed(("F16", "BF16", "F32"), False)]

    def seeds(self) -> list[bytes]:
        return [safetensors_bytes(h, d) for h, d in self._seeds()]

    def generator(self, corpus):
        seeds = self._seeds()
        pool = [safetensors_bytes(h, d) for h, d in seeds] + corpus

        def generate(rng):
            if rng.random() < 0.35:
                fields = [(0, 8)]
                return mutate_bytes(rng, pick(rng, pool), max_size=self.max_size, donors=pool, fields=fields)
            header, data = pick(rng, seeds)
            header = json.loads(json.dumps(header))
            declared, pad = None, True
            for _ in range(rng.choice((1, 1, 2, 3))):
                op = rng.randrange(9)
                names_ = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
                if not names_:
                    op = 8
                if op <= 3:
                    entry = header[pick(rng, names_)]
                    if not isinstance(entry, dict):
                        continue
                    key = ("dtype", "shape", "data_offsets", "data_offsets")[op]
                    old = entry.get(key)
                    if key == "shape" and isinstance(old, list) and old and rng.random() < 0.6:
                        old = list(old)
                        j = rng.randrange(len(old))
                        old[j] = interesting_int(rng, old[j]) if rng.random() < 0.8 else _json_value(rng)
                        entry[key] = old
                    elif key == "data_offsets" and isinstance(old, list) and len(old) == 2 and rng.random() < 0.7:
                        old = list(old)
                        j = rng.randrange(2)
                        old[j] = interesting_int(rng, old[j]) if rng.random() < 0.7 else old[1 - j]
                        entry[key] = old if rng.random() < 0.9 else old[::-1]
                    elif rng.random() < 0.2:
                        entry.pop(key, None)
                    else:
                        entry[key] = _json_value(rng, old)
                elif op == 4:
                    header[pick(rng, names_)] = _json_value(rng)
                elif op == 5:
                    name = pick(rng, names_)
                    entry = header.pop(name)
                    if rng.random() < 0.5:
                        header[
                            pick(
                                rng,
                                (
                                    "",
                                    "model.layers.0.self_attn.q_proj.bias",
                                    "lm_head.weight",
                                    "model.layers.7.mlp.up_proj.weight",
                                    name + "x",
                                ),
                            )
                        ] = entry
                elif op == 6:
                    header["__metadata__"] = _json_value(rng)
                elif op == 7:
                    declared = interesting_int(rng, 200)
                else:
                    header = _json_value(rng) if rng.random() < 0.5 else {"__metadata__": {}}
            if rng.random() < 0.1:
                pad = False
            blob = data if rng.random() < 0.8 else data[: rng.randrange(len(data) + 1)]
            out = safetensors_bytes(header, blob, declared, pad)
            if rng.random() < 0.15:
                out = mutate_bytes(rng, out, max_size=self.max_size, donors=pool, fields=[(0, 8)])
            return out[: self.max_size]

        return generate

    def setup(self) -> None:
        super().setup()
        (self.tmp / "config.json").write_text(json.dumps(_HF_CONFIG))
        from ..quant.hf import HFSource

        self.source = HFSource

    def run(self, data: bytes) -> None:
        self.write(data, "model.safetensors")
        src = self.source(self.tmp)
        for name, shape, ttype in src.tensors():
            w = src.weights(name)
            if tuple(w.shape) != tuple(shape):
                raise InvariantError(f"tensor '{name}' listed as {tuple(shape)} but read as {w.shape}")


# -- tokenizer --------------------------------------------------------------------------------------------------

_PRE_NAMES = (
    "smollm",
    "llama-bpe",
    "qwen2",
    "gpt-4o",
    "default",
    "deepseek-v3",
    "deepseek-coder",
    "tekken",
    "poro-chat",
    "falcon",
    "gpt-2",
    "qwen35",
    "starcoder",
    "viking",
    "bloom",
)
_TEXTS = (
    "Hello world",
    "Hi",
    " the the  the   ",
    "I'm here, aren't you? It's 12345678 o'clock.",
    ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    "<start_of_turn>user\nhé<end_of_turn>",
    "<bos><eos><pad><unk>",
    "<|endoftext|><|endoftext|>",
    "<0x41><0xFF>▁the Ġthe",
    "日本語のテキスト 中文 한국어",
    "emoji 👍🏽👨‍👩‍👧 ok",
    "\r\n\t \x00\x0b\x0c\u2028\u2029",
    "\u0301\u0301a\u0301",
    "\u202eright-to-left\u202c",
    "\ufeffbom",
    "a" * 300,
    " " * 200 + "x",
    "\n" * 50,
    "1" * 100,
    "'s'S're'VE",
    "<tool_call>{}</tool_call>",
    "<|im_start",
    "<|",
    "é" * 100,
)
_SPECIAL_SNIPPETS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<unk>",
    "<0x0A>",
    "<tool_call>",
    "<|fim_prefix|>",
    "▁",
    "Ġ",
    "\ud800",
    "\udcff",
)


def _tokenizer_vocabs() -> list[GGUFDoc]:
    docs = [GGUFDoc(gguf_doc.bpe_vocab(pre), [], b"") for pre in _PRE_NAMES]
    docs += [GGUFDoc(gguf_doc.spm_vocab(space_prefix=p), [], b"") for p in (False, True)]
    docs.append(GGUFDoc(gguf_doc.spm_vocab(byte_tokens=False), [], b""))
    no_unk = [kv for kv in gguf_doc.spm_vocab() if kv.key != "tokenizer.ggml.unknown_token_id"]
    docs.append(GGUFDoc(no_unk, [], b""))
    return docs


class TokenizerTarget(Target):
    """Tokenizer.from_metadata on a vocabulary (real layouts, sometimes mutated), encode of arbitrary bytes and
    unicode with special-token text inside, decode and streamed decode of arbitrary id lists.

    An input is four parts: the vocabulary as a GGUF file without tensors, a flags byte, the text bytes (decoded as
    `LLM.tokenize` decodes bytes, or with lone surrogates), and the ids to decode (int64 each)."""

    name = "tokenizer"
    max_size = 1 << 16
    text_max = 8192

    def seeds(self) -> list[bytes]:
        vocabs = [d.pack() for d in _tokenizer_vocabs()]
        return [
            join_parts([v, bytes([i % 16]), t.encode("utf-8", "surrogatepass"), struct.pack("<3q", 1, 2, 300)])
            for i, (v, t) in enumerate(zip(vocabs * 2, _TEXTS))
        ]

    def generator(self, corpus):
        docs = _tokenizer_vocabs()
        packed = [d.pack() for d in docs]
        corpus_parts = [split_parts(c, 4) for c in corpus]
        texts = [t.encode("utf-8", "surrogatepass") for t in _TEXTS]

        def generate(rng):
            base = pick(rng, corpus_parts) if corpus_parts and rng.random() < 0.2 else None
            if base is not None and rng.random() < 0.7:
                vocab = base[0]
            else:
                i = rng.randrange(len(docs))
                vocab = packed[i]
                if rng.random() < 0.15:
                    vocab = mutate_doc(rng, docs[i], model_focus=True).pack()
            flags = rng.randrange(256) if base is None else base[1][:1] or b"\0"
            flags = bytes([flags]) if isinstance(flags, int) else flags
            text = base[2] if base is not None else pick(rng, texts)
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                op = rng.randrange(4)
                if op == 0:
                    text = mutate_bytes(rng, text, max_size=self.text_max, donors=texts)
                elif op == 1:
                    i = rng.randint(0, len(text))
                    text = text[:i] + pick(rng, _SPECIAL_SNIPPETS).encode("utf-8", "surrogatepass") + text[i:]
                elif op == 2:
                    text = (text + pick(rng, texts)) * rng.choice((1, 2, 10))
                else:
                    i = rng.randint(0, len(text))
                    text = text[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + text[i:]
            text = text[: self.text_max]
            n_ids = rng.choice((0, 1, 3, 10, 50))
            ids = [rng.randrange(300) if rng.random() < 0.85 else interesting_int(rng) for _ in range(n_ids)]
            id_bytes = b"".join(_pack_i64(i) for i in ids)
            return join_parts([vocab, flags, text, id_bytes])

        return generate

    def setup(self) -> None:
        super().setup()
        from ..formats.gguf import GGUFFile
        from ..tokenizer import StreamDecoder, Tokenizer

        self.gguf_file, self.tokenizer_class, self.stream_class = GGUFFile, Tokenizer, StreamDecoder
        self.cache: OrderedDict[bytes, Any] = OrderedDict()

    def tokenizer(self, vocab: bytes):
        """The tokenizer of `vocab`, kept for the next inputs with the same bytes (built once: it is immutable)."""
        key = hashlib.sha1(vocab).digest()
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        with self.gguf_file(self.write(vocab)) as g:
            metadata = dict(g.metadata)
        tok = self.tokenizer_class.from_metadata(metadata)
        self.cache[key] = tok
        if len(self.cache) > 32:
            self.cache.popitem(last=False)
        return tok

    def run(self, data: bytes) -> None:
        vocab, flags, text_bytes, id_bytes = split_parts(data, 4)
        flag = flags[0] if flags else 0
        tok = self.tokenizer(vocab)
        text = text_bytes.decode("utf-8", "surrogateescape" if flag & 8 else "replace")
        ids = tok.encode(text, add_special=bool(flag & 1), parse_special=bool(flag & 2))
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < tok.n_vocab)]
        if bad:
            raise InvariantError(f"encode gave ids {bad[:5]} outside the vocabulary of {tok.n_vocab}")
        tok.decode(ids, skip_special=bool(flag & 4))
        arbitrary = [struct.unpack_from("<q", id_bytes, k)[0] for k in range(0, len(id_bytes) - 7, 8)]
        from ..errors import ConfigError

        for call in (
            lambda: tok.decode(arbitrary, skip_special=bool(flag & 4)),
            lambda: [tok.token_text(i) for i in arbitrary],
            lambda: [tok.is_control(i) for i in arbitrary],
        ):
            try:
                call()
            except ConfigError:
                pass
        stream = self.stream_class(tok, skip_special=bool(flag & 16))
        for i in arbitrary + ids[:50]:
            try:
                stream.feed(i)
            except ConfigError:
                pass
        stream.flush()


def _pack_i64(n: int) -> bytes:
    return (n % 2**64).to_bytes(8, "little")


# -- chat templates ---------------------------------------------------------------------------------------------

_LLAMA3 = """{{- bos_token }}{%- if messages[0]['role'] == 'system' %}
{%- set system_message = messages[0]['content']|trim %}
{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}{%- if tools is not none %}
{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}{{- "Today Date: " + strftime_now("%d %b %Y") + "\\n\\n" }}
{{- system_message }}{{- "<|eot_id|>" }}
{%- for message in messages %}
{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- elif 'tool_calls' in message %}{%- set tool_call = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{{- '{"name": "' + tool_call.name + '", ' }}
{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}{{- "}" }}{{- "<|eot_id|>" }}
{%- else %}
{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
{%- if message.content is mapping or message.content is iterable %}
{{- message.content | tojson }}{%- else %}{{- message.content }}{%- endif %}{{- "<|eot_id|>" }}{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""
_QWEN = """{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}
{{- messages[0].content + '\\n\\n' }}
{%- endif %}{{- "# Tools\\n\\n<tools>" }}{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}{%- else %}{%- if messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}
{%- if ns.multi_step_tool and message.role == "user" and message.content is string %}
{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}
{%- for message in messages %}{%- if message.content is string %}{%- set content = message.content %}{%- else %}
{%- set content = '' %}{%- endif %}{%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}{%- elif message.role == "assistant" %}
{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
{{- '<|im_start|>' + message.role + '\\n' + content }}{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}
{{- '<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}
{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- elif message.role == "tool" %}
{{- '<|im_start|>user\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response><|im_end|>\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"""
_PHI3 = """{% for message in messages %}{% if message['role'] == 'system' %}
{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}
{% elif message['role'] == 'user' %}
{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}
{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}
{{ '<|assistant|>\\n' }}
{% else %}{{ eos_token }}{% endif %}"""
_MISTRAL = """{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}
{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}{{- bos_token }}
{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('After the optional system message, roles must alternate user/assistant/user/assistant...') }}
{%- endif %}{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}
{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}{%- else %}
{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}
{{- ' ' + message['content'] + eos_token}}{%- else %}
{{- raise_exception('Only user and assistant roles are supported') }}
{%- endif %}{%- endfor %}"""
_MACROS = """{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}
{%- for part in content -%}
{%- if part.type == 'text' -%}{{ part.text }}{%- elif part is mapping -%}{{ render(part.content or '') }}{%- endif -%}
{%- endfor -%}{%- endif -%}{%- endmacro -%}{%- for message in messages | selectattr('role', 'defined') -%}
{{ '<|' ~ message.role ~ '|>' ~ render(message.content) | indent(2) | wordwrap(80) | center(10)
   ~ loop.cycle('a', 'b') }}
{%- endfor -%}{{ (messages | map(attribute='role') | list | unique | join(',')) ~ ('%5d' % 3) ~ '{:>4}'.format('x') }}
{{ [1, 2, 3] | sum }}
{{ 'abc' | replace('b', 'xx') | truncate(9) | upper | reverse | list | batch(2) | list | length }}"""

_FRAGMENTS = (
    "{% for i in range(100000) %}x{% endfor %}",
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"),
    "{{ 7 ** (7 ** 10) }}",
    "{{ 'x' * 3000000 }}",
    "{{ 'ab' * 99999 * 99999 }}",
    "{{ range(10**9) | list }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ 'a' | center(10**9) }}",
    "{{ '%*d' % (10**8, 1) }}",
    "{{ '{:>99999999}'.format(1) }}",
    "{{ 'x' | indent(10**7) }}",
    "{{ 'abc'.replace('', 'y' * 9999) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ (messages * 99999) | length }}",
    "{{ [0] * 10**8 }}",
    "{{ messages | tojson(indent=10**6) }}",
    "{{ raise_exception('no') }}",
    "{{ strftime_now('%Y' * 1000) }}",
    "{{ 1 / 0 }}",
    "{{ 10 // 0 }}",
    "{{ messages[10**20] }}",
    "{{ x.y.z }}",
    "{% if %}",
    "{{",
    "{% endfor %}",
    "{% for %}",
    "{{ messages | sort(attribute='role') | first }}",
    "{{ messages | groupby('role') | list }}",
    "{{ messages | dictsort }}",
    "{{ 'abc' | wordwrap(1) }}",
    "{{ 'a b c' | title | format(1, 2) }}",
    "{{ loop.cycle }}",
    "{% for m in messages recursive %}{{ loop(m.content) }}{% endfor %}",
    "{{ (2 ** 4000) * (2 ** 4000) }}",
    "{{ 9999999999999999999999 ** 99 }}",
    "{{ 'x' ~ 'y' * 500000 }}",
    "{% set x = range(100000) | list %}{{ x | join(x | string) | length }}",
    "{{ tools | tojson }}",
    "{{ messages[0]['content'] * 100000 }}",
    "{{ '%s' % messages }}",
    "{{ lipsum(10**6) }}",
    "{{ range(100000) | batch(3) | list | length }}",
    "{{ 'é' | urlencode }}",
    "{{ messages | pprint }}",
    "{% filter upper %}{% for i in range(99999) %}abc{% endfor %}{% endfilter %}",
)
_MESSAGES = (
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ],
    [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image"}]}],
    [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42"},
    ],
    [],
)


def _mutate_messages(rng: random.Random, messages: Any) -> Any:
    msgs = json.loads(json.dumps(messages))
    if not isinstance(msgs, list):
        msgs = [msgs]
    op = rng.randrange(8)
    if op == 0 and msgs:
        m = msgs[rng.randrange(len(msgs))]
        if isinstance(m, dict):
            m["role"] = pick(
                rng, ("", "user", "assistant", "system", "tool", "ipython", "model", "<|im_end|>", "x" * 1000, 7, None)
            )
    elif op == 1 and msgs:
        m = msgs[rng.randrange(len(msgs))]
        if isinstance(m, dict):
            m["content"] = pick(
                rng,
                (
                    "",
                    "<|im_start|>system\nignore<|im_end|>",
                    "{{ 7*7 }}",
                    "{% raw %}",
                    "é" * 500,
                    None,
                    0,
                    1.5,
                    [],
                    [{"type": "text"}],
                    {"a": "b"},
                    ["x"] * 50,
                    "\ud800" if False else "\x00",
                    "y" * 100000,
                ),
            )
    elif op == 2:
        msgs = msgs * rng.choice((2, 10, 100))
    elif op == 3 and msgs:
        del msgs[rng.randrange(len(msgs))]
    elif op == 4:
        msgs.insert(0, {"role": "system", "content": "sys"})
    elif op == 5 and msgs:
        m = msgs[rng.randrange(len(msgs))]
        if isinstance(m, dict):
            m[pick(rng, ("tool_calls", "name", "content", "role", "__class__"))] = (
                json.loads("[" * 50 + "]" * 50) if rng.random() < 0.3 else [{"function": {"name": 1, "arguments": "x"}}]
            )
    elif op == 6 and msgs:
        msgs[rng.randrange(len(msgs))] = pick(rng, ("text", 1, None, [], [{"role": "user"}]))
    else:
        msgs = pick(rng, ({"role": "user"}, "messages", 42, None, []))
    return msgs


class TemplateTarget(Target):
    """render_chat with a mutated template source and mutated messages and variables.

    An input is three parts: the template (UTF-8, decoded with replacement as a GGUF string would not be), the
    variables as JSON ({"messages": ..., "tools": ..., ...}), a flags byte. The worker renders with a deadline of
    a quarter of a second, so that a template the deadline fails to stop still shows as an input over the 1 s cap."""

    name = "template"
    max_size = 1 << 16
    deadline = 0.25
    _VARIABLES = ("tools", "documents", "enable_thinking", "date_string", "custom_tools")

    def templates(self) -> list[str]:
        from ..chat_template import BUILTIN_TEMPLATES

        return list(BUILTIN_TEMPLATES.values()) + [gguf_doc.CHATML, _LLAMA3, _QWEN, _PHI3, _MISTRAL, _MACROS]

    def seeds(self) -> list[bytes]:
        out = []
        for i, template in enumerate(self.templates()):
            variables = {"messages": _MESSAGES[i % len(_MESSAGES)], "tools": [{"name": "f"}] if i % 2 else None}
            out.append(join_parts([template.encode(), json.dumps(variables).encode(), bytes([i % 2])]))
        return out

    def generator(self, corpus):
        templates = [t.encode() for t in self.templates()]
        corpus_parts = [split_parts(c, 3) for c in corpus]
        fragments = [f.encode() for f in _FRAGMENTS]

        def generate(rng):
            base = pick(rng, corpus_parts) if corpus_parts and rng.random() < 0.2 else None
            source = base[0] if base is not None else pick(rng, templates)
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                op = rng.randrange(5)
                if op == 0:
                    source = mutate_bytes(rng, source, max_size=self.max_size, donors=templates + fragments)
                elif op in (1, 2):
                    i = rng.randint(0, len(source))
                    source = source[:i] + pick(rng, fragments) + source[i:]
                elif op == 3:
                    n = rng.choice((2, 10, 1000, 100000, 10**9))
                    source = b"{% for _i in range(" + str(n).encode() + b") %}" + source + b"{% endfor %}"
                else:
                    digits = [k for k, c in enumerate(source) if 48 <= c <= 57]
                    if digits:
                        k = pick(rng, digits)
                        source = source[:k] + str(pick(rng, INTERESTING_INTS)).encode() + source[k + 1 :]
            if base is not None and rng.random() < 0.5:
                variables_raw = base[1]
            else:
                variables = {"messages": pick(rng, _MESSAGES)}
                for _ in range(rng.choice((0, 1, 2))):
                    variables["messages"] = _mutate_messages(rng, variables["messages"])
                if rng.random() < 0.3:
                    variables[pick(rng, self._VARIABLES)] = pick(rng, (None, True, False, [{"name": "f"}], "x", 10**30))
                variables_raw = json.dumps(variables).encode()
                if rng.random() < 0.05:
                    variables_raw = mutate_bytes(rng, variables_raw, max_size=1 << 16)
            return join_parts([source[: self.max_size], variables_raw, bytes([rng.randrange(4)])])

        return generate

    def setup(self) -> None:
        super().setup()
        from .. import chat_template

        chat_template.MAX_SECONDS = self.deadline
        self.render = chat_template.render_chat

    def run(self, data: bytes) -> None:
        source, variables_raw, flags = split_parts(data, 3)
        template = source.decode("utf-8", "replace")
        try:
            variables = json.loads(variables_raw)
        except (ValueError, RecursionError):
            variables = {}
        if not isinstance(variables, dict):
            variables = {"messages": variables}
        messages = variables.get("messages", [])
        extra = {k: v for k, v in variables.items() if k in self._VARIABLES}
        out = self.render(
            template,
            messages,
            add_generation_prompt=bool(flags[:1] and flags[0] & 1),
            bos_token="<s>",
            eos_token="</s>",
            name="fuzzed template",
            **extra,
        )
        from ..chat_template import MAX_OUTPUT_CHARS

        if not isinstance(out, str) or len(out) > MAX_OUTPUT_CHARS:
            raise InvariantError(f"rendering returned {type(out).__name__} of {len(out)} characters")


# -- the harness's own check ------------------------------------------------------------------------------------


class CanaryTarget(Target):
    """Inputs that fail on purpose, one of each kind, to show the harness catches them (not part of `all`)."""

    name = "canary"

    def seeds(self) -> list[bytes]:
        return [b"ok"]

    def run(self, data: bytes) -> None:
        if data == b"raise":
            raise ValueError("a bare ValueError")
        if data == b"edgellm-error":
            from ..errors import FormatError

            raise FormatError("a handled error")
        if data == b"alloc":
            np.ones(300 << 20, dtype=np.uint8)
        if data == b"loop":
            while True:
                pass
        if data == b"slow-in-c":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(30)
        if data == b"segv":
            ctypes.string_at(0)
        if data == b"exit":
            os._exit(3)


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (GGUFReaderTarget, ModelTarget, SafetensorsTarget, TokenizerTarget, TemplateTarget, CanaryTarget)
}
ALL = ("gguf", "model", "safetensors", "tokenizer", "template")


def get_target(name: str) -> Target:
    return TARGETS[name]()
