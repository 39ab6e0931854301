"""Reference numbers from llama.cpp (through llama-cpp-python) for the same GGUF files edgellm runs.

Run it with an interpreter that has `llama-cpp-python` installed (never a dependency of edgellm):

    python benchmarks/llamacpp_reference.py MODEL.gguf --perplexity ../shared/data/wikitext-2-raw/wiki.test.raw \
        --chunks 40 --greedy "The capital of France is" --json

Perplexity follows llama.cpp's `llama-perplexity`: the whole file tokenized once (BOS only if the vocabulary
adds one), windows of n_ctx tokens, the first token of each window replaced by BOS when the vocabulary
adds one, and only the second half of each window scored.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def perplexity(llm, text: str, n_ctx: int, n_chunks: int) -> dict:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_chunks = min(n_chunks, len(tokens) // n_ctx)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first : n_ctx - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        target = np.asarray(chunk[first + 1 : n_ctx])
        token_nll = -logp[np.arange(len(target)), target]
        nll += token_nll.sum()
        nll2 += np.square(token_nll).sum()
        count += len(target)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    return {"ppl": ppl, "ppl_stderr": math.sqrt(var / (count - 1)) * ppl, "n_chunks": n_chunks, "n_ctx": n_ctx}


def greedy(llm, prompt: str, n_predict: int) -> dict:
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llm.token_eos() == tok or len(out) >= n_predict:
            break
        out.append(tok)
    return {"prompt": prompt, "ids": out, "text": llm.detokenize(out).decode("utf-8", "replace")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--perplexity", metavar="FILE")
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--greedy", action="append", default=[], metavar="PROMPT")
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()

    from llama_cpp import Llama

    result: dict = {"model": args.model}
    llm = Llama(args.model, n_ctx=args.ctx, n_batch=args.ctx, n_threads=args.threads, logits_all=True, verbose=False)
    if args.perplexity:
        t0 = time.perf_counter()
        with open(args.perplexity, encoding="utf-8") as f:
            result["perplexity"] = perplexity(llm, f.read(), args.ctx, args.chunks)
        result["perplexity"]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.greedy:
        result["greedy"] = [greedy(llm, p, args.n) for p in args.greedy]
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
