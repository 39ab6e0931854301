"""Quantize a GGUF with llama.cpp's own quantizer (through llama-cpp-python), optionally with an importance matrix.

Run it with an interpreter that has `llama-cpp-python` installed (never a dependency of edgellm):

    python benchmarks/llamacpp_quantize.py ref-f16.gguf out.gguf Q4_K_M [--imatrix imatrix.npz] [--check]

The importance matrix is an .npz of weight name -> mean squared activation per column (what llama-quantize
computes from an imatrix file); benchmarks/quant_kld.py writes it from edgellm's imatrix so both quantizers
see the same statistics. --check loads the file back and generates a few tokens (does llama.cpp take it?).
"""

from __future__ import annotations

import argparse
import ctypes
import json

import numpy as np

FTYPES = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}  # fmt: skip


def quantize(src: str, dst: str, ftype: str, imatrix: str | None, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = threads
    keep = []
    if imatrix:
        data = np.load(imatrix)
        entries = (llama_cpp.llama_model_imatrix_data * (len(data.files) + 1))()
        for i, name in enumerate(data.files):
            values = np.ascontiguousarray(data[name], dtype=np.float32)
            keep.append((name.encode(), values))
            entries[i].name = keep[-1][0]
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        entries[len(data.files)].name = None  # terminator
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with {rc}")


def check(path: str) -> str:
    """Load with llama.cpp and greedily generate 8 tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False)
    out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
    return out["choices"][0]["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output", nargs="?")
    ap.add_argument("type", nargs="?", choices=sorted(FTYPES))
    ap.add_argument("--imatrix")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="only load INPUT and generate (prints JSON)")
    args = ap.parse_args()
    if args.check:
        print(json.dumps({"model": args.input, "text": check(args.input)}))
        return
    quantize(args.input, args.output, args.type, args.imatrix, args.threads)


if __name__ == "__main__":
    main()
