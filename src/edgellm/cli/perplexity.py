"""`edgellm perplexity`: perplexity of a text file over n_ctx windows, as llama.cpp's llama-perplexity."""

from __future__ import annotations

import argparse

from .common import (add_cache_type_argument, add_memory_arguments, add_model_argument, add_sparsity_arguments,
                     memory_kwargs, positive_int, print_json, progress_bar, report_offload, sparsity_kwargs,
                     text_tokens)  # fmt: skip


def add_perplexity_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-f", "--file", required=True, help="text file to score (e.g. wiki.test.raw)")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=512, help="window size in tokens")
    parser.add_argument("--chunks", type=positive_int, default=None, help="score only the first K windows")
    parser.add_argument("-t", "--threads", type=positive_int, default=None)
    add_cache_type_argument(parser)
    add_sparsity_arguments(parser)
    add_memory_arguments(parser)
    parser.add_argument("--json", action="store_true", help='print {"ppl", "ppl_stderr", "n_chunks", "n_ctx"}')


def run_perplexity(args: argparse.Namespace) -> int:
    from ..api import LLM
    from ..eval.perplexity import perplexity

    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads, cache_type=args.cache_type,
              **sparsity_kwargs(args), **memory_kwargs(args), logits_all=True)  # fmt: skip
    report_offload(llm)
    tok = llm.tokenizer
    tokens = text_tokens(args.file, tok)
    bar = progress_bar("chunk")

    def on_chunk(done: int, total: int, running: float) -> None:
        bar.total = total
        bar.set_postfix(ppl=f"{running:.4f}")
        bar.update(1)

    result = perplexity(
        llm.model, tokens, args.ctx_size, args.chunks, bos_id=tok.bos_id if tok.add_bos else None, on_chunk=on_chunk,
        cache_type=args.cache_type, n_batch=llm.offload.n_batch if llm.offload else 512,
        nll_rows=1 if llm.offload else 32,
    )
    bar.close()
    if args.json:
        print_json({"ppl": result.ppl, "ppl_stderr": result.ppl_stderr, "n_chunks": result.n_chunks,
                    "n_ctx": result.n_ctx, "n_scored": result.n_scored, "model": str(llm.model_path),
                    "cache_type": args.cache_type, **sparsity_kwargs(args)})  # fmt: skip
    else:
        print(f"PPL = {result.ppl:.4f} +/- {result.ppl_stderr:.5f} ({result.n_chunks} chunks of {result.n_ctx})")
    return 0
