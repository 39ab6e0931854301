"""Writes a random-weight GGUF of a real model's shape, for measuring storage-bound speed on models larger than
the machine's comfort (quality is measured on the real models; these weights mean nothing).

    python benchmarks/synthetic_model.py --shape llama-3.2-1b --type q4_0 -o llama-3.2-1b-random.q4_0.gguf

Every matrix is random blocks of the chosen format with scales that keep activations in range; the
tokenizer is a byte-level BPE vocabulary padded to the real vocabulary size, so `edgellm run` and `bench`
load it like any Llama model. The writer streams one tensor at a time: memory holds one matrix, not the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgellm.formats import names
from edgellm.formats.gguf import TensorData, write_gguf
from edgellm.formats.quants import GGMLType, get_format

# name: (layers, n_embd, n_ff, heads, kv heads, head_dim, vocab, rope base), from the models' config.json
SHAPES = {
    "llama-3.2-1b": (16, 2048, 8192, 32, 8, 64, 128256, 500000.0),
    "llama-3.2-3b": (28, 3072, 8192, 24, 8, 128, 128256, 500000.0),
}
TYPES = {"q4_0": GGMLType.Q4_0, "q8_0": GGMLType.Q8_0, "q4_k": GGMLType.Q4_K}
# byte offsets of each format's fp16 scales within a block, and the scale that gives weights of std ~ 1/sqrt(n)
SCALES = {GGMLType.Q4_0: ((0,), 0.5), GGMLType.Q8_0: ((0,), 1 / 64), GGMLType.Q4_K: ((0, 2), 0.05)}


def random_rows(rng: np.random.Generator, ttype: GGMLType, n_rows: int, n_cols: int) -> np.ndarray:
    fmt = get_format(ttype)
    n_blocks = n_rows * n_cols // fmt.block_size
    blocks = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    offsets, scale = SCALES[ttype]
    d = np.full(n_blocks, scale / np.sqrt(n_cols), dtype=np.float16).view(np.uint8).reshape(-1, 2)
    for at in offsets:
        blocks[:, at : at + 2] = d
    return blocks.reshape(-1)


def vocabulary(n_vocab: int) -> dict:
    """Byte-level BPE: the 256 byte symbols, two specials, then filler tokens up to the real vocabulary size."""
    from edgellm.tokenizer import _bytes_to_unicode  # GPT-2's byte -> character table

    table = _bytes_to_unicode()
    symbols = [table[b] for b in range(256)]
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tokens = symbols + specials + [f"<filler_{i}>" for i in range(n_vocab - len(symbols) - len(specials))]
    types = [1] * len(symbols) + [3, 3] + [4] * (n_vocab - len(symbols) - 2)
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32), "tokenizer.ggml.merges": ["Ġ t"],
        "tokenizer.ggml.bos_token_id": 256, "tokenizer.ggml.eos_token_id": 257, "tokenizer.ggml.add_bos_token": True,
    }  # fmt: skip


def write(shape: str, ttype: GGMLType, out: Path, seed: int = 0) -> Path:
    n_layers, E, F, H, KV, D, V, rope = SHAPES[shape]
    rng = np.random.default_rng(seed)
    meta = {
        "general.architecture": "llama", "general.name": f"{shape} (random weights)",
        "llama.block_count": n_layers, "llama.context_length": 131072, "llama.embedding_length": E,
        "llama.feed_forward_length": F, "llama.attention.head_count": H, "llama.attention.head_count_kv": KV,
        "llama.attention.key_length": D, "llama.attention.value_length": D,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": rope, "llama.rope.dimension_count": D,
        **vocabulary(V),
    }  # fmt: skip
    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    matrix = lambda name, r, c: TensorData(name, ttype, (r, c), lambda: random_rows(rng, ttype, r, c))  # noqa: E731
    tensors = [matrix(names.TOKEN_EMBD, V, E), TensorData(names.OUTPUT_NORM, GGMLType.F32, (E,), ones(E))]
    for i in range(n_layers):
        tensors += [
            TensorData(names.ATTN_NORM.format(i=i), GGMLType.F32, (E,), ones(E)),
            matrix(names.ATTN_Q.format(i=i), H * D, E), matrix(names.ATTN_K.format(i=i), KV * D, E),
            matrix(names.ATTN_V.format(i=i), KV * D, E), matrix(names.ATTN_OUT.format(i=i), E, H * D),
            TensorData(names.FFN_NORM.format(i=i), GGMLType.F32, (E,), ones(E)),
            matrix(names.FFN_GATE.format(i=i), F, E), matrix(names.FFN_UP.format(i=i), F, E),
            matrix(names.FFN_DOWN.format(i=i), E, F),
        ]  # fmt: skip
    return write_gguf(out, meta, tensors)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--type", choices=sorted(TYPES), default="q4_0")
    ap.add_argument("-o", "--output", required=True, help="the .gguf to write (refuses to overwrite)")
    args = ap.parse_args()
    try:
        path = write(args.shape, TYPES[args.type], Path(args.output))
    except FileExistsError as e:
        print(f"synthetic_model: {e}", file=sys.stderr)
        return 1
    print(f"{path}: {path.stat().st_size / 1e9:.2f} GB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
