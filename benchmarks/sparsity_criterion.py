"""Which inputs to zero: TEAL's |x_i| < t against WINA's |x_i| ||W_:,i|| < t (arXiv 2505.19427, the input's
magnitude weighted by the norm of the weight column it multiplies), at the same sparsity per layer and input
group, on the NumPy path.

    python benchmarks/sparsity_criterion.py -m smollm2-135m --windows 8 --levels 0.25,0.4,0.5

Thresholds: the per-(layer, group) quantile of each score over 3 windows of 512 tokens of the calibration text;
for inputs shared by several matrices (Q, K, V; gate and up) the column norms are combined as the root of their
squares' sum. Perplexity: the second half of each 512-token window of the wikitext-2 test text.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgellm.api import LLM
from edgellm.eval.perplexity import token_nll, window
from edgellm.formats.quants import dequantize_rows
from edgellm.model import layers
from edgellm.model.sparsity import GROUPS
from edgellm.runtime.kv_cache import cache_for

CALIBRATION = "../shared/data/calibration/groups_merged.txt"
EVALUATION = "../shared/data/wikitext-2-raw/wiki.test.raw"
N_CTX = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=8, help="evaluation windows of 512 tokens")
    parser.add_argument("--levels", default="0.25,0.4,0.5", help="sparsity of every group of every layer")
    args = parser.parse_args()
    llm = LLM(args.model, n_ctx=N_CTX)
    model, tok, store = llm.model, llm.tokenizer, llm.model.store
    group_of = {t.format(i=i): (i, g) for i in range(model.config.n_layers)
                for g, templates in enumerate(GROUPS.values()) for t in templates}  # fmt: skip
    group_of = {name: key for name, key in group_of.items() if name in store.names()}
    squares: dict = {}
    for name, key in group_of.items():
        info = store.info(name)
        w = dequantize_rows(store.raw(name), info.type, info.shape[1], slice(0, info.shape[0])).astype(np.float64)
        squares[key] = squares.get(key, 0.0) + (w**2).sum(axis=0)
    norms = {key: np.sqrt(s).astype(np.float32) for key, s in squares.items()}

    state: dict = {"mode": None, "thresholds": None}
    samples: dict = {}
    plain_linear = layers.linear

    def linear(x, store_, name):
        key = group_of.get(name)
        if key is not None and state["mode"] == "collect":
            samples.setdefault(key, []).append((np.abs(x).ravel()[::7], (np.abs(x) * norms[key]).ravel()[::7]))
        elif key is not None and state["mode"] is not None:
            score = np.abs(x) if state["mode"] == "teal" else np.abs(x) * norms[key]
            x = np.where(score < state["thresholds"][key], np.float32(0), x)
        return plain_linear(x, store_, name)

    layers.linear = linear
    layers._observer.set(lambda name, x: None)  # a hook keeps the forward pass on the NumPy path

    def windows(path: str, n: int) -> list[np.ndarray]:
        ids = np.array(tok.encode(open(path, encoding="utf-8").read()[:3_000_000]), dtype=np.int64)
        return [window(ids, c, N_CTX, tok.bos_id) for c in range(n)]

    state["mode"] = "collect"
    for w in windows(CALIBRATION, 3):
        model.forward(w, cache_for(model, N_CTX, "f32"), None)
    evaluation = windows(EVALUATION, args.windows)

    def perplexity(mode: str | None, thresholds: dict | None) -> float:
        state["mode"], state["thresholds"] = mode, thresholds
        nll = [token_nll(model.forward(w, cache_for(model, N_CTX, "f32"), slice(0, None))[N_CTX // 2 - 1 : -1],
                         w[N_CTX // 2 :]) for w in evaluation]  # fmt: skip
        return float(np.exp(np.mean(np.concatenate(nll))))

    t0 = time.time()
    dense = perplexity(None, None)
    print(f"{args.model}, {args.windows} windows: dense {dense:.4f} ({time.time() - t0:.0f} s per pass)", flush=True)
    for level in (float(s) for s in args.levels.split(",")):
        teal = {key: np.float32(np.quantile(np.concatenate([a for a, _ in parts]), level)) for key, parts in samples.items()}
        wina = {key: np.float32(np.quantile(np.concatenate([b for _, b in parts]), level)) for key, parts in samples.items()}
        a, b = perplexity("teal", teal), perplexity("wina", wina)
        print(f"sparsity {level:.2f}: TEAL {a:.4f} ({a / dense - 1:+.1%})  WINA {b:.4f} ({b / dense - 1:+.1%})", flush=True)


if __name__ == "__main__":
    main()
